using System.Buffers.Binary;
using System.Text;
using DiffuSharp.Data;

namespace DiffuSharp.Tests.Data;

/// <summary>Token shards: round trips at both token widths, the streaming writer, and every malformed file the reader must reject.</summary>
public sealed class TokenShardTests
{
    string dir = "";

    [SetUp]
    public void SetUp() => dir = Directory.CreateTempSubdirectory("diffu-shard-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(dir, recursive: true);

    static readonly TokenShardMetadata Meta = new("test-tokenizer", ["a.txt", "ünïcode ✓.txt"]);

    static List<int[]> RandomDocuments(Random rng, int count, int vocab, int maxLength)
    {
        var documents = new List<int[]>();
        for (int d = 0; d < count; d++)
        {
            var doc = new int[d == 3 ? 0 : rng.Next(1, maxLength)];
            for (int i = 0; i < doc.Length; i++) doc[i] = rng.Next(vocab);
            documents.Add(doc);
        }
        documents[0][0] = vocab - 1;
        return documents;
    }

    [TestCase(1000, 2)]
    [TestCase(65536, 2)]
    [TestCase(65537, 4)]
    [TestCase(100_000, 4)]
    public void RoundTripKeepsDocumentsAndHeader(int vocab, int width)
    {
        var documents = RandomDocuments(TestUtil.NewRandom(), 20, vocab, 50);
        string path = Path.Combine(dir, "round.tok");
        TokenShard.Write(path, documents, vocab, vocab - 2, Meta);

        using var shard = TokenShard.Open(path);
        Assert.That(shard.FilePath, Is.EqualTo(path));
        Assert.That(shard.TokenWidth, Is.EqualTo(width));
        Assert.That(shard.VocabSize, Is.EqualTo(vocab));
        Assert.That(shard.EosId, Is.EqualTo(vocab - 2));
        Assert.That(shard.Metadata.Tokenizer, Is.EqualTo(Meta.Tokenizer));
        Assert.That(shard.Metadata.Sources, Is.EqualTo(Meta.Sources));
        Assert.That(shard.DocumentCount, Is.EqualTo(documents.Count));
        long total = documents.Sum(d => (long)d.Length);
        Assert.That(shard.TokenCount, Is.EqualTo(total));
        for (int d = 0; d < documents.Count; d++)
        {
            Assert.That(shard.ReadDocument(d), Is.EqualTo(documents[d]), $"document {d}");
            Assert.That(shard.DocumentLength(d), Is.EqualTo(documents[d].Length));
        }
        Assert.That(shard.DocumentStart(documents.Count), Is.EqualTo(total));
        var all = new int[total];
        shard.CopyTokens(0, all);
        Assert.That(all, Is.EqualTo(documents.SelectMany(d => d)));

        int metadataLength = BinaryPrimitives.ReadInt32LittleEndian(File.ReadAllBytes(path).AsSpan(36));
        Assert.That((40 + metadataLength) % 8, Is.Zero, "offsets and tokens start 8-byte aligned");
        Assert.That(new FileInfo(path).Length, Is.EqualTo(40 + metadataLength + 8L * (documents.Count + 1) + width * total));
    }

    [Test]
    public void ShardWithoutEosOrDocumentsRoundTrips()
    {
        string path = Path.Combine(dir, "empty.tok");
        TokenShard.Write(path, [], 300, null, new TokenShardMetadata("t", []));
        using var shard = TokenShard.Open(path);
        Assert.That(shard.EosId, Is.Null);
        Assert.That(shard.DocumentCount, Is.Zero);
        Assert.That(shard.TokenCount, Is.Zero);
        Assert.That(shard.Metadata.Sources, Is.Empty);
    }

    [Test]
    public void StreamingWriterRejectsABadDocumentWithoutDamagingTheShard()
    {
        string path = Path.Combine(dir, "stream.tok");
        using (var writer = new TokenShardWriter(path, 100, 99, Meta))
        {
            writer.Add([1, 2, 3]);
            var e = Assert.Throws<TokenShardException>(() => writer.Add([4, 100, 5]));
            Assert.That(e!.Message, Does.Contain(path).And.Contain("document 1").And.Contain("token 100"));
            Assert.Throws<TokenShardException>(() => writer.Add([-1]));
            writer.Add([7, 8]);
            Assert.That(writer.DocumentCount, Is.EqualTo(2));
            Assert.That(writer.TokenCount, Is.EqualTo(5));
            writer.Complete();
            Assert.Throws<InvalidOperationException>(() => writer.Add([1]));
        }
        using var shard = TokenShard.Open(path);
        Assert.That(shard.ReadDocument(0), Is.EqualTo(new[] { 1, 2, 3 }));
        Assert.That(shard.ReadDocument(1), Is.EqualTo(new[] { 7, 8 }));
        Assert.That(Directory.GetFiles(dir), Is.EqualTo(new[] { path }), "no scratch files are left behind");
    }

    [Test]
    public void AbandonedWriterLeavesNothingAndKeepsTheOldShard()
    {
        string path = Path.Combine(dir, "keep.tok");
        TokenShard.Write(path, [[1, 2]], 10, null, Meta);
        byte[] before = File.ReadAllBytes(path);
        using (var writer = new TokenShardWriter(path, 10, null, Meta))
            writer.Add([3, 4, 5]);
        Assert.That(Directory.GetFiles(dir), Is.EqualTo(new[] { path }));
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(before));
    }

