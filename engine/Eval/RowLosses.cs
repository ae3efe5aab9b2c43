using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Eval;

/// <summary>
/// One row of a forward pass for scoring: its input ids, and for each position the token the logit there
/// predicts and a weight (0 = not scored). The result for the row is Σ weight · CE.
/// </summary>
public sealed record LossRow(int[] Inputs, int[] Targets, float[] Weights)
{
    public int Length => Inputs.Length;

    /// <summary>
    /// The row that reads <paramref name="inputs"/> and scores the original token of every position marked in
    /// <paramref name="scored"/> from the logit just before it (the shift: logit p − 1 predicts token p), with
    /// <paramref name="weight"/>. Position 0 is never scored: nothing precedes it.
    /// </summary>
    public static LossRow Shifted(int[] inputs, int[] original, bool[] scored, float weight)
    {
        int n = inputs.Length;
        var targets = new int[n];
        var weights = new float[n];
        for (int p = 0; p + 1 < n; p++)
        {
            targets[p] = original[p + 1];
            weights[p] = scored[p + 1] ? weight : 0f;
        }
        return new LossRow(inputs, targets, weights);
    }
}

/// <summary>
/// Runs many rows through a model in as few forward passes as fit: rows are sorted by length (longest first,
/// so little is padded) and packed into passes of at most <see cref="MaxRows"/> rows and
/// <see cref="MaxTokens"/> padded tokens. Rows of different lengths share a pass right-padded, each with its
/// own key length, so no real token sees a pad or another row, with full attention as with causal. A pass
/// is padded to a multiple of <see cref="LengthStep"/> positions, so a task's passes come in a few shapes
/// whose buffers the device pool reuses instead of a new shape (and a new set of logits) per pass. The
/// cross-entropy is computed on the device; only one number per position comes back.
/// </summary>
public sealed class RowLosses(ILanguageModel model, AttentionMaskMode mode, int maxRows, long maxTokens)
{
    public int MaxRows { get; } = maxRows > 0 ? maxRows : throw new ArgumentOutOfRangeException(nameof(maxRows));
    public long MaxTokens { get; } = maxTokens > 0 ? maxTokens : throw new ArgumentOutOfRangeException(nameof(maxTokens));

    /// <summary>Pass lengths are rounded up to a multiple of this (within the model's positions).</summary>
    public const int LengthStep = 32;

    /// <summary>Forward passes run so far (for reports and tests of the packing).</summary>
    public int Passes { get; private set; }

    /// <summary>Σ weight · CE per row, in order; <paramref name="rowsDone"/> gets the rows finished after each pass.</summary>
    public double[] Run(IReadOnlyList<LossRow> rows, Action<int>? rowsDone = null)
    {
        var result = new double[rows.Count];
        var order = Enumerable.Range(0, rows.Count).OrderByDescending(r => rows[r].Length).ToArray();
        int done = 0;
        for (int start = 0; start < order.Length;)
        {
            int length = Math.Min(model.Positions, (rows[order[start]].Length + LengthStep - 1) / LengthStep * LengthStep), count = 1;
            while (start + count < order.Length && count < MaxRows && (long)(count + 1) * length <= MaxTokens) count++;
            RunPass(rows, order.AsSpan(start, count), length, result);
            start += count;
            done += count;
            rowsDone?.Invoke(done);
        }
        return result;
    }

    void RunPass(IReadOnlyList<LossRow> rows, ReadOnlySpan<int> members, int length, double[] result)
    {
        var d = model.Device;
        int batch = members.Length, positions = batch * length;
        var inputs = new int[positions];
        var targets = new int[positions];
        var weights = new float[positions];
        var lengths = new int[batch];
        for (int b = 0; b < batch; b++)
        {
            var row = rows[members[b]];
            lengths[b] = row.Length;
            row.Inputs.CopyTo(inputs, b * length);
            row.Targets.CopyTo(targets, b * length);
            row.Weights.CopyTo(weights, b * length);
            // Padding: repeat the row's last input (any valid id will do: its weight is 0 and no real token attends to it).
            for (int p = row.Length; p < length; p++) inputs[b * length + p] = row.Inputs[^1];
        }
        using var forward = model.Logits(inputs, batch, length, mode, rowLengths: lengths);
        using var targetTensor = d.FromArray(targets, positions);
        using var weightTensor = d.FromArray(weights, positions);
        using var losses = d.Allocate(DType.F32, positions);
        d.CrossEntropy(forward.Logits, targetTensor, weightTensor, losses, forward.Logits);
        var perPosition = d.ToArray(losses);
        for (int b = 0; b < batch; b++)
        {
            double sum = 0;
            for (int p = 0; p < rows[members[b]].Length; p++) sum += perPosition[b * length + p];
            result[members[b]] = sum;
        }
        Passes++;
    }
}
