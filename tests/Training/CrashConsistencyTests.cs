using System.Diagnostics;
using DiffuSharp.IO;
using DiffuSharp.Models;
using DiffuSharp.Runtime;
using DiffuSharp.Tests.CliTests;
using DiffuSharp.Tests.Models;
using DiffuSharp.Training;

namespace DiffuSharp.Tests.Training;

/// <summary>
/// A child `diffu train` is killed with SIGKILL at every named instant of checkpointing and logging and at
/// random times; after each kill the folder must load as a model, resume (or, killed before its first
/// checkpoint, say so and start again with --overwrite), and finish with a log identical to an
/// uninterrupted run's, with no leftovers and no more than --keep checkpoints.
/// </summary>
[NonParallelizable]
public sealed class CrashConsistencyTests
{
    const int Keep = 2, Steps = 6;

    /// <summary>Every instant CrashPoints names, at the occurrences that cut each phase of each of the three saves (steps 2, 4, 6).</summary>
    static readonly string[] KillPoints =
    [
        "file-staged#1", "log-appended#1", "log-appended#3", "checkpoint-model-written#1", "checkpoint-state-written#1", "checkpoint-staged#1",
        "checkpoint-renamed#1", "file-staged#2", "log-appended#4", "checkpoint-model-written#2", "checkpoint-staged#2", "checkpoint-renamed#2",
        "checkpoint-staged#3", "checkpoint-retired#1", "checkpoint-renamed#3", "log-appended#7",
    ];

    string temp = null!;
    string shard = null!;
    List<TrainLogRow> reference = null!;

    [OneTimeSetUp]
    public void RunUninterrupted()
    {
        temp = Directory.CreateTempSubdirectory("diffu-crash-").FullName;
        shard = CliRun.StoriesShard(temp);
        var dir = Path.Combine(temp, "reference");
        var (code, _, err) = CliRun.Run(Args(dir));
        Assert.That(code, Is.EqualTo(0), err);
        reference = Trainer.ReadLog(Path.Combine(dir, RunLayout.LogFile));
        Assert.That(reference.Select(r => r.Step), Is.EqualTo(Enumerable.Range(0, Steps + 1).Select(i => (long)i)));
    }

    [OneTimeTearDown]
    public void RemoveTemp() => Directory.Delete(temp, recursive: true);

    string[] Args(string outDir, int steps = Steps) =>
        ["train", "--init", Gpt2FixtureTests.FixtureDir, "--tokenizer", CliRun.Gpt2Tokenizer, "--data", shard, "--mask-token", "3", "--anneal-steps", "3",
         "--steps", steps.ToString(), "--batch", "2", "--seq-len", "32", "--eval-every", "2", "--eval-batches", "1", "--lr", "1e-3", "--keep", Keep.ToString(),
         "--device", "cpu", "--out", outDir];

    [TestCaseSource(nameof(KillPoints))]
    public void AKillAtANamedInstantLeavesAResumableRun(string point)
    {
        var dir = Path.Combine(temp, "at-" + point.Replace('#', '-'));
        var child = CliRun.Start(Args(dir), dir + ".log", new Dictionary<string, string> { [CrashPoints.Variable] = point });
        Assert.That(child.WaitForExit(120_000), "the child finished or died");
        Assert.That(child.ExitCode, Is.EqualTo(128 + 9), $"killed by SIGKILL at {point}: " + File.ReadAllText(dir + ".log"));
        Recover(dir);
    }

