using System.Text;
using System.Text.Json;

namespace DiffuSharp.IO;

/// <summary>
/// The weights of one model: a single .safetensors file, or a folder holding model.safetensors or a
/// sharded model.safetensors.index.json ({"metadata": {...}, "weight_map": {tensor: shard file}}).
/// Every shard is opened and cross-checked against the index up front.
/// </summary>
public sealed class SafeTensorsCheckpoint : IDisposable
{
    public const string SingleFileName = "model.safetensors";
    public const string IndexFileName = "model.safetensors.index.json";

    readonly string path;
    readonly List<SafeTensorsFile> files;
    readonly Dictionary<string, SafeTensorsFile> owner;

    SafeTensorsCheckpoint(string path, List<SafeTensorsFile> files, Dictionary<string, string> metadata)
    {
        this.path = path;
        this.files = files;
        Metadata = metadata;
        owner = new Dictionary<string, SafeTensorsFile>(StringComparer.Ordinal);
        var tensors = new List<SafeTensorsInfo>();
        foreach (var f in files)
        {
            foreach (var t in f.Tensors)
            {
                owner.Add(t.Name, f);
                tensors.Add(t);
            }
        }
        Tensors = tensors;
        Files = files.ConvertAll(f => f.FilePath);
    }

    /// <summary>All tensors: file by file (in <see cref="Files"/> order), each file's in data order.</summary>
    public IReadOnlyList<SafeTensorsInfo> Tensors { get; }

    /// <summary>
    /// A single file's __metadata__; for a sharded checkpoint the index's "metadata" (non-string values
    /// as their JSON text) followed by the shards' __metadata__ entries whose keys it does not already hold.
    /// </summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>The full paths of the safetensors files, shards sorted by name.</summary>
    public IReadOnlyList<string> Files { get; }

    public static SafeTensorsCheckpoint Open(string fileOrDirectory)
    {
        if (Directory.Exists(fileOrDirectory))
        {
            string single = Path.Combine(fileOrDirectory, SingleFileName);
            if (File.Exists(single)) return OpenSingle(single);
            string index = Path.Combine(fileOrDirectory, IndexFileName);
            if (File.Exists(index)) return OpenSharded(index);
            throw new SafeTensorsFormatException(fileOrDirectory, $"folder holds neither {SingleFileName} nor {IndexFileName}");
        }
        if (!File.Exists(fileOrDirectory))
            throw new SafeTensorsFormatException(fileOrDirectory, "no such file or folder");
        return fileOrDirectory.EndsWith(".index.json", StringComparison.OrdinalIgnoreCase)
            ? OpenSharded(fileOrDirectory)
            : OpenSingle(fileOrDirectory);
    }

    public bool Contains(string name) => owner.ContainsKey(name);

    public SafeTensorsInfo Info(string name) => Owner(name).Info(name);

    public float[] ReadFloat32(string name) => Owner(name).ReadFloat32(name);

    public void ReadFloat32(string name, Span<float> destination) => Owner(name).ReadFloat32(name, destination);

    /// <summary>A range of a float tensor as float32 (<see cref="SafeTensorsFile.ReadFloat32(string, long, Span{float})"/>).</summary>
    public void ReadFloat32(string name, long start, Span<float> destination) => Owner(name).ReadFloat32(name, start, destination);

    /// <summary>A range of a BF16 or F16 tensor as raw bits (<see cref="SafeTensorsFile.ReadBits16"/>).</summary>
    public void ReadBits16(string name, long start, Span<ushort> destination) => Owner(name).ReadBits16(name, start, destination);

    public void Dispose()
    {
        foreach (var f in files) f.Dispose();
    }

    SafeTensorsFile Owner(string name) =>
        owner.TryGetValue(name, out var f) ? f : throw new DiffuException($"tensor '{name}' not in {path}");

    static SafeTensorsCheckpoint OpenSingle(string path)
    {
        var file = SafeTensorsFile.Open(path);
        var metadata = new Dictionary<string, string>(file.Metadata, StringComparer.Ordinal);
        return new SafeTensorsCheckpoint(path, [file], metadata);
    }

