using System.Reflection;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>The kernels in this folder, by name.</summary>
public enum GpuKernel
{
    Fill, CopyRows, Embedding, Gelu, Add, LayerNorm, Softmax, MatMul, MatMul128, MatMulTF32, MatMulBF16, Attention,
    AttentionFlash64, AttentionFlash128, AttentionFlash64Head64, AttentionFlash128Head128,
    AttentionFlash64Head64KeyLengths, AttentionFlash128Head128KeyLengths,
    AttentionFlashQueryGradients, AttentionFlashKeyValueGradients, AttentionFlashQueryGradientsHead64, AttentionFlashKeyValueGradientsHead64,
    EmbeddingBackward, GeluBackward, LayerNormBackward, LayerNormParameters, ColumnSums,
    AttentionDelta, AttentionBackward, CrossEntropy, AdamW, Scale, SumOfSquares, SampleTokens,
    RmsNorm, RmsNormBackward, RmsNormWeight, Rope, SwiGlu, SwiGluBackward,
}

/// <summary>
/// Compiles a kernel to PTX text with ILGPU's PTX backend. Needs no GPU and no CUDA driver, so the
/// generated code can be inspected (and shown to compile) on any machine.
/// </summary>
public static class PtxDump
{
    /// <summary>
    /// PTX for an H100 (sm_90) with PTX ISA 8.8, ILGPU's newest. ILGPU writes the lowest `.target` that has
    /// every capability the architecture offers it (sm_80 here); the driver JIT-compiles that for sm_90.
    /// </summary>
    public static string Compile(GpuKernel kernel) => Compile(kernel, CudaArchitecture.SM_90, CudaInstructionSet.ISA_88);

    public static string Compile(GpuKernel kernel, CudaArchitecture architecture, CudaInstructionSet instructionSet)
    {
        using var context = Context.Create(builder => builder.EnableAlgorithms());
        using var backend = new PTXBackend(context, new CudaCapabilityContext(architecture), architecture, instructionSet, nvvmAPI: null);
        var entry = EntryPointDescription.FromExplicitlyGroupedKernel(Method(kernel));
        var specialization = LaunchBounds(kernel);
        var compiled = (PTXCompiledKernel)backend.Compile(entry, specialization);
        return compiled.PTXAssembly;
    }

    /// <summary>The launch bounds <see cref="GpuKernels"/> loads a kernel with (none for most).</summary>
    static KernelSpecialization LaunchBounds(GpuKernel kernel) => kernel switch
    {
        GpuKernel.AttentionFlash64 or GpuKernel.AttentionFlash64Head64 or GpuKernel.AttentionFlash64Head64KeyLengths
            => FlashAttentionKernels.LaunchBounds(FlashAttentionKernels.SmallWarps),
        GpuKernel.AttentionFlash128 or GpuKernel.AttentionFlash128Head128 or GpuKernel.AttentionFlash128Head128KeyLengths
            => FlashAttentionKernels.LaunchBounds(FlashAttentionKernels.LargeWarps),
        GpuKernel.AttentionFlashQueryGradients or GpuKernel.AttentionFlashKeyValueGradients
            or GpuKernel.AttentionFlashQueryGradientsHead64 or GpuKernel.AttentionFlashKeyValueGradientsHead64
            => FlashAttentionKernels.LaunchBounds(FlashAttentionBackwardKernels.Warps),
        _ => KernelSpecialization.Empty,
    };

