using System.Text;
using System.Text.Json;
using DiffuSharp.IO;
using DiffuSharp.Models;

namespace DiffuSharp.Data;

/// <summary>One conditional-training pair: the source (the query, never noised) and the target (the answer), with the line it starts on.</summary>
public sealed record SftPair(string Source, string Target, long Line);

/// <summary>
/// Reads SFT pairs: a JSON array of objects, or JSON Lines (one object per line), each with string fields
/// "instruction" and "output" (the paper's format) or "src" and "tgt". Every row is checked before any is used:
/// a malformed one is an error naming the file and its line.
/// </summary>
public static class SftFile
{
    public static IReadOnlyList<SftPair> Read(string path)
    {
        byte[] bytes = InputFile.ReadAllBytes(path, problem => new DiffuException($"{path}: {problem}"), 1L << 31);
        ReadOnlySpan<byte> json = bytes;
        if (json.StartsWith(Encoding.UTF8.Preamble)) json = json[Encoding.UTF8.Preamble.Length..];
        int first = 0;
        while (first < json.Length && json[first] is (byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n') first++;
        if (first == json.Length) throw new DiffuException($"{path}: empty file (expected a JSON array or JSON Lines of {{\"instruction\", \"output\"}} or {{\"src\", \"tgt\"}} rows)");
        var pairs = json[first] == (byte)'[' ? ReadArray(path, json) : ReadLines(path, json);
        if (pairs.Count == 0) throw new DiffuException($"{path}: no rows");
        return pairs;
    }

    static List<SftPair> ReadArray(string path, ReadOnlySpan<byte> json)
    {
        var pairs = new List<SftPair>();
        var reader = new Utf8JsonReader(json);
        long line = 1;
        int counted = 0;
        try
        {
            reader.Read();
            while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
            {
                int start = (int)reader.TokenStartIndex;
                line += json[counted..start].Count((byte)'\n');
                counted = start;
                pairs.Add(Pair(JsonElement.ParseValue(ref reader), path, line));
            }
            while (reader.Read()) { }
        }
        catch (JsonException e)
        {
            throw new DiffuException($"{path}: line {(e.LineNumber ?? 0) + 1}: invalid JSON ({e.Message})");
        }
        return pairs;
    }

    static List<SftPair> ReadLines(string path, ReadOnlySpan<byte> json)
    {
        var pairs = new List<SftPair>();
        long line = 0;
        foreach (var range in json.Split((byte)'\n'))
        {
            line++;
            var text = json[range];
            if (text.Trim(" \t\r"u8).IsEmpty) continue;
            JsonElement element;
            try
            {
                using var document = JsonDocument.Parse(text.ToArray());
                element = document.RootElement.Clone();
            }
            catch (JsonException e)
            {
                throw new DiffuException($"{path}: line {line}: invalid JSON ({e.Message})");
            }
            pairs.Add(Pair(element, path, line));
        }
        return pairs;
    }

    static SftPair Pair(JsonElement row, string path, long line)
    {
        if (row.ValueKind != JsonValueKind.Object) throw new DiffuException($"{path}: line {line}: expected an object, found {row.ValueKind}");
        var (sourceName, targetName) = row.TryGetProperty("instruction", out _) || row.TryGetProperty("output", out _) ? ("instruction", "output") : ("src", "tgt");
        string Field(string name)
        {
            if (!row.TryGetProperty(name, out var value))
                throw new DiffuException($"{path}: line {line}: missing field '{name}' (rows need \"instruction\" and \"output\", or \"src\" and \"tgt\")");
            if (value.ValueKind != JsonValueKind.String) throw new DiffuException($"{path}: line {line}: field '{name}' must be a string, found {value.ValueKind}");
            string text = value.GetString()!;
            if (text.Length == 0) throw new DiffuException($"{path}: line {line}: field '{name}' is empty");
            return text;
        }
        return new SftPair(Field(sourceName), Field(targetName), line);
    }
}

/// <summary>One SFT training sequence: ids [cutoff] and the source mask (1 on BOS, the kept source and SEP).</summary>
public sealed record SftSequence(int[] Ids, byte[] Source)
{
    /// <summary>
    /// method §5: <c>[BOS] + src + [SEP] + tgt + [EOS]</c>. The target is cut to cutoff − 3 tokens, then the source keeps
    /// its last cutoff − 3 − |tgt| tokens, except that when that is 0 it keeps all of them (the reference's Python
    /// <c>src[-0:]</c>), and the whole is then cut to the cutoff; the rest is right-padded with PAD. The source mask
    /// is 1 on the first |src| + 2 positions (cut with the sequence); targets, EOS and pads are 0 (maskable, scored).
    /// </summary>
    public static SftSequence Build(ReadOnlySpan<int> source, ReadOnlySpan<int> target, SftTokens tokens, int cutoff)
    {
        if (cutoff < 4) throw new ArgumentException($"an SFT cutoff must leave room for BOS, SEP, EOS and one token, got {cutoff}");
        if (target.Length > cutoff - 3) target = target[..(cutoff - 3)];
        int keep = cutoff - 3 - target.Length;
        if (keep > 0 && source.Length > keep) source = source[^keep..];
        var ids = new int[cutoff];
        var mask = new byte[cutoff];
        int n = 0;
        void Put(int id, bool isSource)
        {
            if (n == cutoff) return;
            mask[n] = isSource ? (byte)1 : (byte)0;
            ids[n++] = id;
        }
        Put(tokens.Bos, true);
        foreach (int id in source) Put(id, true);
        Put(tokens.Sep, true);
        foreach (int id in target) Put(id, false);
        Put(tokens.Eos, false);
        while (n < cutoff) Put(tokens.Pad, false);
        return new SftSequence(ids, mask);
    }
}
