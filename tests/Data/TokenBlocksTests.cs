using DiffuSharp.Data;

namespace DiffuSharp.Tests.Data;

/// <summary>The trainer's token blocks over shards: rank slices of each global batch, and the shard identity.</summary>
public sealed class TokenBlocksTests
{
    string dir = "";

    [SetUp]
    public void SetUp() => dir = Directory.CreateTempSubdirectory("diffu-blocks-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(dir, recursive: true);

    string Shard()
    {
        string path = Path.Combine(dir, "a.tok");
        var rng = new Random(3);
        var documents = Enumerable.Range(0, 40).Select(_ => Enumerable.Range(0, rng.Next(1, 30)).Select(_ => rng.Next(1, 100)).ToArray()).ToList();
        TokenShard.Write(path, documents, 100, 0, new TokenShardMetadata("t", ["a"]));
        return path;
    }

    /// <summary>Ranks 0..n−1 with batch B read, slice by slice, exactly what one process reads with batch n·B (over several epochs).</summary>
    [TestCase(2, 3)]
    [TestCase(3, 2)]
    public void RanksTogetherReadWhatOneProcessReads(int worldSize, int batch)
    {
        string shard = Shard();
        using var whole = TokenBlocks.Open([shard], 8, 7, 0.1);
        var ranks = Enumerable.Range(0, worldSize).Select(r => TokenBlocks.Open([shard], 8, 7, 0.1, new DataShard(r, worldSize))).ToArray();
        try
        {
            Assert.That(whole.ValidationBlockCount, Is.GreaterThan(0));
            var global = new int[worldSize * batch * 8];
            var slice = new int[batch * 8];
            for (int step = 0; step < 40; step++)
            {
                whole.NextTrainingBatch(worldSize * batch, global, default);
                for (int r = 0; r < worldSize; r++)
                {
                    ranks[r].NextTrainingBatch(batch, slice, default);
                    Assert.That(slice, Is.EqualTo(global.AsSpan(r * batch * 8, batch * 8).ToArray()), $"step {step}, rank {r}");
                    Assert.That(ranks[r].State, Is.EqualTo(whole.State), "every rank stands where the single process does");
                }
            }
        }
        finally
        {
            foreach (var r in ranks) r.Dispose();
        }
    }

    [Test]
    public void BadRanksAreRefused()
    {
        Assert.Throws<ArgumentException>(() => _ = new DataShard(2, 2));
        Assert.Throws<ArgumentException>(() => _ = new DataShard(-1, 2));
        Assert.Throws<ArgumentException>(() => _ = new DataShard(0, 0));
        Assert.That(DataShard.Whole, Is.EqualTo(new DataShard(0, 1)));
    }
}
