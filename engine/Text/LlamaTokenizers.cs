using System.Buffers.Binary;
using System.Globalization;
using System.Text;
using DiffuSharp.IO;
using Microsoft.ML.Tokenizers;

namespace DiffuSharp.Text;

/// <summary>The LLaMA tokenizers of a llama2.c or Meta/HF LLaMA model, picked by file type.</summary>
public static class LlamaTokenizers
{
    /// <summary>BOS and EOS ids of the LLaMA vocabularies (SentencePiece and llama2.c exports alike).</summary>
    public const int BeginOfSentenceId = 1, EndOfSentenceId = 2;

    /// <summary>A <c>.model</c> file is a SentencePiece model, a <c>.bin</c> file a llama2.c vocabulary.</summary>
    public static TextTokenizer FromFile(string path)
    {
        string ext = Path.GetExtension(path).ToLowerInvariant();
        return ext switch
        {
            ".model" => SentencePieceTokenizer.FromFile(path),
            ".bin" => Llama2cTokenizer.FromFile(path),
            _ => throw new TokenizerException($"{path}: unknown LLaMA tokenizer type '{ext}' (expected .model for SentencePiece or .bin for llama2.c)"),
        };
    }

    internal static byte[] ReadFile(string path) => InputFile.ReadAllBytes(path, problem => new TokenizerException($"{path}: {problem}"));
}

/// <summary>
/// A SentencePiece BPE model (LLaMA's <c>tokenizer.model</c>) through Microsoft.ML.Tokenizers' LlamaTokenizer.
/// The tokenizer is created with add-BOS and add-EOS off and every Encode passes both as false, so Encode
/// returns the pieces of the text only; the model code adds BOS itself. The model's own normalizer spec
/// still applies: LLaMA's has add_dummy_prefix set, so LlamaTokenizer puts U+2581 (the escaped space) before
/// the text, as llama2.c's encoder does with its " " prefix, and spaces become U+2581. Decode drops the
/// BOS/EOS control pieces and the dummy-prefix space at the start of the text.
/// </summary>
public sealed class SentencePieceTokenizer : TextTokenizer
{
    readonly LlamaTokenizer sp;

    SentencePieceTokenizer(LlamaTokenizer sp, string path)
    {
        this.sp = sp;
        VocabSize = sp.Vocabulary.Count;
        EndOfTextId = sp.EndOfSentenceId;
        Name = $"sentencepiece-{VocabSize}";
        SourcePath = path;
    }

    public override int VocabSize { get; }

    public override int? EndOfTextId { get; }

    public override string Name { get; }

    /// <summary>The tokenizer.model file this was read from.</summary>
    public string SourcePath { get; }

    public static SentencePieceTokenizer FromFile(string path)
    {
        byte[] bytes = LlamaTokenizers.ReadFile(path);
        try
        {
            using var stream = new MemoryStream(bytes, writable: false);
            return new SentencePieceTokenizer(LlamaTokenizer.Create(stream, addBeginOfSentence: false, addEndOfSentence: false), path);
        }
        catch (Exception e) when (e is not TokenizerException)
        {
            throw new TokenizerException($"{path}: not a usable SentencePiece BPE model: {e.Message}", e);
        }
    }

    public override IReadOnlyList<int> Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        return sp.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false);
    }

    public override string Decode(IEnumerable<int> ids)
    {
        var list = ids as IReadOnlyList<int> ?? [.. ids];
        foreach (int id in list)
        {
            if (id < 0 || id >= VocabSize) throw new TokenizerException($"token id {id} is not in the {Name} vocabulary (ids 0..{VocabSize - 1})");
        }
        return sp.Decode(list);
    }
}

/// <summary>
/// A llama2.c vocabulary file (<c>tokenizer.bin</c>, <c>tok512.bin</c>): int32 max_token_length, then per
/// token a float32 merge score, an int32 byte length and the piece's bytes. Encoding follows llama2.c: a
/// " " dummy prefix before non-empty text, one symbol per UTF-8 character (a character missing from the
/// vocabulary becomes its byte tokens &lt;0xXX&gt;, id byte + 3), then the adjacent pair whose concatenation
/// is a piece with the highest score (the leftmost on ties) is merged until no pair is a piece. Decoding
/// drops BOS and EOS, strips the leading space of the piece right after a BOS and turns &lt;0xXX&gt; pieces
/// into their raw byte.
/// </summary>
public sealed class Llama2cTokenizer : TextTokenizer
{
    const int ByteTokenOffset = 3;

    readonly byte[][] pieces;
    readonly float[] scores;
    readonly string[] keys;
    readonly Dictionary<string, int> ids;

    Llama2cTokenizer(byte[][] pieces, float[] scores, int maxTokenLength, string path)
    {
        this.pieces = pieces;
        this.scores = scores;
        MaxTokenLength = maxTokenLength;
        SourcePath = path;
        keys = Array.ConvertAll(pieces, p => Key(p));
        ids = new Dictionary<string, int>(pieces.Length, StringComparer.Ordinal);
        for (int i = 0; i < pieces.Length; i++) ids.TryAdd(keys[i], i);
        Name = $"llama2c-{pieces.Length}";
    }

    public override int VocabSize => pieces.Length;

    public override int? EndOfTextId => pieces.Length > LlamaTokenizers.EndOfSentenceId ? LlamaTokenizers.EndOfSentenceId : null;

    public override string Name { get; }

    /// <summary>The longest piece in bytes, as the file's header states it.</summary>
    public int MaxTokenLength { get; }

    /// <summary>The .bin file this was read from.</summary>
    public string SourcePath { get; }

