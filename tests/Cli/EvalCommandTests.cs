using System.Text.Json;
using DiffuSharp.Eval;
using DiffuSharp.Tests.Models;

namespace DiffuSharp.Tests.CliTests;

/// <summary>`diffu eval` end to end on the GPT-2 fixture and on stories260K (LLaMA): every task, both scorer families, the files it writes.</summary>
public sealed class EvalCommandTests
{
    string temp = null!;

    static string EvalData => Path.Combine(TestUtil.SharedData, "eval");

    [SetUp]
    public void SetUp() => temp = Directory.CreateTempSubdirectory("diffu-evalcli-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(temp, recursive: true);

    static string[] Gpt2(params string[] extra) =>
        ["eval", "--model", Gpt2FixtureTests.FixtureDir, "--tokenizer", CliRun.Gpt2Tokenizer, "--eval-data", EvalData, "--device", "cpu", .. extra];

    static List<JsonElement> Predictions(string dir) =>
        File.ReadLines(Path.Combine(dir, "predictions.jsonl")).Select(line => JsonDocument.Parse(line).RootElement).ToList();

    [TestCase("diffusion")]
    [TestCase("elbo")]
    [TestCase("ar")]
    public void EveryTaskRunsAndWritesResultsAndPredictions(string scorer)
    {
        var outDir = Path.Combine(temp, scorer);
        var (code, output, err) = CliRun.Run(Gpt2("--mask-token", "3", "--scorer", scorer, "--task", "lambada,hellaswag,piqa,siqa,rocstories,gsm8k",
            "--limit", "2", "--steps", "3", "--samples", "2", "--out", outDir));
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(output, Does.Contain("hellaswag").And.Contain("rouge2"));
        using var results = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "results.json")));
        var tasks = results.RootElement.GetProperty("tasks");
        foreach (var name in new[] { "lambada", "hellaswag", "piqa", "siqa", "rocstories", "gsm8k" })
        {
            Assert.That(tasks.GetProperty(name).GetProperty("n").GetInt32(), Is.EqualTo(2), name);
            Assert.That(tasks.GetProperty(name).GetProperty("settings").GetProperty("scorer").GetString(), Is.EqualTo(scorer), name);
        }
        Assert.That(results.RootElement.GetProperty("scorer").GetString(), Is.EqualTo(scorer));

        var rows = Predictions(outDir);
        Assert.That(rows, Has.Count.EqualTo(12));
        foreach (var row in rows)
            foreach (var field in new[] { "task", "index", "gold", "prediction" })
                Assert.That(row.TryGetProperty(field, out _), $"{field} in {row}");
        var choices = new Dictionary<string, int> { ["hellaswag"] = 4, ["piqa"] = 2, ["siqa"] = 3 };
        foreach (var row in rows.Where(r => choices.ContainsKey(r.GetProperty("task").GetString()!)))
        {
            var scores = row.GetProperty("scores").EnumerateArray().Select(s => s.GetDouble()).ToArray();
            Assert.That(scores, Has.Length.EqualTo(choices[row.GetProperty("task").GetString()!]));
            int best = Array.IndexOf(scores, scores.Min());
            Assert.That(row.GetProperty("correct").GetBoolean(), Is.EqualTo(row.GetProperty("prediction").GetString() == row.GetProperty("gold").GetString()
                || scores.Count(s => s == scores[best]) > 1), "correct is whether the lowest score's choice is the gold one");
        }
        double accuracy = tasks.GetProperty("piqa").GetProperty("metrics").GetProperty("accuracy").GetDouble();
        Assert.That(accuracy, Is.EqualTo(100.0 * rows.Count(r => r.GetProperty("task").GetString() == "piqa" && r.GetProperty("correct").GetBoolean()) / 2));
    }

    /// <summary>AR LAMBADA as method §10 states it, computed here directly: greedy decoding of as many tokens as the passage has beyond its prefix.</summary>
    [Test]
    public void ArLambadaDecodesTheTargetsTokenCountGreedily()
    {
        var outDir = Path.Combine(temp, "ar");
        Assert.That(CliRun.Run(Gpt2("--scorer", "ar", "--task", "lambada", "--limit", "4", "--out", outDir)).Code, Is.EqualTo(0));
        var tokenizer = DiffuSharp.Text.Gpt2Tokenizer.FromDirectory(CliRun.Gpt2Tokenizer, 512)!;
        using var device = new DiffuSharp.Runtime.CpuDevice();
        using var model = DiffuSharp.Models.ModelLoader.Load(Gpt2FixtureTests.FixtureDir, device);
        var decoder = new DiffuSharp.Models.ArDecoder(model);
        var examples = Lambada.Load(EvalData, 4);
        foreach (var row in Predictions(outDir))
        {
            var example = examples[row.GetProperty("index").GetInt32()];
            var prefix = tokenizer.Encode(example.Prefix).ToArray();
            int n = tokenizer.Encode(example.Text).Count - prefix.Length;
            var kept = prefix.Length + n > model.Positions ? prefix[^(model.Positions - n)..] : prefix;
            Assert.That(row.GetProperty("prediction").GetString(), Is.EqualTo(tokenizer.Decode(decoder.Generate(kept, n, 0f, 0))));
            Assert.That(row.GetProperty("gold").GetString(), Is.EqualTo(example.Target));
        }
    }

    [Test]
    public void LlamaModelsRunBothFamiliesOfScorer()
    {
        string model = Path.Combine(temp, "stories260K"), llama2c = Path.Combine(TestUtil.SharedData, "llama2c");
        Assert.That(CliRun.Run("convert", "llama2c", Path.Combine(llama2c, "stories260K.bin"), Path.Combine(llama2c, "tok512.bin"), model).Code, Is.EqualTo(0));
        foreach (var scorer in new[] { "ar", "diffusion" })
        {
            var (code, _, err) = CliRun.Run("eval", "--model", model, "--eval-data", EvalData, "--device", "cpu", "--mask-token", "3", "--scorer", scorer,
                "--task", "lambada,piqa,rocstories,gsm8k", "--limit", "2", "--steps", "2", "--out", Path.Combine(temp, scorer));
            Assert.That(code, Is.EqualTo(0), err);
            Assert.That(Predictions(Path.Combine(temp, scorer)), Has.Count.EqualTo(8));
        }
    }

    [Test]
    public void UnconditionalQualityHasOneRowOfMetricsPerStepCountAndAPlot()
    {
        var outDir = Path.Combine(temp, "unconditional");
        var (code, output, err) = CliRun.Run(Gpt2("--mask-token", "3", "--task", "unconditional", "--judge", Gpt2FixtureTests.FixtureDir,
            "--samples", "3", "--length", "12", "--steps", "2,4", "--out", outDir));
        Assert.That(code, Is.EqualTo(0), err);
        using var results = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "results.json")));
        var metrics = results.RootElement.GetProperty("tasks").GetProperty("unconditional").GetProperty("metrics");
        foreach (var t in new[] { 2, 4 })
            foreach (var name in new[] { "gen_ppl", "distinct1", "distinct2", "distinct3", "entropy" })
                Assert.That(metrics.GetProperty($"{name}@T{t}").GetDouble(), Is.GreaterThan(0), $"{name}@T{t}");
        Assert.That(File.ReadAllBytes(Path.Combine(outDir, "unconditional.png")).Take(4), Is.EqualTo(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }));
        Assert.That(Predictions(outDir), Has.Count.EqualTo(6));
    }

    [Test]
    public void EarlierResultsAndMissingDataAreRefusedBeforeAnyWork()
    {
        var outDir = Path.Combine(temp, "once");
        string[] args = Gpt2("--mask-token", "3", "--task", "piqa", "--limit", "1", "--steps", "2", "--out", outDir);
        Assert.That(CliRun.Run(args).Code, Is.EqualTo(0));
        var before = File.ReadAllBytes(Path.Combine(outDir, "results.json"));
        var (code, _, err) = CliRun.Run(args);
        Assert.That(code, Is.EqualTo(2));
        Assert.That(err, Does.Contain("results.json").And.Contain("--overwrite"));
        Assert.That(File.ReadAllBytes(Path.Combine(outDir, "results.json")), Is.EqualTo(before));
        Assert.That(CliRun.Run([.. args, "--overwrite"]).Code, Is.EqualTo(0));

        var empty = Directory.CreateDirectory(Path.Combine(temp, "no-data")).FullName;
        (code, var output, err) = CliRun.Run("eval", "--model", Gpt2FixtureTests.FixtureDir, "--tokenizer", CliRun.Gpt2Tokenizer, "--mask-token", "3",
            "--task", "piqa,gsm8k", "--eval-data", empty, "--device", "cpu");
        Assert.That(code, Is.EqualTo(2));
        Assert.That(err, Does.Contain(Path.Combine(empty, "piqa")).And.Contain("not found"));
        Assert.That(output, Is.Empty);

        (code, _, err) = CliRun.Run(Gpt2("--task", "piqa", "--limit", "1"));
        Assert.That(code, Is.EqualTo(0), "auto picks the AR scorer for a config without mask_token_id: " + err);
        (code, _, err) = CliRun.Run(Gpt2("--task", "piqa", "--limit", "1", "--scorer", "diffusion"));
        Assert.That(code, Is.EqualTo(2));
        Assert.That(err, Does.Contain("--mask-token"));
    }
}
