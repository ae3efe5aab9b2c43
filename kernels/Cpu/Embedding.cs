namespace DiffuSharp.Kernels.Cpu;

/// <summary>Token plus position embedding: one vectorised row add per token.</summary>
public static class Embedding
{
    /// <summary>output[b, t, :] = wte[ids[b, t], :] + wpe[positionOffset + t, :]; ids are checked against the table first.</summary>
    public static unsafe void Forward(ReadOnlySpan<int> ids, ReadOnlySpan<float> wte, ReadOnlySpan<float> wpe, Span<float> output,
        int batch, int length, int channels, int positionOffset)
    {
        Guard.Positive(channels, nameof(channels));
        int rows = batch * length;
        int vocab = wte.Length / channels;
        Guard.Length(ids.Length, rows, nameof(ids));
        Guard.Length(output.Length, (long)rows * channels, nameof(output));
        if (positionOffset < 0 || (long)(positionOffset + length) * channels > wpe.Length)
            throw new ArgumentOutOfRangeException(nameof(positionOffset),
                $"positions {positionOffset}..{positionOffset + length - 1} exceed the {wpe.Length / channels} rows of the position table");
        for (int r = 0; r < rows; r++)
        {
            if ((uint)ids[r] >= (uint)vocab)
                throw new ArgumentOutOfRangeException(nameof(ids), $"token id {ids[r]} at row {r} is outside the vocabulary of {vocab}");
        }

        fixed (int* pid = ids)
        fixed (float* pte = wte, ppe = wpe, po = output)
        {
            int* xid = pid;
            float* xte = pte, xpe = ppe, xo = po;
            Work.For(rows, Math.Max(1, (1 << 14) / channels), (start, end) =>
            {
                for (int r = start; r < end; r++)
                {
                    int t = r % length;
                    Residual.AddRange(xte + (long)xid[r] * channels, xpe + (long)(positionOffset + t) * channels,
                        xo + (long)r * channels, 0, channels);
                }
            });
        }
    }
}
