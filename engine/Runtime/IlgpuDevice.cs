using System.Reflection;
using System.Runtime.InteropServices;
using DiffuSharp.Kernels;
using DiffuSharp.Kernels.Gpu;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;

namespace DiffuSharp.Runtime;

/// <summary>Which ILGPU accelerator an <see cref="IlgpuDevice"/> runs on.</summary>
public enum IlgpuBackend
{
    /// <summary>An NVIDIA GPU through the CUDA driver.</summary>
    Cuda,
    /// <summary>An OpenCL 2.0+ GPU (ILGPU needs the generic address space, so CPU OpenCL such as PoCL is refused).</summary>
    OpenCL,
    /// <summary>ILGPU's CPU accelerator: a slow, exact simulator of the GPU programming model, for tests.</summary>
    CpuSimulator,
}

/// <summary>Device memory of one ILGPU buffer; <typeparamref name="T"/> is float, int or byte by dtype.</summary>
public sealed class IlgpuStorage<T> : DeviceStorage where T : unmanaged
{
    readonly MemoryBuffer1D<T, Stride1D.Dense> buffer;

    public IlgpuStorage(Accelerator accelerator, DType dtype, long length) : base(dtype, length) =>
        buffer = accelerator.Allocate1D<T>(length);

    public ArrayView<T> View => buffer.View;

    public override void Dispose() => buffer.Dispose();
}

/// <summary>
/// A device whose ops are the ILGPU kernels of DiffuSharp.Kernels.Gpu, on a CUDA GPU, an OpenCL GPU or
/// the ILGPU CPU simulator. Launches are queued on the accelerator's default stream; downloads wait for them.
/// </summary>
public sealed class IlgpuDevice : Device
{
    /// <summary>Warp width of the simulator, equal to CUDA's so that kernels run the same way on both.</summary>
    const int SimulatorWarpSize = 32;


    readonly Context context;
    readonly Accelerator accelerator;
    readonly GpuKernels kernels;
    MatMulPrecision matMulPrecision;
    bool disposed;

    public IlgpuDevice(IlgpuBackend backend)
    {
        Backend = backend;
        RegisterCudaDriverResolver();
        context = CreateContext(backend);
        Accelerator? created = null;
        try
        {
            var device = FindDevice(context, backend) ?? throw new DiffuException(backend switch
            {
                IlgpuBackend.Cuda => "no CUDA device found (is the NVIDIA driver installed and libcuda.so loadable?)",
                IlgpuBackend.OpenCL => "no OpenCL GPU device found that ILGPU supports (OpenCL 2.0 with the generic address space)",
                _ => "the ILGPU CPU simulator is not available",
            });
            created = device.CreateAccelerator(context);
            kernels = new GpuKernels(created);
            accelerator = created;
        }
        catch
        {
            created?.Dispose();
            context.Dispose();
            throw;
        }
    }

    public IlgpuBackend Backend { get; }

    /// <summary>The ILGPU accelerator, for benchmarks and reference libraries that launch their own work.</summary>
    public Accelerator Accelerator => accelerator;

    /// <summary>The storage of an F32 tensor of this device, for reference libraries (cuBLAS) that read it in place.</summary>
    public static ArrayView<float> View(Tensor t) => F32(t);

    /// <summary>The kernels of this accelerator, for benchmarks and tests that launch a chosen kernel directly.</summary>
    public GpuKernels Kernels => kernels;

    /// <summary>
    /// The arithmetic of every matmul this device runs, forward and backward (default
    /// <see cref="MatMulPrecision.F32"/>). <see cref="MatMulPrecision.TF32"/> and <see cref="MatMulPrecision.BF16"/>
    /// round the matmul inputs to TF32 or BF16 and multiply on the tensor cores with float32 accumulation:
    /// several times faster, with relative errors near 1e-3 (TF32) or 1e-2 (BF16) instead of 1e-7. Tensors stay
    /// float32 and every other op is unchanged. Setting a non-F32 precision where there are no tensor-core
    /// instructions (the CPU simulator, OpenCL, a CUDA GPU older than compute capability 8.0) throws a
    /// <see cref="DiffuException"/>.
    /// </summary>
    public MatMulPrecision MatMulPrecision
    {
        get => matMulPrecision;
        set
        {
            if (!Enum.IsDefined(value)) throw new ArgumentOutOfRangeException(nameof(value));
            if (value != MatMulPrecision.F32) RequireTensorCores(value);
            matMulPrecision = value;
        }
    }

