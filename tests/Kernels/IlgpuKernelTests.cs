using DiffuSharp.Kernels;
using DiffuSharp.Kernels.Gpu;
using DiffuSharp.Runtime;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// Every ILGPU kernel, through the public Device API of <see cref="IlgpuDevice"/>, against the float64
/// reference on fresh random inputs. Shapes are small (the CPU simulator pays about 1 ms per group
/// barrier) but cut across the kernels' tiles: matmul 64 x 64 x 16, attention 64 or 48 queries x 32 keys (flash)
/// and 32 queries x 16 keys (tiled), 128 threads a group, one warp per row for the row kernels. The same fixture runs on CUDA when a GPU is
/// present and is reported as ignored, never as passed, where it is not.
/// </summary>
[TestFixture(IlgpuBackend.CpuSimulator)]
[TestFixture(IlgpuBackend.Cuda)]
public class IlgpuKernelTests(IlgpuBackend backend) : IlgpuFixture(backend)
{
    /// <summary>float32 round-off over sums of at most a few hundred terms stays near 1e-7 relative.</summary>
    const double Tolerance = 1e-5;

    // ---- device --------------------------------------------------------------------------------

    [Test]
    public void DeviceDescribesItself()
    {
        Assert.That(device.Name, Is.EqualTo(backend == IlgpuBackend.Cuda ? "cuda" : "ilgpu-cpu"));
        Assert.That(device.Description, Is.Not.Empty);
        Assert.That(IlgpuDevice.IsAvailable(IlgpuBackend.CpuSimulator), Is.True);
    }

    [Test]
    public void MissingCudaIsAClearError()
    {
        if (IlgpuDevice.IsAvailable(IlgpuBackend.Cuda)) Assert.Ignore("a CUDA GPU is present, so there is no missing-device error to see");
        var e = Assert.Throws<DiffuException>(() => new IlgpuDevice(IlgpuBackend.Cuda).Dispose());
        Assert.That(e!.Message, Does.Contain("no CUDA device"));
    }

    [Test]
    public void UploadsAndDownloadsSubRanges()
    {
        using var f = device.FromArray(new float[] { 1, 2, 3, 4, 5, 6 }, 2, 3);
        device.Upload(f, 2, new float[] { 30, 40 });
        var part = new float[3];
        device.Download(f, 1, part);
        Assert.That(part, Is.EqualTo(new float[] { 2, 30, 40 }));

        using var i = device.FromArray(new[] { 7, 8, 9 }, 3);
        device.Upload(i, 1, new[] { -8 });
        Assert.That(device.ToIntArray(i), Is.EqualTo(new[] { 7, -8, 9 }));
    }

    [Test]
    public void PoolReusesFreedBuffers()
    {
        device.Allocate(DType.F32, 123, 7).Dispose();
        long fresh = device.Pool.FreshAllocations;
        using var again = device.Allocate(DType.F32, 7, 123);
        Assert.That(device.Pool.FreshAllocations, Is.EqualTo(fresh));
    }

    [Test]
    public void TooLargeHeadDimIsRejectedBeforeLaunch()
    {
        int d = GpuKernels.MaxAttentionHeadDim + 8;
        using var q = device.Zeros(DType.F32, 1, 2, d);
        using var o = device.Zeros(DType.F32, 1, 2, d);
        var shape = new AttentionShape(1, 1, 1, d, 2, 2, 0, d, d, 2L * d, 2L * d, 1f);
        Assert.Throws<ArgumentException>(() => device.Attention(q, 0, q, 0, q, 0, o, null, shape, AttentionMaskMode.Causal, null));
    }

    // ---- elementwise ---------------------------------------------------------------------------

    [TestCase(1)]
    [TestCase(1000)]
    [TestCase(70001)]
    public void FillSetsEveryElement(int n)
    {
        using var t = device.Allocate(DType.F32, n);
        device.Fill(t, 2.5f);
        Assert.That(device.ToArray(t), Is.All.EqualTo(2.5f));
    }

