using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using DiffuSharp.IO;
using Microsoft.ML.Tokenizers;

namespace DiffuSharp.Text;

/// <summary>
/// GPT-2's byte-level BPE, read from vocab.json + merges.txt (Hugging Face names) or encoder.json + vocab.bpe
/// (OpenAI names). The BPE itself is Microsoft.ML.Tokenizers' BpeTokenizer in byte-level mode with GPT-2's
/// pre-tokenizing regex. CodeGenTokenizer.Create is not used: it adds CodeGen's 38 whitespace tokens
/// (ids 50257-50294), so runs of spaces or tabs would get ids that GPT-2 does not have.
/// <c>&lt;|endoftext|&gt;</c> in the text is the special token (50256), as in Hugging Face's GPT-2 tokenizer.
/// </summary>
public sealed partial class Gpt2Tokenizer : TextTokenizer
{
    public const string EndOfTextToken = "<|endoftext|>";

    readonly BpeTokenizer bpe;
    readonly HashSet<int> ids;

    Gpt2Tokenizer(BpeTokenizer bpe, HashSet<int> ids, int vocabSize, int? endOfText, string name)
    {
        this.bpe = bpe;
        this.ids = ids;
        VocabSize = vocabSize;
        EndOfTextId = endOfText;
        Name = name;
    }

    public override int VocabSize { get; }

    public override int? EndOfTextId { get; }

    public override string Name { get; }

