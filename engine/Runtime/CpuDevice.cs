using DiffuSharp.Kernels;
using Cpu = DiffuSharp.Kernels.Cpu;

namespace DiffuSharp.Runtime;

/// <summary>
/// Host memory as a managed array of the tensor's element type. Arrays of <see cref="HugePages.Threshold"/> bytes or more
/// (weight buffers, large activations) are pinned and backed by 2 MiB pages where the kernel allows it.
/// </summary>
public sealed class CpuStorage : DeviceStorage
{
    public CpuStorage(DType dtype, long length) : base(dtype, length)
    {
        bool large = length * Tensor.ElementSize(dtype) >= HugePages.Threshold;
        Data = dtype switch
        {
            DType.F32 => large ? GC.AllocateUninitializedArray<float>((int)length, pinned: true) : new float[length],
            DType.I32 => large ? GC.AllocateUninitializedArray<int>((int)length, pinned: true) : new int[length],
            DType.U8 => large ? GC.AllocateUninitializedArray<byte>((int)length, pinned: true) : new byte[length],
            DType.BF16 or DType.F16 => large ? GC.AllocateUninitializedArray<ushort>((int)length, pinned: true) : new ushort[length],
            _ => throw new ArgumentOutOfRangeException(nameof(dtype)),
        };
        if (large) HugePages.Advise(Data);
    }

    public Array Data { get; }
    public override void Dispose() { }
}

/// <summary>The fast CPU path: hand-written SIMD kernels (Vector512/Vector256 + FMA), multi-threaded.</summary>
public sealed class CpuDevice : Device
{
    public override string Name => "cpu";

    public override string Description =>
        $"CPU, {Environment.ProcessorCount} threads, {(System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated ? "AVX-512" : System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated ? "AVX2" : "scalar")}";

    protected override DeviceStorage AllocateStorage(DType dtype, long length) => new CpuStorage(dtype, length);

    public override long AvailableMemoryBytes => DeviceMemory.HostAvailableBytes() + Pool.PooledBytes;

    /// <summary>A CPU tensor is one managed array.</summary>
    public override long MaxTensorElements => Array.MaxLength;

    /// <summary>The tensor's elements as a span (CPU tensors only).</summary>
    public static Span<float> F32(Tensor t) => ((float[])((CpuStorage)t.Storage).Data).AsSpan((int)t.Offset, (int)t.Length);
    public static Span<int> I32(Tensor t) => ((int[])((CpuStorage)t.Storage).Data).AsSpan((int)t.Offset, (int)t.Length);
    public static Span<byte> U8(Tensor t) => ((byte[])((CpuStorage)t.Storage).Data).AsSpan((int)t.Offset, (int)t.Length);

    /// <summary>A BF16 or F16 tensor's raw 16-bit elements.</summary>
    public static Span<ushort> Bits16(Tensor t) => ((ushort[])((CpuStorage)t.Storage).Data).AsSpan((int)t.Offset, (int)t.Length);

    /// <summary>A weight tensor (F32, BF16 or F16) as the CPU kernels read it.</summary>
    static Cpu.WeightView W(Tensor t) => t.DType == DType.F32 ? F32(t) : new Cpu.WeightView(Bits16(t), FormatOf(t));

    protected override void UploadCore(Tensor dst, long offset, ReadOnlySpan<float> src) => src.CopyTo(F32(dst)[(int)offset..]);
    protected override void UploadCore(Tensor dst, long offset, ReadOnlySpan<int> src) => src.CopyTo(I32(dst)[(int)offset..]);
    protected override void UploadCore(Tensor dst, long offset, ReadOnlySpan<byte> src) => src.CopyTo(U8(dst)[(int)offset..]);
    protected override void DownloadCore(Tensor src, long offset, Span<float> dst) => F32(src).Slice((int)offset, dst.Length).CopyTo(dst);
    protected override void DownloadCore(Tensor src, long offset, Span<int> dst) => I32(src).Slice((int)offset, dst.Length).CopyTo(dst);
    protected override void UploadCore(Tensor dst, long offset, ReadOnlySpan<ushort> bits) => bits.CopyTo(Bits16(dst)[(int)offset..]);
    protected override void DownloadCore(Tensor src, long offset, Span<ushort> bits) => Bits16(src).Slice((int)offset, bits.Length).CopyTo(bits);

