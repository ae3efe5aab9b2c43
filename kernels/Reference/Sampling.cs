namespace DiffuSharp.Kernels.Reference;

/// <summary>
/// Token sampling in float64, done the plain way: each row's ids are sorted by probability, the top-k and top-p cuts
/// are read off the sorted list, and the kept tokens are renormalised and walked in id order. It is the oracle for the
/// fast samplers, so it favours obviousness over speed (a sort and a few arrays per call).
/// </summary>
public static class Sampling
{
    /// <summary>
    /// tokens[r] and stats[r, 0..<see cref="SamplingOptions.StatCount"/>) for each row of logits [rows, vocab], as
    /// <see cref="SamplingOptions"/> defines them. The points the options leave open, which every flavour follows:
    /// greedy (temperature 0) ignores top-k and top-p and reports the stats of softmax(z) unfiltered; top-p measures
    /// mass in the distribution already cut by top-k and renormalised (the cuts compose, top-k first); probability
    /// order is scaled-logit order, so ties are exact logit ties; when rounding leaves the cumulative sum at or below u
    /// after the last kept token, the last kept token of nonzero probability is drawn. A row without a finite maximum
    /// (all −∞, or holding a NaN or +∞) has no distribution and is an <see cref="ArgumentException"/>.
    /// </summary>
    public static void SampleTokens(ReadOnlySpan<double> logits, int rows, int vocab, in SamplingOptions options,
        ulong seed, ulong stream, Span<int> tokens, Span<double> stats, SampleRows keys = default)
    {
        options.Validate();
        if (vocab <= 0) throw new ArgumentOutOfRangeException(nameof(vocab), vocab, "vocab must be positive");
        var scaled = new double[vocab];
        var p = new double[vocab];
        var order = new int[vocab];
        var kept = new bool[vocab];
        double temperature = options.Greedy ? 1 : options.Temperature;
        for (int r = 0; r < rows; r++)
        {
            var row = logits.Slice(r * vocab, vocab);
            double max = double.NegativeInfinity;
            for (int c = 0; c < vocab; c++)
            {
                scaled[c] = row[c] / temperature;
                max = Math.Max(max, scaled[c]);
            }
            if (!double.IsFinite(max)) throw new ArgumentException($"row {r} of the logits has no finite maximum (all -inf, or a NaN or +inf)", nameof(logits));
            double sum = 0;
            for (int c = 0; c < vocab; c++) sum += Math.Exp(scaled[c] - max);
            for (int c = 0; c < vocab; c++)
            {
                p[c] = Math.Exp(scaled[c] - max) / sum;
                order[c] = c;
            }
            Array.Sort(order, (a, b) => scaled[a] != scaled[b] ? scaled[b].CompareTo(scaled[a]) : a.CompareTo(b));

            int keepCount = vocab;
            if (!options.Greedy)
            {
                if (options.TopK > 0 && options.TopK < vocab)
                {
                    double kth = scaled[order[options.TopK - 1]];
                    keepCount = options.TopK;
                    while (keepCount < vocab && scaled[order[keepCount]] == kth) keepCount++;
                }
                if (options.TopP < 1)
                {
                    double mass = 0;
                    for (int j = 0; j < keepCount; j++) mass += p[order[j]];
                    double target = options.TopP * mass, cumulative = 0;
                    for (int j = 0; j < keepCount; j++)
                    {
                        cumulative += p[order[j]];
                        bool endOfTies = j + 1 == keepCount || scaled[order[j + 1]] != scaled[order[j]];
                        if (cumulative >= target && endOfTies)
                        {
                            keepCount = j + 1;
                            break;
                        }
                    }
                }
            }
            Array.Clear(kept);
            double keptMass = 0;
            for (int j = 0; j < keepCount; j++)
            {
                kept[order[j]] = true;
                keptMass += p[order[j]];
            }

            int token = order[0];
            if (!options.Greedy)
            {
                double u = Philox.Uniform(seed, stream, keys.Key(r)), cumulative = 0;
                token = -1;
                for (int c = 0; c < vocab && token < 0; c++)
                {
                    if (!kept[c]) continue;
                    cumulative += p[c] / keptMass;
                    if (cumulative > u) token = c;
                }
                for (int c = vocab - 1; token < 0; c--)
                    if (kept[c] && p[c] > 0) token = c;
            }
            tokens[r] = token;

            double negEntropy = 0;
            for (int c = 0; c < vocab; c++)
            {
                double q = p[c] / keptMass;
                if (kept[c] && q > 0) negEntropy += q * Math.Log(q);
            }
            double top1 = p[order[0]] / keptMass;
            double top2 = keepCount > 1 ? p[order[1]] / keptMass : 0;
            var s = stats.Slice(r * SamplingOptions.StatCount, SamplingOptions.StatCount);
            s[SamplingOptions.LogProb] = Math.Log(p[token] / keptMass);
            s[SamplingOptions.MaxProb] = top1;
            s[SamplingOptions.Margin] = top1 - top2;
            s[SamplingOptions.NegEntropy] = negEntropy;
        }
    }
}
