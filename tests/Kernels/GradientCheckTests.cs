using DiffuSharp.Kernels;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// Every float64 reference backward against central finite differences of its reference forward. The scalar
/// whose gradient is taken is L = Σ c ∘ forward(inputs) for a random upstream gradient c (for cross-entropy,
/// L = Σ losses), so the backward called with dOutput = c must give ∂L/∂input. Gradient buffers start at
/// random values and the check is on what the backward added to them, which also proves it accumulates.
/// </summary>
public class GradientCheckTests
{
    /// <summary>
    /// Step of the central difference. Its truncation error is h² · f''' / 6 ≈ 1e-13 here, its round-off about
    /// 1e-16 · |L| / h ≈ 1e-10 · |L| with |L| of order 1 to 10, both far under the tolerance.
    /// </summary>
    const double H = 1e-6;
    const double Tolerance = 1e-6;

    /// <summary>
    /// The RMSNorm and SwiGLU checks: a step of 1e-5 on smooth functions of O(1) inputs leaves a truncation error of
    /// about h² ≈ 1e-10 and a round-off of about 1e-11, so they hold to a bound ten times tighter.
    /// </summary>
    const double LlamaStep = 1e-5, LlamaTolerance = 1e-7;

    [TestCase(1, 1, 1, 3, 0)]
    [TestCase(2, 5, 3, 4, 2)]
    [TestCase(3, 4, 6, 2, 1)]
    public void EmbeddingBackward(int batch, int length, int channels, int vocab, int offset)
    {
        var rng = TestUtil.NewRandom();
        int rows = batch * length, positions = offset + length + 1;
        var ids = new int[rows];
        for (int r = 0; r < rows; r++) ids[r] = rng.Next(vocab);
        var wte = TestUtil.RandomDoubles(rng, vocab * channels);
        var wpe = TestUtil.RandomDoubles(rng, positions * channels);
        var c = TestUtil.RandomDoubles(rng, rows * channels);
        var output = new double[rows * channels];
        double Loss()
        {
            Ref.Embedding.Forward(ids, wte, wpe, output, batch, length, channels, offset);
            return TestUtil.Dot(c, output);
        }

        var (dWte, dWteStart) = Start(rng, wte.Length);
        var (dWpe, dWpeStart) = Start(rng, wpe.Length);
        Ref.Embedding.Backward(ids, c, dWte, dWpe, batch, length, channels, offset);
        AssertGradient(dWte, dWteStart, Numeric(wte, Loss), "dWte");
        AssertGradient(dWpe, dWpeStart, Numeric(wpe, Loss), "dWpe");
    }

    [TestCase(1, 3)]
    [TestCase(3, 7)]
    [TestCase(4, 16)]
    public void LayerNormBackward(int rows, int channels)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomDoubles(rng, rows * channels, 2);
        for (int i = 0; i < x.Length; i++) x[i] += 0.5;
        var weight = TestUtil.RandomDoubles(rng, channels);
        var bias = TestUtil.RandomDoubles(rng, channels);
        var c = TestUtil.RandomDoubles(rng, rows * channels);
        var output = new double[rows * channels];
        var mean = new double[rows];
        var rstd = new double[rows];
        double Loss()
        {
            Ref.LayerNorm.Forward(x, weight, bias, output, mean, rstd, rows, channels, 1e-5);
            return TestUtil.Dot(c, output);
        }