    /// <summary>True on CUDA GPUs of compute capability 8.0 or newer, where TF32 and BF16 matmuls run.</summary>
    public bool SupportsTensorCores => Backend == IlgpuBackend.Cuda && ((CudaAccelerator)accelerator).Architecture.Major >= 8;

    void RequireTensorCores(MatMulPrecision precision)
    {
        if (Backend != IlgpuBackend.Cuda)
            throw new DiffuException($"matmul precision {precision} runs on CUDA tensor cores (mma.sync); the {Name} device has none and multiplies in float32 only");
        var architecture = ((CudaAccelerator)accelerator).Architecture;
        if (architecture.Major < 8)
            throw new DiffuException($"matmul precision {precision} needs tensor cores of compute capability 8.0 or newer; {accelerator.Name} is {architecture.Major}.{architecture.Minor}");
    }

    public override string Name => Backend switch
    {
        IlgpuBackend.Cuda => "cuda",
        IlgpuBackend.OpenCL => "opencl",
        _ => "ilgpu-cpu",
    };

    public override string Description => Backend == IlgpuBackend.CpuSimulator
        ? $"ILGPU CPU simulator ({accelerator.MaxNumThreadsPerGroup} threads a group, warp {accelerator.WarpSize})"
        : $"{accelerator.Name} (ILGPU {accelerator.AcceleratorType}, {accelerator.MemorySize / (1024.0 * 1024 * 1024):F1} GiB)";

    /// <summary>CUDA's free device memory; the simulator's host memory; an OpenCL device's total memory (it reports no free figure).</summary>
    public override long AvailableMemoryBytes => Pool.PooledBytes + accelerator switch
    {
        ILGPU.Runtime.Cuda.CudaAccelerator cuda => cuda.GetFreeMemory(),
        _ when Backend == IlgpuBackend.CpuSimulator => DeviceMemory.HostAvailableBytes(),
        _ => accelerator.MemorySize,
    };

    /// <summary>True when the backend has a usable device here. Never throws.</summary>
    public static bool IsAvailable(IlgpuBackend backend)
    {
        if (backend == IlgpuBackend.CpuSimulator) return true;
        try
        {
            RegisterCudaDriverResolver();
            using var context = CreateContext(backend);
            return FindDevice(context, backend) is not null;
        }
        catch (Exception)
        {
            return false;
        }
    }

    static Context CreateContext(IlgpuBackend backend) => Context.Create(builder =>
    {
        switch (backend)
        {
            case IlgpuBackend.Cuda: builder.Cuda(); break;
            case IlgpuBackend.OpenCL: builder.OpenCL(); break;
            default:
                builder.CPU(new CPUDevice(SimulatorWarpSize, GpuKernels.MaxGroupSize / SimulatorWarpSize, numMultiprocessors: 1));
                break;
        }
        builder.EnableAlgorithms();
    });

    static ILGPU.Runtime.Device? FindDevice(Context context, IlgpuBackend backend) => backend switch
    {
        IlgpuBackend.Cuda => context.GetCudaDevices().Count > 0 ? context.GetCudaDevice(0) : null,
        IlgpuBackend.OpenCL => context.GetCLDevices().Count > 0 ? context.GetCLDevice(0) : null,
        _ => context.GetCPUDevices().Count > 0 ? context.GetCPUDevice(0) : null,
    };

    /// <summary>
    /// ILGPU imports the CUDA driver as "cuda", which .NET probes as libcuda.so; driver-only installs ship
    /// just libcuda.so.1. Resolve the name for ILGPU's assembly, falling back to the default probing.
    /// </summary>
    static void RegisterCudaDriverResolver()
    {
        if (OperatingSystem.IsLinux())
            NativeAliases.Register(typeof(Context).Assembly, name => name == "cuda" ? ["libcuda.so", "libcuda.so.1"] : null);
    }

    // ---- storage and transfers -------------------------------------------------------------------

    protected override DeviceStorage AllocateStorage(DType dtype, long length)
    {
        try
        {
            return Allocate(dtype, length);
        }
        catch (AcceleratorException)
        {
            Pool.Trim();
            try
            {
                return Allocate(dtype, length);
            }
            catch (AcceleratorException e)
            {
                throw new OutOfMemoryException($"{Name}: cannot allocate {length} elements of {dtype}: {e.Message}", e);
            }
        }
    }

