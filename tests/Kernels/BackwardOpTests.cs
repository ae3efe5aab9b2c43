using DiffuSharp.Kernels;
using DiffuSharp.Runtime;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// The backward and training ops of <see cref="Device"/> (attention's backward has <see cref="AttentionTests"/>) on
/// every device, against the float64 reference on fresh random inputs, at shapes that cut across the CPU's vector width
/// (16) and matmul tile (6 x 32) and the ILGPU kernels' tiles (matmul 64 x 64 x 16, column sums in chunks of 32+ rows).
/// <para>
/// Accumulation: every gradient buffer starts at random values of the size of the gradient itself, and what the op
/// added (result − start) is compared with the reference gradient, so an op that overwrote its output, or added twice,
/// fails. Float atomics (embedding, LayerNorm weights, bias) only reorder float32 additions of a few dozen terms.
/// </para>
/// </summary>
public sealed class BackwardOpTests(string deviceName) : DeviceFixture(deviceName)
{
    /// <summary>
    /// Relative L2 bound for float32 against float64, as for the forward ops: round-off of a length-K sum grows like
    /// √K · 6e-8, about 2e-6 for the longest sums here (K = 1100 in matmul, 50257 in the cross-entropy sum).
    /// </summary>
    const double Tolerance = 1e-5;

    // ---- embedding, GELU, LayerNorm --------------------------------------------------------------

    /// <summary>Small vocabularies make many tokens share a row of dWte, so the atomic adds collide.</summary>
    [TestCase(1, 1, 1, 1, 1, 0)]
    [TestCase(1, 1, 1, 3, 3, 0)]
    [TestCase(2, 5, 24, 9, 8, 1)]
    [TestCase(2, 5, 33, 11, 9, 3)]
    [TestCase(2, 7, 33, 11, 12, 3)]
    [TestCase(3, 17, 70, 4, 20, 0)]
    [TestCase(3, 50, 130, 20, 52, 0)]
    [TestCase(4, 64, 40, 7, 70, 6)]
    [TestCase(4, 64, 768, 100, 71, 5)]
    public void EmbeddingBackwardMatchesReference(int batch, int length, int channels, int vocab, int positions, int offset)
    {
        var rng = TestUtil.NewRandom();
        var ids = new int[batch * length];
        for (int i = 0; i < ids.Length; i++) ids[i] = rng.Next(vocab);
        var dOut = TestUtil.RandomFloats(rng, batch * length * channels);
        var expectedWte = new double[vocab * channels];
        var expectedWpe = new double[positions * channels];
        Ref.Embedding.Backward(ids, TestUtil.ToDouble(dOut), expectedWte, expectedWpe, batch, length, channels, offset);
        var wteStart = TestUtil.GradientStart(rng, expectedWte);
        var wpeStart = TestUtil.GradientStart(rng, expectedWpe);

        using var idsT = device.FromArray(ids, batch, length);
        using var dOutT = device.FromArray(dOut, batch, length, channels);
        using var dWte = device.FromArray(wteStart, vocab, channels);
        using var dWpe = device.FromArray(wpeStart, positions, channels);
        device.EmbeddingBackward(idsT, dOutT, dWte, dWpe, offset);
        Assert.That(TestUtil.AddedRelativeL2(device.ToArray(dWte), wteStart, expectedWte), Is.LessThan(Tolerance), "dWte");
        Assert.That(TestUtil.AddedRelativeL2(device.ToArray(dWpe), wpeStart, expectedWpe), Is.LessThan(Tolerance), "dWpe");
    }