    /// <summary>The raw bytes of piece <paramref name="id"/> and its merge score.</summary>
    public (byte[] Piece, float Score) Token(int id)
    {
        CheckId(id);
        return (pieces[id], scores[id]);
    }

    public static Llama2cTokenizer FromFile(string path)
    {
        byte[] data = LlamaTokenizers.ReadFile(path);
        if (data.Length < 4) throw new TokenizerException($"{path}: too short for a llama2.c vocabulary ({data.Length} bytes)");
        int maxLength = BinaryPrimitives.ReadInt32LittleEndian(data);
        if (maxLength <= 0) throw new TokenizerException($"{path}: max_token_length {maxLength} is not positive");
        var pieces = new List<byte[]>();
        var scores = new List<float>();
        int offset = 4;
        while (offset < data.Length)
        {
            if (data.Length - offset < 8)
                throw new TokenizerException($"{path}: truncated at token {pieces.Count} (byte {offset}): no room for its score and length");
            float score = BinaryPrimitives.ReadSingleLittleEndian(data.AsSpan(offset));
            int length = BinaryPrimitives.ReadInt32LittleEndian(data.AsSpan(offset + 4));
            offset += 8;
            if (length <= 0 || length > maxLength)
                throw new TokenizerException($"{path}: token {pieces.Count} has length {length}, outside 1..{maxLength}");
            if (data.Length - offset < length)
                throw new TokenizerException($"{path}: truncated in token {pieces.Count}: {length} bytes announced, {data.Length - offset} left");
            pieces.Add(data.AsSpan(offset, length).ToArray());
            scores.Add(score);
            offset += length;
        }
        if (pieces.Count < 256 + ByteTokenOffset)
            throw new TokenizerException($"{path}: has {pieces.Count} tokens, fewer than the 259 (<unk>, BOS, EOS and 256 byte tokens) of a llama2.c vocabulary");
        for (int b = 0; b < 256; b++)
        {
            string expected = $"<0x{b:X2}>";
            if (Key(pieces[b + ByteTokenOffset]) != expected)
                throw new TokenizerException($"{path}: token {b + ByteTokenOffset} is '{Encoding.UTF8.GetString(pieces[b + ByteTokenOffset])}', not the byte token {expected}");
        }
        return new Llama2cTokenizer([.. pieces], [.. scores], maxLength, path);
    }

    public override IReadOnlyList<int> Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var tokens = new List<int>();
        if (text.Length == 0) return tokens;
        byte[] bytes = Encoding.UTF8.GetBytes(" " + text);
        int i = 0;
        while (i < bytes.Length)
        {
            int length = Utf8Length(bytes, i);
            if (ids.TryGetValue(Key(bytes.AsSpan(i, length)), out int id))
            {
                tokens.Add(id);
            }
            else
            {
                for (int k = 0; k < length; k++) tokens.Add(bytes[i + k] + ByteTokenOffset);
            }
            i += length;
        }
        MergePairs(tokens);
        return tokens;
    }

    public override string Decode(IEnumerable<int> ids)
    {
        var bytes = new List<byte>();
        int previous = -1;
        foreach (int id in ids)
        {
            CheckId(id);
            if (id is not (LlamaTokenizers.BeginOfSentenceId or LlamaTokenizers.EndOfSentenceId))
            {
                byte[] piece = pieces[id];
                if (TryByteToken(piece, out byte raw))
                {
                    bytes.Add(raw);
                }
                else
                {
                    int start = previous == LlamaTokenizers.BeginOfSentenceId && piece[0] == (byte)' ' ? 1 : 0;
                    for (int k = start; k < piece.Length; k++) bytes.Add(piece[k]);
                }
            }
            previous = id;
        }
        return Encoding.UTF8.GetString([.. bytes]);
    }

    /// <summary>Merges the best-scoring adjacent pair (leftmost on ties) until no adjacent pair forms a piece.</summary>
    void MergePairs(List<int> tokens)
    {
        var pair = new StringBuilder();
        while (true)
        {
            float bestScore = float.NegativeInfinity;
            int bestId = -1, bestIndex = -1;
            for (int i = 0; i + 1 < tokens.Count; i++)
            {
                pair.Clear().Append(keys[tokens[i]]).Append(keys[tokens[i + 1]]);
                if (ids.TryGetValue(pair.ToString(), out int id) && scores[id] > bestScore)
                {
                    bestScore = scores[id];
                    bestId = id;
                    bestIndex = i;
                }
            }
            if (bestIndex < 0) return;
            tokens[bestIndex] = bestId;
            tokens.RemoveAt(bestIndex + 1);
        }
    }

    void CheckId(int id)
    {
        if (id < 0 || id >= pieces.Length)
            throw new TokenizerException($"token id {id} is not in the {Name} vocabulary (ids 0..{pieces.Length - 1})");
    }

    /// <summary>The bytes of a UTF-8 character starting at <paramref name="i"/>: its lead byte's length, cut at the next non-continuation byte.</summary>
    static int Utf8Length(byte[] bytes, int i)
    {
        int length = 1;
        while (length < 4 && i + length < bytes.Length && (bytes[i + length] & 0xC0) == 0x80) length++;
        return length;
    }

    /// <summary>Pieces are byte strings; a Latin-1 string holds one char per byte, so it is an exact dictionary key.</summary>
    static string Key(ReadOnlySpan<byte> piece) => Encoding.Latin1.GetString(piece);

    static bool TryByteToken(byte[] piece, out byte value)
    {
        value = 0;
        return piece.Length == 6 && piece[0] == (byte)'<' && piece[1] == (byte)'0' && piece[2] == (byte)'x' && piece[5] == (byte)'>'
               && byte.TryParse(Encoding.ASCII.GetString(piece, 3, 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out value);
    }
}