    DeviceStorage Allocate(DType dtype, long length) => dtype switch
    {
        DType.F32 => new IlgpuStorage<float>(accelerator, dtype, length),
        DType.I32 => new IlgpuStorage<int>(accelerator, dtype, length),
        DType.U8 => new IlgpuStorage<byte>(accelerator, dtype, length),
        DType.BF16 or DType.F16 => new IlgpuStorage<ushort>(accelerator, dtype, length),
        _ => throw new ArgumentOutOfRangeException(nameof(dtype)),
    };

    static ArrayView<float> F32(Tensor t) => ((IlgpuStorage<float>)t.Storage).View.SubView(t.Offset, t.Length);
    static ArrayView<int> I32(Tensor t) => ((IlgpuStorage<int>)t.Storage).View.SubView(t.Offset, t.Length);
    static ArrayView<byte> U8(Tensor t) => ((IlgpuStorage<byte>)t.Storage).View.SubView(t.Offset, t.Length);
    static ArrayView<ushort> Bits16(Tensor t) => ((IlgpuStorage<ushort>)t.Storage).View.SubView(t.Offset, t.Length);

    protected override void UploadCore(Tensor dst, long offset, ReadOnlySpan<float> src)
    {
        if (!src.IsEmpty) F32(dst).SubView(offset, src.Length).CopyFromCPU(src);
    }

    protected override void UploadCore(Tensor dst, long offset, ReadOnlySpan<int> src)
    {
        if (!src.IsEmpty) I32(dst).SubView(offset, src.Length).CopyFromCPU(src);
    }

    protected override void UploadCore(Tensor dst, long offset, ReadOnlySpan<byte> src)
    {
        if (!src.IsEmpty) U8(dst).SubView(offset, src.Length).CopyFromCPU(src);
    }

    protected override void DownloadCore(Tensor src, long offset, Span<float> dst)
    {
        if (!dst.IsEmpty) F32(src).SubView(offset, dst.Length).CopyToCPU(dst);
    }

    protected override void DownloadCore(Tensor src, long offset, Span<int> dst)
    {
        if (!dst.IsEmpty) I32(src).SubView(offset, dst.Length).CopyToCPU(dst);
    }

    protected override void UploadCore(Tensor dst, long offset, ReadOnlySpan<ushort> bits)
    {
        if (!bits.IsEmpty) Bits16(dst).SubView(offset, bits.Length).CopyFromCPU(bits);
    }

    protected override void DownloadCore(Tensor src, long offset, Span<ushort> bits)
    {
        if (!bits.IsEmpty) Bits16(src).SubView(offset, bits.Length).CopyToCPU(bits);
    }

    public override void Synchronize() => accelerator.Synchronize();

    // ---- ops -------------------------------------------------------------------------------------

    protected override void FillCore(Tensor t, float value) => kernels.Fill(F32(t), value);

    protected override void ClearCore(Tensor t)
    {
        switch (t.DType)
        {
            case DType.F32: F32(t).MemSetToZero(); break;
            case DType.I32: I32(t).MemSetToZero(); break;
            case DType.U8: U8(t).MemSetToZero(); break;
            default: Bits16(t).MemSetToZero(); break;
        }
    }

    protected override void WidenCore(Tensor source, Tensor destination)
    {
        if (source.DType == DType.F32) F32(source).CopyTo(F32(destination));
        else kernels.Widen(Bits16(source), FormatOf(source), F32(destination));
    }

    protected override void UniformCore(Tensor t, ulong seed, ulong stream) => kernels.Uniform(F32(t), seed, stream);

    protected override void CopyRowsCore(Tensor src, long srcOffset, int srcStride, Tensor dst, long dstOffset, int dstStride, int rows, int columns) =>
        kernels.CopyRows(F32(src).SubView(srcOffset), srcStride, F32(dst).SubView(dstOffset), dstStride, rows, columns);

    protected override void EmbeddingCore(Tensor ids, Tensor wte, Tensor? wpe, Tensor output, int positionOffset)
    {
        using var positions = wpe is null ? default : Float32(wpe);
        ArrayView<float>? wpeView = wpe is null ? null : F32(positions.Tensor);
        if (wte.DType == DType.F32) kernels.Embedding(I32(ids), F32(wte), wpeView, F32(output), ids.Shape[1], wte.Columns, positionOffset);
        else kernels.Embedding16(I32(ids), Bits16(wte), FormatOf(wte), wpeView, F32(output), ids.Shape[1], wte.Columns, positionOffset);
    }

