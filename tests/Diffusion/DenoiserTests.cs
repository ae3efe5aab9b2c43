using DiffuSharp.Diffusion;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;
using DiffuSharp.Tests.Models;

namespace DiffuSharp.Tests.Diffusion;

/// <summary>The samplers (method §8), on the PyTorch fixture model (vocabulary 512).</summary>
public sealed class DenoiserTests
{
    const int Mask = 3, Start = 0;
    CpuDevice device = null!;
    Gpt2Model model = null!;

    [OneTimeSetUp]
    public void SetUp()
    {
        device = new CpuDevice();
        model = Gpt2Model.Load(Gpt2FixtureTests.FixtureDir, device);
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        model?.Dispose();
        device?.Dispose();
    }

    static DenoisingProblem Prompted(int batch, int promptLength, int length)
    {
        var rows = Enumerable.Range(0, batch)
            .Select(r => DenoisingPrompts.Completion(Start, Enumerable.Range(10 + r, promptLength).ToArray(), length, 64)).ToList();
        return DenoisingPrompts.Stack(rows);
    }

    static IEnumerable<DenoisingStrategy> Strategies => Enum.GetValues<DenoisingStrategy>();

    [TestCaseSource(nameof(Strategies))]
    public void PromptIsUnchangedNoSlotStaysMaskedAndThereAreExactlyTPasses(DenoisingStrategy strategy)
    {
        var problem = Prompted(2, 5, 20);
        var passes = new List<DenoiseProgress>();
        var result = new Denoiser(model, Mask).Run(problem, new DenoiseSettings { Steps = 8, Strategy = strategy, Seed = 4 }, passes.Add);
        Assert.That(result.ForwardPasses, Is.EqualTo(8));
        Assert.That(passes.Select(p => p.Pass), Is.EqualTo(Enumerable.Range(1, 8)));
        for (int k = 0; k < problem.Tokens.Length; k++)
            if (problem.Fixed[k] != 0) Assert.That(result.Tokens[k], Is.EqualTo(problem.Tokens[k]), $"fixed slot {k}");
        Assert.That(passes[^1].Masked, Is.All.EqualTo(0), "no slot is left masked after the last pass");
        Assert.That(passes[^1].Tokens, Is.EqualTo(result.Tokens));
    }

    [Test]
    public void RandomSamplerCommitsMaskedOverTPlusOneOnAverage()
    {
        // At loop index t (T−1 … 1) each still-masked slot is committed with probability 1/(t+1), so the
        // expected number committed is (#still masked)/(t+1): summed over runs, the counts must agree.
        const int steps = 4, runs = 150, generated = 40;
        var problem = Prompted(1, 2, generated);
        var committed = new double[steps];
        var expected = new double[steps];
        for (int run = 0; run < runs; run++)
        {
            var masks = new List<int>();
            new Denoiser(model, Mask).Run(problem, new DenoiseSettings { Steps = steps, Strategy = DenoisingStrategy.Random, Seed = (ulong)run },
                p => masks.Add(p.Masked.Count(m => m != 0)));
            int before = generated;
            for (int i = 0; i + 1 < steps; i++)
            {
                int t = steps - 1 - i;
                committed[i] += before - masks[i];
                expected[i] += before / (double)(t + 1);
                before = masks[i];
            }
        }
        for (int i = 0; i + 1 < steps; i++)
            Assert.That(committed[i], Is.EqualTo(expected[i]).Within(5 * Math.Sqrt(expected[i])), $"loop index {steps - 1 - i}");
    }

    [TestCase(DenoisingStrategy.TopK)]
    [TestCase(DenoisingStrategy.MaxProb)]
    [TestCase(DenoisingStrategy.Margin)]
    [TestCase(DenoisingStrategy.Entropy)]
    public void ConfidenceSamplersKeepAtMostTheScheduledSlotsMasked(DenoisingStrategy strategy)
    {
        const int steps = 6, generated = 25;
        var problem = Prompted(2, 3, generated);
        var masks = new List<byte[]>();
        new Denoiser(model, Mask).Run(problem, new DenoiseSettings { Steps = steps, Strategy = strategy, Seed = 1 }, p => masks.Add(p.Masked));
        for (int i = 0; i + 1 < steps; i++)
        {
            int t = steps - 1 - i, bound = generated * t / steps;
            for (int r = 0; r < 2; r++)
                Assert.That(masks[i].AsSpan(r * problem.Length, problem.Length).ToArray().Count(m => m != 0), Is.LessThanOrEqualTo(bound),
                    $"row {r} after loop index {t}");
            if (i > 0)
                for (int k = 0; k < masks[i].Length; k++)
                    if (masks[i - 1][k] == 0) Assert.That(masks[i][k], Is.Zero, "a committed slot is never masked again");
        }
    }

    [TestCaseSource(nameof(Strategies))]
    public void ArgmaxDecodingIsDeterministicWhateverTheSeed(DenoisingStrategy strategy)
    {
        if (strategy == DenoisingStrategy.Random) Assert.Ignore("the random sampler draws its commits even under argmax");
        var problem = Prompted(1, 4, 16);
        var settings = new DenoiseSettings { Steps = 8, Strategy = strategy, Sampling = new SamplingOptions(0f) };
        var a = new Denoiser(model, Mask).Run(problem, settings with { Seed = 1 });
        var b = new Denoiser(model, Mask).Run(problem, settings with { Seed = 99 });
        Assert.That(b.Tokens, Is.EqualTo(a.Tokens));
    }

