using DiffuSharp.Kernels;
using DiffuSharp.Kernels.Gpu;
using DiffuSharp.Runtime;
using ILGPU;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// Every matmul kernel, launched by choice through <see cref="GpuKernels.Gemm"/>, against a float64 product on
/// fresh random inputs: both operand layouts each, the three epilogues (store, store + bias, accumulate into
/// random values), shapes that cut across the 64- and 128-wide tiles and the K slices, with row lengths that
/// allow 16-byte loads and ones that do not. The tensor-core kernels are compared twice: with the reference
/// computed on inputs rounded as the kernel rounds them (float32 summation error only; on the CPU simulator the
/// instruction is emulated, so this checks tiling, rounding and the accumulator layout) and with the exact
/// product (the precision's own error). Shapes stay small: the simulator pays milliseconds per barrier.
/// </summary>
[TestFixture(IlgpuBackend.CpuSimulator)]
[TestFixture(IlgpuBackend.Cuda)]
public class IlgpuMatMulTests(IlgpuBackend backend) : IlgpuFixture(backend)
{
    const double F32Tolerance = 1e-5;

    static ArrayView<float> View(Tensor t) => ((IlgpuStorage<float>)t.Storage).View;

    /// <summary>The float64 product for a stored [M, K] or [K, M], b stored [K, N] or [N, K], with a rounding applied to each input.</summary>
    static double[] Product(float[] a, float[] b, int m, int k, int n, bool transposeA, bool transposeB, Func<float, double> round)
    {
        var p = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = 0;
                for (int q = 0; q < k; q++)
                    sum += round(transposeA ? a[q * m + i] : a[i * k + q]) * round(transposeB ? b[j * k + q] : b[q * n + j]);
                p[i * n + j] = sum;
            }
        return p;
    }

    /// <summary>The expected output: P (store), P + bias, or the old output + P (accumulate).</summary>
    static double[] Expected(double[] product, float[] bias, float[] before, int n, GemmEpilogue epilogue)
    {
        var e = new double[product.Length];
        for (int i = 0; i < e.Length; i++)
            e[i] = product[i] + epilogue switch
            {
                GemmEpilogue.StoreBias => bias[i % n],
                GemmEpilogue.Accumulate => before[i],
                _ => 0.0,
            };
        return e;
    }

    static double Exact(float x) => x;
    static double Tf32(float x) => BitConverter.UInt32BitsToSingle(MmaFragments.RoundToTf32(x));
    static double Bf16(float x) => BitConverter.UInt32BitsToSingle(MmaFragments.RoundToBf16(x) << 16);

    /// <summary>Runs every layout and epilogue on one shape; returns the largest relative L2 errors against the rounded and the exact product.</summary>
    (double Rounded, double Exact) RunAllLayouts(MatMulKernel kernel, int m, int k, int n)
    {
        Func<float, double> round = kernel switch
        {
            MatMulKernel.TensorCoreTF32 => Tf32,
            MatMulKernel.TensorCoreBF16 => Bf16,
            _ => Exact,
        };
        var rng = TestUtil.NewRandom();
        double worstRounded = 0, worstExact = 0;
        foreach (bool transposeA in new[] { false, true })
        foreach (bool transposeB in new[] { false, true })
        foreach (var epilogue in new[] { GemmEpilogue.Store, GemmEpilogue.StoreBias, GemmEpilogue.Accumulate })
        {
            var a = TestUtil.RandomFloats(rng, m * k);
            var b = TestUtil.RandomFloats(rng, k * n);
            var bias = TestUtil.RandomFloats(rng, n);
            var before = TestUtil.RandomFloats(rng, m * n);
            using var aT = transposeA ? device.FromArray(a, k, m) : device.FromArray(a, m, k);
            using var bT = transposeB ? device.FromArray(b, n, k) : device.FromArray(b, k, n);
            using var biasT = device.FromArray(bias, n);
            using var output = device.FromArray(before, m, n);

            device.Kernels.Gemm(View(aT), View(bT), epilogue == GemmEpilogue.StoreBias ? View(biasT) : null, View(output),
                m, k, n, transposeA, transposeB, epilogue, kernel);
            var actual = device.ToArray(output);

            string what = $"{kernel} {m}x{k}x{n} a{(transposeA ? "ᵀ" : "")} b{(transposeB ? "ᵀ" : "")} {epilogue}";
            double rounded = TestUtil.RelativeL2(actual, Expected(Product(a, b, m, k, n, transposeA, transposeB, round), bias, before, n, epilogue));
            var product = Product(a, b, m, k, n, transposeA, transposeB, Exact);
            double exact = ErrorOverProduct(actual, Expected(product, bias, before, n, epilogue), product);
            Assert.That(rounded, Is.LessThan(F32Tolerance), $"{what}: against the product of the rounded inputs");
            worstRounded = Math.Max(worstRounded, rounded);
            worstExact = Math.Max(worstExact, exact);
        }
        return (worstRounded, worstExact);
    }

    /// <summary>
    /// ‖actual − expected‖₂ / ‖product‖₂: the rounding of the inputs perturbs the product, so its error is
    /// measured against the product's size, not against the output's, which a bias or an accumulated value
    /// can cancel to near zero (a 1 x 1 x 1 product plus a bias of the opposite sign).
    /// </summary>
    static double ErrorOverProduct(float[] actual, double[] expected, double[] product)
    {
        double error = 0, size = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            double d = actual[i] - expected[i];
            error += d * d;
            size += product[i] * product[i];
        }
        return Math.Sqrt(error / size);
    }

    [TestCase(1, 1, 1)]
    [TestCase(17, 33, 5)]
    [TestCase(64, 16, 64)]
    [TestCase(65, 130, 70)]
    [TestCase(36, 20, 132)]
    public void Tiled64MatchesReference(int m, int k, int n) => RunAllLayouts(MatMulKernel.Tiled64, m, k, n);

    /// <summary>Non-multiples of 4 take the scalar loads and stores; multiples of 4 the 16-byte ones; 129+ crosses a 128 tile, 17+ a K slice.</summary>
    [TestCase(1, 1, 1)]
    [TestCase(17, 33, 5)]
    [TestCase(130, 19, 129)]
    [TestCase(132, 20, 136)]
    [TestCase(8, 36, 260)]
    public void Tiled128MatchesReference(int m, int k, int n) => RunAllLayouts(MatMulKernel.Tiled128, m, k, n);

    /// <summary>TF32 slices are 16 deep: K = 19 and 36 cross them, with and without 16-byte loads.</summary>
    [TestCase(1, 1, 1)]
    [TestCase(17, 19, 5)]
    [TestCase(130, 36, 136)]
    public void TensorCoreTf32MatchesReference(int m, int k, int n)
    {
        var (_, exact) = RunAllLayouts(MatMulKernel.TensorCoreTF32, m, k, n);
        Assert.That(exact, Is.LessThan(5e-3), "TF32 against the exact product");
    }

    /// <summary>BF16 slices are 32 deep (16 pairs): K = 33 leaves an odd tail, 40 crosses a slice with 16-byte loads.</summary>
    [TestCase(1, 1, 1)]
    [TestCase(17, 33, 5)]
    [TestCase(130, 40, 136)]
    public void TensorCoreBf16MatchesReference(int m, int k, int n)
    {
        var (_, exact) = RunAllLayouts(MatMulKernel.TensorCoreBF16, m, k, n);
        Assert.That(exact, Is.LessThan(3e-2), "BF16 against the exact product");
    }

    /// <summary>A view that starts off a 16-byte boundary takes the scalar path even when its rows allow vectors.</summary>
    [Test]
    public void UnalignedViewsFallBackToScalarLoads()
    {
        int m = 20, k = 8, n = 12;
        var rng = TestUtil.NewRandom();
        var a = TestUtil.RandomFloats(rng, m * k + 1);
        var b = TestUtil.RandomFloats(rng, k * n + 1);
        using var aT = device.FromArray(a, a.Length);
        using var bT = device.FromArray(b, b.Length);
        using var output = device.Allocate(DType.F32, m * n + 1);
        device.Kernels.Gemm(View(aT).SubView(1), View(bT).SubView(1), null, View(output).SubView(1), m, k, n, false, false,
            GemmEpilogue.Store, MatMulKernel.Tiled128);
        var expected = Product(a[1..], b[1..], m, k, n, false, false, Exact);
        Assert.That(TestUtil.RelativeL2(device.ToArray(output)[1..], expected), Is.LessThan(F32Tolerance));
    }

    [Test]
    public void ChoosesTheKernelByPrecisionAndSize()
    {
        var kernels = device.Kernels;
        int multiprocessors = kernels.Accelerator.NumMultiprocessors;
        Assert.That(kernels.ChooseMatMulKernel(1, 1, MatMulPrecision.TF32), Is.EqualTo(MatMulKernel.TensorCoreTF32));
        Assert.That(kernels.ChooseMatMulKernel(1, 1, MatMulPrecision.BF16), Is.EqualTo(MatMulKernel.TensorCoreBF16));
        Assert.That(kernels.ChooseMatMulKernel(128, 128 * multiprocessors, MatMulPrecision.F32), Is.EqualTo(MatMulKernel.Tiled128));
        if (multiprocessors > 1)
            Assert.That(kernels.ChooseMatMulKernel(128, 128 * (multiprocessors - 1), MatMulPrecision.F32), Is.EqualTo(MatMulKernel.Tiled64));
    }

    // ---- the device's precision --------------------------------------------------------------------

    [Test]
    public void PrecisionDefaultsToF32()
    {
        Assert.That(device.MatMulPrecision, Is.EqualTo(MatMulPrecision.F32));
    }

    [Test]
    public void TensorCorePrecisionIsRefusedWithoutTensorCores()
    {
        if (backend == IlgpuBackend.Cuda) Assert.Ignore("this device has tensor-core instructions");
        var e = Assert.Throws<DiffuException>(() => device.MatMulPrecision = MatMulPrecision.TF32);
        Assert.That(e!.Message, Does.Contain("TF32").And.Contain("ilgpu-cpu").And.Contain("CUDA"));
        Assert.That(device.MatMulPrecision, Is.EqualTo(MatMulPrecision.F32), "a refused precision leaves the old one");
        Assert.Throws<DiffuException>(() => Devices.Create("ilgpu-cpu", MatMulPrecision.BF16).Dispose());
        using var f32 = Devices.Create("ilgpu-cpu", MatMulPrecision.F32);
        Assert.That(f32.Name, Is.EqualTo("ilgpu-cpu"));
    }

    /// <summary>
    /// The device routes forward and backward matmuls by its precision: results against the float64 reference
    /// within the precision's error, at a size where the float32 path takes the 128 x 128 kernel on a GPU.
    /// </summary>
    [TestCase(MatMulPrecision.F32, 1e-5)]
    [TestCase(MatMulPrecision.TF32, 5e-3)]
    [TestCase(MatMulPrecision.BF16, 3e-2)]
    public void DeviceMatMulsFollowThePrecision(MatMulPrecision precision, double tolerance)
    {
        if (backend != IlgpuBackend.Cuda) Assert.Ignore("tensor-core precisions run on a CUDA GPU only; the simulator covers the kernels above");
        int m = 512, k = 384, n = 128 * device.Kernels.Accelerator.NumMultiprocessors / 4 + 40;
        var previous = device.MatMulPrecision;
        device.MatMulPrecision = precision;
        try
        {
            var rng = TestUtil.NewRandom();
            var x = TestUtil.RandomFloats(rng, m * k);
            var w = TestUtil.RandomFloats(rng, k * n);
            var bias = TestUtil.RandomFloats(rng, n);
            var dOut = TestUtil.RandomFloats(rng, m * n);
            using var xT = device.FromArray(x, m, k);
            using var wT = device.FromArray(w, k, n);
            using var wNk = device.FromArray(w, n, k);
            using var biasT = device.FromArray(bias, n);
            using var output = device.Allocate(DType.F32, m, n);

            var expected = new double[m * n];
            DiffuSharp.Kernels.Reference.MatMul.Forward(TestUtil.ToDouble(x), TestUtil.ToDouble(w), TestUtil.ToDouble(bias), expected, m, k, n);
            device.MatMul(xT, wT, biasT, output);
            Assert.That(TestUtil.RelativeL2(device.ToArray(output), expected), Is.LessThan(tolerance), "x · w + bias");

            DiffuSharp.Kernels.Reference.MatMul.ForwardTransposed(TestUtil.ToDouble(x), TestUtil.ToDouble(w), TestUtil.ToDouble(bias), expected, m, k, n);
            device.MatMulTransposed(xT, wNk, biasT, output);
            Assert.That(TestUtil.RelativeL2(device.ToArray(output), expected), Is.LessThan(tolerance), "x · wᵀ + bias");

            var expectedX = new double[m * k];
            var expectedW = new double[k * n];
            var expectedB = new double[n];
            DiffuSharp.Kernels.Reference.MatMul.Backward(TestUtil.ToDouble(dOut), TestUtil.ToDouble(x), TestUtil.ToDouble(w), expectedX, expectedW, expectedB, m, k, n);
            using var dOutT = device.FromArray(dOut, m, n);
            using var dX = device.Zeros(DType.F32, m, k);
            using var dW = device.Zeros(DType.F32, k, n);
            using var dB = device.Zeros(DType.F32, n);
            device.MatMulBackward(dOutT, xT, wT, dX, dW, dB);
            Assert.That(TestUtil.RelativeL2(device.ToArray(dX), expectedX), Is.LessThan(tolerance), "dX");
            Assert.That(TestUtil.RelativeL2(device.ToArray(dW), expectedW), Is.LessThan(tolerance), "dW");
        }
        finally
        {
            device.MatMulPrecision = previous;
        }
    }
}
