using System.Runtime.Intrinsics;

namespace DiffuSharp.Kernels.Cpu;

/// <summary>RMS normalisation over the last axis (LLaMA's LlamaRMSNorm, statistics in float32), one row per work item.</summary>
public static class RmsNorm
{
    /// <summary>output = x · rstd · weight per row, with rstd = 1 / sqrt(mean(x²) + eps); output may alias x.</summary>
    public static unsafe void Forward(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, Span<float> output, Span<float> rstd,
        int rows, int channels, float eps)
    {
        Guard.Positive(channels, nameof(channels));
        Guard.Length(x.Length, (long)rows * channels, nameof(x));
        Guard.Length(output.Length, (long)rows * channels, nameof(output));
        Guard.Length(weight.Length, channels, nameof(weight));
        Guard.Length(rstd.Length, rows, nameof(rstd));
        fixed (float* px = x, pw = weight, po = output, ps = rstd)
        {
            float* xx = px, xw = pw, xo = po, xs = ps;
            Work.For(rows, Math.Max(1, (1 << 14) / channels), (start, end) =>
            {
                for (int r = start; r < end; r++)
                {
                    float* row = xx + (long)r * channels;
                    float s = 1f / MathF.Sqrt(Reduce.SquaredDeviation(row, channels, 0f) / channels + eps);
                    Normalize(row, xw, xo + (long)r * channels, channels, s);
                    xs[r] = s;
                }
            });
        }
    }

    static unsafe void Normalize(float* x, float* w, float* o, int n, float rstd)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var s = Vector512.Create(rstd);
            for (; i <= n - 16; i += 16) Vector512.Store(Vector512.Load(x + i) * s * Vector512.Load(w + i), o + i);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var s = Vector256.Create(rstd);
            for (; i <= n - 8; i += 8) Vector256.Store(Vector256.Load(x + i) * s * Vector256.Load(w + i), o + i);
        }
        for (; i < n; i++) o[i] = x[i] * rstd * w[i];
    }

    /// <summary>
    /// Backward from the saved rstd, accumulating: with n = x · rstd and g = dOutput · weight, dX += rstd · (g − n · mean(g · n))
    /// per row and dWeight += Σ_rows dOutput · n. As in <see cref="LayerNorm.Backward"/>, dX is split over rows and dWeight
    /// over stripes of columns, so there are no locks and the order of additions is fixed. An empty dWeight (a frozen
    /// norm) skips the second pass.
    /// </summary>
    public static unsafe void Backward(ReadOnlySpan<float> dOutput, ReadOnlySpan<float> x, ReadOnlySpan<float> weight,
        ReadOnlySpan<float> rstd, Span<float> dX, Span<float> dWeight, int rows, int channels)
    {
        Guard.Positive(channels, nameof(channels));
        Guard.Length(dOutput.Length, (long)rows * channels, nameof(dOutput));
        Guard.Length(x.Length, (long)rows * channels, nameof(x));
        Guard.Length(dX.Length, (long)rows * channels, nameof(dX));
        Guard.Length(weight.Length, channels, nameof(weight));
        if (!dWeight.IsEmpty) Guard.Length(dWeight.Length, channels, nameof(dWeight));
        Guard.Length(rstd.Length, rows, nameof(rstd));
        fixed (float* pg = dOutput, px = x, pw = weight, ps = rstd, pdx = dX, pdw = dWeight)
        {
            float* xg = pg, xx = px, xw = pw, xs = ps, xdx = pdx, xdw = pdw;
            Work.For(rows, Math.Max(1, (1 << 14) / channels), (start, end) =>
            {
                for (int r = start; r < end; r++)
                {
                    long o = (long)r * channels;
                    InputGradient(xg + o, xx + o, xw, xs[r], xdx + o, channels);
                }
            });
            if (dWeight.IsEmpty) return;
            Work.For(channels, Math.Max(16, (1 << 14) / Math.Max(1, rows)), (c0, c1) =>
            {
                for (int r = 0; r < rows; r++)
                {
                    long o = (long)r * channels;
                    WeightGradient(xg + o, xx + o, xs[r], xdw, c0, c1);
                }
            });
        }
    }

    /// <summary>dx += rstd · g·w − x · rstd³ · mean(g·w·x) for one row, which is rstd · (g·w − n · mean(g·w·n)).</summary>
    static unsafe void InputGradient(float* g, float* x, float* w, float rstd, float* dx, int n)
    {
        int i = 0;
        double sum = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var acc = Vector512<float>.Zero;
            for (; i <= n - 16; i += 16) acc = Vector512.FusedMultiplyAdd(Vector512.Load(g + i) * Vector512.Load(w + i), Vector512.Load(x + i), acc);
            sum += Vector512.Sum(acc);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var acc = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8) acc = Vector256.FusedMultiplyAdd(Vector256.Load(g + i) * Vector256.Load(w + i), Vector256.Load(x + i), acc);
            sum += Vector256.Sum(acc);
        }
        for (; i < n; i++) sum += g[i] * w[i] * x[i];

        float k = (float)(-sum / n * rstd * rstd * rstd);
        i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var s = Vector512.Create(rstd);
            var kv = Vector512.Create(k);
            for (; i <= n - 16; i += 16)
            {
                var t = Vector512.FusedMultiplyAdd(Vector512.Load(g + i) * Vector512.Load(w + i), s, Vector512.Load(dx + i));
                Vector512.Store(Vector512.FusedMultiplyAdd(Vector512.Load(x + i), kv, t), dx + i);
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var s = Vector256.Create(rstd);
            var kv = Vector256.Create(k);
            for (; i <= n - 8; i += 8)
            {
                var t = Vector256.FusedMultiplyAdd(Vector256.Load(g + i) * Vector256.Load(w + i), s, Vector256.Load(dx + i));
                Vector256.Store(Vector256.FusedMultiplyAdd(Vector256.Load(x + i), kv, t), dx + i);
            }
        }
        for (; i < n; i++) dx[i] += g[i] * w[i] * rstd + x[i] * k;
    }

    /// <summary>dw[c] += g[c] · x[c] · rstd for the columns [c0, c1) of one row.</summary>
    static unsafe void WeightGradient(float* g, float* x, float rstd, float* dw, int c0, int c1)
    {
        int i = c0;
        if (Vector512.IsHardwareAccelerated)
        {
            var s = Vector512.Create(rstd);
            for (; i <= c1 - 16; i += 16) Vector512.Store(Vector512.FusedMultiplyAdd(Vector512.Load(g + i), Vector512.Load(x + i) * s, Vector512.Load(dw + i)), dw + i);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var s = Vector256.Create(rstd);
            for (; i <= c1 - 8; i += 8) Vector256.Store(Vector256.FusedMultiplyAdd(Vector256.Load(g + i), Vector256.Load(x + i) * s, Vector256.Load(dw + i)), dw + i);
        }
        for (; i < c1; i++) dw[i] += g[i] * x[i] * rstd;
    }
}
