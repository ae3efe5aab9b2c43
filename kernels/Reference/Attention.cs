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
    /// that sees no key at all (possible only with an explicit mask) outputs zeros and lse = −∞. With
    /// <paramref name="keyLengths"/> (one per batch row, see <see cref="AttentionShape.ValidateKeyLengths"/>), keys
    /// from keyLengths[b] on are hidden from every query of row b as well.
    /// </summary>
    public static void Forward(ReadOnlySpan<double> q, ReadOnlySpan<double> k, ReadOnlySpan<double> v, Span<double> output,
        Span<double> lse, in AttentionShape shape, AttentionMaskMode mode, ReadOnlySpan<byte> allow, ReadOnlySpan<int> keyLengths = default)
    {
        shape.Validate();
        if (!keyLengths.IsEmpty) shape.ValidateKeyLengths(keyLengths);
        int hd = shape.HeadDim, tq = shape.QueryLength, tk = shape.KeyLength;
        int outStride = shape.Heads * hd;
        var scores = new double[tk];
        var visible = new bool[tk];
        for (int b = 0; b < shape.Batch; b++)
        {
            int keyLength = keyLengths.IsEmpty ? tk : keyLengths[b];
            for (int h = 0; h < shape.Heads; h++)
            {
                int kvh = h / shape.GroupSize;
                for (int i = 0; i < tq; i++)
                {
                    long qBase = b * shape.QueryBatchStride + (long)i * shape.QueryRowStride + (long)h * hd;
                    double max = double.NegativeInfinity;
                    for (int j = 0; j < tk; j++)
                    {
                        visible[j] = j < keyLength && mode switch
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

    /// <summary>
    /// Backward of <see cref="Forward"/>, accumulating into dq, dk and dv (laid out with the strides of q, k and v).
    /// The probabilities are recomputed from q, k and lse: P_ij = exp(Scale · q_i·k_j − lse_i) over the visible
    /// keys. With D_i = dO_i · O_i: dv_j += Σ_i P_ij dO_i, dS_ij = P_ij (dO_i · v_j − D_i),
    /// dq_i += Scale Σ_j dS_ij k_j and dk_j += Scale Σ_i dS_ij q_i. A row with lse = −∞ (no visible key) adds nothing.
    /// </summary>
    public static void Backward(ReadOnlySpan<double> q, ReadOnlySpan<double> k, ReadOnlySpan<double> v, ReadOnlySpan<double> output,
        ReadOnlySpan<double> dOutput, ReadOnlySpan<double> lse, Span<double> dq, Span<double> dk, Span<double> dv,
        in AttentionShape shape, AttentionMaskMode mode, ReadOnlySpan<byte> allow)
    {
        shape.Validate();
        int hd = shape.HeadDim, tq = shape.QueryLength, tk = shape.KeyLength;
        int outStride = shape.Heads * hd;
        for (int b = 0; b < shape.Batch; b++)
        {
            for (int h = 0; h < shape.Heads; h++)
            {
                int kvh = h / shape.GroupSize;
                for (int i = 0; i < tq; i++)
                {
                    double rowLse = lse[(b * shape.Heads + h) * tq + i];
                    if (double.IsNegativeInfinity(rowLse)) continue;
                    int qBase = (int)(b * shape.QueryBatchStride + (long)i * shape.QueryRowStride + (long)h * hd);
                    int oBase = (b * tq + i) * outStride + h * hd;
                    double rowD = 0;
                    for (int d = 0; d < hd; d++) rowD += dOutput[oBase + d] * output[oBase + d];
                    for (int j = 0; j < tk; j++)
                    {
                        bool visible = mode switch
                        {
                            AttentionMaskMode.Causal => j <= shape.QueryOffset + i,
                            AttentionMaskMode.Bidirectional => true,
                            _ => allow[i * tk + j] != 0,
                        };
                        if (!visible) continue;
                        int kBase = (int)(b * shape.KeyBatchStride + (long)j * shape.KeyRowStride + (long)kvh * hd);
                        double dot = 0, dP = 0;
                        for (int d = 0; d < hd; d++)
                        {
                            dot += q[qBase + d] * k[kBase + d];
                            dP += dOutput[oBase + d] * v[kBase + d];
                        }
                        double p = Math.Exp(shape.Scale * dot - rowLse);
                        double dS = p * (dP - rowD);
                        for (int d = 0; d < hd; d++)
                        {
                            dv[kBase + d] += p * dOutput[oBase + d];
                            dq[qBase + d] += shape.Scale * dS * k[kBase + d];
                            dk[kBase + d] += shape.Scale * dS * q[qBase + d];
                        }
                    }
                }
            }
        }
    }
}
