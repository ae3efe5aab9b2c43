using DiffuSharp.Kernels;
using DiffuSharp.Models;

namespace DiffuSharp.Eval;

/// <summary>
/// A Monte-Carlo bound on −log p(choice | context), as LLaDA and Dream score multiple choice: K samples at
/// stratified noise levels t_k = (k + u) / K (one u per sequence, t floored at the training objective's
/// 1e-3), each maskable token masked with probability t_k, and Σ (1/t_k) CE over the masked targets (the
/// shift kept); the score is the mean over the K samples: an estimate of an upper bound on the choice's
/// negative log-likelihood in nats, summed over its tokens (not averaged), lower is better.
/// </summary>
public sealed class ElboScorer : IChoiceScorer
{
    const float NoiseFloor = 1e-3f;
    const ulong LevelStream = 0x656c626f;

    readonly RowLosses runner;
    readonly int maskTokenId, samples;
    readonly ulong seed;

    public ElboScorer(ILanguageModel model, int maskTokenId, int samples, ulong seed, int maxRows, long maxTokens)
    {
        if ((uint)maskTokenId >= (uint)model.VocabSize) throw new DiffuException($"mask token {maskTokenId} is outside the vocabulary [0, {model.VocabSize})");
        if (samples < 1) throw new DiffuException($"the ELBO scorer needs at least one sample, got {samples}");
        runner = new RowLosses(model, AttentionMaskMode.Bidirectional, maxRows, maxTokens);
        this.maskTokenId = maskTokenId;
        this.samples = samples;
        this.seed = seed;
    }

    public string Name => "elbo";

    public double[] Score(IReadOnlyList<ScoringSequence> sequences, Action<int>? progress = null)
    {
        var rows = new List<LossRow>(sequences.Count * samples);
        foreach (var s in sequences)
        {
            double u = Philox.Uniform(seed ^ LevelStream, (ulong)s.Example, (ulong)(uint)s.Choice);
            for (int k = 0; k < samples; k++)
            {
                float t = Math.Max(NoiseFloor, (float)((k + 1 - u) / samples));
                rows.Add(DiffusionScorer.Row(s, DiffusionScorer.Mask(seed, s, k, t), maskTokenId, 1f / t));
            }
        }
        var losses = runner.Run(rows, done => progress?.Invoke(done / samples));
        var scores = new double[sequences.Count];
        for (int s = 0; s < sequences.Count; s++)
        {
            double total = 0;
            for (int k = 0; k < samples; k++) total += losses[s * samples + k];
            scores[s] = total / samples;
        }
        return scores;
    }
}