    static MethodInfo Method(GpuKernel kernel)
    {
        var (type, name) = kernel switch
        {
            GpuKernel.Fill => (typeof(ElementwiseKernels), nameof(ElementwiseKernels.Fill)),
            GpuKernel.CopyRows => (typeof(ElementwiseKernels), nameof(ElementwiseKernels.CopyRows)),
            GpuKernel.Embedding => (typeof(ElementwiseKernels), nameof(ElementwiseKernels.Embedding)),
            GpuKernel.Gelu => (typeof(ElementwiseKernels), nameof(ElementwiseKernels.Gelu)),
            GpuKernel.Add => (typeof(ElementwiseKernels), nameof(ElementwiseKernels.Add)),
            GpuKernel.LayerNorm => (typeof(RowKernels), nameof(RowKernels.LayerNorm)),
            GpuKernel.Softmax => (typeof(RowKernels), nameof(RowKernels.Softmax)),
            GpuKernel.MatMul => (typeof(MatMulKernels), nameof(MatMulKernels.Gemm)),
            GpuKernel.MatMul128 => (typeof(MatMul128Kernels), nameof(MatMul128Kernels.Gemm)),
            GpuKernel.MatMulTF32 => (typeof(TensorCoreMatMulKernels), nameof(TensorCoreMatMulKernels.Tf32Gemm)),
            GpuKernel.MatMulBF16 => (typeof(TensorCoreMatMulKernels), nameof(TensorCoreMatMulKernels.Bf16Gemm)),
            GpuKernel.Attention => (typeof(AttentionKernels), nameof(AttentionKernels.Forward)),
            GpuKernel.AttentionFlash64 => (typeof(FlashAttentionKernels), nameof(FlashAttentionKernels.Forward64)),
            GpuKernel.AttentionFlash128 => (typeof(FlashAttentionKernels), nameof(FlashAttentionKernels.Forward128)),
            GpuKernel.AttentionFlash64Head64 => (typeof(FlashAttentionKernels), nameof(FlashAttentionKernels.Forward64Head64)),
            GpuKernel.AttentionFlash128Head128 => (typeof(FlashAttentionKernels), nameof(FlashAttentionKernels.Forward128Head128)),
            GpuKernel.AttentionFlash64Head64KeyLengths => (typeof(FlashAttentionKernels), nameof(FlashAttentionKernels.Forward64Head64KeyLengths)),
            GpuKernel.AttentionFlash128Head128KeyLengths => (typeof(FlashAttentionKernels), nameof(FlashAttentionKernels.Forward128Head128KeyLengths)),
            GpuKernel.AttentionFlashQueryGradients => (typeof(FlashAttentionBackwardKernels), nameof(FlashAttentionBackwardKernels.QueryGradients)),
            GpuKernel.AttentionFlashKeyValueGradients => (typeof(FlashAttentionBackwardKernels), nameof(FlashAttentionBackwardKernels.KeyValueGradients)),
            GpuKernel.AttentionFlashQueryGradientsHead64 => (typeof(FlashAttentionBackwardKernels), nameof(FlashAttentionBackwardKernels.QueryGradientsHead64)),
            GpuKernel.AttentionFlashKeyValueGradientsHead64 => (typeof(FlashAttentionBackwardKernels), nameof(FlashAttentionBackwardKernels.KeyValueGradientsHead64)),
            GpuKernel.EmbeddingBackward => (typeof(BackwardKernels), nameof(BackwardKernels.Embedding)),
            GpuKernel.GeluBackward => (typeof(BackwardKernels), nameof(BackwardKernels.Gelu)),
            GpuKernel.LayerNormBackward => (typeof(BackwardKernels), nameof(BackwardKernels.LayerNormInput)),
            GpuKernel.LayerNormParameters => (typeof(BackwardKernels), nameof(BackwardKernels.LayerNormParameters)),
            GpuKernel.ColumnSums => (typeof(BackwardKernels), nameof(BackwardKernels.ColumnSums)),
            GpuKernel.AttentionDelta => (typeof(AttentionBackwardKernels), nameof(AttentionBackwardKernels.Delta)),
            GpuKernel.AttentionBackward => (typeof(AttentionBackwardKernels), nameof(AttentionBackwardKernels.Backward)),
            GpuKernel.CrossEntropy => (typeof(CrossEntropyKernels), nameof(CrossEntropyKernels.Forward)),
            GpuKernel.AdamW => (typeof(OptimizerKernels), nameof(OptimizerKernels.AdamW)),
            GpuKernel.Scale => (typeof(OptimizerKernels), nameof(OptimizerKernels.Scale)),
            GpuKernel.SumOfSquares => (typeof(OptimizerKernels), nameof(OptimizerKernels.SumOfSquares)),
            GpuKernel.SampleTokens => (typeof(SamplingKernels), nameof(SamplingKernels.Sample)),
            GpuKernel.RmsNorm => (typeof(LlamaKernels), nameof(LlamaKernels.RmsNorm)),
            GpuKernel.RmsNormBackward => (typeof(LlamaKernels), nameof(LlamaKernels.RmsNormInput)),
            GpuKernel.RmsNormWeight => (typeof(LlamaKernels), nameof(LlamaKernels.RmsNormWeight)),
            GpuKernel.Rope => (typeof(LlamaKernels), nameof(LlamaKernels.Rope)),
            GpuKernel.SwiGlu => (typeof(LlamaKernels), nameof(LlamaKernels.SwiGlu)),
            GpuKernel.SwiGluBackward => (typeof(LlamaKernels), nameof(LlamaKernels.SwiGluBackward)),
            _ => throw new ArgumentOutOfRangeException(nameof(kernel)),
        };
        return type.GetMethod(name, BindingFlags.Static | BindingFlags.NonPublic | BindingFlags.Public)
            ?? throw new InvalidOperationException($"kernel method {type.Name}.{name} not found");
    }
}
