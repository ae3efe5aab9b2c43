using DiffuSharp.Runtime;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// The LLaMA-family ops (RMSNorm, rotate-half RoPE, SwiGLU), forward and backward, on every device against the float64
/// reference on fresh random inputs. Gradient buffers start at random values and only what an op added is compared.
/// Channel counts straddle the CPU's vector width and the 32-lane warp; RoPE runs at positions past 4000, where a
/// float32 angle alone would be off by 1e-4 rad (the kernels form it in double), on views into wider rows.
/// </summary>
public sealed class LlamaOpsTests(string deviceName) : DeviceFixture(deviceName)
{
    /// <summary>Relative L2 bound for float32 against float64 (round-off of sums up to 769 long is about 2e-6).</summary>
    const double Tolerance = 1e-5;

    // ---- RMSNorm ---------------------------------------------------------------------------------

    /// <remarks>
    /// With one channel dX is not compared: there dX = rstd · g · w · eps / (x² + eps), a cancellation of 1 − n² that
    /// float32 cannot resolve and that is no test of the op. 300 and 70 rows split the dWeight column sums into chunks.
    /// </remarks>
    [TestCase(1, 1, 1e-5f)]
    [TestCase(1, 2, 1e-5f)]
    [TestCase(3, 7, 1e-5f)]
    [TestCase(3, 33, 1e-5f)]
    [TestCase(5, 130, 1e-5f)]
    [TestCase(6, 40, 1e-6f)]
    [TestCase(17, 33, 1e-5f)]
    [TestCase(17, 100, 1e-5f)]
    [TestCase(2, 769, 1e-5f)]
    [TestCase(64, 768, 1e-5f)]
    [TestCase(70, 31, 1e-5f)]
    [TestCase(70, 301, 1e-5f)]
    [TestCase(200, 17, 1e-5f)]
    [TestCase(300, 20, 1e-5f)]
    public void RmsNormMatchesReference(int rows, int channels, float eps)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, rows * channels, 2f);
        var weight = TestUtil.RandomFloats(rng, channels);
        var dOut = TestUtil.RandomFloats(rng, rows * channels);
        var expected = new double[x.Length];
        var expectedRstd = new double[rows];
        Ref.RmsNorm.Forward(TestUtil.ToDouble(x), TestUtil.ToDouble(weight), expected, expectedRstd, rows, channels, eps);

        using var xT = device.FromArray(x, rows, channels);
        using var wT = device.FromArray(weight, channels);
        using var output = device.Allocate(DType.F32, rows, channels);
        using var rstd = device.Allocate(DType.F32, rows);
        device.RmsNorm(xT, wT, output, rstd, eps);
        Assert.That(TestUtil.RelativeL2(device.ToArray(output), expected), Is.LessThan(Tolerance), "output");
        Assert.That(TestUtil.RelativeL2(device.ToArray(rstd), expectedRstd), Is.LessThan(Tolerance), "rstd");

        var expectedX = new double[x.Length];
        var expectedW = new double[channels];
        Ref.RmsNorm.Backward(TestUtil.ToDouble(dOut), TestUtil.ToDouble(x), TestUtil.ToDouble(weight), expectedRstd, expectedX, expectedW, rows, channels);
        var xStart = TestUtil.GradientStart(rng, expectedX);
        var wStart = TestUtil.GradientStart(rng, expectedW);
        using var dOutT = device.FromArray(dOut, rows, channels);
        using var dX = device.FromArray(xStart, rows, channels);
        using var dW = device.FromArray(wStart, channels);
        device.RmsNormBackward(dOutT, xT, wT, rstd, dX, dW);
        if (channels > 1) Assert.That(TestUtil.AddedRelativeL2(device.ToArray(dX), xStart, expectedX), Is.LessThan(Tolerance), "dX");
        Assert.That(TestUtil.AddedRelativeL2(device.ToArray(dW), wStart, expectedW), Is.LessThan(Tolerance), "dWeight");

        using var dXFrozen = device.FromArray(xStart, rows, channels);
        device.RmsNormBackward(dOutT, xT, wT, rstd, dXFrozen, null);
        if (channels > 1) Assert.That(TestUtil.AddedRelativeL2(device.ToArray(dXFrozen), xStart, expectedX), Is.LessThan(Tolerance), "dX of a frozen norm (no weight gradient)");
    }

    // ---- RoPE ------------------------------------------------------------------------------------

    /// <summary>
    /// A view of <paramref name="heads"/> · <paramref name="headDim"/> floats a row starting <paramref name="offset"/>
    /// floats into the buffer, rows <paramref name="extraStride"/> floats wider (a block of packed q, k, v rows, with
    /// padding), positions from <paramref name="positionOffset"/>, LLaMA-2's and LLaMA-3's thetas. Forward and inverse
    /// each match the reference and leave every float outside the view as it was; the inverse undoes the forward.
    /// </summary>
    [TestCase(1, 1, 1, 8, 0, 0, 0, 10000f)]
    [TestCase(2, 3, 1, 8, 5, 4, 9, 10000f)]
    [TestCase(2, 5, 3, 8, 7, 11, 3, 10000f)]
    [TestCase(2, 5, 3, 16, 5, 0, 7, 10000f)]
    [TestCase(2, 5, 2, 16, 64, 32, 11, 10000f)]
    [TestCase(2, 6, 2, 16, 0, 0, 2000, 10000f)]
    [TestCase(1, 9, 2, 16, 0, 5, 2040, 10000f)]
    [TestCase(1, 4, 3, 16, 99, 96, 4092, 500000f)]
    [TestCase(1, 6, 2, 64, 0, 0, 4090, 10000f)]
    [TestCase(2, 3, 2, 64, 64, 0, 2045, 10000f)]
    [TestCase(1, 4, 3, 64, 192, 64, 1500, 500000f)]
    [TestCase(2, 9, 4, 128, 1024, 512, 1000, 10000f)]
    [TestCase(2, 3, 2, 128, 513, 0, 0, 500000f)]
    public void RopeMatchesReference(int batch, int length, int heads, int headDim, int extraStride, int offset, int positionOffset, float theta)
    {
        var rng = TestUtil.NewRandom();
        int rowStride = heads * headDim + extraStride;
        int total = offset + batch * length * rowStride;
        foreach (bool inverse in new[] { false, true })
        {
            string what = inverse ? "inverse" : "forward";
            var x = TestUtil.RandomFloats(rng, total, 2f);
            var expected = TestUtil.ToDouble(x);
            Ref.Rope.Apply(expected.AsSpan(offset), rowStride, batch, length, heads, headDim, positionOffset, theta, inverse);

            using var xT = device.FromArray(x, total);
            device.Rope(xT, offset, rowStride, batch, length, heads, headDim, positionOffset, theta, inverse);
            var actual = device.ToArray(xT);
            Assert.That(TestUtil.RelativeL2(actual, expected), Is.LessThan(Tolerance), what);
            for (int i = 0; i < total; i++)
                if (i < offset || (i - offset) % rowStride >= heads * headDim)
                    Assert.That(actual[i], Is.EqualTo(x[i]), $"{what}: element {i} lies outside the view");

            device.Rope(xT, offset, rowStride, batch, length, heads, headDim, positionOffset, theta, !inverse);
            Assert.That(TestUtil.RelativeL2(device.ToArray(xT), x), Is.LessThan(Tolerance), $"{what} undone");
        }
    }

    // ---- SwiGLU ----------------------------------------------------------------------------------

    [TestCase(1, 4f)]
    [TestCase(1, 8f)]
    [TestCase(7, 4f)]
    [TestCase(33, 4f)]
    [TestCase(111, 4f)]
    [TestCase(1000, 8f)]
    [TestCase(1000, 12f)]
    [TestCase(4099, 8f)]
    [TestCase(40_000, 6f)]
    public void SwiGluMatchesReference(int n, float gateScale)
    {
        var rng = TestUtil.NewRandom();
        CheckSwiGlu(rng, TestUtil.RandomFloats(rng, n, gateScale), TestUtil.RandomFloats(rng, n, 2f), TestUtil.RandomFloats(rng, n));
    }

    /// <summary>Far tails, where exp(−g) overflows float for a naive sigmoid, and the neighbourhood of zero.</summary>
    [Test]
    public void SwiGluIsAccurateInTheTails()
    {
        var gate = new[] { -100f, -60f, -30f, -12f, -5f, -1f, -1e-3f, 0f, 1e-3f, 1f, 5f, 12f, 30f, 60f, 100f };
        var up = new float[gate.Length];
        var dOut = new float[gate.Length];
        Array.Fill(up, 1.5f);
        Array.Fill(dOut, 1f);
        CheckSwiGlu(TestUtil.NewRandom(), gate, up, dOut);
    }

    /// <summary>Five rounds of six values: 30 elements, so the vector loops see them as well as the scalar tail.</summary>
    [Test]
    public void SwiGluSaturatesAtBothEnds()
    {
        float[] values = [-200f, -90f, 90f, 200f, -1e38f, 1e38f];
        var gate = Enumerable.Repeat(values, 5).SelectMany(v => v).ToArray();
        using var gateT = device.FromArray(gate, gate.Length);
        using var up = device.FromArray(Enumerable.Repeat(1f, gate.Length).ToArray(), gate.Length);
        using var output = device.Allocate(DType.F32, gate.Length);
        device.SwiGlu(gateT, up, output);
        Assert.That(device.ToArray(output), Is.EqualTo(gate.Select(g => g < 0 ? 0f : g).ToArray()).Within(1e-30f));
    }

    void CheckSwiGlu(Random rng, float[] gate, float[] up, float[] dOut)
    {
        int n = gate.Length;
        var expected = new double[n];
        Ref.SwiGlu.Forward(TestUtil.ToDouble(gate), TestUtil.ToDouble(up), expected);
        var expectedGate = new double[n];
        var expectedUp = new double[n];
        Ref.SwiGlu.Backward(TestUtil.ToDouble(gate), TestUtil.ToDouble(up), TestUtil.ToDouble(dOut), expectedGate, expectedUp);
        var gateStart = TestUtil.GradientStart(rng, expectedGate);
        var upStart = TestUtil.GradientStart(rng, expectedUp);

        using var gateT = device.FromArray(gate, n);
        using var upT = device.FromArray(up, n);
        using var outT = device.Allocate(DType.F32, n);
        using var dOutT = device.FromArray(dOut, n);
        using var dGate = device.FromArray(gateStart, n);
        using var dUp = device.FromArray(upStart, n);
        device.SwiGlu(gateT, upT, outT);
        device.SwiGluBackward(gateT, upT, dOutT, dGate, dUp);
        var output = device.ToArray(outT);
        var actualGate = device.ToArray(dGate);
        Assert.That(output, Has.All.Matches<float>(float.IsFinite));
        Assert.That(actualGate, Has.All.Matches<float>(float.IsFinite));
        Assert.That(TestUtil.RelativeL2(output, expected), Is.LessThan(Tolerance), "output");
        Assert.That(TestUtil.AddedRelativeL2(actualGate, gateStart, expectedGate), Is.LessThan(Tolerance), "dGate");
        Assert.That(TestUtil.AddedRelativeL2(device.ToArray(dUp), upStart, expectedUp), Is.LessThan(Tolerance), "dUp");
    }
}
