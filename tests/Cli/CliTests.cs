using DiffuSharp.Cli;
using DiffuSharp.IO;
using DiffuSharp.Tests.Models;

namespace DiffuSharp.Tests.CliTests;

/// <summary>The `diffu` commands run in-process on the PyTorch fixture: outputs, and exit codes for bad input.</summary>
public sealed class CliTests
{
    string temp = null!;

    [SetUp]
    public void SetUp() => temp = Directory.CreateTempSubdirectory("diffu-cli-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(temp, recursive: true);

    static (int Code, string Out, string Err) Run(params string[] args) => CliRun.Run(args);

    static string Fixture => Gpt2FixtureTests.FixtureDir;
    static string Gpt2Tokenizer => Path.Combine(TestUtil.SharedData, "tokenizers", "gpt2");

    [Test]
    public void InfoListsConfigTensorsAndParameterCount()
    {
        var (code, output, _) = Run("info", Fixture);
        Assert.That(code, Is.EqualTo(0));
        Assert.That(output, Does.Contain("transformer.h.1.attn.c_attn.weight").And.Contain("BF16").And.Contain("F16"));
        using var checkpoint = SafeTensorsCheckpoint.Open(Fixture);
        long total = checkpoint.Tensors.Sum(t => t.ElementCount);
        Assert.That(output, Does.Contain($"{total:N0} parameters"));
    }

    [TestCase(false, "logits_causal")]
    [TestCase(true, "logits_bidirectional")]
    public void LogitsReproducePyTorch(bool bidirectional, string reference)
    {
        using var expected = SafeTensorsFile.Open(Path.Combine(Fixture, "expected.safetensors"));
        var ids = expected.ReadInt32("ids");
        int length = expected.Info("ids").Shape[1];
        int vocab = expected.Info(reference).Shape[2];
        var first = ids.AsSpan(0, length).ToArray();
        var outPath = Path.Combine(temp, "logits.safetensors");
        var args = new List<string> { "logits", "--model", Fixture, "--ids", string.Join(",", first), "--out", outPath, "--device", "cpu" };
        if (bidirectional) args.Add("--bidirectional");
        var (code, _, err) = Run(args.ToArray());
        Assert.That(code, Is.EqualTo(0), err);
        using var written = SafeTensorsFile.Open(outPath);
        Assert.That(written.Info("logits").Shape, Is.EqualTo(new[] { length, vocab }));
        var want = expected.ReadFloat32(reference).AsSpan(0, length * vocab);
        Assert.That(TestUtil.RelativeL2(written.ReadFloat32("logits"), want), Is.LessThan(1e-4));
    }

    [Test]
    public void GreedyArGenerationPrintsPromptAndContinuation()
    {
        var (code, output, err) = Run("generate", "--model", Fixture, "--tokenizer", Gpt2Tokenizer, "--prompt", "Once upon a time",
            "--ar", "--max-new", "8", "--temperature", "0", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(output, Does.StartWith("Once upon a time"));
        Assert.That(output.Length, Is.GreaterThan("Once upon a time".Length + 1), "a continuation must follow the prompt");
        Assert.That(err, Does.Contain("8 tokens").And.Contain("tokens/s"));
        var again = Run("generate", "--model", Fixture, "--tokenizer", Gpt2Tokenizer, "--prompt", "Once upon a time",
            "--ar", "--max-new", "8", "--temperature", "0", "--device", "cpu");
        Assert.That(again.Out, Is.EqualTo(output), "greedy decoding is deterministic");
    }

    [Test]
    public void SampledGenerationIsReproducibleForASeed()
    {
        string[] args = ["generate", "--model", Fixture, "--tokenizer", Gpt2Tokenizer, "--prompt", "The", "--ar", "--max-new", "10", "--seed", "7", "--device", "cpu"];
        Assert.That(Run(args).Out, Is.EqualTo(Run(args).Out));
    }

    [Test]
    public void BenchReportsMatmulThroughputForBothLayouts()
    {
        var (code, output, err) = Run("bench", "--suite", "matmul", "--shapes", "33x17x65", "--repeat", "2", "--reference", "none", "--quick", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(output, Does.Contain("33 x 17 x 65").And.Contain("x·wᵀ").And.Contain("x·w ").And.Contain("GFLOP/s").And.Contain("ceilings:"));
        Assert.That(Run("bench", "--shapes", "33x17", "--device", "cpu").Code, Is.EqualTo(2));
        Assert.That(Run("bench", "--suite", "matmul,frobnicate", "--device", "cpu").Code, Is.EqualTo(2));
        Assert.That(Run("bench", "--squares", "0", "--device", "cpu").Code, Is.EqualTo(2));
    }

    /// <summary>A case that cannot run (here a matmul too large for any array) is reported in its row and on
    /// stderr, the other cases still run, and the exit code says the table is incomplete.</summary>
    [Test]
    public void AFailingCaseIsReportedAndTheOthersRun()
    {
        string json = Path.Combine(temp, "bench.json");
        var (code, output, err) = Run("bench", "--suite", "matmul", "--shapes", "200000x200000x200000,16x16x16", "--quick", "--repeat", "2",
            "--reference", "none", "--device", "cpu", "--json", json);
        Assert.That(code, Is.EqualTo(1));
        Assert.That(err, Does.Contain("matmul.200000x200000x200000.kn").And.Contain("DeviceMemoryException"));
        var rows = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(json))!["rows"]!.AsArray();
        Assert.That(rows.Count(r => r!["ours_error"] is not null), Is.EqualTo(2));
        Assert.That(rows.Count(r => r!["ours"]?["rate"]?.GetValue<double>() > 0), Is.EqualTo(2));
        Assert.That(output, Does.Contain("16 x 16 x 16"));
    }

    /// <summary>Every suite at --quick sizes: a row per case with a positive rate and ceiling share, the JSON
    /// file and the plots.</summary>
    [Test]
    public void QuickBenchCoversEverySuiteAndWritesJsonAndPlots()
    {
        string json = Path.Combine(temp, "bench.json"), plots = Path.Combine(temp, "plots"), markdown = Path.Combine(temp, "bench.md");
        var (code, output, err) = Run("bench", "--quick", "--repeat", "2", "--budget", "0.01", "--reference", "none", "--device", "cpu",
            "--eval-data", Path.Combine(TestUtil.SharedData, "eval"), "--tokenizer", Gpt2Tokenizer, "--json", json, "--plots", plots, "--markdown", markdown);
        Assert.That(code, Is.EqualTo(0), err);
        var report = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(json))!;
        var rows = report["rows"]!.AsArray();
        Assert.That(rows.Select(r => r!["suite"]!.GetValue<string>()).Distinct(), Is.EquivalentTo(DiffuSharp.Bench.BenchPlan.SuiteNames));
        foreach (var row in rows)
        {
            Assert.That(row!["ours"]!["rate"]!.GetValue<double>(), Is.GreaterThan(0), row["id"]!.ToString());
            Assert.That(row["ours"]!["share"]!.GetValue<double>(), Is.GreaterThan(0), row["id"]!.ToString());
        }
        Assert.That(report["ceilings"]!["peak_gflops"]!.GetValue<double>(), Is.GreaterThan(0));
        Assert.That(output, Does.Contain("tokens/s").And.Contain("examples/s").And.Contain("GB/s"));
        var table = File.ReadAllLines(markdown).Where(l => l.StartsWith("| ") && !l.StartsWith("| suite")).ToList();
        Assert.That(table, Has.Count.EqualTo(rows.Count), "one Markdown row per case");
        Assert.That(Run("bench", "--quick", "--markdown", Path.Combine(temp, "missing", "b.md"), "--device", "cpu").Code, Is.EqualTo(2));
        foreach (var png in new[] { "matmul_squares.png", "attention.png" })
            Assert.That(new FileInfo(Path.Combine(plots, png)).Length, Is.GreaterThan(1000), png);
    }

    [Test]
    public void TensorCorePrecisionOffCudaIsAClearError()
    {
        string output = Path.Combine(temp, "logits.safetensors");
        var (code, _, err) = Run("logits", "--model", Fixture, "--ids", "1,2", "--out", output, "--device", "cpu", "--precision", "tf32");
        Assert.That(code, Is.EqualTo(2));
        Assert.That(err, Does.Contain("tensor cores").And.Contain("cpu"));
        Assert.That(File.Exists(output), Is.False);
        Assert.That(Run("bench", "--precision", "fp64", "--device", "cpu").Code, Is.EqualTo(2));
        Assert.That(Run("logits", "--model", Fixture, "--ids", "1,2", "--out", output, "--device", "cpu", "--precision", "f32").Code, Is.EqualTo(0));
    }

    /// <summary>
    /// --out replaces an existing regular file, but nothing that is not one (as root, the rename replaced the
    /// /dev/full node with a file, and a FIFO too) and none of the model's own files.
    /// </summary>
    [Test]
    public void LogitsReplacesRegularFilesOnly()
    {
        string output = Path.Combine(temp, "logits.safetensors");
        string[] args = ["logits", "--model", Fixture, "--ids", "1,2", "--device", "cpu", "--out"];
        Assert.That(Run([.. args, output]).Code, Is.EqualTo(0));
        var again = Run([.. args, output]);
        Assert.That(again.Code, Is.EqualTo(0), again.Err);
        string fifo = IO.OutputFileTests.MakeFifo(Path.Combine(temp, "pipe"));
        string modelFile = Path.Combine(Fixture, "model.safetensors");
        long modelBytes = new FileInfo(modelFile).Length;
        foreach (var target in new[] { "/dev/full", "/dev/null", fifo, temp, modelFile, " " })
        {
            var (code, _, err) = Run([.. args, target]);
            Assert.That(code, Is.EqualTo(2), target);
            Assert.That(err.TrimEnd().Split('\n'), Has.Length.EqualTo(1), err);
        }
        Assert.That(FileStatus.Kind("/dev/full"), Is.EqualTo(FileKind.CharacterDevice));
        Assert.That(FileStatus.Kind(fifo), Is.EqualTo(FileKind.Fifo));
        Assert.That(new FileInfo(modelFile).Length, Is.EqualTo(modelBytes));
        Assert.That(Directory.GetFiles(temp).Select(Path.GetFileName), Is.EquivalentTo(new[] { "logits.safetensors", "pipe" }));
    }

    /// <summary>Bench outputs are checked before the run: a FIFO for --json, a folder where a plot goes, two outputs in one file.</summary>
    [Test]
    public void BenchRefusesBadOutputsBeforeRunning()
    {
        string fifo = IO.OutputFileTests.MakeFifo(Path.Combine(temp, "pipe"));
        string plots = Directory.CreateDirectory(Path.Combine(temp, "plots")).FullName;
        Directory.CreateDirectory(Path.Combine(plots, "attention.png"));
        string json = Path.Combine(temp, "b.json");
        string[] quick = ["bench", "--suite", "norm", "--quick", "--repeat", "1", "--reference", "none", "--device", "cpu"];
        foreach (var extra in new[] { new[] { "--json", fifo }, ["--markdown", "/dev/full"], ["--plots", plots], ["--json", json, "--markdown", json] })
        {
            var (code, output, err) = Run([.. quick, .. extra]);
            Assert.That(code, Is.EqualTo(2), string.Join(" ", extra) + ": " + err);
            Assert.That(err.TrimEnd().Split('\n'), Has.Length.EqualTo(1), err);
            Assert.That(output, Does.Not.Contain("LayerNorm"), "refused before measuring");
        }
        Assert.That(FileStatus.Kind(fifo), Is.EqualTo(FileKind.Fifo));
        Assert.That(File.Exists(json), Is.False);
    }

    /// <summary>
    /// Bench options are checked before anything is measured: a Python that cannot be started (Process.Start threw
    /// after the whole run), sizes past the plan's int arithmetic ("negative dimension"), end-to-end rows longer than
    /// their model or larger than memory. A huge --repeat is fine: the budget stops the timing.
    /// </summary>
    [Test]
    public void BenchChecksItsOptionsBeforeMeasuring()
    {
        string[] quick = ["bench", "--quick", "--device", "cpu", "--budget", "0.001"];
        string script = Path.Combine(temp, "script.txt");
        File.WriteAllText(script, "not a program");
        foreach (var extra in new[]
        {
            new[] { "--suite", "norm", "--python", Path.Combine(temp, "nonexistent") },
            ["--suite", "norm", "--python", "/dev/null"],
            ["--suite", "norm", "--python", temp],
            ["--suite", "norm", "--python", script],
            ["--suite", "norm", "--python", "no-such-python-anywhere"],
            ["--suite", "norm", "--tokens", "2147483647"],
            ["--suite", "matmul", "--squares", "2147483647"],
            ["--suite", "matmul", "--shapes", "2x2147483647x2"],
            ["--suite", "attention", "--lengths", "1,2147483647"],
            ["--suite", "train", "--train-length", "257"],
            ["--suite", "train", "--train-batch", "1000000", "--train-length", "256"],
            ["--suite", "denoise", "--denoise-length", "257"],
            ["--suite", "denoise", "--denoise-steps", "2147483647"],
            ["--suite", "eval", "--eval-examples", "2147483647"],
            ["--suite", "eval", "--eval-data", Path.Combine(temp, "nonexistent")],
            ["--suite", "eval", "--tokenizer", script],
        })
        {
            var (code, output, err) = Run([.. quick, .. extra]);
            Assert.That(code, Is.EqualTo(2), string.Join(" ", extra) + ": " + err);
            Assert.That(err.TrimEnd().Split('\n'), Has.Length.EqualTo(1), err);
            Assert.That(output, Is.Empty, "refused before measuring");
        }
        var (ok, _, okErr) = Run([.. quick, "--suite", "norm", "--reference", "none", "--tokens", "16", "--repeat", "2147483647"]);
        Assert.That(ok, Is.EqualTo(0), okErr);
    }

    /// <summary>A FIFO named like a model or tokenizer file would block its reader forever: refused before anything opens it.</summary>
    [Test]
    public void SpecialFilesInModelAndTokenizerFoldersAreRefused()
    {
        string model = Directory.CreateDirectory(Path.Combine(temp, "model")).FullName;
        File.Copy(Path.Combine(Fixture, "model.safetensors"), Path.Combine(model, "model.safetensors"));
        IO.OutputFileTests.MakeFifo(Path.Combine(model, "config.json"));
        string tokenizer = Directory.CreateDirectory(Path.Combine(temp, "tokenizer")).FullName;
        File.Copy(Path.Combine(Gpt2Tokenizer, "vocab.bpe"), Path.Combine(tokenizer, "vocab.bpe"));
        IO.OutputFileTests.MakeFifo(Path.Combine(tokenizer, "encoder.json"));
        File.WriteAllText(Path.Combine(temp, "in.txt"), "text");
        foreach (var args in new[]
        {
            new[] { "info", model },
            ["logits", "--model", model, "--ids", "1", "--out", Path.Combine(temp, "o.safetensors"), "--device", "cpu"],
            ["generate", "--model", model, "--device", "cpu", "--mask-token", "3"],
            ["generate", "--model", Fixture, "--tokenizer", tokenizer, "--device", "cpu", "--mask-token", "3"],
            ["tokenize", "--tokenizer", tokenizer, "--out", Path.Combine(temp, "o.tok"), Path.Combine(temp, "in.txt")],
        })
        {
            var run = Task.Run(() => Run(args));
            Assert.That(run.Wait(TimeSpan.FromSeconds(20)), Is.True, $"{string.Join(" ", args)}: the FIFO must not be opened");
            Assert.That(run.Result.Code, Is.EqualTo(2), run.Result.Err);
            Assert.That(run.Result.Err, Does.Contain("FIFO"));
        }
    }

    [TestCase("info")]
    [TestCase("logits", "--model", "x")]
    [TestCase("generate", "--model", "x", "--prompt", "hi", "--ar", "--max-new", "many")]
    [TestCase("frobnicate")]
    public void BadArgumentsExitWithCode2(params string[] args)
    {
        var (code, _, err) = Run(args);
        Assert.That(code, Is.EqualTo(2));
        Assert.That(err, Does.Contain("error"));
    }

    [Test]
    public void BadInputFilesExitWithCode2AndOneLine()
    {
        var missing = Path.Combine(temp, "nope");
        var (code, _, err) = Run("logits", "--model", missing, "--ids", "1,2", "--out", Path.Combine(temp, "o.safetensors"), "--device", "cpu");
        Assert.That(code, Is.EqualTo(2));
        Assert.That(err.Trim().Split('\n'), Has.Length.EqualTo(1));
        Assert.That(err, Does.Contain(missing));

        var broken = Path.Combine(temp, "broken.safetensors");
        File.WriteAllBytes(broken, [1, 2, 3]);
        (code, _, err) = Run("info", broken);
        Assert.That(code, Is.EqualTo(2));
        Assert.That(err, Does.Contain(broken));
    }

    [Test]
    public void TextFileAsWeightsIsNotASafetensorsFile()
    {
        string path = Path.Combine(temp, "model.safetensors");
        File.WriteAllText(path, "hello world\nsecond line\n");
        var (code, _, err) = Run("info", path);
        Assert.That(code, Is.EqualTo(2), err);
        Assert.That(err.TrimEnd().Split('\n'), Has.Length.EqualTo(1), err);
        Assert.That(err, Does.StartWith($"error: {path}: not a safetensors file").And.Contain("it starts with \"hello wo\""));
    }

    [Test]
    public void ShardNameWithNulExitsWithTwoAndOneLine()
    {
        File.WriteAllText(Path.Combine(temp, SafeTensorsCheckpoint.IndexFileName), """{"weight_map": {"x": "a\u0000b"}}""");
        var (code, _, err) = Run("info", temp);
        Assert.That(code, Is.EqualTo(2), err);
        Assert.That(err.TrimEnd().Split('\n'), Has.Length.EqualTo(1), err);
        Assert.That(err, Does.StartWith("error: ").And.Contain(SafeTensorsCheckpoint.IndexFileName).And.Contain("\"a\\u0000b\""));
    }

    [Test]
    public void OutOfVocabularyIdsAndUnknownDeviceAreBadInput()
    {
        var outPath = Path.Combine(temp, "o.safetensors");
        Assert.That(Run("logits", "--model", Fixture, "--ids", "1,99999", "--out", outPath, "--device", "cpu").Code, Is.EqualTo(2));
        Assert.That(Run("logits", "--model", Fixture, "--ids", "1,x", "--out", outPath, "--device", "cpu").Code, Is.EqualTo(2));
        Assert.That(Run("logits", "--model", Fixture, "--ids", "1,2", "--out", outPath, "--device", "tpu").Code, Is.EqualTo(2));
        Assert.That(File.Exists(outPath), Is.False, "nothing is written when the input is bad");
    }

    [Test]
    public void DiffusionGenerationCompletesAndInfills()
    {
        var (code, output, err) = Run("generate", "--model", Fixture, "--tokenizer", Gpt2Tokenizer, "--prompt", "Once upon", "--length", "6",
            "--steps", "3", "--mask-token", "3", "--seed", "2", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(output, Does.StartWith("Once upon"));
        Assert.That(err, Does.Contain("6 tokens").And.Contain("3 steps").And.Contain("forward").And.Contain("selection"));

        (code, output, err) = Run("generate", "--model", Fixture, "--tokenizer", Gpt2Tokenizer, "--infill", "The <mask:3> sat.", "--steps", "3",
            "--mask-token", "3", "--sampler", "maxprob", "--temperature", "0", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(output.TrimEnd(), Does.StartWith("The").And.EndWith(" sat."));

        (code, output, _) = Run("generate", "--model", Fixture, "--tokenizer", Gpt2Tokenizer, "--length", "5", "--steps", "5", "--batch", "3",
            "--mask-token", "3", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0));
        Assert.That(output, Does.Contain("--- sample 3"));
    }

    [Test]
    public void BadDiffusionArgumentsExitWithCode2()
    {
        string[] common = ["generate", "--model", Fixture, "--tokenizer", Gpt2Tokenizer, "--device", "cpu"];
        Assert.That(Run([.. common, "--mask-token", "3", "--sampler", "nope"]).Code, Is.EqualTo(2));
        Assert.That(Run([.. common, "--mask-token", "3", "--top-p", "0"]).Code, Is.EqualTo(2));
        Assert.That(Run([.. common, "--mask-token", "3", "--steps", "0"]).Code, Is.EqualTo(2));
        Assert.That(Run([.. common, "--mask-token", "3", "--infill", "no placeholder"]).Code, Is.EqualTo(2));
        Assert.That(Run([.. common, "--mask-token", "3", "--infill", "a <mask:2>", "--prompt", "b"]).Code, Is.EqualTo(2));
        Assert.That(Run([.. common, "--mask-token", "3", "--length", "100"]).Code, Is.EqualTo(2), "longer than the model's 64 positions");
        Assert.That(Run([.. common, "--mask-token", "600"]).Code, Is.EqualTo(2));
    }
}
