using DiffuSharp.Data;
using DiffuSharp.Models;

namespace DiffuSharp.Tests.Data;

/// <summary>method §5's SFT sequences item by item (hand-computed), the pairs files and their errors, and the SFT blocks.</summary>
public sealed class SftDataTests
{
    static readonly SftTokens Tokens = new(Bos: 1, Sep: 2, Eos: 3, Pad: 0);

    static (int[] Ids, byte[] Source) Build(int[] source, int[] target, int cutoff)
    {
        var s = SftSequence.Build(source, target, Tokens, cutoff);
        return (s.Ids, s.Source);
    }

    [Test]
    public void AShortPairIsFramedAndRightPaddedAndOnlyBosSourceSepAreSource()
    {
        var (ids, source) = Build([10, 11], [20], 8);
        Assert.That(ids, Is.EqualTo(new[] { 1, 10, 11, 2, 20, 3, 0, 0 }));
        Assert.That(source, Is.EqualTo(new byte[] { 1, 1, 1, 1, 0, 0, 0, 0 }), "the target, EOS and pads are maskable");
    }

    [Test]
    public void TheSourceKeepsItsLastTokensWhenTheTargetLeavesRoom()
    {
        var (ids, source) = Build([10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [20, 21], 8);
        Assert.That(ids, Is.EqualTo(new[] { 1, 17, 18, 19, 2, 20, 21, 3 }), "keep = 8 - 3 - 2 = 3 source tokens, the last ones");
        Assert.That(source, Is.EqualTo(new byte[] { 1, 1, 1, 1, 1, 0, 0, 0 }), "|src| + 2 = 5 source positions");
    }

    [Test]
    public void ASourceShorterThanTheRoomIsKeptWhole()
    {
        var (ids, _) = Build([10], [20, 21], 10);
        Assert.That(ids, Is.EqualTo(new[] { 1, 10, 2, 20, 21, 3, 0, 0, 0, 0 }));
    }

    [Test]
    public void TheTargetIsCutToCutoffMinusThreeAndTheQuirkKeepsTheWholeSource()
    {
        // |tgt| = 7 > 8 - 3: cut to 5; keep = 0, and Python's src[-0:] keeps all of src; the final cut to 8 drops the rest.
        var (ids, source) = Build([10, 11], [20, 21, 22, 23, 24, 25, 26], 8);
        Assert.That(ids, Is.EqualTo(new[] { 1, 10, 11, 2, 20, 21, 22, 23 }));
        Assert.That(source, Is.EqualTo(new byte[] { 1, 1, 1, 1, 0, 0, 0, 0 }));

        (ids, source) = Build([10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24], 8);
        Assert.That(ids, Is.EqualTo(new[] { 1, 10, 11, 12, 13, 14, 15, 2 }), "a long source then fills the whole sequence");
        Assert.That(source, Is.All.EqualTo((byte)1), "and nothing is left to noise or score");
    }

    [Test]
    public void ATargetThatFitsExactlyLeavesNoPad()
    {
        var (ids, source) = Build([], [20, 21, 22, 23], 8);
        Assert.That(ids, Is.EqualTo(new[] { 1, 2, 20, 21, 22, 23, 3, 0 }));
        Assert.That(source, Is.EqualTo(new byte[] { 1, 1, 0, 0, 0, 0, 0, 0 }));
    }

    string dir = "";

    [SetUp]
    public void SetUp() => dir = Directory.CreateTempSubdirectory("diffu-sft-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(dir, recursive: true);

    string Write(string name, string text)
    {
        string path = Path.Combine(dir, name);
        File.WriteAllText(path, text);
        return path;
    }

    [Test]
    public void BothFormatsAndBothSchemasRead()
    {
        var array = SftFile.Read(Write("a.json", "[\n {\"instruction\": \"q1\", \"output\": \"a1\"},\n {\"instruction\": \"q2\", \"output\": \"a2\"}\n]"));
        Assert.That(array.Select(p => (p.Source, p.Target, p.Line)), Is.EqualTo(new[] { ("q1", "a1", 2L), ("q2", "a2", 3L) }));
        var lines = SftFile.Read(Write("b.jsonl", "{\"src\": \"s1\", \"tgt\": \"t1\"}\n\n{\"src\": \"s2\", \"tgt\": \"t2\"}\n"));
        Assert.That(lines.Select(p => (p.Source, p.Target, p.Line)), Is.EqualTo(new[] { ("s1", "t1", 1L), ("s2", "t2", 3L) }));
    }

    [TestCase("{\"src\": \"a\", \"tgt\": \"b\"}\n{\"src\": \"a\"}\n", "line 2: missing field 'tgt'")]
    [TestCase("{\"src\": \"a\", \"tgt\": \"b\"}\n{\"src\": \"\", \"tgt\": \"b\"}\n", "line 2: field 'src' is empty")]
    [TestCase("{\"src\": \"a\", \"tgt\": [1]}\n", "line 1: field 'tgt' must be a string")]
    [TestCase("{\"src\": \"a\", \"tgt\": \"b\"}\n{\"src\": \"a\", \"tgt\": \"b\"\n", "line 2: invalid JSON")]
    [TestCase("[{\"instruction\": \"a\", \"output\": \"b\"},\n 7]", "line 2: expected an object")]
    [TestCase("[{\"instruction\": \"a\"}]", "line 1: missing field 'output'")]
    [TestCase("[]", "no rows")]
    [TestCase("  \n", "empty file")]
    public void AMalformedRowIsAnErrorNamingTheFileAndLine(string text, string problem)
    {
        string path = Write("bad.jsonl", text);
        var e = Assert.Throws<DiffuException>(() => SftFile.Read(path))!;
        Assert.That(e.Message, Does.StartWith(path + ": ").And.Contain(problem));
    }

    static List<SftSequence> Sequences(int n) =>
        Enumerable.Range(0, n).Select(i => SftSequence.Build([10 + i, 11 + i], [50 + i], Tokens, 8)).ToList();

    [Test]
    public void BlocksCarryTheirSourceMasksAndSplitOffValidation()
    {
        var blocks = new SftBlocks(Sequences(20), seed: 5, validationFraction: 0.1);
        Assert.That((blocks.TrainingBlockCount, blocks.ValidationBlockCount), Is.EqualTo((18, 2)));
        Assert.That(blocks.HasSourceMask, Is.True);
        Assert.That(blocks.BlockLength, Is.EqualTo(8));
        var ids = new int[3 * 8];
        var source = new byte[3 * 8];
        var seen = new HashSet<int>();
        for (int step = 0; step < 6; step++)
        {
            blocks.NextTrainingBatch(3, ids, source);
            for (int b = 0; b < 3; b++)
            {
                Assert.That(source.AsSpan(b * 8, 8).ToArray(), Is.EqualTo(new byte[] { 1, 1, 1, 1, 0, 0, 0, 0 }));
                seen.Add(ids[b * 8 + 1]);
            }
        }
        Assert.That(seen, Has.Count.EqualTo(18), "one epoch of 18 training rows visits each once");
        var validation = new int[2 * 8];
        blocks.ReadValidationBatch(0, 2, validation, source);
        Assert.That(seen.Intersect([validation[1], validation[9]]), Is.Empty, "validation rows are never trained on");
    }

    [Test]
    public void RanksTogetherReadWhatOneProcessReadsAndStateResumes()
    {
        var whole = new SftBlocks(Sequences(11), 3, 0.1);
        var ranks = Enumerable.Range(0, 2).Select(r => new SftBlocks(Sequences(11), 3, 0.1, new DataShard(r, 2))).ToArray();
        var global = new int[4 * 8];
        var slice = new int[2 * 8];
        var mask = new byte[4 * 8];
        for (int step = 0; step < 7; step++)
        {
            whole.NextTrainingBatch(4, global, mask);
            for (int r = 0; r < 2; r++)
            {
                ranks[r].NextTrainingBatch(2, slice, mask);
                Assert.That(slice, Is.EqualTo(global.AsSpan(r * 16, 16).ToArray()), $"step {step}, rank {r}");
            }
        }
        var resumed = new SftBlocks(Sequences(11), 3, 0.1) { State = whole.State };
        var a = new int[3 * 8];
        var b = new int[3 * 8];
        whole.NextTrainingBatch(3, a, new byte[24]);
        resumed.NextTrainingBatch(3, b, new byte[24]);
        Assert.That(b, Is.EqualTo(a));
        Assert.Throws<DiffuException>(() => resumed.State = [0, 99]);
    }
}
