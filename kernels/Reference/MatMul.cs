namespace DiffuSharp.Kernels.Reference;

/// <summary>Matrix products in float64 with plain triple loops.</summary>
public static class MatMul
{
    /// <summary>output[M, N] = x[M, K] · w[K, N] + bias[N]; an empty bias means none.</summary>
    public static void Forward(ReadOnlySpan<double> x, ReadOnlySpan<double> w, ReadOnlySpan<double> bias, Span<double> output, int m, int k, int n)
    {
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double sum = bias.IsEmpty ? 0 : bias[j];
                for (int p = 0; p < k; p++) sum += x[i * k + p] * w[p * n + j];
                output[i * n + j] = sum;
            }
        }
    }

    /// <summary>output[M, N] = x[M, K] · wᵀ + bias[N] with w stored [N, K] (nn.Linear, tied LM head).</summary>
    public static void ForwardTransposed(ReadOnlySpan<double> x, ReadOnlySpan<double> w, ReadOnlySpan<double> bias, Span<double> output, int m, int k, int n)
    {
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double sum = bias.IsEmpty ? 0 : bias[j];
                for (int p = 0; p < k; p++) sum += x[i * k + p] * w[j * k + p];
                output[i * n + j] = sum;
            }
        }
    }
}
