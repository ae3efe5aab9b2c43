using DiffuSharp.Kernels;
using DiffuSharp.Runtime;
using Cpu = DiffuSharp.Kernels.Cpu;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// What only the CPU kernels have, beside the ops that <see cref="DeviceOpTests"/>, <see cref="BackwardOpTests"/> and
/// <see cref="AttentionTests"/> run through <see cref="CpuDevice"/> on every device: their checks of the spans, ids and
/// targets they are handed, empty spans, and the attention backward after a query offset, which the device API refuses.
/// </summary>
public class CpuKernelTests
{
    [Test]
    public void MatMulRejectsShortSpans()
    {
        var x = new float[6];
        var w = new float[6];
        Assert.Throws<ArgumentException>(() => Cpu.MatMul.Forward(x, w, default, new float[3], 2, 3, 2));
        Assert.Throws<ArgumentException>(() => Cpu.MatMul.ForwardTransposed(x, w, new float[1], new float[4], 2, 3, 2));
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
    public void RopeRejectsAShortView()
    {
        Assert.Throws<ArgumentException>(() => Cpu.Rope.Apply(new float[2 * 16 - 1], 16, 1, 2, 2, 8, 0, 10000f, false));
    }

    [Test]
    public void EmbeddingBackwardRejectsIdsOutsideTheTable()
    {
        var dWte = new float[4 * 3];
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            Cpu.Embedding.Backward(new[] { 1, 4 }, new float[6], dWte, new float[2 * 3], 1, 2, 3, 0));
    }

    [Test]
    public void MatMulBackwardRejectsShortSpans()
    {
        Assert.Throws<ArgumentException>(() => Cpu.MatMul.Backward(new float[4], new float[6], new float[6], new float[5], new float[6], default, 2, 3, 2));
        Assert.Throws<ArgumentException>(() => Cpu.MatMul.BackwardTransposed(new float[4], new float[6], new float[6], new float[6], new float[6], new float[1], 2, 3, 2));
    }

    [Test]
    public void CrossEntropyRejectsTargetsOutsideTheVocabulary()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            Cpu.CrossEntropy.Forward(new float[6], new[] { 0, 3 }, new float[] { 1, 1 }, new float[2], new float[6], 2, 3));
    }

    [Test]
    public void SumOfSquaresAndScaleOfNothing()
    {
        Assert.That(Cpu.Vectors.SumOfSquares(ReadOnlySpan<float>.Empty), Is.EqualTo(0));
        Assert.DoesNotThrow(() => Cpu.Vectors.Scale(Span<float>.Empty, 0.3f));
    }

    /// <summary>A chunk of queries after a prefix of keys, causal and bidirectional, through the kernel: the device API asks for offset 0.</summary>
    [TestCase(5, 10, 16)]
    [TestCase(70, 100, 32)]
    public void AttentionBackwardWithQueryOffset(int queries, int offset, int headDim)
    {
        var rng = TestUtil.NewRandom();
        const int batch = 2, heads = 2;
        int keys = offset + queries;
        var shape = new AttentionShape(batch, heads, heads, headDim, queries, keys, offset,
            heads * headDim, heads * headDim, (long)queries * heads * headDim, (long)keys * heads * headDim, 0.3f);
        var x = new AttentionInputs(TestUtil.RandomFloats(rng, batch * queries * heads * headDim, 2f), 0,
            TestUtil.RandomFloats(rng, batch * keys * heads * headDim, 2f), 0, TestUtil.RandomFloats(rng, batch * keys * heads * headDim), 0);
        using var device = new CpuDevice();
        foreach (var mode in new[] { AttentionMaskMode.Causal, AttentionMaskMode.Bidirectional })
        {
            AttentionCheck.Backward(device, rng, shape, mode, x, null, run: (q, qOffset, k, kOffset, v, vOffset, output, dOutput, lse,
                dq, dqOffset, dk, dkOffset, dv, dvOffset, _) => Cpu.Attention.Backward(CpuDevice.F32(q)[(int)qOffset..], CpuDevice.F32(k)[(int)kOffset..],
                CpuDevice.F32(v)[(int)vOffset..], CpuDevice.F32(output), CpuDevice.F32(dOutput), CpuDevice.F32(lse), CpuDevice.F32(dq)[(int)dqOffset..],
                CpuDevice.F32(dk)[(int)dkOffset..], CpuDevice.F32(dv)[(int)dvOffset..], shape, mode, default));
        }
    }
}
