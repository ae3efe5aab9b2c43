using DiffuSharp.Kernels;
using DiffuSharp.Runtime;
using Cpu = DiffuSharp.Kernels.Cpu;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// Every CPU backward kernel (and cross-entropy, AdamW and the gradient reductions) against its float64 reference
/// on fresh random inputs, at shapes that are not multiples of the vector width (16), the matmul tile (6 × 32) or the
/// attention blocks (64), and once each through the public <see cref="CpuDevice"/> API.
/// <para>
/// Accumulation: every gradient buffer starts at random values with the size of the gradient itself, and what the
/// kernel added (result − start) is compared with the reference gradient, so a kernel that overwrote its output, or
/// added twice, fails.
/// </para>
/// </summary>
public class CpuBackwardTests
{
    /// <summary>
    /// Relative L2 bound for float32 against float64, as for the forward kernels: round-off of a length-K sum grows like
    /// √K · 6e-8, about 2e-6 for the longest sums here (K = 1100 in matmul, 50257 in the cross-entropy sum, which
    /// is accumulated per lane and added in double).
    /// </summary>
    const double Tolerance = 1e-5;

    [TestCase(1, 1, 1, 3, 0)]
    [TestCase(2, 7, 33, 11, 3)]
    [TestCase(3, 50, 130, 20, 0)]
    [TestCase(4, 64, 768, 100, 5)]
    public void EmbeddingBackwardMatchesReference(int batch, int length, int channels, int vocab, int offset)
    {
        var rng = TestUtil.NewRandom();
        int rows = batch * length, positions = offset + length + 2;
        var ids = new int[rows];
        for (int r = 0; r < rows; r++) ids[r] = rng.Next(vocab);
        var dOut = TestUtil.RandomFloats(rng, rows * channels);
        var expectedWte = new double[vocab * channels];
        var expectedWpe = new double[positions * channels];
        Ref.Embedding.Backward(ids, TestUtil.ToDouble(dOut), expectedWte, expectedWpe, batch, length, channels, offset);

        var dWte = StartLike(rng, expectedWte, out var wteStart);
        var dWpe = StartLike(rng, expectedWpe, out var wpeStart);
        Cpu.Embedding.Backward(ids, dOut, dWte, dWpe, batch, length, channels, offset);
        AssertAdded(dWte, wteStart, expectedWte, "dWte");
        AssertAdded(dWpe, wpeStart, expectedWpe, "dWpe");
    }

