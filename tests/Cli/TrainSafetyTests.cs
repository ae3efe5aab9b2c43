using DiffuSharp.IO;
using DiffuSharp.Models;
using DiffuSharp.Runtime;
using DiffuSharp.Tests.Models;
using DiffuSharp.Training;

namespace DiffuSharp.Tests.CliTests;

/// <summary>
/// `diffu train` never loses a run: no silent overwrite, one writer per folder, every input checked before
/// work, divergence stopped before writing. One test per way data used to be lost (issue 10).
/// </summary>
public sealed class TrainSafetyTests
{
    string temp = null!;
    string shard = null!;

    [OneTimeSetUp]
    public void MakeShard()
    {
        temp = Directory.CreateTempSubdirectory("diffu-trainsafety-").FullName;
        shard = CliRun.StoriesShard(temp);
    }

    [OneTimeTearDown]
    public void RemoveTemp() => Directory.Delete(temp, recursive: true);

    string NewFolder(string name) => Path.Combine(temp, name + "-" + Guid.NewGuid().ToString("N")[..8]);

    /// <summary>A small diffusion run of the fixture into <paramref name="outDir"/>; <paramref name="changes"/> are option-value pairs that replace or join the defaults, or lone flags.</summary>
    string[] Train(string outDir, params string[] changes)
    {
        var options = new List<(string Name, string? Value)>
        {
            ("--init", Gpt2FixtureTests.FixtureDir), ("--tokenizer", CliRun.Gpt2Tokenizer), ("--data", shard), ("--mask-token", "3"), ("--steps", "2"),
            ("--batch", "2"), ("--seq-len", "16"), ("--eval-every", "1"), ("--eval-batches", "1"), ("--lr", "1e-3"), ("--device", "cpu"), ("--out", outDir),
        };
        for (int i = 0; i < changes.Length; i++)
        {
            bool flag = i + 1 == changes.Length || changes[i + 1].StartsWith("--", StringComparison.Ordinal);
            var change = (changes[i], flag ? null : changes[++i]);
            int at = options.FindIndex(o => o.Name == change.Item1);
            if (at >= 0) options[at] = change; else options.Add(change);
        }
        return ["train", .. options.SelectMany(o => o.Value is null ? new[] { o.Name } : [o.Name, o.Value])];
    }