    [Test]
    public void WriterRejectsBadSettings()
    {
        Assert.Throws<TokenShardException>(() => new TokenShardWriter(Path.Combine(dir, "a.tok"), 0, null, Meta));
        Assert.Throws<TokenShardException>(() => new TokenShardWriter(Path.Combine(dir, "a.tok"), 10, 10, Meta));
        var e = Assert.Throws<TokenShardException>(() => new TokenShardWriter(Path.Combine(dir, "missing", "a.tok"), 10, null, Meta));
        Assert.That(e!.Message, Does.Contain("output folder"));
    }

    // ---- malformed files ---------------------------------------------------------------------------

    /// <summary>A shard assembled byte by byte from the documented layout, so each field can be broken on its own.</summary>
    public sealed record RawShard
    {
        public byte[] Magic { get; init; } = "DIFFUTOK"u8.ToArray();
        public uint Version { get; init; } = 1;
        public uint Width { get; init; } = 2;
        public uint Vocab { get; init; } = 100;
        public ulong? Documents { get; init; }
        public ulong? Tokens { get; init; }
        public string Metadata { get; init; } = """{"tokenizer":"t","sources":["x.txt"],"eos_id":99}""";
        public byte[]? MetadataBytes { get; init; }
        public uint? MetadataLength { get; init; }
        public ulong[] Offsets { get; init; } = [0, 2, 5];
        public long[] TokenValues { get; init; } = [1, 2, 3, 4, 5];
        public byte[] Trailing { get; init; } = [];
        public int Truncate { get; init; }
        public int? KeepBytes { get; init; }

        public byte[] Bytes()
        {
            var metadata = MetadataBytes ?? Encoding.UTF8.GetBytes(Metadata);
            var s = new MemoryStream();
            var w = new BinaryWriter(s);
            w.Write(Magic);
            w.Write(Version);
            w.Write(Width);
            w.Write(Vocab);
            w.Write(Documents ?? (ulong)(Offsets.Length - 1));
            w.Write(Tokens ?? (ulong)TokenValues.Length);
            w.Write(MetadataLength ?? (uint)metadata.Length);
            w.Write(metadata);
            foreach (var o in Offsets) w.Write(o);
            foreach (var t in TokenValues)
            {
                if (Width == 2) w.Write((ushort)t);
                else w.Write((uint)t);
            }
            w.Write(Trailing);
            w.Flush();
            var bytes = s.ToArray();
            return bytes[..(KeepBytes ?? bytes.Length - Truncate)];
        }
    }

