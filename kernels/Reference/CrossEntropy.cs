namespace DiffuSharp.Kernels.Reference;

/// <summary>Fused softmax and cross-entropy over rows of logits, in float64.</summary>
public static class CrossEntropy
{
    /// <summary>
    /// losses[r] = weights[r] · (logsumexp(logits[r]) − logits[r, targets[r]]) and
    /// dLogits[r] = weights[r] · (softmax(logits[r]) − onehot(targets[r])), both written. dLogits may alias
    /// logits (each element is read before it is written). A row with weight 0 gets loss 0 and a zero
    /// gradient, and its target is not read.
    /// </summary>
    public static void Forward(ReadOnlySpan<double> logits, ReadOnlySpan<int> targets, ReadOnlySpan<double> weights,
        Span<double> losses, Span<double> dLogits, int rows, int vocab)
    {
        for (int r = 0; r < rows; r++)
        {
            int o = r * vocab;
            double weight = weights[r];
            if (weight == 0)
            {
                losses[r] = 0;
                dLogits.Slice(o, vocab).Clear();
                continue;
            }
            int target = targets[r];
            double max = double.NegativeInfinity;
            for (int c = 0; c < vocab; c++) max = Math.Max(max, logits[o + c]);
            double sum = 0;
            for (int c = 0; c < vocab; c++) sum += Math.Exp(logits[o + c] - max);
            double logSum = max + Math.Log(sum);
            losses[r] = weight * (logSum - logits[o + target]);
            for (int c = 0; c < vocab; c++)
            {
                double p = Math.Exp(logits[o + c] - logSum);
                dLogits[o + c] = weight * (c == target ? p - 1.0 : p);
            }
        }
    }
}