    static void AssertOneLineError(string err, params string[] parts)
    {
        var lines = err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines, Has.Length.EqualTo(1), err);
        foreach (var part in parts) Assert.That(lines[0], Does.Contain(part));
    }

    [Test]
    public void AFolderHoldingARunIsRefusedUnlessOverwriteIsGiven()
    {
        var outDir = NewFolder("used");
        Assert.That(CliRun.Run(Train(outDir)).Code, Is.EqualTo(0));
        var log = File.ReadAllBytes(Path.Combine(outDir, RunLayout.LogFile));
        var model = File.ReadAllBytes(Path.Combine(RunLayout.LatestCheckpoint(outDir)!, RunLayout.ModelFile));

        var (code, _, err) = CliRun.Run(Train(outDir, "--steps", "3"));
        Assert.That(code, Is.EqualTo(2));
        AssertOneLineError(err, outDir, "already holds a training run", "--resume", "--overwrite");
        Assert.That(File.ReadAllBytes(Path.Combine(outDir, RunLayout.LogFile)), Is.EqualTo(log), "the earlier log is untouched");
        Assert.That(File.ReadAllBytes(Path.Combine(RunLayout.LatestCheckpoint(outDir)!, RunLayout.ModelFile)), Is.EqualTo(model));

        (code, _, err) = CliRun.Run(Train(outDir, "--steps", "3", "--overwrite"));
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(Trainer.ReadLog(Path.Combine(outDir, RunLayout.LogFile)).Select(r => r.Step), Is.EqualTo(new long[] { 0, 1, 2, 3 }),
            "the log describes the new run only");
        Assert.That(RunLayout.Checkpoints(outDir).Select(c => c.Step), Is.EqualTo(new long[] { 3 }));
    }

    [Test]
    public void TheOutputFolderCannotBeTheInitFolder()
    {
        var first = NewFolder("init");
        Assert.That(CliRun.Run(Train(first)).Code, Is.EqualTo(0));
        var checkpoint = RunLayout.LatestCheckpoint(first)!;
        var before = File.ReadAllBytes(Path.Combine(checkpoint, RunLayout.ModelFile));
        foreach (var init in new[] { first, checkpoint })
        {
            string[] args = ["train", "--init", init, "--data", shard, "--steps", "1", "--seq-len", "16", "--batch", "2", "--out", first, "--overwrite", "--device", "cpu"];
            var (code, _, err) = CliRun.Run(args);
            Assert.That(code, Is.EqualTo(2), init);
            AssertOneLineError(err, "would overwrite --init");
        }
        Assert.That(File.ReadAllBytes(Path.Combine(checkpoint, RunLayout.ModelFile)), Is.EqualTo(before));
    }

    [Test]
    public void ASecondWriterIsRefusedWhileTheFolderIsHeld()
    {
        var outDir = NewFolder("held");
        using (RunFolder.Open(outDir))
        {
            var (code, _, err) = CliRun.Run(Train(outDir));
            Assert.That(code, Is.EqualTo(2));
            AssertOneLineError(err, outDir, "another process");
            Assert.That(File.Exists(Path.Combine(outDir, RunLayout.LogFile)), Is.False);
        }
        Assert.That(CliRun.Run(Train(outDir)).Code, Is.EqualTo(0), "the lock goes with its holder");
    }

    [Test]
    public void LeftoversOfAKilledSaveAreRemovedOnTheNextStart()
    {
        var outDir = NewFolder("leftovers");
        Assert.That(CliRun.Run(Train(outDir)).Code, Is.EqualTo(0));
        var checkpoints = Path.Combine(outDir, RunLayout.CheckpointsFolder);
        string[] planted =
        [
            Path.Combine(checkpoints, ".step-00000003.partial", RunLayout.ModelFile),
            Path.Combine(checkpoints, ".step-00000001.deleting", RunLayout.ModelFile),
            Path.Combine(outDir, ".train_log.jsonl.partial"),
            Path.Combine(outDir, ".model.safetensors.next"),
            Path.Combine(outDir, ".model.safetensors.next.tmp-0123456789abcdef"),
        ];
        foreach (var file in planted)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(file)!);
            File.WriteAllBytes(file, new byte[1000]);
        }
        var (code, _, err) = CliRun.Run("train", "--resume", outDir, "--steps", "3", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        foreach (var file in planted) Assert.That(File.Exists(file), Is.False, file);
        Assert.That(Directory.GetDirectories(checkpoints).Select(Path.GetFileName), Is.EqualTo(new[] { "step-00000003" }));
    }

    [TestCase("--lr", "Infinity")]
    [TestCase("--lr", "NaN")]
    [TestCase("--weight-decay", "NaN")]
    [TestCase("--clip", "1e39")]
    [TestCase("--max-loss", "NaN")]
    [TestCase("--max-loss", "Infinity")]
    [TestCase("--weight-decay", "2000")]
    [TestCase("--batch", "2147483647")]
    [TestCase("--batch", "1073741824")]
    [TestCase("--val-fraction", "1")]
    [TestCase("--keep", "0")]
    public void ValuesNoRunCanUseAreRefusedBeforeAnythingIsWritten(string option, string value)
    {
        var outDir = NewFolder("bad");
        var (code, _, err) = CliRun.Run(Train(outDir, option, value));
        Assert.That(code, Is.EqualTo(2), err);
        AssertOneLineError(err, option);
        Assert.That(Directory.Exists(outDir), Is.False, "nothing was created");
    }

    [Test]
    public void AnInfiniteValidationLossStopsTheRunBeforeItsCheckpoint()
    {
        var outDir = NewFolder("explode");
        var (code, _, err) = CliRun.Run(Train(outDir, "--lr", "1e10", "--steps", "3"));
        Assert.That(code, Is.EqualTo(3), err);
        Assert.That(err, Does.Contain("validation loss").And.Contain("stopped before writing"));
        Assert.That(RunLayout.Checkpoints(outDir), Is.Empty, "no checkpoint of diverged weights");
        Assert.That(Trainer.ReadLog(Path.Combine(outDir, RunLayout.LogFile)).Select(r => r.Step), Is.EqualTo(new long[] { 0 }));
    }

    [Test]
    public void ALossAboveTheGuardStopsTheRunAndKeepsTheLastGoodCheckpoint()
    {
        var outDir = NewFolder("guard");
        Assert.That(CliRun.Run(Train(outDir, "--steps", "1", "--schedule", "constant")).Code, Is.EqualTo(0));
        var good = File.ReadAllBytes(Path.Combine(RunLayout.LatestCheckpoint(outDir)!, RunLayout.ModelFile));
        // The same run continued with a guard below its own loss: it must stop at once, keeping step 1.
        var (code, _, err) = CliRun.Run("train", "--resume", outDir, "--steps", "4", "--max-loss", "1", "--device", "cpu");
        Assert.That(code, Is.EqualTo(3), err);
        Assert.That(err, Does.Contain("--max-loss"));
        Assert.That(RunLayout.Checkpoints(outDir).Select(c => c.Step), Is.EqualTo(new long[] { 1 }));
        Assert.That(File.ReadAllBytes(Path.Combine(RunLayout.LatestCheckpoint(outDir)!, RunLayout.ModelFile)), Is.EqualTo(good));

        var wild = NewFolder("wild");
        (code, _, err) = CliRun.Run(Train(wild, "--lr", "1e6", "--steps", "6", "--eval-every", "6"));
        Assert.That(code, Is.EqualTo(3), "a learning rate of 1e6 diverges; it must not run to the end: " + err);
    }

    [Test]
    public void AMissingTokenizerOrAShardOfAnotherVocabularyIsRefusedBeforeTraining()
    {
        var outDir = NewFolder("tokenizer");
        string[] args = ["train", "--config", Path.Combine(Gpt2FixtureTests.FixtureDir, "config.json"), "--tokenizer", Path.Combine(temp, "nonexistent"), "--mask-token", "3",
            "--data", shard, "--steps", "1", "--batch", "2", "--seq-len", "16", "--out", outDir, "--device", "cpu"];
        var (code, _, err) = CliRun.Run(args);
        Assert.That(code, Is.EqualTo(2));
        AssertOneLineError(err, "nonexistent", "not found");
        Assert.That(Directory.Exists(outDir), Is.False);

        var garbage = Directory.CreateDirectory(Path.Combine(temp, "garbage-tokenizer")).FullName;
        File.WriteAllText(Path.Combine(garbage, "vocab.json"), "this is not a vocabulary");
        File.WriteAllText(Path.Combine(garbage, "merges.txt"), "#version: 0.2\n");
        (code, _, err) = CliRun.Run([.. args[..4], garbage, .. args[5..]]);
        Assert.That(code, Is.EqualTo(2), err);
        AssertOneLineError(err, "vocab.json");
        Assert.That(Directory.Exists(outDir), Is.False, "a garbage tokenizer is found before the run starts");

        var text = Path.Combine(temp, "stories.txt");
        var wide = Path.Combine(temp, "wide.tok");
        Assert.That(CliRun.Run("tokenize", "--tokenizer", CliRun.Gpt2Tokenizer, "--out", wide, text).Code, Is.EqualTo(0));
        (code, var output, err) = CliRun.Run(["train", "--init", Gpt2FixtureTests.FixtureDir, "--tokenizer", CliRun.Gpt2Tokenizer, "--data", wide,
            "--mask-token", "3", "--steps", "1", "--batch", "2", "--seq-len", "16", "--out", outDir, "--device", "cpu"]);
        Assert.That(code, Is.EqualTo(2));
        AssertOneLineError(err, "50257", "512");
        Assert.That(output, Is.Empty, "refused before the banner");
        Assert.That(Directory.Exists(outDir), Is.False, "no empty log left behind");
    }

    [Test]
    public void AModelThatCannotFitIsRefusedWithTheEstimate()
    {
        var config = Path.Combine(temp, "huge.json");
        File.WriteAllText(config, """{"model_type": "gpt2", "vocab_size": 512, "n_positions": 64, "n_embd": 64, "n_layer": 1000000000, "n_head": 4}""");
        var outDir = NewFolder("huge");
        var (code, _, err) = CliRun.Run("train", "--config", config, "--objective", "ar", "--tokenizer", CliRun.Gpt2Tokenizer, "--data", shard, "--steps", "1",
            "--batch", "2", "--seq-len", "16", "--out", outDir, "--device", "cpu");
        Assert.That(code, Is.EqualTo(2));
        AssertOneLineError(err, "needs about", "available");
        Assert.That(Directory.Exists(outDir), Is.False);
    }

    [Test]
    public void CheckpointsThatCannotFitOnTheDiskAreRefusedUpFront()
    {
        using var run = RunFolder.Open(NewFolder("disk"));
        long free = new DriveInfo(run.Path).AvailableFreeSpace;
        Assert.That(() => run.RequireSpace(free, keep: 1), Throws.TypeOf<DiffuException>().With.Message.Contains("disk"));
        Assert.That(() => run.RequireSpace(long.MaxValue / 2, keep: 3), Throws.TypeOf<DiffuException>());
        Assert.That(() => run.RequireSpace(1 << 20, keep: 1), Throws.Nothing);
    }

    [Test]
    public void ResumeSaysHowTheScheduleChangesAndRefusesOptionsTheRunFixed()
    {
        var outDir = NewFolder("resume");
        Assert.That(CliRun.Run(Train(outDir)).Code, Is.EqualTo(0));
        var (code, _, err) = CliRun.Run("train", "--resume", outDir, "--steps", "4", "--lr", "1", "--device", "cpu");
        Assert.That(code, Is.EqualTo(2));
        AssertOneLineError(err, "--lr", "fixed by the run");
        (code, _, err) = CliRun.Run("train", "--resume", outDir, "--steps", "4", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(err, Does.Contain("re-spreads the cosine schedule").And.Contain("(was 2)"));
    }

    [Test]
    public void AMaskTokenOutsideTheVocabularySuggestsAFix()
    {
        var (code, _, err) = CliRun.Run(Train(NewFolder("mask"), "--mask-token", "999"));
        Assert.That(code, Is.EqualTo(2));
        AssertOneLineError(err, "999", "'new'");
    }

    [Test]
    public void ARunFolderLoadsAsAModelFolder()
    {
        var outDir = NewFolder("model");
        Assert.That(CliRun.Run(Train(outDir)).Code, Is.EqualTo(0));
        using var device = new CpuDevice();
        using var model = ModelLoader.Load(outDir, device);
        Assert.That(model.MaskTokenId, Is.EqualTo(3));
        var (code, output, err) = CliRun.Run("generate", "--model", outDir, "--prompt", "Once", "--length", "4", "--steps", "2", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(output, Does.StartWith("Once"));
    }
}
