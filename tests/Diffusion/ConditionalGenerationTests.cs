using DiffuSharp.Diffusion;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;
using DiffuSharp.Tests.CliTests;
using DiffuSharp.Tests.Models;

namespace DiffuSharp.Tests.Diffusion;

/// <summary>Conditional generation (method §5, §8): the row's layout, the query never changed by denoising, and `diffu generate --sft-prompt`.</summary>
public sealed class ConditionalGenerationTests
{
    static readonly SftTokens Tokens = new(Bos: 5, Sep: 6, Eos: 7, Pad: 8);

    [Test]
    public void TheRowIsBosQuerySepThenAnswerSlotsUpToTheCutoff()
    {
        var row = DenoisingPrompts.Conditional(Tokens, [20, 21, 22], cutoff: 9, positions: 64);
        Assert.That(row.Tokens[..5], Is.EqualTo(new[] { 5, 20, 21, 22, 6 }));
        Assert.That(row.Fixed, Is.EqualTo(new byte[] { 1, 1, 1, 1, 1, 0, 0, 0, 0 }));
        Assert.That(row.Gaps, Is.EqualTo(new[] { (5, 9) }));
        Assert.That(DenoisingPrompts.Conditional(Tokens, [20], cutoff: 256, positions: 16).Tokens, Has.Length.EqualTo(16), "at most the model's positions");
        var e = Assert.Throws<DiffuException>(() => DenoisingPrompts.Conditional(Tokens, [20, 21, 22], cutoff: 5, positions: 64))!;
        Assert.That(e.Message, Does.Contain("leave no answer slot in --cutoff 5"));
    }

    [TestCase(DenoisingStrategy.TopK, 0f)]
    [TestCase(DenoisingStrategy.Random, 1f)]
    public void DenoisingNeverChangesTheQuery(DenoisingStrategy strategy, float temperature)
    {
        using var device = new CpuDevice();
        using var model = Gpt2Model.Load(Gpt2FixtureTests.FixtureDir, device);
        var row = DenoisingPrompts.Conditional(Tokens, Enumerable.Range(30, 20).ToArray(), cutoff: 48, positions: 64);
        var problem = DenoisingPrompts.Stack([row, row]);
        var passes = new List<DenoiseProgress>();
        var result = new Denoiser(model, 3).Run(problem,
            new DenoiseSettings { Steps = 16, Strategy = strategy, Seed = 2, Sampling = new SamplingOptions(temperature) }, passes.Add);
        foreach (var pass in passes.Append(new DenoiseProgress(0, 0, result.Tokens, new byte[result.Tokens.Length])))
            for (int k = 0; k < problem.Tokens.Length; k++)
                if (problem.Fixed[k] != 0) Assert.That(pass.Tokens[k], Is.EqualTo(problem.Tokens[k]), $"query slot {k} after pass {pass.Pass}");
    }

    [Test]
    public void GenerateDenoisesTheAnswerRegionAndRefusesAQueryWithAPrompt()
    {
        var (code, _, err) = CliRun.Run("generate", "--model", Gpt2FixtureTests.FixtureDir, "--tokenizer", CliRun.Gpt2Tokenizer, "--mask-token", "3",
            "--sft-prompt", "What is 2 plus 3?", "--cutoff", "40", "--steps", "8", "--sft-tokens", "0,1,2,4", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(err, Does.Contain("1 x 40 tokens"));
        Assert.That(CliRun.Run("generate", "--model", Gpt2FixtureTests.FixtureDir, "--tokenizer", CliRun.Gpt2Tokenizer, "--mask-token", "3",
            "--sft-prompt", "q", "--prompt", "p", "--device", "cpu").Code, Is.EqualTo(2));
    }
}
