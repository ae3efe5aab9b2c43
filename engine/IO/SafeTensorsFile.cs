using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using DiffuSharp.Kernels;

namespace DiffuSharp.IO;

/// <summary>
/// A safetensors file opened for reading. <see cref="Open"/> validates the whole header and the data
/// layout before anything is read, then maps the file into memory; reads copy (and convert) straight
/// from the mapping. The format is little-endian, as is every machine this engine runs on.
/// </summary>
public sealed unsafe class SafeTensorsFile : IDisposable
{
    const int ChunkElements = 1 << 20;

    readonly Dictionary<string, SafeTensorsInfo> byName;
    readonly MemoryMappedFile map;
    readonly MemoryMappedViewAccessor view;
    readonly byte* data;
    readonly long dataStart;
    Microsoft.Win32.SafeHandles.SafeFileHandle? handle;
    bool disposed;

    SafeTensorsFile(string path, List<SafeTensorsInfo> tensors, Dictionary<string, string> metadata,
                           MemoryMappedFile map, MemoryMappedViewAccessor view, long dataStart)
    {
        FilePath = path;
        Tensors = tensors;
        Metadata = metadata;
        byName = new Dictionary<string, SafeTensorsInfo>(StringComparer.Ordinal);
        foreach (var t in tensors) byName.Add(t.Name, t);
        this.map = map;
        this.view = view;
        byte* basePtr = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref basePtr);
        data = basePtr + view.PointerOffset + dataStart;
        this.dataStart = dataStart;
    }

    public string FilePath { get; }

    /// <summary>The header's __metadata__ map (empty when the header has none).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>All tensors, in the order of their data in the file.</summary>
    public IReadOnlyList<SafeTensorsInfo> Tensors { get; }

    public static SafeTensorsFile Open(string path)
    {
        FileStream? stream = InputFile.Open(path, problem => new SafeTensorsFormatException(path, problem));
        MemoryMappedFile? map = null;
        try
        {
            long length = stream.Length;
            if (length < 8)
                throw new SafeTensorsFormatException(path, $"file is {length} bytes, too short for the 8-byte header length");
            Span<byte> prefix = stackalloc byte[8];
            stream.ReadExactly(prefix);
            ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
            if (headerLength > SafeTensorsHeader.MaxHeaderBytes)
                throw NotSafeTensors(path, prefix, $"header length {headerLength} is larger than the {SafeTensorsHeader.MaxHeaderBytes}-byte limit");
            if ((long)headerLength > length - 8)
                throw NotSafeTensors(path, prefix, $"header length {headerLength} is larger than the file ({length - 8} bytes after the length field)");
            var header = new byte[headerLength];
            stream.ReadExactly(header);
            if (header.Length == 0 || header[0] != '{')
                throw NotSafeTensors(path, prefix, "the header does not start with '{'");
            long dataStart = 8 + (long)headerLength;
            var (tensors, metadata) = SafeTensorsHeader.Parse(path, header, length - dataStart);
            map = MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
            stream = null;
            var view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            return new SafeTensorsFile(path, tensors, metadata, map, view, dataStart);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            map?.Dispose();
            throw new SafeTensorsFormatException(path, $"cannot read: {e.Message}", e);
        }
        catch
        {
            map?.Dispose();
            throw;
        }
        finally
        {
            stream?.Dispose();
        }
    }

    public bool Contains(string name) => byName.ContainsKey(name);

    public SafeTensorsInfo Info(string name) =>
        byName.TryGetValue(name, out var info) ? info : throw new DiffuException($"tensor '{name}' not in {FilePath}");

    /// <summary>A float tensor (F32, F16, BF16 or F64) converted to float32.</summary>
    public float[] ReadFloat32(string name)
    {
        var info = Info(name);
        var result = new float[CheckedLength(info)];
        ReadFloat32(info, result);
        return result;
    }

    /// <summary>A float tensor converted to float32 into <paramref name="destination"/>, which must hold exactly its elements.</summary>
    public void ReadFloat32(string name, Span<float> destination) => ReadFloat32(Info(name), destination);

    /// <summary>
    /// Elements [start, start + destination.Length) of a BF16 or F16 tensor as their raw bits, read with positioned reads
    /// rather than through the mapping: a large model loaded piece by piece then leaves its file in the page cache only,
    /// not in this process's resident memory beside the copy it loads into.
    /// </summary>
    public void ReadBits16(string name, long start, Span<ushort> destination)
    {
        var info = Info(name);
        if (info.DType is not (SafeTensorsDType.BF16 or SafeTensorsDType.F16))
            throw new DiffuException($"tensor '{name}' in {FilePath} has dtype {info.DType}, not a 16-bit float type");
        ReadRange(info, start, MemoryMarshal.AsBytes(destination), destination.Length);
    }

    /// <summary>Elements [start, start + destination.Length) of a float tensor converted to float32, with positioned reads (<see cref="ReadBits16"/>).</summary>
    public void ReadFloat32(string name, long start, Span<float> destination)
    {
        var info = Info(name);
        if (!SafeTensorsDTypes.IsFloat(info.DType))
            throw new DiffuException($"tensor '{info.Name}' in {FilePath} has dtype {info.DType}, not a float type");
        int size = SafeTensorsDTypes.ElementSize(info.DType);
        var raw = new byte[(long)destination.Length * size];
        ReadRange(info, start, raw, destination.Length);
        Convert(info.DType, raw, destination);
    }

    void ReadRange(SafeTensorsInfo info, long start, Span<byte> bytes, int count)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (start < 0 || start + count > info.ElementCount)
            throw new DiffuException($"elements [{start}, {start + count}) are outside tensor '{info.Name}' of {info.ElementCount} in {FilePath}");
        handle ??= File.OpenHandle(FilePath, FileMode.Open, FileAccess.Read, FileShare.Read);
        long offset = dataStart + info.Begin + start * SafeTensorsDTypes.ElementSize(info.DType);
        while (!bytes.IsEmpty)
        {
            int read = RandomAccess.Read(handle, bytes, offset);
            if (read <= 0) throw new SafeTensorsFormatException(FilePath, $"the file ended while reading tensor '{info.Name}'");
            bytes = bytes[read..];
            offset += read;
        }
    }

    /// <summary>An integer or BOOL tensor as int32 (I64 values must fit).</summary>
    public int[] ReadInt32(string name)
    {
        var info = Info(name);
        var wide = ReadIntegers(info);
        var result = new int[wide.Length];
        for (int i = 0; i < wide.Length; i++)
        {
            if (wide[i] is < int.MinValue or > int.MaxValue)
                throw new DiffuException($"tensor '{name}' in {FilePath}: element {i} = {wide[i]} does not fit in int32");
            result[i] = (int)wide[i];
        }
        return result;
    }

    /// <summary>An integer or BOOL tensor as int64.</summary>
    public long[] ReadInt64(string name) => ReadIntegers(Info(name));

    /// <summary>A tensor's bytes exactly as stored (little-endian); for U8, I8 and BOOL these are the values.</summary>
    public byte[] ReadBytes(string name)
    {
        var info = Info(name);
        long length = info.End - info.Begin;
        if (length > Array.MaxLength)
            throw new DiffuException($"tensor '{name}' in {FilePath} holds {length} bytes, more than one array can hold");
        return Bytes(info.Begin, (int)length).ToArray();
    }

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        handle?.Dispose();
        view.SafeMemoryMappedViewHandle.ReleasePointer();
        view.Dispose();
        map.Dispose();
    }

    void ReadFloat32(SafeTensorsInfo info, Span<float> destination)
    {
        if (!SafeTensorsDTypes.IsFloat(info.DType))
            throw new DiffuException($"tensor '{info.Name}' in {FilePath} has dtype {info.DType}, not a float type");
        if (destination.Length != info.ElementCount)
            throw new DiffuException($"tensor '{info.Name}' in {FilePath} has {info.ElementCount} elements (shape " +
                                     $"{SafeTensorsShapes.Format(info.Shape)}), but the destination holds {destination.Length}");
        int size = SafeTensorsDTypes.ElementSize(info.DType);
        for (int start = 0; start < destination.Length; start += ChunkElements)
        {
            int n = Math.Min(ChunkElements, destination.Length - start);
            Convert(info.DType, Bytes(info.Begin + (long)start * size, n * size), destination.Slice(start, n));
        }
    }

    /// <summary>Float elements of <paramref name="dtype"/> as float32 (as many as <paramref name="dst"/> holds).</summary>
    static void Convert(SafeTensorsDType dtype, ReadOnlySpan<byte> src, Span<float> dst)
    {
        int n = dst.Length;
        switch (dtype)
        {
            case SafeTensorsDType.F32:
                src[..(n * 4)].CopyTo(MemoryMarshal.AsBytes(dst));
                break;
            case SafeTensorsDType.F16:
                var table = SixteenBit.HalfToSingleTable;
                var halves = MemoryMarshal.Cast<byte, ushort>(src);
                for (int i = 0; i < n; i++) dst[i] = table[halves[i]];
                break;
            case SafeTensorsDType.BF16:
                var bfloats = MemoryMarshal.Cast<byte, ushort>(src);
                for (int i = 0; i < n; i++) dst[i] = SixteenBit.BFloat16ToSingle(bfloats[i]);
                break;
            default:
                var doubles = MemoryMarshal.Cast<byte, double>(src);
                for (int i = 0; i < n; i++) dst[i] = (float)doubles[i];
                break;
        }
    }

    long[] ReadIntegers(SafeTensorsInfo info)
    {
        if (info.DType is not (SafeTensorsDType.I64 or SafeTensorsDType.I32 or SafeTensorsDType.I16 or SafeTensorsDType.I8
                               or SafeTensorsDType.U8 or SafeTensorsDType.BOOL))
            throw new DiffuException($"tensor '{info.Name}' in {FilePath} has dtype {info.DType}, not an integer type");
        var result = new long[CheckedLength(info)];
        long byteLength = info.End - info.Begin;
        if (byteLength > int.MaxValue)
            throw new DiffuException($"tensor '{info.Name}' in {FilePath} holds {byteLength} bytes, too many to read as integers at once");
        var src = Bytes(info.Begin, (int)byteLength);
        for (int i = 0; i < result.Length; i++)
        {
            result[i] = info.DType switch
            {
                SafeTensorsDType.I64 => BinaryPrimitives.ReadInt64LittleEndian(src[(i * 8)..]),
                SafeTensorsDType.I32 => BinaryPrimitives.ReadInt32LittleEndian(src[(i * 4)..]),
                SafeTensorsDType.I16 => BinaryPrimitives.ReadInt16LittleEndian(src[(i * 2)..]),
                SafeTensorsDType.I8 => (sbyte)src[i],
                _ => src[i],
            };
        }
        return result;
    }

    ReadOnlySpan<byte> Bytes(long offset, int length)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        return new ReadOnlySpan<byte>(data + offset, length);
    }

    int CheckedLength(SafeTensorsInfo info) =>
        info.ElementCount <= Array.MaxLength
            ? (int)info.ElementCount
            : throw new DiffuException($"tensor '{info.Name}' in {FilePath} has {info.ElementCount} elements, more than one array can hold");

    /// <summary>
    /// A file without a plausible header length, or whose header does not open a JSON object, is some other
    /// file (the reference implementation also requires the '{'). Eight bytes of text read as a length far
    /// over the limit, so for a text file its first bytes say more than the length does.
    /// </summary>
    static SafeTensorsFormatException NotSafeTensors(string path, ReadOnlySpan<byte> start, string why)
    {
        foreach (byte b in start)
        {
            if (b is not ((>= 0x20 and < 0x7F) or (byte)'\t' or (byte)'\n' or (byte)'\r'))
                return new SafeTensorsFormatException(path, $"not a safetensors file: {why}");
        }
        string text = JsonEncodedText.Encode(Encoding.ASCII.GetString(start), JavaScriptEncoder.UnsafeRelaxedJsonEscaping).ToString();
        return new SafeTensorsFormatException(path, $"not a safetensors file: it starts with \"{text}\"");
    }
}
