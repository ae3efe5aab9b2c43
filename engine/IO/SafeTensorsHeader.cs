using System.Text;
using System.Text.Json;

namespace DiffuSharp.IO;

/// <summary>
/// Parses and validates a safetensors JSON header. Utf8JsonReader is used instead of JsonDocument because
/// the latter silently accepts duplicate keys, and a duplicate tensor name must be an error.
/// </summary>
internal static class SafeTensorsHeader
{
    /// <summary>The largest header accepted (the limit of the reference implementation).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    public const string MetadataKey = "__metadata__";

    public static (List<SafeTensorsInfo> Tensors, Dictionary<string, string> Metadata) Parse(string path, ReadOnlySpan<byte> json, long dataLength)
    {
        var tensors = new List<SafeTensorsInfo>();
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        try
        {
            var reader = new Utf8JsonReader(json, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Disallow });
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
                throw Fail(path, "header is not a JSON object");
            var names = new HashSet<string>(StringComparer.Ordinal);
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                string name = reader.GetString()!;
                if (!names.Add(name)) throw Fail(path, $"header names '{name}' twice");
                reader.Read();
                if (name == MetadataKey) ReadMetadata(path, ref reader, metadata);
                else tensors.Add(ReadEntry(path, name, ref reader));
            }
            // Reading past the closing brace makes the reader reject anything but whitespace after it.
            reader.Read();
        }
        catch (JsonException e)
        {
            throw new SafeTensorsFormatException(path, $"header is not valid JSON: {e.Message}", e);
        }
        catch (InvalidOperationException e)
        {
            throw new SafeTensorsFormatException(path, $"header is not valid UTF-8 JSON: {e.Message}", e);
        }
        CheckLayout(path, tensors, dataLength);
        tensors.Sort(CompareByOffset);
        return (tensors, metadata);
    }

    private static void ReadMetadata(string path, ref Utf8JsonReader reader, Dictionary<string, string> metadata)
    {
        if (reader.TokenType != JsonTokenType.StartObject)
            throw Fail(path, $"{MetadataKey} is not a JSON object of string values");
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            string key = reader.GetString()!;
            reader.Read();
            if (reader.TokenType != JsonTokenType.String)
                throw Fail(path, $"{MetadataKey} entry '{key}' is not a string (every metadata value must be a string)");
            if (!metadata.TryAdd(key, reader.GetString()!))
                throw Fail(path, $"{MetadataKey} names '{key}' twice");
        }
    }

    private static SafeTensorsInfo ReadEntry(string path, string name, ref Utf8JsonReader reader)
    {
        if (name.Length == 0) throw Fail(path, "header has a tensor with an empty name");
        if (reader.TokenType != JsonTokenType.StartObject)
            throw Fail(path, $"entry for tensor '{name}' is not a JSON object");
        SafeTensorsDType? dtype = null;
        int[]? shape = null;
        long[]? offsets = null;
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            string field = reader.GetString()!;
            reader.Read();
            switch (field)
            {
                case "dtype" when dtype is null:
                    if (reader.TokenType != JsonTokenType.String)
                        throw Fail(path, $"tensor '{name}' has a dtype that is not a string");
                    string text = reader.GetString()!;
                    if (!SafeTensorsDTypes.TryParse(text, out var parsed))
                        throw Fail(path, $"tensor '{name}' has unknown dtype '{text}' (supported: {string.Join(", ", Enum.GetNames<SafeTensorsDType>())})");
                    dtype = parsed;
                    break;
                case "shape" when shape is null:
                    shape = ReadShape(path, name, ref reader);
                    break;
                case "data_offsets" when offsets is null:
                    offsets = ReadOffsets(path, name, ref reader);
                    break;
                case "dtype" or "shape" or "data_offsets":
                    throw Fail(path, $"tensor '{name}' names field '{field}' twice");
                default:
                    throw Fail(path, $"tensor '{name}' has unknown field '{field}'");
            }
        }
        if (dtype is null) throw Fail(path, $"tensor '{name}' has no dtype");
        if (shape is null) throw Fail(path, $"tensor '{name}' has no shape");
        if (offsets is null) throw Fail(path, $"tensor '{name}' has no data_offsets");
        long begin = offsets[0], end = offsets[1];
        if (begin > end)
            throw Fail(path, $"tensor '{name}' has data_offsets [{begin}, {end}] with begin after end");
        long count;
        long bytes;
        try
        {
            count = SafeTensorsShapes.ElementCount(shape);
            bytes = checked(count * SafeTensorsDTypes.ElementSize(dtype.Value));
        }
        catch (OverflowException)
        {
            throw Fail(path, $"tensor '{name}' has shape {SafeTensorsShapes.Format(shape)}, too large to address");
        }
        if (bytes != end - begin)
            throw Fail(path, $"tensor '{name}' has shape {SafeTensorsShapes.Format(shape)} and dtype {dtype} ({bytes} bytes), " +
                             $"but its data_offsets [{begin}, {end}] span {end - begin} bytes");
        return new SafeTensorsInfo(name, dtype.Value, shape, begin, end);
    }

    private static int[] ReadShape(string path, string name, ref Utf8JsonReader reader)
    {
        if (reader.TokenType != JsonTokenType.StartArray)
            throw Fail(path, $"tensor '{name}' has a malformed shape: not an array");
        var dims = new List<int>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt32(out int d) || d < 0)
                throw Fail(path, $"tensor '{name}' has a malformed shape: dimension {Raw(ref reader)} is not a non-negative 32-bit integer");
            dims.Add(d);
        }
        return dims.ToArray();
    }

    private static long[] ReadOffsets(string path, string name, ref Utf8JsonReader reader)
    {
        if (reader.TokenType != JsonTokenType.StartArray)
            throw Fail(path, $"tensor '{name}' has malformed data_offsets: not an array");
        var values = new List<long>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt64(out long v) || v < 0)
                throw Fail(path, $"tensor '{name}' has malformed data_offsets: {Raw(ref reader)} is not a non-negative integer");
            values.Add(v);
        }
        if (values.Count != 2)
            throw Fail(path, $"tensor '{name}' has malformed data_offsets: {values.Count} numbers instead of [begin, end]");
        return values.ToArray();
    }

    /// <summary>The token as written in the header, for messages.</summary>
    private static string Raw(ref Utf8JsonReader reader) => reader.TokenType switch
    {
        JsonTokenType.StartArray => "an array",
        JsonTokenType.StartObject => "an object",
        JsonTokenType.String => $"\"{reader.GetString()}\"",
        _ => Encoding.UTF8.GetString(reader.ValueSpan),
    };

    /// <summary>
    /// The tensors must tile the data section exactly: sorted by offset, the first starts at 0, each starts
    /// where the previous ends, and the last ends at the end of the file.
    /// </summary>
    private static void CheckLayout(string path, List<SafeTensorsInfo> tensors, long dataLength)
    {
        var sorted = new List<SafeTensorsInfo>(tensors);
        sorted.Sort(CompareByOffset);
        string? tilingProblem = TilingProblem(sorted);
        foreach (var t in sorted)
        {
            if (t.End <= dataLength) continue;
            if (tilingProblem is null)
                throw Fail(path, $"data section is truncated: the header describes {sorted[^1].End} bytes of tensor data, " +
                                 $"but only {dataLength} bytes follow the header");
            throw Fail(path, $"tensor '{t.Name}' has data_offsets [{t.Begin}, {t.End}] out of range of the data section ({dataLength} bytes)");
        }
        if (tilingProblem is not null) throw Fail(path, tilingProblem);
        long used = sorted.Count == 0 ? 0 : sorted[^1].End;
        if (used < dataLength)
            throw Fail(path, $"{dataLength - used} bytes of data left over after the last tensor (data section is {dataLength} bytes, tensors use {used})");
    }

    private static string? TilingProblem(List<SafeTensorsInfo> sorted)
    {
        long expected = 0;
        string previous = "";
        foreach (var t in sorted)
        {
            if (t.Begin < expected)
                return $"tensors '{previous}' and '{t.Name}' overlap (data_offsets [{t.Begin}, {t.End}] start before byte {expected})";
            if (t.Begin > expected)
                return previous.Length == 0
                    ? $"gap in the data section: the first tensor '{t.Name}' starts at byte {t.Begin}, not 0"
                    : $"gap in the data section: bytes [{expected}, {t.Begin}) between tensors '{previous}' and '{t.Name}' belong to no tensor";
            expected = t.End;
            previous = t.Name;
        }
        return null;
    }

    private static int CompareByOffset(SafeTensorsInfo a, SafeTensorsInfo b)
    {
        int c = a.Begin.CompareTo(b.Begin);
        if (c == 0) c = a.End.CompareTo(b.End);
        return c != 0 ? c : string.CompareOrdinal(a.Name, b.Name);
    }

    private static SafeTensorsFormatException Fail(string path, string problem) => new(path, problem);
}
