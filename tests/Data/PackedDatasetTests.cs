using System.Text.Json;
using DiffuSharp.Data;

namespace DiffuSharp.Tests.Data;

/// <summary>Packing (EOS after each document, fixed blocks, remainder dropped), the validation split, epoch shuffles and resume.</summary>
public sealed class PackedDatasetTests
{
    string dir = "";

    [SetUp]
    public void SetUp() => dir = Directory.CreateTempSubdirectory("diffu-packed-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(dir, recursive: true);

    string Shard(string name, IReadOnlyList<int[]> documents, int vocab = 100, int? eos = 0, string tokenizer = "t")
    {
        string path = Path.Combine(dir, name);
        TokenShard.Write(path, documents, vocab, eos, new TokenShardMetadata(tokenizer, [name]));
        return path;
    }

    static int[] Block(PackedDataset data, int block)
    {
        var ids = new int[data.BlockLength];
        data.ReadBlock(block, ids);
        return ids;
    }

    [Test]
    public void EosFollowsEveryDocumentAndTheRemainderIsDropped()
    {
        string path = Shard("a.tok", [[1, 2, 3], [4], [5, 6, 7, 8, 9]]);
        // Stream: 1 2 3 0 4 0 5 6 7 8 9 0 (12 tokens) -> two blocks of 5, two tokens dropped.
        using var data = PackedDataset.Open([path], 5, 0, 1);
        Assert.That(data.EosId, Is.EqualTo(0));
        Assert.That(data.StreamTokens, Is.EqualTo(12));
        Assert.That(data.BlockCount, Is.EqualTo(2));
        Assert.That(data.DroppedTokens, Is.EqualTo(2));
        Assert.That(Block(data, 0), Is.EqualTo(new[] { 1, 2, 3, 0, 4 }));
        Assert.That(Block(data, 1), Is.EqualTo(new[] { 0, 5, 6, 7, 8 }));
        Assert.That(data.ValidationBlocks, Is.Zero);
        Assert.That(data.TrainingBlocks, Is.EqualTo(2));
    }

    [Test]
    public void WithoutEosDocumentsAreJoinedDirectly()
    {
        string path = Shard("a.tok", [[1, 2, 3], [], [4], [5, 6, 7, 8, 9]], eos: null);
        using var data = PackedDataset.Open([path], 4, 0, 1);
        Assert.That(data.EosId, Is.Null);
        Assert.That(data.StreamTokens, Is.EqualTo(9));
        Assert.That(data.BlockCount, Is.EqualTo(2));
        Assert.That(data.DroppedTokens, Is.EqualTo(1));
        Assert.That(Block(data, 0), Is.EqualTo(new[] { 1, 2, 3, 4 }));
        Assert.That(Block(data, 1), Is.EqualTo(new[] { 5, 6, 7, 8 }));
    }

    [TestCase(true, 2)]
    [TestCase(true, 7)]
    [TestCase(true, 64)]
    [TestCase(false, 3)]
    [TestCase(false, 50)]
    public void BlocksEqualANaivelyPackedStreamAcrossShards(bool withEos, int blockLength)
    {
        var rng = TestUtil.NewRandom();
        int? eos = withEos ? 99 : null;
        var paths = new List<string>();
        var stream = new List<int>();
        for (int s = 0; s < 4; s++)
        {
            var documents = new List<int[]>();
            int count = s == 2 ? 0 : rng.Next(1, 30);
            for (int d = 0; d < count; d++)
            {
                var doc = Enumerable.Range(0, rng.Next(0, 40)).Select(_ => rng.Next(99)).ToArray();
                documents.Add(doc);
                stream.AddRange(doc);
                if (eos is { } e) stream.Add(e);
            }
            paths.Add(Shard($"s{s}.tok", documents, eos: eos));
        }
        using var data = PackedDataset.Open(paths, blockLength, 0.1, 5);
        Assert.That(data.StreamTokens, Is.EqualTo(stream.Count));
        Assert.That(data.BlockCount, Is.EqualTo(stream.Count / blockLength));
        Assert.That(data.DroppedTokens, Is.EqualTo(stream.Count % blockLength));
        for (int b = 0; b < data.BlockCount; b++)
            Assert.That(Block(data, b), Is.EqualTo(stream.GetRange(b * blockLength, blockLength)), $"block {b}");
    }

    /// <summary>One document 0, 1, 2, ... without EOS, so a block's first token names the block.</summary>
    PackedDataset Numbered(int blocks, int blockLength, double validation, ulong seed)
    {
        string path = Path.Combine(dir, $"numbered-{blocks}-{blockLength}.tok");
        if (!File.Exists(path)) Shard(Path.GetFileName(path), [Enumerable.Range(0, blocks * blockLength + 3).ToArray()], vocab: 1 << 20, eos: null);
        return PackedDataset.Open([path], blockLength, validation, seed);
    }

    [TestCase(100, 0.05, 5)]
    [TestCase(100, 0.5, 50)]
    [TestCase(2, 0.05, 1)]
    [TestCase(3, 0.9, 2)]
    [TestCase(1, 0.5, 0)]
    [TestCase(50, 0, 0)]
    public void ValidationAndTrainingAreDisjointAndCoverEveryBlock(int blocks, double fraction, int expectedValidation)
    {
        using var data = Numbered(blocks, 4, fraction, 11);
        Assert.That(data.BlockCount, Is.EqualTo(blocks));
        Assert.That(data.ValidationBlocks, Is.EqualTo(expectedValidation));
        var validation = Enumerable.Range(0, data.ValidationBlocks).Select(data.ValidationBlock).ToList();
        var training = Enumerable.Range(0, data.TrainingBlocks).Select(data.TrainingBlock).ToList();
        Assert.That(validation, Is.Ordered.And.Unique);
        Assert.That(training, Is.Ordered.And.Unique);
        Assert.That(validation.Intersect(training), Is.Empty);
        Assert.That(validation.Concat(training), Is.EquivalentTo(Enumerable.Range(0, blocks)));
    }

    [Test]
    public void ValidationSplitDependsOnlyOnTheSeed()
    {
        List<int> Split(ulong seed)
        {
            using var data = Numbered(200, 4, 0.05, seed);
            return Enumerable.Range(0, data.ValidationBlocks).Select(data.ValidationBlock).ToList();
        }
        var first = Split(3);
        Assert.That(first, Has.Count.EqualTo(10));
        Assert.That(Split(3), Is.EqualTo(first));
        Assert.That(Split(4), Is.Not.EqualTo(first));
        Assert.That(first, Is.Not.EqualTo(Enumerable.Range(0, 10)), "validation blocks are spread over the data, not its head");
    }

    [Test]
    public void ValidationBatchesAreFixedAndWrapAround()
    {
        using var data = Numbered(100, 8, 0.05, 2);
        var batch = new int[3 * 8];
        data.ReadValidationBatch(3, 3, batch);
        int[] expectedBlocks = [data.ValidationBlock(3), data.ValidationBlock(4), data.ValidationBlock(0)];
        for (int b = 0; b < 3; b++)
            Assert.That(batch.AsSpan(b * 8, 8).ToArray(), Is.EqualTo(Enumerable.Range(expectedBlocks[b] * 8, 8)));
        var again = new int[3 * 8];
        data.ReadValidationBatch(3, 3, again);
        Assert.That(again, Is.EqualTo(batch));
    }

    static List<int> FirstTokens(BlockLoader loader, int batches, int batchSize)
    {
        var ids = new int[batchSize * loader.BlockLength];
        var firsts = new List<int>();
        for (int i = 0; i < batches; i++)
        {
            loader.NextBatch(batchSize, ids);
            for (int b = 0; b < batchSize; b++) firsts.Add(ids[b * loader.BlockLength] / loader.BlockLength);
        }
        return firsts;
    }

    [Test]
    public void EachEpochVisitsEveryTrainingBlockOnceInAFreshOrder()
    {
        using var data = Numbered(40, 4, 0.1, 9);
        var loader = new BlockLoader(data);
        var training = Enumerable.Range(0, data.TrainingBlocks).Select(data.TrainingBlock).ToList();
        var seen = FirstTokens(loader, data.TrainingBlocks * 3, 1);
        var epochs = seen.Chunk(data.TrainingBlocks).Select(e => e.ToList()).ToList();
        foreach (var epoch in epochs) Assert.That(epoch, Is.EquivalentTo(training));
        Assert.That(epochs[0], Is.Not.EqualTo(epochs[1]));
        Assert.That(epochs[1], Is.Not.EqualTo(epochs[2]));
        Assert.That(epochs[0], Is.Not.EqualTo(training), "the order is shuffled");
        Assert.That(loader.GetState(), Is.EqualTo(new LoaderState(3, 0)));
    }

    [Test]
    public void BatchesHoldWholeBlocksAndCrossEpochBoundaries()
    {
        using var data = Numbered(10, 6, 0.2, 1);
        var loader = new BlockLoader(data);
        var ids = new int[3 * 6];
        loader.NextBatch(3, ids);
        loader.NextBatch(3, ids);
        loader.NextBatch(3, ids);
        Assert.That(loader.GetState(), Is.EqualTo(new LoaderState(1, 1)), "8 training blocks: 9 handed out is one into epoch 1");
        for (int b = 0; b < 3; b++)
        {
            int first = ids[b * 6];
            Assert.That(first % 6, Is.Zero);
            Assert.That(ids.AsSpan(b * 6, 6).ToArray(), Is.EqualTo(Enumerable.Range(first, 6)));
        }
    }

    [Test]
    public void DifferentSeedsShuffleDifferently()
    {
        using var a = Numbered(60, 4, 0, 100);
        using var b = Numbered(60, 4, 0, 101);
        Assert.That(FirstTokens(new BlockLoader(a), 60, 1), Is.Not.EqualTo(FirstTokens(new BlockLoader(b), 60, 1)));
        using var c = Numbered(60, 4, 0, 100);
        Assert.That(FirstTokens(new BlockLoader(c), 60, 1), Is.EqualTo(FirstTokens(new BlockLoader(a), 60, 1)),
            "a fresh loader with the same seed repeats the same order");
    }

    [TestCase(5, 7, 3)]
    [TestCase(11, 20, 4)]
    [TestCase(0, 9, 5)]
    public void ResumedLoaderContinuesWithIdenticalBatches(int before, int after, int batchSize)
    {
        string path = Shard("story.tok", Enumerable.Range(0, 30).Select(d => Enumerable.Range(d * 17, 5 + d % 9).ToArray()).ToList(), vocab: 1000, eos: 999);
        var uninterrupted = new List<int[]>();
        string saved;
        using (var data = PackedDataset.Open([path], 16, 0.1, 77))
        {
            var loader = new BlockLoader(data);
            var ids = new int[batchSize * 16];
            for (int i = 0; i < before; i++) loader.NextBatch(batchSize, ids);
            saved = JsonSerializer.Serialize(loader.GetState());
            for (int i = 0; i < after; i++)
            {
                loader.NextBatch(batchSize, ids);
                uninterrupted.Add((int[])ids.Clone());
            }
            Assert.That(loader.GetState().Epoch, Is.GreaterThan(0), "the run crosses at least one epoch boundary");
        }
        using (var data = PackedDataset.Open([path], 16, 0.1, 77))
        {
            var resumed = new BlockLoader(data);
            resumed.SetState(JsonSerializer.Deserialize<LoaderState>(saved));
            var ids = new int[batchSize * 16];
            for (int i = 0; i < after; i++)
            {
                resumed.NextBatch(batchSize, ids);
                Assert.That(ids, Is.EqualTo(uninterrupted[i]), $"batch {i} after resuming");
            }
        }
    }

    [Test]
    public void PackedTinyShakespeareHasOneEosPerDocument()
    {
        string input = Path.Combine(TestUtil.SharedData, "corpora", "tinyshakespeare_input.txt");
        string path = Path.Combine(dir, "shakespeare.tok");
        var tokenizer = DiffuSharp.Text.Gpt2Tokenizer.FromDirectory(Path.Combine(TestUtil.SharedData, "tokenizers", "gpt2"))!;
        var summary = CorpusTokenizer.Run([input], tokenizer, path);
        using var data = PackedDataset.Open([path], 128, 0.05, 0);
        Assert.That(data.StreamTokens, Is.EqualTo(summary.Tokens + summary.Documents));
        Assert.That(data.BlockCount, Is.EqualTo(data.StreamTokens / 128));
        Assert.That(data.ValidationBlocks, Is.EqualTo((int)Math.Round(0.05 * data.BlockCount)));
        var all = new int[data.BlockCount * 128];
        for (int b = 0; b < data.BlockCount; b++) data.ReadBlock(b, all.AsSpan(b * 128, 128));
        long eosCount = all.Count(t => t == 50256);
        Assert.That(eosCount, Is.InRange(summary.Documents - 128, summary.Documents));
        var head = tokenizer.Encode("First Citizen:\nBefore we proceed any further, hear me speak.").Append(50256).ToArray();
        Assert.That(all.AsSpan(0, head.Length).ToArray(), Is.EqualTo(head), "the first document, then its EOS");
    }

    [Test]
    public void BadSettingsAndTooLittleDataAreDatasetErrors()
    {
        string path = Shard("a.tok", [[1, 2, 3], [4]]);
        Assert.That(Assert.Throws<DatasetException>(() => PackedDataset.Open([path], 1, 0, 0))!.Message, Does.Contain("at least 2"));
        Assert.That(Assert.Throws<DatasetException>(() => PackedDataset.Open([path], 7, 0, 0))!.Message,
            Does.Contain(path).And.Contain("6 tokens").And.Contain("one block of 7"));
        Assert.Throws<DatasetException>(() => PackedDataset.Open([path], 2, 1.0, 0));
        Assert.Throws<DatasetException>(() => PackedDataset.Open([path], 2, -0.1, 0));
        Assert.Throws<DatasetException>(() => PackedDataset.Open([path], 2, double.NaN, 0));
        Assert.Throws<DatasetException>(() => PackedDataset.Open([], 2, 0, 0));
        Assert.Throws<TokenShardException>(() => PackedDataset.Open([Path.Combine(dir, "missing.tok")], 2, 0, 0));

        string other = Shard("b.tok", [[1, 2]], vocab: 200);
        Assert.That(Assert.Throws<DatasetException>(() => PackedDataset.Open([path, other], 2, 0, 0))!.Message,
            Does.Contain("b.tok").And.Contain("vocabulary 200").And.Contain("does not match"));
        string noEos = Shard("c.tok", [[1, 2]], eos: null);
        Assert.Throws<DatasetException>(() => PackedDataset.Open([path, noEos], 2, 0, 0));
        string otherTokenizer = Shard("d.tok", [[1, 2]], tokenizer: "other");
        Assert.Throws<DatasetException>(() => PackedDataset.Open([path, otherTokenizer], 2, 0, 0));

        using var data = PackedDataset.Open([path], 2, 0, 0);
        var ids = new int[4];
        Assert.That(Assert.Throws<DatasetException>(() => data.ReadValidationBatch(0, 1, ids))!.Message, Does.Contain("no validation blocks"));
        var loader = new BlockLoader(data);
        Assert.Throws<DatasetException>(() => loader.SetState(new LoaderState(0, data.TrainingBlocks)));
        Assert.Throws<DatasetException>(() => loader.SetState(new LoaderState(-1, 0)));
        Assert.Throws<ArgumentException>(() => loader.NextBatch(3, ids));
        Assert.Throws<ArgumentOutOfRangeException>(() => loader.NextBatch(0, ids));
    }
}
