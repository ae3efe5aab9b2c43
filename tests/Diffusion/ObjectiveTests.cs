using DiffuSharp.Diffusion;

namespace DiffuSharp.Tests.Diffusion;

/// <summary>The training objective's checks (method §2-§4): noise, shift, 1/t, denominator, annealing.</summary>
public sealed class ObjectiveTests
{
    const int Mask = 7;

    [Test]
    public void ToyLossMatchesTheSpecFormulaByHand()
    {
        // B = 2, L = 4, V = 3. Known t, masks and logits; the spec's loss computed here directly:
        // loss = Σ_b Σ_j (1/t_b) · CE(z[b, j], x0[b, j+1]) · lm[b, j+1] / Σ lm[:, 1:].
        int[] x0 = [0, 1, 2, 1, 2, 2, 0, 1];
        byte[] noise = [1, 0, 1, 1, 0, 1, 0, 0];    // row 0: positions 0, 2, 3; row 1: position 1
        float[] t = [0.5f, 0.25f];
        var rng = TestUtil.NewRandom();
        var logits = new double[2 * 4 * 3];
        for (int i = 0; i < logits.Length; i++) logits[i] = rng.NextDouble() * 4 - 2;

        var batch = new ObjectiveBatch(2, 4);
        noise.CopyTo(batch.Masked, 0);
        t.CopyTo(batch.NoiseLevels, 0);
        new Objective(TrainingObjective.Diffusion, Mask, 0).ApplyNoise(x0, batch);

        Assert.That(batch.Inputs, Is.EqualTo(new[] { Mask, 1, Mask, Mask, 2, Mask, 0, 1 }));
        Assert.That(batch.TargetCount, Is.EqualTo(3), "masked targets at positions >= 1: (0,2), (0,3), (1,1); position 0 never counts");

        double CE(int b, int j, int target)
        {
            var z = logits.AsSpan((b * 4 + j) * 3, 3);
            double max = Math.Max(z[0], Math.Max(z[1], z[2]));
            double lse = max + Math.Log(Math.Exp(z[0] - max) + Math.Exp(z[1] - max) + Math.Exp(z[2] - max));
            return lse - z[target];
        }
        double want = (CE(0, 1, 2) / 0.5 + CE(0, 2, 1) / 0.5 + CE(1, 0, 2) / 0.25) / 3;

        var losses = new double[8];
        var grad = new double[logits.Length];
        DiffuSharp.Kernels.Reference.CrossEntropy.Forward(logits, batch.Targets, TestUtil.ToDouble(batch.Weights), losses, grad, 8, 3);
        Assert.That(losses.Sum(), Is.EqualTo(want).Within(1e-6));
        Assert.That(batch.Weights[3], Is.Zero, "the last logit of a sequence is discarded");
        Assert.That(batch.Weights[0], Is.Zero, "row 0 predicts position 1, which is not masked");
    }

    [Test]
    public void NoiseLevelsAndMaskRatesFollowTheSpec()
    {
        var objective = new Objective(TrainingObjective.Diffusion, Mask, (ulong)TestUtil.NewRandom().NextInt64());
        const int b = 64, l = 256;
        var x0 = new int[b * l];
        var batch = new ObjectiveBatch(b, l);
        double tSum = 0, deviation = 0, variance = 0;
        for (ulong draw = 0; draw < 20; draw++)
        {
            objective.Prepare(x0, batch, draw);
            for (int s = 0; s < b; s++)
            {
                float t = batch.NoiseLevels[s];
                tSum += t;
                Assert.That(t, Is.InRange(Objective.NoiseFloor, 1f));
                int count = batch.Masked.AsSpan(s * l, l).ToArray().Count(x => x != 0);
                double sd = Math.Sqrt(l * t * (1 - t));
                // A Binomial(l, t) count: 5 standard deviations, plus a few tokens for the small-t rows where the
                // normal approximation fails (at t = 1e-3 the mean is 0.26 tokens and 3 masks are already 5 sd).
                Assert.That(Math.Abs(count - l * t), Is.LessThanOrEqualTo(5 * sd + 4), $"row masked {count} of {l} at t = {t}");
                deviation += count - l * t;
                variance += l * t * (1 - t);
            }
        }
        Assert.That(tSum / (20 * b), Is.EqualTo(0.5).Within(0.05), "t = ε + (1 − ε)U has mean ≈ 0.5");
        Assert.That(Math.Abs(deviation) / Math.Sqrt(variance), Is.LessThan(5), "all rows together: masked tokens ≈ Σ l·t (5 standard deviations)");
    }

