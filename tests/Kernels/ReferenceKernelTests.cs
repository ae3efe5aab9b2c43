using System.Numerics;
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

    [Test]
    public void SwiGluIsSiluTimesUp()
    {
        var output = new double[3];
        Ref.SwiGlu.Forward(new[] { 0.0, 1.0, -2.0 }, new[] { 5.0, 2.0, 3.0 }, output);
        Assert.That(output[0], Is.EqualTo(0.0));
        Assert.That(output[1], Is.EqualTo(2.0 / (1 + Math.Exp(-1))).Within(1e-15));
        Assert.That(output[2], Is.EqualTo(3.0 * -2.0 / (1 + Math.Exp(2))).Within(1e-15));
    }

    [TestCase(8, 0, 10000.0)]
    [TestCase(16, 4090, 10000.0)]
    [TestCase(128, 37, 500000.0)]
    public void RopeInverseUndoesApplyAndKeepsNorms(int headDim, int positionOffset, double theta)
    {
        var rng = TestUtil.NewRandom();
        int batch = 2, length = 3, heads = 2, stride = heads * headDim + 3;
        var x = TestUtil.RandomDoubles(rng, batch * length * stride, 1);
        var rotated = (double[])x.Clone();
        Ref.Rope.Apply(rotated, stride, batch, length, heads, headDim, positionOffset, theta, inverse: false);
        for (int r = 0; r < batch * length; r++)
        {
            for (int h = 0; h < heads; h++)
            {
                int o = r * stride + h * headDim;
                Assert.That(Norm(rotated.AsSpan(o, headDim)), Is.EqualTo(Norm(x.AsSpan(o, headDim))).Within(1e-12), "a head's norm");
            }
            for (int c = heads * headDim; c < stride; c++)
                Assert.That(rotated[r * stride + c], Is.EqualTo(x[r * stride + c]), "padding outside the view is left alone");
        }
        Ref.Rope.Apply(rotated, stride, batch, length, heads, headDim, positionOffset, theta, inverse: true);
        for (int i = 0; i < x.Length; i++) Assert.That(rotated[i], Is.EqualTo(x[i]).Within(1e-12));
    }

    [Test]
    public void RopeMatchesComplexRotation()
    {
        var rng = TestUtil.NewRandom();
        const int length = 5, heads = 2, headDim = 8, offset = 3, half = headDim / 2;
        const double theta = 10000;
        var x = TestUtil.RandomDoubles(rng, length * heads * headDim, 1);
        var rotated = (double[])x.Clone();
        Ref.Rope.Apply(rotated, heads * headDim, 1, length, heads, headDim, offset, theta, inverse: false);
        for (int t = 0; t < length; t++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < half; i++)
                {
                    int o = (t * heads + h) * headDim + i;
                    var z = new Complex(x[o], x[o + half]) * Complex.FromPolarCoordinates(1, (offset + t) / Math.Pow(theta, 2.0 * i / headDim));
                    Assert.That(rotated[o], Is.EqualTo(z.Real).Within(1e-12));
                    Assert.That(rotated[o + half], Is.EqualTo(z.Imaginary).Within(1e-12));
                }
    }

    /// <summary>
    /// Meta's checkpoints rotate interleaved pairs (2i, 2i+1); HF permutes q/k rows per head by [0, 2, 4, …, 1, 3, 5, …]
    /// and rotates halves. Both must give the same rotation up to that permutation.
    /// </summary>
    [TestCase(8, 0)]
    [TestCase(64, 2000)]
    public void RopeRotateHalfEqualsInterleavedOnPermutedVector(int headDim, int positionOffset)
    {
        var rng = TestUtil.NewRandom();
        const int length = 3;
        const double theta = 10000;
        int half = headDim / 2;
        var perm = new int[headDim];
        for (int i = 0; i < half; i++)
        {
            perm[i] = 2 * i;
            perm[half + i] = 2 * i + 1;
        }
        var interleaved = TestUtil.RandomDoubles(rng, length * headDim, 1);
        var rotateHalf = new double[interleaved.Length];
        for (int t = 0; t < length; t++)
            for (int d = 0; d < headDim; d++) rotateHalf[t * headDim + d] = interleaved[t * headDim + perm[d]];

        Ref.Rope.Apply(rotateHalf, headDim, 1, length, 1, headDim, positionOffset, theta, inverse: false);
        for (int t = 0; t < length; t++)
            for (int i = 0; i < half; i++)
            {
                double angle = (positionOffset + t) * Math.Pow(theta, -2.0 * i / headDim);
                int o = t * headDim;
                double a = interleaved[o + 2 * i], b = interleaved[o + 2 * i + 1];
                interleaved[o + 2 * i] = a * Math.Cos(angle) - b * Math.Sin(angle);
                interleaved[o + 2 * i + 1] = b * Math.Cos(angle) + a * Math.Sin(angle);
            }
        for (int t = 0; t < length; t++)
            for (int d = 0; d < headDim; d++)
                Assert.That(rotateHalf[t * headDim + d], Is.EqualTo(interleaved[t * headDim + perm[d]]).Within(1e-12));
    }

    static double Norm(ReadOnlySpan<double> a)
    {
        double sum = 0;
        foreach (double v in a) sum += v * v;
        return Math.Sqrt(sum);
    }
}
