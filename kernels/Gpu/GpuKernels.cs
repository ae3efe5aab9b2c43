using ILGPU;
using ILGPU.Runtime;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>The matmul kernels, as <see cref="GpuKernels.ChooseMatMulKernel"/> picks them.</summary>
public enum MatMulKernel
{
    /// <summary>Float32, 64 x 64 tiles of 4 x 4 register blocks: for shapes too small to give every multiprocessor a 128 x 128 tile.</summary>
    Tiled64,
    /// <summary>Float32, 128 x 128 tiles of 8 x 8 register blocks, vectorized and double-buffered: large shapes.</summary>
    Tiled128,
    /// <summary>Tensor cores, inputs rounded to TF32, float32 accumulation (CUDA, compute capability 8.0+).</summary>
    TensorCoreTF32,
    /// <summary>Tensor cores, inputs rounded to BF16, float32 accumulation (CUDA, compute capability 8.0+).</summary>
    TensorCoreBF16,
}

/// <summary>The attention forward kernels, as <see cref="GpuKernels.ChooseAttentionKernel"/> picks them.</summary>
public enum AttentionKernel
{
    /// <summary>32 queries a group, 16-key tiles, softmax through shared memory: any head dim up to 128, any warp width.</summary>
    Tiled,
    /// <summary>FlashAttention-2 style, 64 queries (4 warps) in register tiles: head dims up to 64 that are multiples of 4.</summary>
    Flash64,
    /// <summary>FlashAttention-2 style, 48 queries (3 warps) in register tiles: head dims up to 128 that are multiples of 4.</summary>
    Flash128,
}

/// <summary>The attention backward kernels, as <see cref="GpuKernels.ChooseAttentionBackwardKernel"/> picks them.</summary>
public enum AttentionBackwardKernel
{
    /// <summary>One group per (batch, kv head, 16 keys), dQ through float atomics: any head dim up to 128, any warp width.</summary>
    Tiled,
    /// <summary>A query-parallel dQ kernel and a key-parallel dK/dV kernel on 48-row register tiles, no atomics: head dims up to 64 that are multiples of 4.</summary>
    Flash64,
}

/// <summary>
/// The ILGPU kernels of one accelerator: each is compiled on first use and cached, and each launch
/// method picks its grid. Arguments are assumed valid (the engine's Device checks them): a kernel
/// must never fault, since an exception inside the ILGPU CPU simulator ends the process.
/// </summary>
public sealed class GpuKernels : IDisposable
{
    /// <summary>The largest group any kernel here launches (the matmuls' 256 threads).</summary>
    public const int MaxGroupSize = MatMulKernels.Threads;

    /// <summary>The largest head dimension the attention kernel holds in shared memory.</summary>
    public const int MaxAttentionHeadDim = AttentionKernels.MaxHeadDim;

    const int FlatGroupSize = 256;
    const int FlatGroupsPerMultiprocessor = 8;
    const int RowWarpsPerGroup = 4;
    const int CrossEntropyThreads = 256;
    /// <summary>A column-sum thread adds at least this many rows before its atomic add.</summary>
    const int MinRowsPerColumnChunk = 32;

    readonly Accelerator accelerator;
    readonly MemoryBuffer1D<float, Stride1D.Dense> noFloats;
    readonly MemoryBuffer1D<byte, Stride1D.Dense> noBytes;
    readonly MemoryBuffer1D<int, Stride1D.Dense> noInts;

    Action<KernelConfig, ArrayView<float>, float>? fill;
    Action<KernelConfig, ArrayView<float>, ulong, ulong>? uniform;
    Action<KernelConfig, ArrayView<float>, int, ArrayView<float>, int, int, int>? copyRows;
    Action<KernelConfig, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>? embedding;
    Action<KernelConfig, ArrayView<int>, ArrayView<ushort>, int, ArrayView<float>, ArrayView<float>, int, int, int, int>? embedding16;
    Action<KernelConfig, ArrayView<ushort>, ArrayView<float>, int>? widen;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>>? gelu;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>>? add;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, float>? layerNorm;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, int, int>? softmax;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs, SpecializedValue<int>>? gemm64, gemm128, gemmTf32, gemmBf16;
    readonly bool hasTensorCoreInstructions;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<byte>, ArrayView<int>,
        AttentionArgs>? attention;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<byte>, ArrayView<int>,
        AttentionArgs, SpecializedValue<int>>? flash64, flash128;
    Action<KernelConfig, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>? embeddingBackward;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>>? geluBackward;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>? layerNormInput;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>? layerNormParameters;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, int, int, int>? columnSums;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>? attentionDelta;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
        ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<byte>, AttentionArgs>? attentionBackward;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
        ArrayView<float>, ArrayView<byte>, AttentionArgs, SpecializedValue<int>>? flashQueryGradients;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
        ArrayView<float>, ArrayView<float>, ArrayView<byte>, AttentionArgs, SpecializedValue<int>>? flashKeyValueGradients;
    Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>? crossEntropy;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AdamWArgs>? adamW;
    Action<KernelConfig, ArrayView<float>, float>? scale;
    Action<KernelConfig, ArrayView<float>, ArrayView<double>>? sumOfSquares;
    Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, SamplingArgs>? sampleTokens;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, float>? rmsNorm;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>? rmsNormInput;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>? rmsNormWeight;
    Action<KernelConfig, ArrayView<float>, int, int, int, int, int, int, double, float>? rope;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>>? swiGlu;
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>? swiGluBackward;
    MemoryBuffer1D<double, Stride1D.Dense>? partialSums;