        Loss();
        var (dX, dXStart) = Start(rng, x.Length);
        var (dWeight, dWeightStart) = Start(rng, channels);
        var (dBias, dBiasStart) = Start(rng, channels);
        Ref.LayerNorm.Backward(c, x, weight, mean, rstd, dX, dWeight, dBias, rows, channels);
        AssertGradient(dX, dXStart, Numeric(x, Loss), "dX");
        AssertGradient(dWeight, dWeightStart, Numeric(weight, Loss), "dWeight");
        AssertGradient(dBias, dBiasStart, Numeric(bias, Loss), "dBias");
    }

    [TestCase(1, 1, 1, false)]
    [TestCase(3, 4, 5, false)]
    [TestCase(7, 3, 2, false)]
    [TestCase(1, 1, 1, true)]
    [TestCase(3, 4, 5, true)]
    [TestCase(7, 3, 2, true)]
    public void MatMulBackward(int m, int k, int n, bool transposed)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomDoubles(rng, m * k);
        var w = TestUtil.RandomDoubles(rng, k * n);
        var bias = TestUtil.RandomDoubles(rng, n);
        var c = TestUtil.RandomDoubles(rng, m * n);
        var output = new double[m * n];
        double Loss()
        {
            if (transposed) Ref.MatMul.ForwardTransposed(x, w, bias, output, m, k, n);
            else Ref.MatMul.Forward(x, w, bias, output, m, k, n);
            return TestUtil.Dot(c, output);
        }

        var (dX, dXStart) = Start(rng, x.Length);
        var (dW, dWStart) = Start(rng, w.Length);
        var (dBias, dBiasStart) = Start(rng, n);
        if (transposed) Ref.MatMul.BackwardTransposed(c, x, w, dX, dW, dBias, m, k, n);
        else Ref.MatMul.Backward(c, x, w, dX, dW, dBias, m, k, n);
        AssertGradient(dX, dXStart, Numeric(x, Loss), "dX");
        AssertGradient(dW, dWStart, Numeric(w, Loss), "dW");
        AssertGradient(dBias, dBiasStart, Numeric(bias, Loss), "dBias");

        var dXNoBias = new double[x.Length];
        var dWNoBias = new double[w.Length];
        if (transposed) Ref.MatMul.BackwardTransposed(c, x, w, dXNoBias, dWNoBias, default, m, k, n);
        else Ref.MatMul.Backward(c, x, w, dXNoBias, dWNoBias, default, m, k, n);
        AssertGradient(dXNoBias, new double[x.Length], Numeric(x, Loss), "dX without bias");
        AssertGradient(dWNoBias, new double[w.Length], Numeric(w, Loss), "dW without bias");
    }

    [Test]
    public void GeluBackward()
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomDoubles(rng, 40, 4);
        x[0] = 0;
        x[1] = 8;
        x[2] = -8;
        var c = TestUtil.RandomDoubles(rng, x.Length);
        var output = new double[x.Length];
        double Loss()
        {
            Ref.Gelu.Forward(x, output);
            return TestUtil.Dot(c, output);
        }

        var (dX, dXStart) = Start(rng, x.Length);
        Ref.Gelu.Backward(x, c, dX);
        AssertGradient(dX, dXStart, Numeric(x, Loss), "dX");
    }

    [Test]
    public void GeluDerivativeAtZeroIsOneHalf()
    {
        var dX = new double[1];
        Ref.Gelu.Backward(new double[] { 0 }, new double[] { 1 }, dX);
        Assert.That(dX[0], Is.EqualTo(0.5).Within(1e-15));
    }

    static IEnumerable<TestCaseData> AttentionCases()
    {
        foreach (var mode in new[] { AttentionMaskMode.Causal, AttentionMaskMode.Bidirectional, AttentionMaskMode.Explicit })
        {
            yield return new TestCaseData(mode, 2, 5, 2, 2, 4).SetName($"AttentionBackward_{mode}");
            yield return new TestCaseData(mode, 1, 6, 4, 2, 3).SetName($"AttentionBackward_Gqa2_{mode}");
            yield return new TestCaseData(mode, 2, 4, 3, 1, 5).SetName($"AttentionBackward_Gqa3_{mode}");
            yield return new TestCaseData(mode, 1, 1, 2, 1, 4).SetName($"AttentionBackward_OneToken_{mode}");
        }
    }

    [TestCaseSource(nameof(AttentionCases))]
    public void AttentionBackward(AttentionMaskMode mode, int batch, int length, int heads, int kvHeads, int headDim)
    {
        var rng = TestUtil.NewRandom();
        var shape = new AttentionShape(batch, heads, kvHeads, headDim, length, length, 0,
            heads * headDim, kvHeads * headDim, (long)length * heads * headDim, (long)length * kvHeads * headDim, 1f / MathF.Sqrt(headDim));
        var q = TestUtil.RandomDoubles(rng, batch * length * heads * headDim, 1.5);
        var k = TestUtil.RandomDoubles(rng, batch * length * kvHeads * headDim, 1.5);
        var v = TestUtil.RandomDoubles(rng, batch * length * kvHeads * headDim);
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, length, hiddenRow: length > 2 ? 1 : -1) : null;
        var c = TestUtil.RandomDoubles(rng, batch * length * heads * headDim);
        var output = new double[c.Length];
        var lse = new double[batch * heads * length];
        double Loss()
        {
            Ref.Attention.Forward(q, k, v, output, lse, shape, mode, allow);
            return TestUtil.Dot(c, output);
        }

        Loss();
        var (dq, dqStart) = Start(rng, q.Length);
        var (dk, dkStart) = Start(rng, k.Length);
        var (dv, dvStart) = Start(rng, v.Length);
        Ref.Attention.Backward(q, k, v, output, c, lse, dq, dk, dv, shape, mode, allow);
        AssertGradient(dq, dqStart, Numeric(q, Loss), "dq");
        AssertGradient(dk, dkStart, Numeric(k, Loss), "dk");
        AssertGradient(dv, dvStart, Numeric(v, Loss), "dv");
        if (allow is not null && length > 2)
        {
            Assert.That(lse[1], Is.EqualTo(double.NegativeInfinity), "row 1 sees no key");
            Assert.That(dq.AsSpan(heads * headDim, headDim).ToArray(), Is.EqualTo(dqStart.AsSpan(heads * headDim, headDim).ToArray()),
                "a query row with no visible key gets no gradient");
        }
    }

    /// <summary>q, k and v read from one packed [B, T, 3C] buffer, the gradients written into one buffer laid out the same way.</summary>
    [TestCase(AttentionMaskMode.Causal)]
    [TestCase(AttentionMaskMode.Bidirectional)]
    [TestCase(AttentionMaskMode.Explicit)]
    public void AttentionBackwardOnPackedQkv(AttentionMaskMode mode)
    {
        var rng = TestUtil.NewRandom();
        const int batch = 2, length = 5, heads = 2, headDim = 3;
        int channels = heads * headDim;
        var shape = AttentionShape.PackedSelfAttention(batch, length, heads, headDim);
        var qkv = TestUtil.RandomDoubles(rng, batch * length * 3 * channels, 1.5);
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, length, hiddenRow: 3) : null;
        var c = TestUtil.RandomDoubles(rng, batch * length * channels);
        var output = new double[c.Length];
        var lse = new double[batch * heads * length];
        double Loss()
        {
            Ref.Attention.Forward(qkv, qkv.AsSpan(channels), qkv.AsSpan(2 * channels), output, lse, shape, mode, allow);
            return TestUtil.Dot(c, output);
        }

        Loss();
        var (dqkv, start) = Start(rng, qkv.Length);
        Ref.Attention.Backward(qkv, qkv.AsSpan(channels), qkv.AsSpan(2 * channels), output, c, lse,
            dqkv, dqkv.AsSpan(channels), dqkv.AsSpan(2 * channels), shape, mode, allow);
        AssertGradient(dqkv, start, Numeric(qkv, Loss), "dqkv");
    }

    [TestCase(1, 1)]
    [TestCase(4, 5)]
    [TestCase(6, 3)]
    public void CrossEntropyGradientIsTheDerivativeOfTheWeightedLoss(int rows, int vocab)
    {
        var rng = TestUtil.NewRandom();
        var logits = TestUtil.RandomDoubles(rng, rows * vocab, 3);
        var targets = new int[rows];
        var weights = new double[rows];
        for (int r = 0; r < rows; r++)
        {
            targets[r] = rng.Next(vocab);
            weights[r] = 0.25 + rng.NextDouble();
        }
        if (rows > 1)
        {
            weights[1] = 0;
            targets[1] = -7;
        }
        var losses = new double[rows];
        var dLogits = new double[rows * vocab];
        var scratch = new double[rows * vocab];
        double Loss()
        {
            Ref.CrossEntropy.Forward(logits, targets, weights, losses, scratch, rows, vocab);
            double sum = 0;
            foreach (double l in losses) sum += l;
            return sum;
        }

        Ref.CrossEntropy.Forward(logits, targets, weights, losses, dLogits, rows, vocab);
        AssertGradient(dLogits, new double[dLogits.Length], Numeric(logits, Loss), "dLogits");
        if (rows > 1)
        {
            Assert.That(losses[1], Is.EqualTo(0), "a zero-weight row has no loss");
            Assert.That(dLogits.AsSpan(vocab, vocab).ToArray(), Is.All.EqualTo(0), "a zero-weight row has no gradient");
        }
    }

    [Test]
    public void CrossEntropyOfUniformLogitsIsLogVocab()
    {
        const int vocab = 4;
        var logits = new double[] { 2, 2, 2, 2 };
        var losses = new double[1];
        Ref.CrossEntropy.Forward(logits, new[] { 3 }, new double[] { 0.5 }, losses, logits, 1, vocab);
        Assert.That(losses[0], Is.EqualTo(0.5 * Math.Log(4)).Within(1e-15));
        Assert.That(logits, Is.EqualTo(new[] { 0.125, 0.125, 0.125, 0.5 * (0.25 - 1) }).Within(1e-15), "dLogits written over the logits");
    }

    [TestCase(1, 3)]
    [TestCase(3, 5)]
    [TestCase(2, 16)]
    public void RmsNormBackward(int rows, int channels)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomDoubles(rng, rows * channels, 2);
        var weight = TestUtil.RandomDoubles(rng, channels, 1);
        var dOut = TestUtil.RandomDoubles(rng, rows * channels, 1);
        const double eps = 1e-5;
        double Loss(double[] xv, double[] wv)
        {
            var y = new double[rows * channels];
            Ref.RmsNorm.Forward(xv, wv, y, new double[rows], rows, channels, eps);
            return TestUtil.Dot(y, dOut);
        }

        var rstd = new double[rows];
        Ref.RmsNorm.Forward(x, weight, new double[rows * channels], rstd, rows, channels, eps);
        var (dX, dXStart) = Start(rng, x.Length);
        var (dW, dWStart) = Start(rng, channels);
        Ref.RmsNorm.Backward(dOut, x, weight, rstd, dX, dW, rows, channels);
        AssertGradient(dX, dXStart, Numeric(x, () => Loss(x, weight), LlamaStep), "dX", LlamaTolerance);
        AssertGradient(dW, dWStart, Numeric(weight, () => Loss(x, weight), LlamaStep), "dWeight", LlamaTolerance);
    }

    [TestCase(1)]
    [TestCase(17)]
    public void SwiGluBackward(int n)
    {
        var rng = TestUtil.NewRandom();
        var gate = TestUtil.RandomDoubles(rng, n, 4);
        var up = TestUtil.RandomDoubles(rng, n, 2);
        var dOut = TestUtil.RandomDoubles(rng, n, 1);
        double Loss()
        {
            var y = new double[n];
            Ref.SwiGlu.Forward(gate, up, y);
            return TestUtil.Dot(y, dOut);
        }

        var (dGate, dGateStart) = Start(rng, n);
        var (dUp, dUpStart) = Start(rng, n);
        Ref.SwiGlu.Backward(gate, up, dOut, dGate, dUp);
        AssertGradient(dGate, dGateStart, Numeric(gate, Loss, LlamaStep), "dGate", LlamaTolerance);
        AssertGradient(dUp, dUpStart, Numeric(up, Loss, LlamaStep), "dUp", LlamaTolerance);
    }

    /// <summary>
    /// Three AdamW steps with β1 = 1/2, β2 = 15/16, lr = 1/8, λ = 1/4 (exact in binary), ε = 1e-8 (moves p by under 1e-9).
    /// Parameter a starts at 1 with gradients 2, −1, 4:
    ///   step 1: m = 1, v = 1/16 · 4 = 1/4; m̂ = 1 / (1 − 1/2) = 2, v̂ = (1/4) / (1/16) = 4, m̂/√v̂ = 1;
    ///           p = 1 − 1/8 · (1 + 1/4 · 1) = 0.84375. (Without bias correction m/√v = 2 and p would be 0.71875.)
    ///   step 2: m = 1/2 − 1/2 = 0, so only the decay acts: p = 0.84375 · (1 − 1/32) = 0.8173828125.
    ///   step 3: m = 2, v = 15/16 · 0.296875 + 1/16 · 16 = 1.2783203125; m̂ = 2 / (7/8) = 16/7,
    ///           v̂ = 1.2783203125 / (1 − (15/16)³) = 1.2783203125 / 0.176025390625 = 748/103;
    ///           p = 0.8173828125 − 1/8 · ((16/7) / √(748/103) + 1/4 · 0.8173828125) = 0.6858166776...
    /// Parameter b starts at 2 with zero gradients: m̂ = 0, so the decoupled decay alone scales it by 1 − lr·λ = 31/32
    /// per step, 1.9375, 1.876953125, 1.81829833984375 (an L2 penalty folded into the gradient would instead be
    /// normalised by √v̂ and move p by lr each step).
    /// </summary>
    [Test]
    public void AdamWMatchesHandDerivedSteps()
    {
        var step = new AdamWStep(0.125f, 0.5f, 0.9375f, 1e-8f, 0.25f, 1);
        var param = new double[] { 1, 2 };
        var m = new double[2];
        var v = new double[2];
        var expectedA = new[] { 0.84375, 0.8173828125, 0.8173828125 - 0.125 * (16.0 / 7 / Math.Sqrt(748.0 / 103) + 0.25 * 0.8173828125) };
        var expectedB = new[] { 1.9375, 1.876953125, 1.81829833984375 };
        var gradients = new[] { 2.0, -1.0, 4.0 };
        for (int t = 1; t <= 3; t++)
        {
            Ref.AdamW.Update(param, new[] { gradients[t - 1], 0 }, m, v, step with { Step = t });
            Assert.That(param[0], Is.EqualTo(expectedA[t - 1]).Within(2e-9), $"parameter a after step {t}");
            Assert.That(param[1], Is.EqualTo(expectedB[t - 1]).Within(1e-15), $"parameter b after step {t}");
        }
        Assert.That(expectedA[2], Is.EqualTo(0.6858166776).Within(1e-10), "the hand-derived value of step 3");
        Assert.That(m, Is.EqualTo(new[] { 2.0, 0 }));
        Assert.That(v, Is.EqualTo(new[] { 1.2783203125, 0 }));
    }

    [Test]
    public void AdamWRejectsStepZero()
    {
        var step = new AdamWStep(0.1f, 0.9f, 0.999f, 1e-8f, 0f, 0);
        Assert.Throws<ArgumentException>(() => Ref.AdamW.Update(new double[1], new double[1], new double[1], new double[1], step));
    }

    /// <summary>A gradient buffer at random values, and a copy of them.</summary>
    static (double[] Buffer, double[] Start) Start(Random rng, int n)
    {
        var start = TestUtil.RandomDoubles(rng, n);
        return ((double[])start.Clone(), start);
    }

    /// <summary>(L(x + h eᵢ) − L(x − h eᵢ)) / 2h for every i, restoring x (and what L wrote) afterwards.</summary>
    static double[] Numeric(double[] x, Func<double> loss, double h = H)
    {
        var g = new double[x.Length];
        for (int i = 0; i < x.Length; i++)
        {
            double saved = x[i];
            x[i] = saved + h;
            double plus = loss();
            x[i] = saved - h;
            double minus = loss();
            x[i] = saved;
            g[i] = (plus - minus) / (2 * h);
        }
        loss();
        return g;
    }

    /// <summary>What the backward added to a buffer that started at start, against the numeric gradient.</summary>
    static void AssertGradient(double[] accumulated, double[] start, double[] numeric, string what, double tolerance = Tolerance) =>
        Assert.That(TestUtil.AddedRelativeL2(accumulated, start, numeric), Is.LessThan(tolerance), what);
}
