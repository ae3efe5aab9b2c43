namespace DiffuSharp.Kernels.Reference;

/// <summary>GPT-2's GELU, the tanh approximation, in float64.</summary>
public static class Gelu
{
    /// <summary>output = 0.5 x (1 + tanh(sqrt(2/π) (x + 0.044715 x³))); output may alias x.</summary>
    public static void Forward(ReadOnlySpan<double> x, Span<double> output)
    {
        double s = Math.Sqrt(2.0 / Math.PI);
        for (int i = 0; i < x.Length; i++)
        {
            double v = x[i];
            output[i] = 0.5 * v * (1.0 + Math.Tanh(s * (v + 0.044715 * v * v * v)));
        }
    }

    /// <summary>
    /// dX += gelu'(x) · dOutput, with gelu'(x) = 0.5 (1 + tanh u) + 0.5 x (1 − tanh² u) · sqrt(2/π) (1 + 3 · 0.044715 x²)
    /// and u = sqrt(2/π) (x + 0.044715 x³).
    /// </summary>
    public static void Backward(ReadOnlySpan<double> x, ReadOnlySpan<double> dOutput, Span<double> dX)
    {
        double s = Math.Sqrt(2.0 / Math.PI);
        for (int i = 0; i < x.Length; i++)
        {
            double v = x[i];
            double t = Math.Tanh(s * (v + 0.044715 * v * v * v));
            double derivative = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * s * (1.0 + 3.0 * 0.044715 * v * v);
            dX[i] += derivative * dOutput[i];
        }
    }
}