    public GpuKernels(Accelerator accelerator)
    {
        if (accelerator.MaxNumThreadsPerGroup < MaxGroupSize)
            throw new NotSupportedException($"{accelerator.Name} allows {accelerator.MaxNumThreadsPerGroup} threads a group; the kernels need {MaxGroupSize}");
        this.accelerator = accelerator;
        hasTensorCoreInstructions = accelerator.AcceleratorType == AcceleratorType.Cuda;
        noFloats = accelerator.Allocate1D<float>(1);
        noBytes = accelerator.Allocate1D<byte>(1);
        noInts = accelerator.Allocate1D<int>(1);
    }

    public Accelerator Accelerator => accelerator;

    /// <summary>The most groups a grid-stride launch uses: enough to fill every multiprocessor.</summary>
    int MaxFlatGroups => accelerator.NumMultiprocessors * FlatGroupsPerMultiprocessor;

    /// <summary>A bounded grid for grid-stride loops over <paramref name="length"/> elements.</summary>
    KernelConfig Flat(long length)
    {
        long needed = (length + FlatGroupSize - 1) / FlatGroupSize;
        return new KernelConfig((int)Math.Max(1, Math.Min(needed, MaxFlatGroups)), FlatGroupSize);
    }

    /// <summary>
    /// A grid of (column blocks of 256) x (row chunks) for column sums: chunks of at least
    /// <see cref="MinRowsPerColumnChunk"/> rows, and no more groups than a grid-stride launch would use.
    /// </summary>
    KernelConfig ColumnChunks(int rows, int columns, out int rowsPerGroup)
    {
        int columnBlocks = (columns + FlatGroupSize - 1) / FlatGroupSize;
        int chunks = Math.Min((rows + MinRowsPerColumnChunk - 1) / MinRowsPerColumnChunk, Math.Max(1, MaxFlatGroups / columnBlocks));
        rowsPerGroup = (rows + chunks - 1) / chunks;
        chunks = (rows + rowsPerGroup - 1) / rowsPerGroup;
        return new KernelConfig(columnBlocks * chunks, FlatGroupSize);
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

    /// <summary>output[b, t, :] = wte[ids[b, t], :] (+ wpe[positionOffset + t, :] when wpe is given); output is [B, T, C].</summary>
    public void Embedding(ArrayView<int> ids, ArrayView<float> wte, ArrayView<float>? wpe, ArrayView<float> output,
        int length, int channels, int positionOffset) =>
        (embedding ??= accelerator.LoadStreamKernel<ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>(ElementwiseKernels.Embedding))(
            Flat(output.Length), ids, wte, wpe ?? noFloats.View, output, length, channels, positionOffset, wpe is null ? 0 : 1);

    /// <summary>output = bits widened from BF16 or F16 to float32.</summary>
    public void Widen(ArrayView<ushort> bits, WeightFormat format, ArrayView<float> output) =>
        (widen ??= accelerator.LoadStreamKernel<ArrayView<ushort>, ArrayView<float>, int>(ElementwiseKernels.Widen))(
            Flat(output.Length), bits, output, Half(format));

    /// <summary><see cref="Embedding"/> with a BF16 or F16 token table.</summary>
    public void Embedding16(ArrayView<int> ids, ArrayView<ushort> wte, WeightFormat format, ArrayView<float>? wpe, ArrayView<float> output,
        int length, int channels, int positionOffset) =>
        (embedding16 ??= accelerator.LoadStreamKernel<ArrayView<int>, ArrayView<ushort>, int, ArrayView<float>, ArrayView<float>, int, int, int, int>(ElementwiseKernels.Embedding16))(
            Flat(output.Length), ids, wte, Half(format), wpe ?? noFloats.View, output, length, channels, positionOffset, wpe is null ? 0 : 1);

    static int Half(WeightFormat format) => format switch
    {
        WeightFormat.BF16 => 0,
        WeightFormat.F16 => 1,
        _ => throw new ArgumentException($"{format} is not a 16-bit format"),
    };

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
    public void MatMul(ArrayView<float> x, ArrayView<float> w, ArrayView<float>? bias, ArrayView<float> output, int m, int k, int n,
        MatMulPrecision precision) =>
        Gemm(x, w, bias, output, m, k, n, false, false, bias.HasValue ? GemmEpilogue.StoreBias : GemmEpilogue.Store, ChooseMatMulKernel(m, n, precision));

    /// <summary>output[M, N] = x[M, K] · w[N, K]ᵀ (+ bias[N] when <paramref name="bias"/> is given).</summary>
    public void MatMulTransposed(ArrayView<float> x, ArrayView<float> w, ArrayView<float>? bias, ArrayView<float> output, int m, int k, int n,
        MatMulPrecision precision) =>
        Gemm(x, w, bias, output, m, k, n, false, true, bias.HasValue ? GemmEpilogue.StoreBias : GemmEpilogue.Store, ChooseMatMulKernel(m, n, precision));

    /// <summary>
    /// The kernel for an [M, N] output: the tensor-core kernel of the precision, else for float32 the 128 x 128
    /// tiles when they are at least as many as the multiprocessors (each gets one 256-thread group of 64 FMAs
    /// per shared load), else the 64 x 64 tiles, whose four times as many groups keep a GPU busy on small
    /// shapes (decoding a few rows, a narrow head) where 128 x 128 tiles would leave most multiprocessors idle.
    /// </summary>
    public MatMulKernel ChooseMatMulKernel(int m, int n, MatMulPrecision precision) => precision switch
    {
        MatMulPrecision.TF32 => MatMulKernel.TensorCoreTF32,
        MatMulPrecision.BF16 => MatMulKernel.TensorCoreBF16,
        _ => MatMul128Kernels.Groups(m, n) >= accelerator.NumMultiprocessors ? MatMulKernel.Tiled128 : MatMulKernel.Tiled64,
    };

    /// <summary>
    /// output[M, N] (=, = + bias, +=) a · b on the given kernel, with a stored [M, K] (or [K, M] when
    /// <paramref name="transposeA"/>) and b stored [K, N] (or [N, K] when <paramref name="transposeB"/>).
    /// 16-byte loads and stores are used for each operand whose rows are a multiple of 4 floats long and whose
    /// view starts 16-byte aligned (device buffers themselves start at least 256-byte aligned). The tensor-core
    /// kernels run their instructions on CUDA only; on other accelerators they emulate them (slowly: for tests;
    /// a device refuses TF32/BF16 precision there).
    /// </summary>
    public void Gemm(ArrayView<float> a, ArrayView<float> b, ArrayView<float>? bias, ArrayView<float> output,
        int m, int k, int n, bool transposeA, bool transposeB, GemmEpilogue epilogue, MatMulKernel kernel)
    {
        var biasView = bias ?? noFloats.View;
        bool vectorA = (transposeA ? m : k) % 4 == 0 && Aligned(a);
        bool vectorB = (transposeB ? k : n) % 4 == 0 && Aligned(b);
        bool vectorC = n % 4 == 0 && Aligned(output) && (epilogue != GemmEpilogue.StoreBias || Aligned(biasView));
        var (launch, groups, tileN) = kernel switch
        {
            MatMulKernel.Tiled64 => (gemm64 ??= LoadGemm(MatMulKernels.Gemm), MatMulKernels.Groups(m, n), MatMulKernels.TileN),
            MatMulKernel.Tiled128 => (gemm128 ??= LoadGemm(MatMul128Kernels.Gemm), MatMul128Kernels.Groups(m, n), MatMul128Kernels.TileN),
            MatMulKernel.TensorCoreTF32 => (gemmTf32 ??= LoadGemm(hasTensorCoreInstructions ? TensorCoreMatMulKernels.Tf32Gemm : TensorCoreMatMulKernels.EmulatedTf32Gemm),
                TensorCoreMatMulKernels.Groups(m, n), TensorCoreMatMulKernels.TileN),
            MatMulKernel.TensorCoreBF16 => (gemmBf16 ??= LoadGemm(hasTensorCoreInstructions ? TensorCoreMatMulKernels.Bf16Gemm : TensorCoreMatMulKernels.EmulatedBf16Gemm),
                TensorCoreMatMulKernels.Groups(m, n), TensorCoreMatMulKernels.TileN),
            _ => throw new ArgumentOutOfRangeException(nameof(kernel)),
        };
        var args = new GemmArgs(m, k, n, transposeA, transposeB, epilogue, vectorA, vectorB, vectorC, tileN);
        launch(new KernelConfig(groups, MatMulKernels.Threads), a, b, biasView, output, args, SpecializedValue.New(args.Layout));
    }

    /// <summary>Every matmul kernel runs 256 threads a group and takes the same arguments; ILGPU compiles one variant per layout.</summary>
    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs, SpecializedValue<int>> LoadGemm(
        Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs, SpecializedValue<int>> kernel) =>
        accelerator.LoadStreamKernel(kernel);

    static bool Aligned<TView>(TView view) where TView : IContiguousArrayView => view.IndexInBytes % 16 == 0;

    /// <summary>
    /// Attention over q, k, v views that start at the first element of batch 0 (strides from
    /// <paramref name="shape"/>); output [B, Tq, H * D]; lse [B, H, Tq] when given; allow [L, L] for
    /// <see cref="AttentionMaskMode.Explicit"/>; keyLengths [B] when given, each in [1, KeyLength] (the caller
    /// checks: <see cref="AttentionShape.ValidateKeyLengths"/>), hides keys from keyLengths[b] on from batch row b.
    /// HeadDim must not exceed <see cref="MaxAttentionHeadDim"/>.
    /// </summary>
    public void Attention(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> output,
        ArrayView<float>? lse, in AttentionShape shape, AttentionMaskMode mode, ArrayView<byte>? allow, ArrayView<int>? keyLengths) =>
        Attention(q, k, v, output, lse, shape, mode, allow, keyLengths, ChooseAttentionKernel(shape));

    /// <summary>
    /// The flash kernel that covers the head dim (64 queries a group up to 64, 48 up to 128), else the tiled kernel:
    /// head dims that are not a multiple of 4, and warps other than 32 lanes wide (the flash kernels map lanes to rows
    /// and keys and reduce over 8-lane groups with shuffles).
    /// </summary>
    public AttentionKernel ChooseAttentionKernel(in AttentionShape shape) =>
        shape.HeadDim % 4 != 0 || accelerator.WarpSize != 32 ? AttentionKernel.Tiled
        : shape.HeadDim <= FlashAttentionKernels.SmallMaxHeadDim ? AttentionKernel.Flash64
        : AttentionKernel.Flash128;

    /// <summary>
    /// <see cref="Attention(ArrayView{float}, ArrayView{float}, ArrayView{float}, ArrayView{float}, ArrayView{float}?, in AttentionShape, AttentionMaskMode, ArrayView{byte}?, ArrayView{int}?)"/>
    /// on the given kernel. A flash kernel takes the head dims and warp width that <see cref="ChooseAttentionKernel"/>
    /// gives it, and reads q, k, v and writes the output 16 bytes at a time when every row and batch stride is a
    /// multiple of 4 floats and every view starts 16-byte aligned.
    /// </summary>
    public void Attention(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> output,
        ArrayView<float>? lse, in AttentionShape shape, AttentionMaskMode mode, ArrayView<byte>? allow, ArrayView<int>? keyLengths, AttentionKernel kernel)
    {
        var lseView = lse ?? noFloats.View;
        var allowView = allow ?? noBytes.View;
        var keyLengthsView = keyLengths ?? noInts.View;
        if (kernel == AttentionKernel.Tiled)
        {
            (attention ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<byte>,
                ArrayView<int>, AttentionArgs>(AttentionKernels.Forward))(
                new KernelConfig(AttentionKernels.Groups(shape), AttentionKernels.Threads), q, k, v, output, lseView, allowView, keyLengthsView,
                new AttentionArgs(shape, mode, lse.HasValue) { HasKeyLengths = keyLengths.HasValue ? 1 : 0 });
            return;
        }

        int maxHeadDim = kernel == AttentionKernel.Flash64 ? FlashAttentionKernels.SmallMaxHeadDim : FlashAttentionKernels.LargeMaxHeadDim;
        if (shape.HeadDim % 4 != 0 || shape.HeadDim > maxHeadDim || accelerator.WarpSize != 32)
            throw new ArgumentException($"the {kernel} attention kernel needs a head dim that is a multiple of 4 up to {maxHeadDim} and 32-lane warps; got {shape.HeadDim} and {accelerator.WarpSize}");
        var (launch, warps) = kernel switch
        {
            AttentionKernel.Flash64 => (flash64 ??= LoadFlash(FlashAttentionKernels.Forward64, FlashAttentionKernels.SmallWarps), FlashAttentionKernels.SmallWarps),
            AttentionKernel.Flash128 => (flash128 ??= LoadFlash(FlashAttentionKernels.Forward128, FlashAttentionKernels.LargeWarps), FlashAttentionKernels.LargeWarps),
            _ => throw new ArgumentOutOfRangeException(nameof(kernel)),
        };
        int queryBlock = warps * FlashAttentionKernels.RowsPerWarp;
        bool vector = shape.QueryRowStride % 4 == 0 && shape.KeyRowStride % 4 == 0 && shape.QueryBatchStride % 4 == 0 && shape.KeyBatchStride % 4 == 0
            && Aligned(q) && Aligned(k) && Aligned(v) && Aligned(output);
        var args = new AttentionArgs(shape, mode, lse.HasValue, queryBlock);
        launch(new KernelConfig(shape.Batch * shape.Heads * args.QueryBlocks, warps * FlashAttentionKernels.WarpLanes), q, k, v, output, lseView, allowView,
            keyLengthsView, args, SpecializedValue.New(FlashAttentionKernels.Config(shape.HeadDim, vector, mode, keyLengths.HasValue)));
    }

    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<byte>, ArrayView<int>, AttentionArgs,
        SpecializedValue<int>> LoadFlash(
        Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<byte>, ArrayView<int>, AttentionArgs,
            SpecializedValue<int>> kernel, int warps) =>
        accelerator.LoadStreamKernel(kernel, FlashAttentionKernels.LaunchBounds(warps));

    // ---- backward and training: every gradient output is accumulated (+=) unless said otherwise ----

    /// <summary>dWte[ids[b, t], :] += dOutput[b, t, :] and dWpe[positionOffset + t, :] += dOutput[b, t, :] (atomics).</summary>
    public void EmbeddingBackward(ArrayView<int> ids, ArrayView<float> dOutput, ArrayView<float> dWte, ArrayView<float>? dWpe,
        int length, int channels, int positionOffset) =>
        (embeddingBackward ??= accelerator.LoadStreamKernel<ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>(BackwardKernels.Embedding))(
            Flat(dOutput.Length), ids, dOutput, dWte, dWpe ?? noFloats.View, length, channels, positionOffset, dWpe is null ? 0 : 1);

    /// <summary>dX += gelu'(x) · dOutput.</summary>
    public void GeluBackward(ArrayView<float> x, ArrayView<float> dOutput, ArrayView<float> dX) =>
        (geluBackward ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>>(BackwardKernels.Gelu))(Flat(x.Length), x, dOutput, dX);

    /// <summary>LayerNorm backward from the saved mean and rstd: dX (one warp per row), then dWeight and dBias (column sums) unless they are null (a frozen norm).</summary>
    public void LayerNormBackward(ArrayView<float> dOutput, ArrayView<float> x, ArrayView<float> weight, ArrayView<float> mean, ArrayView<float> rstd,
        ArrayView<float> dX, ArrayView<float>? dWeight, ArrayView<float>? dBias, int rows, int channels)
    {
        (layerNormInput ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(BackwardKernels.LayerNormInput))(
            PerRow(rows), dOutput, x, weight, mean, rstd, dX, rows, channels);
        if (dWeight is null || dBias is null) return;
        var config = ColumnChunks(rows, channels, out int rowsPerGroup);
        (layerNormParameters ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>(BackwardKernels.LayerNormParameters))(
            config, dOutput, x, mean, rstd, dWeight.Value, dBias.Value, rows, channels, rowsPerGroup);
    }

    /// <summary>Backward of <see cref="MatMul"/> (w [K, N]): dX[M, K] += dOut · wᵀ, dW[K, N] += xᵀ · dOut (unless dW is null: a frozen weight), dBias[N] += Σ rows of dOut.</summary>
    public void MatMulBackward(ArrayView<float> dOutput, ArrayView<float> x, ArrayView<float> w, ArrayView<float> dX, ArrayView<float>? dW,
        ArrayView<float>? dBias, int m, int k, int n, MatMulPrecision precision)
    {
        Gemm(dOutput, w, null, dX, m, n, k, false, true, GemmEpilogue.Accumulate, ChooseMatMulKernel(m, k, precision));
        if (dW.HasValue) Gemm(x, dOutput, null, dW.Value, k, m, n, true, false, GemmEpilogue.Accumulate, ChooseMatMulKernel(k, n, precision));
        if (dBias.HasValue) ColumnSums(dOutput, dBias.Value, m, n);
    }

    /// <summary>Backward of <see cref="MatMulTransposed"/> (w [N, K]): dX[M, K] += dOut · w, dW[N, K] += dOutᵀ · x (unless dW is null: a frozen weight), dBias[N] += Σ rows of dOut.</summary>
    public void MatMulTransposedBackward(ArrayView<float> dOutput, ArrayView<float> x, ArrayView<float> w, ArrayView<float> dX, ArrayView<float>? dW,
        ArrayView<float>? dBias, int m, int k, int n, MatMulPrecision precision)
    {
        Gemm(dOutput, w, null, dX, m, n, k, false, false, GemmEpilogue.Accumulate, ChooseMatMulKernel(m, k, precision));
        if (dW.HasValue) Gemm(dOutput, x, null, dW.Value, n, m, k, true, false, GemmEpilogue.Accumulate, ChooseMatMulKernel(n, k, precision));
        if (dBias.HasValue) ColumnSums(dOutput, dBias.Value, m, n);
    }

    /// <summary>output[c] += Σ_r data[r, c] over data [rows, columns].</summary>
    void ColumnSums(ArrayView<float> data, ArrayView<float> output, int rows, int columns)
    {
        var config = ColumnChunks(rows, columns, out int rowsPerGroup);
        (columnSums ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int, int, int>(BackwardKernels.ColumnSums))(
            config, data, output, rows, columns, rowsPerGroup);
    }

    /// <summary>
    /// Backward of <see cref="Attention(ArrayView{float}, ArrayView{float}, ArrayView{float}, ArrayView{float}, ArrayView{float}?, in AttentionShape, AttentionMaskMode, ArrayView{byte}?, ArrayView{int}?)"/>
    /// without key lengths: dq, dk, dv += , each laid out like q, k, v (views at their first element, strides from <paramref name="shape"/>).
    /// output, dOutput [B, Tq, H * D] and lse [B, H, Tq] are the forward's; <paramref name="delta"/> is [B, H, Tq]
    /// scratch that this call overwrites.
    /// </summary>
    public void AttentionBackward(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> output, ArrayView<float> dOutput,
        ArrayView<float> lse, ArrayView<float> delta, ArrayView<float> dq, ArrayView<float> dk, ArrayView<float> dv,
        in AttentionShape shape, AttentionMaskMode mode, ArrayView<byte>? allow) =>
        AttentionBackward(q, k, v, output, dOutput, lse, delta, dq, dk, dv, shape, mode, allow, ChooseAttentionBackwardKernel(shape));

    /// <summary>The flash backward for head dims up to 64 that are multiples of 4 on 32-lane warps, else the tiled kernel.</summary>
    public AttentionBackwardKernel ChooseAttentionBackwardKernel(in AttentionShape shape) =>
        shape.HeadDim % 4 == 0 && shape.HeadDim <= FlashAttentionBackwardKernels.MaxHeadDim && accelerator.WarpSize == 32
            ? AttentionBackwardKernel.Flash64 : AttentionBackwardKernel.Tiled;

    /// <summary>
    /// <see cref="AttentionBackward(ArrayView{float}, ArrayView{float}, ArrayView{float}, ArrayView{float}, ArrayView{float}, ArrayView{float}, ArrayView{float}, ArrayView{float}, ArrayView{float}, ArrayView{float}, in AttentionShape, AttentionMaskMode, ArrayView{byte}?)"/>
    /// on the given kernel. The flash kernels take what <see cref="ChooseAttentionBackwardKernel"/> gives them, and
    /// move 16 bytes at a time when every row and batch stride is a multiple of 4 floats and every view starts 16-byte aligned.
    /// </summary>
    public void AttentionBackward(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> output, ArrayView<float> dOutput,
        ArrayView<float> lse, ArrayView<float> delta, ArrayView<float> dq, ArrayView<float> dk, ArrayView<float> dv,
        in AttentionShape shape, AttentionMaskMode mode, ArrayView<byte>? allow, AttentionBackwardKernel kernel)
    {
        if (kernel == AttentionBackwardKernel.Flash64
            && (shape.HeadDim % 4 != 0 || shape.HeadDim > FlashAttentionBackwardKernels.MaxHeadDim || accelerator.WarpSize != 32))
            throw new ArgumentException($"the {kernel} attention backward needs a head dim that is a multiple of 4 up to {FlashAttentionBackwardKernels.MaxHeadDim} and 32-lane warps; got {shape.HeadDim} and {accelerator.WarpSize}");
        (attentionDelta ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>(AttentionBackwardKernels.Delta))(
            PerRow(shape.Batch * shape.Heads * shape.QueryLength), output, dOutput, delta, shape.Heads, shape.QueryLength, shape.HeadDim);
        var allowView = allow ?? noBytes.View;
        if (kernel == AttentionBackwardKernel.Tiled)
        {
            (attentionBackward ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<byte>, AttentionArgs>(AttentionBackwardKernels.Backward))(
                new KernelConfig(AttentionBackwardKernels.Groups(shape), AttentionBackwardKernels.Threads),
                q, k, v, dOutput, lse, delta, dq, dk, dv, allowView, new AttentionArgs(shape, mode, hasLse: true));
            return;
        }

        bool vector = shape.QueryRowStride % 4 == 0 && shape.KeyRowStride % 4 == 0 && shape.QueryBatchStride % 4 == 0 && shape.KeyBatchStride % 4 == 0
            && Aligned(q) && Aligned(k) && Aligned(v) && Aligned(dOutput) && Aligned(dq) && Aligned(dk) && Aligned(dv);
        var config = SpecializedValue.New(FlashAttentionKernels.Config(shape.HeadDim, vector, mode));
        int threads = FlashAttentionBackwardKernels.Warps * FlashAttentionKernels.WarpLanes;
        var args = new AttentionArgs(shape, mode, hasLse: true, FlashAttentionBackwardKernels.Block);
        (flashQueryGradients ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
            ArrayView<float>, ArrayView<byte>, AttentionArgs, SpecializedValue<int>>(FlashAttentionBackwardKernels.QueryGradients,
            FlashAttentionKernels.LaunchBounds(FlashAttentionBackwardKernels.Warps)))(
            new KernelConfig(shape.Batch * shape.Heads * args.QueryBlocks, threads), q, k, v, dOutput, lse, delta, dq, allowView, args, config);
        // The key-parallel kernel counts its key blocks in the same field.
        args.QueryBlocks = (shape.KeyLength + FlashAttentionBackwardKernels.Block - 1) / FlashAttentionBackwardKernels.Block;
        (flashKeyValueGradients ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
            ArrayView<float>, ArrayView<float>, ArrayView<byte>, AttentionArgs, SpecializedValue<int>>(FlashAttentionBackwardKernels.KeyValueGradients,
            FlashAttentionKernels.LaunchBounds(FlashAttentionBackwardKernels.Warps)))(
            new KernelConfig(shape.Batch * shape.KvHeads * args.QueryBlocks, threads), q, k, v, dOutput, lse, delta, dk, dv, allowView, args, config);
    }

    /// <summary>
    /// Fused softmax + cross-entropy over logits [rows, vocab], one group per row: losses and dLogits are
    /// written (not accumulated); dLogits may alias logits; rows of weight 0 get zeros and their targets are not read.
    /// </summary>
    public void CrossEntropy(ArrayView<float> logits, ArrayView<int> targets, ArrayView<float> weights, ArrayView<float> losses,
        ArrayView<float> dLogits, int rows, int vocab) =>
        (crossEntropy ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(CrossEntropyKernels.Forward))(
            new KernelConfig(rows, CrossEntropyThreads), logits, targets, weights, losses, dLogits, vocab);

    /// <summary>One AdamW update of param, m and v in place.</summary>
    public void AdamW(ArrayView<float> param, ArrayView<float> grad, ArrayView<float> m, ArrayView<float> v, in AdamWStep step) =>
        (adamW ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AdamWArgs>(OptimizerKernels.AdamW))(
            Flat(param.Length), param, grad, m, v, new AdamWArgs(step));

    /// <summary>data *= factor.</summary>
    public void Scale(ArrayView<float> data, float factor) =>
        (scale ??= accelerator.LoadStreamKernel<ArrayView<float>, float>(OptimizerKernels.Scale))(Flat(data.Length), data, factor);

    /// <summary>Σ data²: one double partial sum per group on the device, added up in double here (waits for the device).</summary>
    public double SumOfSquares(ArrayView<float> data)
    {
        var config = Flat(data.Length);
        partialSums ??= accelerator.Allocate1D<double>(MaxFlatGroups);
        (sumOfSquares ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<double>>(OptimizerKernels.SumOfSquares))(config, data, partialSums.View);
        var partials = new double[config.GridDim.X];
        partialSums.View.SubView(0, partials.Length).CopyToCPU(partials);
        double sum = 0;
        foreach (double p in partials) sum += p;
        return sum;
    }

    /// <summary>
    /// One token per row of logits [rows, vocab] as <paramref name="options"/> defines, drawn with the Philox
    /// uniform (seed, stream, row): tokens [rows] and stats [rows, <see cref="SamplingOptions.StatCount"/>] are
    /// written. One group per row, sized to the row (up to 256 threads); rows must be at least 1 and vocab at least 1.
    /// </summary>
    public void SampleTokens(ArrayView<float> logits, ArrayView<int> tokens, ArrayView<float> stats, int rows, int vocab,
        in SamplingOptions options, ulong seed, ulong stream, SampleRows keys) =>
        (sampleTokens ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, int, SamplingArgs>(SamplingKernels.Sample))(
            new KernelConfig(rows, SamplingKernels.Threads(vocab, accelerator.WarpSize)), logits, tokens, stats, vocab, new SamplingArgs(options, seed, stream, keys));

    // ---- LLaMA family ------------------------------------------------------------------------------

    /// <summary>RMSNorm of x [rows, channels]: output = x · rstd · weight, rstd [rows] = 1/sqrt(mean(x²) + eps); one warp per row.</summary>
    public void RmsNorm(ArrayView<float> x, ArrayView<float> weight, ArrayView<float> output, ArrayView<float> rstd, int rows, int channels, float eps) =>
        (rmsNorm ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, float>(LlamaKernels.RmsNorm))(
            PerRow(rows), x, weight, output, rstd, rows, channels, eps);

    /// <summary>RMSNorm backward from the saved rstd: dX += (one warp per row), then dWeight += (column sums).</summary>
    public void RmsNormBackward(ArrayView<float> dOutput, ArrayView<float> x, ArrayView<float> weight, ArrayView<float> rstd,
        ArrayView<float> dX, ArrayView<float>? dWeight, int rows, int channels)
    {
        (rmsNormInput ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(LlamaKernels.RmsNormInput))(
            PerRow(rows), dOutput, x, weight, rstd, dX, rows, channels);
        if (dWeight is null) return;
        var config = ColumnChunks(rows, channels, out int rowsPerGroup);
        (rmsNormWeight ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>(LlamaKernels.RmsNormWeight))(
            config, dOutput, x, rstd, dWeight.Value, rows, channels, rowsPerGroup);
    }

    /// <summary>
    /// Rotate-half RoPE in place over a view starting at element (0, 0, 0, 0): element (b, t, h, d) at
    /// (b·length + t)·rowStride + h·headDim + d, angle (positionOffset + t)·theta^(−2d/headDim), negated when
    /// <paramref name="inverse"/>. theta^(−2/headDim) is computed here in double and raised to d on the device.
    /// </summary>
    public void Rope(ArrayView<float> x, int rowStride, int batch, int length, int heads, int headDim, int positionOffset, float theta, bool inverse)
    {
        int rows = batch * length;
        (rope ??= accelerator.LoadStreamKernel<ArrayView<float>, int, int, int, int, int, int, double, float>(LlamaKernels.Rope))(
            Flat((long)rows * (headDim / 2)), x, rowStride, rows, length, heads, headDim, positionOffset,
            Math.Pow(theta, -2.0 / headDim), inverse ? -1f : 1f);
    }

    /// <summary>output = silu(gate) · up, elementwise.</summary>
    public void SwiGlu(ArrayView<float> gate, ArrayView<float> up, ArrayView<float> output) =>
        (swiGlu ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>>(LlamaKernels.SwiGlu))(Flat(output.Length), gate, up, output);

    /// <summary>dGate += dOutput · up · silu'(gate), dUp += dOutput · silu(gate).</summary>
    public void SwiGluBackward(ArrayView<float> gate, ArrayView<float> up, ArrayView<float> dOutput, ArrayView<float> dGate, ArrayView<float> dUp) =>
        (swiGluBackward ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(LlamaKernels.SwiGluBackward))(
            Flat(gate.Length), gate, up, dOutput, dGate, dUp);

    public void Dispose()
    {
        noFloats.Dispose();
        noBytes.Dispose();
        noInts.Dispose();
        partialSums?.Dispose();
    }
}
