using DiffuSharp.Kernels;
using DiffuSharp.Kernels.Gpu;
using DiffuSharp.Runtime;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// The ILGPU backward and training kernels, through the public Device API of <see cref="IlgpuDevice"/>,
/// against the float64 reference on fresh random inputs. Gradient buffers start at random non-zero values,
/// so every test also checks that the op accumulates (+=) rather than overwrites. Shapes cut across the
/// kernels' tiles (matmul 64 x 64 x 16, attention backward 48 rows x 32 (flash) and 16 keys x 16 queries
/// (tiled), column sums in chunks of 32+ rows). Float atomics (embedding, LayerNorm weights, bias, the tiled
/// kernel's dQ) only reorder float32 additions of a few dozen terms, which moves the result by about 1e-7 relative, so the 1e-5 bound holds for them too.
/// The same fixture runs on CUDA when a GPU is present and is reported as ignored where it is not.
/// </summary>
[TestFixture(IlgpuBackend.CpuSimulator)]
[TestFixture(IlgpuBackend.Cuda)]
public class IlgpuBackwardTests(IlgpuBackend backend) : IlgpuFixture(backend)
{
    const double Tolerance = 1e-5;

    // ---- embedding, GELU, LayerNorm ------------------------------------------------------------

    /// <summary>Small vocabularies make many tokens share a row of dWte, so the atomic adds collide.</summary>
    [TestCase(1, 1, 1, 1, 1, 0)]
    [TestCase(2, 5, 33, 11, 9, 3)]
    [TestCase(3, 17, 70, 4, 20, 0)]
    [TestCase(4, 64, 40, 7, 70, 6)]
    public void EmbeddingBackwardMatchesReference(int batch, int length, int channels, int vocab, int positions, int offset)
    {
        var rng = TestUtil.NewRandom();
        var ids = new int[batch * length];
        for (int i = 0; i < ids.Length; i++) ids[i] = rng.Next(vocab);
        var dOut = TestUtil.RandomFloats(rng, batch * length * channels);
        var dWte = TestUtil.RandomFloats(rng, vocab * channels);
        var dWpe = TestUtil.RandomFloats(rng, positions * channels);
        var expectedWte = TestUtil.ToDouble(dWte);
        var expectedWpe = TestUtil.ToDouble(dWpe);
        Ref.Embedding.Backward(ids, TestUtil.ToDouble(dOut), expectedWte, expectedWpe, batch, length, channels, offset);

        using var idsT = device.FromArray(ids, batch, length);
        using var dOutT = device.FromArray(dOut, batch, length, channels);
        using var dWteT = device.FromArray(dWte, vocab, channels);
        using var dWpeT = device.FromArray(dWpe, positions, channels);
        device.EmbeddingBackward(idsT, dOutT, dWteT, dWpeT, offset);
        Assert.That(TestUtil.RelativeL2(device.ToArray(dWteT), expectedWte), Is.LessThan(Tolerance), "dWte");
        Assert.That(TestUtil.RelativeL2(device.ToArray(dWpeT), expectedWpe), Is.LessThan(Tolerance), "dWpe");
    }

    [TestCase(1)]
    [TestCase(1000)]
    [TestCase(4099)]
    public void GeluBackwardMatchesReference(int n)
    {
        var rng = TestUtil.NewRandom();
        CompareGeluBackward(TestUtil.RandomFloats(rng, n, 6f), TestUtil.RandomFloats(rng, n));
    }

    /// <summary>Far tails (where exp(2u) would overflow float) and the neighbourhood of zero.</summary>
    [Test]
    public void GeluBackwardIsAccurateInTheTails()
    {
        var x = new[] { -60f, -30f, -12f, -9.5f, -5f, -1f, -1e-3f, 0f, 1e-3f, 1f, 5f, 9.5f, 12f, 30f, 60f };
        var dOut = new float[x.Length];
        Array.Fill(dOut, 1f);
        CompareGeluBackward(x, dOut);
    }

