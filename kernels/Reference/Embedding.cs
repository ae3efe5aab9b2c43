namespace DiffuSharp.Kernels.Reference;

/// <summary>Token plus position embedding, in float64: the oracle for every device's embedding kernel.</summary>
public static class Embedding
{
    /// <summary>output[b, t, :] = wte[ids[b, t], :] + wpe[positionOffset + t, :]; an empty wpe adds nothing (LLaMA).</summary>
    public static void Forward(ReadOnlySpan<int> ids, ReadOnlySpan<double> wte, ReadOnlySpan<double> wpe, Span<double> output,
        int batch, int length, int channels, int positionOffset)
    {
        for (int b = 0; b < batch; b++)
        {
            for (int t = 0; t < length; t++)
            {
                int row = b * length + t;
                int token = ids[row];
                for (int c = 0; c < channels; c++)
                    output[row * channels + c] = wte[token * channels + c] + (wpe.IsEmpty ? 0 : wpe[(positionOffset + t) * channels + c]);
            }
        }
    }

    /// <summary>dWte[ids[b, t], :] += dOutput[b, t, :] and, unless dWpe is empty, dWpe[positionOffset + t, :] += dOutput[b, t, :].</summary>
    public static void Backward(ReadOnlySpan<int> ids, ReadOnlySpan<double> dOutput, Span<double> dWte, Span<double> dWpe,
        int batch, int length, int channels, int positionOffset)
    {
        for (int b = 0; b < batch; b++)
        {
            for (int t = 0; t < length; t++)
            {
                int row = b * length + t;
                int token = ids[row];
                for (int c = 0; c < channels; c++)
                {
                    double g = dOutput[row * channels + c];
                    dWte[token * channels + c] += g;
                    if (!dWpe.IsEmpty) dWpe[(positionOffset + t) * channels + c] += g;
                }
            }
        }
    }
}
