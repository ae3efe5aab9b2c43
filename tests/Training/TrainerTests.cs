using DiffuSharp.Data;
using DiffuSharp.Diffusion;
using DiffuSharp.IO;
using DiffuSharp.Models;
using DiffuSharp.Runtime;
using DiffuSharp.Tests.Models;
using DiffuSharp.Training;

namespace DiffuSharp.Tests.Training;

/// <summary>Blocks cycled in order from an array: a deterministic stand-in for the token-shard loader; with <paramref name="source"/>, every block carries that source mask.</summary>
sealed class ArrayBlocks(int[][] train, int[][] validation, byte[]? source = null) : ITokenBlocks
{
    long position;
    public bool HasSourceMask => source is not null;
    public int BlockLength => train[0].Length;
    public int VocabSize => train.Concat(validation).Max(b => b.Max()) + 1;
    public int ValidationBlockCount => validation.Length;

    public void NextTrainingBatch(int batch, Span<int> destination, Span<byte> sourceMask)
    {
        for (int i = 0; i < batch; i++)
        {
            train[position++ % train.Length].CopyTo(destination.Slice(i * BlockLength, BlockLength));
            source?.CopyTo(sourceMask.Slice(i * BlockLength, BlockLength));
        }
    }

    public void ReadValidationBatch(int first, int batch, Span<int> destination, Span<byte> sourceMask)
    {
        for (int i = 0; i < batch; i++) validation[(first + i) % validation.Length].CopyTo(destination.Slice(i * BlockLength, BlockLength));
    }

    public long[] State { get => [position]; set => position = value[0]; }

    public static ArrayBlocks Random(int seed, int blocks, int length, int vocab, byte[]? source = null)
    {
        var rng = new Random(seed);
        int[][] Make(int n) => Enumerable.Range(0, n).Select(_ => Enumerable.Range(0, length).Select(_ => rng.Next(vocab)).ToArray()).ToArray();
        return new ArrayBlocks(Make(blocks), Make(4), source);
    }
}

public sealed class TrainerTests
{
    string temp = null!;

