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
}
