using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Encodings.Web;
using System.Text.Json;
using DiffuSharp.Kernels;

namespace DiffuSharp.IO;

/// <summary>
/// One tensor to write: its name, type and shape, and its little-endian bytes, either given or produced
/// only when the writer reaches it (so a checkpoint holds one tensor's host copy at a time, not all).
/// </summary>
public sealed class SafeTensorsEntry
{
    readonly Action<Stream> write;

    public SafeTensorsEntry(string name, SafeTensorsDType dtype, int[] shape, byte[] data) : this(name, dtype, shape, s => s.Write(data)) { }

    /// <summary>A tensor whose bytes <paramref name="write"/> puts on the stream when the writer gets to it.</summary>
    public SafeTensorsEntry(string name, SafeTensorsDType dtype, int[] shape, Action<Stream> write)
    {
        Name = name; DType = dtype; Shape = shape;
        this.write = write;
    }

    public string Name { get; }
    public SafeTensorsDType DType { get; }
    public int[] Shape { get; }

    internal void WriteData(Stream stream) => write(stream);

    /// <summary>The tensor's bytes, produced now (for inspection).</summary>
    public byte[] ToBytes()
    {
        using var buffer = new MemoryStream();
        write(buffer);
        return buffer.ToArray();
    }

    /// <summary>Float32 values read from <paramref name="values"/> when written.</summary>
    public static SafeTensorsEntry DeferredFloat32(string name, int[] shape, Func<float[]> values) =>
        new(name, SafeTensorsDType.F32, shape, s => s.Write(MemoryMarshal.AsBytes(values().AsSpan())));

    public static SafeTensorsEntry FromFloat32(string name, int[] shape, ReadOnlySpan<float> values) =>
        new(name, SafeTensorsDType.F32, shape, MemoryMarshal.AsBytes(values).ToArray());

    public static SafeTensorsEntry FromFloat64(string name, int[] shape, ReadOnlySpan<double> values) =>
        new(name, SafeTensorsDType.F64, shape, MemoryMarshal.AsBytes(values).ToArray());

    /// <summary>IEEE binary16, each value rounded to nearest-even (overflow becomes infinity).</summary>
    public static SafeTensorsEntry FromFloat16(string name, int[] shape, ReadOnlySpan<float> values)
    {
        var bits = new ushort[values.Length];
        for (int i = 0; i < values.Length; i++) bits[i] = SixteenBit.SingleToHalf(values[i]);
        return new(name, SafeTensorsDType.F16, shape, MemoryMarshal.AsBytes(bits.AsSpan()).ToArray());
    }

    /// <summary>bfloat16, each value rounded to nearest-even.</summary>
    public static SafeTensorsEntry FromBFloat16(string name, int[] shape, ReadOnlySpan<float> values)
    {
        var bits = new ushort[values.Length];
        for (int i = 0; i < values.Length; i++) bits[i] = SixteenBit.SingleToBFloat16(values[i]);
        return new(name, SafeTensorsDType.BF16, shape, MemoryMarshal.AsBytes(bits.AsSpan()).ToArray());
    }

    public static SafeTensorsEntry FromInt32(string name, int[] shape, ReadOnlySpan<int> values) =>
        new(name, SafeTensorsDType.I32, shape, MemoryMarshal.AsBytes(values).ToArray());

    public static SafeTensorsEntry FromInt64(string name, int[] shape, ReadOnlySpan<long> values) =>
        new(name, SafeTensorsDType.I64, shape, MemoryMarshal.AsBytes(values).ToArray());

    public static SafeTensorsEntry FromUInt8(string name, int[] shape, ReadOnlySpan<byte> values) =>
        new(name, SafeTensorsDType.U8, shape, values.ToArray());
}

/// <summary>
/// Writes safetensors files: tensors in the order given, data packed without gaps, the header padded
/// with spaces to a multiple of 8 bytes. It writes where it is told; atomic replacement of a file or of a
/// checkpoint is the caller's.
/// </summary>
public static class SafeTensorsWriter
{
    /// <summary>
    /// A new file at <paramref name="path"/> (an existing one is an error and is left alone), flushed to disk.
    /// The entries are checked before the file is created, and a write that fails part-way removes it.
    /// </summary>
    public static void Write(string path, IEnumerable<SafeTensorsEntry> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = new List<SafeTensorsEntry>(tensors);
        byte[] header = Header(list, metadata);
        var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None);
        try
        {
            using (stream)
            {
                Write(stream, list, header);
                stream.Flush(flushToDisk: true);
            }
        }
        catch
        {
            File.Delete(path);
            throw;
        }
    }

    public static void Write(Stream stream, IEnumerable<SafeTensorsEntry> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = new List<SafeTensorsEntry>(tensors);
        Write(stream, list, Header(list, metadata));
    }

    static void Write(Stream stream, List<SafeTensorsEntry> list, byte[] header)
    {
        Span<byte> prefix = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
        stream.Write(prefix);
        stream.Write(header);
        foreach (var t in list)
        {
            long start = stream.Position, expected = SafeTensorsShapes.ElementCount(t.Shape) * SafeTensorsDTypes.ElementSize(t.DType);
            t.WriteData(stream);
            if (stream.Position - start != expected)
                throw new ArgumentException($"tensor '{t.Name}': shape {SafeTensorsShapes.Format(t.Shape)} of {t.DType} needs {expected} bytes, got {stream.Position - start}");
        }
    }

    private static byte[] Header(List<SafeTensorsEntry> tensors, IReadOnlyDictionary<string, string>? metadata)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject(SafeTensorsHeader.MetadataKey);
                foreach (var (key, value) in metadata) json.WriteString(key, value);
                json.WriteEndObject();
            }
            long offset = 0;
            foreach (var t in tensors)
            {
                if (t.Name.Length == 0 || t.Name == SafeTensorsHeader.MetadataKey)
                    throw new ArgumentException($"invalid tensor name '{t.Name}'");
                if (!names.Add(t.Name)) throw new ArgumentException($"tensor '{t.Name}' given twice");
                long bytes = SafeTensorsShapes.ElementCount(t.Shape) * SafeTensorsDTypes.ElementSize(t.DType);
                json.WriteStartObject(t.Name);
                json.WriteString("dtype", t.DType.ToString());
                json.WriteStartArray("shape");
                foreach (int d in t.Shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + bytes);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += bytes;
            }
            json.WriteEndObject();
        }
        int padded = (int)((buffer.Length + 7) / 8 * 8);
        while (buffer.Length < padded) buffer.WriteByte((byte)' ');
        return buffer.ToArray();
    }
}
