using System.Runtime.Intrinsics;

namespace DiffuSharp.Kernels.Cpu;

/// <summary>Whole-buffer operations on gradients (the two halves of global-norm clipping), split over the cores.</summary>
public static class Vectors
{
    /// <summary>
    /// Σ x² with every square widened to double before it is added, so the sum over a hundred million gradients keeps
    /// its digits. Each core sums a fixed slice and the slices are added in order: the result does not depend on timing.
    /// </summary>
    public static unsafe double SumOfSquares(ReadOnlySpan<float> x)
    {
        int n = x.Length;
        int pieces = Math.Max(1, Math.Min(Environment.ProcessorCount, n / (1 << 16)));
        int size = (n + pieces - 1) / Math.Max(1, pieces);
        double* partial = stackalloc double[pieces];
        fixed (float* px = x)
        {
            float* xx = px;
            if (pieces == 1) partial[0] = SumOfSquares(xx, n);
            else Parallel.For(0, pieces, piece =>
            {
                int start = piece * size;
                partial[piece] = SumOfSquares(xx + start, Math.Min(n, start + size) - start);
            });
        }
        double sum = 0;
        for (int i = 0; i < pieces; i++) sum += partial[i];
        return sum;
    }

    static unsafe double SumOfSquares(float* x, int n)
    {
        int i = 0;
        double sum = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var acc0 = Vector512<double>.Zero;
            var acc1 = Vector512<double>.Zero;
            for (; i <= n - 16; i += 16)
            {
                var (lower, upper) = Vector512.Widen(Vector512.Load(x + i));
                acc0 = Vector512.FusedMultiplyAdd(lower, lower, acc0);
                acc1 = Vector512.FusedMultiplyAdd(upper, upper, acc1);
            }
            sum += Vector512.Sum(acc0 + acc1);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var acc0 = Vector256<double>.Zero;
            var acc1 = Vector256<double>.Zero;
            for (; i <= n - 8; i += 8)
            {
                var (lower, upper) = Vector256.Widen(Vector256.Load(x + i));
                acc0 = Vector256.FusedMultiplyAdd(lower, lower, acc0);
                acc1 = Vector256.FusedMultiplyAdd(upper, upper, acc1);
            }
            sum += Vector256.Sum(acc0 + acc1);
        }
        for (; i < n; i++) sum += (double)x[i] * x[i];
        return sum;
    }

    /// <summary>x *= factor, elementwise.</summary>
    public static unsafe void Scale(Span<float> x, float factor)
    {
        fixed (float* px = x)
        {
            float* xx = px;
            Work.For(x.Length, 1 << 15, (start, end) => Softmax.Scale(xx + start, end - start, factor));
        }
    }
}