    [TestCase(1, 1, 1, 1, 0, 0)]
    [TestCase(5, 7, 9, 12, 3, 10)]
    [TestCase(33, 70, 70, 100, 0, 5)]
    public void CopyRowsCopiesOnlyTheRows(int rows, int columns, int srcStride, int dstStride, int srcOffset, int dstOffset)
    {
        var rng = TestUtil.NewRandom();
        var src = TestUtil.RandomFloats(rng, srcOffset + (rows - 1) * srcStride + columns);
        var dst = TestUtil.RandomFloats(rng, dstOffset + (rows - 1) * dstStride + columns + 4);
        var expected = (float[])dst.Clone();
        for (int r = 0; r < rows; r++)
            Array.Copy(src, srcOffset + r * srcStride, expected, dstOffset + r * dstStride, columns);

        using var s = device.FromArray(src, src.Length);
        using var d = device.FromArray(dst, dst.Length);
        device.CopyRows(s, srcOffset, srcStride, d, dstOffset, dstStride, rows, columns);
        Assert.That(device.ToArray(d), Is.EqualTo(expected));
    }

    [TestCase(1, 1, 1, 1, 1, 0)]
    [TestCase(2, 5, 33, 11, 9, 3)]
    [TestCase(3, 17, 70, 50, 20, 0)]
    public void EmbeddingMatchesReference(int batch, int length, int channels, int vocab, int positions, int offset)
    {
        var rng = TestUtil.NewRandom();
        var ids = new int[batch * length];
        for (int i = 0; i < ids.Length; i++) ids[i] = rng.Next(vocab);
        var wte = TestUtil.RandomFloats(rng, vocab * channels);
        var wpe = TestUtil.RandomFloats(rng, positions * channels);
        var expected = new double[batch * length * channels];
        Ref.Embedding.Forward(ids, TestUtil.ToDouble(wte), TestUtil.ToDouble(wpe), expected, batch, length, channels, offset);

        using var idsT = device.FromArray(ids, batch, length);
        using var wteT = device.FromArray(wte, vocab, channels);
        using var wpeT = device.FromArray(wpe, positions, channels);
        using var output = device.Allocate(DType.F32, batch, length, channels);
        device.Embedding(idsT, wteT, wpeT, output, offset);
        Assert.That(TestUtil.RelativeL2(device.ToArray(output), expected), Is.LessThan(Tolerance));
    }

    [TestCase(1)]
    [TestCase(1000)]
    [TestCase(4099)]
    public void GeluMatchesReference(int n)
    {
        var x = TestUtil.RandomFloats(TestUtil.NewRandom(), n, 6f);
        var expected = new double[n];
        Ref.Gelu.Forward(TestUtil.ToDouble(x), expected);

        using var xT = device.FromArray(x, n);
        using var output = device.Allocate(DType.F32, n);
        device.Gelu(xT, output);
        Assert.That(TestUtil.RelativeL2(device.ToArray(output), expected), Is.LessThan(Tolerance));
    }

    [TestCase(1)]
    [TestCase(3001)]
    public void AddMatchesReferenceAndMayAlias(int n)
    {
        var rng = TestUtil.NewRandom();
        var a = TestUtil.RandomFloats(rng, n);
        var b = TestUtil.RandomFloats(rng, n);
        var expected = new double[n];
        Ref.Residual.Add(TestUtil.ToDouble(a), TestUtil.ToDouble(b), expected);

        using var aT = device.FromArray(a, n);
        using var bT = device.FromArray(b, n);
        using var output = device.Allocate(DType.F32, n);
        device.Add(aT, bT, output);
        Assert.That(TestUtil.RelativeL2(device.ToArray(output), expected), Is.LessThan(Tolerance), "separate output");

        device.Add(aT, bT, aT);
        Assert.That(TestUtil.RelativeL2(device.ToArray(aT), expected), Is.LessThan(Tolerance), "output aliases a");
    }

