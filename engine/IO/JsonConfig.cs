using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace DiffuSharp.IO;

/// <summary>
/// Typed access to the fields of a JSON config file (HF config.json), with errors that name the file and
/// the field. Model configs read their fields through this so every family reports problems the same way.
/// </summary>
public sealed class JsonConfig
{
    readonly JsonObject root;

    JsonConfig(string path, JsonObject root)
    {
        Path = path;
        this.root = root;
    }

    public string Path { get; }

    /// <summary>The largest config accepted: HF config.json files are a few kilobytes.</summary>
    public const long MaxBytes = 16 << 20;

    public static JsonConfig Load(string path)
    {
        byte[] bytes = InputFile.ReadAllBytes(path, problem => new ConfigException(path, problem), MaxBytes);
        var json = bytes.AsSpan();
        if (json.StartsWith(Encoding.UTF8.Preamble)) json = json[Encoding.UTF8.Preamble.Length..];
        JsonNode? node;
        try
        {
            CheckKeysAndStrings(path, json);
            node = JsonNode.Parse(json, documentOptions: new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        }
        catch (JsonException e)
        {
            throw new ConfigException(path, $"invalid JSON ({e.Message})");
        }
        catch (InvalidOperationException e)
        {
            throw new ConfigException(path, $"invalid text in a JSON string ({e.Message})");
        }
        if (node is not JsonObject obj) throw new ConfigException(path, "the top level must be a JSON object");
        return new JsonConfig(path, obj);
    }

    /// <summary>
    /// JsonNode parses lazily: a key written twice or a string that is not valid UTF-8 (or holds half a
    /// surrogate pair) surfaces as an ArgumentException or InvalidOperationException when a field is first
    /// read. One pass over the tokens finds both up front, at any depth.
    /// </summary>
    static void CheckKeysAndStrings(string path, ReadOnlySpan<byte> json)
    {
        var reader = new Utf8JsonReader(json, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        var keys = new Stack<HashSet<string>>();
        while (reader.Read())
        {
            switch (reader.TokenType)
            {
                case JsonTokenType.StartObject:
                    keys.Push(new HashSet<string>(StringComparer.Ordinal));
                    break;
                case JsonTokenType.EndObject:
                    keys.Pop();
                    break;
                case JsonTokenType.PropertyName:
                    string key = reader.GetString()!;
                    if (!keys.Peek().Add(key)) throw new ConfigException(path, $"key {JsonSerializer.Serialize(key)} is written twice in the same object");
                    break;
                case JsonTokenType.String:
                    reader.GetString();
                    break;
            }
        }
    }

    public bool Has(string name) => root.TryGetPropertyValue(name, out var v) && v is not null;

    public int RequireInt(string name, params string[] aliases) =>
        TryInt(name, aliases) ?? throw new ConfigException(Path, $"missing required field \"{name}\"");

    public int Int(string name, int fallback, params string[] aliases) => TryInt(name, aliases) ?? fallback;

    public double Double(string name, double fallback)
    {
        if (!Has(name)) return fallback;
        var v = root[name]!;
        if (v is JsonValue jv && jv.TryGetValue(out double d) && double.IsFinite(d)) return d;
        throw new ConfigException(Path, $"field \"{name}\" must be a number, got {v.ToJsonString()}");
    }

    /// <summary>
    /// A number the model uses as a float32, which must lie strictly between <paramref name="low"/> and
    /// <paramref name="high"/> once rounded (1e-50 rounds to 0, 1e300 to infinity).
    /// </summary>
    public float FloatBetween(string name, double fallback, double low, double high)
    {
        double value = Double(name, fallback);
        float rounded = (float)value;
        if (rounded > low && rounded < high) return rounded;
        throw new ConfigException(Path, FormattableString.Invariant($"field \"{name}\" must be in ({low}, {high}) as a float32, got {value}"));
    }

    public bool Bool(string name, bool fallback)
    {
        if (!Has(name)) return fallback;
        var v = root[name]!;
        if (v is JsonValue jv && jv.TryGetValue(out bool b)) return b;
        throw new ConfigException(Path, $"field \"{name}\" must be true or false, got {v.ToJsonString()}");
    }

    public string? String(string name)
    {
        if (!Has(name)) return null;
        var v = root[name]!;
        if (v is JsonValue jv && jv.TryGetValue(out string? s)) return s;
        throw new ConfigException(Path, $"field \"{name}\" must be a string, got {v.ToJsonString()}");
    }

    public int? OptionalInt(string name) => TryInt(name, []);

    /// <summary>A field's raw JSON, or null when it is missing or null.</summary>
    public System.Text.Json.Nodes.JsonNode? Node(string name) => Has(name) ? root[name] : null;

    int? TryInt(string name, string[] aliases)
    {
        foreach (var key in aliases.Prepend(name))
        {
            if (!Has(key)) continue;
            var v = root[key]!;
            if (v is JsonValue jv && jv.TryGetValue(out long l) && l is >= int.MinValue and <= int.MaxValue) return (int)l;
            if (v is JsonValue jd && jd.TryGetValue(out double d) && d == Math.Floor(d) && Math.Abs(d) < int.MaxValue) return (int)d;
            throw new ConfigException(Path, $"field \"{key}\" must be an integer, got {v.ToJsonString()}");
        }
        return null;
    }

    /// <summary>
    /// A size the model computes from fields in 32-bit ints (<paramref name="expression"/> names them, e.g.
    /// "4 * n_embd"), which must not overflow. It arrives as an Int128 so that computing it cannot.
    /// </summary>
    public void RequireIntSize(string expression, Int128 value)
    {
        if (value > int.MaxValue)
            throw new ConfigException(Path, $"{expression} = {value} overflows the 32-bit arithmetic of the model (at most {int.MaxValue})");
    }

    /// <summary>The element count of a weight, from fields named in <paramref name="expression"/>: a CPU tensor is one managed array.</summary>
    public void RequireTensorSize(string tensor, string expression, Int128 elements)
    {
        if (elements > Array.MaxLength)
            throw new ConfigException(Path, $"{tensor} would hold {expression} = {elements} elements, more than one array can hold ({Array.MaxLength})");
    }

    public void RequirePositive(string name, int value)
    {
        if (value <= 0) throw new ConfigException(Path, $"field \"{name}\" must be positive, got {value}");
    }
}
