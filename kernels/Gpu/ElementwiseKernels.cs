using ILGPU;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>
/// Memory-bound kernels over flat index ranges. Each uses a grid-stride loop, so a launch with a bounded
/// number of groups covers any length (the ILGPU CPU simulator pays per group, a GPU wants a full grid).
/// </summary>
static class ElementwiseKernels
{
    /// <summary>sqrt(2 / pi), the constant of GPT-2's tanh GELU.</summary>
    const float GeluScale = 0.7978845608028654f;
    const float GeluCubic = 0.044715f;

    static long FirstIndex => (long)Grid.IdxX * Group.DimX + Group.IdxX;
    static long GridStride => (long)Grid.DimX * Group.DimX;

    internal static void Fill(ArrayView<float> data, float value)
    {
        for (long i = FirstIndex; i < data.Length; i += GridStride)
            data[i] = value;
    }

    /// <summary>data[i] = the i-th uniform of the Philox (seed, stream) sequence, as on every device.</summary>
    internal static void Uniform(ArrayView<float> data, ulong seed, ulong stream)
    {
        for (long i = FirstIndex; i < data.Length; i += GridStride)
            data[i] = Philox.Uniform(seed, stream, (ulong)i);
    }

    internal static void CopyRows(ArrayView<float> src, int srcStride, ArrayView<float> dst, int dstStride, int rows, int columns)
    {
        long total = (long)rows * columns;
        for (long i = FirstIndex; i < total; i += GridStride)
        {
            long r = i / columns;
            long c = i - r * columns;
            dst[r * dstStride + c] = src[r * srcStride + c];
        }
    }

    /// <summary>Token plus position embedding; with <paramref name="usePositions"/> 0 the token row alone (LLaMA).</summary>
    internal static void Embedding(ArrayView<int> ids, ArrayView<float> wte, ArrayView<float> wpe, ArrayView<float> output,
        int length, int channels, int positionOffset, int usePositions)
    {
        for (long i = FirstIndex; i < output.Length; i += GridStride)
        {
            long token = i / channels;
            long c = i - token * channels;
            float value = wte[(long)ids[token] * channels + c];
            if (usePositions != 0) value += wpe[(positionOffset + token % length) * channels + c];
            output[i] = value;
        }
    }

    /// <summary>
    /// A BF16 (half = 0) or F16 (half = 1) element as float32, exactly: BF16 is a float32's upper half; an F16's exponent
    /// and mantissa shifted into float32 position and scaled by 2^112 give normal and subnormal halves alike, and an
    /// all-ones exponent (infinity, NaN) maps to float32's.
    /// </summary>
    internal static float Widen16(ushort bits, int half)
    {
        if (half == 0) return Interop.IntAsFloat((uint)bits << 16);
        uint em = (uint)(bits & 0x7FFF) << 13;
        uint magnitude = em >= 0x0F800000u ? em | 0x7F800000u : Interop.FloatAsInt(Interop.IntAsFloat(em) * 5.192296858534828e33f);
        return Interop.IntAsFloat(magnitude | ((uint)(bits & 0x8000) << 16));
    }

    internal static void Widen(ArrayView<ushort> bits, ArrayView<float> output, int half)
    {
        for (long i = FirstIndex; i < output.Length; i += GridStride) output[i] = Widen16(bits[i], half);
    }

    /// <summary><see cref="Embedding"/> with a 16-bit token table (positions, when used, already float32).</summary>
    internal static void Embedding16(ArrayView<int> ids, ArrayView<ushort> wte, int half, ArrayView<float> wpe, ArrayView<float> output,
        int length, int channels, int positionOffset, int usePositions)
    {
        for (long i = FirstIndex; i < output.Length; i += GridStride)
        {
            long token = i / channels;
            long c = i - token * channels;
            float value = Widen16(wte[(long)ids[token] * channels + c], half);
            if (usePositions != 0) value += wpe[(positionOffset + token % length) * channels + c];
            output[i] = value;
        }
    }

    /// <summary>
    /// GELU as x * sigmoid(2u) with u = sqrt(2/pi) (x + 0.044715 x^3), which equals 0.5 x (1 + tanh u)
    /// exactly. PTX's tanh.approx.f32 has a relative error near 2^-11, too coarse for the 1e-5 budget;
    /// exp stays accurate through ex2.
    /// </summary>
    internal static void Gelu(ArrayView<float> x, ArrayView<float> output)
    {
        for (long i = FirstIndex; i < x.Length; i += GridStride)
        {
            float v = x[i];
            float u = GeluScale * (v + GeluCubic * v * v * v);
            output[i] = v / (1f + MathF.Exp(-2f * u));
        }
    }

    internal static void Add(ArrayView<float> a, ArrayView<float> b, ArrayView<float> output)
    {
        for (long i = FirstIndex; i < output.Length; i += GridStride)
            output[i] = a[i] + b[i];
    }
}
