using System.Runtime.Intrinsics;

namespace DiffuSharp.Kernels.Cpu;

/// <summary>
/// LLaMA's gated MLP activation, silu(gate) · up, with silu(g) = g / (1 + exp(−g)) from the float32 vector exp
/// (<see cref="FastExp"/>): exp(−g) underflowing to 0 gives g, past its clamp gives 0, the limits at both ends.
/// </summary>
public static class SwiGlu
{
    /// <summary>Below −this, exp(−g) is clamped (<see cref="FastExp"/>) and silu(g) is taken as 0, its limit.</summary>
    const float Saturated = 88f;

    /// <summary>output = silu(gate) · up elementwise; output may alias gate or up.</summary>
    public static unsafe void Forward(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> output)
    {
        int n = gate.Length;
        Guard.Length(up.Length, n, nameof(up));
        Guard.Length(output.Length, n, nameof(output));
        fixed (float* pg = gate, pu = up, po = output)
        {
            float* xg = pg, xu = pu, xo = po;
            Work.For(n, 1 << 14, (start, end) => Range(xg, xu, xo, start, end));
        }
    }

    static unsafe void Range(float* gate, float* up, float* o, int start, int end)
    {
        int i = start;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; i <= end - 16; i += 16)
            {
                var g = Vector512.Load(gate + i);
                Vector512.Store(Vector512.ConditionalSelect(Vector512.LessThan(g, Vector512.Create(-Saturated)), Vector512<float>.Zero,
                    g * Vector512.Load(up + i) / (Vector512<float>.One + FastExp.Exp(-g))), o + i);
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= end - 8; i += 8)
            {
                var g = Vector256.Load(gate + i);
                Vector256.Store(Vector256.ConditionalSelect(Vector256.LessThan(g, Vector256.Create(-Saturated)), Vector256<float>.Zero,
                    g * Vector256.Load(up + i) / (Vector256<float>.One + FastExp.Exp(-g))), o + i);
            }
        }
        for (; i < end; i++)
        {
            float g = gate[i];
            o[i] = g * up[i] / (1f + MathF.Exp(-g));
        }
    }

    /// <summary>
    /// Accumulating backward: dUp += dOutput · g · σ and dGate += dOutput · up · σ · (1 + g · (1 − σ)), σ = sigmoid(gate).
    /// </summary>
    public static unsafe void Backward(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, ReadOnlySpan<float> dOutput, Span<float> dGate, Span<float> dUp)
    {
        int n = gate.Length;
        Guard.Length(up.Length, n, nameof(up));
        Guard.Length(dOutput.Length, n, nameof(dOutput));
        Guard.Length(dGate.Length, n, nameof(dGate));
        Guard.Length(dUp.Length, n, nameof(dUp));
        fixed (float* pg = gate, pu = up, pd = dOutput, pdg = dGate, pdu = dUp)
        {
            float* xg = pg, xu = pu, xd = pd, xdg = pdg, xdu = pdu;
            Work.For(n, 1 << 14, (start, end) => BackwardRange(xg, xu, xd, xdg, xdu, start, end));
        }
    }

    static unsafe void BackwardRange(float* gate, float* up, float* dOut, float* dGate, float* dUp, int start, int end)
    {
        int i = start;
        if (Vector512.IsHardwareAccelerated)
        {
            var one = Vector512<float>.One;
            for (; i <= end - 16; i += 16)
            {
                var g = Vector512.Load(gate + i);
                var d = Vector512.Load(dOut + i);
                var sigma = one / (one + FastExp.Exp(-g));
                var silu = g * sigma;
                Vector512.Store(Vector512.FusedMultiplyAdd(d, silu, Vector512.Load(dUp + i)), dUp + i);
                var slope = sigma + silu * (one - sigma);
                Vector512.Store(Vector512.FusedMultiplyAdd(d * Vector512.Load(up + i), slope, Vector512.Load(dGate + i)), dGate + i);
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var one = Vector256<float>.One;
            for (; i <= end - 8; i += 8)
            {
                var g = Vector256.Load(gate + i);
                var d = Vector256.Load(dOut + i);
                var sigma = one / (one + FastExp.Exp(-g));
                var silu = g * sigma;
                Vector256.Store(Vector256.FusedMultiplyAdd(d, silu, Vector256.Load(dUp + i)), dUp + i);
                var slope = sigma + silu * (one - sigma);
                Vector256.Store(Vector256.FusedMultiplyAdd(d * Vector256.Load(up + i), slope, Vector256.Load(dGate + i)), dGate + i);
            }
        }
        for (; i < end; i++)
        {
            float g = gate[i];
            float sigma = 1f / (1f + MathF.Exp(-g));
            float silu = g * sigma;
            dUp[i] += dOut[i] * silu;
            dGate[i] += dOut[i] * up[i] * (sigma + silu * (1f - sigma));
        }
    }
}
