using System.Text.Json;
using DiffuSharp.Text;

namespace DiffuSharp.Tests;

/// <summary>
/// LLaMA tokenizers: llama2.c's own vocabulary files (Llama2cTokenizer, encoding written here) and the
/// SentencePiece model through Microsoft.ML.Tokenizers. The two read different files of the same 32000-piece
/// vocabulary, so their agreement checks each against an independent implementation; tok512 is checked
/// against the prompt ids and output text of llama2.c's run.c.
/// </summary>
public class LlamaTokenizerTests
{
    private static string Dir => Path.Combine(TestUtil.SharedData, "llama2c");

    private static readonly Lazy<Llama2cTokenizer> Tok512 = new(() => Llama2cTokenizer.FromFile(Path.Combine(Dir, "tok512.bin")));
    private static readonly Lazy<Llama2cTokenizer> Tok32k = new(() => Llama2cTokenizer.FromFile(Path.Combine(Dir, "tokenizer.bin")));
    private static readonly Lazy<SentencePieceTokenizer> Sp = new(() => SentencePieceTokenizer.FromFile(Path.Combine(Dir, "tokenizer.model")));

    private static readonly string[] English =
    [
        "Once upon a time",
        "Hello world",
        "The quick brown fox jumps over the lazy dog.",
        "Lily and Tom went to the park. They saw a big, red ball!",
        "It's 3:45 pm, and she said: \"Don't worry, we'll be fine.\"",
        "numbers 1234567 and symbols #@$%^&*()[]{}",
        "multiple lines\nof text\n\nwith a blank one",
        "tokenization, unbelievable, internationalization",
        "a",
        " leading space and trailing ",
    ];

    [Test]
    public void VocabularySizesAndNames()
    {
        Assert.That(Tok512.Value.VocabSize, Is.EqualTo(512));
        Assert.That(Tok512.Value.MaxTokenLength, Is.EqualTo(7));
        Assert.That(Tok512.Value.Name, Is.EqualTo("llama2c-512"));
        Assert.That(Tok32k.Value.VocabSize, Is.EqualTo(32000));
        Assert.That(Sp.Value.VocabSize, Is.EqualTo(32000));
        Assert.That(Sp.Value.EndOfTextId, Is.EqualTo(2));
        Assert.That(Tok512.Value.EndOfTextId, Is.EqualTo(2));
        Assert.That(Tok512.Value.Token(403).Piece, Is.EqualTo(" Once"u8.ToArray()));
    }

    [Test]
    public void FromFilePicksByExtension()
    {
        Assert.That(LlamaTokenizers.FromFile(Path.Combine(Dir, "tok512.bin")), Is.TypeOf<Llama2cTokenizer>());
        Assert.That(LlamaTokenizers.FromFile(Path.Combine(Dir, "tokenizer.model")), Is.TypeOf<SentencePieceTokenizer>());
        Assert.That(() => LlamaTokenizers.FromFile(Path.Combine(Dir, "tokenizer.json")), Throws.TypeOf<TokenizerException>().With.Message.Contains("tokenizer.json"));
        Assert.That(() => LlamaTokenizers.FromFile(Path.Combine(Dir, "missing.bin")), Throws.TypeOf<TokenizerException>().With.Message.Contains("not found"));
    }

