using DiffuSharp.Kernels;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// The float64 reference kernels, which every device is compared with, on cases small enough to work out by hand
/// (their backward passes have <see cref="GradientCheckTests"/>).
/// </summary>
public class ReferenceKernelTests
{
    [Test]
    public void MatMulHandExample()
    {
        var x = new double[] { 1, 2, 3, 4, 5, 6 };
        var w = new double[] { 7, 8, 9, 10, 11, 12 };
        var output = new double[4];
        Ref.MatMul.Forward(x, w, new double[] { 1, -1 }, output, 2, 3, 2);
        Assert.That(output, Is.EqualTo(new double[] { 59, 63, 140, 153 }));
        Ref.MatMul.ForwardTransposed(x, w, default, output, 2, 3, 2);
        Assert.That(output, Is.EqualTo(new double[] { 50, 68, 122, 167 }));
    }

    [Test]
    public void LayerNormHandExample()
    {
        var output = new double[2];
        var mean = new double[1];
        var rstd = new double[1];
        Ref.LayerNorm.Forward(new double[] { 1, 3 }, new double[] { 2, 2 }, new double[] { 1, 1 }, output, mean, rstd, 1, 2, 0);
        Assert.That(mean[0], Is.EqualTo(2));
        Assert.That(rstd[0], Is.EqualTo(1));
        Assert.That(output, Is.EqualTo(new double[] { -1, 3 }));
    }

    [Test]
    public void SoftmaxOfEqualValuesIsUniform()
    {
        var expected = new double[5];
        Ref.Softmax.Forward(new double[] { 3, 3, 3, 3, 3 }, expected, 1, 5);
        Assert.That(expected, Is.All.EqualTo(0.2).Within(1e-15));
    }

    [Test]
    public void AttentionWithOneKeyReturnsItsValue()
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
    public void AttentionWithEqualScoresAveragesValues()
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
}
