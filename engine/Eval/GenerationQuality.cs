using DiffuSharp.Kernels;
using DiffuSharp.Models;

namespace DiffuSharp.Eval;

/// <summary>Diversity of a set of samples (token ids): what the paper's Fig. 3 plots beside the generative perplexity.</summary>
public static class Diversity
{
    /// <summary>Distinct-n (Li et al. 2016): distinct n-grams over all n-grams of all samples; 0 when there are none.</summary>
    public static double DistinctN(IReadOnlyList<int[]> samples, int n)
    {
        if (n < 1) throw new ArgumentOutOfRangeException(nameof(n));
        var seen = new HashSet<string>(StringComparer.Ordinal);
        long total = 0;
        foreach (var s in samples)
            for (int i = 0; i + n <= s.Length; i++)
            {
                seen.Add(string.Join(',', s.AsSpan(i, n).ToArray()));
                total++;
            }
        return total == 0 ? 0 : (double)seen.Count / total;
    }

    /// <summary>The entropy (nats) of each sample's own token frequencies, averaged over the samples: low when a sample repeats itself.</summary>
    public static double MeanTokenEntropy(IReadOnlyList<int[]> samples)
    {
        if (samples.Count == 0) return 0;
        double sum = 0;
        foreach (var s in samples)
        {
            if (s.Length == 0) continue;
            foreach (var count in s.GroupBy(t => t).Select(g => g.Count()))
            {
                double p = (double)count / s.Length;
                sum -= p * Math.Log(p);
            }
        }
        return sum / samples.Count;
    }
}

/// <summary>
/// Generative perplexity: exp of the judge model's mean next-token cross-entropy over every token of the
/// samples, each sample read causally after the judge's start token (the samples are the judge's own token
/// ids: re-encode text first when the tokenizers differ).
/// </summary>
public sealed class GenerativePerplexity(ILanguageModel judge, int startToken, int maxRows, long maxTokens)
{
    readonly RowLosses runner = new(judge, AttentionMaskMode.Causal, maxRows, maxTokens);

    public double Of(IReadOnlyList<int[]> samples)
    {
        var rows = new List<LossRow>();
        long tokens = 0;
        foreach (var sample in samples.Where(s => s.Length > 0))
        {
            var ids = new int[sample.Length + 1];
            ids[0] = startToken;
            sample.CopyTo(ids, 1);
            if (ids.Length > judge.Positions)
                throw new DiffuException($"a sample of {sample.Length} tokens does not fit the judge's {judge.Positions} positions");
            var scored = Enumerable.Range(0, ids.Length).Select(p => p > 0).ToArray();
            rows.Add(LossRow.Shifted(ids, ids, scored, 1f));
            tokens += sample.Length;
        }
        if (tokens == 0) throw new DiffuException("no sample has any token to judge");
        return Math.Exp(runner.Run(rows).Sum() / tokens);
    }
}
