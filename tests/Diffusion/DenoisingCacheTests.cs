using DiffuSharp.Diffusion;
using DiffuSharp.Kernels;
using DiffuSharp.Layers;
using DiffuSharp.Models;
using DiffuSharp.Runtime;
using DiffuSharp.Tests.Models;

namespace DiffuSharp.Tests.Diffusion;

/// <summary>
/// Block-wise approximate KV caching on both families' PyTorch fixture models and every device: a window over a
/// cache gets the full pass's logits when nothing outside it changed, sees the cached keys when something did, and
/// the cached, thresholded sampler draws the CPU's tokens. The samplers' rules are <see cref="FastSamplerTests"/>'.
/// </summary>
[TestFixtureSource(nameof(Fixtures))]
public sealed class DenoisingCacheTests(string fixture, string deviceName)
    : FixtureModelTests(Path.Combine(TestUtil.Fixtures, fixture), "expected.safetensors", deviceName)
{
    const int Mask = 3, Start = 1;

    static IEnumerable<TestFixtureData> Fixtures() =>
        from f in new[] { "gpt2-tiny", "llama-tiny" } from d in new[] { "cpu", "ilgpu-cpu", "cuda" } select new TestFixtureData(f, d);

    /// <summary>
    /// The logits-level checks take seconds a pass on the ILGPU CPU simulator: there they are left to cpu and cuda, and
    /// <see cref="TheSameSeedGivesTheCpusTokens"/> runs the simulator's windows against the CPU.
    /// </summary>
    void IgnoreOnSimulator()
    {
        if (deviceName == "ilgpu-cpu")
            Assert.Ignore("passes over a cache at the logits level: too slow for the ILGPU CPU simulator, so they run on cpu and cuda only");
    }

    int[] RandomIds(int count)
    {
        var rng = TestUtil.NewRandom();
        return Enumerable.Range(0, count).Select(_ => rng.Next(model.VocabSize)).ToArray();
    }

    float[] Logits(int[] ids, int batch, int length)
    {
        using var result = model.Logits(ids, batch, length, AttentionMaskMode.Bidirectional);
        return device.ToArray(result.Logits);
    }

    float[] Cached(int[] ids, int batch, int length, int from, int to, KvCache cache)
    {
        int w = to - from;
        var window = new int[batch * w];
        for (int r = 0; r < batch; r++) Array.Copy(ids, r * length + from, window, r * w, w);
        using var result = model.CachedLogits(window, batch, w, cache, from);
        return device.ToArray(result.Logits);
    }

    /// <summary>Rows [from, to) of each sequence's logits [B, N, V].</summary>
    float[] Rows(float[] logits, int batch, int length, int from, int to)
    {
        int v = model.VocabSize, w = to - from;
        var rows = new float[batch * w * v];
        for (int r = 0; r < batch; r++) Array.Copy(logits, (long)(r * length + from) * v, rows, (long)r * w * v, (long)w * v);
        return rows;
    }

    [Test]
    public void AWindowOverAnUnchangedSequenceGetsTheFullPassLogits()
    {
        IgnoreOnSimulator();
        const int batch = 2, length = 24;
        var ids = RandomIds(batch * length);
        var full = Logits(ids, batch, length);
        using var cache = model.CreateKvCache(batch, length);
        Assert.That(TestUtil.RelativeL2(Cached(ids, batch, length, 0, length, cache), full), Is.LessThan(1e-5), "the pass that fills the cache");
        const int from = 5, to = 13;
        Assert.That(TestUtil.RelativeL2(Cached(ids, batch, length, from, to, cache), Rows(full, batch, length, from, to)), Is.LessThan(1e-5),
            $"window [{from}, {to})");
    }

    /// <summary>
    /// The window's queries attend to the cached keys of the other positions, not to their current tokens: a window of a
    /// over b's cache (a and b agree inside the window) gets b's logits there, not a's.
    /// </summary>
    [Test]
    public void TheWindowSeesTheCachedKeysOutsideIt()
    {
        IgnoreOnSimulator();
        const int batch = 1, length = 20, from = 6, to = 12;
        var a = RandomIds(length);
        var b = RandomIds(length);
        Array.Copy(a, from, b, from, to - from);
        var wantA = Rows(Logits(a, batch, length), batch, length, from, to);
        using var cache = model.CreateKvCache(batch, length);
        var wantB = Rows(Cached(b, batch, length, 0, length, cache), batch, length, from, to);
        var overB = Cached(a, batch, length, from, to, cache);
        Assert.That(TestUtil.RelativeL2(overB, wantB), Is.LessThan(1e-5), "the same window over b's cache is b's");
        Assert.That(TestUtil.RelativeL2(overB, wantA), Is.GreaterThan(1e-3), "a's tokens outside the window were never seen");
    }

    [Test]
    public void PassesThatWouldLeaveAGapOrOverflowTheCacheAreRefused()
    {
        using var cache = model.CreateKvCache(1, 10);
        Assert.That(() => model.CachedLogits([1, 2], 1, 2, cache, 3), Throws.ArgumentException, "position 3 of an empty cache leaves a gap");
        model.CachedLogits([1, 2, 3, 4], 1, 4, cache, 0).Dispose();
        Assert.That(() => model.CachedLogits([1, 2, 3], 1, 3, cache, 8), Throws.ArgumentException, "past the capacity");
        Assert.That(() => model.CachedLogits([1, 2, 1, 2], 2, 2, cache, 0), Throws.ArgumentException, "another batch");
        Assert.That(() => model.Decode([1], 1, cache, new float[model.VocabSize]), Throws.Nothing, "a causal pass continues at the cache's length");
        Assert.That(cache.Length, Is.EqualTo(5));
    }

    /// <summary>
    /// Two blocks of two steps, a full pass and a window over the cache each, with parallel commits (sampling at
    /// temperature 1, so every draw must agree). The prefix cache's windows differ only in where they end.
    /// </summary>
    [Test]
    public void TheSameSeedGivesTheCpusTokens()
    {
        const DenoisingCache cache = DenoisingCache.Dual;
        const float threshold = 0.3f;
        if (deviceName == "cpu") Assert.Ignore("the CPU is the reference this test compares the other devices with");
        var problem = DenoisingPrompts.Stack([DenoisingPrompts.Completion(Start, [10, 11, 12], 8, model.Positions)]);
        var settings = new DenoiseSettings { Steps = 4, BlockLength = 4, Seed = 11, Cache = cache, Threshold = threshold };
        using var cpu = new CpuDevice();
        using var reference = ModelLoader.Load(Path.Combine(TestUtil.Fixtures, fixture), cpu);
        Assert.That(new Denoiser(model, Mask).Run(problem, settings).Tokens, Is.EqualTo(new Denoiser(reference, Mask).Run(problem, settings).Tokens));
    }
}

