namespace DiffuSharp.IO;

/// <summary>The element types a safetensors header may name (spelled as in the header).</summary>
public enum SafeTensorsDType { F32, F16, BF16, I32, I64, U8, I8, F64, BOOL, I16 }

/// <summary>A safetensors file or checkpoint that is missing, unreadable or malformed. The message names the file and the problem.</summary>
public sealed class SafeTensorsFormatException : DiffuException
{
    public SafeTensorsFormatException(string filePath, string problem) : base($"{filePath}: {problem}") { FilePath = filePath; }

    public SafeTensorsFormatException(string filePath, string problem, Exception inner) : base($"{filePath}: {problem}", inner) { FilePath = filePath; }

    public string FilePath { get; }
}

/// <summary>One tensor of a safetensors file: its type, shape and byte range [Begin, End) within the data section.</summary>
public sealed record SafeTensorsInfo(string Name, SafeTensorsDType DType, int[] Shape, long Begin, long End)
{
    public long ElementCount { get; } = SafeTensorsShapes.ElementCount(Shape);
}

internal static class SafeTensorsShapes
{
    public static long ElementCount(int[] shape)
    {
        long n = 1;
        foreach (int d in shape)
        {
            if (d < 0) throw new ArgumentException($"negative dimension in shape {Format(shape)}");
            n = checked(n * d);
        }
        return n;
    }

    public static string Format(int[] shape) => "[" + string.Join(", ", shape) + "]";
}

internal static class SafeTensorsDTypes
{
    public static int ElementSize(SafeTensorsDType t) => t switch
    {
        SafeTensorsDType.F64 or SafeTensorsDType.I64 => 8,
        SafeTensorsDType.F32 or SafeTensorsDType.I32 => 4,
        SafeTensorsDType.F16 or SafeTensorsDType.BF16 or SafeTensorsDType.I16 => 2,
        SafeTensorsDType.U8 or SafeTensorsDType.I8 or SafeTensorsDType.BOOL => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, "unknown dtype"),
    };

    /// <summary>Parses a header dtype name; the names are case-sensitive, as in the format.</summary>
    public static bool TryParse(string name, out SafeTensorsDType dtype)
    {
        foreach (var t in Enum.GetValues<SafeTensorsDType>())
        {
            if (t.ToString() == name) { dtype = t; return true; }
        }
        dtype = default;
        return false;
    }

    public static bool IsFloat(SafeTensorsDType t) =>
        t is SafeTensorsDType.F32 or SafeTensorsDType.F16 or SafeTensorsDType.BF16 or SafeTensorsDType.F64;
}

/// <summary>
/// IEEE binary16 and bfloat16 conversions written out with bit operations, so that tests can check them
/// against independent conversions (System.Half, plain bit shifts).
/// </summary>
internal static class HalfBits
{
    private static readonly Lazy<float[]> Float16Table = new(() =>
    {
        var t = new float[65536];
        for (int i = 0; i < t.Length; i++) t[i] = Float16ToSingle((ushort)i);
        return t;
    });

    /// <summary>All 65536 binary16 values as float32, indexed by their bits (decoding by lookup).</summary>
    public static float[] Float16ToSingleTable => Float16Table.Value;

    public static float Float16ToSingle(ushort h)
    {
        uint sign = (uint)(h & 0x8000) << 16;
        int exp = (h >> 10) & 0x1F;
        uint mant = (uint)(h & 0x3FF);
        uint bits;
        if (exp == 0x1F)
        {
            bits = sign | 0x7F800000u | (mant << 13);
        }
        else if (exp != 0)
        {
            bits = sign | (uint)(exp - 15 + 127) << 23 | (mant << 13);
        }
        else if (mant == 0)
        {
            bits = sign;
        }
        else
        {
            // Subnormal half: normalise the mantissa; every half subnormal is a normal float32.
            int e = -14;
            while ((mant & 0x400) == 0) { mant <<= 1; e--; }
            bits = sign | (uint)(e + 127) << 23 | ((mant & 0x3FF) << 13);
        }
        return BitConverter.UInt32BitsToSingle(bits);
    }

    /// <summary>float32 to binary16 with round-to-nearest-even; overflow gives infinity, NaN stays NaN.</summary>
    public static ushort SingleToFloat16(float f)
    {
        uint x = BitConverter.SingleToUInt32Bits(f);
        uint sign = (x >> 16) & 0x8000;
        int exp = (int)((x >> 23) & 0xFF);
        uint mant = x & 0x7FFFFF;
        if (exp == 0xFF)
        {
            return (ushort)(sign | 0x7C00 | (mant != 0 ? 0x200u | (mant >> 13) : 0));
        }
        int e = exp - 127 + 15;
        if (e >= 0x1F) return (ushort)(sign | 0x7C00);
        if (e <= 0)
        {
            // Result is subnormal (or zero): shift the full 24-bit significand into the 10-bit field.
            if (e < -10) return (ushort)sign;
            uint full = mant | 0x800000;
            int shift = 14 - e;
            uint half = full >> shift;
            uint rest = full & ((1u << shift) - 1);
            uint halfway = 1u << (shift - 1);
            if (rest > halfway || (rest == halfway && (half & 1) != 0)) half++;
            return (ushort)(sign | half);
        }
        uint h = (uint)e << 10 | (mant >> 13);
        uint low = mant & 0x1FFF;
        // A carry out of the mantissa correctly bumps the exponent (up to infinity).
        if (low > 0x1000 || (low == 0x1000 && (h & 1) != 0)) h++;
        return (ushort)(sign | h);
    }

    public static float BFloat16ToSingle(ushort b) => BitConverter.UInt32BitsToSingle((uint)b << 16);

    /// <summary>float32 to bfloat16 with round-to-nearest-even; NaN stays a (quiet) NaN.</summary>
    public static ushort SingleToBFloat16(float f)
    {
        uint x = BitConverter.SingleToUInt32Bits(f);
        if (float.IsNaN(f)) return (ushort)((x >> 16) | 0x40);
        uint rounded = x + 0x7FFF + ((x >> 16) & 1);
        return (ushort)(rounded >> 16);
    }
}
