using ILGPU;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>
/// The LLaMA-family ops: RMSNorm (one warp per row, as <see cref="RowKernels"/>), its backward (dX per row,
/// dWeight as column sums with one atomic per thread and row chunk, as <see cref="BackwardKernels"/>), rotary
/// position embedding and SwiGLU (grid-stride loops). Backward kernels accumulate (+=) into their gradients.
/// </summary>
static class LlamaKernels
{
    /// <summary>2π and its reciprocal, for reducing a double-precision angle to [−π, π].</summary>
    const double TwoPi = 6.283185307179586;
    const double InverseTwoPi = 0.15915494309189535;

    static long FirstIndex => (long)Grid.IdxX * Group.DimX + Group.IdxX;
    static long GridStride => (long)Grid.DimX * Group.DimX;

    static int Row => Grid.IdxX * (Group.DimX / Warp.WarpSize) + Warp.WarpIdx;

    static float WarpSum(float value)
    {
        for (int mask = Warp.WarpSize / 2; mask > 0; mask >>= 1)
            value += Warp.ShuffleXor(value, mask);
        return value;
    }

    /// <summary>rstd = 1/sqrt(mean(x²) + eps); output = x · rstd · weight.</summary>
    internal static void RmsNorm(ArrayView<float> x, ArrayView<float> weight, ArrayView<float> output, ArrayView<float> rstd,
        int rows, int channels, float eps)
    {
        int row = Row;
        if (row >= rows) return;
        int lane = Warp.LaneIdx;
        int width = Warp.WarpSize;
        long start = (long)row * channels;

        float squares = 0f;
        for (int c = lane; c < channels; c += width)
        {
            float v = x[start + c];
            squares += v * v;
        }
        float s = 1f / MathF.Sqrt(WarpSum(squares) / channels + eps);

        for (int c = lane; c < channels; c += width)
            output[start + c] = x[start + c] * s * weight[c];
        if (lane == 0) rstd[row] = s;
    }

    /// <summary>
    /// dX of RMSNorm, one warp per row: with n = x rstd and g = weight dOut, dX += rstd (g − n mean(g n))
    /// (rstd depends on x through mean(x²), which gives the second term).
    /// </summary>
    internal static void RmsNormInput(ArrayView<float> dOutput, ArrayView<float> x, ArrayView<float> weight, ArrayView<float> rstd,
        ArrayView<float> dX, int rows, int channels)
    {
        int row = Row;
        if (row >= rows) return;
        int lane = Warp.LaneIdx;
        int width = Warp.WarpSize;
        long start = (long)row * channels;
        float s = rstd[row];

        float sumGn = 0f;
        for (int c = lane; c < channels; c += width)
            sumGn += weight[c] * dOutput[start + c] * x[start + c] * s;
        float meanGn = WarpSum(sumGn) / channels;

        for (int c = lane; c < channels; c += width)
        {
            float g = weight[c] * dOutput[start + c];
            dX[start + c] += s * (g - x[start + c] * s * meanGn);
        }
    }

    /// <summary>
    /// dWeight[c] += Σ_r dOut[r, c] x[r, c] rstd[r]: a thread owns one column and a chunk of
    /// <paramref name="rowsPerGroup"/> rows, grid (column blocks of DimX) x (row chunks), as
    /// <see cref="BackwardKernels.LayerNormParameters"/>.
    /// </summary>
    internal static void RmsNormWeight(ArrayView<float> dOutput, ArrayView<float> x, ArrayView<float> rstd, ArrayView<float> dWeight,
        int rows, int channels, int rowsPerGroup)
    {
        int columnBlocks = (channels + Group.DimX - 1) / Group.DimX;
        int c = Grid.IdxX % columnBlocks * Group.DimX + Group.IdxX;
        int r0 = Grid.IdxX / columnBlocks * rowsPerGroup;
        if (c >= channels) return;
        int r1 = IntrinsicMath.Min(rows, r0 + rowsPerGroup);
        float sum = 0f;
        for (int r = r0; r < r1; r++)
        {
            long i = (long)r * channels + c;
            sum += dOutput[i] * x[i] * rstd[r];
        }
        Atomic.Add(ref dWeight[c], sum);
    }

    /// <summary>
    /// Rotate-half RoPE in place. A thread owns one (row, pair) of the rows = batch · length rows and
    /// rotates that pair in every head, so the angle is computed once per head group. The angle
    /// (positionOffset + t) · baseFrequency^d is formed in double (the power by repeated squaring, exact to
    /// a few ulps) and reduced to [−π, π] before the float sine and cosine: at position 2048 a float angle
    /// would already be off by up to 1e-4 rad, far outside the 1e-5 budget. <paramref name="sign"/> is −1
    /// for the inverse rotation (the backward pass), else 1.
    /// </summary>
    internal static void Rope(ArrayView<float> x, int rowStride, int rows, int length, int heads, int headDim,
        int positionOffset, double baseFrequency, float sign)
    {
        int half = headDim / 2;
        long total = (long)rows * half;
        for (long i = FirstIndex; i < total; i += GridStride)
        {
            long row = i / half;
            int d = (int)(i - row * half);
            int t = (int)(row % length);

            double frequency = 1.0;
            double power = baseFrequency;
            for (int e = d; e > 0; e >>= 1)
            {
                if ((e & 1) != 0) frequency *= power;
                power *= power;
            }
            double angle = (positionOffset + t) * frequency;
            angle -= TwoPi * Math.Floor(angle * InverseTwoPi + 0.5);
            float cos = MathF.Cos((float)angle);
            float sin = sign * MathF.Sin((float)angle);

            long start = row * rowStride + d;
            for (int h = 0; h < heads; h++)
            {
                long o = start + (long)h * headDim;
                float a = x[o], b = x[o + half];
                x[o] = a * cos - b * sin;
                x[o + half] = b * cos + a * sin;
            }
        }
    }

    /// <summary>
    /// sigmoid(g) and 1 − sigmoid(g) from e = exp(−|g|), which never overflows and keeps full relative
    /// accuracy in both tails (no approximate intrinsics, as GELU).
    /// </summary>
    static float Sigmoid(float g, out float oneMinus)
    {
        float e = MathF.Exp(-MathF.Abs(g));
        float inverse = 1f / (1f + e);
        bool positive = g >= 0f;
        oneMinus = positive ? e * inverse : inverse;
        return positive ? inverse : e * inverse;
    }

    /// <summary>output = silu(gate) · up = gate · sigmoid(gate) · up.</summary>
    internal static void SwiGlu(ArrayView<float> gate, ArrayView<float> up, ArrayView<float> output)
    {
        for (long i = FirstIndex; i < output.Length; i += GridStride)
        {
            float g = gate[i];
            output[i] = g * Sigmoid(g, out _) * up[i];
        }
    }

    /// <summary>dGate += dOut · up · silu'(gate) with silu'(g) = s (1 + g (1 − s)); dUp += dOut · silu(gate).</summary>
    internal static void SwiGluBackward(ArrayView<float> gate, ArrayView<float> up, ArrayView<float> dOutput,
        ArrayView<float> dGate, ArrayView<float> dUp)
    {
        for (long i = FirstIndex; i < gate.Length; i += GridStride)
        {
            float g = gate[i];
            float s = Sigmoid(g, out float oneMinus);
            float dOut = dOutput[i];
            dGate[i] += dOut * up[i] * s * (1f + g * oneMinus);
            dUp[i] += dOut * g * s;
        }
    }
}