/// <summary>
/// The fast samplers' rules (caches, parallel commits, early stopping) on both families' fixture models, on the CPU:
/// they are host logic over the device's logits, which <see cref="DenoisingCacheTests"/> checks on every device.
/// </summary>
[TestFixtureSource(nameof(Fixtures))]
public sealed class FastSamplerTests(string fixture) : FixtureModelTests(Path.Combine(TestUtil.Fixtures, fixture), "expected.safetensors", "cpu")
{
    const int Mask = 3, Start = 1;

    static IEnumerable<TestFixtureData> Fixtures() => new[] { "gpt2-tiny", "llama-tiny" }.Select(f => new TestFixtureData(f));

    DenoisingProblem Problem(int batch, int prompt, int generated)
    {
        var rows = Enumerable.Range(0, batch)
            .Select(r => DenoisingPrompts.Completion(Start, Enumerable.Range(10 + r, prompt).ToArray(), generated, model.Positions)).ToList();
        return DenoisingPrompts.Stack(rows);
    }

    static IEnumerable<TestCaseData> FastModes() =>
        from cache in Enum.GetValues<DenoisingCache>() from threshold in new float?[] { null, 0.3f } select new TestCaseData(cache, threshold);

    [TestCaseSource(nameof(FastModes))]
    public void EveryModeFillsEverySlotKeepsTheFixedOnesAndRunsAtMostTPasses(DenoisingCache cache, float? threshold)
    {
        var problem = Problem(2, 4, 24);
        var passes = new List<DenoiseProgress>();
        var settings = new DenoiseSettings { Steps = 12, BlockLength = 8, Seed = 5, Cache = cache, Threshold = threshold };
        var result = new Denoiser(model, Mask).Run(problem, settings, passes.Add);
        if (threshold is null) Assert.That(result.ForwardPasses, Is.EqualTo(12));
        else Assert.That(result.ForwardPasses, Is.InRange(3, 12));
        Assert.That(passes[^1].Masked, Is.All.EqualTo(0));
        for (int k = 0; k < problem.Tokens.Length; k++)
            if (problem.Fixed[k] != 0) Assert.That(result.Tokens[k], Is.EqualTo(problem.Tokens[k]), $"fixed slot {k}");
    }

