using System.Numerics;
using DiffuSharp.Kernels;
using DiffuSharp.Runtime;
using Cpu = DiffuSharp.Kernels.Cpu;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// The LLaMA-family ops (RMSNorm, rotate-half RoPE, SwiGLU): the float64 references against central finite differences
/// and hand-written rotations, the CPU kernels against the references on fresh random inputs, and once each through
/// <see cref="CpuDevice"/>. Gradient buffers start at random values and only what a kernel added is compared.
/// </summary>
public class LlamaOpsTests
{
    /// <summary>Relative L2 bound for float32 against float64 (round-off of sums up to 768 long is about 2e-6).</summary>
    const double Tolerance = 1e-5;

    /// <summary>Central differences with step h on smooth functions of O(1) inputs agree to about h² ≈ 1e-10.</summary>
    const double GradientTolerance = 1e-7;

    // ---- references against finite differences ------------------------------------------------

    [TestCase(1, 3)]
    [TestCase(3, 5)]
    [TestCase(2, 16)]
    public void RmsNormReferenceBackwardMatchesFiniteDifferences(int rows, int channels)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomDoubles(rng, rows * channels, 2);
        var weight = TestUtil.RandomDoubles(rng, channels, 1);
        var dOut = TestUtil.RandomDoubles(rng, rows * channels, 1);
        const double eps = 1e-5;
        double Loss(double[] xv, double[] wv)
        {
            var y = new double[rows * channels];
            Ref.RmsNorm.Forward(xv, wv, y, new double[rows], rows, channels, eps);
            return TestUtil.Dot(y, dOut);
        }

