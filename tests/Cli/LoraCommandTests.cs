using DiffuSharp.IO;
using DiffuSharp.Lora;
using DiffuSharp.Tests.Models;
using DiffuSharp.Training;

namespace DiffuSharp.Tests.CliTests;

/// <summary>
/// `diffu train --lora-rank` on SFT pairs, its PEFT checkpoints used by `generate`/`logits` (alone or with --adapter) and
/// folded in by `diffu merge`, in-process on the PyTorch fixture (vocabulary 512).
/// </summary>
public sealed class LoraCommandTests
{
    string temp = null!;
    string pairs = null!;

    [SetUp]
    public void SetUp()
    {
        temp = Directory.CreateTempSubdirectory("diffu-loracli-").FullName;
        pairs = Path.Combine(temp, "pairs.jsonl");
        File.WriteAllLines(pairs, Enumerable.Range(1, 12).Select(i => $$"""{"src": "What is {{i}} plus {{i + 1}}?", "tgt": "<<{{i}}+{{i + 1}}={{2 * i + 1}}>> #### {{2 * i + 1}}"}"""));
    }

    [TearDown]
    public void TearDown() => Directory.Delete(temp, recursive: true);

    static (int Code, string Out, string Err) Run(params string[] args) => CliRun.Run(args);

    string[] Train(params string[] extra) =>
    [
        "train", "--init", Gpt2FixtureTests.FixtureDir, "--tokenizer", CliRun.Gpt2Tokenizer, "--sft", pairs, "--cutoff", "48", "--mask-token", "3",
        "--lr", "1e-2", "--schedule", "constant", "--batch", "2", "--eval-every", "2", "--eval-batches", "1", "--val-fraction", "0.2", "--device", "cpu",
        "--lora-rank", "4", "--lora-train-embeddings", .. extra,
    ];

    float[] Logits(params string[] model)
    {
        string path = Path.Combine(temp, $"logits-{Guid.NewGuid():N}.safetensors");
        var (code, _, err) = Run(["logits", .. model, "--ids", "0,11,12,13,0,3,3,3", "--bidirectional", "--out", path, "--device", "cpu"]);
        Assert.That(code, Is.EqualTo(0), err);
        using var file = SafeTensorsFile.Open(path);
        return file.ReadFloat32("logits");
    }

