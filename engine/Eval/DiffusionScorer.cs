using DiffuSharp.Kernels;
using DiffuSharp.Models;

namespace DiffuSharp.Eval;

/// <summary>
/// The paper's likelihood scorer (method §9): for t = T..1, mask each maskable token with probability t/T
/// (one draw per t), run the model with full attention, and average the cross-entropy of the masked
/// targets per token, unweighted; the score is the mean over the T rates, lower is better. Masked targets
/// are those the noise hit (not tokens that merely equal the mask id). All T rows of all sequences go
/// through <see cref="RowLosses"/>, so a task runs as a few large forward passes. Draws are Philox keyed by
/// (seed, example, choice, t, position): the same on every device and in every batch.
/// </summary>
public sealed class DiffusionScorer : IChoiceScorer
{
    readonly RowLosses runner;
    readonly int maskTokenId, steps;
    readonly ulong seed;

    public DiffusionScorer(ILanguageModel model, int maskTokenId, int steps, ulong seed, int maxRows, long maxTokens)
    {
        if ((uint)maskTokenId >= (uint)model.VocabSize) throw new DiffuException($"mask token {maskTokenId} is outside the vocabulary [0, {model.VocabSize})");
        if (steps < 1) throw new DiffuException($"the scorer needs at least one step, got {steps}");
        runner = new RowLosses(model, AttentionMaskMode.Bidirectional, maxRows, maxTokens);
        this.maskTokenId = maskTokenId;
        this.steps = steps;
        this.seed = seed;
    }

    public string Name => "diffusion";

    public int Passes => runner.Passes;

    public double[] Score(IReadOnlyList<ScoringSequence> sequences, Action<int>? progress = null)
    {
        var rows = new List<LossRow>(sequences.Count * steps);
        var counts = new int[sequences.Count * steps];
        foreach (var s in sequences)
            for (int t = steps; t >= 1; t--)
            {
                var masked = Mask(seed, s, t, (double)t / steps);
                counts[rows.Count] = masked.Count(m => m);
                rows.Add(Row(s, masked, maskTokenId, 1f));
            }
        var losses = runner.Run(rows, done => progress?.Invoke(done / steps));
        var scores = new double[sequences.Count];
        for (int s = 0; s < sequences.Count; s++)
        {
            double total = 0;
            for (int k = 0; k < steps; k++)
            {
                int r = s * steps + k;
                total += counts[r] == 0 ? 0 : losses[r] / counts[r];
            }
            scores[s] = total / steps;
        }
        return scores;
    }

    /// <summary>The positions masked at rate <paramref name="rate"/> for draw <paramref name="draw"/>: maskable ones whose uniform falls below the rate.</summary>
    public static bool[] Mask(ulong seed, ScoringSequence s, int draw, double rate)
    {
        var masked = new bool[s.Length];
        ulong key = ((ulong)(uint)s.Choice << 48) | ((ulong)(uint)draw << 32);
        for (int p = 1; p < s.Length; p++)
            masked[p] = s.Maskable[p] && Philox.Uniform(seed, (ulong)s.Example, key | (uint)p) < rate;
        return masked;
    }

    /// <summary>The row that scores <paramref name="masked"/>: those positions read the mask token and their original tokens are the targets.</summary>
    public static LossRow Row(ScoringSequence s, bool[] masked, int maskTokenId, float weight)
    {
        var inputs = new int[s.Length];
        for (int p = 0; p < inputs.Length; p++) inputs[p] = masked[p] ? maskTokenId : s.Ids[p];
        return LossRow.Shifted(inputs, s.Ids, masked, weight);
    }
}
