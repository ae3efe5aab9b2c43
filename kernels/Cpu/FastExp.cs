using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace DiffuSharp.Kernels.Cpu;

/// <summary>
/// exp in float32 for the softmax-shaped loops of the backward pass (attention probabilities, cross-entropy rows).
/// Vector512.Exp widens to double and was a large share of the attention backward (BENCHMARKS.md, kernel choices).
/// This is Cephes' expf:
/// x = n·ln2 + r with |r| ≤ ln2/2 (ln2 split in two so the reduction is exact), e^r by a degree-6 polynomial and
/// 2^n built in the exponent bits; about ten vector instructions, within 2 ulp. Inputs below −87.34 (the log of the
/// smallest normal float), −∞ included, give exactly 0, which masked scores rely on; inputs above 88 are clamped,
/// which callers never reach since they subtract a maximum or a log-sum-exp first.
/// </summary>
static class FastExp
{
    const float Log2E = 1.44269504088896341f;
    const float Ln2High = 0.693359375f;
    const float Ln2Low = -2.12194440e-4f;
    const float Lowest = -87.33654f;
    const float Highest = 88f;
    const float C6 = 1.9875691500e-4f, C5 = 1.3981999507e-3f, C4 = 8.3334519073e-3f, C3 = 4.1665795894e-2f, C2 = 1.6666665459e-1f, C1 = 5.0000001201e-1f;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Exp(Vector512<float> x)
    {
        var clamped = Vector512.Min(Vector512.Max(x, Vector512.Create(Lowest)), Vector512.Create(Highest));
        var n = Vector512.Round(clamped * Log2E);
        var r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2High), clamped);
        r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Low), r);
        var p = Vector512.FusedMultiplyAdd(Vector512.Create(C6), r, Vector512.Create(C5));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(C4));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(C3));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(C2));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(C1));
        p = Vector512.FusedMultiplyAdd(p, r * r, r + Vector512<float>.One);
        var scale = Vector512.ShiftLeft(Vector512.ConvertToInt32(n) + Vector512.Create(127), 23).AsSingle();
        return Vector512.ConditionalSelect(Vector512.LessThan(x, Vector512.Create(Lowest)), Vector512<float>.Zero, p * scale);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Exp(Vector256<float> x)
    {
        var clamped = Vector256.Min(Vector256.Max(x, Vector256.Create(Lowest)), Vector256.Create(Highest));
        var n = Vector256.Round(clamped * Log2E);
        var r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2High), clamped);
        r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Low), r);
        var p = Vector256.FusedMultiplyAdd(Vector256.Create(C6), r, Vector256.Create(C5));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(C4));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(C3));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(C2));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(C1));
        p = Vector256.FusedMultiplyAdd(p, r * r, r + Vector256<float>.One);
        var scale = Vector256.ShiftLeft(Vector256.ConvertToInt32(n) + Vector256.Create(127), 23).AsSingle();
        return Vector256.ConditionalSelect(Vector256.LessThan(x, Vector256.Create(Lowest)), Vector256<float>.Zero, p * scale);
    }

    /// <summary>o[i] = exp(x[i] − shift); returns Σ o[i], lane sums added in double. o may alias x.</summary>
    public static unsafe float ExpShifted(float* x, float* o, int n, float shift)
    {
        int i = 0;
        double sum = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var acc = Vector512<float>.Zero;
            var s = Vector512.Create(shift);
            for (; i <= n - 16; i += 16)
            {
                var e = Exp(Vector512.Load(x + i) - s);
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
                var e = Exp(Vector256.Load(x + i) - s);
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
}
