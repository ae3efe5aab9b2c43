using System.Text.Json;
using DiffuSharp.Data;
using DiffuSharp.Tests.CliTests;

namespace DiffuSharp.Tests.Data;

/// <summary>GSM8K's worked answers in the paper's symbolic form: hand cases, and GSM8K's test split against the paper's own file.</summary>
public sealed class Gsm8kSymbolicTests
{
    [TestCase("She has 48/2 = <<48/2=24>>24 clips.\nThen 48+24 = <<48+24=72>>72.\n#### 72", "<<48/2=24>> <<48+24=72>> #### 72")]
    [TestCase("No arithmetic needed.\n#### 5", " #### 5")]
    [TestCase("<<2*3=6>>6 and #### inside\n#### 1,000", "<<2*3=6>> #### 1,000")]
    public void WorkedAnswersBecomeTheirCalculationsAndTheAnswer(string answer, string symbolic) =>
        Assert.That(Gsm8kSymbolic.Convert(answer), Is.EqualTo(symbolic));

    [TestCase("<<1+1=2>>2 but no final answer")]
    [TestCase("<<1+1=2>>2\n####   ")]
    public void AnAnswerWithoutAFinalAnswerIsNotConverted(string answer) => Assert.That(Gsm8kSymbolic.Convert(answer), Is.Null);

    /// <summary>The paper's test file (gsm_test_diffullama.json) was made from GSM8K's test split: every output is reproduced.</summary>
    [Test]
    public void TheTestSplitGivesThePapersFile()
    {
        var result = Gsm8kSymbolic.ConvertFile(Path.Combine(TestUtil.SharedData, "eval", "gsm8k", "test.jsonl"));
        using var paper = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(TestUtil.SharedData, "eval", "gsm_test_diffullama.json")));
        var outputs = paper.RootElement.EnumerateArray().Select(e => e.GetProperty("output").GetString()).ToList();
        Assert.That((result.Rows, result.Pairs.Count, result.WithoutAnswer), Is.EqualTo((1319, 1319, 0)));
        Assert.That(result.Pairs.Select(p => p.Target), Is.EqualTo(outputs));
        Assert.That(result.WithoutCalculations, Is.EqualTo(outputs.Count(o => !o!.Contains("<<"))));
    }

    [Test]
    public void TheFileWrittenIsAnSftFileAndBadRowsNameTheirLine()
    {
        string dir = Directory.CreateTempSubdirectory("diffu-gsm-").FullName;
        try
        {
            string input = Path.Combine(dir, "in.jsonl"), output = Path.Combine(dir, "out.json");
            File.WriteAllLines(input, ["""{"question": "Q’s 1?", "answer": "x <<1+1=2>>2\n#### 2"}""", "", """{"question": "Q2", "answer": "none"}"""]);
            var (code, stdout, err) = CliRun.Run("data", "gsm8k-symbolic", input, "--out", output);
            Assert.That(code, Is.EqualTo(0), err);
            Assert.That(stdout, Does.Contain("2 rows, converted 1 (50.0%)").And.Contain("left out 1 without a final answer"));
            var pairs = SftFile.Read(output);
            Assert.That(pairs.Select(p => (p.Source, p.Target)), Is.EqualTo(new[] { ("Q’s 1?", "<<1+1=2>> #### 2") }));
            Assert.That(CliRun.Run("data", "gsm8k-symbolic", input, "--out", output).Code, Is.EqualTo(2), "an existing --out needs --overwrite");

            File.AppendAllText(input, """{"question": "Q3"}""" + "\n");
            (code, _, err) = CliRun.Run("data", "gsm8k-symbolic", input, "--out", output, "--overwrite");
            Assert.That(code, Is.EqualTo(2));
            Assert.That(err, Does.Contain($"{input}: line 4: field 'answer' must be a non-empty string"));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