    public override void Synchronize() { }

    protected override void FillCore(Tensor t, float value) => F32(t).Fill(value);

    protected override void ClearCore(Tensor t) => Array.Clear(((CpuStorage)t.Storage).Data, (int)t.Offset, (int)t.Length);

    protected override void WidenCore(Tensor source, Tensor destination) => Cpu.WeightWidening.Widen(W(source), F32(destination));

    protected override void UniformCore(Tensor t, ulong seed, ulong stream)
    {
        var data = F32(t);
        for (int i = 0; i < data.Length; i++) data[i] = Philox.Uniform(seed, stream, (ulong)i);
    }

    protected override void CopyRowsCore(Tensor src, long srcOffset, int srcStride, Tensor dst, long dstOffset, int dstStride, int rows, int columns)
    {
        var s = F32(src);
        var d = F32(dst);
        for (int r = 0; r < rows; r++)
            s.Slice((int)(srcOffset + (long)r * srcStride), columns).CopyTo(d.Slice((int)(dstOffset + (long)r * dstStride), columns));
    }

    protected override void EmbeddingCore(Tensor ids, Tensor wte, Tensor? wpe, Tensor output, int positionOffset) =>
        Cpu.Embedding.Forward(I32(ids), W(wte), wpe is null ? default : W(wpe), F32(output), ids.Shape[0], ids.Shape[1], wte.Columns, positionOffset);

    protected override void LayerNormCore(Tensor x, Tensor weight, Tensor bias, Tensor output, Tensor mean, Tensor rstd, float eps) =>
        Cpu.LayerNorm.Forward(F32(x), F32(weight), F32(bias), F32(output), F32(mean), F32(rstd), (int)x.Rows, x.Columns, eps);

    protected override void MatMulCore(Tensor x, Tensor w, Tensor? bias, Tensor output, int m, int k, int n) =>
        Cpu.MatMul.Forward(F32(x), W(w), bias is null ? default : F32(bias), F32(output), m, k, n);

    protected override void MatMulTransposedCore(Tensor x, Tensor w, Tensor? bias, Tensor output, int m, int k, int n) =>
        Cpu.MatMul.ForwardTransposed(F32(x), W(w), bias is null ? default : F32(bias), F32(output), m, k, n);

    protected override void GeluCore(Tensor x, Tensor output) => Cpu.Gelu.Forward(F32(x), F32(output));

    protected override void AddCore(Tensor a, Tensor b, Tensor output) => Cpu.Residual.Add(F32(a), F32(b), F32(output));

    protected override void SoftmaxCore(Tensor x, Tensor output, int rows, int columns) =>
        Cpu.Softmax.Forward(F32(x), F32(output), rows, columns);

    protected override void AttentionCore(Tensor q, long qOffset, Tensor k, long kOffset, Tensor v, long vOffset,
        Tensor output, Tensor? lse, AttentionShape shape, AttentionMaskMode mode, Tensor? allow, Tensor? keyLengths) =>
        Cpu.Attention.Forward(F32(q)[(int)qOffset..], F32(k)[(int)kOffset..], F32(v)[(int)vOffset..], F32(output),
            lse is null ? default : F32(lse), shape, mode, allow is null ? default : U8(allow), keyLengths is null ? default : I32(keyLengths));

    protected override void EmbeddingBackwardCore(Tensor ids, Tensor dOutput, Tensor dWte, Tensor? dWpe, int positionOffset) =>
        Cpu.Embedding.Backward(I32(ids), F32(dOutput), F32(dWte), dWpe is null ? default : F32(dWpe), ids.Shape[0], ids.Shape[1], dWte.Columns, positionOffset);

    protected override void LayerNormBackwardCore(Tensor dOutput, Tensor x, Tensor weight, Tensor mean, Tensor rstd, Tensor dX, Tensor? dWeight, Tensor? dBias, int rows, int columns) =>
        Cpu.LayerNorm.Backward(F32(dOutput), F32(x), F32(weight), F32(mean), F32(rstd), F32(dX), dWeight is null ? default : F32(dWeight),
            dBias is null ? default : F32(dBias), rows, columns);