    protected override void LayerNormCore(Tensor x, Tensor weight, Tensor bias, Tensor output, Tensor mean, Tensor rstd, float eps) =>
        kernels.LayerNorm(F32(x), F32(weight), F32(bias), F32(output), F32(mean), F32(rstd), (int)x.Rows, x.Columns, eps);

    /// <summary>
    /// The matmul kernels read float32: a 16-bit weight is widened into a pooled float32 copy for the call, which returns to
    /// the pool when the scope ends (later work on the same stream is ordered after the kernels that read it). The weights
    /// stay 16-bit in device memory; only one matrix at a time is held wide. The backward products do the same.
    /// </summary>
    protected override void MatMulCore(Tensor x, Tensor w, Tensor? bias, Tensor output, int m, int k, int n)
    {
        using var wide = Float32(w);
        kernels.MatMul(F32(x), F32(wide.Tensor), bias is null ? null : F32(bias), F32(output), m, k, n, MatMulPrecision);
    }

    protected override void MatMulTransposedCore(Tensor x, Tensor w, Tensor? bias, Tensor output, int m, int k, int n)
    {
        using var wide = Float32(w);
        kernels.MatMulTransposed(F32(x), F32(wide.Tensor), bias is null ? null : F32(bias), F32(output), m, k, n, MatMulPrecision);
    }

    protected override void GeluCore(Tensor x, Tensor output) => kernels.Gelu(F32(x), F32(output));

    protected override void AddCore(Tensor a, Tensor b, Tensor output) => kernels.Add(F32(a), F32(b), F32(output));

    protected override void SoftmaxCore(Tensor x, Tensor output, int rows, int columns) => kernels.Softmax(F32(x), F32(output), rows, columns);

    protected override void AttentionCore(Tensor q, long qOffset, Tensor k, long kOffset, Tensor v, long vOffset,
        Tensor output, Tensor? lse, AttentionShape shape, AttentionMaskMode mode, Tensor? allow, Tensor? keyLengths)
    {
        if (shape.HeadDim > GpuKernels.MaxAttentionHeadDim)
            throw new ArgumentException($"{Name} attention supports head dimensions up to {GpuKernels.MaxAttentionHeadDim}, got {shape.HeadDim}");
        kernels.Attention(F32(q).SubView(qOffset), F32(k).SubView(kOffset), F32(v).SubView(vOffset), F32(output),
            lse is null ? null : F32(lse), shape, mode, allow is null ? null : U8(allow), keyLengths is null ? null : I32(keyLengths));
    }

    public override void Dispose()
    {
        if (disposed) return;
        disposed = true;
        base.Dispose();
        kernels.Dispose();
        accelerator.Dispose();
        context.Dispose();
    }

    // ---- backward and training ops ----------------------------------------------------------------

    protected override void EmbeddingBackwardCore(Tensor ids, Tensor dOutput, Tensor dWte, Tensor? dWpe, int positionOffset) =>
        kernels.EmbeddingBackward(I32(ids), F32(dOutput), F32(dWte), dWpe is null ? null : F32(dWpe), ids.Shape[1], dWte.Columns, positionOffset);

    protected override void LayerNormBackwardCore(Tensor dOutput, Tensor x, Tensor weight, Tensor mean, Tensor rstd, Tensor dX, Tensor? dWeight, Tensor? dBias, int rows, int columns) =>
        kernels.LayerNormBackward(F32(dOutput), F32(x), F32(weight), F32(mean), F32(rstd), F32(dX), dWeight is null ? null : F32(dWeight),
            dBias is null ? null : F32(dBias), rows, columns);

    protected override void MatMulBackwardCore(Tensor dOutput, Tensor x, Tensor w, Tensor dX, Tensor? dW, Tensor? dBias, int m, int k, int n)
    {
        using var wide = Float32(w);
        kernels.MatMulBackward(F32(dOutput), F32(x), F32(wide.Tensor), F32(dX), dW is null ? null : F32(dW), dBias is null ? null : F32(dBias), m, k, n, MatMulPrecision);
    }

