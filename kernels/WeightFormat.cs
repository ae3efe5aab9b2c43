namespace DiffuSharp.Kernels;

/// <summary>
/// How a weight's elements are stored: float32, or one of the two 16-bit floats whose raw bits a 16-bit tensor holds.
/// Kernels that read weights widen BF16 and F16 to float32 exactly and compute in float32.
/// </summary>
public enum WeightFormat { F32, BF16, F16 }

/// <summary>
/// Conversions between the 16-bit floats and float32, written out with bit operations (so that tests check them against
/// independent ones: System.Half, plain shifts): widening is exact (every BF16 and F16 value is a float32); narrowing
/// rounds to nearest, ties to even, keeping NaNs NaN and overflowing to infinity as IEEE 754 does.
/// </summary>
public static class SixteenBit
{
    static readonly Lazy<float[]> HalfTable = new(() =>
    {
        var t = new float[65536];
        for (int i = 0; i < t.Length; i++) t[i] = HalfToSingle((ushort)i);
        return t;
    });

    /// <summary>All 65536 binary16 values as float32, indexed by their bits (decoding by lookup).</summary>
    public static float[] HalfToSingleTable => HalfTable.Value;

    /// <summary>A BF16 is the upper half of a float32.</summary>
    public static float BFloat16ToSingle(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    public static float HalfToSingle(ushort h)
    {
        uint sign = (uint)(h & 0x8000) << 16;
        int exp = (h >> 10) & 0x1F;
        uint mant = (uint)(h & 0x3FF);
        uint bits;
        if (exp == 0x1F) bits = sign | 0x7F800000u | (mant << 13);
        else if (exp != 0) bits = sign | (uint)(exp - 15 + 127) << 23 | (mant << 13);
        else if (mant == 0) bits = sign;
        else
        {
            // Subnormal half: normalise the mantissa; every half subnormal is a normal float32.
            int e = -14;
            while ((mant & 0x400) == 0) { mant <<= 1; e--; }
            bits = sign | (uint)(e + 127) << 23 | ((mant & 0x3FF) << 13);
        }
        return BitConverter.UInt32BitsToSingle(bits);
    }

    public static float ToSingle(ushort bits, WeightFormat format) => format switch
    {
        WeightFormat.BF16 => BFloat16ToSingle(bits),
        WeightFormat.F16 => HalfToSingle(bits),
        _ => throw new ArgumentOutOfRangeException(nameof(format), $"{format} is not a 16-bit format"),
    };

    /// <summary>The nearest BF16 (ties to even); a NaN stays a (quiet) NaN of the same sign.</summary>
    public static ushort SingleToBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return (ushort)((bits >> 16) | 0x0040);
        uint rounding = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + rounding) >> 16);
    }

    /// <summary>The nearest F16 (ties to even); overflow gives infinity, a NaN stays NaN.</summary>
    public static ushort SingleToHalf(float f)
    {
        uint x = BitConverter.SingleToUInt32Bits(f);
        uint sign = (x >> 16) & 0x8000;
        int exp = (int)((x >> 23) & 0xFF);
        uint mant = x & 0x7FFFFF;
        if (exp == 0xFF) return (ushort)(sign | 0x7C00 | (mant != 0 ? 0x200u | (mant >> 13) : 0));
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

    public static ushort FromSingle(float value, WeightFormat format) => format switch
    {
        WeightFormat.BF16 => SingleToBFloat16(value),
        WeightFormat.F16 => SingleToHalf(value),
        _ => throw new ArgumentOutOfRangeException(nameof(format), $"{format} is not a 16-bit format"),
    };

    /// <summary>Widens <paramref name="bits"/> into <paramref name="destination"/> (the same length).</summary>
    public static void Widen(ReadOnlySpan<ushort> bits, WeightFormat format, Span<float> destination)
    {
        if (destination.Length != bits.Length) throw new ArgumentException($"widening {bits.Length} elements into {destination.Length}");
        for (int i = 0; i < bits.Length; i++) destination[i] = ToSingle(bits[i], format);
    }

    /// <summary>Rounds <paramref name="values"/> into <paramref name="bits"/> (the same length).</summary>
    public static void Narrow(ReadOnlySpan<float> values, WeightFormat format, Span<ushort> bits)
    {
        if (bits.Length != values.Length) throw new ArgumentException($"narrowing {values.Length} elements into {bits.Length}");
        for (int i = 0; i < values.Length; i++) bits[i] = FromSingle(values[i], format);
    }
}
