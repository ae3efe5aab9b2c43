using ILGPU;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>
/// The GPU's own ceilings: a kernel of independent FMA chains (the fp32 rate every core can sustain) and
/// a grid-stride in-place scale (the memory bandwidth). Benchmarks report each kernel as a share of these.
/// </summary>
public static class PeakKernels
{
    /// <summary>Independent chains per thread, enough to cover the FMA pipeline latency.</summary>
    public const int Chains = 8;

    /// <summary>Floating-point operations one thread does in <see cref="FusedMultiplyAdds"/>.</summary>
    public static double FlopsPerThread(int iterations) => 2.0 * Chains * iterations;

    /// <summary>Each thread runs <paramref name="iterations"/> rounds of <see cref="Chains"/> FMAs and writes
    /// their sum (so the compiler keeps them).</summary>
    public static void FusedMultiplyAdds(ArrayView<float> sink, int iterations, float a, float b)
    {
        long i = (long)Grid.IdxX * Group.DimX + Group.IdxX;
        float x = Group.IdxX * 1e-6f;
        float c0 = x, c1 = x + 1, c2 = x + 2, c3 = x + 3, c4 = x + 4, c5 = x + 5, c6 = x + 6, c7 = x + 7;
        for (int k = 0; k < iterations; k++)
        {
            c0 = c0 * a + b; c1 = c1 * a + b; c2 = c2 * a + b; c3 = c3 * a + b;
            c4 = c4 * a + b; c5 = c5 * a + b; c6 = c6 * a + b; c7 = c7 * a + b;
        }
        if (i < sink.Length) sink[i] = c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7;
    }

    /// <summary>data *= factor over the whole length, grid-stride: each element read and written once.</summary>
    public static void ScaleInPlace(ArrayView<float> data, float factor)
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = (long)Grid.IdxX * Group.DimX + Group.IdxX; i < data.Length; i += stride)
            data[i] *= factor;
    }
}
