using DiffuSharp.Kernels;
using DiffuSharp.Kernels.Gpu;
using DiffuSharp.Runtime;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// What only the ILGPU device's attention backward has, beside the ops that <see cref="BackwardOpTests"/> and
/// <see cref="AttentionTests"/> run on every device: its head-dim limit, the choice of kernel, and each backward kernel
/// forced by name against the float64 reference. The same fixture runs on CUDA when a GPU is present and is reported as
/// ignored, never as passed, where it is not.
/// </summary>
[TestFixture(IlgpuBackend.CpuSimulator)]
[TestFixture(IlgpuBackend.Cuda)]
public class IlgpuBackwardTests(IlgpuBackend backend) : IlgpuFixture(backend)
{
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
        var x = new AttentionInputs(TestUtil.RandomFloats(rng, 8 + qSpan, 3f), aligned ? 8 : 7, TestUtil.RandomFloats(rng, 12 + kSpan), aligned ? 12 : 11,
            TestUtil.RandomFloats(rng, 4 + kSpan), 4);
        AttentionCheck.Backward(device, rng, shape, mode, x, allow, aligned ? (4, 8, 12) : (3, 5, 9), Forced(kernel, shape, mode));
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
        Assert.That(device.Kernels.ChooseAttentionBackwardKernel(shape), Is.EqualTo(expected));
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
        var kernels = device.Kernels;
        using var x = device.Zeros(DType.F32, 1, 2, 128);
        var view = IlgpuDevice.View(x);
        var wide = new AttentionShape(1, 1, 1, 128, 2, 2, 0, 128, 128, 256, 256, 1f);
        Assert.Throws<ArgumentException>(() => kernels.AttentionBackward(view, view, view, view, view, view, view, view, view, view,
            wide, AttentionMaskMode.Causal, null, AttentionBackwardKernel.Flash64));
    }

    /// <summary>The attention backward run by the given kernel of the device, whatever the device would choose.</summary>
    AttentionBackwardRun Forced(AttentionBackwardKernel kernel, AttentionShape shape, AttentionMaskMode mode) =>
        (q, qOffset, k, kOffset, v, vOffset, output, dOutput, lse, dq, dqOffset, dk, dkOffset, dv, dvOffset, allow) =>
        {
            using var delta = device.Allocate(DType.F32, shape.Batch, shape.Heads, shape.QueryLength);
            device.Kernels.AttentionBackward(IlgpuDevice.View(q).SubView(qOffset), IlgpuDevice.View(k).SubView(kOffset),
                IlgpuDevice.View(v).SubView(vOffset), IlgpuDevice.View(output), IlgpuDevice.View(dOutput), IlgpuDevice.View(lse),
                IlgpuDevice.View(delta), IlgpuDevice.View(dq).SubView(dqOffset), IlgpuDevice.View(dk).SubView(dkOffset),
                IlgpuDevice.View(dv).SubView(dvOffset), shape, mode, allow is null ? null : ((IlgpuStorage<byte>)allow.Storage).View, kernel);
        };
}