    [Test]
    public void KillsAtRandomInstantsLeaveAResumableRun()
    {
        var clock = Stopwatch.StartNew();
        var timed = CliRun.Start(Args(Path.Combine(temp, "timed")), Path.Combine(temp, "timed.log"));
        Assert.That(timed.WaitForExit(120_000));
        Assert.That(timed.ExitCode, Is.EqualTo(0), File.ReadAllText(Path.Combine(temp, "timed.log")));
        double seconds = clock.Elapsed.TotalSeconds;

        var rng = TestUtil.NewRandom();
        int kills = 0, withCheckpoint = 0, finishedFirst = 0;
        for (int i = 0; i < 8; i++)
        {
            var dir = Path.Combine(temp, $"random-{i}");
            var child = CliRun.Start(Args(dir), dir + ".log");
            Thread.Sleep(TimeSpan.FromSeconds(rng.NextDouble() * seconds));
            if (child.HasExited) finishedFirst++;
            else
            {
                child.Kill();
                kills++;
            }
            Assert.That(child.WaitForExit(120_000));
            if (RunLayout.LatestCheckpoint(dir) is not null) withCheckpoint++;
            Recover(dir);
        }
        TestContext.Out.WriteLine($"run of {seconds:F1} s: {kills} kills ({withCheckpoint} found a checkpoint), {finishedFirst} finished before the kill; every folder resumed to the uninterrupted log");
    }

    [Test]
    public void ASecondProcessIsRefusedWhileTheFirstRuns()
    {
        var dir = Path.Combine(temp, "busy");
        var first = CliRun.Start(Args(dir, steps: 1_000_000), dir + ".log");
        try
        {
            var log = Path.Combine(dir, RunLayout.LogFile);
            var wait = Stopwatch.StartNew();
            while (!File.Exists(log) && !first.HasExited && wait.Elapsed < TimeSpan.FromSeconds(60)) Thread.Sleep(50);
            Assert.That(File.Exists(log), "the first run started: " + File.ReadAllText(dir + ".log"));
            var (code, _, err) = CliRun.Run([.. Args(dir), "--overwrite"]);
            Assert.That(code, Is.EqualTo(2), err);
            Assert.That(err, Does.Contain(dir).And.Contain("another process"));
            (code, _, err) = CliRun.Run("train", "--resume", dir, "--device", "cpu");
            Assert.That(code, Is.EqualTo(2), err);
            Assert.That(first.HasExited, Is.False, "the first run goes on");
        }
        finally
        {
            first.Kill();
            first.WaitForExit();
        }
    }

    /// <summary>Checks what a kill left, finishes the run and compares it with the uninterrupted one.</summary>
    void Recover(string dir)
    {
        var log = File.Exists(dir + ".log") ? File.ReadAllText(dir + ".log") : "";
        if (RunLayout.LatestCheckpoint(dir) is not null)
        {
            using (var device = new CpuDevice())
            using (var model = ModelLoader.Load(dir, device))
                Assert.That(model.MaskTokenId, Is.EqualTo(3), "the newest checkpoint loads as a model");
            var (code, _, err) = CliRun.Run("train", "--resume", dir, "--device", "cpu");
            Assert.That(code, Is.EqualTo(0), err + log);
        }
        else
        {
            var (code, _, err) = CliRun.Run("train", "--resume", dir, "--device", "cpu");
            Assert.That(code, Is.EqualTo(2), "nothing to resume before the first checkpoint");
            Assert.That(err, Does.Contain("before its first checkpoint").Or.Contain("no training run").Or.Contain("no such folder"));
            (code, _, err) = CliRun.Run([.. Args(dir), "--overwrite"]);
            Assert.That(code, Is.EqualTo(0), err + log);
        }
        var rows = Trainer.ReadLog(Path.Combine(dir, RunLayout.LogFile));
        Assert.That(rows.Select(r => (r.Step, r.Loss, r.Ce, r.Lr, r.GradNorm, r.ValLoss, r.ValCe)),
            Is.EqualTo(reference.Select(r => (r.Step, r.Loss, r.Ce, r.Lr, r.GradNorm, r.ValLoss, r.ValCe))), "the loss curve of the uninterrupted run");
        var checkpoints = Path.Combine(dir, RunLayout.CheckpointsFolder);
        Assert.That(Directory.GetFileSystemEntries(checkpoints).Select(Path.GetFileName),
            Is.EquivalentTo(new[] { RunLayout.StepFolderName(4), RunLayout.StepFolderName(6) }), "the newest --keep checkpoints and nothing else");
        Assert.That(Directory.GetFiles(dir, ".*").Select(Path.GetFileName), Is.EqualTo(new[] { RunLayout.LockFile }), "no staged files left");
    }
}