    static IEnumerable<TestCaseData> Malformed()
    {
        TestCaseData Case(string name, RawShard shard, string expected) => new TestCaseData(shard, expected).SetName($"Rejects{name}");
        yield return Case("ValidControl", new RawShard(), "");
        yield return Case("ShortHeader", new RawShard { KeepBytes = 39 }, "shorter than the 40-byte header");
        yield return Case("BadMagic", new RawShard { Magic = "SAFETENS"u8.ToArray() }, "not a token shard");
        yield return Case("BadVersion", new RawShard { Version = 2 }, "format version 2 is not supported");
        yield return Case("BadWidth", new RawShard { Width = 3 }, "token width is 3 bytes");
        yield return Case("ZeroVocab", new RawShard { Vocab = 0 }, "vocabulary size 0");
        yield return Case("HugeVocab", new RawShard { Vocab = 3_000_000_000 }, "vocabulary size 3000000000");
        yield return Case("VocabTooBigForTwoBytes", new RawShard { Vocab = 70_000 }, "does not fit 2-byte tokens");
        yield return Case("MetadataPastEnd", new RawShard { MetadataLength = 10_000 }, "truncated: the metadata is 10000 bytes");
        yield return Case("MetadataOverLimit", new RawShard { MetadataLength = uint.MaxValue }, "larger than the");
        yield return Case("MetadataNotJson", new RawShard { Metadata = "{tokenizer" }, "metadata is not valid UTF-8 JSON");
        yield return Case("MetadataNotUtf8", new RawShard { MetadataBytes = [(byte)'"', 0xC3, 0x28, (byte)'"'] }, "metadata is not valid UTF-8 JSON");
        // Half a surrogate pair parses, and reading it as a string threw an InvalidOperationException.
        yield return Case("MetadataTokenizerHalfASurrogatePair", new RawShard { Metadata = """{"tokenizer":"\ud800","sources":[],"eos_id":null}""" },
            "metadata string \"\\ud800\" is not valid text");
        yield return Case("MetadataSourceHalfASurrogatePair", new RawShard { Metadata = """{"tokenizer":"t","sources":["\udc00"],"eos_id":null}""" },
            "metadata string \"\\udc00\" is not valid text");
        yield return Case("MetadataKeyHalfASurrogatePair", new RawShard { Metadata = """{"\ud800":1,"tokenizer":"t","sources":[],"eos_id":null}""" },
            "metadata is not valid UTF-8 JSON");
        yield return Case("MetadataKeyTwice", new RawShard { Metadata = """{"tokenizer":"t","tokenizer":"u","sources":[],"eos_id":null}""" },
            "metadata is not valid UTF-8 JSON: Duplicate property 'tokenizer'");
        yield return Case("MetadataDeeplyNested", new RawShard { Metadata = new string('[', 1000) + new string(']', 1000) }, "metadata is not valid UTF-8 JSON");
        yield return Case("MetadataNotObject", new RawShard { Metadata = "[1,2]" }, "metadata is not a JSON object");
        yield return Case("MetadataWithoutTokenizer", new RawShard { Metadata = """{"sources":[],"eos_id":null}""" }, "no \"tokenizer\"");
        yield return Case("MetadataWithoutSources", new RawShard { Metadata = """{"tokenizer":"t","eos_id":null}""" }, "no \"sources\"");
        yield return Case("MetadataSourceNotString", new RawShard { Metadata = """{"tokenizer":"t","sources":[1],"eos_id":null}""" }, "not a string");
        yield return Case("MetadataWithoutEos", new RawShard { Metadata = """{"tokenizer":"t","sources":[]}""" }, "no \"eos_id\"");
        yield return Case("EosNotANumber", new RawShard { Metadata = """{"tokenizer":"t","sources":[],"eos_id":"x"}""" }, "not a token id or null");
        yield return Case("EosOutsideVocab", new RawShard { Metadata = """{"tokenizer":"t","sources":[],"eos_id":100}""" }, "\"eos_id\" 100 is outside the vocabulary");
        yield return Case("TruncatedTokens", new RawShard { Truncate = 1 }, "truncated: 2 documents and 5 tokens");
        yield return Case("TruncatedOffsets", new RawShard { Truncate = 15 }, "truncated");
        yield return Case("TrailingBytes", new RawShard { Trailing = [0, 0, 0] }, "3 unexpected bytes after the last token");
        yield return Case("ImpossibleDocumentCount", new RawShard { Documents = ulong.MaxValue }, "truncated");
        yield return Case("ImpossibleTokenCount", new RawShard { Tokens = ulong.MaxValue / 2 }, "truncated");
        yield return Case("OffsetsNotStartingAtZero", new RawShard { Offsets = [1, 2, 5] }, "start at 1, not 0");
        yield return Case("OffsetsNotMonotonic", new RawShard { Offsets = [0, 4, 3] }, "not monotonic: document 1 ends at 3");
        yield return Case("OffsetPastTokens", new RawShard { Offsets = [0, 9, 5] }, "document 0 ends at token 9, past the 5 tokens");
        yield return Case("OffsetHuge", new RawShard { Offsets = [0, ulong.MaxValue, 5] }, "past the 5 tokens");
        yield return Case("LastOffsetShort", new RawShard { Offsets = [0, 2, 4] }, "the last document ends at token 4, but the file holds 5");
        yield return Case("TokenOutsideVocab", new RawShard { TokenValues = [1, 2, 3, 100, 5] }, "token 100 at position 3 (document 1) is outside the vocabulary");
        yield return Case("WideTokenOutsideVocab", new RawShard { Width = 4, TokenValues = [1, 4_000_000_000, 3, 4, 5] },
            "token 4000000000 at position 1 (document 0)");
    }

