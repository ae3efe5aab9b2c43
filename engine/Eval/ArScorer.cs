using DiffuSharp.Kernels;
using DiffuSharp.Models;

namespace DiffuSharp.Eval;

/// <summary>
/// The AR baselines' multiple-choice score (method §10): minus the mean log-probability of the choice tokens
/// given everything before them, under causal attention; lower is better, so the answer is the argmin here as
/// for the diffusion scorers (the argmax of the mean log-probability).
/// </summary>
public sealed class ArScorer(ILanguageModel model, int maxRows, long maxTokens) : IChoiceScorer
{
    readonly RowLosses runner = new(model, AttentionMaskMode.Causal, maxRows, maxTokens);

    public string Name => "ar";

    public double[] Score(IReadOnlyList<ScoringSequence> sequences, Action<int>? progress = null)
    {
        var rows = new List<LossRow>(sequences.Count);
        var counts = new int[sequences.Count];
        foreach (var s in sequences)
        {
            counts[rows.Count] = s.Maskable.Skip(1).Count(m => m);
            rows.Add(LossRow.Shifted(s.Ids, s.Ids, s.Maskable, 1f));
        }
        var losses = runner.Run(rows, progress);
        return losses.Select((loss, i) => counts[i] == 0 ? 0 : loss / counts[i]).ToArray();
    }
}