    [Test]
    public void Tok512MatchesRunCPromptTokensAndOutput()
    {
        using var golden = JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir, "golden", "stories260K_greedy_once_upon_a_time.json")));
        var root = golden.RootElement;
        string prompt = root.GetProperty("run_c_args").EnumerateArray().Select(e => e.GetString()!).SkipWhile(a => a != "-i").ElementAt(1);
        var promptTokens = root.GetProperty("prompt_tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        Assert.That(prompt, Is.EqualTo("Once upon a time"));
        Assert.That(promptTokens, Is.EqualTo(new[] { 1, 403, 407, 261, 378 }));
        Assert.That(new[] { 1 }.Concat(Tok512.Value.Encode(prompt)), Is.EqualTo(promptTokens));

        // run.c prints the piece of every token after BOS, including the one sampled at the last position (not
        // fed, so not in tokens_fed), then a newline.
        var fed = root.GetProperty("tokens_fed").EnumerateArray().Select(e => e.GetInt32()).ToList();
        string stdout = root.GetProperty("stdout_text").GetString()!;
        string decoded = Tok512.Value.Decode(fed);
        Assert.That(decoded, Does.StartWith("Once upon a time, there was a little girl named Lily."));
        Assert.That(stdout, Does.StartWith(decoded));
        string rest = stdout[decoded.Length..];
        Assert.That(rest, Does.EndWith("\n"));
        int lastId = Enumerable.Range(0, 512).Single(i => Tok512.Value.Token(i).Piece.SequenceEqual(System.Text.Encoding.UTF8.GetBytes(rest[..^1])));
        Assert.That(Tok512.Value.Decode([.. fed, lastId]) + "\n", Is.EqualTo(stdout));
    }

    [Test]
    public void KnownLlamaIds()
    {
        // "▁Hello" = 15043, "▁world" = 3186 in the LLaMA vocabulary; a character missing from it becomes
        // the dummy-prefix "▁" (29871) and its UTF-8 bytes as byte tokens (byte + 3).
        Assert.That(Tok32k.Value.Encode("Hello world"), Is.EqualTo(new[] { 15043, 3186 }));
        Assert.That(Sp.Value.Encode("Hello world"), Is.EqualTo(new[] { 15043, 3186 }));
        int[] emoji = [29871, 0xF0 + 3, 0x9F + 3, 0x98 + 3, 0x80 + 3];
        Assert.That(Tok32k.Value.Encode("😀"), Is.EqualTo(emoji));
        Assert.That(Sp.Value.Encode("😀"), Is.EqualTo(emoji));
        Assert.That(Tok32k.Value.Decode([1, .. emoji]), Is.EqualTo("😀"));
        Assert.That(Tok32k.Value.Encode(""), Is.Empty);
        Assert.That(Sp.Value.Encode(""), Is.Empty);
    }

    [Test]
    public void Llama2cBinAndSentencePieceModelAgree()
    {
        foreach (string text in English)
        {
            var fromBin = Tok32k.Value.Encode(text);
            Assert.That(Sp.Value.Encode(text), Is.EqualTo(fromBin), text);
            Assert.That(fromBin, Has.None.EqualTo(1).And.None.EqualTo(2), "Encode adds no BOS/EOS");
            Assert.That(Tok32k.Value.Decode([1, .. fromBin]), Is.EqualTo(text), text);
            Assert.That(Sp.Value.Decode([1, .. fromBin]), Is.EqualTo(text), text);
        }
    }

    [Test]
    public void Tok512RoundTripsWithByteFallback()
    {
        foreach (string text in English.Append("naïve café, 東京 — ok"))
        {
            var ids = Tok512.Value.Encode(text);
            Assert.That(ids, Has.All.InRange(0, 511));
            Assert.That(Tok512.Value.Decode([1, .. ids]), Is.EqualTo(text), text);
        }
        // Without a BOS before it, the dummy-prefix space stays, as in llama2.c's decode.
        Assert.That(Tok512.Value.Decode(Tok512.Value.Encode("Once upon")), Is.EqualTo(" Once upon"));
        // SentencePiece's decoder drops the dummy prefix at the start whether or not a BOS comes first.
        Assert.That(Sp.Value.Decode(Sp.Value.Encode("Once upon")), Is.EqualTo("Once upon"));
    }

    [Test]
    public void BadIdsAndFiles()
    {
        Assert.That(() => Tok512.Value.Decode([512]), Throws.TypeOf<TokenizerException>().With.Message.Contains("512"));
        Assert.That(() => Sp.Value.Decode([-1]), Throws.TypeOf<TokenizerException>());
        string dir = Directory.CreateTempSubdirectory("diffu-llamatok-").FullName;
        try
        {
            byte[] full = File.ReadAllBytes(Path.Combine(Dir, "tok512.bin"));
            string truncated = Path.Combine(dir, "truncated.bin");
            File.WriteAllBytes(truncated, full[..(full.Length - 3)]);
            Assert.That(() => Llama2cTokenizer.FromFile(truncated), Throws.TypeOf<TokenizerException>().With.Message.Contains("truncated.bin").And.Message.Contains("truncated"));
            string tiny = Path.Combine(dir, "tiny.bin");
            File.WriteAllBytes(tiny, full[..200]);
            Assert.That(() => Llama2cTokenizer.FromFile(tiny), Throws.TypeOf<TokenizerException>());
            string notModel = Path.Combine(dir, "bad.model");
            File.WriteAllBytes(notModel, [1, 2, 3, 4, 5]);
            Assert.That(() => SentencePieceTokenizer.FromFile(notModel), Throws.TypeOf<TokenizerException>().With.Message.Contains("bad.model"));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
