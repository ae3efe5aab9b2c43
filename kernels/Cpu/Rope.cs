using System.Runtime.Intrinsics;

namespace DiffuSharp.Kernels.Cpu;

/// <summary>
/// Rotary position embedding in HF's rotate-half convention, in place on a strided view. The cos/sin table is built
/// once per call in double (angles reach 4096 radians and more, where a float angle would lose three digits) and
/// rounded to float; the rotation itself runs in float over the half-head, rows split over the cores.
/// </summary>
public static class Rope
{
    /// <summary>
    /// For each row (b, t) (element (b, t, h, d) at (b·length + t)·rowStride + h·headDim + d from the start of
    /// <paramref name="x"/>) and each head, rotates the pair (d, d + headDim/2) by (positionOffset + t) · theta^(−2d/headDim):
    /// x[d] ← x[d]·cos − x[d+D/2]·sin, x[d+D/2] ← x[d+D/2]·cos + x[d]·sin; <paramref name="inverse"/> negates the angle.
    /// </summary>
    public static unsafe void Apply(Span<float> x, int rowStride, int batch, int length, int heads, int headDim, int positionOffset, float theta, bool inverse)
    {
        Guard.Positive(batch, nameof(batch));
        Guard.Positive(length, nameof(length));
        Guard.Positive(heads, nameof(heads));
        Guard.Positive(headDim, nameof(headDim));
        if (headDim % 2 != 0) throw new ArgumentException($"head dim {headDim} must be even", nameof(headDim));
        if (rowStride < heads * headDim) throw new ArgumentException($"row stride {rowStride} is shorter than {heads} heads of {headDim}", nameof(rowStride));
        Guard.Length(x.Length, ((long)batch * length - 1) * rowStride + (long)heads * headDim, nameof(x));
        int half = headDim / 2;
        var cos = GC.AllocateUninitializedArray<float>(length * half);
        var sin = GC.AllocateUninitializedArray<float>(length * half);
        var inverseFrequency = new double[half];
        for (int i = 0; i < half; i++) inverseFrequency[i] = Math.Pow(theta, -2.0 * i / headDim);
        double sign = inverse ? -1 : 1;
        Work.For(length, Math.Max(1, 256 / half), (start, end) =>
        {
            for (int t = start; t < end; t++)
                for (int i = 0; i < half; i++)
                {
                    double angle = (double)(positionOffset + t) * inverseFrequency[i];
                    cos[t * half + i] = (float)Math.Cos(angle);
                    sin[t * half + i] = (float)(sign * Math.Sin(angle));
                }
        });
        fixed (float* px = x, pc = cos, ps = sin)
        {
            float* xx = px, xc = pc, xs = ps;
            Work.For(batch * length, Math.Max(1, (1 << 13) / (heads * headDim)), (start, end) =>
            {
                for (int r = start; r < end; r++)
                {
                    long t = r % length;
                    float* row = xx + (long)r * rowStride;
                    for (int h = 0; h < heads; h++) Rotate(row + h * headDim, xc + t * half, xs + t * half, half);
                }
            });
        }
    }

    /// <summary>(a, c) ← (a·cos − c·sin, c·cos + a·sin) with a = x[0..half) and c = x[half..2·half).</summary>
    static unsafe void Rotate(float* x, float* cos, float* sin, int half)
    {
        float* y = x + half;
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; i <= half - 16; i += 16)
            {
                var a = Vector512.Load(x + i);
                var c = Vector512.Load(y + i);
                var cv = Vector512.Load(cos + i);
                var sv = Vector512.Load(sin + i);
                Vector512.Store(Vector512.FusedMultiplyAdd(a, cv, -c * sv), x + i);
                Vector512.Store(Vector512.FusedMultiplyAdd(c, cv, a * sv), y + i);
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= half - 8; i += 8)
            {
                var a = Vector256.Load(x + i);
                var c = Vector256.Load(y + i);
                var cv = Vector256.Load(cos + i);
                var sv = Vector256.Load(sin + i);
                Vector256.Store(Vector256.FusedMultiplyAdd(a, cv, -c * sv), x + i);
                Vector256.Store(Vector256.FusedMultiplyAdd(c, cv, a * sv), y + i);
            }
        }
        for (; i < half; i++)
        {
            float a = x[i], c = y[i];
            x[i] = a * cos[i] - c * sin[i];
            y[i] = c * cos[i] + a * sin[i];
        }
    }
}