    protected override void MatMulTransposedBackwardCore(Tensor dOutput, Tensor x, Tensor w, Tensor dX, Tensor? dW, Tensor? dBias, int m, int k, int n)
    {
        using var wide = Float32(w);
        kernels.MatMulTransposedBackward(F32(dOutput), F32(x), F32(wide.Tensor), F32(dX), dW is null ? null : F32(dW), dBias is null ? null : F32(dBias), m, k, n, MatMulPrecision);
    }

    protected override void GeluBackwardCore(Tensor x, Tensor dOutput, Tensor dX) => kernels.GeluBackward(F32(x), F32(dOutput), F32(dX));

    /// <summary>The per-query D = rowsum(dO ∘ O) goes to a pooled [B, H, Tq] buffer; returning it to the pool while
    /// the kernels are queued is safe because every later use runs on the same stream.</summary>
    protected override void AttentionBackwardCore(Tensor q, long qOffset, Tensor k, long kOffset, Tensor v, long vOffset,
        Tensor output, Tensor dOutput, Tensor lse, Tensor dq, long dqOffset, Tensor dk, long dkOffset, Tensor dv, long dvOffset,
        AttentionShape shape, AttentionMaskMode mode, Tensor? allow)
    {
        if (shape.HeadDim > GpuKernels.MaxAttentionHeadDim)
            throw new ArgumentException($"{Name} attention supports head dimensions up to {GpuKernels.MaxAttentionHeadDim}, got {shape.HeadDim}");
        using var delta = Allocate(DType.F32, shape.Batch, shape.Heads, shape.QueryLength);
        kernels.AttentionBackward(F32(q).SubView(qOffset), F32(k).SubView(kOffset), F32(v).SubView(vOffset), F32(output), F32(dOutput),
            F32(lse), F32(delta), F32(dq).SubView(dqOffset), F32(dk).SubView(dkOffset), F32(dv).SubView(dvOffset),
            shape, mode, allow is null ? null : U8(allow));
    }

    protected override void CrossEntropyCore(Tensor logits, Tensor targets, Tensor weights, Tensor losses, Tensor dLogits, int rows, int vocab) =>
        kernels.CrossEntropy(F32(logits), I32(targets), F32(weights), F32(losses), F32(dLogits), rows, vocab);

    protected override void AdamWCore(Tensor param, Tensor grad, Tensor m, Tensor v, AdamWStep step) =>
        kernels.AdamW(F32(param), F32(grad), F32(m), F32(v), step);

    protected override double SumOfSquaresCore(Tensor t) => kernels.SumOfSquares(F32(t));

    protected override void ScaleCore(Tensor t, float factor) => kernels.Scale(F32(t), factor);

    /// <summary>One group per row on the device; a row without a finite maximum gives meaningless stats (a checked
    /// row would cost a download), but its token always lies in the vocabulary.</summary>
    protected override void SampleTokensCore(Tensor logits, SamplingOptions options, ulong seed, ulong stream, Tensor tokens, Tensor stats, int rows, int vocab,
        SampleRows keys) => kernels.SampleTokens(F32(logits), I32(tokens), F32(stats), rows, vocab, options, seed, stream, keys);

    protected override void RmsNormCore(Tensor x, Tensor weight, Tensor output, Tensor rstd, int rows, int columns, float eps) =>
        kernels.RmsNorm(F32(x), F32(weight), F32(output), F32(rstd), rows, columns, eps);

    protected override void RmsNormBackwardCore(Tensor dOutput, Tensor x, Tensor weight, Tensor rstd, Tensor dX, Tensor? dWeight, int rows, int columns) =>
        kernels.RmsNormBackward(F32(dOutput), F32(x), F32(weight), F32(rstd), F32(dX), dWeight is null ? null : F32(dWeight), rows, columns);

    protected override void RopeCore(Tensor x, long offset, int rowStride, int batch, int length, int heads, int headDim, int positionOffset, float theta, bool inverse) =>
        kernels.Rope(F32(x).SubView(offset), rowStride, batch, length, heads, headDim, positionOffset, theta, inverse);

    protected override void SwiGluCore(Tensor gate, Tensor up, Tensor output) => kernels.SwiGlu(F32(gate), F32(up), F32(output));

    protected override void SwiGluBackwardCore(Tensor gate, Tensor up, Tensor dOutput, Tensor dGate, Tensor dUp) =>
        kernels.SwiGluBackward(F32(gate), F32(up), F32(dOutput), F32(dGate), F32(dUp));
}
