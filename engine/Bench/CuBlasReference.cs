using DiffuSharp.Kernels;
using DiffuSharp.Runtime;
using ILGPU.Runtime.Cuda;

namespace DiffuSharp.Bench;

/// <summary>
/// cuBLAS SGEMM through ILGPU.Algorithms, on our CUDA tensors in place: the CUDA matmul reference.
/// ILGPU.Algorithms knows libcublas.so.10 to .12 by name; GPU machines with CUDA 13 carry
/// libcublas.so.13 (often only inside PyTorch's wheel), so the names are resolved here: $DIFFU_CUBLAS
/// first, then .13, .12, .11 (same ABI for the calls used).
/// </summary>
public sealed class CuBlasReference : IDisposable
{
    readonly CuBlas blas;

    CuBlasReference(CuBlas blas) => this.blas = blas;

    /// <summary>cuBLAS for the device, or null with the reason when it is not a CUDA device or the library does not load.</summary>
    public static CuBlasReference? TryCreate(Device device, out string? why)
    {
        why = null;
        if (device is not IlgpuDevice { Backend: IlgpuBackend.Cuda } gpu)
        {
            why = "cuBLAS needs a CUDA device";
            return null;
        }
        RegisterResolver();
        try
        {
            var blas = new CuBlas((CudaAccelerator)gpu.Accelerator) { PointerMode = CuBlasPointerMode.Host };
            return new CuBlasReference(blas);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or CuBlasException)
        {
            why = $"cuBLAS did not load ({e.Message}); set DIFFU_CUBLAS to libcublas.so.N";
            return null;
        }
    }

    /// <summary>cuBLAS's CUBLAS_TF32_TENSOR_OP_MATH, which ILGPU.Algorithms' enum does not name.</summary>
    const CuBlasMathMode Tf32TensorOpMath = (CuBlasMathMode)3;

    public string Description => $"cuBLAS {blas.Version}";

    /// <summary>SGEMM runs in float32 or, with the TF32 math mode, on the tensor cores; a BF16 GEMM needs
    /// cublasGemmEx, which ILGPU.Algorithms does not expose (PyTorch is the BF16 reference).</summary>
    public bool Supports(MatMulPrecision precision) => precision is MatMulPrecision.F32 or MatMulPrecision.TF32;

    /// <summary>c[M, N] = beta c + a · b, row-major; a is [M, K] (or [K, M] with transA), b is [K, N] (or [N, K] with transB).
    /// cuBLAS is column-major, so it computes cᵀ = bᵀ · aᵀ on the same buffers.</summary>
    public void Gemm(bool transA, bool transB, int m, int n, int k, Tensor a, Tensor b, float beta, Tensor c, MatMulPrecision precision = MatMulPrecision.F32)
    {
        if (!Supports(precision)) throw new ArgumentException($"cuBLAS SGEMM has no {precision} mode", nameof(precision));
        var mode = precision == MatMulPrecision.TF32 ? Tf32TensorOpMath : CuBlasMathMode.DefaultMath;
        if (blas.MathMode != mode) blas.MathMode = mode;
        var opA = transA ? CuBlasOperation.Transpose : CuBlasOperation.NonTranspose;
        var opB = transB ? CuBlasOperation.Transpose : CuBlasOperation.NonTranspose;
        blas.Gemm(opB, opA, n, m, k, 1f, IlgpuDevice.View(b), transB ? k : n, IlgpuDevice.View(a), transA ? m : k, beta, IlgpuDevice.View(c), n);
    }

    public void Dispose() => blas.Dispose();

    static void RegisterResolver() =>
        NativeAliases.Register(typeof(CuBlas).Assembly, name => name.Contains("cublas", StringComparison.OrdinalIgnoreCase)
            ? [Environment.GetEnvironmentVariable("DIFFU_CUBLAS"), name, "libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"]
            : null);
}
