using ILGPU;
using ILGPU.Runtime;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>
/// The ILGPU kernels of one accelerator: each is compiled on first use and cached, and each launch
/// method picks its grid. Arguments are assumed valid (the engine's Device checks them): a kernel
/// must never fault, since an exception inside the ILGPU CPU simulator ends the process.
/// </summary>
public sealed class GpuKernels : IDisposable
{
    /// <summary>The largest group any kernel here launches (the matmul's 16 x 16 threads).</summary>
    public const int MaxGroupSize = MatMulKernels.Threads;

    /// <summary>The largest head dimension the attention kernel holds in shared memory.</summary>
    public const int MaxAttentionHeadDim = AttentionKernels.MaxHeadDim;

    const int FlatGroupSize = 256;
    const int FlatGroupsPerMultiprocessor = 8;
    const int RowWarpsPerGroup = 4;

    readonly Accelerator accelerator;
    readonly MemoryBuffer1D<float, Stride1D.Dense> noFloats;
    readonly MemoryBuffer1D<byte, Stride1D.Dense> noBytes;

    Action<KernelConfig, ArrayView<float>, float>? fill;
    Action<KernelConfig, ArrayView<float>, ulong, ulong>? uniform;
    Action<KernelConfig, ArrayView<float>, int, ArrayView<float>, int, int, int>? copyRows;
    Action<KernelConfig, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>? embedding;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>>? gelu;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>>? add;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, float>? layerNorm;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, int, int>? softmax;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>? matMul;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>? matMulTransposed;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<byte>, AttentionArgs>? attention;

    public GpuKernels(Accelerator accelerator)
    {
        if (accelerator.MaxNumThreadsPerGroup < MaxGroupSize)
            throw new NotSupportedException($"{accelerator.Name} allows {accelerator.MaxNumThreadsPerGroup} threads a group; the kernels need {MaxGroupSize}");
        this.accelerator = accelerator;
        noFloats = accelerator.Allocate1D<float>(1);
        noBytes = accelerator.Allocate1D<byte>(1);
    }

    public Accelerator Accelerator => accelerator;

    /// <summary>A bounded grid for grid-stride loops over <paramref name="length"/> elements.</summary>
    KernelConfig Flat(long length)
    {
        long needed = (length + FlatGroupSize - 1) / FlatGroupSize;
        long cap = (long)accelerator.NumMultiprocessors * FlatGroupsPerMultiprocessor;
        return new KernelConfig((int)Math.Max(1, Math.Min(needed, cap)), FlatGroupSize);
    }

    /// <summary>One warp per row, several warps per group.</summary>
    KernelConfig PerRow(int rows) =>
        new((rows + RowWarpsPerGroup - 1) / RowWarpsPerGroup, RowWarpsPerGroup * accelerator.WarpSize);

    public void Fill(ArrayView<float> data, float value) =>
        (fill ??= accelerator.LoadStreamKernel<ArrayView<float>, float>(ElementwiseKernels.Fill))(Flat(data.Length), data, value);

    /// <summary>data[i] = Philox.Uniform(seed, stream, i).</summary>
    public void Uniform(ArrayView<float> data, ulong seed, ulong stream) =>
        (uniform ??= accelerator.LoadStreamKernel<ArrayView<float>, ulong, ulong>(ElementwiseKernels.Uniform))(Flat(data.Length), data, seed, stream);

    /// <summary>Row r of src (r * srcStride) goes to row r of dst (r * dstStride); both views start at row 0.</summary>
    public void CopyRows(ArrayView<float> src, int srcStride, ArrayView<float> dst, int dstStride, int rows, int columns) =>
        (copyRows ??= accelerator.LoadStreamKernel<ArrayView<float>, int, ArrayView<float>, int, int, int>(ElementwiseKernels.CopyRows))(
            Flat((long)rows * columns), src, srcStride, dst, dstStride, rows, columns);

    /// <summary>output[b, t, :] = wte[ids[b, t], :] + wpe[positionOffset + t, :]; output is [B, T, C].</summary>
    public void Embedding(ArrayView<int> ids, ArrayView<float> wte, ArrayView<float> wpe, ArrayView<float> output,
        int length, int channels, int positionOffset) =>
        (embedding ??= accelerator.LoadStreamKernel<ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>(ElementwiseKernels.Embedding))(
            Flat(output.Length), ids, wte, wpe, output, length, channels, positionOffset);

    public void Gelu(ArrayView<float> x, ArrayView<float> output) =>
        (gelu ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>>(ElementwiseKernels.Gelu))(Flat(x.Length), x, output);

    /// <summary>output = a + b; output may be a or b.</summary>
    public void Add(ArrayView<float> a, ArrayView<float> b, ArrayView<float> output) =>
        (add ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>>(ElementwiseKernels.Add))(Flat(output.Length), a, b, output);

    public void LayerNorm(ArrayView<float> x, ArrayView<float> weight, ArrayView<float> bias, ArrayView<float> output,
        ArrayView<float> mean, ArrayView<float> rstd, int rows, int channels, float eps) =>
        (layerNorm ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, float>(RowKernels.LayerNorm))(
            PerRow(rows), x, weight, bias, output, mean, rstd, rows, channels, eps);

    public void Softmax(ArrayView<float> x, ArrayView<float> output, int rows, int columns) =>
        (softmax ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int, int>(RowKernels.Softmax))(PerRow(rows), x, output, rows, columns);

    /// <summary>output[M, N] = x[M, K] · w[K, N] (+ bias[N] when <paramref name="bias"/> is given).</summary>
    public void MatMul(ArrayView<float> x, ArrayView<float> w, ArrayView<float>? bias, ArrayView<float> output, int m, int k, int n) =>
        (matMul ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>(MatMulKernels.Forward))(
            new KernelConfig(MatMulKernels.Groups(m, n), MatMulKernels.Threads), x, w, bias ?? noFloats.View, output, m, k, n, bias.HasValue ? 1 : 0);

    /// <summary>output[M, N] = x[M, K] · w[N, K]ᵀ (+ bias[N] when <paramref name="bias"/> is given).</summary>
    public void MatMulTransposed(ArrayView<float> x, ArrayView<float> w, ArrayView<float>? bias, ArrayView<float> output, int m, int k, int n) =>
        (matMulTransposed ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>(MatMulKernels.ForwardTransposed))(
            new KernelConfig(MatMulKernels.Groups(m, n), MatMulKernels.Threads), x, w, bias ?? noFloats.View, output, m, k, n, bias.HasValue ? 1 : 0);

    /// <summary>
    /// Attention over q, k, v views that start at the first element of batch 0 (strides from
    /// <paramref name="shape"/>); output [B, Tq, H * D]; lse [B, H, Tq] when given; allow [L, L] for
    /// <see cref="AttentionMaskMode.Explicit"/>. HeadDim must not exceed <see cref="MaxAttentionHeadDim"/>.
    /// </summary>
    public void Attention(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> output,
        ArrayView<float>? lse, in AttentionShape shape, AttentionMaskMode mode, ArrayView<byte>? allow) =>
        (attention ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<byte>, AttentionArgs>(AttentionKernels.Forward))(
            new KernelConfig(AttentionKernels.Groups(shape), AttentionKernels.Threads), q, k, v, output,
            lse ?? noFloats.View, allow ?? noBytes.View, new AttentionArgs(shape, mode, lse.HasValue));

    public void Dispose()
    {
        noFloats.Dispose();
        noBytes.Dispose();
    }
}
