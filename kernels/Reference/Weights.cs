namespace DiffuSharp.Kernels.Reference;

/// <summary>The reference reads a 16-bit weight by its exact value: every BF16 and F16 is a double, so the float64 ops apply unchanged.</summary>
public static class Weights
{
    public static double[] Widen(ReadOnlySpan<ushort> bits, WeightFormat format)
    {
        var values = new double[bits.Length];
        for (int i = 0; i < bits.Length; i++) values[i] = SixteenBit.ToSingle(bits[i], format);
        return values;
    }
}