    [Test]
    public void TrainsAdaptersOfAFrozenBaseAndResumesIdentically()
    {
        var baseBytes = File.ReadAllBytes(Path.Combine(Gpt2FixtureTests.FixtureDir, RunLayout.ModelFile));
        string full = Path.Combine(temp, "full"), split = Path.Combine(temp, "split");
        var (code, _, err) = Run([.. Train(), "--steps", "4", "--out", full]);
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(err, Does.Contain("LoRA rank 4 on 8 projections and the token embedding"));
        var checkpoint = RunLayout.LatestCheckpoint(full)!;
        Assert.That(File.Exists(Path.Combine(checkpoint, PeftAdapter.WeightsFile)) && File.Exists(Path.Combine(checkpoint, PeftAdapter.ConfigFile)), Is.True);
        Assert.That(File.Exists(Path.Combine(checkpoint, RunLayout.ModelFile)), Is.False, "a LoRA checkpoint holds the adapters, not the base");
        Assert.That(File.ReadAllBytes(Path.Combine(Gpt2FixtureTests.FixtureDir, RunLayout.ModelFile)), Is.EqualTo(baseBytes), "the base is never written");
        var log = Trainer.ReadLog(Path.Combine(full, Trainer.LogFile));
        Assert.That(log[^1].ValLoss, Is.LessThan(log[0].ValLoss!.Value), "the adapters learn");

        Assert.That(Run([.. Train(), "--steps", "2", "--out", split]).Code, Is.EqualTo(0));
        (code, _, err) = Run("train", "--resume", split, "--steps", "4", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        var resumed = Trainer.ReadLog(Path.Combine(split, Trainer.LogFile));
        Assert.That(resumed.Select(r => (r.Step, r.Loss, r.ValLoss)), Is.EqualTo(log.Select(r => (r.Step, r.Loss, r.ValLoss))));
        Assert.That(Checkpoint.LoadOptions(split).Lora, Is.EqualTo(new LoraOptions(4, 8f, LoraTargets.All, true)));
    }

    [Test]
    public void TheRunServesAsAModelAloneOrAsAnAdapterAndMergesIntoAModelFolder()
    {
        string run = Path.Combine(temp, "run"), merged = Path.Combine(temp, "merged");
        var (code, _, err) = Run([.. Train(), "--steps", "2", "--out", run]);
        Assert.That(code, Is.EqualTo(0), err);
        var alone = Logits("--model", run);
        Assert.That(Logits("--model", Gpt2FixtureTests.FixtureDir, "--adapter", run), Is.EqualTo(alone));
        Assert.That(TestUtil.RelativeL2(Logits("--model", Gpt2FixtureTests.FixtureDir), alone), Is.GreaterThan(1e-4), "the adapters change the model");

        (code, var output, err) = Run("merge", "--model", run, "--out", merged, "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(output, Does.Contain("merged 8 adapters (rank 4, scale 2) and the trained token embedding"));
        Assert.That(File.Exists(Path.Combine(merged, RunLayout.ModelFile)) && File.Exists(Path.Combine(merged, "vocab.json")), Is.True);
        Assert.That(TestUtil.RelativeL2(Logits("--model", merged), alone), Is.LessThan(1e-5));

        (code, _, err) = Run("merge", "--model", run, "--out", merged, "--device", "cpu");
        Assert.That((code, err), Is.EqualTo((2, $"error: --out {merged} already exists: merge into a new folder\n")));
        (code, _, err) = Run("merge", "--model", merged, "--out", Path.Combine(temp, "again"), "--device", "cpu");
        Assert.That(code, Is.EqualTo(2));
        Assert.That(err, Does.Contain("no LoRA adapter to merge"));
        Assert.That(Directory.Exists(Path.Combine(temp, "again")), Is.False);

        (code, output, err) = Run("generate", "--model", run, "--sft-prompt", "What is 2 plus 3?", "--cutoff", "32", "--steps", "4", "--mask-token", "3", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
    }

    [TestCase("--lora-alpha without --lora-rank", "--lora-alpha goes with --lora-rank")]
    [TestCase("--mask-token new", "--mask-token new grows the vocabulary")]
    [TestCase("--config instead of --init", "--lora-rank adapts a trained model: give it with --init DIR")]
    [TestCase("an adapter as --init", "is a LoRA adapter: continue its run with --resume")]
    public void RefusesBeforeAnyWork(string change, string message)
    {
        string outDir = Path.Combine(temp, "refused");
        var args = Train().ToList();
        void Set(string option, string value) => args[args.IndexOf(option) + 1] = value;
        switch (change)
        {
            case "--lora-alpha without --lora-rank":
                args.RemoveRange(args.IndexOf("--lora-rank"), 3);
                args.AddRange(["--lora-alpha", "4"]);
                break;
            case "--mask-token new": Set("--mask-token", "new"); break;
            case "--config instead of --init":
                Set("--init", Path.Combine(Gpt2FixtureTests.FixtureDir, "config.json"));
                args[args.IndexOf("--init")] = "--config";
                break;
            case "an adapter as --init": Set("--init", Path.Combine(Gpt2FixtureTests.FixtureDir, "lora")); break;
        }
        var (code, _, err) = Run([.. args, "--steps", "2", "--out", outDir]);
        Assert.That(code, Is.EqualTo(2), err);
        Assert.That(err, Does.Contain(message));
        Assert.That(Directory.Exists(outDir), Is.False);
    }
}
