namespace DiffuSharp.Kernels.Reference;

/// <summary>RMS normalisation over the last axis (LLaMA's LlamaRMSNorm), in float64.</summary>
public static class RmsNorm
{
    /// <summary>output = x · rstd · weight per row, with rstd = 1 / sqrt(mean(x²) + eps); rstd is kept for backward.</summary>
    public static void Forward(ReadOnlySpan<double> x, ReadOnlySpan<double> weight, Span<double> output, Span<double> rstd,
        int rows, int channels, double eps)
    {
        for (int r = 0; r < rows; r++)
        {
            int o = r * channels;
            double squares = 0;
            for (int c = 0; c < channels; c++) squares += x[o + c] * x[o + c];
            double s = 1.0 / Math.Sqrt(squares / channels + eps);
            for (int c = 0; c < channels; c++) output[o + c] = x[o + c] * s * weight[c];
            rstd[r] = s;
        }
    }

    /// <summary>
    /// Backward from the saved rstd, accumulating: with n = x · rstd and g = dOutput · weight,
    /// dWeight += dOutput · n and dX += rstd · (g − n · mean(g · n)) per row.
    /// </summary>
    public static void Backward(ReadOnlySpan<double> dOutput, ReadOnlySpan<double> x, ReadOnlySpan<double> weight,
        ReadOnlySpan<double> rstd, Span<double> dX, Span<double> dWeight, int rows, int channels)
    {
        for (int r = 0; r < rows; r++)
        {
            int o = r * channels;
            double meanGn = 0;
            for (int c = 0; c < channels; c++) meanGn += dOutput[o + c] * weight[c] * x[o + c] * rstd[r];
            meanGn /= channels;
            for (int c = 0; c < channels; c++)
            {
                double n = x[o + c] * rstd[r];
                dWeight[c] += dOutput[o + c] * n;
                dX[o + c] += rstd[r] * (dOutput[o + c] * weight[c] - n * meanGn);
            }
        }
    }
}