    [TestCaseSource(nameof(Malformed))]
    public void MalformedShardIsRejectedWithFileAndProblem(RawShard raw, string expected)
    {
        string path = Path.Combine(dir, "bad.tok");
        File.WriteAllBytes(path, raw.Bytes());
        if (expected.Length == 0)
        {
            using var shard = TokenShard.Open(path);
            Assert.That(shard.ReadDocument(1), Is.EqualTo(new[] { 3, 4, 5 }), "the unbroken raw shard is valid");
            return;
        }
        var e = Assert.Throws<TokenShardException>(() => TokenShard.Open(path).Dispose());
        Assert.That(e!.FilePath, Is.EqualTo(path));
        Assert.That(e.Message, Does.StartWith(path + ": ").And.Contain(expected));
        Assert.That(e, Is.InstanceOf<DiffuException>());
    }

    [Test]
    public void MissingEmptyAndDirectoryPathsAreRejected()
    {
        string missing = Path.Combine(dir, "missing.tok");
        Assert.That(Assert.Throws<TokenShardException>(() => TokenShard.Open(missing))!.Message, Does.Contain("file not found"));
        Assert.That(Assert.Throws<TokenShardException>(() => TokenShard.Open(dir))!.Message, Does.Contain("is a directory"));
        string empty = Path.Combine(dir, "empty.tok");
        File.WriteAllBytes(empty, []);
        Assert.That(Assert.Throws<TokenShardException>(() => TokenShard.Open(empty))!.Message, Does.Contain("truncated: the file is 0 bytes"));
    }

    [Test]
    public void CharacterDeviceIsRefused()
    {
        Assume.That(File.Exists("/dev/zero"), "needs /dev/zero");
        string zero = Path.Combine(dir, "zero.tok");
        File.CreateSymbolicLink(zero, "/dev/zero");
        Assert.That(Assert.Throws<TokenShardException>(() => TokenShard.Open(zero))!.Message, Does.Contain("not a regular file"));
    }

    [Test]
    public void ReadsOutsideTheShardAreArgumentErrors()
    {
        string path = Path.Combine(dir, "small.tok");
        TokenShard.Write(path, [[1, 2], [3]], 10, null, Meta);
        using var shard = TokenShard.Open(path);
        Assert.Throws<ArgumentOutOfRangeException>(() => shard.ReadDocument(2));
        Assert.Throws<ArgumentOutOfRangeException>(() => shard.ReadDocument(-1));
        Assert.Throws<ArgumentOutOfRangeException>(() => shard.CopyTokens(1, new int[3]));
        shard.Dispose();
        Assert.Throws<ObjectDisposedException>(() => shard.ReadDocument(0));
    }
}
