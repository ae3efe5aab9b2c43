using System.Runtime.Intrinsics;

namespace DiffuSharp.Kernels.Cpu;

/// <summary>Row-wise softmax (max subtracted first), vectorised along the row and split over rows.</summary>
public static class Softmax
{
    /// <summary>output[r, :] = softmax(x[r, :]); output may alias x.</summary>
    public static unsafe void Forward(ReadOnlySpan<float> x, Span<float> output, int rows, int columns)
    {
        Guard.Positive(columns, nameof(columns));
        Guard.Length(x.Length, (long)rows * columns, nameof(x));
        Guard.Length(output.Length, (long)rows * columns, nameof(output));
        fixed (float* px = x, po = output)
        {
            float* xx = px, xo = po;
            Work.For(rows, Math.Max(1, (1 << 14) / columns), (start, end) =>
            {
                for (int r = start; r < end; r++) Row(xx + (long)r * columns, xo + (long)r * columns, columns);
            });
        }
    }

    static unsafe void Row(float* x, float* o, int n)
    {
        float max = Reduce.Max(x, n);
        float sum = ExpShifted(x, o, n, max);
        Scale(o, n, 1f / sum);
    }

    /// <summary>o[i] = exp(x[i] − shift); returns Σ o[i] (accumulated like <see cref="Reduce"/>). o may alias x.</summary>
    internal static unsafe float ExpShifted(float* x, float* o, int n, float shift)
    {
        int i = 0;
        double sum = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var acc = Vector512<float>.Zero;
            var s = Vector512.Create(shift);
            for (; i <= n - 16; i += 16)
            {
                var e = Vector512.Exp(Vector512.Load(x + i) - s);
                Vector512.Store(e, o + i);
                acc += e;
            }
            sum += Vector512.Sum(acc);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var acc = Vector256<float>.Zero;
            var s = Vector256.Create(shift);
            for (; i <= n - 8; i += 8)
            {
                var e = Vector256.Exp(Vector256.Load(x + i) - s);
                Vector256.Store(e, o + i);
                acc += e;
            }
            sum += Vector256.Sum(acc);
        }
        for (; i < n; i++)
        {
            float e = MathF.Exp(x[i] - shift);
            o[i] = e;
            sum += e;
        }
        return (float)sum;
    }

    /// <summary>o[i] *= factor.</summary>
    internal static unsafe void Scale(float* o, int n, float factor)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; i <= n - 16; i += 16) Vector512.Store(Vector512.Load(o + i) * factor, o + i);
        if (Vector256.IsHardwareAccelerated)
            for (; i <= n - 8; i += 8) Vector256.Store(Vector256.Load(o + i) * factor, o + i);
        for (; i < n; i++) o[i] *= factor;
    }
}

/// <summary>Vectorised reductions over a row. Lane sums and the scalar tail meet in a double, so the scalar-only fallback does not lose digits over a 50k-wide row.</summary>
static class Reduce
{
    public static unsafe float Max(float* x, int n)
    {
        int i = 0;
        float max = float.NegativeInfinity;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            var acc = Vector512.Create(float.NegativeInfinity);
            for (; i <= n - 16; i += 16) acc = Vector512.Max(acc, Vector512.Load(x + i));
            for (int l = 0; l < 16; l++) max = MathF.Max(max, acc[l]);
        }
        if (Vector256.IsHardwareAccelerated && n - i >= 8)
        {
            var acc = Vector256.Create(float.NegativeInfinity);
            for (; i <= n - 8; i += 8) acc = Vector256.Max(acc, Vector256.Load(x + i));
            for (int l = 0; l < 8; l++) max = MathF.Max(max, acc[l]);
        }
        for (; i < n; i++) max = MathF.Max(max, x[i]);
        return max;
    }

    public static unsafe float Sum(float* x, int n)
    {
        int i = 0;
        double sum = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var acc = Vector512<float>.Zero;
            for (; i <= n - 16; i += 16) acc += Vector512.Load(x + i);
            sum += Vector512.Sum(acc);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var acc = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8) acc += Vector256.Load(x + i);
            sum += Vector256.Sum(acc);
        }
        for (; i < n; i++) sum += x[i];
        return (float)sum;
    }

    /// <summary>Σ (x[i] − mean)².</summary>
    public static unsafe float SquaredDeviation(float* x, int n, float mean)
    {
        int i = 0;
        double sum = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var acc = Vector512<float>.Zero;
            var m = Vector512.Create(mean);
            for (; i <= n - 16; i += 16)
            {
                var d = Vector512.Load(x + i) - m;
                acc = Vector512.FusedMultiplyAdd(d, d, acc);
            }
            sum += Vector512.Sum(acc);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var acc = Vector256<float>.Zero;
            var m = Vector256.Create(mean);
            for (; i <= n - 8; i += 8)
            {
                var d = Vector256.Load(x + i) - m;
                acc = Vector256.FusedMultiplyAdd(d, d, acc);
            }
            sum += Vector256.Sum(acc);
        }
        for (; i < n; i++)
        {
            float d = x[i] - mean;
            sum += d * d;
        }
        return (float)sum;
    }
}
