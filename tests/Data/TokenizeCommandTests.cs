using DiffuSharp.Data;
using DiffuSharp.Text;

namespace DiffuSharp.Tests.Data;

/// <summary>`diffu tokenize` run in-process: shards that match the tokenizer, and exit code 2 for bad input.</summary>
public sealed class TokenizeCommandTests
{
    string dir = "";

    [SetUp]
    public void SetUp() => dir = Directory.CreateTempSubdirectory("diffu-tokenize-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(dir, recursive: true);

    static string TokenizerDir => Path.Combine(TestUtil.SharedData, "tokenizers", "gpt2");

    static readonly Lazy<Gpt2Tokenizer> Gpt2 = new(() => Gpt2Tokenizer.FromDirectory(TokenizerDir)!);

    static (int Code, string Out, string Err) Run(params string[] args) => DiffuSharp.Tests.CliTests.CliRun.Run(args);

    string Write(string name, string text)
    {
        string path = Path.Combine(dir, name);
        File.WriteAllText(path, text);
        return path;
    }

    [Test]
    public void BlankLineFileBecomesOneDocumentPerParagraph()
    {
        string input = Write("plays.txt", "First Citizen:\nBefore we proceed.\n\nAll:\nSpeak, speak.\n\n\nFirst Citizen:\nYou are all resolved.\n");
        string output = Path.Combine(dir, "plays.tok");
        var (code, stdout, stderr) = Run("tokenize", "--tokenizer", TokenizerDir, "--out", output, input);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("3 documents").And.Contain("blank lines").And.Contain("tokens/s").And.Contain("EOS 50256"));

        using var shard = TokenShard.Open(output);
        Assert.That(shard.DocumentCount, Is.EqualTo(3));
        Assert.That(shard.VocabSize, Is.EqualTo(50257));
        Assert.That(shard.EosId, Is.EqualTo(50256));
        Assert.That(shard.Metadata.Tokenizer, Is.EqualTo("gpt2"));
        Assert.That(shard.Metadata.Sources, Is.EqualTo(new[] { input }));
        string[] expected = ["First Citizen:\nBefore we proceed.", "All:\nSpeak, speak.", "First Citizen:\nYou are all resolved."];
        for (int d = 0; d < 3; d++) Assert.That(shard.ReadDocument(d), Is.EqualTo(Gpt2.Value.Encode(expected[d])));
        Assert.That(stdout, Does.Contain($"{shard.TokenCount} tokens"));
    }

