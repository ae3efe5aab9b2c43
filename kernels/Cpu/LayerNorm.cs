using System.Runtime.Intrinsics;

namespace DiffuSharp.Kernels.Cpu;

/// <summary>Layer normalisation over the last axis (biased variance, like torch.nn.LayerNorm), one row per work item.</summary>
public static class LayerNorm
{
    /// <summary>
    /// output = (x − mean) · rstd · weight + bias per row, with rstd = 1 / sqrt(var + eps). The variance is taken
    /// in two passes (around the mean), which stays accurate when the mean is large against the spread.
    /// </summary>
    public static unsafe void Forward(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, Span<float> output,
        Span<float> mean, Span<float> rstd, int rows, int channels, float eps)
    {
        Guard.Positive(channels, nameof(channels));
        Guard.Length(x.Length, (long)rows * channels, nameof(x));
        Guard.Length(output.Length, (long)rows * channels, nameof(output));
        Guard.Length(weight.Length, channels, nameof(weight));
        Guard.Length(bias.Length, channels, nameof(bias));
        Guard.Length(mean.Length, rows, nameof(mean));
        Guard.Length(rstd.Length, rows, nameof(rstd));
        fixed (float* px = x, pw = weight, pb = bias, po = output, pm = mean, ps = rstd)
        {
            float* xx = px, xw = pw, xb = pb, xo = po, xm = pm, xs = ps;
            Work.For(rows, Math.Max(1, (1 << 14) / channels), (start, end) =>
            {
                for (int r = start; r < end; r++)
                {
                    float* row = xx + (long)r * channels;
                    float m = Reduce.Sum(row, channels) / channels;
                    float s = 1f / MathF.Sqrt(Reduce.SquaredDeviation(row, channels, m) / channels + eps);
                    Normalize(row, xw, xb, xo + (long)r * channels, channels, m, s);
                    xm[r] = m;
                    xs[r] = s;
                }
            });
        }
    }

