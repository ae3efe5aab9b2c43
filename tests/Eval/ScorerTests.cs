using DiffuSharp.Eval;
using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Tests.Eval;

/// <summary>
/// The scorers against an independent PyTorch implementation of their definitions
/// (tests/reference/eval_reference.py: the §9 scorer and the ELBO bound with injected masks, the AR
/// baseline's mean log-probability) on the GPT-2 and LLaMA fixture models; then the properties the
/// reference cannot see: Philox mask draws, and scores that do not depend on how rows are packed.
/// </summary>
[TestFixture("cpu", "gpt2")]
[TestFixture("cpu", "llama")]
[TestFixture("ilgpu-cpu", "gpt2")]
[TestFixture("ilgpu-cpu", "llama")]
[TestFixture("cuda", "gpt2")]
[TestFixture("cuda", "llama")]
public sealed class ScorerTests(string deviceName, string family)
{
    const double Tolerance = 1e-4;

    Device device = null!;
    ITrainableModel model = null!;
    SafeTensorsFile expected = null!;
    ScoringSequence[] sequences = null!;
    int maskId;

    [OneTimeSetUp]
    public void SetUp()
    {
        device = TestDevices.Create(deviceName);
        model = ModelLoader.Load(Path.Combine(TestUtil.Fixtures, family == "gpt2" ? "gpt2-tiny" : "llama-tiny"), device);
        expected = SafeTensorsFile.Open(Path.Combine(TestUtil.Fixtures, "eval", $"scorer_{family}.safetensors"));
        maskId = expected.ReadInt32("mask_id")[0];
        var ids = expected.ReadInt32("ids");
        var maskable = expected.ReadBytes("maskable");
        var lengths = expected.ReadInt32("lengths");
        int longest = expected.Info("ids").Shape[1];
        sequences = lengths.Select((n, s) => new ScoringSequence(s, 0, ids.AsSpan(s * longest, n).ToArray(),
            maskable.AsSpan(s * longest, n).ToArray().Select(m => m != 0).ToArray())).ToArray();
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        expected?.Dispose();
        model?.Dispose();
        device?.Dispose();
    }

    /// <summary>Row r's masks from the fixture tensor [S, K, L] (true where the reference masked).</summary>
    bool[] Masks(string name, int s, int k)
    {
        int[] shape = expected.Info(name).Shape;
        var all = expected.ReadBytes(name);
        return all.AsSpan((s * shape[1] + k) * shape[2], sequences[s].Length).ToArray().Select(m => m != 0).ToArray();
    }

    static void AssertClose(double actual, double wanted, string what) =>
        Assert.That(actual, Is.EqualTo(wanted).Within(Tolerance * Math.Max(1, Math.Abs(wanted))), what);

    [Test]
    public void DiffusionScorerRowsMatchPyTorch()
    {
        int steps = expected.Info("diffusion_ce").Shape[1];
        var wantCe = expected.ReadFloat32("diffusion_ce");
        var wantScore = expected.ReadFloat32("diffusion_score");
        var rows = new List<LossRow>();
        var counts = new List<int>();
        for (int s = 0; s < sequences.Length; s++)
            for (int k = 0; k < steps; k++)
            {
                var masked = Masks("diffusion_masks", s, k);
                counts.Add(masked.Count(m => m));
                rows.Add(DiffusionScorer.Row(sequences[s], masked, maskId, 1f));
            }
        var losses = new RowLosses(model, AttentionMaskMode.Bidirectional, 64, 1 << 16).Run(rows);
        for (int s = 0; s < sequences.Length; s++)
        {
            double total = 0;
            for (int k = 0; k < steps; k++)
            {
                int r = s * steps + k;
                double ce = counts[r] == 0 ? 0 : losses[r] / counts[r];
                AssertClose(ce, wantCe[r], $"sequence {s}, rate {steps - k}/{steps}");
                total += ce;
            }
            AssertClose(total / steps, wantScore[s], $"score of sequence {s}");
        }
    }

    [Test]
    public void ElboRowsMatchPyTorch()
    {
        int samples = expected.Info("elbo_loss").Shape[1];
        var levels = expected.ReadFloat32("elbo_t");
        var want = expected.ReadFloat32("elbo_loss");
        var rows = new List<LossRow>();
        for (int s = 0; s < sequences.Length; s++)
            for (int k = 0; k < samples; k++)
                rows.Add(DiffusionScorer.Row(sequences[s], Masks("elbo_masks", s, k), maskId, 1f / levels[s * samples + k]));
        var losses = new RowLosses(model, AttentionMaskMode.Bidirectional, 64, 1 << 16).Run(rows);
        for (int r = 0; r < rows.Count; r++) AssertClose(losses[r], want[r], $"row {r}");
    }

    [Test]
    public void ArScoresMatchPyTorch()
    {
        var want = expected.ReadFloat32("ar_score");
        var scores = new ArScorer(model, 3, 1 << 16).Score(sequences);
        for (int s = 0; s < sequences.Length; s++) AssertClose(scores[s], want[s], $"sequence {s}");
    }

    [Test]
    public void ScoresDoNotDependOnHowRowsArePacked()
    {
        if (deviceName != "cpu") Assert.Ignore("how rows are packed is host logic, checked on the cpu; the kernels are checked against PyTorch by the other tests");
        var together = new DiffusionScorer(model, maskId, 5, 7, 64, 1 << 16);
        var alone = new DiffusionScorer(model, maskId, 5, 7, 1, 1 << 16);
        var a = together.Score(sequences);
        var b = sequences.Select(s => alone.Score([s])[0]).ToArray();
        for (int s = 0; s < sequences.Length; s++) AssertClose(a[s], b[s], $"sequence {s}");
        Assert.That(together.Passes, Is.EqualTo(1), "every row of every length in one padded pass");
        Assert.That(alone.Passes, Is.EqualTo(5 * sequences.Length));

        var ar = new ArScorer(model, 64, 1 << 16);
        var arTogether = ar.Score(sequences);
        for (int s = 0; s < sequences.Length; s++) AssertClose(arTogether[s], new ArScorer(model, 1, 1 << 16).Score([sequences[s]])[0], $"AR sequence {s}");
    }
}