    // ---- row reductions ------------------------------------------------------------------------

    [TestCase(1, 1)]
    [TestCase(3, 33)]
    [TestCase(17, 100)]
    [TestCase(2, 769)]
    public void LayerNormMatchesReference(int rows, int channels)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, rows * channels, 3f);
        for (int i = 0; i < x.Length; i++) x[i] += 1.5f;
        var w = TestUtil.RandomFloats(rng, channels);
        var b = TestUtil.RandomFloats(rng, channels);
        var expected = new double[rows * channels];
        var expectedMean = new double[rows];
        var expectedRstd = new double[rows];
        Ref.LayerNorm.Forward(TestUtil.ToDouble(x), TestUtil.ToDouble(w), TestUtil.ToDouble(b), expected, expectedMean, expectedRstd, rows, channels, 1e-5);

        using var xT = device.FromArray(x, rows, channels);
        using var wT = device.FromArray(w, channels);
        using var bT = device.FromArray(b, channels);
        using var output = device.Allocate(DType.F32, rows, channels);
        using var mean = device.Allocate(DType.F32, rows);
        using var rstd = device.Allocate(DType.F32, rows);
        device.LayerNorm(xT, wT, bT, output, mean, rstd, 1e-5f);
        Assert.That(TestUtil.RelativeL2(device.ToArray(output), expected), Is.LessThan(Tolerance), "output");
        Assert.That(TestUtil.RelativeL2(device.ToArray(mean), expectedMean), Is.LessThan(Tolerance), "mean");
        Assert.That(TestUtil.RelativeL2(device.ToArray(rstd), expectedRstd), Is.LessThan(Tolerance), "rstd");
    }

    [TestCase(1, 1)]
    [TestCase(3, 7)]
    [TestCase(9, 100)]
    [TestCase(2, 1001)]
    public void SoftmaxMatchesReference(int rows, int columns)
    {
        var x = TestUtil.RandomFloats(TestUtil.NewRandom(), rows * columns, 8f);
        var expected = new double[rows * columns];
        Ref.Softmax.Forward(TestUtil.ToDouble(x), expected, rows, columns);

        using var xT = device.FromArray(x, rows, columns);
        using var output = device.Allocate(DType.F32, rows, columns);
        device.Softmax(xT, output);
        Assert.That(TestUtil.RelativeL2(device.ToArray(output), expected), Is.LessThan(Tolerance));
    }

    // ---- matmul --------------------------------------------------------------------------------

    [TestCase(1, 1, 1)]
    [TestCase(17, 33, 5)]
    [TestCase(3, 64, 64)]
    [TestCase(64, 17, 65)]
    [TestCase(65, 130, 70)]
    public void MatMulMatchesReference(int m, int k, int n)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, m * k);
        var w = TestUtil.RandomFloats(rng, k * n);
        var bias = TestUtil.RandomFloats(rng, n);
        var xd = TestUtil.ToDouble(x);
        var wd = TestUtil.ToDouble(w);
        var expected = new double[m * n];

        using var xT = device.FromArray(x, m, k);
        using var wKn = device.FromArray(w, k, n);
        using var wNk = device.FromArray(w, n, k);
        using var biasT = device.FromArray(bias, n);
        using var output = device.Allocate(DType.F32, m, n);

        Ref.MatMul.Forward(xd, wd, TestUtil.ToDouble(bias), expected, m, k, n);
        device.MatMul(xT, wKn, biasT, output);
        Assert.That(TestUtil.RelativeL2(device.ToArray(output), expected), Is.LessThan(Tolerance), "x · w + bias");

        Ref.MatMul.Forward(xd, wd, default, expected, m, k, n);
        device.MatMul(xT, wKn, null, output);
        Assert.That(TestUtil.RelativeL2(device.ToArray(output), expected), Is.LessThan(Tolerance), "x · w");

        Ref.MatMul.ForwardTransposed(xd, wd, TestUtil.ToDouble(bias), expected, m, k, n);
        device.MatMulTransposed(xT, wNk, biasT, output);
        Assert.That(TestUtil.RelativeL2(device.ToArray(output), expected), Is.LessThan(Tolerance), "x · wᵀ + bias");

        Ref.MatMul.ForwardTransposed(xd, wd, default, expected, m, k, n);
        device.MatMulTransposed(xT, wNk, null, output);
        Assert.That(TestUtil.RelativeL2(device.ToArray(output), expected), Is.LessThan(Tolerance), "x · wᵀ");
    }

    // ---- attention -----------------------------------------------------------------------------

    /// <summary>Separate q, k, v tensors with padded rows and batches, read from non-zero offsets.</summary>
    [TestCase(1, 1, 1, 8, 1, 1, 0, AttentionMaskMode.Causal)]
    [TestCase(2, 2, 2, 8, 7, 7, 0, AttentionMaskMode.Causal)]
    [TestCase(2, 2, 2, 8, 7, 7, 0, AttentionMaskMode.Bidirectional)]
    [TestCase(2, 2, 2, 8, 7, 7, 0, AttentionMaskMode.Explicit)]
    [TestCase(1, 2, 2, 64, 33, 33, 0, AttentionMaskMode.Causal)]
    [TestCase(1, 2, 2, 64, 33, 33, 0, AttentionMaskMode.Bidirectional)]
    [TestCase(1, 2, 2, 64, 33, 33, 0, AttentionMaskMode.Explicit)]
    [TestCase(2, 4, 2, 16, 70, 70, 0, AttentionMaskMode.Causal)]
    [TestCase(1, 4, 2, 24, 70, 70, 0, AttentionMaskMode.Explicit)]
    [TestCase(1, 4, 1, 64, 70, 70, 0, AttentionMaskMode.Bidirectional)]
    [TestCase(1, 2, 2, 128, 33, 33, 0, AttentionMaskMode.Causal)]
    [TestCase(1, 1, 1, 100, 7, 7, 0, AttentionMaskMode.Bidirectional)]
    [TestCase(2, 4, 2, 64, 1, 33, 32, AttentionMaskMode.Causal)]
    [TestCase(1, 2, 2, 8, 1, 70, 69, AttentionMaskMode.Causal)]
    [TestCase(1, 2, 1, 32, 5, 70, 40, AttentionMaskMode.Causal)]
    [TestCase(1, 2, 2, 16, 1, 33, 0, AttentionMaskMode.Bidirectional)]
    public void AttentionMatchesReference(int batch, int heads, int kvHeads, int headDim, int queries, int keys, int queryOffset, AttentionMaskMode mode)
    {
        var rng = TestUtil.NewRandom();
        int qRow = heads * headDim + 3, kRow = kvHeads * headDim + 5;
        long qBatch = (long)queries * qRow + 2, kBatch = (long)keys * kRow + 1;
        var shape = new AttentionShape(batch, heads, kvHeads, headDim, queries, keys, queryOffset,
            qRow, kRow, qBatch, kBatch, 1f / MathF.Sqrt(headDim));
        var q = TestUtil.RandomFloats(rng, (int)(7 + batch * qBatch), 3f);
        var k = TestUtil.RandomFloats(rng, (int)(11 + batch * kBatch));
        var v = TestUtil.RandomFloats(rng, (int)(4 + batch * kBatch));
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, keys) : null;

        using var qT = device.FromArray(q, q.Length);
        using var kT = device.FromArray(k, k.Length);
        using var vT = device.FromArray(v, v.Length);
        CompareAttention(shape, mode, qT, 7, kT, 11, vT, 4, q.AsSpan(7), k.AsSpan(11), v.AsSpan(4), allow);
    }

    /// <summary>
    /// Each attention kernel forced on shapes that cut across its tiles (flash: 64- or 48-query blocks, 32-key tiles,
    /// 8 column quads a lane; tiled: 32 queries, 16 keys): lengths one past or short of a block, KV-cache query offsets,
    /// grouped-query heads, head dims whose quads do not fill the lanes (20, 40, 80, 100) or that are odd quads (20, 100),
    /// the flash kernel for head dims up to 128 on small heads, and rows padded so that the flash kernels read them with
    /// scalar loads or, when <paramref name="aligned"/>, 16 bytes at a time.
    /// </summary>
    [TestCase(AttentionKernel.Flash64, 2, 4, 2, 64, 130, 130, 0, AttentionMaskMode.Causal, true)]
    [TestCase(AttentionKernel.Flash64, 1, 2, 2, 64, 100, 100, 0, AttentionMaskMode.Bidirectional, false)]
    [TestCase(AttentionKernel.Flash64, 1, 2, 1, 16, 70, 70, 0, AttentionMaskMode.Explicit, true)]
    [TestCase(AttentionKernel.Flash64, 1, 3, 3, 40, 65, 65, 0, AttentionMaskMode.Causal, false)]
    [TestCase(AttentionKernel.Flash64, 2, 2, 1, 64, 5, 100, 95, AttentionMaskMode.Causal, true)]
    [TestCase(AttentionKernel.Flash64, 1, 2, 2, 20, 37, 90, 53, AttentionMaskMode.Causal, false)]
    [TestCase(AttentionKernel.Flash64, 1, 1, 1, 64, 1, 1, 0, AttentionMaskMode.Causal, true)]
    [TestCase(AttentionKernel.Flash128, 1, 2, 2, 128, 100, 100, 0, AttentionMaskMode.Causal, true)]
    [TestCase(AttentionKernel.Flash128, 2, 4, 2, 80, 50, 50, 0, AttentionMaskMode.Bidirectional, false)]
    [TestCase(AttentionKernel.Flash128, 1, 2, 1, 128, 3, 70, 67, AttentionMaskMode.Causal, false)]
    [TestCase(AttentionKernel.Flash128, 1, 2, 2, 100, 49, 49, 0, AttentionMaskMode.Explicit, true)]
    [TestCase(AttentionKernel.Flash128, 1, 2, 2, 64, 60, 60, 0, AttentionMaskMode.Causal, true)]
    [TestCase(AttentionKernel.Flash128, 1, 1, 1, 128, 97, 97, 0, AttentionMaskMode.Bidirectional, true)]
    [TestCase(AttentionKernel.Tiled, 1, 2, 2, 64, 40, 40, 0, AttentionMaskMode.Causal, true)]
    [TestCase(AttentionKernel.Tiled, 1, 2, 1, 6, 33, 33, 0, AttentionMaskMode.Explicit, false)]
    public void AttentionKernelMatchesReference(AttentionKernel kernel, int batch, int heads, int kvHeads, int headDim,
        int queries, int keys, int queryOffset, AttentionMaskMode mode, bool aligned)
    {
        var rng = TestUtil.NewRandom();
        int qRow = heads * headDim + (aligned ? 4 : 3), kRow = kvHeads * headDim + (aligned ? 8 : 5);
        long qBatch = (long)queries * qRow + (aligned ? 4 : 2), kBatch = (long)keys * kRow + (aligned ? 4 : 1);
        int qOffset = aligned ? 8 : 7, kOffset = aligned ? 12 : 11, vOffset = 4;
        var shape = new AttentionShape(batch, heads, kvHeads, headDim, queries, keys, queryOffset,
            qRow, kRow, qBatch, kBatch, 1f / MathF.Sqrt(headDim));
        var q = TestUtil.RandomFloats(rng, (int)(qOffset + batch * qBatch), 3f);
        var k = TestUtil.RandomFloats(rng, (int)(kOffset + batch * kBatch));
        var v = TestUtil.RandomFloats(rng, (int)(vOffset + batch * kBatch));
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, keys) : null;

        using var qT = device.FromArray(q, q.Length);
        using var kT = device.FromArray(k, k.Length);
        using var vT = device.FromArray(v, v.Length);
        CompareAttention(shape, mode, qT, qOffset, kT, kOffset, vT, vOffset, q.AsSpan(qOffset), k.AsSpan(kOffset), v.AsSpan(vOffset), allow, kernel);
    }

    /// <summary>
    /// Per-row key lengths on each attention kernel: rows of very different lengths right-padded into one batch, with
    /// lengths one short of, at and one past a key tile (flash: 32 keys, tiled: 16) and a single key, grouped-query
    /// heads, causal chunks after cached keys, every mask mode. The padded keys and values are NaN, so a kernel that
    /// loaded one into a tile it used, or weighted one by zero instead of masking it, fails.
    /// </summary>
    [TestCase(AttentionKernel.Flash64, 2, 1, 16, 70, 0, AttentionMaskMode.Causal, new[] { 70, 33, 1 })]
    [TestCase(AttentionKernel.Flash64, 2, 1, 16, 70, 0, AttentionMaskMode.Bidirectional, new[] { 5, 70, 32 })]
    [TestCase(AttentionKernel.Flash64, 2, 2, 20, 40, 0, AttentionMaskMode.Explicit, new[] { 40, 9 })]
    [TestCase(AttentionKernel.Flash64, 2, 2, 16, 90, 53, AttentionMaskMode.Causal, new[] { 90, 60, 20 })]
    [TestCase(AttentionKernel.Flash128, 2, 1, 80, 50, 0, AttentionMaskMode.Causal, new[] { 50, 17, 1 })]
    [TestCase(AttentionKernel.Flash128, 2, 2, 128, 50, 0, AttentionMaskMode.Bidirectional, new[] { 20, 50 })]
    [TestCase(AttentionKernel.Flash128, 1, 1, 100, 49, 0, AttentionMaskMode.Explicit, new[] { 2, 49 })]
    [TestCase(AttentionKernel.Flash128, 2, 1, 68, 70, 40, AttentionMaskMode.Causal, new[] { 70, 45, 10 })]
    [TestCase(AttentionKernel.Tiled, 2, 1, 6, 33, 0, AttentionMaskMode.Causal, new[] { 33, 17, 1 })]
    [TestCase(AttentionKernel.Tiled, 2, 2, 64, 40, 0, AttentionMaskMode.Bidirectional, new[] { 16, 40 })]
    [TestCase(AttentionKernel.Tiled, 2, 1, 6, 33, 0, AttentionMaskMode.Explicit, new[] { 20, 33 })]
    public void AttentionKernelWithKeyLengthsMatchesReference(AttentionKernel kernel, int heads, int kvHeads, int headDim,
        int keys, int queryOffset, AttentionMaskMode mode, int[] keyLengths)
    {
        var rng = TestUtil.NewRandom();
        int batch = keyLengths.Length, queries = keys - queryOffset;
        var shape = new AttentionShape(batch, heads, kvHeads, headDim, queries, keys, queryOffset,
            heads * headDim, kvHeads * headDim, (long)queries * heads * headDim, (long)keys * kvHeads * headDim, 1f / MathF.Sqrt(headDim));
        var q = TestUtil.RandomFloats(rng, batch * queries * heads * headDim, 3f);
        var k = TestUtil.RandomFloats(rng, batch * keys * kvHeads * headDim);
        var v = TestUtil.RandomFloats(rng, batch * keys * kvHeads * headDim);
        TestUtil.PoisonPaddedKeys(k, 0, shape, keyLengths);
        TestUtil.PoisonPaddedKeys(v, 0, shape, keyLengths);
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, keys) : null;
        // A pad query's diagonal key is padding too: key 0 keeps every query seeing a key (lse finite for the comparison).
        for (int i = 0; allow is not null && i < keys; i++) allow[i * keys] = 1;

        using var qT = device.FromArray(q, q.Length);
        using var kT = device.FromArray(k, k.Length);
        using var vT = device.FromArray(v, v.Length);
        CompareAttention(shape, mode, qT, 0, kT, 0, vT, 0, q, k, v, allow, kernel, keyLengths);
    }

    /// <summary>Flash kernels wherever the head dim is a multiple of 4 (64 queries a group up to 64, 48 up to 128), else the tiled kernel.</summary>
    [TestCase(64, AttentionKernel.Flash64)]
    [TestCase(8, AttentionKernel.Flash64)]
    [TestCase(68, AttentionKernel.Flash128)]
    [TestCase(128, AttentionKernel.Flash128)]
    [TestCase(6, AttentionKernel.Tiled)]
    [TestCase(126, AttentionKernel.Tiled)]
    public void AttentionKernelIsChosenByHeadDim(int headDim, AttentionKernel expected)
    {
        var shape = new AttentionShape(1, 1, 1, headDim, 8, 8, 0, headDim, headDim, 8L * headDim, 8L * headDim, 1f);
        Assert.That(((IlgpuDevice)device).Kernels.ChooseAttentionKernel(shape), Is.EqualTo(expected));
    }

    [Test]
    public void FlashAttentionKernelRefusesHeadDimsItDoesNotCover()
    {
        var kernels = ((IlgpuDevice)device).Kernels;
        using var x = device.Zeros(DType.F32, 1, 2, 128);
        var view = IlgpuDevice.View(x);
        var wide = new AttentionShape(1, 1, 1, 128, 2, 2, 0, 128, 128, 256, 256, 1f);
        var odd = new AttentionShape(1, 1, 1, 6, 2, 2, 0, 6, 6, 12, 12, 1f);
        Assert.Throws<ArgumentException>(() => kernels.Attention(view, view, view, view, null, wide, AttentionMaskMode.Causal, null, null, AttentionKernel.Flash64));
        Assert.Throws<ArgumentException>(() => kernels.Attention(view, view, view, view, null, odd, AttentionMaskMode.Causal, null, null, AttentionKernel.Flash128));
    }

    /// <summary>GPT-2's packed qkv rows [B, T, 3C]: one tensor read three times.</summary>
    [TestCase(2, 33, 2, 16, AttentionMaskMode.Causal)]
    [TestCase(1, 70, 2, 64, AttentionMaskMode.Causal)]
    [TestCase(1, 70, 2, 64, AttentionMaskMode.Bidirectional)]
    [TestCase(2, 7, 1, 8, AttentionMaskMode.Explicit)]
    public void PackedQkvAttentionMatchesReference(int batch, int length, int heads, int headDim, AttentionMaskMode mode)
    {
        var rng = TestUtil.NewRandom();
        var shape = AttentionShape.PackedSelfAttention(batch, length, heads, headDim);
        int c = heads * headDim;
        var qkv = TestUtil.RandomFloats(rng, batch * length * 3 * c, 2f);
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, length) : null;

        using var qkvT = device.FromArray(qkv, batch, length, 3 * c);
        CompareAttention(shape, mode, qkvT, 0, qkvT, c, qkvT, 2 * c, qkv, qkv.AsSpan(c), qkv.AsSpan(2 * c), allow);
    }

    [Test]
    public void QueryWithoutVisibleKeysGivesZerosAndMinusInfinity()
    {
        const int length = 19, headDim = 8;
        var rng = TestUtil.NewRandom();
        var shape = new AttentionShape(1, 1, 1, headDim, length, length, 0, headDim, headDim, length * headDim, length * headDim, 0.5f);
        var x = TestUtil.RandomFloats(rng, length * headDim);
        var allow = TestUtil.RandomAllowMask(rng, length);
        Array.Clear(allow, 5 * length, length);

        using var xT = device.FromArray(x, length, headDim);
        using var allowT = device.FromArray(allow, length, length);
        using var output = device.Allocate(DType.F32, 1, length, headDim);
        using var lse = device.Allocate(DType.F32, 1, 1, length);
        device.Fill(output, float.NaN);
        device.Attention(xT, 0, xT, 0, xT, 0, output, lse, shape, AttentionMaskMode.Explicit, allowT);

        var o = device.ToArray(output);
        var l = device.ToArray(lse);
        Assert.That(o.AsSpan(5 * headDim, headDim).ToArray(), Is.All.EqualTo(0f));
        Assert.That(l[5], Is.EqualTo(float.NegativeInfinity));
        Assert.That(o, Has.None.NaN);
        Assert.That(l.Where((_, i) => i != 5), Is.All.Matches<float>(float.IsFinite));
    }

    /// <summary>
    /// Runs the device's attention (or the given kernel of it) with and without lse and checks both against the reference.
    /// </summary>
    void CompareAttention(AttentionShape shape, AttentionMaskMode mode,
        Tensor q, long qOffset, Tensor k, long kOffset, Tensor v, long vOffset,
        ReadOnlySpan<float> qHost, ReadOnlySpan<float> kHost, ReadOnlySpan<float> vHost, byte[]? allow, AttentionKernel? kernel = null,
        int[]? keyLengths = null)
    {
        int outLength = shape.Batch * shape.QueryLength * shape.Heads * shape.HeadDim;
        int lseLength = shape.Batch * shape.Heads * shape.QueryLength;
        var expected = new double[outLength];
        var expectedLse = new double[lseLength];
        Ref.Attention.Forward(TestUtil.ToDouble(qHost), TestUtil.ToDouble(kHost), TestUtil.ToDouble(vHost), expected, expectedLse,
            shape, mode, allow, keyLengths);

        using var allowT = allow is null ? null : device.FromArray(allow, shape.KeyLength, shape.KeyLength);
        using var keyLengthsT = keyLengths is null ? null : device.FromArray(keyLengths, keyLengths.Length);
        using var output = device.Allocate(DType.F32, shape.Batch, shape.QueryLength, shape.Heads * shape.HeadDim);
        using var lse = device.Allocate(DType.F32, shape.Batch, shape.Heads, shape.QueryLength);

        void Run(Tensor? lseT)
        {
            if (kernel is null)
            {
                device.Attention(q, qOffset, k, kOffset, v, vOffset, output, lseT, shape, mode, allowT, keyLengthsT);
                return;
            }
            ((IlgpuDevice)device).Kernels.Attention(IlgpuDevice.View(q).SubView(qOffset), IlgpuDevice.View(k).SubView(kOffset),
                IlgpuDevice.View(v).SubView(vOffset), IlgpuDevice.View(output), lseT is null ? null : IlgpuDevice.View(lseT), shape, mode,
                allowT is null ? null : ((IlgpuStorage<byte>)allowT.Storage).View,
                keyLengthsT is null ? null : ((IlgpuStorage<int>)keyLengthsT.Storage).View, kernel.Value);
        }

        device.Fill(lse, float.NaN);
        Run(lse);
        Assert.That(TestUtil.RelativeL2(device.ToArray(output), expected), Is.LessThan(Tolerance), "output");
        Assert.That(TestUtil.RelativeL2(device.ToArray(lse), expectedLse), Is.LessThan(Tolerance), "lse");

        device.Fill(output, float.NaN);
        Run(null);
        Assert.That(TestUtil.RelativeL2(device.ToArray(output), expected), Is.LessThan(Tolerance), "output without lse");
    }
}
