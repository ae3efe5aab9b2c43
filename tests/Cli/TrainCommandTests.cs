using System.Text.Json;
using DiffuSharp.IO;
using DiffuSharp.Models;
using DiffuSharp.Tests.Models;
using DiffuSharp.Training;

namespace DiffuSharp.Tests.CliTests;

/// <summary>`diffu tokenize` + `diffu train` end to end on the PyTorch fixture (vocabulary 512), in-process.</summary>
public sealed class TrainCommandTests
{
    string temp = null!;
    string shard = null!;

    static string Tokenizer => CliRun.Gpt2Tokenizer;

    [SetUp]
    public void SetUp()
    {
        temp = Directory.CreateTempSubdirectory("diffu-traincli-").FullName;
        shard = CliRun.StoriesShard(temp);
    }

    [TearDown]
    public void TearDown() => Directory.Delete(temp, recursive: true);

    static (int Code, string Out, string Err) Run(params string[] args) => CliRun.Run(args);

    [Test]
    public void AdaptsTheFixtureIntoADiffusionModelAndResumes()
    {
        var outDir = Path.Combine(temp, "run");
        var (code, output, err) = Run("train", "--init", Gpt2FixtureTests.FixtureDir, "--tokenizer", Tokenizer, "--data", shard,
            "--objective", "diffusion", "--mask-token", "3", "--anneal-steps", "3", "--steps", "4", "--batch", "2", "--seq-len", "32",
            "--eval-every", "2", "--eval-batches", "1", "--lr", "1e-3", "--out", outDir, "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(output, Does.Contain("step 4/4"));
        var checkpoint = Path.Combine(outDir, "checkpoints", "step-00000004");
        Assert.That(Directory.GetDirectories(Path.Combine(outDir, "checkpoints")), Is.EqualTo(new[] { checkpoint }), "--keep 1: only the newest checkpoint stays");
        foreach (var file in new[] { "model.safetensors", "config.json", "training_state.safetensors", "vocab.json", "merges.txt" })
            Assert.That(File.Exists(Path.Combine(checkpoint, file)), file);
        foreach (var file in new[] { "train_log.jsonl", "loss.png" })
            Assert.That(File.Exists(Path.Combine(outDir, file)), file);
        Assert.That(File.ReadAllBytes(Path.Combine(outDir, "loss.png")).Take(4), Is.EqualTo(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }));
        using (var config = JsonDocument.Parse(File.ReadAllText(Path.Combine(checkpoint, "config.json"))))
            Assert.That(config.RootElement.GetProperty("mask_token_id").GetInt32(), Is.EqualTo(3));
        var lines = File.ReadAllLines(Path.Combine(outDir, "train_log.jsonl"));
        Assert.That(lines, Has.Length.EqualTo(5), "step 0 (validation only) and steps 1-4");
        using (var row = JsonDocument.Parse(lines[1]))
            foreach (var field in new[] { "step", "loss", "lr", "tokens_per_s" })
                Assert.That(row.RootElement.TryGetProperty(field, out _), field);
        using (var row = JsonDocument.Parse(lines[2]))
            Assert.That(row.RootElement.GetProperty("val_loss").GetDouble(), Is.GreaterThan(0));

        (code, _, err) = Run("train", "--resume", outDir, "--steps", "6", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        var log = Trainer.ReadLog(Path.Combine(outDir, "train_log.jsonl"));
        Assert.That(log.Select(r => r.Step), Is.EqualTo(new long[] { 0, 1, 2, 3, 4, 5, 6 }));

        (code, output, err) = Run("generate", "--model", outDir, "--prompt", "Once", "--ar", "--max-new", "3", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(output, Does.StartWith("Once"));
    }

    [Test]
    public void SavesSixteenBitCheckpointsThatLoadAsSuchAndResumeAsFloat32()
    {
        var outDir = Path.Combine(temp, "bf16");
        var (code, _, err) = Run("train", "--init", Gpt2FixtureTests.FixtureDir, "--tokenizer", Tokenizer, "--data", shard, "--mask-token", "3",
            "--steps", "2", "--batch", "2", "--seq-len", "16", "--eval-every", "2", "--eval-batches", "1", "--save-dtype", "bf16", "--out", outDir, "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        var checkpoint = Path.Combine(outDir, "checkpoints", "step-00000002");
        using (var file = SafeTensorsFile.Open(Path.Combine(checkpoint, "model.safetensors")))
            Assert.That(file.Tensors.Select(t => t.DType), Is.All.EqualTo(SafeTensorsDType.BF16));

        (code, _, err) = Run("generate", "--model", outDir, "--prompt", "Once", "--ar", "--max-new", "2", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(err, Does.Contain("as bf16").And.Contain("resident memory"), "auto loads the checkpoint's type and says so");

        (code, _, err) = Run("train", "--resume", outDir, "--steps", "3", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), "a full run resumes from bf16 checkpoints into float32 master weights: " + err);
    }

    [Test]
    public void AFullRunOnSixteenBitWeightsIsRefusedWithTheWayOut()
    {
        var (code, _, err) = Run("train", "--init", Gpt2FixtureTests.FixtureDir, "--tokenizer", Tokenizer, "--data", shard, "--mask-token", "3",
            "--steps", "1", "--weights", "bf16", "--out", Path.Combine(temp, "refused"), "--device", "cpu");
        Assert.That(code, Is.EqualTo(2));
        Assert.That(err, Does.Contain("float32 master weights").And.Contain("--lora-rank"));
        Assert.That(Directory.Exists(Path.Combine(temp, "refused")), Is.False, "nothing written");
    }

    [Test]
    public void AppendsANewMaskTokenWhenAsked()
    {
        var outDir = Path.Combine(temp, "new-mask");
        var (code, _, err) = Run("train", "--init", Gpt2FixtureTests.FixtureDir, "--tokenizer", Tokenizer, "--data", shard, "--mask-token", "new",
            "--steps", "1", "--batch", "2", "--seq-len", "16", "--eval-every", "1", "--eval-batches", "1", "--out", outDir, "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        using var config = JsonDocument.Parse(File.ReadAllText(Path.Combine(RunLayout.LatestCheckpoint(outDir)!, "config.json")));
        Assert.That(config.RootElement.GetProperty("vocab_size").GetInt32(), Is.EqualTo(513));
        Assert.That(config.RootElement.GetProperty("mask_token_id").GetInt32(), Is.EqualTo(512));
    }

    [Test]
    public void RecipesSetTheOptionsNotGiven()
    {
        var outDir = Path.Combine(temp, "recipe");
        var (code, _, err) = Run("train", "--init", Gpt2FixtureTests.FixtureDir, "--tokenizer", Tokenizer, "--data", shard, "--mask-token", "3",
            "--recipe", "no-anneal", "--steps", "1", "--batch", "2", "--seq-len", "16", "--eval-every", "1", "--eval-batches", "1", "--out", outDir, "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        var options = Checkpoint.LoadOptions(outDir);
        Assert.That((options.AnnealSteps, options.LearningRate, options.Decay, options.WarmupSteps), Is.EqualTo((0L, 2e-5, LearningRateDecay.Constant, 0L)));

        (code, _, err) = Run("train", "--init", Gpt2FixtureTests.FixtureDir, "--tokenizer", Tokenizer, "--data", shard, "--mask-token", "3",
            "--recipe", "annealed", "--lr", "1e-3", "--steps", "1", "--batch", "2", "--seq-len", "16", "--eval-every", "1", "--eval-batches", "1", "--out", outDir + "2", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        options = Checkpoint.LoadOptions(outDir + "2");
        Assert.That((options.AnnealSteps, options.LearningRate, options.Decay, options.WarmupSteps), Is.EqualTo((10_000L, 1e-3, LearningRateDecay.Cosine, 2_000L)));
    }

    [Test]
    public void AdaptsAConvertedLlamaAndResumesIdentically()
    {
        string llama2c = Path.Combine(TestUtil.SharedData, "llama2c"), model = Path.Combine(temp, "stories260K");
        Assert.That(Run("convert", "llama2c", Path.Combine(llama2c, "stories260K.bin"), Path.Combine(llama2c, "tok512.bin"), model).Code, Is.EqualTo(0));
        var text = Path.Combine(temp, "stories.txt");
        var llamaShard = Path.Combine(temp, "stories512.tok");
        var (code, _, err) = Run("tokenize", "--tokenizer", Path.Combine(llama2c, "tok512.bin"), "--out", llamaShard, text);
        Assert.That(code, Is.EqualTo(0), err);
        // A constant schedule: the cosine one depends on --steps, so a shorter first run would follow another curve.
        string[] common = ["--objective", "diffusion", "--mask-token", "new", "--batch", "2", "--seq-len", "32", "--eval-every", "2",
            "--eval-batches", "1", "--lr", "1e-3", "--schedule", "constant", "--device", "cpu"];
        string full = Path.Combine(temp, "full"), split = Path.Combine(temp, "split");
        Assert.That(Run(["train", "--init", model, "--data", llamaShard, "--steps", "4", "--out", full, .. common]).Code, Is.EqualTo(0));
        Assert.That(Run(["train", "--init", model, "--data", llamaShard, "--steps", "2", "--out", split, .. common]).Code, Is.EqualTo(0));
        (code, _, err) = Run("train", "--resume", split, "--steps", "4", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        var a = Trainer.ReadLog(Path.Combine(full, Trainer.LogFile));
        var b = Trainer.ReadLog(Path.Combine(split, Trainer.LogFile));
        Assert.That(b.Select(r => (r.Step, r.Loss, r.ValLoss)), Is.EqualTo(a.Select(r => (r.Step, r.Loss, r.ValLoss))));
        Assert.That(File.Exists(Path.Combine(RunLayout.LatestCheckpoint(full)!, "tokenizer.bin")), "the llama2.c vocabulary travels with the checkpoint");

        (code, var output, err) = Run("generate", "--model", full, "--prompt", "Once upon a time", "--length", "8", "--steps", "4", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(output, Does.StartWith("Once upon a time"));
    }

    /// <summary>Without --mask-token a run from a diffusion model keeps that model's [MASK]; from one without, the paper's id is refused when the vocabulary lacks it.</summary>
    [Test]
    public void TheMaskTokenDefaultsToTheInitModels()
    {
        string first = Path.Combine(temp, "first"), second = Path.Combine(temp, "second");
        string[] common = ["train", "--tokenizer", Tokenizer, "--data", shard, "--steps", "1", "--batch", "2", "--seq-len", "16", "--eval-batches", "1", "--device", "cpu"];
        var (code, _, err) = Run([.. common, "--init", Gpt2FixtureTests.FixtureDir, "--out", first]);
        Assert.That(code, Is.EqualTo(2));
        Assert.That(err, Does.Contain("--mask-token 10541 is outside the model's vocabulary [0, 512)"));
        (code, _, err) = Run([.. common, "--init", Gpt2FixtureTests.FixtureDir, "--mask-token", "7", "--out", first]);
        Assert.That(code, Is.EqualTo(0), err);
        (code, _, err) = Run([.. common, "--init", first, "--out", second]);
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(Checkpoint.LoadOptions(second).MaskTokenId, Is.EqualTo(7));
    }

    /// <summary>SFT pairs (method §5): trains with the query never noised, resumes as if never stopped, and refuses a bad row before any work.</summary>
    [Test]
    public void FineTunesOnSftPairsAndResumesIdentically()
    {
        string pairs = Path.Combine(temp, "pairs.jsonl");
        File.WriteAllLines(pairs, Enumerable.Range(1, 12).Select(i => $$"""{"src": "What is {{i}} plus {{i + 1}}?", "tgt": "<<{{i}}+{{i + 1}}={{2 * i + 1}}>> #### {{2 * i + 1}}"}"""));
        string[] common = ["train", "--init", Gpt2FixtureTests.FixtureDir, "--tokenizer", Tokenizer, "--sft", pairs, "--cutoff", "48", "--mask-token", "3",
            "--recipe", "sft", "--warmup", "1", "--schedule", "constant", "--batch", "2", "--eval-every", "2", "--eval-batches", "1", "--val-fraction", "0.2", "--device", "cpu"];
        string full = Path.Combine(temp, "sft-full"), split = Path.Combine(temp, "sft-split");
        var (code, _, err) = Run([.. common, "--steps", "4", "--out", full]);
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(err, Does.Contain("sft: 12 pairs").And.Contain("cutoff 48, 0 truncated"));
        Assert.That(Run([.. common, "--steps", "2", "--out", split]).Code, Is.EqualTo(0));
        (code, _, err) = Run("train", "--resume", split, "--steps", "4", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        var a = Trainer.ReadLog(Path.Combine(full, Trainer.LogFile));
        var b = Trainer.ReadLog(Path.Combine(split, Trainer.LogFile));
        Assert.That(a.Where(r => r.Step > 0).Select(r => r.Loss), Has.All.GreaterThan(0), "every batch has answer tokens to learn");
        Assert.That(b.Select(r => (r.Step, r.Loss, r.ValLoss)), Is.EqualTo(a.Select(r => (r.Step, r.Loss, r.ValLoss))));
        Assert.That(Checkpoint.LoadOptions(full).Sft, Is.EqualTo(new SftTokens(0, 0, 0, 0)), "the vocabulary-limited GPT-2 BPE has no end-of-text: id 0 serves");

        File.AppendAllText(pairs, "{\"src\": \"x\"}\n");
        string refused = Path.Combine(temp, "sft-refused");
        (code, _, err) = Run([.. common, "--steps", "4", "--out", refused]);
        Assert.That(code, Is.EqualTo(2));
        Assert.That(err, Does.Contain($"{pairs}: line 13: missing field 'tgt'"));
        Assert.That(Directory.Exists(refused), Is.False, "nothing is written before the data is checked");
    }

    /// <summary>--config takes a LLaMA preset too: random weights in HF LLaMA's scheme, trained, saved and loaded as a LLaMA.</summary>
    [Test]
    public void TrainsTheLlamaPresetFromRandomWeights()
    {
        string tok512 = Path.Combine(TestUtil.SharedData, "llama2c", "tok512.bin"), text = Path.Combine(temp, "stories.txt");
        var llamaShard = Path.Combine(temp, "stories512.tok");
        var (code, _, err) = Run("tokenize", "--tokenizer", tok512, "--out", llamaShard, text);
        Assert.That(code, Is.EqualTo(0), err);
        string outDir = Path.Combine(temp, "llama-tiny");
        (code, _, err) = Run("train", "--config", "llama-tiny", "--tokenizer", tok512, "--data", llamaShard, "--objective", "ar", "--steps", "3",
            "--batch", "2", "--seq-len", "32", "--eval-every", "3", "--eval-batches", "1", "--out", outDir, "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        var log = Trainer.ReadLog(Path.Combine(outDir, Trainer.LogFile));
        Assert.That(log.Where(r => r.Step > 0).Select(r => r.Loss), Has.All.GreaterThan(0).And.All.LessThan(2 * Math.Log(512)), "a random LLaMA starts near ln(512)");
        var config = ModelLoader.LoadConfig(outDir);
        Assert.That(ModelFamily.Of(config).Name, Is.EqualTo("llama"));
        Assert.That(config.ParameterCount, Is.EqualTo(ModelLoader.LoadConfig(Path.Combine(TestUtil.RepoRoot, "models", "llama-tiny")).ParameterCount));
        (code, var output, err) = Run("generate", "--model", outDir, "--prompt", "Once upon a time", "--ar", "--max-new", "4", "--temperature", "0", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(output, Does.StartWith("Once upon a time"));
    }

    /// <summary>These used to overflow int arithmetic inside the model: an OverflowException and exit code 1.</summary>
    [TestCase("""{"n_embd": 65536, "n_layer": 1, "n_head": 1, "n_positions": 64, "vocab_size": 512}""", "n_embd")]
    [TestCase("""{"n_embd": 64, "n_layer": 1, "n_head": 1, "n_positions": 64, "vocab_size": 2147483647}""", "vocab_size")]
    public void ConfigWhoseSizesOverflowExitsWithCode2AndOneLine(string json, string field)
    {
        string config = Path.Combine(temp, "big.json");
        File.WriteAllText(config, json);
        var (code, _, err) = Run("train", "--config", config, "--data", shard, "--tokenizer", Tokenizer, "--steps", "1",
            "--out", Path.Combine(temp, "run"), "--device", "cpu");
        Assert.That(code, Is.EqualTo(2), err);
        Assert.That(err.TrimEnd().Split('\n'), Has.Length.EqualTo(1), err);
        Assert.That(err, Does.StartWith("error: " + config).And.Contain(field));
    }

    [Test]
    public void BadTrainingArgumentsExitWithCode2()
    {
        string[] common = ["--tokenizer", Tokenizer, "--steps", "1", "--out", Path.Combine(temp, "x"), "--device", "cpu"];
        Assert.That(Run(["train", "--data", shard, .. common]).Code, Is.EqualTo(2), "no --init/--config/--resume");
        Assert.That(Run(["train", "--config", "gpt2-tiny", "--init", Gpt2FixtureTests.FixtureDir, "--data", shard, .. common]).Code, Is.EqualTo(2));
        Assert.That(Run(["train", "--init", Gpt2FixtureTests.FixtureDir, .. common]).Code, Is.EqualTo(2), "no --data");
        Assert.That(Run(["train", "--init", Gpt2FixtureTests.FixtureDir, "--data", Path.Combine(temp, "missing.tok"), .. common]).Code, Is.EqualTo(2));
        Assert.That(Run(["train", "--config", "no-such-preset", "--data", shard, .. common]).Code, Is.EqualTo(2));
        Assert.That(Run(["train", "--init", Gpt2FixtureTests.FixtureDir, "--data", shard, "--mask-token", "999", .. common]).Code, Is.EqualTo(2), "mask id outside the vocabulary");
        Assert.That(Run(["train", "--resume", Path.Combine(temp, "nothing-here"), .. common]).Code, Is.EqualTo(2));
    }
}
