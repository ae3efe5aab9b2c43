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

    /// <summary>Backward of <see cref="Forward"/> (w [K, N]), accumulating: dX += dOutput · wᵀ, dW += xᵀ · dOutput, dBias += Σ rows of dOutput (empty = none).</summary>
    public static void Backward(ReadOnlySpan<double> dOutput, ReadOnlySpan<double> x, ReadOnlySpan<double> w,
        Span<double> dX, Span<double> dW, Span<double> dBias, int m, int k, int n)
    {
        for (int i = 0; i < m; i++)
        {
            for (int p = 0; p < k; p++)
            {
                double sum = 0;
                for (int j = 0; j < n; j++) sum += dOutput[i * n + j] * w[p * n + j];
                dX[i * k + p] += sum;
            }
        }
        for (int p = 0; p < k; p++)
        {
            for (int j = 0; j < n; j++)
            {
                double sum = 0;
                for (int i = 0; i < m; i++) sum += x[i * k + p] * dOutput[i * n + j];
                dW[p * n + j] += sum;
            }
        }
        BiasBackward(dOutput, dBias, m, n);
    }

    /// <summary>Backward of <see cref="ForwardTransposed"/> (w [N, K]), accumulating: dX += dOutput · w, dW += dOutputᵀ · x, dBias += Σ rows of dOutput (empty = none).</summary>
    public static void BackwardTransposed(ReadOnlySpan<double> dOutput, ReadOnlySpan<double> x, ReadOnlySpan<double> w,
        Span<double> dX, Span<double> dW, Span<double> dBias, int m, int k, int n)
    {
        for (int i = 0; i < m; i++)
        {
            for (int p = 0; p < k; p++)
            {
                double sum = 0;
                for (int j = 0; j < n; j++) sum += dOutput[i * n + j] * w[j * k + p];
                dX[i * k + p] += sum;
            }
        }
        for (int j = 0; j < n; j++)
        {
            for (int p = 0; p < k; p++)
            {
                double sum = 0;
                for (int i = 0; i < m; i++) sum += dOutput[i * n + j] * x[i * k + p];
                dW[j * k + p] += sum;
            }
        }
        BiasBackward(dOutput, dBias, m, n);
    }

    static void BiasBackward(ReadOnlySpan<double> dOutput, Span<double> dBias, int m, int n)
    {
        if (dBias.IsEmpty) return;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) dBias[j] += dOutput[i * n + j];
    }
}