    static unsafe void Normalize(float* x, float* w, float* b, float* o, int n, float mean, float rstd)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var m = Vector512.Create(mean);
            var s = Vector512.Create(rstd);
            for (; i <= n - 16; i += 16)
                Vector512.Store(Vector512.FusedMultiplyAdd((Vector512.Load(x + i) - m) * s, Vector512.Load(w + i), Vector512.Load(b + i)), o + i);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var m = Vector256.Create(mean);
            var s = Vector256.Create(rstd);
            for (; i <= n - 8; i += 8)
                Vector256.Store(Vector256.FusedMultiplyAdd((Vector256.Load(x + i) - m) * s, Vector256.Load(w + i), Vector256.Load(b + i)), o + i);
        }
        for (; i < n; i++) o[i] = (x[i] - mean) * rstd * w[i] + b[i];
    }

    /// <summary>
    /// Backward from the saved mean and rstd, accumulating: with n = (x − mean) · rstd and g = dOutput · weight,
    /// dX += rstd · (g − mean(g) − n · mean(g · n)) per row, dWeight += Σ_rows dOutput · n and dBias += Σ_rows dOutput.
    /// dX is split over rows; dWeight and dBias are sums over rows, so they are done in a second pass split over
    /// columns (each thread owns a stripe of channels): no locks and a fixed order of additions. Empty dWeight and
    /// dBias (a frozen norm) skip that pass.
    /// </summary>
    public static unsafe void Backward(ReadOnlySpan<float> dOutput, ReadOnlySpan<float> x, ReadOnlySpan<float> weight,
        ReadOnlySpan<float> mean, ReadOnlySpan<float> rstd, Span<float> dX, Span<float> dWeight, Span<float> dBias, int rows, int channels)
    {
        Guard.Positive(channels, nameof(channels));
        Guard.Length(dOutput.Length, (long)rows * channels, nameof(dOutput));
        Guard.Length(x.Length, (long)rows * channels, nameof(x));
        Guard.Length(dX.Length, (long)rows * channels, nameof(dX));
        Guard.Length(weight.Length, channels, nameof(weight));
        bool parameters = !dWeight.IsEmpty;
        if (parameters || !dBias.IsEmpty)
        {
            Guard.Length(dWeight.Length, channels, nameof(dWeight));
            Guard.Length(dBias.Length, channels, nameof(dBias));
        }
        Guard.Length(mean.Length, rows, nameof(mean));
        Guard.Length(rstd.Length, rows, nameof(rstd));
        fixed (float* pg = dOutput, px = x, pw = weight, pm = mean, ps = rstd, pdx = dX, pdw = dWeight, pdb = dBias)
        {
            float* xg = pg, xx = px, xw = pw, xm = pm, xs = ps, xdx = pdx, xdw = pdw, xdb = pdb;
            Work.For(rows, Math.Max(1, (1 << 14) / channels), (start, end) =>
            {
                for (int r = start; r < end; r++)
                {
                    long o = (long)r * channels;
                    InputGradient(xg + o, xx + o, xw, xm[r], xs[r], xdx + o, channels);
                }
            });
            if (!parameters) return;
            Work.For(channels, Math.Max(16, (1 << 14) / Math.Max(1, rows)), (c0, c1) =>
            {
                for (int r = 0; r < rows; r++)
                {
                    long o = (long)r * channels;
                    ParameterGradients(xg + o, xx + o, xm[r], xs[r], xdw, xdb, c0, c1);
                }
            });
        }
    }

    /// <summary>dx += rstd · (g·w − mean(g·w) − n · mean(g·w·n)) for one row, n = (x − mean) · rstd.</summary>
    static unsafe void InputGradient(float* g, float* x, float* w, float mean, float rstd, float* dx, int n)
    {
        int i = 0;
        double sumG = 0, sumGn = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var m = Vector512.Create(mean);
            var s = Vector512.Create(rstd);
            var accG = Vector512<float>.Zero;
            var accGn = Vector512<float>.Zero;
            for (; i <= n - 16; i += 16)
            {
                var gw = Vector512.Load(g + i) * Vector512.Load(w + i);
                accG += gw;
                accGn = Vector512.FusedMultiplyAdd(gw, (Vector512.Load(x + i) - m) * s, accGn);
            }
            sumG += Vector512.Sum(accG);
            sumGn += Vector512.Sum(accGn);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var m = Vector256.Create(mean);
            var s = Vector256.Create(rstd);
            var accG = Vector256<float>.Zero;
            var accGn = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8)
            {
                var gw = Vector256.Load(g + i) * Vector256.Load(w + i);
                accG += gw;
                accGn = Vector256.FusedMultiplyAdd(gw, (Vector256.Load(x + i) - m) * s, accGn);
            }
            sumG += Vector256.Sum(accG);
            sumGn += Vector256.Sum(accGn);
        }
        for (; i < n; i++)
        {
            float gw = g[i] * w[i];
            sumG += gw;
            sumGn += gw * (x[i] - mean) * rstd;
        }

        float meanG = (float)(sumG / n), meanGn = (float)(sumGn / n);
        i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var m = Vector512.Create(mean);
            var s = Vector512.Create(rstd);
            var mg = Vector512.Create(meanG);
            var mgn = Vector512.Create(meanGn);
            for (; i <= n - 16; i += 16)
            {
                var norm = (Vector512.Load(x + i) - m) * s;
                var t = Vector512.FusedMultiplyAdd(-norm, mgn, Vector512.Load(g + i) * Vector512.Load(w + i) - mg);
                Vector512.Store(Vector512.FusedMultiplyAdd(t, s, Vector512.Load(dx + i)), dx + i);
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var m = Vector256.Create(mean);
            var s = Vector256.Create(rstd);
            var mg = Vector256.Create(meanG);
            var mgn = Vector256.Create(meanGn);
            for (; i <= n - 8; i += 8)
            {
                var norm = (Vector256.Load(x + i) - m) * s;
                var t = Vector256.FusedMultiplyAdd(-norm, mgn, Vector256.Load(g + i) * Vector256.Load(w + i) - mg);
                Vector256.Store(Vector256.FusedMultiplyAdd(t, s, Vector256.Load(dx + i)), dx + i);
            }
        }
        for (; i < n; i++)
        {
            float norm = (x[i] - mean) * rstd;
            dx[i] += rstd * (g[i] * w[i] - meanG - norm * meanGn);
        }
    }

    /// <summary>dw[c] += g[c] · (x[c] − mean) · rstd and db[c] += g[c] for the columns [c0, c1) of one row.</summary>
    static unsafe void ParameterGradients(float* g, float* x, float mean, float rstd, float* dw, float* db, int c0, int c1)
    {
        int i = c0;
        if (Vector512.IsHardwareAccelerated)
        {
            var m = Vector512.Create(mean);
            var s = Vector512.Create(rstd);
            for (; i <= c1 - 16; i += 16)
            {
                var gv = Vector512.Load(g + i);
                Vector512.Store(Vector512.Load(db + i) + gv, db + i);
                Vector512.Store(Vector512.FusedMultiplyAdd(gv, (Vector512.Load(x + i) - m) * s, Vector512.Load(dw + i)), dw + i);
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var m = Vector256.Create(mean);
            var s = Vector256.Create(rstd);
            for (; i <= c1 - 8; i += 8)
            {
                var gv = Vector256.Load(g + i);
                Vector256.Store(Vector256.Load(db + i) + gv, db + i);
                Vector256.Store(Vector256.FusedMultiplyAdd(gv, (Vector256.Load(x + i) - m) * s, Vector256.Load(dw + i)), dw + i);
            }
        }
        for (; i < c1; i++)
        {
            db[i] += g[i];
            dw[i] += g[i] * (x[i] - mean) * rstd;
        }
    }
}
