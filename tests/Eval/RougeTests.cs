using System.Text.Json;
using DiffuSharp.Eval;

namespace DiffuSharp.Tests.Eval;

/// <summary>
/// ROUGE against tests/fixtures/eval/rouge_cases.json, written by tests/reference/rouge_reference.py, an
/// independent Python implementation from the definitions (see its header): hand-made pairs that probe the
/// tokenizer and the counting, and real ROCStories middles against perturbed copies.
/// </summary>
public sealed class RougeTests
{
    private static readonly Lazy<JsonElement> Fixture = new(() =>
        JsonDocument.Parse(File.ReadAllText(Path.Combine(TestUtil.Fixtures, "eval", "rouge_cases.json"))).RootElement);

    private static IEnumerable<JsonElement> Cases => Fixture.Value.GetProperty("cases").EnumerateArray();

    [Test]
    public void EveryCaseMatchesTheReference()
    {
        int n = 0;
        foreach (var c in Cases)
        {
            string prediction = c.GetProperty("prediction").GetString()!, reference = c.GetProperty("reference").GetString()!;
            var s = Rouge.Score(prediction, reference);
            string what = $"prediction \"{prediction}\" vs reference \"{reference}\"";
            Assert.That(s.Rouge1, Is.EqualTo(c.GetProperty("rouge1").GetDouble()).Within(1e-9), what);
            Assert.That(s.Rouge2, Is.EqualTo(c.GetProperty("rouge2").GetDouble()).Within(1e-9), what);
            Assert.That(s.RougeL, Is.EqualTo(c.GetProperty("rougeL").GetDouble()).Within(1e-9), what);
            n++;
        }
        Assert.That(n, Is.GreaterThanOrEqualTo(58));
    }

    [Test]
    public void CorpusScoreIsTheMeanTimes100()
    {
        var predictions = Cases.Select(c => c.GetProperty("prediction").GetString()!).ToList();
        var references = Cases.Select(c => c.GetProperty("reference").GetString()!).ToList();
        var corpus = Rouge.CorpusPercent(predictions, references);
        var expected = Fixture.Value.GetProperty("corpus_percent");
        Assert.That(corpus.Rouge1, Is.EqualTo(expected.GetProperty("rouge1").GetDouble()).Within(1e-9));
        Assert.That(corpus.Rouge2, Is.EqualTo(expected.GetProperty("rouge2").GetDouble()).Within(1e-9));
        Assert.That(corpus.RougeL, Is.EqualTo(expected.GetProperty("rougeL").GetDouble()).Within(1e-9));
        Assert.Throws<ArgumentException>(() => Rouge.CorpusPercent(["a"], []));
        Assert.Throws<ArgumentException>(() => Rouge.CorpusPercent([], []));
    }

    [TestCase("Don't stop-believing!", new[] { "don", "t", "stop", "believing" })]
    [TestCase("Caf\u00E9 \u00DCBER 42nd", new[] { "caf", "ber", "42nd" })]
    [TestCase("\u0130STANBUL \u212Aelvin", new[] { "i", "stanbul", "kelvin" })]
    [TestCase("...", new string[0])]
    [TestCase("", new string[0])]
    public void TokensAreLowercaseAsciiAlphanumericRuns(string text, string[] expected) =>
        Assert.That(Rouge.Tokenize(text), Is.EqualTo(expected));

    [Test]
    public void RougeLUsesTheLongestCommonSubsequence()
    {
        // LCS of "a b c d e" and "a x c y e" is "a c e": P = R = 3/5.
        Assert.That(Rouge.Score("a x c y e", "a b c d e").RougeL, Is.EqualTo(0.6).Within(1e-12));
        Assert.That(Rouge.Score("a x c y e", "a b c d e").Rouge2, Is.EqualTo(0));
    }
}
