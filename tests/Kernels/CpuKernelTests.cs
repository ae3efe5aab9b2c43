using DiffuSharp.Kernels;
using Cpu = DiffuSharp.Kernels.Cpu;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// What only the CPU kernels have, beside the ops that <see cref="DeviceOpTests"/> and <see cref="AttentionTests"/> run
/// through <see cref="DiffuSharp.Runtime.CpuDevice"/> on every device: their checks of the spans and ids they are handed.
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
}