    void CompareGeluBackward(float[] x, float[] dOut)
    {
        int n = x.Length;
        var dX = TestUtil.RandomFloats(TestUtil.NewRandom(), n);
        var expected = TestUtil.ToDouble(dX);
        Ref.Gelu.Backward(TestUtil.ToDouble(x), TestUtil.ToDouble(dOut), expected);

        using var xT = device.FromArray(x, n);
        using var dOutT = device.FromArray(dOut, n);
        using var dXT = device.FromArray(dX, n);
        device.GeluBackward(xT, dOutT, dXT);
        var actual = device.ToArray(dXT);
        Assert.That(actual, Has.All.Matches<float>(float.IsFinite));
        Assert.That(TestUtil.RelativeL2(actual, expected), Is.LessThan(Tolerance));
    }

    /// <summary>300 and 70 rows split the dWeight/dBias column sums into several chunks of rows.</summary>
    [TestCase(1, 1)]
    [TestCase(3, 33)]
    [TestCase(17, 100)]
    [TestCase(2, 769)]
    [TestCase(300, 20)]
    [TestCase(70, 300)]
    public void LayerNormBackwardMatchesReference(int rows, int channels)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, rows * channels, 3f);
        for (int i = 0; i < x.Length; i++) x[i] += 1.5f;
        var w = TestUtil.RandomFloats(rng, channels);
        var dOut = TestUtil.RandomFloats(rng, rows * channels);
        var meanD = new double[rows];
        var rstdD = new double[rows];
        Ref.LayerNorm.Forward(TestUtil.ToDouble(x), TestUtil.ToDouble(w), new double[channels], new double[rows * channels], meanD, rstdD, rows, channels, 1e-5);
        var mean = TestUtil.ToFloat(meanD);
        var rstd = TestUtil.ToFloat(rstdD);
        var dX = TestUtil.RandomFloats(rng, rows * channels);
        var dW = TestUtil.RandomFloats(rng, channels);
        var dB = TestUtil.RandomFloats(rng, channels);
        var expectedX = TestUtil.ToDouble(dX);
        var expectedW = TestUtil.ToDouble(dW);
        var expectedB = TestUtil.ToDouble(dB);
        Ref.LayerNorm.Backward(TestUtil.ToDouble(dOut), TestUtil.ToDouble(x), TestUtil.ToDouble(w), TestUtil.ToDouble(mean), TestUtil.ToDouble(rstd),
            expectedX, expectedW, expectedB, rows, channels);

        using var dOutT = device.FromArray(dOut, rows, channels);
        using var xT = device.FromArray(x, rows, channels);
        using var wT = device.FromArray(w, channels);
        using var meanT = device.FromArray(mean, rows);
        using var rstdT = device.FromArray(rstd, rows);
        using var dXT = device.FromArray(dX, rows, channels);
        using var dWT = device.FromArray(dW, channels);
        using var dBT = device.FromArray(dB, channels);
        device.LayerNormBackward(dOutT, xT, wT, meanT, rstdT, dXT, dWT, dBT);
        Assert.That(TestUtil.RelativeL2(device.ToArray(dXT), expectedX), Is.LessThan(Tolerance), "dX");
        Assert.That(TestUtil.RelativeL2(device.ToArray(dWT), expectedW), Is.LessThan(Tolerance), "dWeight");
        Assert.That(TestUtil.RelativeL2(device.ToArray(dBT), expectedB), Is.LessThan(Tolerance), "dBias");
    }

    // ---- matmul --------------------------------------------------------------------------------

    /// <summary>Both weight layouts; the products run through the tiled kernel with a and b transposed in turn.</summary>
    [TestCase(1, 1, 1, true)]
    [TestCase(17, 33, 5, true)]
    [TestCase(3, 64, 64, false)]
    [TestCase(64, 17, 65, true)]
    [TestCase(65, 130, 70, true)]
    [TestCase(150, 20, 9, false)]
    public void MatMulBackwardMatchesReference(int m, int k, int n, bool withBias)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, m * k);
        var w = TestUtil.RandomFloats(rng, k * n);
        var dOut = TestUtil.RandomFloats(rng, m * n);
        var xd = TestUtil.ToDouble(x);
        var wd = TestUtil.ToDouble(w);
        var dOutD = TestUtil.ToDouble(dOut);

        using var xT = device.FromArray(x, m, k);
        using var dOutT = device.FromArray(dOut, m, n);
        foreach (bool transposed in new[] { false, true })
        {
            var dX = TestUtil.RandomFloats(rng, m * k);
            var dW = TestUtil.RandomFloats(rng, k * n);
            var dB = TestUtil.RandomFloats(rng, n);
            var expectedX = TestUtil.ToDouble(dX);
            var expectedW = TestUtil.ToDouble(dW);
            var expectedB = TestUtil.ToDouble(dB);
            var biasSpan = withBias ? expectedB : Span<double>.Empty;
            if (transposed) Ref.MatMul.BackwardTransposed(dOutD, xd, wd, expectedX, expectedW, biasSpan, m, k, n);
            else Ref.MatMul.Backward(dOutD, xd, wd, expectedX, expectedW, biasSpan, m, k, n);

            using var wT = transposed ? device.FromArray(w, n, k) : device.FromArray(w, k, n);
            using var dXT = device.FromArray(dX, m, k);
            using var dWT = transposed ? device.FromArray(dW, n, k) : device.FromArray(dW, k, n);
            using var dBT = device.FromArray(dB, n);
            if (transposed) device.MatMulTransposedBackward(dOutT, xT, wT, dXT, dWT, withBias ? dBT : null);
            else device.MatMulBackward(dOutT, xT, wT, dXT, dWT, withBias ? dBT : null);

            string layout = transposed ? "w [N, K]" : "w [K, N]";
            Assert.That(TestUtil.RelativeL2(device.ToArray(dXT), expectedX), Is.LessThan(Tolerance), $"dX, {layout}");
            Assert.That(TestUtil.RelativeL2(device.ToArray(dWT), expectedW), Is.LessThan(Tolerance), $"dW, {layout}");
            Assert.That(TestUtil.RelativeL2(device.ToArray(dBT), expectedB), Is.LessThan(Tolerance), $"dBias, {layout}");
        }
    }

    // ---- attention -----------------------------------------------------------------------------

    /// <summary>Separate q, k, v (and dq, dk, dv) tensors with padded rows and batches, at non-zero offsets.</summary>
    [TestCase(1, 1, 1, 8, 1, 1, AttentionMaskMode.Causal)]
    [TestCase(2, 2, 2, 8, 7, 7, AttentionMaskMode.Causal)]
    [TestCase(2, 2, 2, 8, 7, 7, AttentionMaskMode.Bidirectional)]
    [TestCase(2, 2, 2, 8, 7, 7, AttentionMaskMode.Explicit)]
    [TestCase(1, 2, 2, 64, 33, 33, AttentionMaskMode.Causal)]
    [TestCase(1, 2, 2, 64, 33, 33, AttentionMaskMode.Bidirectional)]
    [TestCase(1, 2, 2, 64, 33, 33, AttentionMaskMode.Explicit)]
    [TestCase(2, 4, 2, 16, 70, 70, AttentionMaskMode.Causal)]
    [TestCase(1, 4, 2, 16, 70, 70, AttentionMaskMode.Explicit)]
    [TestCase(1, 4, 1, 64, 70, 70, AttentionMaskMode.Bidirectional)]
    [TestCase(1, 2, 1, 128, 33, 33, AttentionMaskMode.Causal)]
    [TestCase(1, 1, 1, 40, 7, 7, AttentionMaskMode.Bidirectional)]
    [TestCase(2, 2, 2, 16, 5, 33, AttentionMaskMode.Bidirectional)]
    [TestCase(1, 2, 2, 16, 20, 33, AttentionMaskMode.Causal)]
    public void AttentionBackwardMatchesReference(int batch, int heads, int kvHeads, int headDim, int queries, int keys, AttentionMaskMode mode)
    {
        var rng = TestUtil.NewRandom();
        int qRow = heads * headDim + 3, kRow = kvHeads * headDim + 5;
        long qBatch = (long)queries * qRow + 2, kBatch = (long)keys * kRow + 1;
        var shape = new AttentionShape(batch, heads, kvHeads, headDim, queries, keys, 0, qRow, kRow, qBatch, kBatch, 1f / MathF.Sqrt(headDim));
        int qSpan = (int)(batch * qBatch), kSpan = (int)(batch * kBatch);
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, keys) : null;
        var inputs = new AttentionBuffers(
            Q: TestUtil.RandomFloats(rng, 7 + qSpan, 3f), QOffset: 7,
            K: TestUtil.RandomFloats(rng, 11 + kSpan), KOffset: 11,
            V: TestUtil.RandomFloats(rng, 4 + kSpan), VOffset: 4,
            Dq: TestUtil.RandomFloats(rng, 3 + qSpan), DqOffset: 3,
            Dk: TestUtil.RandomFloats(rng, 5 + kSpan), DkOffset: 5,
            Dv: TestUtil.RandomFloats(rng, 9 + kSpan), DvOffset: 9);
        CompareAttentionBackward(rng, shape, mode, allow, inputs, packed: false);
    }

    /// <summary>
    /// Each backward kernel forced on shapes that cut across its tiles (flash: 48 queries a dQ group and 48 keys a
    /// dK/dV group against 32-key and 32-query tiles; tiled: 16 x 16): lengths one past or short of a block,
    /// grouped-query heads, head dims whose quads do not fill the lanes (20, 40) or are odd (20), a KV-cache query
    /// offset (reachable through the kernels, not the Device API), and rows padded for scalar or, when
    /// <paramref name="aligned"/>, 16-byte accesses.
    /// </summary>
    [TestCase(AttentionBackwardKernel.Flash64, 2, 4, 2, 64, 100, 100, 0, AttentionMaskMode.Causal, true)]
    [TestCase(AttentionBackwardKernel.Flash64, 1, 2, 2, 64, 50, 50, 0, AttentionMaskMode.Bidirectional, false)]
    [TestCase(AttentionBackwardKernel.Flash64, 1, 2, 1, 16, 70, 70, 0, AttentionMaskMode.Explicit, true)]
    [TestCase(AttentionBackwardKernel.Flash64, 1, 3, 3, 40, 49, 49, 0, AttentionMaskMode.Causal, false)]
    [TestCase(AttentionBackwardKernel.Flash64, 1, 2, 2, 20, 37, 37, 0, AttentionMaskMode.Causal, false)]
    [TestCase(AttentionBackwardKernel.Flash64, 1, 1, 1, 64, 1, 1, 0, AttentionMaskMode.Causal, true)]
    [TestCase(AttentionBackwardKernel.Flash64, 2, 2, 1, 64, 20, 70, 50, AttentionMaskMode.Causal, true)]
    [TestCase(AttentionBackwardKernel.Flash64, 1, 2, 2, 32, 97, 97, 0, AttentionMaskMode.Bidirectional, true)]
    [TestCase(AttentionBackwardKernel.Tiled, 1, 2, 2, 64, 40, 40, 0, AttentionMaskMode.Causal, true)]
    [TestCase(AttentionBackwardKernel.Tiled, 1, 2, 1, 6, 33, 33, 0, AttentionMaskMode.Explicit, false)]
    public void AttentionBackwardKernelMatchesReference(AttentionBackwardKernel kernel, int batch, int heads, int kvHeads, int headDim,
        int queries, int keys, int queryOffset, AttentionMaskMode mode, bool aligned)
    {
        var rng = TestUtil.NewRandom();
        int qRow = heads * headDim + (aligned ? 4 : 3), kRow = kvHeads * headDim + (aligned ? 8 : 5);
        long qBatch = (long)queries * qRow + (aligned ? 4 : 2), kBatch = (long)keys * kRow + (aligned ? 4 : 1);
        var shape = new AttentionShape(batch, heads, kvHeads, headDim, queries, keys, queryOffset, qRow, kRow, qBatch, kBatch, 1f / MathF.Sqrt(headDim));
        int qSpan = (int)(batch * qBatch), kSpan = (int)(batch * kBatch);
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, keys) : null;
        int pad = aligned ? 4 : 0;
        var inputs = new AttentionBuffers(
            Q: TestUtil.RandomFloats(rng, 8 + qSpan, 3f), QOffset: aligned ? 8 : 7,
            K: TestUtil.RandomFloats(rng, 12 + kSpan), KOffset: aligned ? 12 : 11,
            V: TestUtil.RandomFloats(rng, 4 + kSpan), VOffset: 4,
            Dq: TestUtil.RandomFloats(rng, 4 + qSpan), DqOffset: aligned ? 4 : 3,
            Dk: TestUtil.RandomFloats(rng, 8 + kSpan), DkOffset: aligned ? 8 : 5,
            Dv: TestUtil.RandomFloats(rng, 9 + pad + kSpan), DvOffset: aligned ? 12 : 9);
        CompareAttentionBackward(rng, shape, mode, allow, inputs, packed: false, kernel);
    }

    /// <summary>The flash backward wherever the head dim is a multiple of 4 up to 64, else the tiled kernel.</summary>
    [TestCase(64, AttentionBackwardKernel.Flash64)]
    [TestCase(8, AttentionBackwardKernel.Flash64)]
    [TestCase(68, AttentionBackwardKernel.Tiled)]
    [TestCase(128, AttentionBackwardKernel.Tiled)]
    [TestCase(6, AttentionBackwardKernel.Tiled)]
    public void AttentionBackwardKernelIsChosenByHeadDim(int headDim, AttentionBackwardKernel expected)
    {
        var shape = new AttentionShape(1, 1, 1, headDim, 8, 8, 0, headDim, headDim, 8L * headDim, 8L * headDim, 1f);
        Assert.That(((IlgpuDevice)device).Kernels.ChooseAttentionBackwardKernel(shape), Is.EqualTo(expected));
    }

    /// <summary>GPT-2's packed qkv rows [B, T, 3C], with the gradients going into one packed dQkv buffer.</summary>
    [TestCase(2, 33, 2, 16, AttentionMaskMode.Causal)]
    [TestCase(1, 70, 2, 64, AttentionMaskMode.Causal)]
    [TestCase(1, 70, 1, 64, AttentionMaskMode.Bidirectional)]
    [TestCase(2, 7, 1, 8, AttentionMaskMode.Explicit)]
    public void PackedQkvAttentionBackwardMatchesReference(int batch, int length, int heads, int headDim, AttentionMaskMode mode)
    {
        var rng = TestUtil.NewRandom();
        var shape = AttentionShape.PackedSelfAttention(batch, length, heads, headDim);
        int c = heads * headDim;
        var qkv = TestUtil.RandomFloats(rng, batch * length * 3 * c, 2f);
        var dQkv = TestUtil.RandomFloats(rng, qkv.Length);
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, length) : null;
        var inputs = new AttentionBuffers(qkv, 0, qkv, c, qkv, 2 * c, dQkv, 0, dQkv, c, dQkv, 2 * c);
        CompareAttentionBackward(rng, shape, mode, allow, inputs, packed: true);
    }

    /// <summary>A query whose mask row is empty has lse = −∞ and must add nothing (and no NaN) anywhere.</summary>
    [Test]
    public void QueryWithoutVisibleKeysAddsNothing()
    {
        const int length = 19, headDim = 8;
        var rng = TestUtil.NewRandom();
        var shape = new AttentionShape(1, 1, 1, headDim, length, length, 0, headDim, headDim, length * headDim, length * headDim, 0.5f);
        var allow = TestUtil.RandomAllowMask(rng, length);
        Array.Clear(allow, 5 * length, length);
        var inputs = new AttentionBuffers(
            TestUtil.RandomFloats(rng, length * headDim), 0, TestUtil.RandomFloats(rng, length * headDim), 0,
            TestUtil.RandomFloats(rng, length * headDim), 0, TestUtil.RandomFloats(rng, length * headDim), 0,
            TestUtil.RandomFloats(rng, length * headDim), 0, TestUtil.RandomFloats(rng, length * headDim), 0);
        var dqRow5 = inputs.Dq.AsSpan(5 * headDim, headDim).ToArray();
        var dq = CompareAttentionBackward(rng, shape, AttentionMaskMode.Explicit, allow, inputs, packed: false);
        Assert.That(dq.AsSpan(5 * headDim, headDim).ToArray(), Is.EqualTo(dqRow5), "dq of the blind query is untouched");
    }

    [Test]
    public void TooLargeHeadDimIsRejectedBeforeLaunch()
    {
        int d = GpuKernels.MaxAttentionHeadDim + 8;
        using var q = device.Zeros(DType.F32, 1, 2, d);
        using var o = device.Zeros(DType.F32, 1, 2, d);
        using var lse = device.Zeros(DType.F32, 1, 1, 2);
        var shape = new AttentionShape(1, 1, 1, d, 2, 2, 0, d, d, 2L * d, 2L * d, 1f);
        Assert.Throws<ArgumentException>(() => device.AttentionBackward(q, 0, q, 0, q, 0, o, o, lse, q, 0, q, 0, q, 0,
            shape, AttentionMaskMode.Causal, null));
    }

    [Test]
    public void FlashAttentionBackwardRefusesHeadDimsItDoesNotCover()
    {
        var kernels = ((IlgpuDevice)device).Kernels;
        using var x = device.Zeros(DType.F32, 1, 2, 128);
        var view = IlgpuDevice.View(x);
        var wide = new AttentionShape(1, 1, 1, 128, 2, 2, 0, 128, 128, 256, 256, 1f);
        Assert.Throws<ArgumentException>(() => kernels.AttentionBackward(view, view, view, view, view, view, view, view, view, view,
            wide, AttentionMaskMode.Causal, null, AttentionBackwardKernel.Flash64));
    }

    /// <summary>Host copies of q, k, v and of the starting dq, dk, dv, each a buffer with the offset of its first element.</summary>
    sealed record AttentionBuffers(float[] Q, int QOffset, float[] K, int KOffset, float[] V, int VOffset,
        float[] Dq, int DqOffset, float[] Dk, int DkOffset, float[] Dv, int DvOffset);

    /// <summary>
    /// Runs the reference forward for output and lse (rounded to float, as a float forward would hand them
    /// over), a random dOutput, then the reference backward and the device's, and compares dq, dk and dv
    /// over their whole buffers (padding included). Returns the device's dq buffer.
    /// </summary>
    float[] CompareAttentionBackward(Random rng, AttentionShape shape, AttentionMaskMode mode, byte[]? allow, AttentionBuffers h, bool packed,
        AttentionBackwardKernel? kernel = null)
    {
        int outLength = shape.Batch * shape.QueryLength * shape.Heads * shape.HeadDim;
        int lseLength = shape.Batch * shape.Heads * shape.QueryLength;
        var qD = TestUtil.ToDouble(h.Q);
        var kD = TestUtil.ToDouble(h.K);
        var vD = TestUtil.ToDouble(h.V);
        var outputD = new double[outLength];
        var lseD = new double[lseLength];
        Ref.Attention.Forward(qD.AsSpan(h.QOffset), kD.AsSpan(h.KOffset), vD.AsSpan(h.VOffset), outputD, lseD, shape, mode, allow);
        var output = TestUtil.ToFloat(outputD);
        var lse = TestUtil.ToFloat(lseD);
        var dOut = TestUtil.RandomFloats(rng, outLength);

        var expectedDq = TestUtil.ToDouble(h.Dq);
        var expectedDk = packed ? expectedDq : TestUtil.ToDouble(h.Dk);
        var expectedDv = packed ? expectedDq : TestUtil.ToDouble(h.Dv);
        Ref.Attention.Backward(qD.AsSpan(h.QOffset), kD.AsSpan(h.KOffset), vD.AsSpan(h.VOffset), TestUtil.ToDouble(output), TestUtil.ToDouble(dOut),
            TestUtil.ToDouble(lse), expectedDq.AsSpan(h.DqOffset), expectedDk.AsSpan(h.DkOffset), expectedDv.AsSpan(h.DvOffset), shape, mode, allow);

        using var qT = device.FromArray(h.Q, h.Q.Length);
        using var kT = packed ? null : device.FromArray(h.K, h.K.Length);
        using var vT = packed ? null : device.FromArray(h.V, h.V.Length);
        using var dqT = device.FromArray(h.Dq, h.Dq.Length);
        using var dkT = packed ? null : device.FromArray(h.Dk, h.Dk.Length);
        using var dvT = packed ? null : device.FromArray(h.Dv, h.Dv.Length);
        using var outputT = device.FromArray(output, shape.Batch, shape.QueryLength, shape.Heads * shape.HeadDim);
        using var dOutT = device.FromArray(dOut, shape.Batch, shape.QueryLength, shape.Heads * shape.HeadDim);
        using var lseT = device.FromArray(lse, shape.Batch, shape.Heads, shape.QueryLength);
        using var allowT = allow is null ? null : device.FromArray(allow, shape.KeyLength, shape.KeyLength);
        if (kernel is null)
        {
            device.AttentionBackward(qT, h.QOffset, kT ?? qT, h.KOffset, vT ?? qT, h.VOffset, outputT, dOutT, lseT,
                dqT, h.DqOffset, dkT ?? dqT, h.DkOffset, dvT ?? dqT, h.DvOffset, shape, mode, allowT);
        }
        else
        {
            using var delta = device.Allocate(DType.F32, shape.Batch, shape.Heads, shape.QueryLength);
            ((IlgpuDevice)device).Kernels.AttentionBackward(IlgpuDevice.View(qT).SubView(h.QOffset), IlgpuDevice.View(kT ?? qT).SubView(h.KOffset),
                IlgpuDevice.View(vT ?? qT).SubView(h.VOffset), IlgpuDevice.View(outputT), IlgpuDevice.View(dOutT), IlgpuDevice.View(lseT),
                IlgpuDevice.View(delta), IlgpuDevice.View(dqT).SubView(h.DqOffset), IlgpuDevice.View(dkT ?? dqT).SubView(h.DkOffset),
                IlgpuDevice.View(dvT ?? dqT).SubView(h.DvOffset), shape, mode,
                allowT is null ? null : ((IlgpuStorage<byte>)allowT.Storage).View, kernel.Value);
        }

        var dq = device.ToArray(dqT);
        Assert.That(dq, Has.None.NaN, "dq");
        if (packed)
        {
            Assert.That(TestUtil.RelativeL2(dq, expectedDq), Is.LessThan(Tolerance), "dQkv");
            return dq;
        }
        Assert.That(TestUtil.RelativeL2(dq, expectedDq), Is.LessThan(Tolerance), "dq");
        Assert.That(TestUtil.RelativeL2(device.ToArray(dkT!), expectedDk), Is.LessThan(Tolerance), "dk");
        Assert.That(TestUtil.RelativeL2(device.ToArray(dvT!), expectedDv), Is.LessThan(Tolerance), "dv");
        return dq;
    }

    // ---- cross-entropy -------------------------------------------------------------------------

    /// <summary>
    /// Every third row has weight 0 and an out-of-range target that must not be read; the others have
    /// weights in [0.1, 2). Run once into a separate dLogits and once in place over the logits.
    /// </summary>
    [TestCase(1, 5)]
    [TestCase(9, 5)]
    [TestCase(4, 3001)]
    [TestCase(2, 50257)]
    public void CrossEntropyMatchesReference(int rows, int vocab)
    {
        var rng = TestUtil.NewRandom();
        var logits = TestUtil.RandomFloats(rng, rows * vocab, 4f);
        var targets = new int[rows];
        var weights = new float[rows];
        for (int r = 0; r < rows; r++)
        {
            bool ignored = r % 3 == 1;
            targets[r] = ignored ? -1 - vocab : rng.Next(vocab);
            weights[r] = ignored ? 0f : (float)(0.1 + 1.9 * rng.NextDouble());
        }
        var expectedLosses = new double[rows];
        var expectedDLogits = new double[rows * vocab];
        Ref.CrossEntropy.Forward(TestUtil.ToDouble(logits), targets, TestUtil.ToDouble(weights), expectedLosses, expectedDLogits, rows, vocab);

        using var logitsT = device.FromArray(logits, rows, vocab);
        using var targetsT = device.FromArray(targets, rows);
        using var weightsT = device.FromArray(weights, rows);
        using var losses = device.FromArray(TestUtil.RandomFloats(rng, rows), rows);
        using var dLogits = device.FromArray(TestUtil.RandomFloats(rng, rows * vocab), rows, vocab);
        device.CrossEntropy(logitsT, targetsT, weightsT, losses, dLogits);
        Assert.That(TestUtil.RelativeL2(device.ToArray(losses), expectedLosses), Is.LessThan(Tolerance), "losses");
        Assert.That(TestUtil.RelativeL2(device.ToArray(dLogits), expectedDLogits), Is.LessThan(Tolerance), "dLogits");
        Assert.That(device.ToArray(logitsT), Is.EqualTo(logits), "logits untouched when dLogits is separate");

        device.Fill(losses, float.NaN);
        device.CrossEntropy(logitsT, targetsT, weightsT, losses, logitsT);
        Assert.That(TestUtil.RelativeL2(device.ToArray(losses), expectedLosses), Is.LessThan(Tolerance), "losses, in place");
        Assert.That(TestUtil.RelativeL2(device.ToArray(logitsT), expectedDLogits), Is.LessThan(Tolerance), "dLogits over logits");
    }

    // ---- optimizer -----------------------------------------------------------------------------

    /// <summary>
    /// The parameter change is compared rather than the parameter, so that the bound says something about
    /// the update (lr 0.05 keeps the float rounding of p − Δ near 1e-6 of Δ).
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

    /// <summary>Partial sums are double on the device and on the host, so the result is exact to double round-off.</summary>
    [TestCase(1)]
    [TestCase(1000)]
    [TestCase(70001)]
    public void SumOfSquaresMatchesDouble(int n)
    {
        var x = TestUtil.RandomFloats(TestUtil.NewRandom(), n, 3f);
        double expected = 0;
        foreach (float f in x) expected += (double)f * f;

        using var t = device.FromArray(x, n);
        Assert.That(device.SumOfSquares(t), Is.EqualTo(expected).Within(1e-12 * expected));
    }

    [TestCase(1)]
    [TestCase(3001)]
    public void ScaleMultipliesEveryElement(int n)
    {
        var x = TestUtil.RandomFloats(TestUtil.NewRandom(), n);
        const float factor = 0.37f;
        var expected = new float[n];
        for (int i = 0; i < n; i++) expected[i] = x[i] * factor;

        using var t = device.FromArray(x, n);
        device.Scale(t, factor);
        Assert.That(device.ToArray(t), Is.EqualTo(expected));
    }
}