    [Test]
    public void SourceTokensAreNeverMaskedAndDrawsAreReproducible()
    {
        var objective = new Objective(TrainingObjective.Diffusion, Mask, 5);
        const int b = 4, l = 32;
        var x0 = Enumerable.Range(0, b * l).Select(i => i % 5).ToArray();
        var source = new byte[b * l];
        for (int s = 0; s < b; s++) for (int i = 0; i < 10; i++) source[s * l + i] = 1;
        var first = new ObjectiveBatch(b, l);
        var again = new ObjectiveBatch(b, l);
        var other = new ObjectiveBatch(b, l);
        objective.Prepare(x0, first, 3, 1f, source);
        objective.Prepare(x0, again, 3, 1f, source);
        objective.Prepare(x0, other, 4, 1f, source);
        for (int k = 0; k < b * l; k++)
            if (source[k] != 0) Assert.That(first.Inputs[k], Is.EqualTo(x0[k]));
        Assert.That(again.Inputs, Is.EqualTo(first.Inputs));
        Assert.That(again.Weights, Is.EqualTo(first.Weights));
        Assert.That(other.Inputs, Is.Not.EqualTo(first.Inputs), "another draw index gives other noise");
    }

    [Test]
    public void WeightsAreOneOverTOverTheMaskedCountAndScaleForAccumulation()
    {
        var objective = new Objective(TrainingObjective.Diffusion, Mask, 11);
        var batch = new ObjectiveBatch(3, 20);
        objective.Prepare(new int[60], batch, 0, scale: 0.5f);
        for (int s = 0; s < 3; s++)
            for (int i = 0; i < 19; i++)
            {
                float want = batch.Masked[s * 20 + i + 1] != 0 ? 0.5f / (batch.NoiseLevels[s] * batch.TargetCount) : 0f;
                Assert.That(batch.Weights[s * 20 + i], Is.EqualTo(want));
            }
    }

    [Test]
    public void AutoregressiveWeightsAverageEveryNextTokenPrediction()
    {
        var batch = new ObjectiveBatch(2, 5);
        int[] x0 = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        new Objective(TrainingObjective.Autoregressive, -1, 0).Prepare(x0, batch, 0);
        Assert.That(batch.Inputs, Is.EqualTo(x0));
        Assert.That(batch.Targets, Is.EqualTo(new[] { 2, 3, 4, 5, 0, 7, 8, 9, 10, 0 }));
        Assert.That(batch.Weights, Is.EqualTo(new[] { 1 / 8f, 1 / 8f, 1 / 8f, 1 / 8f, 0, 1 / 8f, 1 / 8f, 1 / 8f, 1 / 8f, 0 }));
    }

    [TestCase(0, 100, 0.01)]
    [TestCase(49, 100, 0.5)]
    [TestCase(99, 100, 1.0)]
    [TestCase(5000, 100, 1.0)]
    [TestCase(0, 0, 1.0)]
    public void AnnealRatioIsStepPlusOneOverAnnealSteps(long step, long anneal, double ratio) =>
        Assert.That(Objective.AnnealRatio(step, anneal), Is.EqualTo(ratio).Within(1e-12));

    [TestCase(19, 100)]
    [TestCase(69, 100)]
    public void AnnealMaskOpensTheFutureWithProbabilityR(long step, long anneal)
    {
        const int l = 200;
        var objective = new Objective(TrainingObjective.Diffusion, Mask, (ulong)TestUtil.NewRandom().NextInt64());
        var allow = objective.AnnealMask(l, step, anneal)!;
        int open = 0, future = l * (l - 1) / 2;
        for (int i = 0; i < l; i++)
            for (int j = 0; j < l; j++)
            {
                if (j <= i) Assert.That(allow[i * l + j], Is.EqualTo(1), "the diagonal and the past are always visible");
                else open += allow[i * l + j];
            }
        double r = Objective.AnnealRatio(step, anneal);
        Assert.That(open / (double)future, Is.EqualTo(r).Within(5 * Math.Sqrt(r * (1 - r) / future)));
        Assert.That(objective.AnnealMask(l, step, anneal), Is.EqualTo(allow), "one mask per step, reproducible");
        Assert.That(objective.AnnealMask(l, step + 1, anneal), Is.Not.EqualTo(allow), "a fresh mask each step");
        Assert.That(objective.AnnealMask(l, anneal - 1, anneal), Is.Null, "full bidirectional attention from the last annealing step on");
    }
}
