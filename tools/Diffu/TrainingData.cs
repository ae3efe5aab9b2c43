using DiffuSharp.Training;

namespace DiffuSharp.Cli;

static class TrainingData
{
    public static ITokenBlocks Open(string[] shards, int blockLength, ulong seed, double validationFraction) =>
        throw new NotImplementedException("waiting for the token shard loader");
}