    [SetUp]
    public void SetUp() => temp = Directory.CreateTempSubdirectory("diffu-train-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(temp, recursive: true);

    static TrainOptions Options(TrainingObjective kind) => new()
    {
        Objective = kind, Steps = 6, Batch = 2, SequenceLength = 16, LearningRate = 3e-3, WarmupSteps = 2,
        AnnealSteps = 4, MaskTokenId = 3, EvalEvery = 3, EvalBatches = 2, Seed = 9, GradientAccumulation = 2,
    };

    static string Fixture => Gpt2FixtureTests.FixtureDir;

    [TestCase(TrainingObjective.Diffusion)]
    [TestCase(TrainingObjective.Autoregressive)]
    public void ResumedRunReproducesTheUninterruptedLossSequence(TrainingObjective kind)
    {
        using var device = new CpuDevice();
        string full = Path.Combine(temp, "full"), split = Path.Combine(temp, "split");
        using (var model = Gpt2Model.Load(Fixture, device))
        using (var trainer = new Trainer(model, ArrayBlocks.Random(1, 10, 16, 512), Options(kind)))
        using (var run = RunFolder.Open(full))
            trainer.Run(run, null);
        // Interrupt a 6-step run right after its step-3 checkpoint, as a killed process would be.
        using (var model = Gpt2Model.Load(Fixture, device))
        using (var trainer = new Trainer(model, ArrayBlocks.Random(1, 10, 16, 512), Options(kind)))
        using (var run = RunFolder.Open(split))
        using (var stop = new CancellationTokenSource())
            Assert.Throws<OperationCanceledException>(() => trainer.Run(run, null, row => { if (row.Step == 3) stop.Cancel(); }, null, stop.Token));
        using (var run = RunFolder.Open(split))
        using (var trainer = Trainer.Resume(run.LatestCheckpoint!, device, ArrayBlocks.Random(1, 10, 16, 512)))
            trainer.Run(run, null);

        var a = Trainer.ReadLog(Path.Combine(full, Trainer.LogFile));
        var b = Trainer.ReadLog(Path.Combine(split, Trainer.LogFile));
        Assert.That(b.Select(r => r.Step), Is.EqualTo(a.Select(r => r.Step)));
        Assert.That(b.Select(r => r.Loss), Is.EqualTo(a.Select(r => r.Loss)), "bit-identical training losses");
        Assert.That(b.Select(r => r.ValLoss), Is.EqualTo(a.Select(r => r.ValLoss)));
        using var wa = SafeTensorsFile.Open(Path.Combine(RunLayout.LatestCheckpoint(full)!, RunLayout.ModelFile));
        using var wb = SafeTensorsFile.Open(Path.Combine(RunLayout.LatestCheckpoint(split)!, RunLayout.ModelFile));
        foreach (var t in wa.Tensors) Assert.That(wb.ReadFloat32(t.Name), Is.EqualTo(wa.ReadFloat32(t.Name)), t.Name);
    }

    [Test]
    public void TrainingLowersTheLossAndWritesALoadableCheckpoint()
    {
        using var device = new CpuDevice();
        var data = ArrayBlocks.Random(2, 2, 16, 512);
        using (var model = Gpt2Model.Load(Fixture, device))
        using (var trainer = new Trainer(model, data, Options(TrainingObjective.Autoregressive) with { Steps = 30, EvalEvery = 30, WarmupSteps = 0, GradientAccumulation = 1 }))
        using (var run = RunFolder.Open(temp))
            trainer.Run(run, null);
        var log = Trainer.ReadLog(Path.Combine(temp, Trainer.LogFile));
        Assert.That(log[^1].Loss, Is.LessThan(log[1].Loss!.Value * 0.7), "memorising two blocks must lower the loss");
        Assert.That(log.Where(r => r.Step > 0).Select(r => r.Step), Is.EqualTo(Enumerable.Range(1, 30).Select(i => (long)i)));
        using var reloaded = ModelLoader.Load(temp, device);
        Assert.That(reloaded.Config.VocabSize, Is.EqualTo(512));
    }

    [Test]
    public void NonFiniteLossStopsTheStepAndKeepsTheLastCheckpoint()
    {
        using var device = new CpuDevice();
        using var model = Gpt2Model.Load(Fixture, device);
        using var trainer = new Trainer(model, ArrayBlocks.Random(3, 4, 16, 512), Options(TrainingObjective.Diffusion) with { Steps = 3, EvalEvery = 1 });
        trainer.TrainStep();
        Checkpoint.Write(temp, model, null, null, null, null, 3);
        var before = File.ReadAllBytes(Path.Combine(temp, RunLayout.ModelFile));
        var bias = device.ToArray(model.Weights.FinalNorm.Bias);
        bias[0] = float.NaN;
        device.Upload(model.Weights.FinalNorm.Bias, 0, bias);
        var weights = device.ToArray(model.Weights.TokenEmbedding);
        var e = Assert.Throws<TrainingDivergedException>(() => trainer.TrainStep())!;
        Assert.That(e.Message, Does.Contain("not finite"));
        Assert.That(device.ToArray(model.Weights.TokenEmbedding), Is.EqualTo(weights), "no update after a non-finite loss");
        Assert.That(File.ReadAllBytes(Path.Combine(temp, RunLayout.ModelFile)), Is.EqualTo(before));
    }

    [Test]
    public void GradientAccumulationEqualsOneLargeBatch()
    {
        using var device = new CpuDevice();
        using var model = Gpt2Model.Load(Fixture, device);
        var data = ArrayBlocks.Random(4, 4, 16, 512);
        var ids = new int[4 * 16];
        data.NextTrainingBatch(4, ids, default);
        var objective = new Objective(TrainingObjective.Autoregressive, -1, 0);
        using var whole = Gpt2Weights.Zeros(model.Config, device);
        using var parts = Gpt2Weights.Zeros(model.Config, device);
        var big = new ObjectiveBatch(4, 16);
        objective.Prepare(ids, big, 0);
        double lossWhole = GradientStep.Run(model, big, whole, DiffuSharp.Kernels.AttentionMaskMode.Causal, null).Loss;
        var half = new ObjectiveBatch(2, 16);
        double lossParts = 0;
        for (int k = 0; k < 2; k++)
        {
            objective.Prepare(ids.AsSpan(k * 32, 32), half, 0, scale: 0.5f);
            lossParts += GradientStep.Run(model, half, parts, DiffuSharp.Kernels.AttentionMaskMode.Causal, null).Loss;
        }
        Assert.That(lossParts, Is.EqualTo(lossWhole).Within(1e-5).Percent);
        foreach (var ((name, a), (_, b)) in whole.Named().Zip(parts.Named()))
            Assert.That(TestUtil.RelativeL2(device.ToArray(b), device.ToArray(a)), Is.LessThan(1e-5), name);
    }

    [Test]
    public void AppendedMaskTokenHasTheMeanEmbedding()
    {
        using var device = new CpuDevice();
        using var model = Gpt2Model.Load(Fixture, device);
        var before = device.ToArray(model.Weights.TokenEmbedding);
        int id = model.AppendToken();
        Assert.That(id, Is.EqualTo(512));
        Assert.That(model.Config.VocabSize, Is.EqualTo(513));
        var after = device.ToArray(model.Weights.TokenEmbedding);
        int c = model.Config.Channels;
        Assert.That(after.AsSpan(0, before.Length).ToArray(), Is.EqualTo(before));
        for (int j = 0; j < c; j++)
        {
            double mean = 0;
            for (int i = 0; i < 512; i++) mean += before[i * c + j];
            Assert.That(after[512 * c + j], Is.EqualTo(mean / 512).Within(1e-6));
        }
    }

    /// <summary>A gradient reducer that records what it saw and replaces the gradients (as an all-reduce would).</summary>
    sealed class RecordingReducer(Device device, float factor) : IGradientReducer
    {
        public readonly List<double> SquaredNorms = new();

        public void Reduce(IParameterSet gradients)
        {
            SquaredNorms.Add(gradients.Storage.Sum(device.SumOfSquares));
            foreach (var g in gradients.Storage) device.Scale(g, factor);
        }
    }

    [Test]
    public void TheReducerRunsOnTheAccumulatedGradientsBeforeTheNormAndTheUpdate()
    {
        using var device = new CpuDevice();
        using var model = Gpt2Model.Load(Fixture, device);
        var options = Options(TrainingObjective.Autoregressive) with { Steps = 2, EvalEvery = 100, WeightDecay = 0 };
        using var trainer = new Trainer(model, ArrayBlocks.Random(3, 4, 16, 512), options);
        var weights = model.Parameters.Storage.Select(device.ToArray).ToArray();
        var zeroing = new RecordingReducer(device, 0f);
        trainer.Reducer = zeroing;
        trainer.TrainStep();
        Assert.That(zeroing.SquaredNorms, Has.Count.EqualTo(1), "once per optimizer step, after both micro-batches");
        Assert.That(zeroing.SquaredNorms[0], Is.GreaterThan(0));
        Assert.That(model.Parameters.Storage.Select(device.ToArray).ToArray(), Is.EqualTo(weights), "AdamW applies the reduced gradients (zero: no update)");

        var halving = new RecordingReducer(device, 0.5f);
        trainer.Reducer = halving;
        var row = trainer.TrainStep();
        Assert.That(row.GradNorm, Is.EqualTo(0.5 * Math.Sqrt(halving.SquaredNorms[0])).Within(1e-6).Percent, "the norm is taken after the reducer");
    }

    [Test]
    public void TheDataSourceMaskReachesTheObjective()
    {
        using var device = new CpuDevice();
        using var model = Gpt2Model.Load(Fixture, device);
        var source = new byte[16];
        source.AsSpan(0, 10).Fill(1);
        var options = Options(TrainingObjective.Diffusion) with { Steps = 1, EvalEvery = 100, GradientAccumulation = 1, AnnealSteps = 0 };
        TrainLogRow row;
        using (var trainer = new Trainer(model, ArrayBlocks.Random(3, 4, 16, 512, source), options)) row = trainer.TrainStep();

        using var again = Gpt2Model.Load(Fixture, device);
        var ids = new int[2 * 16];
        ArrayBlocks.Random(3, 4, 16, 512).NextTrainingBatch(2, ids, default);
        var batch = new ObjectiveBatch(2, 16);
        new Objective(TrainingObjective.Diffusion, 3, options.Seed).Prepare(ids, batch, 0, 1f, [.. source, .. source]);
        for (int b = 0; b < 2; b++)
            for (int i = 0; i < 10; i++)
                Assert.That(batch.Inputs[b * 16 + i], Is.EqualTo(ids[b * 16 + i]), "source tokens are never masked");
        var expected = GradientStep.Loss(again, batch, DiffuSharp.Kernels.AttentionMaskMode.Bidirectional, null);
        Assert.That(row.Loss, Is.EqualTo(expected.Loss).Within(1e-3).Percent);
    }
}
