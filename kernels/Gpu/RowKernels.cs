using ILGPU;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>
/// Row-wise reductions with one warp per row (llm.c's layout): the lanes stride over the row, then a
/// butterfly of warp shuffles leaves the total in every lane, so no shared memory or group barrier is needed.
/// A group holds several warps, hence several rows.
/// </summary>
static class RowKernels
{
    static int Row => Grid.IdxX * (Group.DimX / Warp.WarpSize) + Warp.WarpIdx;

    static float WarpSum(float value)
    {
        for (int mask = Warp.WarpSize / 2; mask > 0; mask >>= 1)
            value += Warp.ShuffleXor(value, mask);
        return value;
    }

    static float WarpMax(float value)
    {
        for (int mask = Warp.WarpSize / 2; mask > 0; mask >>= 1)
            value = MathF.Max(value, Warp.ShuffleXor(value, mask));
        return value;
    }

    /// <summary>Two passes over the row (mean, then the variance of x - mean) for accuracy; population variance.</summary>
    internal static void LayerNorm(ArrayView<float> x, ArrayView<float> weight, ArrayView<float> bias, ArrayView<float> output,
        ArrayView<float> mean, ArrayView<float> rstd, int rows, int channels, float eps)
    {
        int row = Row;
        if (row >= rows) return;
        int lane = Warp.LaneIdx;
        int width = Warp.WarpSize;
        long start = (long)row * channels;

        float sum = 0f;
        for (int c = lane; c < channels; c += width) sum += x[start + c];
        float mu = WarpSum(sum) / channels;

        float squares = 0f;
        for (int c = lane; c < channels; c += width)
        {
            float d = x[start + c] - mu;
            squares += d * d;
        }
        float s = 1f / MathF.Sqrt(WarpSum(squares) / channels + eps);

        for (int c = lane; c < channels; c += width)
            output[start + c] = (x[start + c] - mu) * s * weight[c] + bias[c];
        if (lane == 0)
        {
            mean[row] = mu;
            rstd[row] = s;
        }
    }

    internal static void Softmax(ArrayView<float> x, ArrayView<float> output, int rows, int columns)
    {
        int row = Row;
        if (row >= rows) return;
        int lane = Warp.LaneIdx;
        int width = Warp.WarpSize;
        long start = (long)row * columns;

        float max = float.NegativeInfinity;
        for (int c = lane; c < columns; c += width) max = MathF.Max(max, x[start + c]);
        max = WarpMax(max);

        float sum = 0f;
        for (int c = lane; c < columns; c += width) sum += MathF.Exp(x[start + c] - max);
        float inverse = 1f / WarpSum(sum);

        for (int c = lane; c < columns; c += width)
            output[start + c] = MathF.Exp(x[start + c] - max) * inverse;
    }
}
