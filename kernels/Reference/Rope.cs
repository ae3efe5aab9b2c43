namespace DiffuSharp.Kernels.Reference;

/// <summary>Rotary position embedding in HF's rotate-half convention (LlamaRotaryEmbedding + rotate_half), in float64.</summary>
public static class Rope
{
    /// <summary>
    /// Rotates in place, for each row (b, t) of a strided view (element (b, t, h, d) at (b·length + t)·rowStride +
    /// h·headDim + d from the start of <paramref name="x"/>) and each head, the pair (d, d + headDim/2) by the angle
    /// (positionOffset + t) · theta^(−2d/headDim): x[d] ← x[d]·cos − x[d+D/2]·sin, x[d+D/2] ← x[d+D/2]·cos + x[d]·sin.
    /// With <paramref name="inverse"/> the angle is negated, which undoes the rotation.
    /// </summary>
    public static void Apply(Span<double> x, int rowStride, int batch, int length, int heads, int headDim, int positionOffset, double theta, bool inverse)
    {
        int half = headDim / 2;
        for (int b = 0; b < batch; b++)
            for (int t = 0; t < length; t++)
            {
                int row = (b * length + t) * rowStride;
                for (int i = 0; i < half; i++)
                {
                    double angle = (positionOffset + t) * Math.Pow(theta, -2.0 * i / headDim);
                    double cos = Math.Cos(angle), sin = inverse ? -Math.Sin(angle) : Math.Sin(angle);
                    for (int h = 0; h < heads; h++)
                    {
                        int o = row + h * headDim + i;
                        double a = x[o], c = x[o + half];
                        x[o] = a * cos - c * sin;
                        x[o + half] = c * cos + a * sin;
                    }
                }
            }
    }
}
