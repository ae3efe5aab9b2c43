using DiffuSharp.Data;
using DiffuSharp.Training;

namespace DiffuSharp.Cli;

/// <summary>The token shards of a run as the trainer's <see cref="ITokenBlocks"/>: packed blocks, a validation split, a resumable shuffle.</summary>
sealed class TrainingData : ITokenBlocks, IDisposable
{
    readonly PackedDataset dataset;
    readonly BlockLoader loader;

    TrainingData(PackedDataset dataset)
    {
        this.dataset = dataset;
        loader = new BlockLoader(dataset);
    }

    public static TrainingData Open(string[] shards, int blockLength, ulong seed, double validationFraction)
    {
        if (shards.Length == 0) throw new DiffuException("no token shards given (--data)");
        return new TrainingData(PackedDataset.Open(shards, blockLength, validationFraction, seed));
    }

    public int BlockLength => loader.BlockLength;
    public int VocabSize => dataset.VocabSize;
    public int ValidationBlockCount => loader.Dataset.ValidationBlocks;
    public void NextTrainingBatch(int batch, Span<int> destination) => loader.NextBatch(batch, destination);
    public void ReadValidationBatch(int first, int batch, Span<int> destination) => loader.Dataset.ReadValidationBatch(first, batch, destination);

    public long[] State
    {
        get { var s = loader.GetState(); return [s.Epoch, s.Index]; }
        set
        {
            if (value.Length != 2 || value[1] is < 0 or > int.MaxValue) throw new DiffuException($"bad saved data position [{string.Join(", ", value)}]");
            loader.SetState(new LoaderState(value[0], (int)value[1]));
        }
    }

    public void Dispose() => dataset.Dispose();
}
