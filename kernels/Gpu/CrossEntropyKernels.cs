using ILGPU;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>
/// Fused softmax + cross-entropy, one group per row of logits (a row of GPT-2's 50257 logits gives each of
/// 256 threads about 200 columns). Pass 1 reads the row once with an online softmax: every thread keeps a
/// running (max, sum of exp(x − max)) over its strided columns; the pairs merge through a warp butterfly
/// and then across the group's warps in shared memory, so every thread ends with the row's max and sum.
/// Pass 2 writes dLogits = w (softmax − onehot). Each column is read and then written by the same thread,
/// and the target logit is read before the group barrier, so dLogits may alias logits. A row of weight 0
/// writes zeros without reading its target; a target outside [0, V) gives a NaN loss rather than a fault.
/// </summary>
static class CrossEntropyKernels
{
    const int MaxWarps = 32;

    internal static void Forward(ArrayView<float> logits, ArrayView<int> targets, ArrayView<float> weights,
        ArrayView<float> losses, ArrayView<float> dLogits, int vocab)
    {
        var warpMax = SharedMemory.Allocate<float>(MaxWarps);
        var warpSum = SharedMemory.Allocate<float>(MaxWarps);

        int t = Group.IdxX;
        int threads = Group.DimX;
        int row = Grid.IdxX;
        long start = (long)row * vocab;
        float w = weights[row];

        if (w == 0f)
        {
            for (int c = t; c < vocab; c += threads) dLogits[start + c] = 0f;
            if (t == 0) losses[row] = 0f;
            return;
        }

        int target = targets[row];
        bool targetInRange = (uint)target < (uint)vocab;
        float targetLogit = t == 0 && targetInRange ? logits[start + target] : float.NaN;

        float max = float.NegativeInfinity, sum = 0f;
        for (int c = t; c < vocab; c += threads)
        {
            float x = logits[start + c];
            if (x > max)
            {
                sum = sum * MathF.Exp(max - x) + 1f;
                max = x;
            }
            else if (max != float.NegativeInfinity)
            {
                sum += MathF.Exp(x - max);
            }
        }
        for (int mask = Warp.WarpSize / 2; mask > 0; mask >>= 1)
        {
            float otherMax = Warp.ShuffleXor(max, mask);
            float otherSum = Warp.ShuffleXor(sum, mask);
            sum = Merge(max, sum, otherMax, otherSum);
            max = MathF.Max(max, otherMax);
        }
        if (Warp.LaneIdx == 0)
        {
            warpMax[Warp.WarpIdx] = max;
            warpSum[Warp.WarpIdx] = sum;
        }
        Group.Barrier();

        max = float.NegativeInfinity;
        sum = 0f;
        int warps = threads / Warp.WarpSize;
        for (int i = 0; i < warps; i++)
        {
            sum = Merge(max, sum, warpMax[i], warpSum[i]);
            max = MathF.Max(max, warpMax[i]);
        }

        float inverse = 1f / sum;
        for (int c = t; c < vocab; c += threads)
        {
            float p = MathF.Exp(logits[start + c] - max) * inverse;
            dLogits[start + c] = w * (c == target ? p - 1f : p);
        }
        if (t == 0) losses[row] = w * (max + MathF.Log(sum) - targetLogit);
    }

    /// <summary>The sum of exp(x − max) over two parts with sums s1 (max m1) and s2 (max m2), rescaled to max(m1, m2).</summary>
    static float Merge(float m1, float s1, float m2, float s2)
    {
        float m = MathF.Max(m1, m2);
        if (m == float.NegativeInfinity) return 0f;
        return s1 * MathF.Exp(m1 - m) + s2 * MathF.Exp(m2 - m);
    }
}
