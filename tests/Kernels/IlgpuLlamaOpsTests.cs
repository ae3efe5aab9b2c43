using DiffuSharp.Kernels;
using DiffuSharp.Runtime;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// The ILGPU LLaMA-family kernels (RMSNorm, RoPE, SwiGLU, forward and backward) through the public Device
/// API of <see cref="IlgpuDevice"/>, against the float64 reference on fresh random inputs. Gradient buffers
/// start at random non-zero values, so the backward tests also check accumulation (+=). Channel counts are
/// odd and straddle the 32-lane warp; RoPE runs at positions up to 2048, where a float32 angle alone would
/// be off by 1e-4 rad: the kernel forms the angle in double, so the 1e-5 bound holds there too. The same
/// fixture runs on CUDA when a GPU is present and is reported as ignored where it is not.
/// </summary>
[TestFixture(IlgpuBackend.CpuSimulator)]
[TestFixture(IlgpuBackend.Cuda)]
public class IlgpuLlamaOpsTests(IlgpuBackend backend) : IlgpuFixture(backend)
{
    const double Tolerance = 1e-5;
    const float Eps = 1e-5f;

    // ---- RMSNorm -------------------------------------------------------------------------------

    [TestCase(1, 1)]
    [TestCase(3, 33)]
    [TestCase(17, 100)]
    [TestCase(2, 769)]
    [TestCase(70, 31)]
    public void RmsNormMatchesReference(int rows, int channels)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, rows * channels, 3f);
        var w = TestUtil.RandomFloats(rng, channels);
        var expected = new double[rows * channels];
        var expectedRstd = new double[rows];
        Ref.RmsNorm.Forward(TestUtil.ToDouble(x), TestUtil.ToDouble(w), expected, expectedRstd, rows, channels, Eps);

        using var xT = device.FromArray(x, rows, channels);
        using var wT = device.FromArray(w, channels);
        using var outT = device.Allocate(DType.F32, rows, channels);
        using var rstdT = device.Allocate(DType.F32, rows);
        device.RmsNorm(xT, wT, outT, rstdT, Eps);
        Assert.That(TestUtil.RelativeL2(device.ToArray(outT), expected), Is.LessThan(Tolerance), "output");
        Assert.That(TestUtil.RelativeL2(device.ToArray(rstdT), expectedRstd), Is.LessThan(Tolerance), "rstd");
    }

    /// <summary>300 and 70 rows split the dWeight column sums into several chunks of rows.</summary>
    [TestCase(1, 1)]
    [TestCase(3, 33)]
    [TestCase(2, 769)]
    [TestCase(300, 20)]
    [TestCase(70, 301)]
    public void RmsNormBackwardMatchesReference(int rows, int channels)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, rows * channels, 3f);
        var w = TestUtil.RandomFloats(rng, channels);
        var dOut = TestUtil.RandomFloats(rng, rows * channels);
        var rstdD = new double[rows];
        Ref.RmsNorm.Forward(TestUtil.ToDouble(x), TestUtil.ToDouble(w), new double[rows * channels], rstdD, rows, channels, Eps);
        var rstd = new float[rows];
        for (int r = 0; r < rows; r++) rstd[r] = (float)rstdD[r];
        var dX = TestUtil.RandomFloats(rng, rows * channels);
        var dW = TestUtil.RandomFloats(rng, channels);
        var expectedX = TestUtil.ToDouble(dX);
        var expectedW = TestUtil.ToDouble(dW);
        Ref.RmsNorm.Backward(TestUtil.ToDouble(dOut), TestUtil.ToDouble(x), TestUtil.ToDouble(w), TestUtil.ToDouble(rstd),
            expectedX, expectedW, rows, channels);

        using var dOutT = device.FromArray(dOut, rows, channels);
        using var xT = device.FromArray(x, rows, channels);
        using var wT = device.FromArray(w, channels);
        using var rstdT = device.FromArray(rstd, rows);
        using var dXT = device.FromArray(dX, rows, channels);
        using var dWT = device.FromArray(dW, channels);
        device.RmsNormBackward(dOutT, xT, wT, rstdT, dXT, dWT);
        Assert.That(TestUtil.RelativeL2(device.ToArray(dXT), expectedX), Is.LessThan(Tolerance), "dX");
        Assert.That(TestUtil.RelativeL2(device.ToArray(dWT), expectedW), Is.LessThan(Tolerance), "dWeight");
    }

    // ---- RoPE ----------------------------------------------------------------------------------

    /// <summary>
    /// Views with an offset and a row stride wider than heads · headDim (a slice of a fused qkv row, with
    /// padding after the last row); positions reach 2048 and beyond with LLaMA-2 and LLaMA-3 thetas.
    /// </summary>
    [TestCase(1, 1, 1, 8, 0, 0, 0, 10000f)]
    [TestCase(2, 5, 3, 8, 7, 11, 3, 10000f)]
    [TestCase(1, 9, 2, 16, 0, 5, 2040, 10000f)]
    [TestCase(2, 3, 2, 64, 64, 0, 2045, 10000f)]
    [TestCase(1, 4, 3, 64, 192, 64, 1500, 500000f)]
    public void RopeMatchesReference(int batch, int length, int heads, int headDim, int extraStride, int offset, int positionOffset, float theta)
    {
        foreach (bool inverse in new[] { false, true })
        {
            var (actual, expected) = RunRope(batch, length, heads, headDim, extraStride, offset, positionOffset, theta, inverse);
            Assert.That(TestUtil.RelativeL2(actual, expected), Is.LessThan(Tolerance), inverse ? "inverse" : "forward");
        }
    }

    /// <summary>Elements outside the rotated heads (the offset prefix, the stride padding of each row) are left untouched.</summary>
    [Test]
    public void RopeLeavesTheRestOfTheBufferAlone()
    {
        const int batch = 2, length = 3, heads = 1, headDim = 8, extraStride = 5, offset = 4;
        const int rowStride = heads * headDim + extraStride;
        var (actual, expected) = RunRope(batch, length, heads, headDim, extraStride, offset, 9, 10000f, inverse: false);
        for (int i = 0; i < actual.Length; i++)
        {
            bool rotated = i >= offset && (i - offset) % rowStride < heads * headDim;
            if (!rotated) Assert.That(actual[i], Is.EqualTo((float)expected[i]), $"element {i}");
        }
        Assert.That(TestUtil.RelativeL2(actual, expected), Is.LessThan(Tolerance));
    }

    /// <summary>The inverse rotation is the backward pass: applied after the forward it gives x back.</summary>
    [Test]
    public void RopeInverseUndoesTheRotation()
    {
        var rng = TestUtil.NewRandom();
        const int batch = 2, length = 6, heads = 2, headDim = 16;
        var x = TestUtil.RandomFloats(rng, batch * length * heads * headDim);
        using var xT = device.FromArray(x, batch, length, heads * headDim);
        device.Rope(xT, 0, heads * headDim, batch, length, heads, headDim, 2000, 10000f, inverse: false);
        device.Rope(xT, 0, heads * headDim, batch, length, heads, headDim, 2000, 10000f, inverse: true);
        Assert.That(TestUtil.RelativeL2(device.ToArray(xT), x), Is.LessThan(Tolerance));
    }

    (float[] Actual, double[] Expected) RunRope(int batch, int length, int heads, int headDim, int extraStride, int offset,
        int positionOffset, float theta, bool inverse)
    {
        var rng = TestUtil.NewRandom();
        int rowStride = heads * headDim + extraStride;
        int total = offset + batch * length * rowStride;
        var x = TestUtil.RandomFloats(rng, total);
        var expected = TestUtil.ToDouble(x);
        Ref.Rope.Apply(expected.AsSpan(offset), rowStride, batch, length, heads, headDim, positionOffset, theta, inverse);

        using var xT = device.FromArray(x, total);
        device.Rope(xT, offset, rowStride, batch, length, heads, headDim, positionOffset, theta, inverse);
        return (device.ToArray(xT), expected);
    }

    // ---- SwiGLU --------------------------------------------------------------------------------

    [TestCase(1)]
    [TestCase(1000)]
    [TestCase(4099)]
    public void SwiGluMatchesReference(int n)
    {
        var rng = TestUtil.NewRandom();
        CompareSwiGlu(TestUtil.RandomFloats(rng, n, 8f), TestUtil.RandomFloats(rng, n, 2f), TestUtil.RandomFloats(rng, n));
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
        CompareSwiGlu(gate, up, dOut);
    }

    void CompareSwiGlu(float[] gate, float[] up, float[] dOut)
    {
        int n = gate.Length;
        var rng = TestUtil.NewRandom();
        var expected = new double[n];
        Ref.SwiGlu.Forward(TestUtil.ToDouble(gate), TestUtil.ToDouble(up), expected);
        var dGate = TestUtil.RandomFloats(rng, n);
        var dUp = TestUtil.RandomFloats(rng, n);
        var expectedGate = TestUtil.ToDouble(dGate);
        var expectedUp = TestUtil.ToDouble(dUp);
        Ref.SwiGlu.Backward(TestUtil.ToDouble(gate), TestUtil.ToDouble(up), TestUtil.ToDouble(dOut), expectedGate, expectedUp);

        using var gateT = device.FromArray(gate, n);
        using var upT = device.FromArray(up, n);
        using var outT = device.Allocate(DType.F32, n);
        using var dOutT = device.FromArray(dOut, n);
        using var dGateT = device.FromArray(dGate, n);
        using var dUpT = device.FromArray(dUp, n);
        device.SwiGlu(gateT, upT, outT);
        device.SwiGluBackward(gateT, upT, dOutT, dGateT, dUpT);
        var output = device.ToArray(outT);
        var actualGate = device.ToArray(dGateT);
        Assert.That(output, Has.All.Matches<float>(float.IsFinite));
        Assert.That(actualGate, Has.All.Matches<float>(float.IsFinite));
        Assert.That(TestUtil.RelativeL2(output, expected), Is.LessThan(Tolerance), "output");
        Assert.That(TestUtil.RelativeL2(actualGate, expectedGate), Is.LessThan(Tolerance), "dGate");
        Assert.That(TestUtil.RelativeL2(device.ToArray(dUpT), expectedUp), Is.LessThan(Tolerance), "dUp");
    }
}
