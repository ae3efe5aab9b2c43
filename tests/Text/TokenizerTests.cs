using DiffuSharp.Text;

namespace DiffuSharp.Tests;

/// <summary>
/// GPT-2 BPE. The expected ids come from tests/reference/gpt2_bpe_reference.py, an independent Python
/// implementation of GPT-2's byte-level BPE (see its header for the commands that printed these cases).
/// </summary>
public class TokenizerTests
{
    private static readonly Lazy<Gpt2Tokenizer> Full = new(() => Gpt2Tokenizer.FromFiles(Encoder, Merges));
    private static readonly Lazy<Gpt2Tokenizer> First512 = new(() => Gpt2Tokenizer.FromFiles(Encoder, Merges, vocabLimit: 512));

    private static string Gpt2Dir => Path.Combine(TestUtil.SharedData, "tokenizers", "gpt2");
    private static string Encoder => Path.Combine(Gpt2Dir, "encoder.json");
    private static string Merges => Path.Combine(Gpt2Dir, "vocab.bpe");

    private string _dir = "";

    [SetUp]
    public void SetUp()
    {
        _dir = Path.Combine(Path.GetTempPath(), "diffusharp-tokenizer-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
    }

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    // python3 tests/reference/gpt2_bpe_reference.py
    [TestCase("Hello world", new[] { 15496, 995 })]
    [TestCase("<|endoftext|>", new[] { 50256 })]
    [TestCase("Hello<|endoftext|>world", new[] { 15496, 50256, 6894 })]
    [TestCase(" <|endoftext|> after", new[] { 220, 50256, 706 })]
    [TestCase("", new int[0])]
    [TestCase(" ", new[] { 220 })]
    [TestCase("  leading spaces", new[] { 220, 3756, 9029 })]
    [TestCase("multiple   spaces   between  words", new[] { 48101, 220, 220, 9029, 220, 220, 1022, 220, 2456 })]
    [TestCase("trailing spaces   ", new[] { 9535, 4386, 9029, 220, 220, 220 })]
    [TestCase("line one\nline two\n\n\nthree\n", new[] { 1370, 530, 198, 1370, 734, 628, 198, 15542, 198 })]
    [TestCase("windows\r\nline\tand\t\ttabs", new[] { 28457, 201, 198, 1370, 197, 392, 197, 197, 8658, 82 })]
    [TestCase("3.14159 and 1234567890 and 42nd, 2024-01-31", new[] { 18, 13, 1415, 19707, 290, 17031, 2231, 30924, 3829, 290, 5433, 358, 11, 48609, 12, 486, 12, 3132 })]
    [TestCase("Hello, world! How's it going? (Fine); [ok] {x} -- \"quoted\" ... 100%", new[] { 15496, 11, 995, 0, 1374, 338, 340, 1016, 30, 357, 34389, 1776, 685, 482, 60, 1391, 87, 92, 1377, 366, 421, 5191, 1, 2644, 1802, 4 })]
    [TestCase("I'm sure they're fine, we've seen it; I'll go, he'd say, don't, can't", new[] { 40, 1101, 1654, 484, 821, 3734, 11, 356, 1053, 1775, 340, 26, 314, 1183, 467, 11, 339, 1549, 910, 11, 836, 470, 11, 460, 470 })]
    [TestCase("I'M SHOUTING THEY'RE", new[] { 40, 6, 44, 6006, 12425, 2751, 33302, 6, 2200 })]
    [TestCase("caf\u00E9 na\u00EFve r\u00E9sum\u00E9 \u00DCber", new[] { 66, 1878, 2634, 41492, 40560, 16345, 2634, 49363, 527 })]
    [TestCase("emoji \U0001F600 and \U0001F389\U0001F389!", new[] { 368, 31370, 30325, 222, 290, 12520, 236, 231, 8582, 236, 231, 0 })]
    [TestCase("\u65E5\u672C\u8A9E\u306E\u30C6\u30AD\u30B9\u30C8 and \u041F\u0440\u0438\u0432\u0435\u0442 \u043C\u0438\u0440", new[] { 33768, 98, 17312, 105, 45739, 252, 5641, 24336, 25084, 43302, 290, 12466, 253, 21169, 18849, 38857, 16843, 20375, 12466, 120, 18849, 21169 })]
    [TestCase("antidisestablishmentarianism", new[] { 415, 29207, 44390, 3699, 1042 })]
    [TestCase("def f(x):\n    return x**2  # square", new[] { 4299, 277, 7, 87, 2599, 198, 220, 220, 220, 1441, 2124, 1174, 17, 220, 1303, 6616 })]
    [TestCase("$100.00 @user #tag https://example.com/a?b=c&d=e", new[] { 3, 3064, 13, 405, 2488, 7220, 1303, 12985, 3740, 1378, 20688, 13, 785, 14, 64, 30, 65, 28, 66, 5, 67, 28, 68 })]
    public void Gpt2Ids(string text, int[] expected)
    {
        Assert.That(Full.Value.Encode(text), Is.EqualTo(expected));
        Assert.That(Full.Value.Decode(expected), Is.EqualTo(text));
    }

    // python3 tests/reference/gpt2_bpe_reference.py --vocab-limit 512
    [TestCase("Hello world", new[] { 39, 68, 297, 78, 476, 335 })]
    [TestCase("<|endoftext|>", new[] { 27, 91, 437, 78, 69, 83, 68, 87, 83, 91, 29 })]
    [TestCase("Hello<|endoftext|>world", new[] { 39, 68, 297, 78, 27, 91, 437, 78, 69, 83, 68, 87, 83, 91, 29, 86, 273, 335 })]
    [TestCase(" <|endoftext|> after", new[] { 220, 27, 91, 437, 78, 69, 83, 68, 87, 83, 91, 29, 257, 69, 353 })]
    [TestCase("", new int[0])]
    [TestCase(" ", new[] { 220 })]
    [TestCase("  leading spaces", new[] { 220, 443, 324, 278, 264, 79, 330, 274 })]
    [TestCase("multiple   spaces   between  words", new[] { 76, 377, 83, 72, 79, 293, 220, 220, 264, 79, 330, 274, 220, 220, 307, 83, 86, 68, 268, 220, 476, 67, 82 })]
    [TestCase("trailing spaces   ", new[] { 83, 430, 346, 278, 264, 79, 330, 274, 220, 220, 220 })]
    [TestCase("line one\nline two\n\n\nthree\n", new[] { 75, 500, 319, 68, 198, 75, 500, 256, 86, 78, 198, 198, 198, 400, 260, 68, 198 })]
    [TestCase("windows\r\nline\tand\t\ttabs", new[] { 86, 259, 67, 322, 82, 201, 198, 75, 500, 197, 392, 197, 197, 83, 397, 82 })]
    [TestCase("3.14159 and 1234567890 and 42nd, 2024-01-31", new[] { 18, 13, 16, 19, 16, 20, 24, 290, 352, 17, 18, 19, 20, 21, 22, 23, 24, 15, 290, 220, 19, 17, 358, 11, 362, 15, 17, 19, 12, 486, 12, 18, 16 })]
    [TestCase("Hello, world! How's it going? (Fine); [ok] {x} -- \"quoted\" ... 100%", new[] { 39, 68, 297, 78, 11, 476, 335, 0, 367, 322, 338, 340, 467, 278, 30, 357, 37, 500, 8, 26, 220, 58, 482, 60, 220, 90, 87, 92, 220, 438, 366, 421, 313, 276, 1, 220, 492, 13, 352, 405, 4 })]
    [TestCase("I'm sure they're fine, we've seen it; I'll go, he'd say, don't, can't", new[] { 40, 6, 76, 424, 260, 484, 6, 260, 277, 500, 11, 356, 6, 303, 384, 268, 340, 26, 314, 6, 297, 467, 11, 339, 6, 67, 264, 323, 11, 288, 261, 470, 11, 460, 470 })]
    [TestCase("I'M SHOUTING THEY'RE", new[] { 40, 6, 44, 311, 39, 46, 52, 51, 40, 45, 38, 309, 39, 36, 56, 6, 49, 36 })]
    [TestCase("caf\u00E9 na\u00EFve r\u00E9sum\u00E9 \u00DCber", new[] { 66, 64, 69, 127, 102, 299, 64, 127, 107, 303, 374, 127, 102, 82, 388, 127, 102, 220, 127, 250, 65, 263 })]
    [TestCase("emoji \U0001F600 and \U0001F389\U0001F389!", new[] { 368, 78, 73, 72, 220, 172, 253, 246, 222, 290, 220, 172, 253, 236, 231, 172, 253, 236, 231, 0 })]
    [TestCase("\u65E5\u672C\u8A9E\u306E\u30C6\u30AD\u30B9\u30C8 and \u041F\u0440\u0438\u0432\u0435\u0442 \u043C\u0438\u0440", new[] { 162, 245, 98, 162, 250, 105, 164, 103, 252, 159, 223, 106, 159, 225, 228, 159, 224, 255, 159, 224, 117, 159, 225, 230, 290, 220, 140, 253, 141, 222, 140, 116, 140, 110, 140, 113, 141, 224, 220, 140, 120, 140, 116, 141, 222 })]
    [TestCase("antidisestablishmentarianism", new[] { 415, 312, 271, 395, 397, 75, 271, 71, 434, 283, 72, 272, 271, 76 })]
    [TestCase("def f(x):\n    return x**2  # square", new[] { 67, 68, 69, 277, 7, 87, 8, 25, 198, 220, 220, 220, 302, 83, 333, 77, 220, 87, 9, 9, 17, 220, 220, 2, 264, 421, 64, 260 })]
    [TestCase("$100.00 @user #tag https://example.com/a?b=c&d=e", new[] { 3, 16, 405, 13, 405, 220, 31, 385, 263, 220, 2, 83, 363, 289, 83, 83, 79, 82, 25, 14, 14, 68, 87, 321, 79, 293, 13, 66, 296, 14, 64, 30, 65, 28, 66, 5, 67, 28, 68 })]
    public void LimitedVocabIds(string text, int[] expected)
    {
        Assert.That(First512.Value.Encode(text), Is.EqualTo(expected));
        Assert.That(First512.Value.Decode(expected), Is.EqualTo(text));
    }

    // python3 tests/reference/gpt2_bpe_reference.py (the corpus lines at the end)
    [TestCase("corpora/tinyshakespeare_input.txt", 3000, 23651, 1076930832053L)]
    [TestCase("corpora/tinystories/train_v2_head.txt", 1000, 32579, 1793072656310L)]
    public void Gpt2CorpusMatchesReference(string file, int lines, int tokens, long checksum) =>
        CheckCorpus(Full.Value, file, lines, tokens, checksum);

    // python3 tests/reference/gpt2_bpe_reference.py --vocab-limit 512 (the corpus lines at the end)
    [TestCase("corpora/tinyshakespeare_input.txt", 3000, 42335, 189709913014L)]
    [TestCase("corpora/tinystories/train_v2_head.txt", 1000, 65348, 511342235675L)]
    public void LimitedVocabCorpusMatchesReference(string file, int lines, int tokens, long checksum) =>
        CheckCorpus(First512.Value, file, lines, tokens, checksum);

    [Test]
    public void FullVocabularyProperties()
    {
        var tok = Full.Value;
        Assert.That(tok.VocabSize, Is.EqualTo(50257));
        Assert.That(tok.EndOfTextId, Is.EqualTo(50256));
        Assert.That(tok.Name, Is.EqualTo("gpt2"));
        Assert.That(tok.Decode([50256, 15496]), Is.EqualTo("<|endoftext|>Hello"));
    }

    [Test]
    public void NoPrefixSpaceAndNoBeginningToken()
    {
        Assert.That(Full.Value.Encode("world"), Is.EqualTo(new[] { 6894 }));
        Assert.That(Full.Value.Encode(" world"), Is.EqualTo(new[] { 995 }));
        Assert.That(Full.Value.Encode(""), Is.Empty);
    }

    [TestCase(256)]
    [TestCase(300)]
    [TestCase(512)]
    [TestCase(1000)]
    [TestCase(5000)]
    [TestCase(50256)]
    public void LimitedVocabularyIsSelfConsistent(int limit)
    {
        var tok = Gpt2Tokenizer.FromFiles(Encoder, Merges, limit);
        Assert.That(tok.VocabSize, Is.EqualTo(limit));
        Assert.That(tok.EndOfTextId, Is.Null, "<|endoftext|> is id 50256, outside the first V tokens");
        Assert.That(tok.Name, Is.EqualTo($"gpt2-first-{limit}"));
        foreach (string text in SampleTexts())
        {
            var ids = tok.Encode(text);
            Assert.That(ids, Has.All.InRange(0, limit - 1));
            Assert.That(tok.Decode(ids), Is.EqualTo(text));
        }
        Assert.That(tok.Encode("<|endoftext|>"), Has.Count.GreaterThan(1), "plain text once the special token is gone");
    }

    [TestCase(50257)]
    [TestCase(50304)]
    public void LimitAtOrAboveTheVocabularyChangesNothing(int limit)
    {
        var tok = Gpt2Tokenizer.FromFiles(Encoder, Merges, limit);
        Assert.That(tok.VocabSize, Is.EqualTo(50257));
        Assert.That(tok.EndOfTextId, Is.EqualTo(50256));
        Assert.That(tok.Name, Is.EqualTo("gpt2"));
        Assert.That(tok.Encode("a<|endoftext|>  b"), Is.EqualTo(Full.Value.Encode("a<|endoftext|>  b")));
    }

    [Test]
    public void FullVocabularyRoundTripsCorpusText()
    {
        foreach (string text in SampleTexts())
        {
            var ids = Full.Value.Encode(text);
            Assert.That(ids, Has.All.InRange(0, 50256));
            Assert.That(Full.Value.Decode(ids), Is.EqualTo(text));
        }
    }

    [TestCase(255)]
    [TestCase(0)]
    [TestCase(-1)]
    public void LimitBelowTheByteTokensIsAnError(int limit)
    {
        var e = Assert.Throws<TokenizerException>(() => Gpt2Tokenizer.FromFiles(Encoder, Merges, limit))!;
        Assert.That(e.Message, Does.Contain($"limit {limit}").And.Contain("256"));
    }

    [TestCase(50257)]
    [TestCase(-1)]
    [TestCase(int.MaxValue)]
    public void DecodingAnIdOutsideTheVocabularyIsAnError(int id)
    {
        var e = Assert.Throws<TokenizerException>(() => Full.Value.Decode([15496, id]))!;
        Assert.That(e.Message, Does.Contain($"token id {id}").And.Contain("gpt2"));
        Assert.Throws<TokenizerException>(() => First512.Value.Decode([512]));
    }

    [Test]
    public void FromDirectoryFindsOpenAiFileNames()
    {
        var tok = Gpt2Tokenizer.FromDirectory(Gpt2Dir)!;
        Assert.That(tok.Encode("Hello world"), Is.EqualTo(new[] { 15496, 995 }));
        Assert.That(Gpt2Tokenizer.FromDirectory(Gpt2Dir, 512)!.VocabSize, Is.EqualTo(512));
    }

    [Test]
    public void FromDirectoryFindsHuggingFaceFileNames()
    {
        File.Copy(Encoder, Path.Combine(_dir, "vocab.json"));
        File.Copy(Merges, Path.Combine(_dir, "merges.txt"));
        var tok = Gpt2Tokenizer.FromDirectory(_dir)!;
        Assert.That(tok.Encode("Hello world<|endoftext|>"), Is.EqualTo(new[] { 15496, 995, 50256 }));
    }

    [Test]
    public void FromDirectoryWithoutTokenizerFilesIsNull() => Assert.That(Gpt2Tokenizer.FromDirectory(_dir), Is.Null);

    [Test]
    public void FromDirectoryWithHalfAPairIsAnError()
    {
        File.Copy(Encoder, Path.Combine(_dir, "vocab.json"));
        var e = Assert.Throws<TokenizerException>(() => Gpt2Tokenizer.FromDirectory(_dir))!;
        Assert.That(e.Message, Does.Contain(_dir).And.Contain("vocab.json but not merges.txt"));
    }

    [Test]
    public void FromDirectoryOfAMissingFolderIsAnError()
    {
        string dir = Path.Combine(_dir, "absent");
        var e = Assert.Throws<TokenizerException>(() => Gpt2Tokenizer.FromDirectory(dir))!;
        Assert.That(e.Message, Does.Contain(dir).And.Contain("not found"));
    }

    [Test]
    public void MissingFilesAreErrorsNamingThem()
    {
        string absent = Path.Combine(_dir, "absent.json");
        var e = Assert.Throws<TokenizerException>(() => Gpt2Tokenizer.FromFiles(absent, Merges))!;
        Assert.That(e.Message, Does.Contain(absent).And.Contain("file not found"));
        e = Assert.Throws<TokenizerException>(() => Gpt2Tokenizer.FromFiles(Encoder, absent))!;
        Assert.That(e.Message, Does.Contain(absent).And.Contain("file not found"));
    }

    /// <summary>/dev/zero reports length 0 and never ends: refused, not read until memory runs out.</summary>
    [Test]
    public void CharacterDeviceAsVocabularyIsRefused()
    {
        Assume.That(File.Exists("/dev/zero"), "needs /dev/zero");
        string zero = Path.Combine(_dir, "vocab.json");
        File.CreateSymbolicLink(zero, "/dev/zero");
        var e = Assert.Throws<TokenizerException>(() => Gpt2Tokenizer.FromFiles(zero, Merges))!;
        Assert.That(e.Message, Does.StartWith(zero + ": ").And.Contain("not a regular file"));
    }

    [TestCase("{\"a\": 0,", "not valid JSON")]
    [TestCase("[\"a\"]", "not a JSON object of token -> id")]
    [TestCase("{}", "vocabulary is empty")]
    [TestCase("{\"a\": \"0\"}", "token 'a' has an id that is not a non-negative integer")]
    [TestCase("{\"a\": -3}", "token 'a' has an id that is not a non-negative integer")]
    [TestCase("{\"a\": 1.5}", "token 'a' has an id that is not a non-negative integer")]
    [TestCase("{\"a\": 0, \"a\": 1}", "token 'a' appears twice")]
    [TestCase("{\"a\": 0, \"b\": 0}", "id 0 is given to both 'a' and 'b'")]
    [TestCase("{\"a\": 0, \"b\": 1}", "(U+0100) is missing")]
    public void InvalidVocabularyIsAnErrorNamingTheFile(string json, string problem)
    {
        string vocab = Path.Combine(_dir, "vocab.json");
        File.WriteAllText(vocab, json);
        var e = Assert.Throws<TokenizerException>(() => Gpt2Tokenizer.FromFiles(vocab, Merges))!;
        Assert.That(e.Message, Does.StartWith(vocab + ": ").And.Contain(problem));
    }

    [TestCase("#version: 0.2\nĠ t\nĠt he x\n", "line 3 is not a merge of two tokens")]
    [TestCase("Ġ  t\n", "line 1 is not a merge of two tokens")]
    [TestCase("Ġ t\nq z\n", "merge 1 'q z' makes 'qz', which is not in")]
    public void InvalidMergesAreAnErrorNamingTheFile(string text, string problem)
    {
        string merges = Path.Combine(_dir, "merges.txt");
        File.WriteAllText(merges, text);
        var e = Assert.Throws<TokenizerException>(() => Gpt2Tokenizer.FromFiles(Encoder, merges))!;
        Assert.That(e.Message, Does.StartWith(merges + ": ").And.Contain(problem));
    }

    [Test]
    public void TooFewMergesForTheLimitIsAnError()
    {
        string merges = Path.Combine(_dir, "merges.txt");
        File.WriteAllText(merges, "#version: 0.2\nĠ t\n");
        var e = Assert.Throws<TokenizerException>(() => Gpt2Tokenizer.FromFiles(Encoder, merges, 300))!;
        Assert.That(e.Message, Does.StartWith(merges + ": ").And.Contain("1 merges, fewer than the 44"));
    }

    private static void CheckCorpus(Gpt2Tokenizer tok, string file, int lines, int tokens, long checksum)
    {
        string text = CorpusHead(file, lines);
        var ids = tok.Encode(text);
        long sum = 0;
        for (int i = 0; i < ids.Count; i++) sum += (long)(i + 1) * ids[i];
        Assert.That(ids.Count, Is.EqualTo(tokens));
        Assert.That(sum, Is.EqualTo(checksum));
        Assert.That(tok.Decode(ids), Is.EqualTo(text));
    }

    /// <summary>The first lines of a shared corpus, joined with \n (as the reference script does).</summary>
    private static string CorpusHead(string file, int lines) =>
        string.Join("\n", File.ReadAllText(Path.Combine(TestUtil.SharedData, file)).Split('\n').Take(lines));

    private static IEnumerable<string> SampleTexts()
    {
        yield return CorpusHead("corpora/tinyshakespeare_input.txt", 400);
        yield return CorpusHead("corpora/tinystories/train_v2_head.txt", 200);
        yield return "  Tabs\t\tand   spaces\r\n\u00e9\u00e8 \u4e2d\u6587 \U0001F600\U0001F680 <|endoftext|> 12345 it's";
    }
}