    static SafeTensorsCheckpoint OpenSharded(string indexPath)
    {
        var (weightMap, metadata) = ReadIndex(indexPath);
        string folder = Path.GetDirectoryName(Path.GetFullPath(indexPath))!;
        var shardNames = new SortedSet<string>(weightMap.Values, StringComparer.Ordinal);
        var files = new List<SafeTensorsFile>();
        try
        {
            var shardOf = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (string shard in shardNames)
            {
                if (!IsPlainFileName(shard))
                    throw new SafeTensorsFormatException(indexPath, $"shard {JsonSerializer.Serialize(shard)} is not a plain file name in the checkpoint folder");
                string full = Path.Combine(folder, shard);
                if (!File.Exists(full))
                    throw new SafeTensorsFormatException(indexPath, $"shard file '{shard}' is missing (expected at {full})");
                var file = SafeTensorsFile.Open(full);
                files.Add(file);
                foreach (var t in file.Tensors)
                {
                    if (shardOf.TryGetValue(t.Name, out string? other))
                        throw new SafeTensorsFormatException(indexPath, $"tensor '{t.Name}' is in two shards: '{other}' and '{shard}'");
                    shardOf.Add(t.Name, shard);
                }
                foreach (var (key, value) in file.Metadata) metadata.TryAdd(key, value);
            }
            foreach (var (name, shard) in weightMap)
            {
                if (!shardOf.TryGetValue(name, out string? actual) || actual != shard)
                    throw new SafeTensorsFormatException(indexPath, $"tensor '{name}' is listed for shard '{shard}' but is absent from it");
            }
            foreach (var (name, shard) in shardOf)
            {
                if (!weightMap.ContainsKey(name))
                    throw new SafeTensorsFormatException(indexPath, $"tensor '{name}' in shard '{shard}' is not listed in the index");
            }
            return new SafeTensorsCheckpoint(indexPath, files, metadata);
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Shards are files beside the index, so a shard name is a plain file name: not empty, not . or .., no
    /// path separator of any system and no drive (which could reach outside the folder), and no control
    /// character (the path APIs refuse NUL).
    /// </summary>
    static bool IsPlainFileName(string name) =>
        name.Length > 0 && name is not ("." or "..") && name.IndexOfAny(['/', '\\']) < 0 && !Path.IsPathRooted(name)
        && !name.Any(char.IsControl);

    static (Dictionary<string, string> WeightMap, Dictionary<string, string> Metadata) ReadIndex(string indexPath)
    {
        byte[] json = InputFile.ReadAllBytes(indexPath, problem => new SafeTensorsFormatException(indexPath, problem), SafeTensorsHeader.MaxHeaderBytes);
        Dictionary<string, string>? weightMap = null;
        Dictionary<string, string>? metadata = null;
        try
        {
            var reader = new Utf8JsonReader(json);
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
                throw new SafeTensorsFormatException(indexPath, "index is not a JSON object");
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                string key = reader.GetString()!;
                reader.Read();
                switch (key)
                {
                    case "weight_map" when weightMap is null:
                        weightMap = ReadWeightMap(indexPath, json, ref reader);
                        break;
                    case "metadata" when metadata is null:
                        metadata = ReadIndexMetadata(indexPath, json, ref reader);
                        break;
                    case "weight_map" or "metadata":
                        throw new SafeTensorsFormatException(indexPath, $"index names '{key}' twice");
                    default:
                        reader.Skip();
                        break;
                }
            }
            // Reading past the closing brace makes the reader reject anything but whitespace after it.
            reader.Read();
        }
        catch (JsonException e)
        {
            throw new SafeTensorsFormatException(indexPath, $"index is not valid JSON: {e.Message}", e);
        }
        catch (InvalidOperationException e)
        {
            throw new SafeTensorsFormatException(indexPath, $"index is not valid UTF-8 JSON: {e.Message}", e);
        }
        if (weightMap is null) throw new SafeTensorsFormatException(indexPath, "index has no weight_map");
        if (weightMap.Count == 0) throw new SafeTensorsFormatException(indexPath, "index weight_map lists no tensors");
        return (weightMap, metadata ?? new Dictionary<string, string>(StringComparer.Ordinal));
    }

    static Dictionary<string, string> ReadWeightMap(string indexPath, byte[] json, ref Utf8JsonReader reader)
    {
        if (reader.TokenType != JsonTokenType.StartObject)
            throw new SafeTensorsFormatException(indexPath, "index weight_map is not a JSON object");
        var map = new Dictionary<string, string>(StringComparer.Ordinal);
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            string name = reader.GetString()!;
            reader.Read();
            if (reader.TokenType != JsonTokenType.String)
                throw new SafeTensorsFormatException(indexPath, $"index weight_map entry '{name}' is {Describe(json, ref reader)}, not a shard file name");
            if (!map.TryAdd(name, reader.GetString()!))
                throw new SafeTensorsFormatException(indexPath, $"index weight_map lists tensor '{name}' twice (in '{map[name]}' and '{reader.GetString()}')");
        }
        return map;
    }

    static Dictionary<string, string> ReadIndexMetadata(string indexPath, byte[] json, ref Utf8JsonReader reader)
    {
        if (reader.TokenType != JsonTokenType.StartObject)
            throw new SafeTensorsFormatException(indexPath, "index metadata is not a JSON object");
        var map = new Dictionary<string, string>(StringComparer.Ordinal);
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            string key = reader.GetString()!;
            reader.Read();
            string value = reader.TokenType == JsonTokenType.String ? reader.GetString()! : Describe(json, ref reader);
            if (!map.TryAdd(key, value))
                throw new SafeTensorsFormatException(indexPath, $"index metadata names '{key}' twice");
        }
        return map;
    }

    /// <summary>The current value's JSON text (skipping over it when it is an object or array).</summary>
    static string Describe(byte[] json, ref Utf8JsonReader reader)
    {
        int start = (int)reader.TokenStartIndex;
        reader.Skip();
        return Encoding.UTF8.GetString(json, start, (int)reader.BytesConsumed - start);
    }
}
