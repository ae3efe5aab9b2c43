using DiffuSharp.Kernels;
using Cpu = DiffuSharp.Kernels.Cpu;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// Every CPU kernel against its float64 reference on fresh random inputs, at shapes that are not multiples
/// of the vector width (16), the matmul tile (6 × 32) or the attention blocks (64), plus hand-derivable
/// cases that check the references themselves.
/// </summary>
public class CpuKernelTests
{
    /// <summary>
    /// Relative L2 bound for float32 against float64. Round-off in a length-K sum grows like √K · 6e-8 (about
    /// 2e-6 at K = 1100, the longest sum here), so 1e-5 holds with margin for every kernel, matmul and attention included.
    /// </summary>
    const double Tolerance = 1e-5;

    [TestCase(1, 1, 1)]
    [TestCase(1, 64, 130)]
    [TestCase(3, 17, 65)]
    [TestCase(4, 130, 17)]
    [TestCase(5, 3, 64)]
    [TestCase(17, 65, 3)]
    [TestCase(64, 64, 64)]
    [TestCase(65, 130, 17)]
    [TestCase(130, 17, 130)]
    [TestCase(257, 200, 301)]
    [TestCase(7, 1030, 33)]
    [TestCase(4, 256, 3000)]
    [TestCase(150, 700, 9)]
    [TestCase(191, 130, 301)]
    [TestCase(192, 64, 65)]
    [TestCase(300, 513, 70)]
    [TestCase(9, 700, 900)]
    [TestCase(300, 1100, 530)]
    [TestCase(1100, 64, 40)]
    public void MatMulMatchesReference(int m, int k, int n)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, m * k);
        var w = TestUtil.RandomFloats(rng, k * n);
        var bias = TestUtil.RandomFloats(rng, n);
        var actual = new float[m * n];
        var expected = new double[m * n];

        Cpu.MatMul.Forward(x, w, bias, actual, m, k, n);
        Ref.MatMul.Forward(TestUtil.ToDouble(x), TestUtil.ToDouble(w), TestUtil.ToDouble(bias), expected, m, k, n);
        Assert.That(TestUtil.RelativeL2(actual, expected), Is.LessThan(Tolerance), "Forward with bias");

        Cpu.MatMul.Forward(x, w, default, actual, m, k, n);
        Ref.MatMul.Forward(TestUtil.ToDouble(x), TestUtil.ToDouble(w), default, expected, m, k, n);
        Assert.That(TestUtil.RelativeL2(actual, expected), Is.LessThan(Tolerance), "Forward without bias");

        Cpu.MatMul.ForwardTransposed(x, w, bias, actual, m, k, n);
        Ref.MatMul.ForwardTransposed(TestUtil.ToDouble(x), TestUtil.ToDouble(w), TestUtil.ToDouble(bias), expected, m, k, n);
        Assert.That(TestUtil.RelativeL2(actual, expected), Is.LessThan(Tolerance), "ForwardTransposed with bias");

        Cpu.MatMul.ForwardTransposed(x, w, default, actual, m, k, n);
        Ref.MatMul.ForwardTransposed(TestUtil.ToDouble(x), TestUtil.ToDouble(w), default, expected, m, k, n);
        Assert.That(TestUtil.RelativeL2(actual, expected), Is.LessThan(Tolerance), "ForwardTransposed without bias");
    }

    [Test]
    public void MatMulOverwritesOutput()
    {
        var x = new float[] { 1, 2, 3, 4 };
        var w = new float[] { 5, 6, 7, 8 };
        var output = new float[] { 100, 100, 100, 100 };
        Cpu.MatMul.Forward(x, w, default, output, 2, 2, 2);
        Assert.That(output, Is.EqualTo(new float[] { 19, 22, 43, 50 }));
    }

    [Test]
    public void MatMulRejectsShortSpans()
    {
        var x = new float[6];
        var w = new float[6];
        Assert.Throws<ArgumentException>(() => Cpu.MatMul.Forward(x, w, default, new float[3], 2, 3, 2));
        Assert.Throws<ArgumentException>(() => Cpu.MatMul.ForwardTransposed(x, w, new float[1], new float[4], 2, 3, 2));
    }

    [Test]
    public void ReferenceMatMulHandExample()
    {
        var x = new double[] { 1, 2, 3, 4, 5, 6 };
        var w = new double[] { 7, 8, 9, 10, 11, 12 };
        var output = new double[4];
        Ref.MatMul.Forward(x, w, new double[] { 1, -1 }, output, 2, 3, 2);
        Assert.That(output, Is.EqualTo(new double[] { 59, 63, 140, 153 }));
        Ref.MatMul.ForwardTransposed(x, w, default, output, 2, 3, 2);
        Assert.That(output, Is.EqualTo(new double[] { 50, 68, 122, 167 }));
    }

    [TestCase(1, 1, 1, 0)]
    [TestCase(2, 7, 17, 3)]
    [TestCase(3, 33, 768, 0)]
    public void EmbeddingMatchesReference(int batch, int length, int channels, int positionOffset)
    {
        var rng = TestUtil.NewRandom();
        const int vocab = 50;
        int positions = positionOffset + length + 2;
        var ids = new int[batch * length];
        for (int i = 0; i < ids.Length; i++) ids[i] = rng.Next(vocab);
        var wte = TestUtil.RandomFloats(rng, vocab * channels);
        var wpe = TestUtil.RandomFloats(rng, positions * channels);
        var actual = new float[batch * length * channels];
        var expected = new double[actual.Length];
        Cpu.Embedding.Forward(ids, wte, wpe, actual, batch, length, channels, positionOffset);
        Ref.Embedding.Forward(ids, TestUtil.ToDouble(wte), TestUtil.ToDouble(wpe), expected, batch, length, channels, positionOffset);
        Assert.That(TestUtil.RelativeL2(actual, expected), Is.LessThan(Tolerance));
    }

    [Test]
    public void EmbeddingRejectsOutOfRangeIds()
    {
        var wte = new float[4 * 8];
        var wpe = new float[4 * 8];
        var output = new float[2 * 8];
        Assert.Throws<ArgumentOutOfRangeException>(() => Cpu.Embedding.Forward(new[] { 1, 4 }, wte, wpe, output, 1, 2, 8, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => Cpu.Embedding.Forward(new[] { 1, -1 }, wte, wpe, output, 1, 2, 8, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => Cpu.Embedding.Forward(new[] { 1, 2 }, wte, wpe, output, 1, 2, 8, 3));
    }

    [TestCase(1, 1)]
    [TestCase(3, 7)]
    [TestCase(5, 33)]
    [TestCase(64, 768)]
    [TestCase(200, 1001)]
    public void LayerNormMatchesReference(int rows, int channels)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, rows * channels, 3f);
        for (int i = 0; i < x.Length; i++) x[i] += 2f;
        var weight = TestUtil.RandomFloats(rng, channels);
        var bias = TestUtil.RandomFloats(rng, channels);
        var actual = new float[x.Length];
        var mean = new float[rows];
        var rstd = new float[rows];
        var expected = new double[x.Length];
        var expectedMean = new double[rows];
        var expectedRstd = new double[rows];
        Cpu.LayerNorm.Forward(x, weight, bias, actual, mean, rstd, rows, channels, 1e-5f);
        Ref.LayerNorm.Forward(TestUtil.ToDouble(x), TestUtil.ToDouble(weight), TestUtil.ToDouble(bias), expected, expectedMean, expectedRstd,
            rows, channels, 1e-5);
        Assert.That(TestUtil.RelativeL2(actual, expected), Is.LessThan(Tolerance));
        Assert.That(TestUtil.RelativeL2(mean, expectedMean), Is.LessThan(Tolerance));
        Assert.That(TestUtil.RelativeL2(rstd, expectedRstd), Is.LessThan(Tolerance));
    }

    [Test]
    public void ReferenceLayerNormHandExample()
    {
        var output = new double[2];
        var mean = new double[1];
        var rstd = new double[1];
        Ref.LayerNorm.Forward(new double[] { 1, 3 }, new double[] { 2, 2 }, new double[] { 1, 1 }, output, mean, rstd, 1, 2, 0);
        Assert.That(mean[0], Is.EqualTo(2));
        Assert.That(rstd[0], Is.EqualTo(1));
        Assert.That(output, Is.EqualTo(new double[] { -1, 3 }));
    }

    [TestCase(1)]
    [TestCase(15)]
    [TestCase(17)]
    [TestCase(1000)]
    [TestCase(100_003)]
    public void GeluMatchesReference(int n)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, n, 6f);
        var actual = new float[n];
        var expected = new double[n];
        Cpu.Gelu.Forward(x, actual);
        Ref.Gelu.Forward(TestUtil.ToDouble(x), expected);
        Assert.That(TestUtil.RelativeL2(actual, expected), Is.LessThan(Tolerance));

        Cpu.Gelu.Forward(x, x);
        Assert.That(x, Is.EqualTo(actual), "in place");
    }

    [Test]
    public void GeluSaturates()
    {
        var x = new float[] { -100f, -20f, 0f, 20f, 100f, float.MaxValue / 2, -float.MaxValue / 2, -3f, 3f, 1f, -1f, 0.5f, -0.5f, 50f, -50f, 10f, -10f };
        var actual = new float[x.Length];
        var expected = new double[x.Length];
        Cpu.Gelu.Forward(x, actual);
        Ref.Gelu.Forward(TestUtil.ToDouble(x), expected);
        for (int i = 0; i < x.Length; i++)
            Assert.That(actual[i], Is.EqualTo(expected[i]).Within(1e-6 * Math.Max(1, Math.Abs(expected[i]))), $"gelu({x[i]})");
    }

    [TestCase(1)]
    [TestCase(17)]
    [TestCase(1000)]
    [TestCase(70_001)]
    public void ResidualAddMatchesReferenceAndAliases(int n)
    {
        var rng = TestUtil.NewRandom();
        var a = TestUtil.RandomFloats(rng, n);
        var b = TestUtil.RandomFloats(rng, n);
        var actual = new float[n];
        var expected = new double[n];
        Cpu.Residual.Add(a, b, actual);
        Ref.Residual.Add(TestUtil.ToDouble(a), TestUtil.ToDouble(b), expected);
        Assert.That(TestUtil.RelativeL2(actual, expected), Is.LessThan(1e-7));

        var aliasA = (float[])a.Clone();
        Cpu.Residual.Add(aliasA, b, aliasA);
        Assert.That(aliasA, Is.EqualTo(actual));
        var aliasB = (float[])b.Clone();
        Cpu.Residual.Add(a, aliasB, aliasB);
        Assert.That(aliasB, Is.EqualTo(actual));
    }

    [TestCase(1, 1)]
    [TestCase(3, 7)]
    [TestCase(4, 17)]
    [TestCase(65, 130)]
    [TestCase(8, 50257)]
    public void SoftmaxMatchesReference(int rows, int columns)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, rows * columns, 10f);
        var actual = new float[x.Length];
        var expected = new double[x.Length];
        Cpu.Softmax.Forward(x, actual, rows, columns);
        Ref.Softmax.Forward(TestUtil.ToDouble(x), expected, rows, columns);
        Assert.That(TestUtil.RelativeL2(actual, expected), Is.LessThan(Tolerance));
    }

    [Test]
    public void SoftmaxOfEqualValuesIsUniform()
    {
        var expected = new double[5];
        Ref.Softmax.Forward(new double[] { 3, 3, 3, 3, 3 }, expected, 1, 5);
        Assert.That(expected, Is.All.EqualTo(0.2).Within(1e-15));
        var actual = new float[20];
        Cpu.Softmax.Forward(Enumerable.Repeat(1000f, 20).ToArray(), actual, 1, 20);
        Assert.That(actual, Is.All.EqualTo(0.05f).Within(1e-7));
    }

    static IEnumerable<TestCaseData> AttentionCases()
    {
        foreach (var mode in new[] { AttentionMaskMode.Causal, AttentionMaskMode.Bidirectional, AttentionMaskMode.Explicit })
        {
            foreach (int length in new[] { 1, 7, 33, 100 })
            {
                foreach (int headDim in new[] { 8, 16, 64 })
                    yield return new TestCaseData(mode, 2, length, 4, 4, headDim);
            }
            yield return new TestCaseData(mode, 2, 33, 4, 2, 16).SetName($"AttentionMatchesReference_Gqa_{mode}");
            yield return new TestCaseData(mode, 1, 100, 8, 2, 24).SetName($"AttentionMatchesReference_Gqa4_{mode}");
            yield return new TestCaseData(mode, 1, 130, 2, 1, 72).SetName($"AttentionMatchesReference_LongOddHead_{mode}");
        }
    }

    [TestCaseSource(nameof(AttentionCases))]
    public void AttentionMatchesReference(AttentionMaskMode mode, int batch, int length, int heads, int kvHeads, int headDim)
    {
        var rng = TestUtil.NewRandom();
        var shape = new AttentionShape(batch, heads, kvHeads, headDim, length, length, 0,
            heads * headDim, kvHeads * headDim, (long)length * heads * headDim, (long)length * kvHeads * headDim, 1f / MathF.Sqrt(headDim));
        var q = TestUtil.RandomFloats(rng, batch * length * heads * headDim, 2f);
        var k = TestUtil.RandomFloats(rng, batch * length * kvHeads * headDim, 2f);
        var v = TestUtil.RandomFloats(rng, batch * length * kvHeads * headDim);
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, length) : default;
        CheckAttention(q, k, v, shape, mode, allow);
    }

    [TestCase(1, 1)]
    [TestCase(8, 16)]
    [TestCase(40, 64)]
    [TestCase(99, 64)]
    public void AttentionDecodesWithQueryOffset(int position, int headDim)
    {
        var rng = TestUtil.NewRandom();
        const int batch = 2, heads = 4, kvHeads = 2, maxLength = 128;
        var shape = new AttentionShape(batch, heads, kvHeads, headDim, 1, position + 1, position,
            heads * headDim, kvHeads * headDim, heads * headDim, (long)maxLength * kvHeads * headDim, 1f / MathF.Sqrt(headDim));
        var q = TestUtil.RandomFloats(rng, batch * heads * headDim);
        var k = TestUtil.RandomFloats(rng, batch * maxLength * kvHeads * headDim);
        var v = TestUtil.RandomFloats(rng, batch * maxLength * kvHeads * headDim);
        CheckAttention(q, k, v, shape, AttentionMaskMode.Causal, default);
        CheckAttention(q, k, v, shape, AttentionMaskMode.Bidirectional, default);
    }

    [TestCase(5, 10, 16)]
    [TestCase(7, 93, 64)]
    [TestCase(70, 100, 32)]
    public void AttentionChunkWithQueryOffset(int queries, int offset, int headDim)
    {
        var rng = TestUtil.NewRandom();
        const int batch = 2, heads = 2;
        int keys = offset + queries;
        var shape = new AttentionShape(batch, heads, heads, headDim, queries, keys, offset,
            heads * headDim, heads * headDim, (long)queries * heads * headDim, (long)keys * heads * headDim, 0.3f);
        var q = TestUtil.RandomFloats(rng, batch * queries * heads * headDim);
        var k = TestUtil.RandomFloats(rng, batch * keys * heads * headDim);
        var v = TestUtil.RandomFloats(rng, batch * keys * heads * headDim);
        CheckAttention(q, k, v, shape, AttentionMaskMode.Causal, default);
    }

    [TestCase(AttentionMaskMode.Causal, 1, 8)]
    [TestCase(AttentionMaskMode.Causal, 70, 16)]
    [TestCase(AttentionMaskMode.Bidirectional, 33, 64)]
    [TestCase(AttentionMaskMode.Explicit, 100, 8)]
    public void AttentionReadsPackedQkv(AttentionMaskMode mode, int length, int headDim)
    {
        var rng = TestUtil.NewRandom();
        const int batch = 2, heads = 3;
        int c = heads * headDim;
        var shape = AttentionShape.PackedSelfAttention(batch, length, heads, headDim);
        var qkv = TestUtil.RandomFloats(rng, batch * length * 3 * c, 2f);
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, length) : default;
        CheckAttention(qkv, qkv.AsSpan(c).ToArray(), qkv.AsSpan(2 * c).ToArray(), shape, mode, allow);
    }

    /// <summary>
    /// Per-row key lengths: rows of very different lengths (all keys, an odd count inside a 64-key block, a single key)
    /// right-padded into one batch, grouped-query heads, one odd head dim past 64, every mask mode. The padded keys and
    /// values are NaN, so a kernel that read one, or gave one a zero weight instead of skipping it, fails.
    /// </summary>
    static IEnumerable<TestCaseData> KeyLengthCases()
    {
        foreach (var mode in new[] { AttentionMaskMode.Causal, AttentionMaskMode.Bidirectional, AttentionMaskMode.Explicit })
        {
            yield return new TestCaseData(mode, 4, 2, 16, 100, new[] { 100, 37, 1 }).SetName($"AttentionWithKeyLengthsMatchesReference_Gqa_{mode}");
            yield return new TestCaseData(mode, 2, 1, 72, 130, new[] { 65, 130, 3, 64 }).SetName($"AttentionWithKeyLengthsMatchesReference_LongOddHead_{mode}");
            yield return new TestCaseData(mode, 3, 3, 8, 7, new[] { 1, 7 }).SetName($"AttentionWithKeyLengthsMatchesReference_Short_{mode}");
        }
    }

    [TestCaseSource(nameof(KeyLengthCases))]
    public void AttentionWithKeyLengthsMatchesReference(AttentionMaskMode mode, int heads, int kvHeads, int headDim, int length, int[] keyLengths)
    {
        var rng = TestUtil.NewRandom();
        int batch = keyLengths.Length;
        var shape = new AttentionShape(batch, heads, kvHeads, headDim, length, length, 0,
            heads * headDim, kvHeads * headDim, (long)length * heads * headDim, (long)length * kvHeads * headDim, 1f / MathF.Sqrt(headDim));
        var q = TestUtil.RandomFloats(rng, batch * length * heads * headDim, 2f);
        var k = TestUtil.RandomFloats(rng, batch * length * kvHeads * headDim, 2f);
        var v = TestUtil.RandomFloats(rng, batch * length * kvHeads * headDim);
        TestUtil.PoisonPaddedKeys(k, 0, shape, keyLengths);
        TestUtil.PoisonPaddedKeys(v, 0, shape, keyLengths);
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, length) : default;
        CheckAttention(q, k, v, shape, mode, allow, keyLengths);
    }

    /// <summary>A causal chunk after cached keys (query offset 30) whose rows end before, inside and after the chunk's first keys.</summary>
    [Test]
    public void AttentionWithKeyLengthsAndQueryOffsetMatchesReference()
    {
        var rng = TestUtil.NewRandom();
        const int heads = 2, headDim = 16, queries = 70, keys = 100, offset = 30;
        int[] keyLengths = [100, 45, 12];
        int batch = keyLengths.Length;
        var shape = new AttentionShape(batch, heads, heads, headDim, queries, keys, offset,
            heads * headDim, heads * headDim, (long)queries * heads * headDim, (long)keys * heads * headDim, 0.3f);
        var q = TestUtil.RandomFloats(rng, batch * queries * heads * headDim);
        var k = TestUtil.RandomFloats(rng, batch * keys * heads * headDim);
        var v = TestUtil.RandomFloats(rng, batch * keys * heads * headDim);
        TestUtil.PoisonPaddedKeys(k, 0, shape, keyLengths);
        TestUtil.PoisonPaddedKeys(v, 0, shape, keyLengths);
        CheckAttention(q, k, v, shape, AttentionMaskMode.Causal, default, keyLengths);
    }

    [TestCase(0)]
    [TestCase(-1)]
    [TestCase(8)]
    public void AttentionRefusesKeyLengthsOutsideTheKeys(int badLength)
    {
        var shape = new AttentionShape(2, 1, 1, 4, 7, 7, 0, 4, 4, 28, 28, 1f);
        var x = new float[56];
        var e = Assert.Throws<ArgumentException>(() => Cpu.Attention.Forward(x, x, x, new float[56], default, shape, AttentionMaskMode.Bidirectional,
            default, new[] { 7, badLength }));
        Assert.That(e!.Message, Does.Contain($"key length {badLength} of batch row 1"));
        Assert.Throws<ArgumentException>(() => Ref.Attention.Forward(new double[56], new double[56], new double[56], new double[56], default, shape,
            AttentionMaskMode.Bidirectional, default, new[] { 7, badLength }));
        Assert.Throws<ArgumentException>(() => Cpu.Attention.Forward(x, x, x, new float[56], default, shape, AttentionMaskMode.Bidirectional,
            default, new[] { 7, 7, 7 }));
    }

    [Test]
    public void AttentionRowWithoutVisibleKeysIsZero()
    {
        var rng = TestUtil.NewRandom();
        const int length = 5, headDim = 16;
        var shape = new AttentionShape(1, 1, 1, headDim, length, length, 0, headDim, headDim, length * headDim, length * headDim, 0.25f);
        var q = TestUtil.RandomFloats(rng, length * headDim);
        var k = TestUtil.RandomFloats(rng, length * headDim);
        var v = TestUtil.RandomFloats(rng, length * headDim);
        var allow = TestUtil.RandomAllowMask(rng, length);
        for (int j = 0; j < length; j++) allow[2 * length + j] = 0;
        var output = new float[length * headDim];
        var lse = new float[length];
        Cpu.Attention.Forward(q, k, v, output, lse, shape, AttentionMaskMode.Explicit, allow);
        Assert.That(output.AsSpan(2 * headDim, headDim).ToArray(), Is.All.EqualTo(0f));
        Assert.That(lse[2], Is.EqualTo(float.NegativeInfinity));
        CheckAttention(q, k, v, shape, AttentionMaskMode.Explicit, allow);
    }

    [Test]
    public void ReferenceAttentionWithOneKeyReturnsItsValue()
    {
        const int headDim = 4;
        var shape = new AttentionShape(1, 2, 1, headDim, 1, 1, 0, 2 * headDim, headDim, 2 * headDim, headDim, 0.5f);
        var q = new double[] { 1, 2, 3, 4, -1, -2, -3, -4 };
        var k = new double[] { 0.5, 0.25, 1, 2 };
        var v = new double[] { 9, -8, 7, -6 };
        var output = new double[2 * headDim];
        var lse = new double[2];
        Ref.Attention.Forward(q, k, v, output, lse, shape, AttentionMaskMode.Causal, default);
        Assert.That(output, Is.EqualTo(new double[] { 9, -8, 7, -6, 9, -8, 7, -6 }));
        Assert.That(lse[0], Is.EqualTo(0.5 * (0.5 + 0.5 + 3 + 8)).Within(1e-12));
        Assert.That(lse[1], Is.EqualTo(-0.5 * (0.5 + 0.5 + 3 + 8)).Within(1e-12));
    }

    [Test]
    public void ReferenceAttentionWithEqualScoresAveragesValues()
    {
        const int length = 3, headDim = 2;
        var shape = new AttentionShape(1, 1, 1, headDim, length, length, 0, headDim, headDim, length * headDim, length * headDim, 1f);
        var q = new double[length * headDim];
        var k = new double[] { 1, 2, 3, 4, 5, 6 };
        var v = new double[] { 3, 0, 6, 3, 0, 9 };
        var output = new double[length * headDim];
        var lse = new double[length];
        Ref.Attention.Forward(q, k, v, output, lse, shape, AttentionMaskMode.Causal, default);
        Assert.That(output, Is.EqualTo(new double[] { 3, 0, 4.5, 1.5, 3, 4 }).Within(1e-12));
        Assert.That(lse, Is.EqualTo(new[] { 0, Math.Log(2), Math.Log(3) }).Within(1e-12));
        Ref.Attention.Forward(q, k, v, output, lse, shape, AttentionMaskMode.Bidirectional, default);
        Assert.That(output, Is.EqualTo(new double[] { 3, 4, 3, 4, 3, 4 }).Within(1e-12));
    }

    static void CheckAttention(float[] q, float[] k, float[] v, AttentionShape shape, AttentionMaskMode mode, byte[]? allow, int[]? keyLengths = null)
    {
        int outLength = shape.Batch * shape.QueryLength * shape.Heads * shape.HeadDim;
        int lseLength = shape.Batch * shape.Heads * shape.QueryLength;
        var actual = new float[outLength];
        var actualLse = new float[lseLength];
        var expected = new double[outLength];
        var expectedLse = new double[lseLength];
        Cpu.Attention.Forward(q, k, v, actual, actualLse, shape, mode, allow, keyLengths);
        Ref.Attention.Forward(TestUtil.ToDouble(q), TestUtil.ToDouble(k), TestUtil.ToDouble(v), expected, expectedLse, shape, mode, allow, keyLengths);
        Assert.That(TestUtil.RelativeL2(actual, expected), Is.LessThan(Tolerance), "output");
        for (int i = 0; i < lseLength; i++)
        {
            if (double.IsNegativeInfinity(expectedLse[i]))
            {
                Assert.That(actualLse[i], Is.EqualTo(float.NegativeInfinity), $"lse[{i}]");
                expectedLse[i] = 0;
                actualLse[i] = 0;
            }
        }
        Assert.That(TestUtil.RelativeL2(actualLse, expectedLse), Is.LessThan(Tolerance), "lse");

        var withoutLse = new float[outLength];
        Cpu.Attention.Forward(q, k, v, withoutLse, default, shape, mode, allow, keyLengths);
        Assert.That(withoutLse, Is.EqualTo(actual), "output without lse");
    }
}
