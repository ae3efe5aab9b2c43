using System.Runtime.Intrinsics;

namespace DiffuSharp.Kernels.Cpu;

/// <summary>
/// GPT-2's tanh-approximated GELU. Since 0.5(1 + tanh(u)) = 1 / (1 + exp(−2u)), it is computed as
/// x / (1 + exp(−2u)) with the vector exp, which needs no vector tanh and saturates correctly at both ends
/// (exp overflowing to +∞ gives −0, the limit for large negative x).
/// </summary>
public static class Gelu
{
    const float Sqrt2OverPi = 0.7978845608028654f;
    const float Cubic = 0.044715f;

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
                Vector512.Store(v / (Vector512<float>.One + Vector512.Exp(u)), o + i);
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= end - 8; i += 8)
            {
                var v = Vector256.Load(x + i);
                var u = v * Vector256.FusedMultiplyAdd(v * v, Vector256.Create(-2f * Sqrt2OverPi * Cubic), Vector256.Create(-2f * Sqrt2OverPi));
                Vector256.Store(v / (Vector256<float>.One + Vector256.Exp(u)), o + i);
            }
        }
        for (; i < end; i++)
        {
            float v = x[i];
            o[i] = v / (1f + MathF.Exp(-2f * Sqrt2OverPi * v * (1f + Cubic * v * v)));
        }
    }
}
