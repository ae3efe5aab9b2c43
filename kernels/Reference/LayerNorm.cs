namespace DiffuSharp.Kernels.Reference;

/// <summary>Layer normalisation over the last axis, in float64, with the biased variance of torch.nn.LayerNorm.</summary>
public static class LayerNorm
{
    /// <summary>output = (x − mean) · rstd · weight + bias per row, with rstd = 1 / sqrt(var + eps); mean and rstd are kept for backward.</summary>
    public static void Forward(ReadOnlySpan<double> x, ReadOnlySpan<double> weight, ReadOnlySpan<double> bias, Span<double> output,
        Span<double> mean, Span<double> rstd, int rows, int channels, double eps)
    {
        for (int r = 0; r < rows; r++)
        {
            var row = x.Slice(r * channels, channels);
            double m = 0;
            for (int c = 0; c < channels; c++) m += row[c];
            m /= channels;
            double v = 0;
            for (int c = 0; c < channels; c++) v += (row[c] - m) * (row[c] - m);
            v /= channels;
            double s = 1.0 / Math.Sqrt(v + eps);
            for (int c = 0; c < channels; c++)
                output[r * channels + c] = (row[c] - m) * s * weight[c] + bias[c];
            mean[r] = m;
            rstd[r] = s;
        }
    }

    /// <summary>
    /// Backward from the saved mean and rstd, accumulating: with n = (x − mean) · rstd and g = dOutput · weight,
    /// dBias += dOutput, dWeight += dOutput · n and dX += rstd · (g − mean(g) − n · mean(g · n)) per row.
    /// </summary>
    public static void Backward(ReadOnlySpan<double> dOutput, ReadOnlySpan<double> x, ReadOnlySpan<double> weight,
        ReadOnlySpan<double> mean, ReadOnlySpan<double> rstd, Span<double> dX, Span<double> dWeight, Span<double> dBias, int rows, int channels)
    {
        for (int r = 0; r < rows; r++)
        {
            int o = r * channels;
            double meanG = 0, meanGn = 0;
            for (int c = 0; c < channels; c++)
            {
                double n = (x[o + c] - mean[r]) * rstd[r];
                double g = dOutput[o + c] * weight[c];
                meanG += g;
                meanGn += g * n;
            }
            meanG /= channels;
            meanGn /= channels;
            for (int c = 0; c < channels; c++)
            {
                double n = (x[o + c] - mean[r]) * rstd[r];
                double g = dOutput[o + c] * weight[c];
                dBias[c] += dOutput[o + c];
                dWeight[c] += dOutput[o + c] * n;
                dX[o + c] += rstd[r] * (g - meanG - n * meanGn);
            }
        }
    }
}
