using DiffuSharp.Runtime;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// The forward ops of <see cref="Device"/> (attention has <see cref="AttentionTests"/>) and its transfers and pool on
/// every device, against the float64 reference on fresh random inputs, at shapes that are not multiples of the CPU's
/// vector width (16) or matmul tile (6 x 32), nor of the ILGPU kernels' tiles (matmul 64 x 64 x 16 and 128 x 128, 128
/// threads a group, one warp per row for the row kernels).
/// </summary>
public sealed class DeviceOpTests(string deviceName) : DeviceFixture(deviceName)
{
    /// <summary>
    /// Relative L2 bound for float32 against float64. Round-off in a length-K sum grows like √K · 6e-8 (about 2e-6 at
    /// K = 1100, the longest sum here), so 1e-5 holds with margin for every op.
    /// </summary>
    const double Tolerance = 1e-5;

    // ---- the device ------------------------------------------------------------------------------

    [Test]
    public void DeviceDescribesItself()
    {
        Assert.That(device.Name, Is.EqualTo(deviceName));
        Assert.That(device.Description, Is.Not.Empty);
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

    // ---- elementwise -----------------------------------------------------------------------------

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
    [TestCase(1, 1, 1, 50, 3, 0)]
    [TestCase(2, 5, 33, 11, 9, 3)]
    [TestCase(2, 7, 17, 50, 12, 3)]
    [TestCase(3, 17, 70, 50, 20, 0)]
    [TestCase(3, 33, 768, 50, 35, 0)]
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
    [TestCase(15)]
    [TestCase(17)]
    [TestCase(1000)]
    [TestCase(4099)]
    [TestCase(100_003)]
    public void GeluMatchesReference(int n)
    {
        var x = TestUtil.RandomFloats(TestUtil.NewRandom(), n, 6f);
        var expected = new double[n];
        Ref.Gelu.Forward(TestUtil.ToDouble(x), expected);

        using var xT = device.FromArray(x, n);
        using var output = device.Allocate(DType.F32, n);
        device.Gelu(xT, output);
        var actual = device.ToArray(output);
        Assert.That(TestUtil.RelativeL2(actual, expected), Is.LessThan(Tolerance));

        device.Gelu(xT, xT);
        Assert.That(device.ToArray(xT), Is.EqualTo(actual), "in place");
    }

    [Test]
    public void GeluSaturates()
    {
        var x = new float[] { -100f, -20f, 0f, 20f, 100f, float.MaxValue / 2, -float.MaxValue / 2, -3f, 3f, 1f, -1f, 0.5f, -0.5f, 50f, -50f, 10f, -10f };
        var expected = new double[x.Length];
        Ref.Gelu.Forward(TestUtil.ToDouble(x), expected);

        using var xT = device.FromArray(x, x.Length);
        using var output = device.Allocate(DType.F32, x.Length);
        device.Gelu(xT, output);
        var actual = device.ToArray(output);
        for (int i = 0; i < x.Length; i++)
            Assert.That(actual[i], Is.EqualTo(expected[i]).Within(1e-6 * Math.Max(1, Math.Abs(expected[i]))), $"gelu({x[i]})");
    }

    /// <summary>A float32 sum is the correctly rounded double sum, within 6e-8 of it relative; the output may alias either input.</summary>
    [TestCase(1)]
    [TestCase(17)]
    [TestCase(1000)]
    [TestCase(3001)]
    [TestCase(70_001)]
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
        var actual = device.ToArray(output);
        Assert.That(TestUtil.RelativeL2(actual, expected), Is.LessThan(1e-7), "separate output");

        device.Add(aT, bT, aT);
        Assert.That(device.ToArray(aT), Is.EqualTo(actual), "output aliases a");
        device.Upload(aT, 0, a);
        device.Add(aT, bT, bT);
        Assert.That(device.ToArray(bT), Is.EqualTo(actual), "output aliases b");
    }

