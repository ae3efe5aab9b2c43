namespace DiffuSharp.Kernels.Cpu;

/// <summary>
/// Fused softmax and cross-entropy, one row per work item: a vector maximum, one pass that writes
/// exp(logit − max) into the gradient row while summing it (<see cref="FastExp"/>), and one scaling pass. GPT-2 rows are 50257 wide,
/// so a row is plenty of work for a thread.
/// </summary>
public static class CrossEntropy
{
    /// <summary>
    /// losses[r] = weights[r] · (logsumexp(logits[r]) − logits[r, targets[r]]) and
    /// dLogits[r] = weights[r] · (softmax(logits[r]) − onehot(targets[r])), both written, not accumulated. dLogits may
    /// alias logits: the target logit is read before the row is overwritten. A row with weight 0 gets loss 0 and a zero
    /// gradient, and its target is not read (it may be out of range).
    /// </summary>
    public static unsafe void Forward(ReadOnlySpan<float> logits, ReadOnlySpan<int> targets, ReadOnlySpan<float> weights,
        Span<float> losses, Span<float> dLogits, int rows, int vocab)
    {
        Guard.Positive(vocab, nameof(vocab));
        Guard.Length(logits.Length, (long)rows * vocab, nameof(logits));
        Guard.Length(dLogits.Length, (long)rows * vocab, nameof(dLogits));
        Guard.Length(targets.Length, rows, nameof(targets));
        Guard.Length(weights.Length, rows, nameof(weights));
        Guard.Length(losses.Length, rows, nameof(losses));
        for (int r = 0; r < rows; r++)
        {
            if (weights[r] != 0 && (uint)targets[r] >= (uint)vocab)
                throw new ArgumentOutOfRangeException(nameof(targets), $"target {targets[r]} at row {r} is outside the vocabulary of {vocab}");
        }

        fixed (float* px = logits, pd = dLogits, pw = weights, pl = losses)
        fixed (int* pt = targets)
        {
            float* xx = px, xd = pd, xw = pw, xl = pl;
            int* xt = pt;
            Work.For(rows, Math.Max(1, (1 << 14) / vocab), (start, end) =>
            {
                for (int r = start; r < end; r++)
                    xl[r] = Row(xx + (long)r * vocab, xd + (long)r * vocab, vocab, xt[r], xw[r]);
            });
        }
    }

    /// <summary>Writes one row's gradient and returns its loss.</summary>
    static unsafe float Row(float* x, float* d, int n, int target, float weight)
    {
        if (weight == 0)
        {
            new Span<float>(d, n).Clear();
            return 0;
        }
        float max = Reduce.Max(x, n);
        float targetLogit = x[target];
        float sum = FastExp.ExpShifted(x, d, n, max);
        float logSum = max + MathF.Log(sum);
        Softmax.Scale(d, n, weight / sum);
        d[target] -= weight;
        return weight * (logSum - targetLogit);
    }
}
