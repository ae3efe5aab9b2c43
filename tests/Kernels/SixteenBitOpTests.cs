using DiffuSharp.Kernels;
using DiffuSharp.Runtime;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// Every op that reads a weight, with the weight stored as BF16 or F16 bits, on every device against the float64
/// reference of the weight's exact values: matmul in both layouts (each CPU path: one row, a few rows, the packed
/// product) and its backward for dX, the embedding lookup (with 16-bit positions too), LayerNorm and RMSNorm forward
/// and backward with 16-bit weights and biases, and the widening op itself over every special value. The weights are
/// exact, so only float32 accumulation separates the result from the reference: the float32 ops' bound applies.
/// </summary>
public sealed class SixteenBitOpTests(string deviceName) : DeviceFixture(deviceName)
{
    const double Tolerance = 1e-5;

    static readonly DType[] Types = [DType.BF16, DType.F16];

    static WeightFormat Format(DType dtype) => dtype == DType.BF16 ? WeightFormat.BF16 : WeightFormat.F16;

    /// <summary>Random weights rounded to <paramref name="dtype"/>: their bits, and their exact values for the reference.</summary>
    static (ushort[] Bits, double[] Values) RandomWeights(Random rng, int n, DType dtype, float scale = 1f)
    {
        var bits = new ushort[n];
        SixteenBit.Narrow(TestUtil.RandomFloats(rng, n, scale), Format(dtype), bits);
        return (bits, Ref.Weights.Widen(bits, Format(dtype)));
    }

    Tensor Upload16(ushort[] bits, DType dtype, params int[] shape)
    {
        var t = device.Allocate(dtype, shape);
        device.Upload(t, 0, bits);
        return t;
    }

