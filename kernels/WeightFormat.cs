namespace DiffuSharp.Kernels;

/// <summary>
/// How a weight's elements are stored: float32, or one of the two 16-bit floats whose raw bits a 16-bit tensor holds.
/// Kernels that read weights widen BF16 and F16 to float32 exactly and compute in float32.
/// </summary>
public enum WeightFormat { F32, BF16, F16 }

/// <summary>
/// Exact conversions between the 16-bit floats and float32: widening is exact (every BF16 and F16 value is a float32);
/// narrowing rounds to nearest, ties to even, keeping NaNs NaN and overflowing to infinity as IEEE 754 does.
/// </summary>
public static class SixteenBit
{
    /// <summary>A BF16 is the upper half of a float32.</summary>
    public static float BFloat16ToSingle(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    public static float HalfToSingle(ushort bits) => (float)BitConverter.UInt16BitsToHalf(bits);

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

    /// <summary>The nearest F16 (ties to even), infinity past its range, as .NET's Half conversion rounds.</summary>
    public static ushort SingleToHalf(float value) => BitConverter.HalfToUInt16Bits((Half)value);

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
        if (format == WeightFormat.BF16)
            for (int i = 0; i < bits.Length; i++) destination[i] = BFloat16ToSingle(bits[i]);
        else
            for (int i = 0; i < bits.Length; i++) destination[i] = ToSingle(bits[i], format);
    }

    /// <summary>Rounds <paramref name="values"/> into <paramref name="bits"/> (the same length).</summary>
    public static void Narrow(ReadOnlySpan<float> values, WeightFormat format, Span<ushort> bits)
    {
        if (bits.Length != values.Length) throw new ArgumentException($"narrowing {values.Length} elements into {bits.Length}");
        for (int i = 0; i < values.Length; i++) bits[i] = FromSingle(values[i], format);
    }
}
