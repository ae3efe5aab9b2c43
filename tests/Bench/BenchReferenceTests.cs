using DiffuSharp.Bench;
using DiffuSharp.Kernels.Cpu;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Tests.Bench;

/// <summary>
/// The benchmark's yardsticks: the reference libraries compute the same products as our matmul (so a
/// ratio compares equal work), the ceiling kernels count what they do, and the PyTorch script has a
/// counterpart for every case the plan emits.
/// </summary>
public sealed class BenchReferenceTests
{
    /// <summary>c = beta c + op(a) · op(b) in float64, row-major, the layouts of <see cref="OpenBlas.Gemm"/>.</summary>
    static double[] Gemm(float[] a, float[] b, float[] c, float beta, bool transA, bool transB, int m, int n, int k)
    {
        var result = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = beta * (double)c[i * n + j];
                for (int p = 0; p < k; p++)
                    sum += (double)(transA ? a[p * m + i] : a[i * k + p]) * (transB ? b[j * k + p] : b[p * n + j]);
                result[i * n + j] = sum;
            }
        return result;
    }

    const int M = 37, N = 53, K = 29;

    /// <summary>Fresh a, b and c for an M x K x N product and the expected result.</summary>
    static (float[] A, float[] B, float[] C, double[] Expected) RandomProblem(bool transA, bool transB, float beta)
    {
        var rng = TestUtil.NewRandom();
        var a = TestUtil.RandomFloats(rng, M * K);
        var b = TestUtil.RandomFloats(rng, K * N);
        var c = TestUtil.RandomFloats(rng, M * N);
        return (a, b, c, Gemm(a, b, c, beta, transA, transB, M, N, K));
    }

    static IEnumerable<TestCaseData> Layouts()
    {
        foreach (bool transA in new[] { false, true })
            foreach (bool transB in new[] { false, true })
                foreach (float beta in new[] { 0f, 1f })
                    yield return new TestCaseData(transA, transB, beta);
    }

    [TestCaseSource(nameof(Layouts))]
    public void OpenBlasComputesTheRowMajorProduct(bool transA, bool transB, float beta)
    {
        var blas = OpenBlas.TryLoad();
        if (blas is null) Assert.Ignore("OpenBLAS is not installed here (apt-get install libopenblas0-pthread)");
        var (a, b, c, expected) = RandomProblem(transA, transB, beta);
        blas!.Gemm(transA, transB, M, N, K, a, b, beta, c);
        Assert.That(TestUtil.RelativeL2(c, expected), Is.LessThan(1e-5));
    }

    [TestCaseSource(nameof(Layouts))]
    public void CuBlasComputesTheRowMajorProduct(bool transA, bool transB, float beta)
    {
        using var device = TestDevices.Create("cuda");
        using var blas = CuBlasReference.TryCreate(device, out string? why);
        if (blas is null) Assert.Fail($"a CUDA device is present but cuBLAS is not usable: {why}");
        var (a, b, c, expected) = RandomProblem(transA, transB, beta);
        using var ta = device.FromArray(a, a.Length);
        using var tb = device.FromArray(b, b.Length);
        using var tc = device.FromArray(c, c.Length);
        blas!.Gemm(transA, transB, M, N, K, ta, tb, beta, tc);
        Assert.That(TestUtil.RelativeL2(device.ToArray(tc), expected), Is.LessThan(1e-5));
    }

    [Test]
    public void OpenBlasRunsWithTheKernelsOfTheCpusInstructionSet()
    {
        var blas = OpenBlas.TryLoad();
        if (blas is null) Assert.Ignore("OpenBLAS is not installed here (apt-get install libopenblas0-pthread)");
        string? core = OpenBlas.CoreType;
        if (core is null) Assert.Ignore("neither AVX-512 nor AVX2 here: OpenBLAS keeps its own choice");
        Assert.That(blas!.Description, Does.Contain(core));
    }

    [Test]
    public void PeakCountsTheFlopsOfItsChains()
    {
        double flops = Peak.FusedMultiplyAdds(2, 1000);
        int lanes = System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated ? 16 : System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated ? 8 : 1;
        Assert.That(flops, Is.EqualTo(2.0 * lanes * 12 * 1000 * 2));
        var data = Enumerable.Range(0, 1001).Select(i => (float)i).ToArray();
        Peak.ScaleInPlace(data, 2f, 3);
        Assert.That(data, Is.EqualTo(Enumerable.Range(0, 1001).Select(i => 2f * i).ToArray()));
    }

    [TestCase("cpu")]
    [TestCase("ilgpu-cpu")]
    [TestCase("cuda")]
    public void CeilingsArePositiveAndFinite(string name)
    {
        using var device = TestDevices.Create(name);
        var c = Ceilings.Measure(device, quick: true);
        Assert.That(c.PeakGflops, Is.GreaterThan(0).And.LessThan(double.PositiveInfinity));
        Assert.That(c.BandwidthGBs, Is.GreaterThan(0).And.LessThan(double.PositiveInfinity));
    }

    /// <summary>The model-FLOPs count equals 2 per weight of every matmul the model holds (the tied token
    /// embedding once, as the logits' matmul; a lookup costs none) plus QKᵀ and PV, from the model's own shapes.</summary>
    [Test]
    public void Gpt2FlopsPerTokenCountEveryMatmulWeight()
    {
        var config = new Gpt2Config(97, 64, 32, 3, 4);
        using var device = new CpuDevice();
        using var model = Gpt2Model.CreateRandom(config, device, 1);
        long matmulWeights = model.Parameters.Named()
            .Where(p => p.Tensor.Rank == 2 && !p.Name.Contains("wpe"))
            .Sum(p => p.Tensor.Length);
        const int length = 50;
        double attention = 2.0 * 2 * length * config.Channels * config.Layers;
        Assert.That(BenchPlan.Gpt2ForwardFlopsPerToken(config, length), Is.EqualTo(2.0 * matmulWeights + attention));
    }

    /// <summary>The PyTorch script has a counterpart for every case of the plan but the decoding and cached rows (which say why), and runs each of them.</summary>
    [Test]
    public void TorchReferenceRunsEveryQuickCase()
    {
        if (TorchReference.FindPython() is null) Assert.Ignore("no Python with PyTorch here (apt-get install python3-torch)");
        using var device = new CpuDevice();
        var options = new BenchOptions
        {
            Quick = true, EvalData = Path.Combine(TestUtil.SharedData, "eval"), Tokenizer = Path.Combine(TestUtil.SharedData, "tokenizers", "gpt2"),
        };
        var cases = BenchPlan.Create(device, options, null, null);
        Assert.That(cases.Select(c => c.Suite).Distinct(), Is.EquivalentTo(BenchPlan.SuiteNames));
        Assert.That(cases.Where(c => c.Torch is null && c.NoTorch is null), Is.Empty, "a case without a counterpart says why");
        Assert.That(cases.Where(c => c.Torch is null).Select(c => c.Suite).Distinct(), Is.SubsetOf(new[] { "decode", "denoise" }),
            "only KV-cache decoding, the denoising caches and the LLaMA rows lack one");
        var timings = TorchReference.Run(cases, "cpu", 2, 1, 0.01, null, null);
        Assert.That(timings.Error, Is.Null);
        Assert.That(timings.Errors, Is.Empty);
        Assert.That(timings.Results.Keys, Is.EquivalentTo(cases.Where(c => c.Torch is not null).Select(c => c.Id)));
        Assert.That(timings.Results.Values.All(t => t.Best > 0 && t.Runs >= 1));
    }
}