    // ---- row reductions --------------------------------------------------------------------------

    [TestCase(1, 1)]
    [TestCase(3, 7)]
    [TestCase(3, 33)]
    [TestCase(5, 33)]
    [TestCase(17, 100)]
    [TestCase(2, 769)]
    [TestCase(64, 768)]
    [TestCase(200, 1001)]
    public void LayerNormMatchesReference(int rows, int channels)
    {
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, rows * channels, 3f);
        for (int i = 0; i < x.Length; i++) x[i] += 2f;
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
    [TestCase(4, 17)]
    [TestCase(9, 100)]
    [TestCase(65, 130)]
    [TestCase(2, 1001)]
    [TestCase(8, 50257)]
    public void SoftmaxMatchesReference(int rows, int columns)
    {
        var x = TestUtil.RandomFloats(TestUtil.NewRandom(), rows * columns, 10f);
        var expected = new double[rows * columns];
        Ref.Softmax.Forward(TestUtil.ToDouble(x), expected, rows, columns);

        using var xT = device.FromArray(x, rows, columns);
        using var output = device.Allocate(DType.F32, rows, columns);
        device.Softmax(xT, output);
        Assert.That(TestUtil.RelativeL2(device.ToArray(output), expected), Is.LessThan(Tolerance));
    }

    [Test]
    public void SoftmaxOfEqualValuesIsUniform()
    {
        using var x = device.FromArray(Enumerable.Repeat(1000f, 20).ToArray(), 1, 20);
        using var output = device.Allocate(DType.F32, 1, 20);
        device.Softmax(x, output);
        Assert.That(device.ToArray(output), Is.All.EqualTo(0.05f).Within(1e-7));
    }

    // ---- matmul ----------------------------------------------------------------------------------

    [TestCase(1, 1, 1)]
    [TestCase(1, 64, 130)]
    [TestCase(3, 17, 65)]
    [TestCase(3, 64, 64)]
    [TestCase(4, 130, 17)]
    [TestCase(5, 3, 64)]
    [TestCase(17, 33, 5)]
    [TestCase(17, 65, 3)]
    [TestCase(64, 17, 65)]
    [TestCase(64, 64, 64)]
    [TestCase(65, 130, 17)]
    [TestCase(65, 130, 70)]
    [TestCase(130, 17, 130)]
    [TestCase(192, 64, 65)]
    [TestCase(1, 37, 29)]
    public void MatMulMatchesReference(int m, int k, int n) => CheckMatMul(m, k, n);

    /// <summary>
    /// Shapes across the CPU GEMM's blocks (K cut at 1024, 512 columns of b and 512 rows of a a block, a strip of a few
    /// rows, the split over the cores) and its paths for few rows.
    /// </summary>
    [TestCase(257, 200, 301)]
    [TestCase(7, 1030, 33)]
    [TestCase(4, 256, 3000)]
    [TestCase(150, 700, 9)]
    [TestCase(191, 130, 301)]
    [TestCase(300, 513, 70)]
    [TestCase(9, 700, 900)]
    [TestCase(300, 1100, 530)]
    [TestCase(1100, 64, 40)]
    [TestCase(1, 700, 1003)]
    public void MatMulAcrossCpuBlocksMatchesReference(int m, int k, int n)
    {
        IgnoreOnSimulator(AcrossCpuBlocks);
        CheckMatMul(m, k, n);
    }

    void CheckMatMul(int m, int k, int n)
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

    [Test]
    public void MatMulOverwritesOutput()
    {
        using var x = device.FromArray(new float[] { 1, 2, 3, 4 }, 2, 2);
        using var w = device.FromArray(new float[] { 5, 6, 7, 8 }, 2, 2);
        using var output = device.FromArray(new float[] { 100, 100, 100, 100 }, 2, 2);
        device.MatMul(x, w, null, output);
        Assert.That(device.ToArray(output), Is.EqualTo(new float[] { 19, 22, 43, 50 }));
    }
}
