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
}
