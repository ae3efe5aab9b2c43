using System.Text.Json;
using System.Text.RegularExpressions;
using DiffuSharp.Eval;

namespace DiffuSharp.Tests.Eval;

/// <summary>LAMBADA exact match and GSM8K answer accuracy, the latter checked on the paper authors' own predictions.</summary>
public sealed class EvalMetricTests
{
    [TestCase("signs", "signs", true)]
    [TestCase(" signs", "signs", true)]
    [TestCase("signs\n", "signs", true)]
    [TestCase("\u00A0signs\u3000", "signs", true)]
    [TestCase("Signs", "signs", false)]
    [TestCase("signs.", "signs", false)]
    [TestCase("sign s", "signs", false)]
    [TestCase("", "signs", false)]
    public void LambadaExactMatchStripsThePrediction(string prediction, string target, bool expected) =>
        Assert.That(Lambada.IsExactMatch(prediction, target), Is.EqualTo(expected));

    [TestCase("<<2+1=3>> #### 3", "3")]
    [TestCase("#### 1,234,567 ", "1234567")]
    [TestCase("a #### 1 #### 2", "2")]
    [TestCase("##### 7", "# 7")]
    [TestCase("#### ", "")]
    [TestCase("no answer", null)]
    public void FinalAnswerIsTheTextAfterTheLastMarker(string text, string? expected) =>
        Assert.That(Gsm8k.FinalAnswer(text), Is.EqualTo(expected));

    [TestCase("#### 18", "#### 18", true)]
    [TestCase("#### 12.00", "#### 12", false)]
    [TestCase("#### 40.", "#### 40", false)]
    [TestCase("#### -3", "#### -3.0", false)]
    [TestCase("#### 1,000", "#### 1000", true)]
    [TestCase("  ####  5 \n", "#### 5", true)]
    [TestCase("#### 17", "#### 18", false)]
    [TestCase("#### $18", "#### 18", false)]
    [TestCase("#### 9/9", "#### 1", false)]
    [TestCase("<<### 144", "#### 144", false)]
    [TestCase("#### ", "#### 7", false)]
    [TestCase("#### abc", "#### abc", true)]
    public void Gsm8kComparesTheNormalisedAnswersAsText(string prediction, string gold, bool expected) =>
        Assert.That(Gsm8k.IsCorrect(prediction, gold), Is.EqualTo(expected));

    [Test]
    public void Gsm8kGoldWithoutAnswerIsACallerError() =>
        Assert.Throws<ArgumentException>(() => Gsm8k.IsCorrect("#### 1", "1"));

    /// <summary>
    /// The authors' DiffuGPT-M predictions (shared/data/paper_ref): 1319 rows of {predict, label}, both the
    /// prompt followed by the model's or the gold's answer. Counted here independently: the text at the end of
    /// each row after "####" by a regular expression, commas removed, compared as text. The metric must agree:
    /// 815 right, 61.79%, the paper's Table 1 figure of 61.8 (comparing as numbers would count two more, "40."
    /// for 40 and "12.00" for 12).
    /// </summary>
    [Test]
    public void AuthorsDiffuGptMediumPredictionsScoreAsTheirRowsImply()
    {
        var rows = File.ReadLines(Path.Combine(TestUtil.SharedData, "paper_ref", "DiffuGPT-m-GSM-results.jsonl"))
            .Select(line => JsonDocument.Parse(line).RootElement)
            .Select(row => (Predict: row.GetProperty("predict").GetString()!, Label: row.GetProperty("label").GetString()!))
            .ToList();
        Assert.That(rows, Has.Count.EqualTo(1319));

        var final = new Regex(@"####\s*(\S*)\s*$");
        string? Text(string text) => final.Match(text) is { Success: true } m ? m.Groups[1].Value.Replace(",", "") : null;
        int textMatches = rows.Count(r => Text(r.Predict) is { } p && p == Text(r.Label));

        int correct = rows.Count(r => Gsm8k.IsCorrect(r.Predict, r.Label));
        double accuracy = Gsm8k.AccuracyPercent([.. rows.Select(r => r.Predict)], [.. rows.Select(r => r.Label)]);
        TestContext.Out.WriteLine($"DiffuGPT-M GSM8K: {correct}/1319 = {accuracy:F2}%");
        Assert.That(correct, Is.EqualTo(textMatches));
        Assert.That(correct, Is.EqualTo(815));
        Assert.That(accuracy, Is.EqualTo(100.0 * 815 / 1319).Within(1e-12));
        Assert.That(Math.Round(accuracy, 1), Is.EqualTo(61.8), "the paper's Table 1 figure for DiffuGPT-M");
    }
}
