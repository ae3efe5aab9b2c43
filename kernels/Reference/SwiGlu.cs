namespace DiffuSharp.Kernels.Reference;

/// <summary>LLaMA's gated MLP activation, silu(gate) · up, in float64.</summary>
public static class SwiGlu
{
    /// <summary>output = silu(gate) · up elementwise, silu(g) = g · sigmoid(g); output may alias gate or up.</summary>
    public static void Forward(ReadOnlySpan<double> gate, ReadOnlySpan<double> up, Span<double> output)
    {
        for (int i = 0; i < gate.Length; i++)
        {
            double g = gate[i];
            output[i] = g / (1.0 + Math.Exp(-g)) * up[i];
        }
    }

    /// <summary>
    /// Accumulating backward: dUp += dOutput · silu(gate) and dGate += dOutput · up · silu'(gate),
    /// with silu'(g) = σ(g) · (1 + g · (1 − σ(g))).
    /// </summary>
    public static void Backward(ReadOnlySpan<double> gate, ReadOnlySpan<double> up, ReadOnlySpan<double> dOutput, Span<double> dGate, Span<double> dUp)
    {
        for (int i = 0; i < gate.Length; i++)
        {
            double g = gate[i];
            double sigma = 1.0 / (1.0 + Math.Exp(-g));
            dUp[i] += dOutput[i] * g * sigma;
            dGate[i] += dOutput[i] * up[i] * sigma * (1.0 + g * (1.0 - sigma));
        }
    }
}
