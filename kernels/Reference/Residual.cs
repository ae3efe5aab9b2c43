namespace DiffuSharp.Kernels.Reference;

/// <summary>The residual connection, in float64.</summary>
public static class Residual
{
    /// <summary>output = a + b elementwise; output may alias a or b.</summary>
    public static void Add(ReadOnlySpan<double> a, ReadOnlySpan<double> b, Span<double> output)
    {
        for (int i = 0; i < a.Length; i++) output[i] = a[i] + b[i];
    }
}