    /// <summary>With one step per block every pass is a block's first, which runs the whole sequence: the cache changes nothing.</summary>
    [TestCase(DenoisingCache.Prefix)]
    [TestCase(DenoisingCache.Dual)]
    public void WithOneStepPerBlockACacheIsExact(DenoisingCache cache)
    {
        var problem = Problem(2, 3, 16);
        var settings = new DenoiseSettings { Steps = 4, BlockLength = 4, Seed = 8 };
        var exact = new Denoiser(model, Mask).Run(problem, settings);
        var cached = new Denoiser(model, Mask).Run(problem, settings with { Cache = cache });
        Assert.That(cached.Tokens, Is.EqualTo(exact.Tokens));
    }

    /// <summary>
    /// No probability exceeds 1, and with at least as many slots as steps the schedule commits one or more per step, so
    /// the threshold adds nothing: the exact sampler's tokens and passes.
    /// </summary>
    [Test]
    public void AThresholdOfOneIsTheExactSchedule()
    {
        var problem = Problem(2, 3, 16);
        var settings = new DenoiseSettings { Steps = 8, BlockLength = 8, Seed = 3 };
        var exact = new Denoiser(model, Mask).Run(problem, settings);
        var thresholded = new Denoiser(model, Mask).Run(problem, settings with { Threshold = 1f });
        Assert.That(thresholded.Tokens, Is.EqualTo(exact.Tokens));
        Assert.That(thresholded.ForwardPasses, Is.EqualTo(exact.ForwardPasses));
    }

    [Test]
    public void ATinyThresholdFillsEachBlockInOnePass()
    {
        var problem = Problem(2, 3, 24);
        var passes = new List<DenoiseProgress>();
        var result = new Denoiser(model, Mask).Run(problem, new DenoiseSettings { Steps = 24, BlockLength = 8, Threshold = 1e-30f, Cache = DenoisingCache.Dual }, passes.Add);
        Assert.That(result.ForwardPasses, Is.EqualTo(3));
        Assert.That(passes.Select(p => p.Masked.Count(m => m != 0)), Is.EqualTo(new[] { 32, 16, 0 }), "each pass fills one block of both rows");
    }

    /// <summary>
    /// A token the first block commits in every row, named as the stop token: the later blocks are not run, their
    /// positions take the stop token, and the first block is what it was.
    /// </summary>
    [Test]
    public void AStopTokenCommittedInEveryRowSkipsTheLaterBlocks()
    {
        var problem = Problem(1, 3, 24);
        var settings = new DenoiseSettings { Steps = 12, BlockLength = 8, Seed = 2, Sampling = new SamplingOptions(0f) };
        var full = new Denoiser(model, Mask).Run(problem, settings);
        int first = Array.IndexOf(problem.Fixed, (byte)0);
        int stop = full.Tokens[first + 5];
        var stopped = new Denoiser(model, Mask).Run(problem, settings with { StopToken = stop });
        Assert.That(stopped.ForwardPasses, Is.EqualTo(4), "the first block's 4 steps");
        Assert.That(stopped.Tokens[..(first + 8)], Is.EqualTo(full.Tokens[..(first + 8)]));
        Assert.That(stopped.Tokens[(first + 8)..], Is.All.EqualTo(stop));
    }

    /// <summary>An infill's stop token before a fixed suffix ends nothing: the suffix's gap is still to be generated.</summary>
    [Test]
    public void AStopTokenBeforeAFixedPositionSkipsNothing()
    {
        var problem = Problem(1, 3, 24);
        int first = Array.IndexOf(problem.Fixed, (byte)0);
        problem.Fixed[first + 20] = 1;
        problem.Tokens[first + 20] = 7;
        var settings = new DenoiseSettings { Steps = 12, BlockLength = 8, Seed = 2, Sampling = new SamplingOptions(0f) };
        var full = new Denoiser(model, Mask).Run(problem, settings);
        var stopped = new Denoiser(model, Mask).Run(problem, settings with { StopToken = full.Tokens[first + 5] });
        Assert.That(stopped.ForwardPasses, Is.EqualTo(12));
        Assert.That(stopped.Tokens, Is.EqualTo(full.Tokens));
    }
}