    [Test]
    public void WideningIsExactForEverySpecialValue([ValueSource(nameof(Types))] DType dtype)
    {
        // All 65536 bit patterns: zeros of both signs, subnormals, normals, infinities and NaNs.
        var bits = Enumerable.Range(0, 65536).Select(i => (ushort)i).ToArray();
        using var t = Upload16(bits, dtype, bits.Length);
        using var wide = device.Allocate(DType.F32, bits.Length);
        device.Widen(t, wide);
        var actual = device.ToArray(wide);
        for (int i = 0; i < bits.Length; i++)
        {
            // Independent of the engine's conversions: BF16 is a float32's upper half, F16 is System.Half.
            float expected = dtype == DType.BF16 ? BitConverter.Int32BitsToSingle(bits[i] << 16) : (float)BitConverter.UInt16BitsToHalf(bits[i]);
            if (float.IsNaN(expected)) Assert.That(float.IsNaN(actual[i]), $"bits {i:X4} widen to a NaN");
            else Assert.That(BitConverter.SingleToInt32Bits(actual[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(expected)), $"bits {i:X4}");
        }
    }

    [TestCase(1, 300, 77, false)]
    [TestCase(1, 300, 77, true)]
    [TestCase(3, 100, 70, false)]
    [TestCase(20, 130, 45, true)]
    [TestCase(70, 130, 90, false)]
    [TestCase(70, 130, 90, true)]
    public void MatMulReadsSixteenBitWeightsAndBias(int m, int k, int n, bool transposed)
    {
        foreach (var dtype in Types)
        {
            var rng = TestUtil.NewRandom();
            var x = TestUtil.RandomFloats(rng, m * k);
            var (wBits, w) = RandomWeights(rng, k * n, dtype);
            var (bBits, bias) = RandomWeights(rng, n, dtype);
            var expected = new double[m * n];
            if (transposed) Ref.MatMul.ForwardTransposed(TestUtil.ToDouble(x), w, bias, expected, m, k, n);
            else Ref.MatMul.Forward(TestUtil.ToDouble(x), w, bias, expected, m, k, n);

            using var xt = device.FromArray(x, m, k);
            using var wt = transposed ? Upload16(wBits, dtype, n, k) : Upload16(wBits, dtype, k, n);
            using var bt = Upload16(bBits, dtype, n);
            using var o = device.Allocate(DType.F32, m, n);
            if (transposed) device.MatMulTransposed(xt, wt, bt, o);
            else device.MatMul(xt, wt, bt, o);
            Assert.That(TestUtil.RelativeL2(device.ToArray(o), expected), Is.LessThan(Tolerance), $"{dtype}");
        }
    }

    [Test]
    public void MatMulAcrossTheCpuBlocksReadsSixteenBitWeights([Values] bool transposed)
    {
        IgnoreOnSimulator(AcrossCpuBlocks);
        const int m = 50, k = 1100, n = 530;
        var rng = TestUtil.NewRandom();
        var x = TestUtil.RandomFloats(rng, m * k);
        var (wBits, w) = RandomWeights(rng, k * n, DType.BF16);
        var expected = new double[m * n];
        if (transposed) Ref.MatMul.ForwardTransposed(TestUtil.ToDouble(x), w, default, expected, m, k, n);
        else Ref.MatMul.Forward(TestUtil.ToDouble(x), w, default, expected, m, k, n);
        using var xt = device.FromArray(x, m, k);
        using var wt = transposed ? Upload16(wBits, DType.BF16, n, k) : Upload16(wBits, DType.BF16, k, n);
        using var o = device.Allocate(DType.F32, m, n);
        if (transposed) device.MatMulTransposed(xt, wt, null, o);
        else device.MatMul(xt, wt, null, o);
        Assert.That(TestUtil.RelativeL2(device.ToArray(o), expected), Is.LessThan(Tolerance));
    }

    [TestCase(9, 40, 33, false)]
    [TestCase(9, 40, 33, true)]
    [TestCase(70, 45, 130, false)]
    public void MatMulBackwardReadsSixteenBitWeights(int m, int k, int n, bool transposed)
    {
        foreach (var dtype in Types)
        {
            foreach (bool withWeightGradient in new[] { false, true })
            {
                var rng = TestUtil.NewRandom();
                var x = TestUtil.RandomFloats(rng, m * k);
                var dOut = TestUtil.RandomFloats(rng, m * n);
                var (wBits, w) = RandomWeights(rng, k * n, dtype);
                var expectedX = new double[m * k];
                var expectedW = new double[k * n];
                if (transposed) Ref.MatMul.BackwardTransposed(TestUtil.ToDouble(dOut), TestUtil.ToDouble(x), w, expectedX, expectedW, default, m, k, n);
                else Ref.MatMul.Backward(TestUtil.ToDouble(dOut), TestUtil.ToDouble(x), w, expectedX, expectedW, default, m, k, n);
                var dX0 = TestUtil.GradientStart(rng, expectedX);
                var dW0 = TestUtil.GradientStart(rng, expectedW);

                using var xt = device.FromArray(x, m, k);
                using var gt = device.FromArray(dOut, m, n);
                using var wt = transposed ? Upload16(wBits, dtype, n, k) : Upload16(wBits, dtype, k, n);
                using var dx = device.FromArray(dX0, m, k);
                using var dw = device.FromArray(dW0, transposed ? [n, k] : [k, n]);
                if (transposed) device.MatMulTransposedBackward(gt, xt, wt, dx, withWeightGradient ? dw : null, null);
                else device.MatMulBackward(gt, xt, wt, dx, withWeightGradient ? dw : null, null);
                Assert.That(TestUtil.AddedRelativeL2(device.ToArray(dx), dX0, expectedX), Is.LessThan(Tolerance), $"{dtype} dX");
                if (withWeightGradient)
                    Assert.That(TestUtil.AddedRelativeL2(device.ToArray(dw), dW0, expectedW), Is.LessThan(Tolerance), $"{dtype} dW");
            }
        }
    }

    [TestCase(true)]
    [TestCase(false)]
    public void EmbeddingReadsSixteenBitTables(bool positions)
    {
        const int batch = 2, length = 7, vocab = 50, channels = 37, table = 12, offset = 3;
        foreach (var dtype in Types)
        {
            var rng = TestUtil.NewRandom();
            var ids = Enumerable.Range(0, batch * length).Select(_ => rng.Next(vocab)).ToArray();
            var (teBits, wte) = RandomWeights(rng, vocab * channels, dtype);
            var (peBits, wpe) = RandomWeights(rng, table * channels, dtype);
            var expected = new double[batch * length * channels];
            Ref.Embedding.Forward(ids, wte, positions ? wpe : default, expected, batch, length, channels, offset);

            using var idt = device.FromArray(ids, batch, length);
            using var te = Upload16(teBits, dtype, vocab, channels);
            using var pe = Upload16(peBits, dtype, table, channels);
            using var o = device.Allocate(DType.F32, batch, length, channels);
            device.Embedding(idt, te, positions ? pe : null, o, offset);
            Assert.That(TestUtil.RelativeL2(device.ToArray(o), expected), Is.LessThan(Tolerance), $"{dtype}");
        }
    }

    [Test]
    public void LayerNormReadsSixteenBitWeightAndBias()
    {
        const int rows = 9, channels = 70;
        foreach (var dtype in Types)
        {
            var rng = TestUtil.NewRandom();
            var x = TestUtil.RandomFloats(rng, rows * channels);
            var (wBits, w) = RandomWeights(rng, channels, dtype);
            var (bBits, b) = RandomWeights(rng, channels, dtype);
            var expected = new double[rows * channels];
            var mean = new double[rows];
            var rstd = new double[rows];
            Ref.LayerNorm.Forward(TestUtil.ToDouble(x), w, b, expected, mean, rstd, rows, channels, 1e-5);

            using var xt = device.FromArray(x, rows, channels);
            using var wt = Upload16(wBits, dtype, channels);
            using var bt = Upload16(bBits, dtype, channels);
            using var o = device.Allocate(DType.F32, rows, channels);
            using var m = device.Allocate(DType.F32, rows);
            using var r = device.Allocate(DType.F32, rows);
            device.LayerNorm(xt, wt, bt, o, m, r, 1e-5f);
            Assert.That(TestUtil.RelativeL2(device.ToArray(o), expected), Is.LessThan(Tolerance), $"{dtype} forward");

            var dOut = TestUtil.RandomFloats(rng, rows * channels);
            var expectedX = new double[rows * channels];
            Ref.LayerNorm.Backward(TestUtil.ToDouble(dOut), TestUtil.ToDouble(x), w, mean, rstd, expectedX, new double[channels], new double[channels], rows, channels);
            using var gt = device.FromArray(dOut, rows, channels);
            using var dx = device.Zeros(DType.F32, rows, channels);
            device.LayerNormBackward(gt, xt, wt, m, r, dx, null, null);
            Assert.That(TestUtil.RelativeL2(device.ToArray(dx), expectedX), Is.LessThan(Tolerance), $"{dtype} backward");
        }
    }

    [Test]
    public void RmsNormReadsASixteenBitWeight()
    {
        const int rows = 9, channels = 70;
        foreach (var dtype in Types)
        {
            var rng = TestUtil.NewRandom();
            var x = TestUtil.RandomFloats(rng, rows * channels);
            var (wBits, w) = RandomWeights(rng, channels, dtype);
            var expected = new double[rows * channels];
            var rstd = new double[rows];
            Ref.RmsNorm.Forward(TestUtil.ToDouble(x), w, expected, rstd, rows, channels, 1e-5);

            using var xt = device.FromArray(x, rows, channels);
            using var wt = Upload16(wBits, dtype, channels);
            using var o = device.Allocate(DType.F32, rows, channels);
            using var r = device.Allocate(DType.F32, rows);
            device.RmsNorm(xt, wt, o, r, 1e-5f);
            Assert.That(TestUtil.RelativeL2(device.ToArray(o), expected), Is.LessThan(Tolerance), $"{dtype} forward");

            var dOut = TestUtil.RandomFloats(rng, rows * channels);
            var expectedX = new double[rows * channels];
            Ref.RmsNorm.Backward(TestUtil.ToDouble(dOut), TestUtil.ToDouble(x), w, rstd, expectedX, new double[channels], rows, channels);
            using var gt = device.FromArray(dOut, rows, channels);
            using var dx = device.Zeros(DType.F32, rows, channels);
            device.RmsNormBackward(gt, xt, wt, r, dx, null);
            Assert.That(TestUtil.RelativeL2(device.ToArray(dx), expectedX), Is.LessThan(Tolerance), $"{dtype} backward");
        }
    }

    [Test]
    public void ZerosClearsASixteenBitTensorTakenFromThePool()
    {
        using (var dirty = device.Allocate(DType.BF16, 100)) device.Upload(dirty, 0, Enumerable.Repeat((ushort)0x3F80, 100).ToArray());
        using var t = device.Zeros(DType.BF16, 100);
        var bits = new ushort[100];
        device.Download(t, 0, bits);
        Assert.That(bits, Is.All.EqualTo((ushort)0));
    }
}
