namespace DiffuSharp.Kernels.Cpu;

/// <summary>Token plus position embedding: one vectorised row add per token.</summary>
public static class Embedding
{
    /// <summary>
    /// output[b, t, :] = wte[ids[b, t], :] + wpe[positionOffset + t, :]; an empty wpe means token rows alone
    /// (LLaMA). ids are checked against the table first.
    /// </summary>
    public static unsafe void Forward(ReadOnlySpan<int> ids, WeightView wte, WeightView wpe, Span<float> output,
        int batch, int length, int channels, int positionOffset)
    {
        Guard.Positive(channels, nameof(channels));
        int rows = batch * length;
        int vocab = wte.Length / channels;
        Guard.Length(ids.Length, rows, nameof(ids));
        Guard.Length(output.Length, (long)rows * channels, nameof(output));
        bool positions = !wpe.IsEmpty;
        if (positions && (positionOffset < 0 || (long)(positionOffset + length) * channels > wpe.Length))
            throw new ArgumentOutOfRangeException(nameof(positionOffset),
                $"positions {positionOffset}..{positionOffset + length - 1} exceed the {wpe.Length / channels} rows of the position table");
        for (int r = 0; r < rows; r++)
        {
            if ((uint)ids[r] >= (uint)vocab)
                throw new ArgumentOutOfRangeException(nameof(ids), $"token id {ids[r]} at row {r} is outside the vocabulary of {vocab}");
        }

        fixed (int* pid = ids)
        fixed (byte* pte = wte.Bytes, ppe = wpe.Bytes)
        fixed (float* po = output)
        {
            int* xid = pid;
            byte* xte = pte, xpe = ppe;
            float* xo = po;
            var teFormat = wte.Format;
            var peFormat = wpe.Format;
            int teSize = teFormat == WeightFormat.F32 ? 4 : 2, peSize = peFormat == WeightFormat.F32 ? 4 : 2;
            Work.For(rows, Math.Max(1, (1 << 14) / channels), (start, end) =>
            {
                // 16-bit rows are widened into the output (and a position row beside it) before the add.
                float[]? row = positions && peFormat != WeightFormat.F32 ? new float[channels] : null;
                for (int r = start; r < end; r++)
                {
                    int t = r % length;
                    float* o = xo + (long)r * channels;
                    byte* te = xte + (long)xid[r] * channels * teSize;
                    byte* pe = xpe + (long)(positionOffset + t) * channels * peSize;
                    if (positions && teFormat == WeightFormat.F32 && peFormat == WeightFormat.F32)
                    {
                        Residual.AddRange((float*)te, (float*)pe, o, 0, channels);
                        continue;
                    }
                    WeightWidening.Widen(te, teFormat, o, channels);
                    if (!positions) continue;
                    if (row is null) Residual.AddRange(o, (float*)pe, o, 0, channels);
                    else
                    {
                        fixed (float* pr = row)
                        {
                            WeightWidening.Widen(pe, peFormat, pr, channels);
                            Residual.AddRange(o, pr, o, 0, channels);
                        }
                    }
                }
            });
        }
    }

    /// <summary>
    /// dWte[ids[b, t], :] += dOutput[b, t, :] and (unless dWpe is empty) dWpe[positionOffset + t, :] += dOutput[b, t, :]. A token that occurs
    /// twice adds twice into one row of dWte, so the work is split by channels rather than by tokens: each thread
    /// walks every token over its own stripe of columns, which needs no locks and adds in a fixed order.
    /// </summary>
    public static unsafe void Backward(ReadOnlySpan<int> ids, ReadOnlySpan<float> dOutput, Span<float> dWte, Span<float> dWpe,
        int batch, int length, int channels, int positionOffset)
    {
        Guard.Positive(channels, nameof(channels));
        int rows = batch * length;
        int vocab = dWte.Length / channels;
        Guard.Length(ids.Length, rows, nameof(ids));
        Guard.Length(dOutput.Length, (long)rows * channels, nameof(dOutput));
        bool positions = !dWpe.IsEmpty;
        if (positions && (positionOffset < 0 || (long)(positionOffset + length) * channels > dWpe.Length))
            throw new ArgumentOutOfRangeException(nameof(positionOffset),
                $"positions {positionOffset}..{positionOffset + length - 1} exceed the {dWpe.Length / channels} rows of the position table");
        for (int r = 0; r < rows; r++)
        {
            if ((uint)ids[r] >= (uint)vocab)
                throw new ArgumentOutOfRangeException(nameof(ids), $"token id {ids[r]} at row {r} is outside the vocabulary of {vocab}");
        }

        fixed (int* pid = ids)
        fixed (float* pg = dOutput, pte = dWte, ppe = dWpe)
        {
            int* xid = pid;
            float* xg = pg, xte = pte, xpe = ppe;
            Work.For(channels, Math.Max(16, (1 << 14) / Math.Max(1, rows)), (c0, c1) =>
            {
                for (int r = 0; r < rows; r++)
                {
                    float* g = xg + (long)r * channels;
                    float* te = xte + (long)xid[r] * channels;
                    Residual.AddRange(te, g, te, c0, c1);
                    if (positions)
                    {
                        float* pe = xpe + (long)(positionOffset + r % length) * channels;
                        Residual.AddRange(pe, g, pe, c0, c1);
                    }
                }
            });
        }
    }
}
