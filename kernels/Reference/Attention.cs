namespace DiffuSharp.Kernels.Reference;

/// <summary>
/// Scaled dot-product attention in float64, written the textbook way: a full score row per query, its
/// softmax, then the weighted sum of values. The geometry (strides, grouped-query heads, query offset)
/// is that of <see cref="AttentionShape"/>.
/// </summary>
public static class Attention
{
    /// <summary>
    /// output[b, i, h*D + d] = Σ_j softmax_j(Scale · q_i·k_j) v_j[d] over the keys visible to query i.
    /// lse (when not empty) is [B, H, Tq] = log Σ_j exp(Scale · q_i·k_j) over the visible keys. A query row
    /// that sees no key at all (possible only with an explicit mask) outputs zeros and lse = −∞.
    /// </summary>
    public static void Forward(ReadOnlySpan<double> q, ReadOnlySpan<double> k, ReadOnlySpan<double> v, Span<double> output,
        Span<double> lse, in AttentionShape shape, AttentionMaskMode mode, ReadOnlySpan<byte> allow)
    {
        shape.Validate();
        int hd = shape.HeadDim, tq = shape.QueryLength, tk = shape.KeyLength;
        int outStride = shape.Heads * hd;
        var scores = new double[tk];
        var visible = new bool[tk];
        for (int b = 0; b < shape.Batch; b++)
        {
            for (int h = 0; h < shape.Heads; h++)
            {
                int kvh = h / shape.GroupSize;
                for (int i = 0; i < tq; i++)
                {
                    long qBase = b * shape.QueryBatchStride + (long)i * shape.QueryRowStride + (long)h * hd;
                    double max = double.NegativeInfinity;
                    for (int j = 0; j < tk; j++)
                    {
                        visible[j] = mode switch
                        {
                            AttentionMaskMode.Causal => j <= shape.QueryOffset + i,
                            AttentionMaskMode.Bidirectional => true,
                            _ => allow[i * tk + j] != 0,
                        };
                        if (!visible[j]) continue;
                        long kBase = b * shape.KeyBatchStride + (long)j * shape.KeyRowStride + (long)kvh * hd;
                        double dot = 0;
                        for (int d = 0; d < hd; d++) dot += q[(int)(qBase + d)] * k[(int)(kBase + d)];
                        scores[j] = shape.Scale * dot;
                        max = Math.Max(max, scores[j]);
                    }

                    var dst = output.Slice((b * tq + i) * outStride + h * hd, hd);
                    dst.Clear();
                    int lseIndex = (b * shape.Heads + h) * tq + i;
                    if (double.IsNegativeInfinity(max))
                    {
                        if (!lse.IsEmpty) lse[lseIndex] = double.NegativeInfinity;
                        continue;
                    }

                    double sum = 0;
                    for (int j = 0; j < tk; j++)
                    {
                        if (!visible[j]) continue;
                        scores[j] = Math.Exp(scores[j] - max);
                        sum += scores[j];
                    }
                    for (int j = 0; j < tk; j++)
                    {
                        if (!visible[j]) continue;
                        double p = scores[j] / sum;
                        long vBase = b * shape.KeyBatchStride + (long)j * shape.KeyRowStride + (long)kvh * hd;
                        for (int d = 0; d < hd; d++) dst[d] += p * v[(int)(vBase + d)];
                    }
                    if (!lse.IsEmpty) lse[lseIndex] = max + Math.Log(sum);
                }
            }
        }
    }
}
