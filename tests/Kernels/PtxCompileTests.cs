using DiffuSharp.Kernels.Gpu;
using System.Text.RegularExpressions;
using ILGPU.Runtime.Cuda;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// The GPU kernels compile to PTX with ILGPU's PTX backend on a machine without a GPU. This proves the
/// kernels stay within what ILGPU can translate for CUDA (no managed calls, supported intrinsics), which
/// the CPU simulator alone would not show.
/// </summary>
public class PtxCompileTests
{
    [TestCase(GpuKernel.Attention)]
    [TestCase(GpuKernel.AttentionFlash64)]
    [TestCase(GpuKernel.AttentionFlash128)]
    [TestCase(GpuKernel.AttentionFlashQueryGradients)]
    [TestCase(GpuKernel.AttentionFlashKeyValueGradients)]
    [TestCase(GpuKernel.MatMul)]
    [TestCase(GpuKernel.MatMul128)]
    [TestCase(GpuKernel.MatMulTF32)]
    [TestCase(GpuKernel.MatMulBF16)]
    [TestCase(GpuKernel.AttentionBackward)]
    [TestCase(GpuKernel.CrossEntropy)]
    [TestCase(GpuKernel.SumOfSquares)]
    public void TiledKernelCompilesWithSharedMemory(GpuKernel kernel)
    {
        string ptx = PtxDump.Compile(kernel);
        Assert.That(ptx, Does.Match(@"\.target sm_\d+"));
        Assert.That(ptx, Does.Contain(".entry"));
        Assert.That(ptx, Does.Contain(".shared"));
        Assert.That(ptx, Does.Contain("bar.sync"));
    }

    [TestCase(GpuKernel.Fill)]
    [TestCase(GpuKernel.CopyRows)]
    [TestCase(GpuKernel.Embedding)]
    [TestCase(GpuKernel.Gelu)]
    [TestCase(GpuKernel.Add)]
    [TestCase(GpuKernel.LayerNorm)]
    [TestCase(GpuKernel.Softmax)]
    [TestCase(GpuKernel.EmbeddingBackward)]
    [TestCase(GpuKernel.GeluBackward)]
    [TestCase(GpuKernel.LayerNormBackward)]
    [TestCase(GpuKernel.LayerNormParameters)]
    [TestCase(GpuKernel.ColumnSums)]
    [TestCase(GpuKernel.AttentionDelta)]
    [TestCase(GpuKernel.AdamW)]
    [TestCase(GpuKernel.Scale)]
    public void KernelCompiles(GpuKernel kernel)
    {
        Assert.That(PtxDump.Compile(kernel), Does.Contain(".entry"));
    }

    [TestCase(GpuKernel.RmsNorm)]
    [TestCase(GpuKernel.RmsNormBackward)]
    [TestCase(GpuKernel.RmsNormWeight)]
    [TestCase(GpuKernel.Rope)]
    [TestCase(GpuKernel.SwiGlu)]
    [TestCase(GpuKernel.SwiGluBackward)]
    public void LlamaKernelCompiles(GpuKernel kernel)
    {
        Assert.That(PtxDump.Compile(kernel), Does.Contain(".entry"));
    }

    /// <summary>RMSNorm reduces with warp shuffles and its weight gradient with float atomics; SwiGLU's sigmoid uses exp, never tanh.approx.</summary>
    [Test]
    public void LlamaKernelsUseShufflesAtomicsAndNoTanhApprox()
    {
        Assert.That(PtxDump.Compile(GpuKernel.RmsNorm), Does.Contain("shfl.sync.bfly"));
        Assert.That(PtxDump.Compile(GpuKernel.RmsNormBackward), Does.Contain("shfl.sync.bfly"));
        Assert.That(PtxDump.Compile(GpuKernel.RmsNormWeight), Does.Match(@"\b(red|atom)(\.global)?\.add\.f32"));
        Assert.That(PtxDump.Compile(GpuKernel.SwiGlu), Does.Not.Contain("tanh.approx"));
        Assert.That(PtxDump.Compile(GpuKernel.SwiGluBackward), Does.Not.Contain("tanh.approx"));
    }

    /// <summary>
    /// RoPE forms and reduces its angle in double (a float angle at position 2048 is off by up to 1e-4 rad), so
    /// the float sine and cosine (sin.approx / cos.approx, absolute error near 5e-7 on [−π, π]) see a small argument.
    /// </summary>
    [Test]
    public void RopeFormsTheAngleInDouble()
    {
        string ptx = PtxDump.Compile(GpuKernel.Rope);
        Assert.That(ptx, Does.Contain("mul.f64"));
        Assert.That(ptx, Does.Contain("cvt.rn.f32.f64"));
    }

    [Test]
    public void RowKernelsUseWarpShufflesAndGeluAvoidsTanhApprox()
    {
        Assert.That(PtxDump.Compile(GpuKernel.LayerNorm), Does.Contain("shfl.sync.bfly"));
        Assert.That(PtxDump.Compile(GpuKernel.Gelu), Does.Not.Contain("tanh.approx"));
    }