    [Test]
    public void EmbeddingBackwardRejectsIdsOutsideTheTable()
    {
        var dWte = new float[4 * 3];
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            Cpu.Embedding.Backward(new[] { 1, 4 }, new float[6], dWte, new float[2 * 3], 1, 2, 3, 0));
    }

    [TestCase(1, 1)]
    [TestCase(3, 7)]
    [TestCase(17, 33)]
    [TestCase(5, 130)]
    [TestCase(64, 768)]
    [TestCase(200, 17)]
    public void LayerNormBackwardMatchesReference(int rows, int channels)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, rows * channels, 2f);
        for (int i = 0; i < x.Length; i++) x[i] += 0.5f;
        var weight = TestUtil.RandomFloats(rng, channels);
        var bias = TestUtil.RandomFloats(rng, channels);
        var dOut = TestUtil.RandomFloats(rng, rows * channels);
        var output = new float[rows * channels];
        var mean = new float[rows];
        var rstd = new float[rows];
        Cpu.LayerNorm.Forward(x, weight, bias, output, mean, rstd, rows, channels, 1e-5f);

        var expectedX = new double[x.Length];
        var expectedW = new double[channels];
        var expectedB = new double[channels];
        Ref.LayerNorm.Backward(TestUtil.ToDouble(dOut), TestUtil.ToDouble(x), TestUtil.ToDouble(weight), TestUtil.ToDouble(mean),
            TestUtil.ToDouble(rstd), expectedX, expectedW, expectedB, rows, channels);

        var dX = StartLike(rng, expectedX, out var xStart);
        var dW = StartLike(rng, expectedW, out var wStart);
        var dB = StartLike(rng, expectedB, out var bStart);
        Cpu.LayerNorm.Backward(dOut, x, weight, mean, rstd, dX, dW, dB, rows, channels);
        AssertAdded(dX, xStart, expectedX, "dX");
        AssertAdded(dW, wStart, expectedW, "dWeight");
        AssertAdded(dB, bStart, expectedB, "dBias");
    }

    [TestCase(1, 1, 1)]
    [TestCase(3, 17, 65)]
    [TestCase(4, 130, 17)]
    [TestCase(17, 65, 3)]
    [TestCase(64, 64, 64)]
    [TestCase(130, 200, 70)]
    [TestCase(7, 1030, 33)]
    [TestCase(257, 64, 301)]
    [TestCase(1030, 9, 40)]
    [TestCase(40, 1100, 530)]
    public void MatMulBackwardMatchesReference(int m, int k, int n)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, m * k);
        var w = TestUtil.RandomFloats(rng, k * n);
        var dOut = TestUtil.RandomFloats(rng, m * n);
        foreach (bool transposed in new[] { false, true })
        {
            foreach (bool withBias in new[] { true, false })
            {
                string what = $"{(transposed ? "transposed" : "plain")}, {(withBias ? "bias" : "no bias")}";
                var expectedX = new double[m * k];
                var expectedW = new double[k * n];
                var expectedB = new double[withBias ? n : 0];
                if (transposed) Ref.MatMul.BackwardTransposed(TestUtil.ToDouble(dOut), TestUtil.ToDouble(x), TestUtil.ToDouble(w), expectedX, expectedW, expectedB, m, k, n);
                else Ref.MatMul.Backward(TestUtil.ToDouble(dOut), TestUtil.ToDouble(x), TestUtil.ToDouble(w), expectedX, expectedW, expectedB, m, k, n);

                var dX = StartLike(rng, expectedX, out var xStart);
                var dW = StartLike(rng, expectedW, out var wStart);
                var dB = StartLike(rng, expectedB, out var bStart);
                if (transposed) Cpu.MatMul.BackwardTransposed(dOut, x, w, dX, dW, dB, m, k, n);
                else Cpu.MatMul.Backward(dOut, x, w, dX, dW, dB, m, k, n);
                AssertAdded(dX, xStart, expectedX, $"dX ({what})");
                AssertAdded(dW, wStart, expectedW, $"dW ({what})");
                if (withBias) AssertAdded(dB, bStart, expectedB, $"dBias ({what})");
            }
        }
    }

    [Test]
    public void MatMulBackwardAddsHandComputedProducts()
    {
        // x = [[1, 2]], w = [[3], [4]] (K = 2, N = 1), dOut = [[5]]: dX = 5 · wᵀ = [15, 20], dW = xᵀ · 5 = [5, 10], dBias = 5.
        var dX = new float[] { 1, 1 };
        var dW = new float[] { 1, 1 };
        var dB = new float[] { 1 };
        Cpu.MatMul.Backward(new float[] { 5 }, new float[] { 1, 2 }, new float[] { 3, 4 }, dX, dW, dB, 1, 2, 1);
        Assert.That(dX, Is.EqualTo(new float[] { 16, 21 }));
        Assert.That(dW, Is.EqualTo(new float[] { 6, 11 }));
        Assert.That(dB, Is.EqualTo(new float[] { 6 }));
    }

    [Test]
    public void MatMulBackwardRejectsShortSpans()
    {
        Assert.Throws<ArgumentException>(() => Cpu.MatMul.Backward(new float[4], new float[6], new float[6], new float[5], new float[6], default, 2, 3, 2));
        Assert.Throws<ArgumentException>(() => Cpu.MatMul.BackwardTransposed(new float[4], new float[6], new float[6], new float[6], new float[6], new float[1], 2, 3, 2));
    }

    [TestCase(1)]
    [TestCase(7)]
    [TestCase(33)]
    [TestCase(1000)]
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
        var dOut = TestUtil.RandomFloats(rng, n);
        var expected = new double[n];
        Ref.Gelu.Backward(TestUtil.ToDouble(x), TestUtil.ToDouble(dOut), expected);
        var dX = StartLike(rng, expected, out var start);
        Cpu.Gelu.Backward(x, dOut, dX);
        AssertAdded(dX, start, expected, "dX");
    }

    static IEnumerable<TestCaseData> AttentionCases()
    {
        foreach (var mode in new[] { AttentionMaskMode.Causal, AttentionMaskMode.Bidirectional, AttentionMaskMode.Explicit })
        {
            foreach (int length in new[] { 1, 7, 33, 100 })
            {
                foreach (int headDim in new[] { 8, 64 })
                    yield return new TestCaseData(mode, 2, length, 3, 3, headDim);
            }
            yield return new TestCaseData(mode, 2, 33, 4, 2, 16).SetName($"AttentionBackwardMatchesReference_Gqa_{mode}");
            yield return new TestCaseData(mode, 1, 100, 8, 2, 24).SetName($"AttentionBackwardMatchesReference_Gqa4_{mode}");
            yield return new TestCaseData(mode, 1, 130, 2, 1, 72).SetName($"AttentionBackwardMatchesReference_LongOddHead_{mode}");
        }
    }

    [TestCaseSource(nameof(AttentionCases))]
    public void AttentionBackwardMatchesReference(AttentionMaskMode mode, int batch, int length, int heads, int kvHeads, int headDim)
    {
        var rng = TestUtil.NewRandom();
        var shape = new AttentionShape(batch, heads, kvHeads, headDim, length, length, 0,
            heads * headDim, kvHeads * headDim, (long)length * heads * headDim, (long)length * kvHeads * headDim, 1f / MathF.Sqrt(headDim));
        var q = TestUtil.RandomFloats(rng, batch * length * heads * headDim, 2f);
        var k = TestUtil.RandomFloats(rng, batch * length * kvHeads * headDim, 2f);
        var v = TestUtil.RandomFloats(rng, batch * length * kvHeads * headDim);
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, length, hiddenRow: length / 2) : null;
        CheckAttentionBackward(rng, q, k, v, 0, 0, shape, mode, allow);
    }

    /// <summary>A chunk of queries after a prefix of keys (the device API asks for offset 0, the kernels do not need it).</summary>
    [TestCase(5, 10, 16)]
    [TestCase(70, 100, 32)]
    public void AttentionBackwardWithQueryOffset(int queries, int offset, int headDim)
    {
        var rng = TestUtil.NewRandom();
        const int batch = 2, heads = 2;
        int keys = offset + queries;
        var shape = new AttentionShape(batch, heads, heads, headDim, queries, keys, offset,
            heads * headDim, heads * headDim, (long)queries * heads * headDim, (long)keys * heads * headDim, 0.3f);
        var q = TestUtil.RandomFloats(rng, batch * queries * heads * headDim, 2f);
        var k = TestUtil.RandomFloats(rng, batch * keys * heads * headDim, 2f);
        var v = TestUtil.RandomFloats(rng, batch * keys * heads * headDim);
        CheckAttentionBackward(rng, q, k, v, 0, 0, shape, AttentionMaskMode.Causal, null);
        CheckAttentionBackward(rng, q, k, v, 0, 0, shape, AttentionMaskMode.Bidirectional, null);
    }

    [TestCase(AttentionMaskMode.Causal, 1, 8)]
    [TestCase(AttentionMaskMode.Causal, 70, 16)]
    [TestCase(AttentionMaskMode.Bidirectional, 33, 64)]
    [TestCase(AttentionMaskMode.Explicit, 100, 8)]
    public void AttentionBackwardOnPackedQkv(AttentionMaskMode mode, int length, int headDim)
    {
        var rng = TestUtil.NewRandom();
        const int batch = 2, heads = 3;
        int c = heads * headDim;
        var shape = AttentionShape.PackedSelfAttention(batch, length, heads, headDim);
        var qkv = TestUtil.RandomFloats(rng, batch * length * 3 * c, 2f);
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, length, hiddenRow: 5) : null;
        CheckAttentionBackward(rng, qkv, qkv, qkv, c, 2 * c, shape, mode, allow);
    }

    /// <summary>
    /// Runs both forwards (CPU output and lse for the CPU backward, float64 ones for the reference backward) and both
    /// backwards. When q, k and v are one packed buffer (the same array at offsets 0, kOffset, vOffset), the gradients
    /// are one buffer laid out the same way.
    /// </summary>
    static void CheckAttentionBackward(Random rng, float[] q, float[] k, float[] v, int kOffset, int vOffset,
        AttentionShape shape, AttentionMaskMode mode, byte[]? allow)
    {
        bool packed = ReferenceEquals(q, k);
        int outLength = shape.Batch * shape.QueryLength * shape.Heads * shape.HeadDim;
        int lseLength = shape.Batch * shape.Heads * shape.QueryLength;
        var dOut = TestUtil.RandomFloats(rng, outLength);
        var output = new float[outLength];
        var lse = new float[lseLength];
        Cpu.Attention.Forward(q, k.AsSpan(kOffset), v.AsSpan(vOffset), output, lse, shape, mode, allow);
        var qd = TestUtil.ToDouble(q);
        var kd = packed ? qd : TestUtil.ToDouble(k);
        var vd = packed ? qd : TestUtil.ToDouble(v);
        var outputD = new double[outLength];
        var lseD = new double[lseLength];
        Ref.Attention.Forward(qd, kd.AsSpan(kOffset), vd.AsSpan(vOffset), outputD, lseD, shape, mode, allow);

        var expectedQ = new double[q.Length];
        var expectedK = packed ? expectedQ : new double[k.Length];
        var expectedV = packed ? expectedQ : new double[v.Length];
        Ref.Attention.Backward(qd, kd.AsSpan(kOffset), vd.AsSpan(vOffset), outputD, TestUtil.ToDouble(dOut), lseD,
            expectedQ, expectedK.AsSpan(kOffset), expectedV.AsSpan(vOffset), shape, mode, allow);

        var dq = StartLike(rng, expectedQ, out var qStart);
        float[] dk = dq, dv = dq, kStart = qStart, vStart = qStart;
        if (!packed)
        {
            dk = StartLike(rng, expectedK, out kStart);
            dv = StartLike(rng, expectedV, out vStart);
        }
        Cpu.Attention.Backward(q, k.AsSpan(kOffset), v.AsSpan(vOffset), output, dOut, lse, dq, dk.AsSpan(kOffset), dv.AsSpan(vOffset), shape, mode, allow);
        AssertAdded(dq, qStart, expectedQ, packed ? "dqkv" : "dq");
        if (packed) return;
        AssertAdded(dk, kStart, expectedK, "dk");
        AssertAdded(dv, vStart, expectedV, "dv");
    }

    [Test]
    public void AttentionBackwardIgnoresRowsWithoutVisibleKeys()
    {
        var rng = TestUtil.NewRandom();
        const int length = 5, headDim = 16;
        var shape = new AttentionShape(1, 1, 1, headDim, length, length, 0, headDim, headDim, length * headDim, length * headDim, 0.25f);
        var q = TestUtil.RandomFloats(rng, length * headDim);
        var k = TestUtil.RandomFloats(rng, length * headDim);
        var v = TestUtil.RandomFloats(rng, length * headDim);
        var allow = TestUtil.RandomAllowMask(rng, length, hiddenRow: 2);
        var output = new float[length * headDim];
        var lse = new float[length];
        Cpu.Attention.Forward(q, k, v, output, lse, shape, AttentionMaskMode.Explicit, allow);
        Assert.That(lse[2], Is.EqualTo(float.NegativeInfinity));
        var dOut = TestUtil.RandomFloats(rng, length * headDim);
        var dq = new float[q.Length];
        var dk = new float[k.Length];
        var dv = new float[v.Length];
        Cpu.Attention.Backward(q, k, v, output, dOut, lse, dq, dk, dv, shape, AttentionMaskMode.Explicit, allow);
        Assert.That(dq.AsSpan(2 * headDim, headDim).ToArray(), Is.All.EqualTo(0f));
        Assert.That(dq, Has.All.Matches<float>(float.IsFinite));
        Assert.That(dk, Has.All.Matches<float>(float.IsFinite));
        Assert.That(dv, Has.All.Matches<float>(float.IsFinite));
        CheckAttentionBackward(rng, q, k, v, 0, 0, shape, AttentionMaskMode.Explicit, allow);
    }

    [TestCase(1, 1)]
    [TestCase(3, 1)]
    [TestCase(7, 5)]
    [TestCase(9, 33)]
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
            targets[r] = rng.Next(vocab);
            weights[r] = 0.25f + (float)rng.NextDouble();
        }
        if (rows > 1)
        {
            weights[1] = 0;
            targets[1] = vocab + 17;
        }
        if (rows > 2) targets[2] = vocab - 1;

        var expectedLosses = new double[rows];
        var expectedGrad = new double[rows * vocab];
        Ref.CrossEntropy.Forward(TestUtil.ToDouble(logits), targets, TestUtil.ToDouble(weights), expectedLosses, expectedGrad, rows, vocab);

        var losses = TestUtil.RandomFloats(rng, rows);
        var dLogits = TestUtil.RandomFloats(rng, rows * vocab);
        Cpu.CrossEntropy.Forward(logits, targets, weights, losses, dLogits, rows, vocab);
        Assert.That(TestUtil.RelativeL2(losses, expectedLosses), Is.LessThan(Tolerance), "losses");
        Assert.That(TestUtil.RelativeL2(dLogits, expectedGrad), Is.LessThan(Tolerance), "dLogits (written, not added)");
        if (rows > 1)
        {
            Assert.That(losses[1], Is.EqualTo(0f), "a zero-weight row has no loss");
            Assert.That(dLogits.AsSpan(vocab, vocab).ToArray(), Is.All.EqualTo(0f), "a zero-weight row has no gradient");
        }

        var inPlace = (float[])logits.Clone();
        Cpu.CrossEntropy.Forward(inPlace, targets, weights, losses, inPlace, rows, vocab);
        Assert.That(inPlace, Is.EqualTo(dLogits), "dLogits written over the logits");
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
        var actual = new float[vocab];
        var loss = new float[1];
        Cpu.CrossEntropy.Forward(logits, new[] { 3 }, new float[] { 1 }, loss, actual, 1, vocab);
        Assert.That(loss[0], Is.EqualTo(expectedLoss[0]).Within(1e-5 * Math.Abs(expectedLoss[0])), "loss");
        for (int i = 0; i < vocab; i++)
        {
            double bound = Math.Abs(expected[i]) < 1.2e-38 ? 1.2e-38 : 1e-5 * Math.Abs(expected[i]);
            if (Math.Abs(actual[i] - expected[i]) > bound)
                Assert.Fail($"dLogits[{i}] = {actual[i]:R}, expected {expected[i]:R} (logit {logits[i]:R})");
        }
        Assert.That(actual[7], Is.EqualTo(0f), "a logit at float.MinValue has probability 0");
    }

    [Test]
    public void CrossEntropyRejectsTargetsOutsideTheVocabulary()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            Cpu.CrossEntropy.Forward(new float[6], new[] { 0, 3 }, new float[] { 1, 1 }, new float[2], new float[6], 2, 3));
    }

    [TestCase(1)]
    [TestCase(17)]
    [TestCase(100_003)]
    public void AdamWMatchesReference(int n)
    {
        var rng = TestUtil.NewRandom();
        var param = TestUtil.RandomFloats(rng, n);
        var m = new float[n];
        var v = new float[n];
        var paramD = TestUtil.ToDouble(param);
        var mD = new double[n];
        var vD = new double[n];
        var step = new AdamWStep(1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1);
        for (int t = 1; t <= 3; t++)
        {
            var grad = TestUtil.RandomFloats(rng, n, 0.01f);
            Ref.AdamW.Update(paramD, TestUtil.ToDouble(grad), mD, vD, step with { Step = t });
            Cpu.AdamW.Update(param, grad, m, v, step with { Step = t });
        }
        Assert.That(TestUtil.RelativeL2(m, mD), Is.LessThan(Tolerance), "m");
        Assert.That(TestUtil.RelativeL2(v, vD), Is.LessThan(Tolerance), "v");
        Assert.That(TestUtil.RelativeL2(param, paramD), Is.LessThan(1e-6), "param");
    }

    [TestCase(0)]
    [TestCase(1)]
    [TestCase(17)]
    [TestCase(1_048_579)]
    public void SumOfSquaresAndScaleMatchDouble(int n)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, n, 3f);
        double expected = 0;
        foreach (float f in x) expected += (double)f * f;
        Assert.That(Cpu.Vectors.SumOfSquares(x), Is.EqualTo(expected).Within(1e-12 * Math.Max(1, expected)));

        var scaled = (float[])x.Clone();
        Cpu.Vectors.Scale(scaled, 0.3f);
        for (int i = 0; i < n; i++) Assert.That(scaled[i], Is.EqualTo(x[i] * 0.3f), $"element {i}");
    }

    // ---- through the public device API ----------------------------------------------------------------

    [Test]
    public void DeviceEmbeddingAndLayerNormBackward()
    {
        var rng = TestUtil.NewRandom();
        using var device = new CpuDevice();
        const int batch = 2, length = 5, channels = 24, vocab = 9, offset = 1;
        var ids = new int[batch * length];
        for (int i = 0; i < ids.Length; i++) ids[i] = rng.Next(vocab);
        var dOut = TestUtil.RandomFloats(rng, ids.Length * channels);
        var wteStart = TestUtil.RandomFloats(rng, vocab * channels);
        var wpeStart = TestUtil.RandomFloats(rng, 8 * channels);
        var expectedWte = new double[wteStart.Length];
        var expectedWpe = new double[wpeStart.Length];
        Ref.Embedding.Backward(ids, TestUtil.ToDouble(dOut), expectedWte, expectedWpe, batch, length, channels, offset);
        using var tIds = device.FromArray(ids, batch, length);
        using var tOut = device.FromArray(dOut, batch, length, channels);
        using var tWte = device.FromArray(wteStart, vocab, channels);
        using var tWpe = device.FromArray(wpeStart, 8, channels);
        device.EmbeddingBackward(tIds, tOut, tWte, tWpe, offset);
        AssertAdded(device.ToArray(tWte), wteStart, expectedWte, "dWte");
        AssertAdded(device.ToArray(tWpe), wpeStart, expectedWpe, "dWpe");

        int rows = batch * length;
        var x = TestUtil.RandomFloats(rng, rows * channels, 2f);
        var weight = TestUtil.RandomFloats(rng, channels);
        var bias = TestUtil.RandomFloats(rng, channels);
        using var tx = device.FromArray(x, rows, channels);
        using var tw = device.FromArray(weight, channels);
        using var tb = device.FromArray(bias, channels);
        using var ty = device.Allocate(DType.F32, rows, channels);
        using var tMean = device.Allocate(DType.F32, rows);
        using var tRstd = device.Allocate(DType.F32, rows);
        device.LayerNorm(tx, tw, tb, ty, tMean, tRstd, 1e-5f);
        var expectedX = new double[x.Length];
        var expectedW = new double[channels];
        var expectedB = new double[channels];
        Ref.LayerNorm.Backward(TestUtil.ToDouble(dOut), TestUtil.ToDouble(x), TestUtil.ToDouble(weight), TestUtil.ToDouble(device.ToArray(tMean)),
            TestUtil.ToDouble(device.ToArray(tRstd)), expectedX, expectedW, expectedB, rows, channels);
        var xStart = TestUtil.RandomFloats(rng, x.Length);
        var wStart = TestUtil.RandomFloats(rng, channels);
        var bStart = TestUtil.RandomFloats(rng, channels);
        using var tdx = device.FromArray(xStart, rows, channels);
        using var tdw = device.FromArray(wStart, channels);
        using var tdb = device.FromArray(bStart, channels);
        device.LayerNormBackward(tOut, tx, tw, tMean, tRstd, tdx, tdw, tdb);
        AssertAdded(device.ToArray(tdx), xStart, expectedX, "dX");
        AssertAdded(device.ToArray(tdw), wStart, expectedW, "dWeight");
        AssertAdded(device.ToArray(tdb), bStart, expectedB, "dBias");
    }

    [TestCase(false)]
    [TestCase(true)]
    public void DeviceMatMulBackward(bool transposed)
    {
        var rng = TestUtil.NewRandom();
        using var device = new CpuDevice();
        const int m = 37, k = 45, n = 70;
        var x = TestUtil.RandomFloats(rng, m * k);
        var w = TestUtil.RandomFloats(rng, k * n);
        var dOut = TestUtil.RandomFloats(rng, m * n);
        var expectedX = new double[m * k];
        var expectedW = new double[k * n];
        var expectedB = new double[n];
        if (transposed) Ref.MatMul.BackwardTransposed(TestUtil.ToDouble(dOut), TestUtil.ToDouble(x), TestUtil.ToDouble(w), expectedX, expectedW, expectedB, m, k, n);
        else Ref.MatMul.Backward(TestUtil.ToDouble(dOut), TestUtil.ToDouble(x), TestUtil.ToDouble(w), expectedX, expectedW, expectedB, m, k, n);
        var xStart = TestUtil.RandomFloats(rng, m * k);
        var wStart = TestUtil.RandomFloats(rng, k * n);
        var bStart = TestUtil.RandomFloats(rng, n);
        using var tx = device.FromArray(x, m, k);
        using var tw = transposed ? device.FromArray(w, n, k) : device.FromArray(w, k, n);
        using var tOut = device.FromArray(dOut, m, n);
        using var tdx = device.FromArray(xStart, m, k);
        using var tdw = transposed ? device.FromArray(wStart, n, k) : device.FromArray(wStart, k, n);
        using var tdb = device.FromArray(bStart, n);
        if (transposed) device.MatMulTransposedBackward(tOut, tx, tw, tdx, tdw, tdb);
        else device.MatMulBackward(tOut, tx, tw, tdx, tdw, tdb);
        AssertAdded(device.ToArray(tdx), xStart, expectedX, "dX");
        AssertAdded(device.ToArray(tdw), wStart, expectedW, "dW");
        AssertAdded(device.ToArray(tdb), bStart, expectedB, "dBias");
    }

    [Test]
    public void DeviceGeluBackward()
    {
        var rng = TestUtil.NewRandom();
        using var device = new CpuDevice();
        var x = TestUtil.RandomFloats(rng, 1001, 5f);
        var dOut = TestUtil.RandomFloats(rng, x.Length);
        var start = TestUtil.RandomFloats(rng, x.Length);
        var expected = new double[x.Length];
        Ref.Gelu.Backward(TestUtil.ToDouble(x), TestUtil.ToDouble(dOut), expected);
        using var tx = device.FromArray(x, x.Length);
        using var tOut = device.FromArray(dOut, x.Length);
        using var tdx = device.FromArray(start, x.Length);
        device.GeluBackward(tx, tOut, tdx);
        AssertAdded(device.ToArray(tdx), start, expected, "dX");
    }

    /// <summary>GPT-2's layout: q, k, v read from one packed [B, T, 3C] tensor at offsets 0, C, 2C; gradients into one such tensor.</summary>
    [TestCase(AttentionMaskMode.Causal)]
    [TestCase(AttentionMaskMode.Bidirectional)]
    [TestCase(AttentionMaskMode.Explicit)]
    public void DeviceAttentionBackwardOnPackedQkv(AttentionMaskMode mode)
    {
        var rng = TestUtil.NewRandom();
        using var device = new CpuDevice();
        const int batch = 2, length = 37, heads = 3, headDim = 16;
        const int c = heads * headDim;
        var shape = AttentionShape.PackedSelfAttention(batch, length, heads, headDim);
        var qkv = TestUtil.RandomFloats(rng, batch * length * 3 * c, 2f);
        var dOut = TestUtil.RandomFloats(rng, batch * length * c);
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, length, hiddenRow: 4) : null;

        var qd = TestUtil.ToDouble(qkv);
        var outputD = new double[dOut.Length];
        var lseD = new double[batch * heads * length];
        Ref.Attention.Forward(qd, qd.AsSpan(c), qd.AsSpan(2 * c), outputD, lseD, shape, mode, allow);
        var expected = new double[qkv.Length];
        Ref.Attention.Backward(qd, qd.AsSpan(c), qd.AsSpan(2 * c), outputD, TestUtil.ToDouble(dOut), lseD,
            expected, expected.AsSpan(c), expected.AsSpan(2 * c), shape, mode, allow);

        var start = TestUtil.RandomFloats(rng, qkv.Length);
        using var tqkv = device.FromArray(qkv, batch, length, 3 * c);
        using var tOut = device.Allocate(DType.F32, batch, length, c);
        using var tLse = device.Allocate(DType.F32, batch, heads, length);
        using var tdOut = device.FromArray(dOut, batch, length, c);
        using var tdqkv = device.FromArray(start, batch, length, 3 * c);
        using var tAllow = allow is null ? null : device.FromArray(allow, length, length);
        device.Attention(tqkv, 0, tqkv, c, tqkv, 2 * c, tOut, tLse, shape, mode, tAllow);
        device.AttentionBackward(tqkv, 0, tqkv, c, tqkv, 2 * c, tOut, tdOut, tLse, tdqkv, 0, tdqkv, c, tdqkv, 2 * c, shape, mode, tAllow);
        AssertAdded(device.ToArray(tdqkv), start, expected, "dqkv");
    }

    [Test]
    public void DeviceCrossEntropyWritesOverTheLogits()
    {
        var rng = TestUtil.NewRandom();
        using var device = new CpuDevice();
        const int rows = 4, vocab = 1000;
        var logits = TestUtil.RandomFloats(rng, rows * vocab, 3f);
        var targets = new[] { 5, -1, 999, 0 };
        var weights = new[] { 1f, 0f, 0.5f, 2f };
        var expectedLosses = new double[rows];
        var expectedGrad = new double[rows * vocab];
        Ref.CrossEntropy.Forward(TestUtil.ToDouble(logits), targets, TestUtil.ToDouble(weights), expectedLosses, expectedGrad, rows, vocab);
        using var tLogits = device.FromArray(logits, rows, vocab);
        using var tTargets = device.FromArray(targets, rows);
        using var tWeights = device.FromArray(weights, rows);
        using var tLosses = device.Allocate(DType.F32, rows);
        device.CrossEntropy(tLogits, tTargets, tWeights, tLosses, tLogits);
        Assert.That(TestUtil.RelativeL2(device.ToArray(tLosses), expectedLosses), Is.LessThan(Tolerance), "losses");
        Assert.That(TestUtil.RelativeL2(device.ToArray(tLogits), expectedGrad), Is.LessThan(Tolerance), "dLogits in place of the logits");
    }

    [Test]
    public void DeviceAdamWSumOfSquaresAndScale()
    {
        var rng = TestUtil.NewRandom();
        using var device = new CpuDevice();
        const int n = 5000;
        var param = TestUtil.RandomFloats(rng, n);
        var grad = TestUtil.RandomFloats(rng, n, 0.1f);
        var paramD = TestUtil.ToDouble(param);
        var mD = new double[n];
        var vD = new double[n];
        var step = new AdamWStep(0.01f, 0.9f, 0.999f, 1e-8f, 0.05f, 1);
        Ref.AdamW.Update(paramD, TestUtil.ToDouble(grad), mD, vD, step);
        using var tp = device.FromArray(param, n);
        using var tg = device.FromArray(grad, n);
        using var tm = device.Zeros(DType.F32, n);
        using var tv = device.Zeros(DType.F32, n);
        device.AdamW(tp, tg, tm, tv, step);
        Assert.That(TestUtil.RelativeL2(device.ToArray(tp), paramD), Is.LessThan(1e-6), "param");
        Assert.That(TestUtil.RelativeL2(device.ToArray(tm), mD), Is.LessThan(Tolerance), "m");
        Assert.That(TestUtil.RelativeL2(device.ToArray(tv), vD), Is.LessThan(Tolerance), "v");
        Assert.Throws<ArgumentException>(() => device.AdamW(tp, tg, tm, tv, step with { Step = 0 }));

        double expected = 0;
        foreach (float g in grad) expected += (double)g * g;
        Assert.That(device.SumOfSquares(tg), Is.EqualTo(expected).Within(1e-12 * expected));
        device.Scale(tg, -2f);
        Assert.That(device.ToArray(tg), Is.EqualTo(grad.Select(g => g * -2f).ToArray()));
    }

    /// <summary>
    /// A gradient buffer at random nonzero values scaled to the RMS of the expected gradient (so that float rounding of
    /// the start does not hide the increment), and a copy of the start.
    /// </summary>
    static float[] StartLike(Random rng, double[] expected, out float[] start)
    {
        start = TestUtil.GradientStart(rng, expected);
        return (float[])start.Clone();
    }

    /// <summary>What the kernel added to a buffer that started at start, against the reference gradient.</summary>
    static void AssertAdded(float[] actual, float[] start, double[] expected, string what) =>
        Assert.That(TestUtil.AddedRelativeL2(actual, start, expected), Is.LessThan(Tolerance), what);
}
