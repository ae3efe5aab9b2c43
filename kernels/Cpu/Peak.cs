using System.Runtime.Intrinsics;

namespace DiffuSharp.Kernels.Cpu;

/// <summary>
/// The CPU's own ceilings, measured rather than taken from a data sheet: the fused multiply-add rate of
/// every core with independent chains (what a perfect matmul could reach) and the read-write bandwidth of main
/// memory (what a memory-bound op could reach). Benchmarks report each kernel as a share of these.
/// </summary>
public static class Peak
{
    /// <summary>Independent accumulators per thread: enough to hide the FMA latency (4 cycles x 2 ports).</summary>
    const int Chains = 12;

    /// <summary>Runs <paramref name="iterations"/> rounds of <see cref="Chains"/> vector FMAs on each of
    /// <paramref name="threads"/> threads; returns the floating-point operations done (2 per lane per FMA).</summary>
    public static double FusedMultiplyAdds(int threads, long iterations)
    {
        Guard.Positive(threads, nameof(threads));
        var sinks = new float[threads];
        Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t => sinks[t] = FmaChains(iterations, t));
        if (float.IsNaN(sinks.Sum())) throw new InvalidOperationException("FMA chains produced NaN");
        int lanes = Vector512.IsHardwareAccelerated ? 16 : Vector256.IsHardwareAccelerated ? 8 : 1;
        return 2.0 * lanes * Chains * iterations * threads;
    }

    static float FmaChains(long iterations, int seed)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            var a = Vector512.Create(0.999f);
            var b = Vector512.Create(1e-3f * (seed + 1));
            Vector512<float> c0 = a, c1 = a, c2 = a, c3 = a, c4 = a, c5 = a, c6 = a, c7 = a, c8 = a, c9 = a, c10 = a, c11 = a;
            for (long i = 0; i < iterations; i++)
            {
                c0 = Vector512.FusedMultiplyAdd(c0, a, b); c1 = Vector512.FusedMultiplyAdd(c1, a, b);
                c2 = Vector512.FusedMultiplyAdd(c2, a, b); c3 = Vector512.FusedMultiplyAdd(c3, a, b);
                c4 = Vector512.FusedMultiplyAdd(c4, a, b); c5 = Vector512.FusedMultiplyAdd(c5, a, b);
                c6 = Vector512.FusedMultiplyAdd(c6, a, b); c7 = Vector512.FusedMultiplyAdd(c7, a, b);
                c8 = Vector512.FusedMultiplyAdd(c8, a, b); c9 = Vector512.FusedMultiplyAdd(c9, a, b);
                c10 = Vector512.FusedMultiplyAdd(c10, a, b); c11 = Vector512.FusedMultiplyAdd(c11, a, b);
            }
            return Vector512.Sum(c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var a = Vector256.Create(0.999f);
            var b = Vector256.Create(1e-3f * (seed + 1));
            Vector256<float> c0 = a, c1 = a, c2 = a, c3 = a, c4 = a, c5 = a, c6 = a, c7 = a, c8 = a, c9 = a, c10 = a, c11 = a;
            for (long i = 0; i < iterations; i++)
            {
                c0 = Vector256.FusedMultiplyAdd(c0, a, b); c1 = Vector256.FusedMultiplyAdd(c1, a, b);
                c2 = Vector256.FusedMultiplyAdd(c2, a, b); c3 = Vector256.FusedMultiplyAdd(c3, a, b);
                c4 = Vector256.FusedMultiplyAdd(c4, a, b); c5 = Vector256.FusedMultiplyAdd(c5, a, b);
                c6 = Vector256.FusedMultiplyAdd(c6, a, b); c7 = Vector256.FusedMultiplyAdd(c7, a, b);
                c8 = Vector256.FusedMultiplyAdd(c8, a, b); c9 = Vector256.FusedMultiplyAdd(c9, a, b);
                c10 = Vector256.FusedMultiplyAdd(c10, a, b); c11 = Vector256.FusedMultiplyAdd(c11, a, b);
            }
            return Vector256.Sum(c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11);
        }
        float s = 0.999f, d = 1e-3f * (seed + 1);
        float[] c = new float[Chains];
        Array.Fill(c, s);
        for (long i = 0; i < iterations; i++)
            for (int j = 0; j < Chains; j++) c[j] = MathF.FusedMultiplyAdd(c[j], s, d);
        return c.Sum();
    }

    /// <summary>
    /// data *= factor in place, one contiguous chunk per thread: every byte is read once and written once,
    /// with no write-allocate reads (a plain copy pays those), so 2 x bytes is the real traffic.
    /// </summary>
    public static unsafe void ScaleInPlace(float[] data, float factor, int threads)
    {
        Guard.Positive(threads, nameof(threads));
        int chunk = (data.Length + threads - 1) / threads;
        Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
        {
            int start = t * chunk, end = Math.Min(data.Length, start + chunk);
            fixed (float* p = data)
            {
                int i = start;
                if (Vector512.IsHardwareAccelerated)
                {
                    var f = Vector512.Create(factor);
                    for (; i <= end - 16; i += 16) Vector512.Store(Vector512.Load(p + i) * f, p + i);
                }
                for (; i < end; i++) p[i] *= factor;
            }
        });
    }
}
