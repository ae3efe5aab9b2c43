using DiffuSharp.Kernels;
using DiffuSharp.Kernels.Gpu;
using DiffuSharp.Runtime;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// What only the ILGPU device has, beside the ops that <see cref="DeviceOpTests"/> and <see cref="AttentionTests"/> run on
/// every device: its CUDA check, its head-dim limit, and each attention kernel forced by name on shapes that cut across
/// its tiles (flash: 64 or 48 queries x 32 keys, tiled: 32 x 16) against the float64 reference. Shapes are small (the
/// CPU simulator pays about 1 ms per group barrier). The same fixture runs on CUDA when a GPU is present and is reported
/// as ignored, never as passed, where it is not.
/// </summary>
[TestFixture(IlgpuBackend.CpuSimulator)]
[TestFixture(IlgpuBackend.Cuda)]
public class IlgpuKernelTests(IlgpuBackend backend) : IlgpuFixture(backend)
{
    // ---- device --------------------------------------------------------------------------------

    [Test]
    public void CpuSimulatorIsAlwaysAvailable() => Assert.That(IlgpuDevice.IsAvailable(IlgpuBackend.CpuSimulator), Is.True);

    [Test]
    public void MissingCudaIsAClearError()
    {
        if (IlgpuDevice.IsAvailable(IlgpuBackend.Cuda)) Assert.Ignore("a CUDA GPU is present, so there is no missing-device error to see");
        var e = Assert.Throws<DiffuException>(() => new IlgpuDevice(IlgpuBackend.Cuda).Dispose());
        Assert.That(e!.Message, Does.Contain("no CUDA device"));
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
        AttentionCheck.Forward(device, shape, mode, new AttentionInputs(q, qOffset, k, kOffset, v, vOffset), allow, run: Forced(kernel, shape, mode));
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
        AttentionCheck.Forward(device, shape, mode, new AttentionInputs(q, 0, k, 0, v, 0), allow, keyLengths, Forced(kernel, shape, mode));
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
        Assert.That(device.Kernels.ChooseAttentionKernel(shape), Is.EqualTo(expected));
    }

    [Test]
    public void FlashAttentionKernelRefusesHeadDimsItDoesNotCover()
    {
        var kernels = device.Kernels;
        using var x = device.Zeros(DType.F32, 1, 2, 128);
        var view = IlgpuDevice.View(x);
        var wide = new AttentionShape(1, 1, 1, 128, 2, 2, 0, 128, 128, 256, 256, 1f);
        var odd = new AttentionShape(1, 1, 1, 6, 2, 2, 0, 6, 6, 12, 12, 1f);
        Assert.Throws<ArgumentException>(() => kernels.Attention(view, view, view, view, null, wide, AttentionMaskMode.Causal, null, null, AttentionKernel.Flash64));
        Assert.Throws<ArgumentException>(() => kernels.Attention(view, view, view, view, null, odd, AttentionMaskMode.Causal, null, null, AttentionKernel.Flash128));
    }

    /// <summary>The attention run by the given kernel of the device, whatever the device would choose.</summary>
    AttentionRun Forced(AttentionKernel kernel, AttentionShape shape, AttentionMaskMode mode) => (q, qOffset, k, kOffset, v, vOffset, output, lse, allow, keyLengths) =>
        device.Kernels.Attention(IlgpuDevice.View(q).SubView(qOffset), IlgpuDevice.View(k).SubView(kOffset), IlgpuDevice.View(v).SubView(vOffset),
            IlgpuDevice.View(output), lse is null ? null : IlgpuDevice.View(lse), shape, mode,
            allow is null ? null : ((IlgpuStorage<byte>)allow.Storage).View, keyLengths is null ? null : ((IlgpuStorage<int>)keyLengths.Storage).View, kernel);
}