    protected override void MatMulBackwardCore(Tensor dOutput, Tensor x, Tensor w, Tensor dX, Tensor? dW, Tensor? dBias, int m, int k, int n) =>
        Cpu.MatMul.Backward(F32(dOutput), F32(x), W(w), F32(dX), dW is null ? default : F32(dW), dBias is null ? default : F32(dBias), m, k, n);

    protected override void MatMulTransposedBackwardCore(Tensor dOutput, Tensor x, Tensor w, Tensor dX, Tensor? dW, Tensor? dBias, int m, int k, int n) =>
        Cpu.MatMul.BackwardTransposed(F32(dOutput), F32(x), W(w), F32(dX), dW is null ? default : F32(dW), dBias is null ? default : F32(dBias), m, k, n);

    protected override void GeluBackwardCore(Tensor x, Tensor dOutput, Tensor dX) => Cpu.Gelu.Backward(F32(x), F32(dOutput), F32(dX));

    protected override void AttentionBackwardCore(Tensor q, long qOffset, Tensor k, long kOffset, Tensor v, long vOffset,
        Tensor output, Tensor dOutput, Tensor lse, Tensor dq, long dqOffset, Tensor dk, long dkOffset, Tensor dv, long dvOffset,
        AttentionShape shape, AttentionMaskMode mode, Tensor? allow) =>
        Cpu.Attention.Backward(F32(q)[(int)qOffset..], F32(k)[(int)kOffset..], F32(v)[(int)vOffset..], F32(output), F32(dOutput), F32(lse),
            F32(dq)[(int)dqOffset..], F32(dk)[(int)dkOffset..], F32(dv)[(int)dvOffset..], shape, mode, allow is null ? default : U8(allow));

    protected override void CrossEntropyCore(Tensor logits, Tensor targets, Tensor weights, Tensor losses, Tensor dLogits, int rows, int vocab) =>
        Cpu.CrossEntropy.Forward(F32(logits), I32(targets), F32(weights), F32(losses), F32(dLogits), rows, vocab);

    protected override void AdamWCore(Tensor param, Tensor grad, Tensor m, Tensor v, AdamWStep step) =>
        Cpu.AdamW.Update(F32(param), F32(grad), F32(m), F32(v), step);

    protected override double SumOfSquaresCore(Tensor t) => Cpu.Vectors.SumOfSquares(F32(t));

    protected override void ScaleCore(Tensor t, float factor) => Cpu.Vectors.Scale(F32(t), factor);

    protected override void SampleTokensCore(Tensor logits, SamplingOptions options, ulong seed, ulong stream, Tensor tokens, Tensor stats, int rows, int vocab,
        SampleRows keys) => Cpu.Sampling.SampleTokens(F32(logits), rows, vocab, options, seed, stream, I32(tokens), F32(stats), keys);

    protected override void RmsNormCore(Tensor x, Tensor weight, Tensor output, Tensor rstd, int rows, int columns, float eps) =>
        Cpu.RmsNorm.Forward(F32(x), F32(weight), F32(output), F32(rstd), rows, columns, eps);

    protected override void RmsNormBackwardCore(Tensor dOutput, Tensor x, Tensor weight, Tensor rstd, Tensor dX, Tensor? dWeight, int rows, int columns) =>
        Cpu.RmsNorm.Backward(F32(dOutput), F32(x), F32(weight), F32(rstd), F32(dX), dWeight is null ? default : F32(dWeight), rows, columns);

    protected override void RopeCore(Tensor x, long offset, int rowStride, int batch, int length, int heads, int headDim, int positionOffset, float theta, bool inverse) =>
        Cpu.Rope.Apply(F32(x)[(int)offset..], rowStride, batch, length, heads, headDim, positionOffset, theta, inverse);

    protected override void SwiGluCore(Tensor gate, Tensor up, Tensor output) => Cpu.SwiGlu.Forward(F32(gate), F32(up), F32(output));

    protected override void SwiGluBackwardCore(Tensor gate, Tensor up, Tensor dOutput, Tensor dGate, Tensor dUp) =>
        Cpu.SwiGlu.Backward(F32(gate), F32(up), F32(dOutput), F32(dGate), F32(dUp));
}