    [TestCase(1)]
    [TestCase(7)]
    [TestCase(33)]
    [TestCase(1000)]
    [TestCase(1001)]
    [TestCase(4099)]
    [TestCase(100_003)]
    public void GeluBackwardMatchesReference(int n)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, n, 6f);
        if (n > 3)
        {
            x[0] = 0;
            x[1] = 30;
            x[2] = -30;
        }
        CheckGeluBackward(rng, x, TestUtil.RandomFloats(rng, n));
    }

    /// <summary>Far tails (where exp(2u) would overflow float) and the neighbourhood of zero.</summary>
    [Test]
    public void GeluBackwardIsAccurateInTheTails()
    {
        var x = new[] { -60f, -30f, -12f, -9.5f, -5f, -1f, -1e-3f, 0f, 1e-3f, 1f, 5f, 9.5f, 12f, 30f, 60f };
        var dOut = new float[x.Length];
        Array.Fill(dOut, 1f);
        CheckGeluBackward(TestUtil.NewRandom(), x, dOut);
    }

    void CheckGeluBackward(Random rng, float[] x, float[] dOut)
    {
        int n = x.Length;
        var expected = new double[n];
        Ref.Gelu.Backward(TestUtil.ToDouble(x), TestUtil.ToDouble(dOut), expected);
        var start = TestUtil.GradientStart(rng, expected);

        using var xT = device.FromArray(x, n);
        using var dOutT = device.FromArray(dOut, n);
        using var dX = device.FromArray(start, n);
        device.GeluBackward(xT, dOutT, dX);
        var actual = device.ToArray(dX);
        Assert.That(actual, Has.All.Matches<float>(float.IsFinite));
        Assert.That(TestUtil.AddedRelativeL2(actual, start, expected), Is.LessThan(Tolerance), "dX");
    }

    /// <summary>300 and 70 rows split the dWeight/dBias column sums into several chunks of rows. Mean and rstd come from the device's forward.</summary>
    [TestCase(1, 1)]
    [TestCase(3, 7)]
    [TestCase(3, 33)]
    [TestCase(10, 24)]
    [TestCase(17, 33)]
    [TestCase(17, 100)]
    [TestCase(5, 130)]
    [TestCase(2, 769)]
    [TestCase(64, 768)]
    [TestCase(200, 17)]
    [TestCase(300, 20)]
    [TestCase(70, 300)]
    public void LayerNormBackwardMatchesReference(int rows, int channels)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, rows * channels, 2f);
        for (int i = 0; i < x.Length; i++) x[i] += 0.5f;
        var weight = TestUtil.RandomFloats(rng, channels);
        var bias = TestUtil.RandomFloats(rng, channels);
        var dOut = TestUtil.RandomFloats(rng, rows * channels);

        using var xT = device.FromArray(x, rows, channels);
        using var wT = device.FromArray(weight, channels);
        using var bT = device.FromArray(bias, channels);
        using var output = device.Allocate(DType.F32, rows, channels);
        using var mean = device.Allocate(DType.F32, rows);
        using var rstd = device.Allocate(DType.F32, rows);
        device.LayerNorm(xT, wT, bT, output, mean, rstd, 1e-5f);

        var expectedX = new double[x.Length];
        var expectedW = new double[channels];
        var expectedB = new double[channels];
        Ref.LayerNorm.Backward(TestUtil.ToDouble(dOut), TestUtil.ToDouble(x), TestUtil.ToDouble(weight), TestUtil.ToDouble(device.ToArray(mean)),
            TestUtil.ToDouble(device.ToArray(rstd)), expectedX, expectedW, expectedB, rows, channels);
        var xStart = TestUtil.GradientStart(rng, expectedX);
        var wStart = TestUtil.GradientStart(rng, expectedW);
        var bStart = TestUtil.GradientStart(rng, expectedB);

        using var dOutT = device.FromArray(dOut, rows, channels);
        using var dX = device.FromArray(xStart, rows, channels);
        using var dW = device.FromArray(wStart, channels);
        using var dB = device.FromArray(bStart, channels);
        device.LayerNormBackward(dOutT, xT, wT, mean, rstd, dX, dW, dB);
        Assert.That(TestUtil.AddedRelativeL2(device.ToArray(dX), xStart, expectedX), Is.LessThan(Tolerance), "dX");
        Assert.That(TestUtil.AddedRelativeL2(device.ToArray(dW), wStart, expectedW), Is.LessThan(Tolerance), "dWeight");
        Assert.That(TestUtil.AddedRelativeL2(device.ToArray(dB), bStart, expectedB), Is.LessThan(Tolerance), "dBias");

        using var dXFrozen = device.FromArray(xStart, rows, channels);
        device.LayerNormBackward(dOutT, xT, wT, mean, rstd, dXFrozen, null, null);
        Assert.That(TestUtil.AddedRelativeL2(device.ToArray(dXFrozen), xStart, expectedX), Is.LessThan(Tolerance), "dX of a frozen norm (no parameter gradients)");
    }

    // ---- matmul ----------------------------------------------------------------------------------

    /// <summary>Both weight layouts, with and without a bias; on the ILGPU device the products run through the tiled kernel with a and b transposed in turn.</summary>
    [TestCase(1, 1, 1)]
    [TestCase(3, 17, 65)]
    [TestCase(3, 64, 64)]
    [TestCase(4, 130, 17)]
    [TestCase(17, 33, 5)]
    [TestCase(17, 65, 3)]
    [TestCase(37, 45, 70)]
    [TestCase(64, 17, 65)]
    [TestCase(64, 64, 64)]
    [TestCase(65, 130, 70)]
    [TestCase(130, 200, 70)]
    [TestCase(150, 20, 9)]
    public void MatMulBackwardMatchesReference(int m, int k, int n) => CheckMatMulBackward(m, k, n);

    /// <summary>Shapes across the CPU GEMM's blocks (K cut at 1024, 512 columns of b and 512 rows of a a block, the split over the cores).</summary>
    [TestCase(7, 1030, 33)]
    [TestCase(257, 64, 301)]
    [TestCase(1030, 9, 40)]
    [TestCase(40, 1100, 530)]
    public void MatMulBackwardAcrossCpuBlocksMatchesReference(int m, int k, int n)
    {
        IgnoreOnSimulator(AcrossCpuBlocks);
        CheckMatMulBackward(m, k, n);
    }

    void CheckMatMulBackward(int m, int k, int n)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, m * k);
        var w = TestUtil.RandomFloats(rng, k * n);
        var dOut = TestUtil.RandomFloats(rng, m * n);
        using var xT = device.FromArray(x, m, k);
        using var dOutT = device.FromArray(dOut, m, n);
        foreach (bool transposed in new[] { false, true })
        {
            foreach (bool withBias in new[] { true, false })
            {
                string what = $"{(transposed ? "w [N, K]" : "w [K, N]")}, {(withBias ? "bias" : "no bias")}";
                var expectedX = new double[m * k];
                var expectedW = new double[k * n];
                var expectedB = new double[withBias ? n : 0];
                if (transposed) Ref.MatMul.BackwardTransposed(TestUtil.ToDouble(dOut), TestUtil.ToDouble(x), TestUtil.ToDouble(w), expectedX, expectedW, expectedB, m, k, n);
                else Ref.MatMul.Backward(TestUtil.ToDouble(dOut), TestUtil.ToDouble(x), TestUtil.ToDouble(w), expectedX, expectedW, expectedB, m, k, n);
                var xStart = TestUtil.GradientStart(rng, expectedX);
                var wStart = TestUtil.GradientStart(rng, expectedW);
                var bStart = TestUtil.GradientStart(rng, expectedB);

                using var wT = transposed ? device.FromArray(w, n, k) : device.FromArray(w, k, n);
                using var dX = device.FromArray(xStart, m, k);
                using var dW = transposed ? device.FromArray(wStart, n, k) : device.FromArray(wStart, k, n);
                using var dB = withBias ? device.FromArray(bStart, n) : null;
                if (transposed) device.MatMulTransposedBackward(dOutT, xT, wT, dX, dW, dB);
                else device.MatMulBackward(dOutT, xT, wT, dX, dW, dB);
                Assert.That(TestUtil.AddedRelativeL2(device.ToArray(dX), xStart, expectedX), Is.LessThan(Tolerance), $"dX ({what})");
                Assert.That(TestUtil.AddedRelativeL2(device.ToArray(dW), wStart, expectedW), Is.LessThan(Tolerance), $"dW ({what})");
                if (dB is not null) Assert.That(TestUtil.AddedRelativeL2(device.ToArray(dB), bStart, expectedB), Is.LessThan(Tolerance), $"dBias ({what})");
            }
        }
    }

    [Test]
    public void MatMulBackwardAddsHandComputedProducts()
    {
        // x = [[1, 2]], w = [[3], [4]] (K = 2, N = 1), dOut = [[5]]: dX = 5 · wᵀ = [15, 20], dW = xᵀ · 5 = [5, 10], dBias = 5.
        using var dOut = device.FromArray(new float[] { 5 }, 1, 1);
        using var x = device.FromArray(new float[] { 1, 2 }, 1, 2);
        using var w = device.FromArray(new float[] { 3, 4 }, 2, 1);
        using var dX = device.FromArray(new float[] { 1, 1 }, 1, 2);
        using var dW = device.FromArray(new float[] { 1, 1 }, 2, 1);
        using var dB = device.FromArray(new float[] { 1 }, 1);
        device.MatMulBackward(dOut, x, w, dX, dW, dB);
        Assert.That(device.ToArray(dX), Is.EqualTo(new float[] { 16, 21 }));
        Assert.That(device.ToArray(dW), Is.EqualTo(new float[] { 6, 11 }));
        Assert.That(device.ToArray(dB), Is.EqualTo(new float[] { 6 }));
    }

    // ---- cross-entropy ---------------------------------------------------------------------------

    /// <summary>
    /// Every third row has weight 0 and a target outside the vocabulary (above it, −1, or below −vocab) that must not be
    /// read: no loss and no gradient there. dLogits and losses start at random values and are written, not added; run
    /// once into a separate dLogits, which leaves the logits alone, and once in place over the logits.
    /// </summary>
    [TestCase(1, 1)]
    [TestCase(3, 1)]
    [TestCase(1, 5)]
    [TestCase(7, 5)]
    [TestCase(9, 5)]
    [TestCase(9, 33)]
    [TestCase(4, 1000)]
    [TestCase(4, 3001)]
    [TestCase(2, 50257)]
    [TestCase(3, 50257)]
    [TestCase(8, 50257)]
    public void CrossEntropyMatchesReference(int rows, int vocab)
    {
        var rng = TestUtil.NewRandom();
        var logits = TestUtil.RandomFloats(rng, rows * vocab, 4f);
        var targets = new int[rows];
        var weights = new float[rows];
        for (int r = 0; r < rows; r++)
        {
            bool ignored = r % 3 == 1;
            targets[r] = ignored ? (r / 3 % 3) switch { 0 => vocab + 17, 1 => -1, _ => -1 - vocab } : rng.Next(vocab);
            weights[r] = ignored ? 0f : (float)(0.1 + 1.9 * rng.NextDouble());
        }
        if (rows > 2) targets[2] = vocab - 1;
        var expectedLosses = new double[rows];
        var expectedDLogits = new double[rows * vocab];
        Ref.CrossEntropy.Forward(TestUtil.ToDouble(logits), targets, TestUtil.ToDouble(weights), expectedLosses, expectedDLogits, rows, vocab);

        using var logitsT = device.FromArray(logits, rows, vocab);
        using var targetsT = device.FromArray(targets, rows);
        using var weightsT = device.FromArray(weights, rows);
        using var losses = device.FromArray(TestUtil.RandomFloats(rng, rows), rows);
        using var dLogits = device.FromArray(TestUtil.RandomFloats(rng, rows * vocab), rows, vocab);
        device.CrossEntropy(logitsT, targetsT, weightsT, losses, dLogits);
        var actualLosses = device.ToArray(losses);
        var actualDLogits = device.ToArray(dLogits);
        Assert.That(TestUtil.RelativeL2(actualLosses, expectedLosses), Is.LessThan(Tolerance), "losses");
        Assert.That(TestUtil.RelativeL2(actualDLogits, expectedDLogits), Is.LessThan(Tolerance), "dLogits (written, not added)");
        for (int r = 1; r < rows; r += 3)
        {
            Assert.That(actualLosses[r], Is.EqualTo(0f), $"row {r} has weight 0 and no loss");
            Assert.That(actualDLogits.AsSpan(r * vocab, vocab).ToArray(), Is.All.EqualTo(0f), $"row {r} has weight 0 and no gradient");
        }
        Assert.That(device.ToArray(logitsT), Is.EqualTo(logits), "logits untouched when dLogits is separate");

        device.Fill(losses, float.NaN);
        device.CrossEntropy(logitsT, targetsT, weightsT, losses, logitsT);
        Assert.That(TestUtil.RelativeL2(device.ToArray(losses), expectedLosses), Is.LessThan(Tolerance), "losses, in place");
        Assert.That(device.ToArray(logitsT), Is.EqualTo(actualDLogits), "dLogits written over the logits");
    }

    /// <summary>
    /// Logits spread over [−100, 20] put the shifted exponent anywhere in [−120, 0], so the exp underflows to zero in
    /// part of the row: every probability must match element by element (relative 1e-5, the exp alone is within 2 ulp),
    /// and those below float's smallest normal (1.2e-38) may flush to zero.
    /// </summary>
    [Test]
    public void CrossEntropyIsAccurateOverTheWholeExpRange()
    {
        var rng = TestUtil.NewRandom();
        const int vocab = 50257;
        var logits = new float[vocab];
        for (int i = 0; i < vocab; i++) logits[i] = (float)(rng.NextDouble() * 120 - 100);
        logits[7] = float.MinValue;
        var expected = new double[vocab];
        var expectedLoss = new double[1];
        Ref.CrossEntropy.Forward(TestUtil.ToDouble(logits), new[] { 3 }, new double[] { 1 }, expectedLoss, expected, 1, vocab);

        using var logitsT = device.FromArray(logits, 1, vocab);
        using var targets = device.FromArray(new[] { 3 }, 1);
        using var weights = device.FromArray(new float[] { 1 }, 1);
        using var loss = device.Allocate(DType.F32, 1);
        using var dLogits = device.Allocate(DType.F32, 1, vocab);
        device.CrossEntropy(logitsT, targets, weights, loss, dLogits);
        Assert.That(device.ToArray(loss)[0], Is.EqualTo(expectedLoss[0]).Within(1e-5 * Math.Abs(expectedLoss[0])), "loss");
        var actual = device.ToArray(dLogits);
        for (int i = 0; i < vocab; i++)
        {
            double bound = Math.Abs(expected[i]) < 1.2e-38 ? 1.2e-38 : 1e-5 * Math.Abs(expected[i]);
            if (Math.Abs(actual[i] - expected[i]) > bound)
                Assert.Fail($"dLogits[{i}] = {actual[i]:R}, expected {expected[i]:R} (logit {logits[i]:R})");
        }
        Assert.That(actual[7], Is.EqualTo(0f), "a logit at float.MinValue has probability 0");
    }

    // ---- optimizer and gradient reductions -------------------------------------------------------

    /// <summary>
    /// One step from random moments at step number <paramref name="stepNumber"/>. The parameter change is compared as
    /// well as the parameter, so that the bound says something about the update (lr 0.05 keeps the float rounding of
    /// p − Δ near 1e-6 of Δ).
    /// </summary>
    [TestCase(1, 1)]
    [TestCase(1000, 1)]
    [TestCase(5001, 7)]
    public void AdamWMatchesReference(int n, int stepNumber)
    {
        var rng = TestUtil.NewRandom();
        var step = new AdamWStep(0.05f, 0.9f, 0.95f, 1e-8f, 0.1f, stepNumber);
        var param = TestUtil.RandomFloats(rng, n);
        var grad = TestUtil.RandomFloats(rng, n, 0.1f);
        var m = TestUtil.RandomFloats(rng, n, 0.01f);
        var v = TestUtil.RandomFloats(rng, n, 0.01f);
        for (int i = 0; i < n; i++) v[i] *= v[i];
        var expectedParam = TestUtil.ToDouble(param);
        var expectedM = TestUtil.ToDouble(m);
        var expectedV = TestUtil.ToDouble(v);
        Ref.AdamW.Update(expectedParam, TestUtil.ToDouble(grad), expectedM, expectedV, step);

        using var paramT = device.FromArray(param, n);
        using var gradT = device.FromArray(grad, n);
        using var mT = device.FromArray(m, n);
        using var vT = device.FromArray(v, n);
        device.AdamW(paramT, gradT, mT, vT, step);
        var actual = device.ToArray(paramT);
        var change = new float[n];
        var expectedChange = new double[n];
        for (int i = 0; i < n; i++)
        {
            change[i] = actual[i] - param[i];
            expectedChange[i] = expectedParam[i] - param[i];
        }
        Assert.That(TestUtil.RelativeL2(actual, expectedParam), Is.LessThan(Tolerance), "param");
        Assert.That(TestUtil.RelativeL2(change, expectedChange), Is.LessThan(Tolerance), "param change");
        Assert.That(TestUtil.RelativeL2(device.ToArray(mT), expectedM), Is.LessThan(Tolerance), "m");
        Assert.That(TestUtil.RelativeL2(device.ToArray(vT), expectedV), Is.LessThan(Tolerance), "v");
    }

    /// <summary>Steps 1 to <paramref name="steps"/> in a row from zero moments, each with a fresh gradient of the given scale.</summary>
    static IEnumerable<TestCaseData> AdamWStepsCases()
    {
        var slow = new AdamWStep(1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1);
        foreach (int n in new[] { 1, 17, 100_003 })
            yield return new TestCaseData(n, slow, 3, 0.01f);
        yield return new TestCaseData(5000, new AdamWStep(0.01f, 0.9f, 0.999f, 1e-8f, 0.05f, 1), 1, 0.1f);
    }

    [TestCaseSource(nameof(AdamWStepsCases))]
    public void AdamWStepsFromZeroMomentsMatchReference(int n, AdamWStep step, int steps, float gradientScale)
    {
        var rng = TestUtil.NewRandom();
        var param = TestUtil.RandomFloats(rng, n);
        var paramD = TestUtil.ToDouble(param);
        var mD = new double[n];
        var vD = new double[n];
        using var paramT = device.FromArray(param, n);
        using var gradT = device.Allocate(DType.F32, n);
        using var mT = device.Zeros(DType.F32, n);
        using var vT = device.Zeros(DType.F32, n);
        for (int t = 1; t <= steps; t++)
        {
            var grad = TestUtil.RandomFloats(rng, n, gradientScale);
            Ref.AdamW.Update(paramD, TestUtil.ToDouble(grad), mD, vD, step with { Step = t });
            device.Upload(gradT, 0, grad);
            device.AdamW(paramT, gradT, mT, vT, step with { Step = t });
        }
        Assert.That(TestUtil.RelativeL2(device.ToArray(mT), mD), Is.LessThan(Tolerance), "m");
        Assert.That(TestUtil.RelativeL2(device.ToArray(vT), vD), Is.LessThan(Tolerance), "v");
        Assert.That(TestUtil.RelativeL2(device.ToArray(paramT), paramD), Is.LessThan(1e-6), "param");
    }

    [Test]
    public void AdamWRefusesStepZero()
    {
        using var t = device.Zeros(DType.F32, 4);
        Assert.Throws<ArgumentException>(() => device.AdamW(t, t, t, t, new AdamWStep(0.01f, 0.9f, 0.999f, 1e-8f, 0.05f, 0)));
    }

    /// <summary>Partial sums are double on every device and on the host, so the result is exact to double round-off.</summary>
    [TestCase(1)]
    [TestCase(17)]
    [TestCase(1000)]
    [TestCase(5000)]
    [TestCase(70001)]
    [TestCase(1_048_579)]
    public void SumOfSquaresMatchesDouble(int n)
    {
        var x = TestUtil.RandomFloats(TestUtil.NewRandom(), n, 3f);
        double expected = 0;
        foreach (float f in x) expected += (double)f * f;

        using var t = device.FromArray(x, n);
        Assert.That(device.SumOfSquares(t), Is.EqualTo(expected).Within(1e-12 * expected));
    }

    [TestCase(1, 0.37f)]
    [TestCase(1, 0.3f)]
    [TestCase(17, 0.3f)]
    [TestCase(3001, 0.37f)]
    [TestCase(5000, -2f)]
    [TestCase(1_048_579, 0.3f)]
    public void ScaleMultipliesEveryElement(int n, float factor)
    {
        var x = TestUtil.RandomFloats(TestUtil.NewRandom(), n, 3f);
        var expected = new float[n];
        for (int i = 0; i < n; i++) expected[i] = x[i] * factor;

        using var t = device.FromArray(x, n);
        device.Scale(t, factor);
        Assert.That(device.ToArray(t), Is.EqualTo(expected));
    }
}
