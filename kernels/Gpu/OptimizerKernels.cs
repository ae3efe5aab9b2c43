using ILGPU;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>
/// The scalars of one AdamW launch, with the bias corrections worked out on the host. Public because
/// ILGPU's CPU launcher, generated in another assembly, must see every kernel parameter type.
/// </summary>
public struct AdamWArgs
{
    public float LearningRate, Beta1, Beta2, Epsilon, WeightDecay, Correction1, Correction2;

    public AdamWArgs(in AdamWStep step)
    {
        LearningRate = step.LearningRate; Beta1 = step.Beta1; Beta2 = step.Beta2;
        Epsilon = step.Epsilon; WeightDecay = step.WeightDecay;
        Correction1 = step.Correction1; Correction2 = step.Correction2;
    }
}

/// <summary>The optimizer's kernels: the AdamW update, gradient scaling and the sum of squares for clipping.</summary>
static class OptimizerKernels
{
    /// <summary>Room for the per-warp partial sums of a group of up to 1024 threads.</summary>
    const int MaxWarps = 32;

    static long FirstIndex => (long)Grid.IdxX * Group.DimX + Group.IdxX;
    static long GridStride => (long)Grid.DimX * Group.DimX;

    /// <summary>One AdamW step per element, as <see cref="AdamWStep"/> defines it; the decay uses the old parameter.</summary>
    internal static void AdamW(ArrayView<float> param, ArrayView<float> grad, ArrayView<float> m, ArrayView<float> v, AdamWArgs a)
    {
        for (long i = FirstIndex; i < param.Length; i += GridStride)
        {
            float g = grad[i];
            float mi = a.Beta1 * m[i] + (1f - a.Beta1) * g;
            float vi = a.Beta2 * v[i] + (1f - a.Beta2) * g * g;
            m[i] = mi;
            v[i] = vi;
            float p = param[i];
            param[i] = p - a.LearningRate * (mi / a.Correction1 / (MathF.Sqrt(vi / a.Correction2) + a.Epsilon) + a.WeightDecay * p);
        }
    }

    internal static void Scale(ArrayView<float> data, float factor)
    {
        for (long i = FirstIndex; i < data.Length; i += GridStride)
            data[i] *= factor;
    }

    /// <summary>
    /// partials[group] = Σ data² over the group's grid-stride share, accumulated in double: per thread,
    /// then a warp butterfly, then the group's warps through shared memory. The host adds the few partials.
    /// </summary>
    internal static void SumOfSquares(ArrayView<float> data, ArrayView<double> partials)
    {
        var warpSums = SharedMemory.Allocate<double>(MaxWarps);
        double sum = 0;
        for (long i = FirstIndex; i < data.Length; i += GridStride)
        {
            double d = data[i];
            sum += d * d;
        }
        for (int mask = Warp.WarpSize / 2; mask > 0; mask >>= 1)
            sum += Warp.ShuffleXor(sum, mask);
        if (Warp.LaneIdx == 0) warpSums[Warp.WarpIdx] = sum;
        Group.Barrier();

        if (Group.IdxX == 0)
        {
            double total = 0;
            int warps = Group.DimX / Warp.WarpSize;
            for (int w = 0; w < warps; w++) total += warpSums[w];
            partials[Grid.IdxX] = total;
        }
    }
}
