using System.Text.Json.Nodes;
using DiffuSharp.Bench;
using DiffuSharp.Eval;
using DiffuSharp.Runtime;
using DiffuSharp.Text;

namespace DiffuSharp.Tests.Bench;

/// <summary>
/// The `eval` suite's end-to-end row: HellaSwag scored with the paper's likelihood scorer (T = 32), in
/// examples/s. It is planned only when asked for, reads and tokenizes the examples as `diffu eval` does,
/// hands PyTorch the same ids, runs end to end at --quick sizes, and fails its own row alone when the data
/// or the tokenizer is missing.
/// </summary>
public sealed class BenchEvalTests
{
    static string EvalData => Path.Combine(TestUtil.SharedData, "eval");
    static string Gpt2Bpe => Path.Combine(TestUtil.SharedData, "tokenizers", "gpt2");

    static BenchOptions Quick(params string[] suites) =>
        new() { Suites = suites, Quick = true, EvalData = EvalData, Tokenizer = Gpt2Bpe };

    string temp = null!;

    [SetUp]
    public void SetUp() => temp = Directory.CreateTempSubdirectory("diffu-bench-eval-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(temp, recursive: true);

    [Test]
    public void TheEvalCaseIsPlannedOnlyWhenItsSuiteIsAskedFor()
    {
        using var device = new CpuDevice();
        var cases = BenchPlan.Create(device, Quick("eval"), null, null);
        Assert.That(cases.Select(c => (c.Id, c.Suite)), Is.EqualTo(new[] { ("eval.hellaswag.gpt2", "eval") }));
        Assert.That(cases[0].Unit, Is.EqualTo(BenchUnit.ExamplesPerSecond));
        Assert.That(cases[0].Flops, Is.GreaterThan(0), "model FLOPs give the % ceiling column");
        Assert.That(cases[0].Torch!["kind"]!.GetValue<string>(), Is.EqualTo("eval_scoring"));
        Assert.That(BenchPlan.Create(device, Quick("norm", "train", "denoise"), null, null).Select(c => c.Suite), Has.None.EqualTo("eval"));
        Assert.That(BenchPlan.Create(device, new BenchOptions { Quick = true, EvalData = EvalData, Tokenizer = Gpt2Bpe }, null, null)
            .Count(c => c.Suite == "eval"), Is.EqualTo(1), "the suites by default are all of them");
    }

    /// <summary>An example is 4 choices × 32 rates: the rate is examples over seconds, and PyTorch gets the 4 sequences
    /// of each example with the ids `diffu eval` encodes (context then choice, the choice scored).</summary>
    [Test]
    public void TheRowCountsExamplesAndPassesTheirIdsToPyTorch()
    {
        using var device = new CpuDevice();
        var c = BenchPlan.Create(device, Quick("eval") with { EvalExamples = 3 }, null, null).Single();
        Assert.That(c.Examples, Is.EqualTo(3));
        Assert.That(c.Shape, Does.StartWith("N3 T32 "));
        Assert.That(c.Rate(1.5), Is.EqualTo(2.0));
        var spec = c.Torch!;
        Assert.That(spec["steps"]!.GetValue<int>(), Is.EqualTo(BenchPlan.ScoringSteps).And.EqualTo(32));
        var sequences = spec["sequences"]!.AsArray();
        Assert.That(sequences.Select(s => s!["example"]!.GetValue<int>()), Is.EqualTo(new[] { 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2 }));

        var example = HellaSwag.Load(EvalData, 1)[0];
        var tokenizer = Gpt2Tokenizer.FromDirectory(Gpt2Bpe, BenchPlan.EndToEndModel(quick: true).VocabSize)!;
        var context = tokenizer.Encode(example.Context);
        var choice = tokenizer.Encode(example.Choices[2]);
        Assert.That(sequences[2]!["ids"]!.AsArray().Select(i => i!.GetValue<int>()), Is.EqualTo(context.Concat(choice)));
        Assert.That(sequences[2]!["scored_from"]!.GetValue<int>(), Is.EqualTo(context.Count));
    }

    /// <summary>Fewer examples in the file than asked for: the row counts the ones it scores.</summary>
    [Test]
    public void AShortFileIsCountedByWhatItHolds()
    {
        var folder = Directory.CreateDirectory(Path.Combine(temp, "hellaswag")).FullName;
        File.WriteAllLines(Path.Combine(folder, "hellaswag_val_full.txt"),
        [
            "Cooking: A man cracks an egg into a bowl.", "1", "He eats the shell.", "He whisks the egg.", "He paints the bowl.", "He sings.",
            "Running: A woman ties her shoes", "0", "She starts to jog.", "She flies away.", "She eats the shoes.", "She sleeps.",
        ]);
        using var device = new CpuDevice();
        var c = BenchPlan.Create(device, Quick("eval") with { EvalData = temp, EvalExamples = 5 }, null, null).Single();
        Assert.That(c.Examples, Is.EqualTo(2));
        Assert.That(c.Shape, Does.StartWith("N2 "));
        Assert.That(c.Torch!["sequences"]!.AsArray(), Has.Count.EqualTo(8));
    }

    /// <summary>--quick scores a couple of examples on the tiny GPT-2 in seconds and reports a rate and a model FLOPs share.</summary>
    [Test]
    public void QuickRunsTheRowEndToEnd()
    {
        using var device = new CpuDevice();
        var report = BenchRunner.Run(device, Quick("eval"), new BenchSettings(Repeat: 2, BudgetSeconds: 0.01, Torch: false));
        var row = report.Rows.Single();
        Assert.That(row.OursError, Is.Null);
        Assert.That(row.Unit, Is.EqualTo("examples/s"));
        Assert.That(row.Ours!.Rate, Is.GreaterThan(0));
        Assert.That(row.Ours.Share, Is.GreaterThan(0).And.LessThan(1));
    }

    /// <summary>Data or a tokenizer that is not there fails the eval row with the reason; the other rows still run.
    /// Folders given by hand that do not exist are refused before anything runs.</summary>
    [Test]
    public void MissingDataOrTokenizerFailsTheRowAlone()
    {
        using var device = new CpuDevice();
        var settings = new BenchSettings(Repeat: 1, BudgetSeconds: 0.01, Torch: false);
        var noData = BenchRunner.Run(device, Quick("eval", "rope") with { EvalData = temp }, settings);
        var eval = noData.Rows.Single(r => r.Suite == "eval");
        Assert.That(eval.Ours, Is.Null);
        Assert.That(eval.OursError, Does.Contain(Path.Combine(temp, HellaSwag.FileName)).And.Contain("not found").And.Contain("--eval-data"));
        Assert.That(noData.Rows.Single(r => r.Suite == "rope").Ours!.Rate, Is.GreaterThan(0));

        var noTokenizer = BenchRunner.Run(device, Quick("eval") with { Tokenizer = temp }, settings).Rows.Single();
        Assert.That(noTokenizer.OursError, Does.Contain(temp).And.Contain("no GPT-2 BPE files").And.Contain("--tokenizer"));

        foreach (var options in new[] { Quick("eval") with { EvalData = Path.Combine(temp, "missing") }, Quick("eval") with { Tokenizer = "/dev/null" } })
            Assert.That(() => BenchPlan.Create(device, options, null, null), Throws.InstanceOf<DiffuException>().With.Message.Contain("folder"));
    }
}
