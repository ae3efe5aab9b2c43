using System.Runtime.Intrinsics;

namespace DiffuSharp.Kernels.Cpu;

/// <summary>
/// GPT-2's tanh-approximated GELU. Since 0.5(1 + tanh(u)) = 1 / (1 + exp(−2u)), it is computed as
/// x / (1 + exp(−2u)) with the float32 vector exp (<see cref="FastExp"/>), which needs no vector tanh and saturates
/// correctly at both ends (past exp's clamp the output is 0, the limit for large negative x).
/// </summary>
public static class Gelu
{
    const float Sqrt2OverPi = 0.7978845608028654f;
    const float Cubic = 0.044715f;

    /// <summary>Past this exponent (−2u), exp is clamped (<see cref="FastExp"/>) and x / (1 + exp) is taken as 0, its limit.</summary>
    const float Saturated = 88f;

    /// <summary>output = 0.5 x (1 + tanh(sqrt(2/π) (x + 0.044715 x³))); output may alias x.</summary>
    public static unsafe void Forward(ReadOnlySpan<float> x, Span<float> output)
    {
        int n = x.Length;
        Guard.Length(output.Length, n, nameof(output));
        fixed (float* px = x, po = output)
        {
            float* xx = px, xo = po;
            Work.For(n, 1 << 14, (start, end) => Range(xx, xo, start, end));
        }
    }

    static unsafe void Range(float* x, float* o, int start, int end)
    {
        int i = start;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; i <= end - 16; i += 16)
            {
                var v = Vector512.Load(x + i);
                var u = v * Vector512.FusedMultiplyAdd(v * v, Vector512.Create(-2f * Sqrt2OverPi * Cubic), Vector512.Create(-2f * Sqrt2OverPi));
                Vector512.Store(Vector512.ConditionalSelect(Vector512.GreaterThan(u, Vector512.Create(Saturated)), Vector512<float>.Zero,
                    v / (Vector512<float>.One + FastExp.Exp(u))), o + i);
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= end - 8; i += 8)
            {
                var v = Vector256.Load(x + i);
                var u = v * Vector256.FusedMultiplyAdd(v * v, Vector256.Create(-2f * Sqrt2OverPi * Cubic), Vector256.Create(-2f * Sqrt2OverPi));
                Vector256.Store(Vector256.ConditionalSelect(Vector256.GreaterThan(u, Vector256.Create(Saturated)), Vector256<float>.Zero,
                    v / (Vector256<float>.One + FastExp.Exp(u))), o + i);
            }
        }
        for (; i < end; i++)
        {
            float v = x[i];
            o[i] = v / (1f + MathF.Exp(-2f * Sqrt2OverPi * v * (1f + Cubic * v * v)));
        }
    }

    /// <summary>
    /// dX += gelu'(x) · dOutput. With σ = 0.5 (1 + tanh u) = 1 / (1 + exp(−2u)) and 1 − tanh² u = 4σ(1 − σ), the
    /// derivative 0.5 (1 + tanh u) + 0.5 x (1 − tanh² u) u' is σ + 2xσ(1 − σ) · sqrt(2/π) (1 + 3 · 0.044715 x²),
    /// one vector exp per element; it saturates to 0 and 1 at the ends like the forward pass.
    /// </summary>
    public static unsafe void Backward(ReadOnlySpan<float> x, ReadOnlySpan<float> dOutput, Span<float> dX)
    {
        int n = x.Length;
        Guard.Length(dOutput.Length, n, nameof(dOutput));
        Guard.Length(dX.Length, n, nameof(dX));
        fixed (float* px = x, pg = dOutput, pd = dX)
        {
            float* xx = px, xg = pg, xd = pd;
            Work.For(n, 1 << 14, (start, end) => BackwardRange(xx, xg, xd, start, end));
        }
    }

    static unsafe void BackwardRange(float* x, float* g, float* dx, int start, int end)
    {
        int i = start;
        if (Vector512.IsHardwareAccelerated)
        {
            var one = Vector512<float>.One;
            for (; i <= end - 16; i += 16)
            {
                var v = Vector512.Load(x + i);
                var v2 = v * v;
                var u = v * Vector512.FusedMultiplyAdd(v2, Vector512.Create(-2f * Sqrt2OverPi * Cubic), Vector512.Create(-2f * Sqrt2OverPi));
                var sigma = one / (one + FastExp.Exp(u));
                var slope = Vector512.FusedMultiplyAdd(v2, Vector512.Create(6f * Sqrt2OverPi * Cubic), Vector512.Create(2f * Sqrt2OverPi));
                var derivative = Vector512.FusedMultiplyAdd(v * sigma * (one - sigma), slope, sigma);
                Vector512.Store(Vector512.FusedMultiplyAdd(derivative, Vector512.Load(g + i), Vector512.Load(dx + i)), dx + i);
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var one = Vector256<float>.One;
            for (; i <= end - 8; i += 8)
            {
                var v = Vector256.Load(x + i);
                var v2 = v * v;
                var u = v * Vector256.FusedMultiplyAdd(v2, Vector256.Create(-2f * Sqrt2OverPi * Cubic), Vector256.Create(-2f * Sqrt2OverPi));
                var sigma = one / (one + FastExp.Exp(u));
                var slope = Vector256.FusedMultiplyAdd(v2, Vector256.Create(6f * Sqrt2OverPi * Cubic), Vector256.Create(2f * Sqrt2OverPi));
                var derivative = Vector256.FusedMultiplyAdd(v * sigma * (one - sigma), slope, sigma);
                Vector256.Store(Vector256.FusedMultiplyAdd(derivative, Vector256.Load(g + i), Vector256.Load(dx + i)), dx + i);
            }
        }
        for (; i < end; i++)
        {
            float v = x[i];
            float sigma = 1f / (1f + MathF.Exp(-2f * Sqrt2OverPi * v * (1f + Cubic * v * v)));
            float derivative = sigma + v * sigma * (1f - sigma) * 2f * Sqrt2OverPi * (1f + 3f * Cubic * v * v);
            dx[i] += derivative * g[i];
        }
    }
}