/// <summary>The scorers' random masks: Philox keyed by (seed, example, choice, draw, position), host-side, so the same everywhere.</summary>
public sealed class ScorerMaskTests
{
    static ScoringSequence Sequence(int example, int choice, int context, int choiceTokens) =>
        ScoringSequence.ContextAndChoice(example, choice, Enumerable.Range(1, context).ToArray(), Enumerable.Range(100, choiceTokens).ToArray());

    [Test]
    public void RateOneMasksEveryMaskableTokenAndNothingElse()
    {
        var s = Sequence(3, 1, 5, 7);
        var masked = DiffusionScorer.Mask(9, s, 4, 1.0);
        Assert.That(masked, Is.EqualTo(s.Maskable));
        Assert.That(DiffusionScorer.Mask(9, s, 4, 0.0), Has.None.True);
    }

    [Test]
    public void MaskRateMatchesTheRateAndDrawsAreKeyed()
    {
        var s = Sequence(0, 0, 1, 20000);
        foreach (double rate in new[] { 0.1, 0.5, 0.9 })
        {
            double share = DiffusionScorer.Mask(1, s, 2, rate).Count(m => m) / 20000.0;
            Assert.That(share, Is.EqualTo(rate).Within(5 * Math.Sqrt(rate * (1 - rate) / 20000)), $"rate {rate}");
        }
        var a = DiffusionScorer.Mask(1, s, 2, 0.5);
        Assert.That(DiffusionScorer.Mask(1, s, 2, 0.5), Is.EqualTo(a), "the same key draws the same");
        Assert.That(DiffusionScorer.Mask(1, s, 3, 0.5), Is.Not.EqualTo(a), "another draw");
        Assert.That(DiffusionScorer.Mask(2, s, 2, 0.5), Is.Not.EqualTo(a), "another seed");
        Assert.That(DiffusionScorer.Mask(1, Sequence(0, 1, 1, 20000), 2, 0.5), Is.Not.EqualTo(a), "another choice");
        Assert.That(DiffusionScorer.Mask(1, Sequence(1, 0, 1, 20000), 2, 0.5), Is.Not.EqualTo(a), "another example");
    }
}

/// <summary>The generation-quality measures of the unconditional task (the paper's Fig. 3).</summary>
public sealed class GenerationQualityTests
{
    [Test]
    public void DistinctNCountsDistinctNGramsOverAllSamples()
    {
        int[][] samples = [[1, 2, 1, 2], [1, 2, 3]];
        Assert.That(Diversity.DistinctN(samples, 1), Is.EqualTo(3.0 / 7));
        Assert.That(Diversity.DistinctN(samples, 2), Is.EqualTo(3.0 / 5), "(1,2) (2,1) (1,2) | (1,2) (2,3)");
        Assert.That(Diversity.DistinctN(samples, 3), Is.EqualTo(3.0 / 3));
        Assert.That(Diversity.DistinctN(samples, 5), Is.EqualTo(0));
    }

    [Test]
    public void TokenEntropyIsPerSampleThenAveraged()
    {
        Assert.That(Diversity.MeanTokenEntropy([[7, 7, 7, 7], [1, 2, 3, 4]]), Is.EqualTo(Math.Log(4) / 2).Within(1e-12));
        Assert.That(Diversity.MeanTokenEntropy([[1, 1, 2, 2]]), Is.EqualTo(Math.Log(2)).Within(1e-12));
    }

    /// <summary>Against PyTorch's causal logits for the fixture's own ids (tests/reference/gpt2_reference.py), in float64 here.</summary>
    [Test]
    public void GenerativePerplexityIsTheExpOfTheJudgesMeanCrossEntropy()
    {
        using var device = new CpuDevice();
        using var judge = ModelLoader.Load(Path.Combine(TestUtil.Fixtures, "gpt2-tiny"), device);
        using var expected = SafeTensorsFile.Open(Path.Combine(TestUtil.Fixtures, "gpt2-tiny", "expected.safetensors"));
        var ids = expected.ReadInt32("ids");
        var logits = expected.ReadFloat32("logits_causal");
        int[] shape = expected.Info("logits_causal").Shape;
        int rows = shape[0], length = shape[1], vocab = shape[2];
        double nll = 0;
        var samples = new List<int[]>();
        for (int b = 0; b < rows; b++)
        {
            samples.Add(ids.AsSpan(b * length + 1, length - 1).ToArray());
            for (int p = 0; p + 1 < length; p++)
            {
                var row = logits.AsSpan((b * length + p) * vocab, vocab);
                double max = double.NegativeInfinity, sum = 0;
                foreach (float v in row) max = Math.Max(max, v);
                foreach (float v in row) sum += Math.Exp(v - max);
                nll -= row[ids[b * length + p + 1]] - max - Math.Log(sum);
            }
        }
        // Each sample is the row after its first token, which therefore plays the judge's start token: one start per row.
        var perRow = samples.Select((s, b) => new GenerativePerplexity(judge, ids[b * length], 4, 1 << 16).Of([s])).ToArray();
        double want = Math.Exp(nll / (rows * (length - 1)));
        double got = Math.Exp(perRow.Select(p => Math.Log(p)).Average());
        Assert.That(got, Is.EqualTo(want).Within(want * 1e-4));
    }
}
