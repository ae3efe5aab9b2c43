using System.Text;

namespace DiffuSharp.Eval;

/// <summary>ROUGE-1, ROUGE-2 and ROUGE-L F-measures of one prediction, or their average over a corpus.</summary>
public readonly record struct RougeScores(double Rouge1, double Rouge2, double RougeL);

/// <summary>
/// ROUGE as Hugging Face <c>evaluate</c>'s "rouge" metric computes it with its defaults, which wrap Google's
/// rouge_score package (method §10, the ROCStories infilling metric):
/// <list type="bullet">
/// <item>Tokens: the text lower-cased (Python's <c>str.lower()</c>), every run of characters other than a-z and
/// 0-9 treated as a separator, and the runs of a-z0-9 kept. No stemming. So "Don't" is "don" and "t", and
/// letters outside ASCII separate words rather than join them.</item>
/// <item>ROUGE-N: the clipped n-gram overlap (each n-gram counted at most as often as in the other text);
/// precision = overlap / prediction n-grams, recall = overlap / reference n-grams (each divisor at least 1),
/// F = 2PR / (P + R), or 0 when P + R = 0.</item>
/// <item>ROUGE-L: the same F from the length of the longest common subsequence of the two token lists over
/// the whole text (not rougeLsum's per-line union); 0 when either text has no token.</item>
/// </list>
/// </summary>
public static class Rouge
{
    /// <summary>The ROUGE tokens of a text.</summary>
    public static List<string> Tokenize(string text)
    {
        var tokens = new List<string>();
        var token = new StringBuilder();
        foreach (char c in text)
        {
            // Python lower-cases with full case mapping: the only characters that become ASCII letters or
            // digits are the ASCII capitals, U+212A (Kelvin sign) to "k", and U+0130 (I with dot above) to "i"
            // followed by a combining dot, which ends the token.
            char lower = c switch { '\u0130' => 'i', '\u212A' => 'k', >= 'A' and <= 'Z' => (char)(c + ('a' - 'A')), _ => c };
            bool word = lower is >= 'a' and <= 'z' or >= '0' and <= '9';
            if (word) token.Append(lower);
            if (!word || c == '\u0130') EndToken(tokens, token);
        }
        EndToken(tokens, token);
        return tokens;
    }

    private static void EndToken(List<string> tokens, StringBuilder token)
    {
        if (token.Length == 0) return;
        tokens.Add(token.ToString());
        token.Clear();
    }

    /// <summary>The three F-measures (from 0 to 1) of <paramref name="prediction"/> against <paramref name="reference"/>.</summary>
    public static RougeScores Score(string prediction, string reference)
    {
        var predicted = Tokenize(prediction);
        var expected = Tokenize(reference);
        return new RougeScores(NGramF(predicted, expected, 1), NGramF(predicted, expected, 2), LcsF(predicted, expected));
    }

    /// <summary>
    /// The mean of the per-example F-measures, times 100, as the paper reports them. <c>evaluate</c> by default
    /// reports the median of 1000 bootstrap resamples of that mean (<c>BootstrapAggregator</c>'s "mid"): a
    /// random number within a few hundredths of a point of the mean for 1000 examples, not the mean itself.
    /// </summary>
    public static RougeScores CorpusPercent(IReadOnlyList<string> predictions, IReadOnlyList<string> references)
    {
        if (predictions.Count != references.Count) throw new ArgumentException($"{predictions.Count} predictions for {references.Count} references");
        if (predictions.Count == 0) throw new ArgumentException("no predictions to score");
        double r1 = 0, r2 = 0, rl = 0;
        for (int i = 0; i < predictions.Count; i++)
        {
            var s = Score(predictions[i], references[i]);
            r1 += s.Rouge1;
            r2 += s.Rouge2;
            rl += s.RougeL;
        }
        double scale = 100.0 / predictions.Count;
        return new RougeScores(r1 * scale, r2 * scale, rl * scale);
    }

    private static double NGramF(List<string> predicted, List<string> expected, int n)
    {
        var expectedCounts = Count(expected, n);
        var predictedCounts = Count(predicted, n);
        int overlap = 0;
        foreach (var (gram, count) in expectedCounts)
            if (predictedCounts.TryGetValue(gram, out int other)) overlap += Math.Min(count, other);
        int predictedTotal = Math.Max(predicted.Count - n + 1, 0), expectedTotal = Math.Max(expected.Count - n + 1, 0);
        return F((double)overlap / Math.Max(predictedTotal, 1), (double)overlap / Math.Max(expectedTotal, 1));
    }

    /// <summary>The n-grams of a token list and how often each occurs; an n-gram is its tokens joined by spaces (tokens have none).</summary>
    private static Dictionary<string, int> Count(List<string> tokens, int n)
    {
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i + n <= tokens.Count; i++)
        {
            string gram = string.Join(' ', tokens.GetRange(i, n));
            counts[gram] = counts.GetValueOrDefault(gram) + 1;
        }
        return counts;
    }

    private static double LcsF(List<string> predicted, List<string> expected)
    {
        if (predicted.Count == 0 || expected.Count == 0) return 0;
        // One row of the dynamic-programming table at a time: row[j] = LCS of the expected tokens so far
        // and the first j predicted tokens.
        var previous = new int[predicted.Count + 1];
        var current = new int[predicted.Count + 1];
        foreach (string token in expected)
        {
            for (int j = 1; j <= predicted.Count; j++)
                current[j] = token == predicted[j - 1] ? previous[j - 1] + 1 : Math.Max(previous[j], current[j - 1]);
            (previous, current) = (current, previous);
        }
        int lcs = previous[predicted.Count];
        return F((double)lcs / predicted.Count, (double)lcs / expected.Count);
    }

    private static double F(double precision, double recall) =>
        precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0;
}