    /// <summary>
    /// Loads the vocabulary and merges. With <paramref name="vocabLimit"/> V (a model trained on a smaller
    /// vocabulary) only the first V tokens are kept: the 256 byte tokens and the tokens of the first V-256
    /// merges, which GPT-2 numbers 256.. in merge order. A limit at or above the full vocabulary changes nothing.
    /// </summary>
    public static Gpt2Tokenizer FromFiles(string vocabJsonPath, string mergesPath, int? vocabLimit = null)
    {
        var vocab = ReadVocab(vocabJsonPath);
        var merges = ReadMerges(mergesPath);
        bool limited = vocabLimit is { } v && v < SizeOf(vocab);
        if (vocabLimit is < 256)
            throw new TokenizerException($"GPT-2 vocabulary limit {vocabLimit} is below 256, the number of byte tokens");
        if (limited)
        {
            int limit = vocabLimit!.Value;
            vocab = vocab.Where(kv => kv.Value < limit).ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal);
            if (merges.Count < limit - 256)
                throw new TokenizerException($"{mergesPath}: has {merges.Count} merges, fewer than the {limit - 256} that vocabulary limit {limit} needs");
            merges = merges.GetRange(0, limit - 256);
        }
        foreach (char symbol in ByteAlphabet())
        {
            if (!vocab.ContainsKey(symbol.ToString()))
                throw new TokenizerException($"{vocabJsonPath}: byte token '{symbol}' (U+{(int)symbol:X4}) is missing{(limited ? $" below id {vocabLimit}" : "")}");
        }
        for (int i = 0; i < merges.Count; i++)
        {
            var (left, right) = merges[i];
            if (!vocab.ContainsKey(left + right))
                throw new TokenizerException($"{mergesPath}: merge {i} '{left} {right}' makes '{left + right}', which is not in " +
                                             (limited ? $"the first {vocabLimit} tokens of {vocabJsonPath}" : vocabJsonPath));
        }
        var special = new Dictionary<string, int>(StringComparer.Ordinal);
        if (vocab.TryGetValue(EndOfTextToken, out int endOfText)) special.Add(EndOfTextToken, endOfText);
        var options = new BpeOptions(vocab)
        {
            Merges = merges.ConvertAll(m => m.Left + " " + m.Right),
            SpecialTokens = special,
            ByteLevel = true,
            PreTokenizer = new RegexPreTokenizer(Gpt2Split(), special),
        };
        BpeTokenizer bpe;
        try
        {
            bpe = BpeTokenizer.Create(options);
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException)
        {
            throw new TokenizerException($"{vocabJsonPath}, {mergesPath}: not a usable BPE vocabulary: {e.Message}", e);
        }
        int size = SizeOf(vocab);
        return new Gpt2Tokenizer(bpe, [.. vocab.Values], size, special.Count > 0 ? endOfText : null,
                                 limited ? $"gpt2-first-{size}" : "gpt2");
    }

    /// <summary>
    /// The GPT-2 tokenizer of a model folder: vocab.json + merges.txt, else encoder.json + vocab.bpe;
    /// null when the folder has neither pair.
    /// </summary>
    public static Gpt2Tokenizer? FromDirectory(string dir, int? vocabLimit = null)
    {
        if (!Directory.Exists(dir)) throw new TokenizerException($"{dir}: tokenizer folder not found");
        foreach (var (vocabName, mergesName) in new[] { ("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe") })
        {
            string vocab = Path.Combine(dir, vocabName), merges = Path.Combine(dir, mergesName);
            bool hasVocab = File.Exists(vocab), hasMerges = File.Exists(merges);
            if (hasVocab && hasMerges) return FromFiles(vocab, merges, vocabLimit);
            if (hasVocab != hasMerges)
                throw new TokenizerException($"{dir}: has {(hasVocab ? vocabName : mergesName)} but not {(hasVocab ? mergesName : vocabName)}");
        }
        return null;
    }

    public override IReadOnlyList<int> Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        return bpe.EncodeToIds(text);
    }

    public override string Decode(IEnumerable<int> ids)
    {
        var list = ids as IReadOnlyList<int> ?? [.. ids];
        foreach (int id in list)
        {
            if (!this.ids.Contains(id)) throw new TokenizerException($"token id {id} is not in the {Name} vocabulary (ids 0..{VocabSize - 1})");
        }
        return bpe.Decode(list);
    }

    /// <summary>
    /// GPT-2's pre-tokenizer: contractions, letter runs, digit runs and other-symbol runs, each with an
    /// optional leading space, then whitespace (a run before a word leaves its last space to that word).
    /// </summary>
    [GeneratedRegex(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")]
    private static partial Regex Gpt2Split();

    /// <summary>
    /// The characters GPT-2 uses for the 256 byte values: printable Latin-1 bytes stand for themselves,
    /// the others are moved, in byte order, to U+0100 onwards.
    /// </summary>
    static IEnumerable<char> ByteAlphabet()
    {
        int moved = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= 0x21 and <= 0x7E or >= 0xA1 and <= 0xAC or >= 0xAE;
            yield return printable ? (char)b : (char)(0x100 + moved++);
        }
    }

    /// <summary>One more than the largest id.</summary>
    static int SizeOf(Dictionary<string, int> vocab)
    {
        int size = 0;
        foreach (int id in vocab.Values) size = Math.Max(size, id + 1);
        return size;
    }

    static Dictionary<string, int> ReadVocab(string path)
    {
        byte[] json = ReadFile(path);
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        var seen = new Dictionary<int, string>();
        try
        {
            var reader = new Utf8JsonReader(json);
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
                throw new TokenizerException($"{path}: not a JSON object of token -> id");
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                string token = reader.GetString()!;
                reader.Read();
                if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt32(out int id) || id < 0)
                    throw new TokenizerException($"{path}: token '{token}' has an id that is not a non-negative integer");
                if (!vocab.TryAdd(token, id)) throw new TokenizerException($"{path}: token '{token}' appears twice");
                if (!seen.TryAdd(id, token)) throw new TokenizerException($"{path}: id {id} is given to both '{seen[id]}' and '{token}'");
            }
            // Reading past the closing brace makes the reader reject anything but whitespace after it.
            reader.Read();
        }
        catch (JsonException e)
        {
            throw new TokenizerException($"{path}: not valid JSON: {e.Message}", e);
        }
        catch (InvalidOperationException e)
        {
            throw new TokenizerException($"{path}: not valid UTF-8 JSON: {e.Message}", e);
        }
        if (vocab.Count == 0) throw new TokenizerException($"{path}: vocabulary is empty");
        return vocab;
    }

    static List<(string Left, string Right)> ReadMerges(string path)
    {
        string[] lines = Encoding.UTF8.GetString(ReadFile(path)).Split('\n');
        var merges = new List<(string, string)>(lines.Length);
        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i].TrimEnd('\r');
            if (line.Length == 0 || (i == 0 && line.StartsWith("#version", StringComparison.Ordinal))) continue;
            var parts = line.Split(' ');
            if (parts.Length != 2 || parts[0].Length == 0 || parts[1].Length == 0)
                throw new TokenizerException($"{path}: line {i + 1} is not a merge of two tokens separated by one space: '{line}'");
            merges.Add((parts[0], parts[1]));
        }
        return merges;
    }

    static byte[] ReadFile(string path) => InputFile.ReadAllBytes(path, problem => new TokenizerException($"{path}: {problem}"));
}