    [Test]
    public void EndOfTextFilesAreSplitOnTheMarkerAndConcatenatedInOrder()
    {
        string stories = Write("stories.txt", "Tom had a dog.\n\nThe dog ran.\n<|endoftext|>\nLily saw a cat.<|endoftext|>");
        string plain = Write("plain.txt", "One paragraph.\n\nAnother one.");
        string output = Path.Combine(dir, "mixed.tok");
        var (code, stdout, stderr) = Run("tokenize", "--tokenizer", TokenizerDir, "--out", output, stories, plain);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("<|endoftext|>").And.Contain("4 documents"));
        using var shard = TokenShard.Open(output);
        string[] expected = ["Tom had a dog.\n\nThe dog ran.", "Lily saw a cat.", "One paragraph.", "Another one."];
        Assert.That(shard.DocumentCount, Is.EqualTo(expected.Length));
        for (int d = 0; d < expected.Length; d++) Assert.That(shard.ReadDocument(d), Is.EqualTo(Gpt2.Value.Encode(expected[d])));
        Assert.That(shard.Metadata.Sources, Is.EqualTo(new[] { stories, plain }));
        Assert.That(Enumerable.Range(0, 4).SelectMany(d => shard.ReadDocument(d)), Has.None.EqualTo(50256), "the separator is not encoded");
    }

    [Test]
    public void MaxDocsStopsEarly()
    {
        string input = Write("many.txt", string.Join("\n\n", Enumerable.Range(0, 50).Select(i => $"Paragraph number {i}.")));
        string output = Path.Combine(dir, "few.tok");
        var (code, stdout, stderr) = Run("tokenize", "--tokenizer", TokenizerDir, "--out", output, "--max-docs", "7", input);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("stopped at --max-docs 7"));
        using var shard = TokenShard.Open(output);
        Assert.That(shard.DocumentCount, Is.EqualTo(7));
        Assert.That(shard.ReadDocument(6), Is.EqualTo(Gpt2.Value.Encode("Paragraph number 6.")));
    }

    [Test]
    public void VocabLimitUsesTheFirstTokensAndHasNoEos()
    {
        string input = Write("small.txt", "The quick brown fox jumps over the lazy dog.\n\nIt was not amused.");
        string output = Path.Combine(dir, "small.tok");
        var (code, stdout, stderr) = Run("tokenize", "--tokenizer", TokenizerDir, "--out", output, "--vocab-limit", "512", input);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("no EOS token"));
        using var shard = TokenShard.Open(output);
        Assert.That(shard.VocabSize, Is.EqualTo(512));
        Assert.That(shard.TokenWidth, Is.EqualTo(2));
        Assert.That(shard.EosId, Is.Null);
        Assert.That(shard.Metadata.Tokenizer, Is.EqualTo("gpt2-first-512"));
        var limited = Gpt2Tokenizer.FromDirectory(TokenizerDir, 512)!;
        Assert.That(shard.ReadDocument(0), Is.EqualTo(limited.Encode("The quick brown fox jumps over the lazy dog.")));
    }

    [Test]
    public void TinyShakespeareMatchesTheTokenizerDocumentByDocument()
    {
        string input = Path.Combine(TestUtil.SharedData, "corpora", "tinyshakespeare_input.txt");
        string output = Path.Combine(dir, "shakespeare.tok");
        var (code, stdout, stderr) = Run("tokenize", "--tokenizer", TokenizerDir, "--out", output, input);
        Assert.That(code, Is.EqualTo(0), stderr);
        using var shard = TokenShard.Open(output);
        var documents = TextDocuments.Split(File.ReadAllText(input));
        Assert.That(shard.DocumentCount, Is.EqualTo(documents.Count));
        // The command encodes in parallel; the shard must equal a plain sequential encoding.
        for (int d = 0; d < documents.Count; d++)
            Assert.That(shard.ReadDocument(d), Is.EqualTo(Gpt2.Value.Encode(documents[d])), $"document {d}");
        Assert.That(stdout, Does.Contain($"{documents.Count:N0} documents"));
    }

    /// <summary>`--out a.txt a.txt` overwrote its own input; the same file is refused by inode, through links too.</summary>
    [Test]
    public void TheOutputMayNotBeAnInput()
    {
        string input = Write("a.txt", "Some text.\n\nMore text.");
        string symlink = Path.Combine(dir, "link.txt");
        File.CreateSymbolicLink(symlink, input);
        foreach (var target in new[] { input, symlink })
        {
            var (code, _, stderr) = Run("tokenize", "--tokenizer", TokenizerDir, "--out", target, input);
            Assert.That(code, Is.EqualTo(2), stderr);
            Assert.That(stderr, Does.Contain("same file as the input"));
        }
        Assert.That(File.ReadAllText(input), Is.EqualTo("Some text.\n\nMore text."));
        Assert.That(Run("tokenize", "--tokenizer", TokenizerDir, "--out", Path.Combine(TokenizerDir, "vocab.bpe"), input).Code, Is.EqualTo(2),
            "nor a tokenizer file");
    }

    /// <summary>Reading a FIFO or /dev/zero never ends: inputs that are not regular files are refused before they are opened.</summary>
    [Test]
    public void SpecialInputsAreRefusedWithoutReadingThem()
    {
        string fifo = IO.OutputFileTests.MakeFifo(Path.Combine(dir, "pipe"));
        foreach (var input in new[] { "/dev/zero", "/dev/null", fifo })
        {
            var run = Task.Run(() => Run("tokenize", "--tokenizer", TokenizerDir, "--out", Path.Combine(dir, "o.tok"), input));
            Assert.That(run.Wait(TimeSpan.FromSeconds(20)), Is.True, $"{input}: the command must not read it");
            Assert.That(run.Result.Code, Is.EqualTo(2), run.Result.Err);
            Assert.That(run.Result.Err, Does.Contain("not a regular file"));
        }
        Assert.That(Run("tokenize", "--tokenizer", "/dev/zero", "--out", Path.Combine(dir, "o.tok"), Write("in.txt", "text")).Code, Is.EqualTo(2));
    }

    /// <summary>An existing token shard is replaced (asking for --out is asking for that); devices and FIFOs are not.</summary>
    [Test]
    public void AnExistingShardIsReplacedButNotADevice()
    {
        string input = Write("in.txt", "Some text.\n\nMore text.");
        string output = Path.Combine(dir, "o.tok");
        Assert.That(Run("tokenize", "--tokenizer", TokenizerDir, "--out", output, input).Code, Is.EqualTo(0));
        File.WriteAllText(input, "Other text.");
        Assert.That(Run("tokenize", "--tokenizer", TokenizerDir, "--out", output, input).Code, Is.EqualTo(0));
        using (var shard = TokenShard.Open(output)) Assert.That(shard.DocumentCount, Is.EqualTo(1));
        string fifo = IO.OutputFileTests.MakeFifo(Path.Combine(dir, "pipe"));
        var (code, _, stderr) = Run("tokenize", "--tokenizer", TokenizerDir, "--out", fifo, input);
        Assert.That(code, Is.EqualTo(2), stderr);
        Assert.That(DiffuSharp.IO.FileStatus.Kind(fifo), Is.EqualTo(DiffuSharp.IO.FileKind.Fifo));
        Assert.That(Directory.GetFiles(dir).Where(f => f.EndsWith(".tmp")), Is.Empty);
    }

    static IEnumerable<TestCaseData> BadArguments()
    {
        TestCaseData Case(string name, string expected, params string[] args) => new TestCaseData(args, expected).SetName($"ExitsWithTwoFor{name}");
        yield return Case("MissingInput", "input file not found", "--tokenizer", "{tok}", "--out", "{dir}/o.tok", "{dir}/nope.txt");
        yield return Case("NoInputs", "error", "--tokenizer", "{tok}", "--out", "{dir}/o.tok");
        yield return Case("NoOut", "--out", "--tokenizer", "{tok}", "{dir}/in.txt");
        yield return Case("MissingTokenizer", "tokenizer folder not found", "--tokenizer", "{dir}/no-tokenizer", "--out", "{dir}/o.tok", "{dir}/in.txt");
        yield return Case("FolderWithoutTokenizer", "no GPT-2 tokenizer files", "--tokenizer", "{dir}", "--out", "{dir}/o.tok", "{dir}/in.txt");
        yield return Case("ZeroMaxDocs", "--max-docs: 0 is out of range: must be at least 1", "--tokenizer", "{tok}", "--out", "{dir}/o.tok", "--max-docs", "0", "{dir}/in.txt");
        yield return Case("TinyVocabLimit", "below 256", "--tokenizer", "{tok}", "--out", "{dir}/o.tok", "--vocab-limit", "100", "{dir}/in.txt");
        yield return Case("NonNumericMaxDocs", "error", "--tokenizer", "{tok}", "--out", "{dir}/o.tok", "--max-docs", "many", "{dir}/in.txt");
        yield return Case("MissingOutputFolder", "output folder", "--tokenizer", "{tok}", "--out", "{dir}/missing/o.tok", "{dir}/in.txt");
        yield return Case("BlankInput", "no documents", "--tokenizer", "{tok}", "--out", "{dir}/o.tok", "{dir}/blank.txt");
        yield return Case("InvalidUtf8", "not valid UTF-8", "--tokenizer", "{tok}", "--out", "{dir}/o.tok", "{dir}/binary.txt");
        yield return Case("DirectoryInput", "input file is a folder, not a regular file", "--tokenizer", "{tok}", "--out", "{dir}/o.tok", "{dir}");
        // /dev/zero never ends: refused up front instead of being scanned for ever.
        yield return Case("CharacterDeviceInput", "not a regular file", "--tokenizer", "{tok}", "--out", "{dir}/o.tok", "/dev/zero");
    }

    [TestCaseSource(nameof(BadArguments))]
    public void BadInputExitsWithTwo(string[] template, string expected)
    {
        Write("in.txt", "Some text.\n\nMore text.");
        Write("blank.txt", "\n  \n\t\n");
        File.WriteAllBytes(Path.Combine(dir, "binary.txt"), [(byte)'o', (byte)'k', 0xFF, 0xFE, 0xC3, 0x28, (byte)'\n']);
        var args = template.Select(a => a.Replace("{tok}", TokenizerDir).Replace("{dir}", dir)).Prepend("tokenize").ToArray();
        var (code, _, stderr) = Run(args);
        Assert.That(code, Is.EqualTo(2), stderr);
        Assert.That(stderr, Does.Contain(expected));
        Assert.That(Directory.GetFiles(dir).Where(f => f.Contains(".tok")), Is.Empty, "nothing is left behind");
    }
}
