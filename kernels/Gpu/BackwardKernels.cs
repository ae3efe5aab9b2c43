using ILGPU;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>
/// Backward kernels of the embedding, GELU and LayerNorm, and the column sums of a bias gradient. Like
/// every backward op they accumulate (+=) into their gradient outputs. Where several threads meet on one
/// gradient element (an embedding row used by several tokens, a weight column summed over rows) they use
/// float atomics, so the summation order, and the last bits of the result, vary from run to run.
/// </summary>
static class BackwardKernels
{
    /// <summary>sqrt(2 / pi) and the cubic coefficient of GPT-2's tanh GELU.</summary>
    const float GeluScale = 0.7978845608028654f;
    const float GeluCubic = 0.044715f;

    static long FirstIndex => (long)Grid.IdxX * Group.DimX + Group.IdxX;
    static long GridStride => (long)Grid.DimX * Group.DimX;

    /// <summary>dWte[ids[token], c] += dOut[token, c]; dWpe[positionOffset + token % length, c] += dOut[token, c] when <paramref name="usePositions"/> is 1.</summary>
    internal static void Embedding(ArrayView<int> ids, ArrayView<float> dOutput, ArrayView<float> dWte, ArrayView<float> dWpe,
        int length, int channels, int positionOffset, int usePositions)
    {
        for (long i = FirstIndex; i < dOutput.Length; i += GridStride)
        {
            long token = i / channels;
            long c = i - token * channels;
            long position = positionOffset + token % length;
            float g = dOutput[i];
            Atomic.Add(ref dWte[(long)ids[token] * channels + c], g);
            if (usePositions != 0) Atomic.Add(ref dWpe[position * channels + c], g);
        }
    }

    /// <summary>
    /// dX += gelu'(x) dOut. With u = sqrt(2/pi) (x + 0.044715 x^3) and s = sigmoid(2u) = (1 + tanh u) / 2,
    /// gelu'(x) = s + x u' 2 s (1 − s). Both s and s (1 − s) come from e = exp(−2|u|), which never
    /// overflows and keeps full relative accuracy where tanh u is near ±1 (no tanh.approx, as in the forward).
    /// </summary>
    internal static void Gelu(ArrayView<float> x, ArrayView<float> dOutput, ArrayView<float> dX)
    {
        for (long i = FirstIndex; i < x.Length; i += GridStride)
        {
            float v = x[i];
            float v2 = v * v;
            float u = GeluScale * (v + GeluCubic * v2 * v);
            float du = GeluScale * (1f + 3f * GeluCubic * v2);
            float e = MathF.Exp(-2f * MathF.Abs(u));
            float inverse = 1f / (1f + e);
            float s = u >= 0f ? inverse : e * inverse;
            float sOneMinusS = e * inverse * inverse;
            dX[i] += dOutput[i] * (s + 2f * v * du * sOneMinusS);
        }
    }

    static int Row => Grid.IdxX * (Group.DimX / Warp.WarpSize) + Warp.WarpIdx;

    static float WarpSum(float value)
    {
        for (int mask = Warp.WarpSize / 2; mask > 0; mask >>= 1)
            value += Warp.ShuffleXor(value, mask);
        return value;
    }

    /// <summary>
    /// dX of LayerNorm, one warp per row: with n = (x − mean) rstd and g = weight dOut,
    /// dX += rstd (g − mean(g) − n mean(g n)). The two row means come from one pass and a warp butterfly.
    /// </summary>
    internal static void LayerNormInput(ArrayView<float> dOutput, ArrayView<float> x, ArrayView<float> weight,
        ArrayView<float> mean, ArrayView<float> rstd, ArrayView<float> dX, int rows, int channels)
    {
        int row = Row;
        if (row >= rows) return;
        int lane = Warp.LaneIdx;
        int width = Warp.WarpSize;
        long start = (long)row * channels;
        float mu = mean[row], s = rstd[row];

        float sumG = 0f, sumGn = 0f;
        for (int c = lane; c < channels; c += width)
        {
            float g = weight[c] * dOutput[start + c];
            sumG += g;
            sumGn += g * (x[start + c] - mu) * s;
        }
        float meanG = WarpSum(sumG) / channels;
        float meanGn = WarpSum(sumGn) / channels;

        for (int c = lane; c < channels; c += width)
        {
            float g = weight[c] * dOutput[start + c];
            float normed = (x[start + c] - mu) * s;
            dX[start + c] += s * (g - meanG - normed * meanGn);
        }
    }

    /// <summary>
    /// dWeight[c] += Σ_r dOut[r, c] n[r, c] and dBias[c] += Σ_r dOut[r, c]. A thread owns one column and
    /// a chunk of <paramref name="rowsPerGroup"/> rows (a warp reads 32 consecutive columns of a row, so the
    /// loads coalesce), sums it in registers, then adds its two partial sums with one atomic each. The
    /// grid is (column blocks of DimX) x (row chunks), column blocks fastest.
    /// </summary>
    internal static void LayerNormParameters(ArrayView<float> dOutput, ArrayView<float> x, ArrayView<float> mean, ArrayView<float> rstd,
        ArrayView<float> dWeight, ArrayView<float> dBias, int rows, int channels, int rowsPerGroup)
    {
        int columnBlocks = (channels + Group.DimX - 1) / Group.DimX;
        int c = Grid.IdxX % columnBlocks * Group.DimX + Group.IdxX;
        int r0 = Grid.IdxX / columnBlocks * rowsPerGroup;
        if (c >= channels) return;
        int r1 = IntrinsicMath.Min(rows, r0 + rowsPerGroup);
        float sumW = 0f, sumB = 0f;
        for (int r = r0; r < r1; r++)
        {
            long i = (long)r * channels + c;
            float g = dOutput[i];
            sumW += g * (x[i] - mean[r]) * rstd[r];
            sumB += g;
        }
        Atomic.Add(ref dWeight[c], sumW);
        Atomic.Add(ref dBias[c], sumB);
    }

    /// <summary>output[c] += Σ_r data[r, c] (a bias gradient), chunked over rows as <see cref="LayerNormParameters"/>.</summary>
    internal static void ColumnSums(ArrayView<float> data, ArrayView<float> output, int rows, int columns, int rowsPerGroup)
    {
        int columnBlocks = (columns + Group.DimX - 1) / Group.DimX;
        int c = Grid.IdxX % columnBlocks * Group.DimX + Group.IdxX;
        int r0 = Grid.IdxX / columnBlocks * rowsPerGroup;
        if (c >= columns) return;
        int r1 = IntrinsicMath.Min(rows, r0 + rowsPerGroup);
        float sum = 0f;
        for (int r = r0; r < r1; r++) sum += data[(long)r * columns + c];
        Atomic.Add(ref output[c], sum);
    }
}