    /// <summary>dQ gathers every key block's share with float atomics; dK and dV need none (key-parallel groups).</summary>
    [Test]
    public void AttentionBackwardUsesFloatAtomicsAndNoTanhApprox()
    {
        string ptx = PtxDump.Compile(GpuKernel.AttentionBackward);
        Assert.That(ptx, Does.Match(@"\b(red|atom)(\.global)?\.add\.f32"));
        Assert.That(ptx, Does.Not.Contain("tanh.approx"));
        Assert.That(PtxDump.Compile(GpuKernel.GeluBackward), Does.Not.Contain("tanh.approx"));
    }

    [Test]
    public void CrossEntropyReducesWithWarpShuffles()
    {
        string ptx = PtxDump.Compile(GpuKernel.CrossEntropy);
        Assert.That(ptx, Does.Contain("shfl.sync.bfly"));
        Assert.That(ptx, Does.Contain("bar.sync"));
    }

    /// <summary>The sampler reduces through shuffles and shared memory, scans with shuffle-up, and computes in
    /// float32 (the one f64 register is the exact uint → float conversion of Philox's 24-bit uniform).</summary>
    [Test]
    public void SamplingScansWithShufflesInFloat32()
    {
        string ptx = PtxDump.Compile(GpuKernel.SampleTokens);
        Assert.That(ptx, Does.Contain(".shared"));
        Assert.That(ptx, Does.Contain("bar.sync"));
        Assert.That(ptx, Does.Contain("shfl.sync.bfly"));
        Assert.That(ptx, Does.Contain("shfl.sync.up"));
        Assert.That(ptx, Does.Not.Match(@"\b(add|sub|mul|fma|div|ex2|lg2)(\.[a-z]+)*\.f64"));
        Assert.That(PtxDump.Compile(GpuKernel.SampleTokens, CudaArchitecture.SM_75, CudaInstructionSet.ISA_80), Does.Contain(".target sm_75"));
    }

    [TestCase(GpuKernel.AttentionBackward)]
    [TestCase(GpuKernel.AttentionFlashQueryGradients)]
    [TestCase(GpuKernel.AttentionFlashKeyValueGradients)]
    [TestCase(GpuKernel.CrossEntropy)]
    public void BackwardKernelCompilesForAnOlderArchitecture(GpuKernel kernel)
    {
        string ptx = PtxDump.Compile(kernel, CudaArchitecture.SM_75, CudaInstructionSet.ISA_80);
        Assert.That(ptx, Does.Contain(".target sm_75"));
    }

    [TestCase(GpuKernel.Attention)]
    [TestCase(GpuKernel.AttentionFlash64)]
    [TestCase(GpuKernel.AttentionFlash128)]
    public void AttentionCompilesForAnOlderArchitecture(GpuKernel kernel)
    {
        string ptx = PtxDump.Compile(kernel, CudaArchitecture.SM_75, CudaInstructionSet.ISA_80);
        Assert.That(ptx, Does.Contain(".target sm_75"));
        Assert.That(ptx, Does.Contain(".version 8.0"));
    }

    /// <summary>
    /// The 128 x 128 float32 matmul reads its shared tiles and global operands 16 bytes at a time, and stores
    /// its outputs so where alignment allows (the scalar forms stay for the other shapes).
    /// </summary>
    [Test]
    public void MatMul128UsesVectorLoadsAndStores()
    {
        string ptx = PtxDump.Compile(GpuKernel.MatMul128);
        Assert.That(ptx, Does.Contain("ld.shared.v4.f32"));
        Assert.That(ptx, Does.Match(@"ld(\.global)?\.v4\.f32"));
        Assert.That(ptx, Does.Contain("st.shared.v4.f32"));
        Assert.That(ptx, Does.Match(@"st(\.global)?\.v4\.f32"));
    }

    /// <summary>
    /// The tensor-core kernels are the inline PTX mma instructions (16 per instruction step, two steps per K
    /// slice) on accumulators declared in PTX registers, for a target that has them (sm_80+), with no trace of
    /// the emulation that the CPU simulator runs instead.
    /// </summary>
    [TestCase(GpuKernel.MatMulTF32, "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32")]
    [TestCase(GpuKernel.MatMulBF16, "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32")]
    public void TensorCoreKernelsIssueMma(GpuKernel kernel, string instruction)
    {
        string ptx = PtxDump.Compile(kernel);
        Assert.That(Regex.Count(ptx, Regex.Escape(instruction)), Is.EqualTo(32));
        Assert.That(Regex.Count(ptx, @"mma\.sync"), Is.EqualTo(32));
        Assert.That(ptx, Does.Contain(".reg .f32 dsacc<64>;"));
        var target = Regex.Match(ptx, @"\.target sm_(\d+)");
        Assert.That(target.Success && int.Parse(target.Groups[1].Value) >= 80, Is.True, "target sm_80 or newer");
        Assert.That(ptx, Does.Contain("ld.shared.b32"), "fragments come from shared memory");
        Assert.That(ptx, Does.Not.Contain(".local .align 8 .b8 __local_depot0[256]"), "no emulated accumulators");
        Assert.That(ptx, Does.Match(@"ld(\.global)?\.v4\.f32"), "16-byte global loads");
    }