    [Test]
    public void SeededSamplingIsReproducibleAndSeedsDiffer()
    {
        var problem = Prompted(2, 3, 24);
        var settings = new DenoiseSettings { Steps = 6, Strategy = DenoisingStrategy.TopK, Sampling = new SamplingOptions(1f, 0, 0.9f), Seed = 5 };
        var a = new Denoiser(model, Mask).Run(problem, settings);
        var b = new Denoiser(model, Mask).Run(problem, settings);
        var c = new Denoiser(model, Mask).Run(problem, settings with { Seed = 6 });
        Assert.That(b.Tokens, Is.EqualTo(a.Tokens));
        Assert.That(c.Tokens, Is.Not.EqualTo(a.Tokens));
    }

    [Test]
    public void SemiAutoregressiveBlocksFillLeftToRight()
    {
        var problem = Prompted(1, 2, 24);
        var masks = new List<byte[]>();
        var result = new Denoiser(model, Mask).Run(problem, new DenoiseSettings { Steps = 6, BlockLength = 8, Seed = 2 }, p => masks.Add(p.Masked));
        Assert.That(result.ForwardPasses, Is.EqualTo(6));
        // 3 blocks of 8 slots, 2 passes each: after pass 2 the first block is done and the later two untouched.
        int first = 3;
        Assert.That(masks[1].Skip(first).Take(8), Is.All.EqualTo(0));
        Assert.That(masks[1].Skip(first + 8), Is.All.EqualTo(1));
        Assert.That(masks[3].Skip(first + 8).Take(8), Is.All.EqualTo(0));
        Assert.That(masks[3].Skip(first + 16), Is.All.EqualTo(1));
        Assert.That(() => new Denoiser(model, Mask).Run(problem, new DenoiseSettings { Steps = 5, BlockLength = 8 }),
            Throws.TypeOf<DiffuException>().With.Message.Contains("multiple"));
    }

    [Test]
    public void TokenBudgetCapsCommitsPerStep()
    {
        var problem = Prompted(1, 2, 30);
        var masks = new List<int>();
        new Denoiser(model, Mask).Run(problem, new DenoiseSettings { Steps = 4, TokensPerStep = 3, Strategy = DenoisingStrategy.MaxProb }, p => masks.Add(p.Masked.Count(m => m != 0)));
        Assert.That(masks.Take(3), Is.EqualTo(new[] { 27, 24, 21 }));
        Assert.That(masks[^1], Is.Zero, "the last pass fills what the budget left");
    }

    [TestCase("ilgpu-cpu")]
    [TestCase("cuda")]
    public void SameSeedGivesTheSameTextOnAnotherDevice(string deviceName)
    {
        using var other = TestDevices.Create(deviceName);
        using var otherModel = Gpt2Model.Load(Gpt2FixtureTests.FixtureDir, other);
        var problem = Prompted(2, 3, 9);
        var settings = new DenoiseSettings { Steps = 3, Strategy = DenoisingStrategy.TopK, Sampling = new SamplingOptions(0.8f, 0, 0.95f), Seed = 12 };
        var here = new Denoiser(model, Mask).Run(problem, settings);
        var there = new Denoiser(otherModel, Mask).Run(problem, settings);
        Assert.That(there.Tokens, Is.EqualTo(here.Tokens));
    }

    /// <summary>Blocks are counted in long arithmetic: a block length near int.MaxValue is one block, not a wrapped-around third.</summary>
    [Test]
    public void ABlockLongerThanTheRowIsOneBlock()
    {
        var result = new Denoiser(model, Mask).Run(Prompted(1, 2, 6), new DenoiseSettings { Steps = 2, BlockLength = int.MaxValue });
        Assert.That(result.ForwardPasses, Is.EqualTo(2));
    }

    [Test]
    public void InfillSliceArithmetic()
    {
        var tokenizer = DiffuSharp.Text.Gpt2Tokenizer.FromDirectory(Path.Combine(TestUtil.SharedData, "tokenizers", "gpt2"))!;
        var row = DenoisingPrompts.Infill(50256, "The cat<mask:4> on the mat.", tokenizer, 1024);
        var prefix = tokenizer.Encode("The cat");
        var suffix = tokenizer.Encode(" on the mat.");
        int n = row.Tokens.Length;
        Assert.That(n, Is.EqualTo(1 + prefix.Count + 4 + suffix.Count));
        Assert.That(row.Gaps, Is.EqualTo(new[] { (1 + prefix.Count, n - suffix.Count) }), "the gap is [|prefix|, N − |suffix|) with the start token counted in the prefix");
        Assert.That(row.Tokens.Skip(1).Take(prefix.Count), Is.EqualTo(prefix));
        Assert.That(row.Tokens.Skip(n - suffix.Count), Is.EqualTo(suffix));
        Assert.That(row.Fixed.Select((f, i) => (f, i)).Where(x => x.f == 0).Select(x => x.i), Is.EqualTo(Enumerable.Range(1 + prefix.Count, 4)));
        Assert.That(() => DenoisingPrompts.Infill(0, "no placeholder", tokenizer, 1024), Throws.TypeOf<DiffuException>());
    }
}