        var rstd = new double[rows];
        Ref.RmsNorm.Forward(x, weight, new double[rows * channels], rstd, rows, channels, eps);
        var dX = new double[x.Length];
        var dW = new double[channels];
        Ref.RmsNorm.Backward(dOut, x, weight, rstd, dX, dW, rows, channels);
        AssertClose(dX, NumericGradient(x, () => Loss(x, weight)), "dX");
        AssertClose(dW, NumericGradient(weight, () => Loss(x, weight)), "dWeight");
    }

    [TestCase(1)]
    [TestCase(17)]
    public void SwiGluReferenceBackwardMatchesFiniteDifferences(int n)
    {
        var rng = TestUtil.NewRandom();
        var gate = TestUtil.RandomDoubles(rng, n, 4);
        var up = TestUtil.RandomDoubles(rng, n, 2);
        var dOut = TestUtil.RandomDoubles(rng, n, 1);
        double Loss()
        {
            var y = new double[n];
            Ref.SwiGlu.Forward(gate, up, y);
            return TestUtil.Dot(y, dOut);
        }

        var dGate = new double[n];
        var dUp = new double[n];
        Ref.SwiGlu.Backward(gate, up, dOut, dGate, dUp);
        AssertClose(dGate, NumericGradient(gate, Loss), "dGate");
        AssertClose(dUp, NumericGradient(up, Loss), "dUp");
    }

    [Test]
    public void SwiGluReferenceForwardIsSiluTimesUp()
    {
        var output = new double[3];
        Ref.SwiGlu.Forward(new[] { 0.0, 1.0, -2.0 }, new[] { 5.0, 2.0, 3.0 }, output);
        Assert.That(output[0], Is.EqualTo(0.0));
        Assert.That(output[1], Is.EqualTo(2.0 / (1 + Math.Exp(-1))).Within(1e-15));
        Assert.That(output[2], Is.EqualTo(3.0 * -2.0 / (1 + Math.Exp(2))).Within(1e-15));
    }

    // ---- RoPE reference ------------------------------------------------------------------------

    [TestCase(8, 0, 10000.0)]
    [TestCase(16, 4090, 10000.0)]
    [TestCase(128, 37, 500000.0)]
    public void RopeReferenceInverseUndoesApplyAndKeepsNorms(int headDim, int positionOffset, double theta)
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
    public void RopeReferenceMatchesComplexRotation()
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

    // ---- CPU kernels against the references -----------------------------------------------------

    /// <remarks>
    /// One channel is left out: there dX = rstd · g · w · eps / (x² + eps), a cancellation of 1 − n² that float32 cannot
    /// resolve and that is no test of the kernel.
    /// </remarks>
    [TestCase(1, 2)]
    [TestCase(3, 7)]
    [TestCase(17, 33)]
    [TestCase(5, 130)]
    [TestCase(64, 768)]
    [TestCase(200, 17)]
    public void RmsNormMatchesReference(int rows, int channels)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, rows * channels, 2f);
        var weight = TestUtil.RandomFloats(rng, channels);
        var dOut = TestUtil.RandomFloats(rng, rows * channels);
        var expected = new double[x.Length];
        var expectedRstd = new double[rows];
        Ref.RmsNorm.Forward(TestUtil.ToDouble(x), TestUtil.ToDouble(weight), expected, expectedRstd, rows, channels, 1e-5);
        var output = new float[x.Length];
        var rstd = new float[rows];
        Cpu.RmsNorm.Forward(x, weight, output, rstd, rows, channels, 1e-5f);
        Assert.That(TestUtil.RelativeL2(output, expected), Is.LessThan(Tolerance), "output");
        Assert.That(TestUtil.RelativeL2(rstd, expectedRstd), Is.LessThan(Tolerance), "rstd");

        var expectedX = new double[x.Length];
        var expectedW = new double[channels];
        Ref.RmsNorm.Backward(TestUtil.ToDouble(dOut), TestUtil.ToDouble(x), TestUtil.ToDouble(weight), expectedRstd, expectedX, expectedW, rows, channels);
        var dX = StartLike(rng, expectedX, out var xStart);
        var dW = StartLike(rng, expectedW, out var wStart);
        Cpu.RmsNorm.Backward(dOut, x, weight, rstd, dX, dW, rows, channels);
        AssertAdded(dX, xStart, expectedX, "dX");
        AssertAdded(dW, wStart, expectedW, "dWeight");
    }

    /// <summary>
    /// The view holds rows of <paramref name="parts"/> blocks of heads · headDim (3 for packed q, k, v) plus
    /// <paramref name="pad"/> floats, and starts at block <paramref name="part"/>: the kernel must rotate that block only.
    /// </summary>
    [TestCase(1, 1, 1, 8, 0, 1, 0, 0, 10000f)]
    [TestCase(2, 5, 3, 16, 7, 1, 0, 5, 10000f)]
    [TestCase(1, 6, 2, 64, 4090, 1, 0, 0, 10000f)]
    [TestCase(2, 9, 4, 128, 1000, 3, 1, 0, 10000f)]
    [TestCase(1, 4, 3, 16, 4092, 3, 2, 3, 500000f)]
    [TestCase(2, 3, 2, 128, 0, 3, 0, 1, 500000f)]
    public void RopeMatchesReference(int batch, int length, int heads, int headDim, int positionOffset, int parts, int part, int pad, float theta)
    {
        var rng = TestUtil.NewRandom();
        int width = heads * headDim, stride = parts * width + pad, offset = part * width;
        int total = batch * length * stride;
        foreach (bool inverse in new[] { false, true })
        {
            var x = TestUtil.RandomFloats(rng, total, 2f);
            var expected = TestUtil.ToDouble(x);
            Ref.Rope.Apply(expected.AsSpan(offset), stride, batch, length, heads, headDim, positionOffset, theta, inverse);
            Cpu.Rope.Apply(x.AsSpan(offset), stride, batch, length, heads, headDim, positionOffset, theta, inverse);
            Assert.That(TestUtil.RelativeL2(x, expected), Is.LessThan(Tolerance), inverse ? "inverse" : "forward");
        }
    }

    [Test]
    public void RopeRejectsAShortView()
    {
        Assert.Throws<ArgumentException>(() => Cpu.Rope.Apply(new float[2 * 16 - 1], 16, 1, 2, 2, 8, 0, 10000f, false));
    }

    [TestCase(1, 4f)]
    [TestCase(7, 4f)]
    [TestCase(33, 4f)]
    [TestCase(1000, 12f)]
    [TestCase(40_000, 6f)]
    public void SwiGluMatchesReference(int n, float gateScale)
    {
        var rng = TestUtil.NewRandom();
        var gate = TestUtil.RandomFloats(rng, n, gateScale);
        var up = TestUtil.RandomFloats(rng, n, 2f);
        var dOut = TestUtil.RandomFloats(rng, n);
        var expected = new double[n];
        Ref.SwiGlu.Forward(TestUtil.ToDouble(gate), TestUtil.ToDouble(up), expected);
        var output = new float[n];
        Cpu.SwiGlu.Forward(gate, up, output);
        Assert.That(TestUtil.RelativeL2(output, expected), Is.LessThan(Tolerance), "output");

        var expectedGate = new double[n];
        var expectedUp = new double[n];
        Ref.SwiGlu.Backward(TestUtil.ToDouble(gate), TestUtil.ToDouble(up), TestUtil.ToDouble(dOut), expectedGate, expectedUp);
        var dGate = StartLike(rng, expectedGate, out var gateStart);
        var dUp = StartLike(rng, expectedUp, out var upStart);
        Cpu.SwiGlu.Backward(gate, up, dOut, dGate, dUp);
        AssertAdded(dGate, gateStart, expectedGate, "dGate");
        AssertAdded(dUp, upStart, expectedUp, "dUp");
    }

    [Test]
    public void SwiGluSaturatesAtBothEnds()
    {
        var gate = new[] { -200f, -90f, 90f, 200f };
        var up = new[] { 1f, 1f, 1f, 1f };
        var output = new float[gate.Length];
        Cpu.SwiGlu.Forward(gate, up, output);
        Assert.That(output, Is.EqualTo(new[] { 0f, 0f, 90f, 200f }).Within(1e-30f));
    }

    // ---- once each through the device API -------------------------------------------------------

    [Test]
    public void RmsNormThroughDevice()
    {
        var rng = TestUtil.NewRandom();
        using var device = new CpuDevice();
        const int rows = 6, channels = 40;
        var x = TestUtil.RandomFloats(rng, rows * channels, 2f);
        var weight = TestUtil.RandomFloats(rng, channels);
        var dOut = TestUtil.RandomFloats(rng, rows * channels);
        var expected = new double[x.Length];
        var expectedRstd = new double[rows];
        Ref.RmsNorm.Forward(TestUtil.ToDouble(x), TestUtil.ToDouble(weight), expected, expectedRstd, rows, channels, 1e-6);
        var expectedX = new double[x.Length];
        var expectedW = new double[channels];
        Ref.RmsNorm.Backward(TestUtil.ToDouble(dOut), TestUtil.ToDouble(x), TestUtil.ToDouble(weight), expectedRstd, expectedX, expectedW, rows, channels);

        using var tx = device.FromArray(x, rows, channels);
        using var tw = device.FromArray(weight, channels);
        using var ty = device.Allocate(DType.F32, rows, channels);
        using var tRstd = device.Allocate(DType.F32, rows);
        device.RmsNorm(tx, tw, ty, tRstd, 1e-6f);
        Assert.That(TestUtil.RelativeL2(device.ToArray(ty), expected), Is.LessThan(Tolerance), "output");

        StartLike(rng, expectedX, out var xStart);
        StartLike(rng, expectedW, out var wStart);
        using var tOut = device.FromArray(dOut, rows, channels);
        using var tdx = device.FromArray(xStart, rows, channels);
        using var tdw = device.FromArray(wStart, channels);
        device.RmsNormBackward(tOut, tx, tw, tRstd, tdx, tdw);
        AssertAdded(device.ToArray(tdx), xStart, expectedX, "dX");
        AssertAdded(device.ToArray(tdw), wStart, expectedW, "dWeight");
    }

    [Test]
    public void RopeThroughDeviceOnThePackedKeys()
    {
        var rng = TestUtil.NewRandom();
        using var device = new CpuDevice();
        const int batch = 2, length = 5, heads = 2, headDim = 16, positionOffset = 11, width = heads * headDim;
        var qkv = TestUtil.RandomFloats(rng, batch * length * 3 * width);
        var expected = TestUtil.ToDouble(qkv);
        Ref.Rope.Apply(expected.AsSpan(width), 3 * width, batch, length, heads, headDim, positionOffset, 10000, inverse: false);

        using var t = device.FromArray(qkv, batch, length, 3 * width);
        device.Rope(t, width, 3 * width, batch, length, heads, headDim, positionOffset, 10000f, inverse: false);
        Assert.That(TestUtil.RelativeL2(device.ToArray(t), expected), Is.LessThan(Tolerance), "forward");
        device.Rope(t, width, 3 * width, batch, length, heads, headDim, positionOffset, 10000f, inverse: true);
        Assert.That(TestUtil.RelativeL2(device.ToArray(t), qkv), Is.LessThan(Tolerance), "inverse undoes it");
    }

    [Test]
    public void SwiGluThroughDevice()
    {
        var rng = TestUtil.NewRandom();
        using var device = new CpuDevice();
        const int rows = 3, columns = 37;
        var gate = TestUtil.RandomFloats(rng, rows * columns, 4f);
        var up = TestUtil.RandomFloats(rng, rows * columns);
        var dOut = TestUtil.RandomFloats(rng, rows * columns);
        var expected = new double[gate.Length];
        Ref.SwiGlu.Forward(TestUtil.ToDouble(gate), TestUtil.ToDouble(up), expected);
        var expectedGate = new double[gate.Length];
        var expectedUp = new double[gate.Length];
        Ref.SwiGlu.Backward(TestUtil.ToDouble(gate), TestUtil.ToDouble(up), TestUtil.ToDouble(dOut), expectedGate, expectedUp);

        using var tg = device.FromArray(gate, rows, columns);
        using var tu = device.FromArray(up, rows, columns);
        using var ty = device.Allocate(DType.F32, rows, columns);
        device.SwiGlu(tg, tu, ty);
        Assert.That(TestUtil.RelativeL2(device.ToArray(ty), expected), Is.LessThan(Tolerance), "output");

        StartLike(rng, expectedGate, out var gateStart);
        StartLike(rng, expectedUp, out var upStart);
        using var tOut = device.FromArray(dOut, rows, columns);
        using var tdg = device.FromArray(gateStart, rows, columns);
        using var tdu = device.FromArray(upStart, rows, columns);
        device.SwiGluBackward(tg, tu, tOut, tdg, tdu);
        AssertAdded(device.ToArray(tdg), gateStart, expectedGate, "dGate");
        AssertAdded(device.ToArray(tdu), upStart, expectedUp, "dUp");
    }

    // ---- helpers --------------------------------------------------------------------------------

    static double Norm(ReadOnlySpan<double> a)
    {
        double sum = 0;
        foreach (double v in a) sum += v * v;
        return Math.Sqrt(sum);
    }

    /// <summary>∂loss/∂p[i] by central differences, perturbing p in place (loss reads p).</summary>
    static double[] NumericGradient(double[] p, Func<double> loss)
    {
        const double h = 1e-5;
        var grad = new double[p.Length];
        for (int i = 0; i < p.Length; i++)
        {
            double saved = p[i];
            p[i] = saved + h;
            double plus = loss();
            p[i] = saved - h;
            double minus = loss();
            p[i] = saved;
            grad[i] = (plus - minus) / (2 * h);
        }
        return grad;
    }

    static void AssertClose(double[] analytic, double[] numeric, string what)
    {
        double num = 0, den = 0;
        for (int i = 0; i < analytic.Length; i++)
        {
            num += (analytic[i] - numeric[i]) * (analytic[i] - numeric[i]);
            den += numeric[i] * numeric[i];
        }
        double error = den == 0 ? Math.Sqrt(num) : Math.Sqrt(num / den);
        Assert.That(error, Is.LessThan(GradientTolerance), what);
    }

    /// <summary>A gradient buffer starting at random values of the gradient's own size; returns a copy to hand the kernel.</summary>
    static float[] StartLike(Random rng, double[] expected, out float[] start)
    {
        start = TestUtil.GradientStart(rng, expected);
        return (float[])start.Clone();
    }

    /// <summary>What the kernel added to a buffer that started at start, against the reference gradient.</summary>
    static void AssertAdded(float[] actual, float[] start, double[] expected, string what) =>
        Assert.That(TestUtil.AddedRelativeL2(actual, start, expected), Is.LessThan(Tolerance), what);
}