    /// <summary>TF32 tiles whose stored rows run along K go to shared memory 16 bytes at a time.</summary>
    [Test]
    public void Tf32KernelStoresItsTilesAsVectors()
    {
        Assert.That(PtxDump.Compile(GpuKernel.MatMulTF32), Does.Contain("st.shared.v4.b32"));
    }

    /// <summary>
    /// The flash attention kernels, generic and as specialized for 64- and 128-float heads (the forward also as evaluation
    /// runs it, bidirectional with per-row key lengths): 16-byte shared loads for
    /// the register tiles, butterfly shuffles for the forward's row maxima and sums, group barriers (and a warp barrier
    /// where a warp hands its probabilities to itself), 16-byte global loads and stores, no local memory (nothing
    /// spilled by ILGPU), shared memory within CUDA's 48 KB static limit, launch bounds for four groups a
    /// multiprocessor, and no atomics (every group owns the rows it writes).
    /// </summary>
    [TestCase(GpuKernel.AttentionFlash64, 128, true, true)]
    [TestCase(GpuKernel.AttentionFlash64Head64, 128, true, true)]
    [TestCase(GpuKernel.AttentionFlash128, 96, true, false)]
    [TestCase(GpuKernel.AttentionFlash128Head128, 96, true, false)]
    [TestCase(GpuKernel.AttentionFlash64Head64KeyLengths, 128, true, true)]
    [TestCase(GpuKernel.AttentionFlash128Head128KeyLengths, 96, true, false)]
    [TestCase(GpuKernel.AttentionFlashQueryGradients, 96, false, true)]
    [TestCase(GpuKernel.AttentionFlashQueryGradientsHead64, 96, false, true)]
    [TestCase(GpuKernel.AttentionFlashKeyValueGradients, 96, false, true)]
    [TestCase(GpuKernel.AttentionFlashKeyValueGradientsHead64, 96, false, true)]
    public void FlashAttentionUsesRegisterTilesAndFitsSharedMemory(GpuKernel kernel, int threads, bool shuffles, bool warpBarrier)
    {
        string ptx = PtxDump.Compile(kernel);
        Assert.That(ptx, Does.Contain("ld.shared.v4.f32"));
        Assert.That(ptx, Does.Contain("st.shared.v4.f32"));
        Assert.That(ptx.Contains("shfl.sync.bfly"), Is.EqualTo(shuffles));
        Assert.That(ptx, Does.Contain("bar.sync"));
        Assert.That(ptx.Contains("bar.warp.sync"), Is.EqualTo(warpBarrier));
        Assert.That(ptx, Does.Match(@"ld(\.global)?\.v4\.f32"));
        Assert.That(ptx, Does.Match(@"st(\.global)?\.v4\.f32"));
        Assert.That(ptx, Does.Not.Contain(".local"));
        Assert.That(ptx, Does.Not.Match(@"\b(red|atom)\."));
        Assert.That(ptx, Does.Contain($".maxntid {threads}, 1, 1"));
        Assert.That(ptx, Does.Contain(".minnctapersm 4"));
        long shared = Regex.Matches(ptx, @"\.shared\s+\.align\s+\d+\s+\.b8\s+\w+\[(\d+)\]").Sum(m => long.Parse(m.Groups[1].Value));
        Assert.That(shared, Is.GreaterThan(0).And.LessThanOrEqualTo(48 * 1024));
    }

    /// <summary>
    /// Specialized for GPT-2's heads, the flash kernel's register tiles show in the PTX: one S step (8 shared quads for
    /// 64 products) and eight unrolled P·V steps (3 quads for 32 products each), so at least 8 float multiplies (which
    /// ptxas contracts with their adds into FMAs) per 16-byte shared load.
    /// </summary>
    [Test]
    public void FlashAttentionMultipliesEightTimesPerSharedLoad()
    {
        string ptx = PtxDump.Compile(GpuKernel.AttentionFlash64Head64);
        int products = Regex.Count(ptx, @"\b(fma\.rn|mul)\.f32");
        int loads = Regex.Count(ptx, @"ld\.shared\.v4\.f32");
        Assert.That(loads, Is.GreaterThanOrEqualTo(8 + 8 * 3));
        Assert.That(products, Is.GreaterThanOrEqualTo(8 * loads));
    }

    [Test]
    public void AttentionPtxCanBeWrittenToAFile()
    {
        string path = Path.Combine(Path.GetTempPath(), $"diffusharp-attention-{Guid.NewGuid():N}.ptx");
        try
        {
            File.WriteAllText(path, PtxDump.Compile(GpuKernel.Attention));
            Assert.That(new FileInfo(path).Length, Is.GreaterThan(1000));
        }
        finally
        {
            File.Delete(path);
        }
    }
}
