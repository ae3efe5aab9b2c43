using DiffuSharp.Kernels;

namespace DiffuSharp.Runtime;

/// <summary>
/// A place where tensors live and ops run. Models call ops only through this class and never branch on
/// the device. The public op methods validate shapes here, once for all devices (an exception inside an
/// ILGPU simulator kernel would kill the process), then call the device's core implementation.
/// </summary>
public abstract class Device : IDisposable
{
    protected Device() => Pool = new BufferPool(AllocateStorage, () => AvailableMemoryBytes / 4);

    /// <summary>Short name as given to --device (cpu, cuda, opencl, ilgpu-cpu).</summary>
    public abstract string Name { get; }

    /// <summary>A human description (processor or GPU model).</summary>
    public abstract string Description { get; }

    public BufferPool Pool { get; }

    /// <summary>Bytes the device can still give to new tensors (for up-front checks; free pool buffers count).</summary>
    public abstract long AvailableMemoryBytes { get; }

    /// <summary>The most elements one tensor may hold on this device.</summary>
    public virtual long MaxTensorElements => long.MaxValue;

    protected abstract DeviceStorage AllocateStorage(DType dtype, long length);

    /// <summary>A tensor from the pool; its contents are unspecified. Too large a tensor is a <see cref="DeviceMemoryException"/>.</summary>
    public Tensor Allocate(DType dtype, params int[] shape)
    {
        long n = Tensor.Product(shape);
        if (n == 0) throw new ArgumentException("cannot allocate an empty tensor");
        string Describe() => $"{Name}: a {dtype} tensor [{string.Join(", ", shape)}] ({DeviceMemory.Format(n * Tensor.ElementSize(dtype))})";
        if (n > MaxTensorElements) throw new DeviceMemoryException($"{Describe()} has more than the {MaxTensorElements:N0} elements a tensor can hold here");
        try
        {
            return new Tensor(this, Pool.Rent(dtype, n), (int[])shape.Clone());
        }
        catch (OutOfMemoryException)
        {
            throw new DeviceMemoryException($"{Describe()} does not fit: {DeviceMemory.Format(AvailableMemoryBytes)} available");
        }
    }

    public Tensor Zeros(DType dtype, params int[] shape)
    {
        var t = Allocate(dtype, shape);
        ClearCore(t);
        return t;
    }

    public Tensor FromArray(ReadOnlySpan<float> data, params int[] shape)
    {
        var t = Allocate(DType.F32, shape);
        Upload(t, 0, data);
        return t;
    }

    public Tensor FromArray(ReadOnlySpan<int> data, params int[] shape)
    {
        var t = Allocate(DType.I32, shape);
        Upload(t, 0, data);
        return t;
    }

    public Tensor FromArray(ReadOnlySpan<byte> data, params int[] shape)
    {
        var t = Allocate(DType.U8, shape);
        Upload(t, 0, data);
        return t;
    }

    // ---- transfers -------------------------------------------------------------------------------

    public void Upload(Tensor dst, long offset, ReadOnlySpan<float> src) { CheckRange(dst, DType.F32, offset, src.Length); UploadCore(dst, offset, src); }
    public void Upload(Tensor dst, long offset, ReadOnlySpan<int> src) { CheckRange(dst, DType.I32, offset, src.Length); UploadCore(dst, offset, src); }
    public void Upload(Tensor dst, long offset, ReadOnlySpan<byte> src) { CheckRange(dst, DType.U8, offset, src.Length); UploadCore(dst, offset, src); }
    public void Download(Tensor src, long offset, Span<float> dst) { CheckRange(src, DType.F32, offset, dst.Length); DownloadCore(src, offset, dst); }

    /// <summary>Copies raw 16-bit elements (BF16 or F16 bits, as the tensor's dtype says) into a 16-bit tensor.</summary>
    public void Upload(Tensor dst, long offset, ReadOnlySpan<ushort> bits) { CheckRange(dst, Require16Bit(dst), offset, bits.Length); UploadCore(dst, offset, bits); }

    /// <summary>Copies a 16-bit tensor's raw elements out.</summary>
    public void Download(Tensor src, long offset, Span<ushort> bits) { CheckRange(src, Require16Bit(src), offset, bits.Length); DownloadCore(src, offset, bits); }
    public void Download(Tensor src, long offset, Span<int> dst) { CheckRange(src, DType.I32, offset, dst.Length); DownloadCore(src, offset, dst); }

    /// <summary>An F32 tensor's values, or a BF16 / F16 tensor's widened (exactly) to float32.</summary>
    public float[] ToArray(Tensor t)
    {
        var a = new float[t.Length];
        if (Tensor.Is16Bit(t.DType))
        {
            var bits = new ushort[t.Length];
            Download(t, 0, bits);
            SixteenBit.Widen(bits, FormatOf(t), a);
        }
        else Download(t, 0, a);
        return a;
    }

    /// <summary>
    /// Float values into an F32 tensor, or rounded (to nearest, ties to even) into a BF16 or F16 one: how fresh or
    /// converted weights reach a parameter set of either type.
    /// </summary>
    public void UploadRounded(Tensor dst, long offset, ReadOnlySpan<float> values)
    {
        if (!Tensor.Is16Bit(dst.DType))
        {
            Upload(dst, offset, values);
            return;
        }
        var bits = new ushort[Math.Min(values.Length, 1 << 20)];
        for (int start = 0; start < values.Length; start += bits.Length)
        {
            int n = Math.Min(bits.Length, values.Length - start);
            SixteenBit.Narrow(values.Slice(start, n), FormatOf(dst), bits.AsSpan(0, n));
            Upload(dst, offset + start, bits.AsSpan(0, n));
        }
    }

    public int[] ToIntArray(Tensor t)
    {
        var a = new int[t.Length];
        Download(t, 0, a);
        return a;
    }

    protected abstract void UploadCore(Tensor dst, long offset, ReadOnlySpan<float> src);
    protected abstract void UploadCore(Tensor dst, long offset, ReadOnlySpan<int> src);
    protected abstract void UploadCore(Tensor dst, long offset, ReadOnlySpan<byte> src);
    protected abstract void DownloadCore(Tensor src, long offset, Span<float> dst);
    protected abstract void DownloadCore(Tensor src, long offset, Span<int> dst);
    protected abstract void UploadCore(Tensor dst, long offset, ReadOnlySpan<ushort> bits);
    protected abstract void DownloadCore(Tensor src, long offset, Span<ushort> bits);

    /// <summary>Waits until all queued work has finished (a no-op on the CPU).</summary>
    public abstract void Synchronize();

    // ---- ops -------------------------------------------------------------------------------------

    /// <summary>
    /// destination (F32) = source widened to float32, exactly: a BF16 or F16 tensor's values (or an F32 tensor's, copied).
    /// </summary>
    public void Widen(Tensor source, Tensor destination)
    {
        RequireWeight(source);
        RequireF32(destination);
        SameLength(source, destination);
        WidenCore(source, destination);
    }

    /// <summary>
    /// A float32 view of a weight for kernels that read float32: the tensor itself when it is F32, else a pooled widened
    /// copy that disposing the scope returns. Every device takes vector parameters (a norm's weight, a bias) so: they are C
    /// elements against the B·T·C the op reads, so widening them costs nothing measurable and the norm kernels stay one
    /// copy each. The ILGPU matmuls take whole 16-bit matrices so too.
    /// </summary>
    protected FloatScope Float32(Tensor weight)
    {
        if (weight.DType == DType.F32) return new FloatScope(weight, owned: false);
        var wide = Allocate(DType.F32, weight.Shape);
        WidenCore(weight, wide);
        return new FloatScope(wide, owned: true);
    }

    /// <summary>A tensor that is float32 for the length of a using block (<see cref="Float32"/>).</summary>
    protected readonly struct FloatScope(Tensor tensor, bool owned) : IDisposable
    {
        public Tensor Tensor { get; } = tensor;
        public void Dispose()
        {
            if (owned) Tensor.Dispose();
        }
    }

    /// <summary>How a weight tensor's elements are stored, for the kernels.</summary>
    protected static WeightFormat FormatOf(Tensor weight) => weight.DType switch
    {
        DType.BF16 => WeightFormat.BF16,
        DType.F16 => WeightFormat.F16,
        DType.F32 => WeightFormat.F32,
        _ => throw new ArgumentException($"{weight} is not a weight type (F32, BF16 or F16)"),
    };

    /// <summary>Sets every element of an F32 tensor to <paramref name="value"/>.</summary>
    public void Fill(Tensor t, float value) { Require(t, DType.F32, nameof(t)); FillCore(t, value); }

    /// <summary>
    /// Fills an F32 tensor with uniforms in [0, 1): element i is <see cref="Philox.Uniform"/>(seed, stream, i),
    /// bit-identical on every device, so masks and noise drawn on a GPU equal those drawn on the CPU.
    /// </summary>
    public void Uniform(Tensor t, ulong seed, ulong stream) { Require(t, DType.F32, nameof(t)); UniformCore(t, seed, stream); }

    /// <summary>
    /// Copies <paramref name="rows"/> rows of <paramref name="columns"/> floats from src (starting at
    /// srcOffset, rows srcStride apart) to dst (dstOffset, dstStride apart). Used to write a KV cache.
    /// </summary>
    public void CopyRows(Tensor src, long srcOffset, int srcStride, Tensor dst, long dstOffset, int dstStride, int rows, int columns)
    {
        Require(src, DType.F32, nameof(src));
        Require(dst, DType.F32, nameof(dst));
        if (rows <= 0 || columns <= 0 || srcStride < columns || dstStride < columns)
            throw new ArgumentException($"bad row copy: rows={rows} columns={columns} strides {srcStride}/{dstStride}");
        CheckRange(src, DType.F32, srcOffset, (long)(rows - 1) * srcStride + columns);
        CheckRange(dst, DType.F32, dstOffset, (long)(rows - 1) * dstStride + columns);
        CopyRowsCore(src, srcOffset, srcStride, dst, dstOffset, dstStride, rows, columns);
    }

    /// <summary>
    /// output[b, t, :] = wte[ids[b, t], :] + wpe[positionOffset + t, :] for ids [B, T], wte [V, C], wpe [P, C];
    /// without wpe (LLaMA: positions come from RoPE) the token rows alone. Token ids are checked on the host
    /// side by the caller (models validate ids against the vocabulary).
    /// </summary>
    public void Embedding(Tensor ids, Tensor wte, Tensor? wpe, Tensor output, int positionOffset)
    {
        Require(ids, DType.I32, nameof(ids));
        RequireWeight(wte);
        RequireF32(output);
        if (ids.Rank != 2) throw new ArgumentException($"ids must be [B, T], got {ids.ShapeText}");
        int c = wte.Columns;
        if (output.Length != ids.Length * c || wpe is not null && wpe.Columns != c)
            throw new ArgumentException($"embedding shapes disagree: ids {ids.ShapeText}, wte {wte.ShapeText}, wpe {wpe?.ShapeText}, out {output.ShapeText}");
        if (wpe is not null)
        {
            RequireWeight(wpe);
            if (positionOffset < 0 || positionOffset + ids.Shape[1] > wpe.Shape[0])
                throw new ArgumentException($"positions {positionOffset}..{positionOffset + ids.Shape[1] - 1} exceed the {wpe.Shape[0]} position embeddings");
        }
        EmbeddingCore(ids, wte, wpe, output, positionOffset);
    }

    /// <summary>
    /// LayerNorm over the last dimension: output = (x - mean) * rstd * weight + bias, keeping mean and rstd
    /// per row (for the backward pass).
    /// </summary>
    public void LayerNorm(Tensor x, Tensor weight, Tensor bias, Tensor output, Tensor mean, Tensor rstd, float eps)
    {
        RequireF32(x, output, mean, rstd);
        RequireWeight(weight);
        RequireWeight(bias);
        int c = x.Columns;
        if (weight.Length != c || bias.Length != c || output.Length != x.Length || mean.Length != x.Rows || rstd.Length != x.Rows)
            throw new ArgumentException($"layernorm shapes disagree: x {x.ShapeText}, w {weight.ShapeText}, b {bias.ShapeText}, out {output.ShapeText}, mean {mean.ShapeText}, rstd {rstd.ShapeText}");
        using var w = Float32(weight);
        using var b = Float32(bias);
        LayerNormCore(x, w.Tensor, b.Tensor, output, mean, rstd, eps);
    }

    /// <summary>output[M, N] = x[M, K] · w[K, N] (+ bias[N]): GPT-2's Conv1D layout.</summary>
    public void MatMul(Tensor x, Tensor w, Tensor? bias, Tensor output)
    {
        RequireF32(x, output);
        RequireWeight(w);
        if (w.Rank != 2) throw new ArgumentException($"weight must be 2-D, got {w.ShapeText}");
        int k = w.Shape[0], n = w.Shape[1];
        CheckMatMul(x, k, n, bias, output, w);
        using var b = bias is null ? default : Float32(bias);
        MatMulCore(x, w, b.Tensor, output, (int)(x.Length / k), k, n);
    }

    /// <summary>output[M, N] = x[M, K] · w[N, K]ᵀ (+ bias[N]): nn.Linear layout and GPT-2's tied head.</summary>
    public void MatMulTransposed(Tensor x, Tensor w, Tensor? bias, Tensor output)
    {
        RequireF32(x, output);
        RequireWeight(w);
        if (w.Rank != 2) throw new ArgumentException($"weight must be 2-D, got {w.ShapeText}");
        int n = w.Shape[0], k = w.Shape[1];
        CheckMatMul(x, k, n, bias, output, w);
        using var b = bias is null ? default : Float32(bias);
        MatMulTransposedCore(x, w, b.Tensor, output, (int)(x.Length / k), k, n);
    }

    /// <summary>GPT-2's tanh GELU, elementwise.</summary>
    public void Gelu(Tensor x, Tensor output)
    {
        RequireF32(x, output);
        SameLength(x, output);
        GeluCore(x, output);
    }

    /// <summary>output = a + b, elementwise (output may alias a or b).</summary>
    public void Add(Tensor a, Tensor b, Tensor output)
    {
        RequireF32(a, b, output);
        SameLength(a, b); SameLength(a, output);
        AddCore(a, b, output);
    }

    /// <summary>Softmax over the last dimension.</summary>
    public void Softmax(Tensor x, Tensor output)
    {
        RequireF32(x, output);
        SameLength(x, output);
        SoftmaxCore(x, output, (int)x.Rows, x.Columns);
    }

    /// <summary>
    /// Scaled dot-product attention. q, k and v are read from their tensors starting at the given element
    /// offsets with the strides in <paramref name="shape"/>; output is [B, Tq, H * D]; lse (optional) gets
    /// the log-sum-exp of each query's scaled scores, [B, H, Tq]. allow is a U8 [L, L] mask for
    /// <see cref="AttentionMaskMode.Explicit"/> (requires QueryOffset 0 and QueryLength = KeyLength = L).
    /// keyLengths (optional) is an I32 [B] tensor: key j of batch row b is visible only when j &lt; keyLengths[b], on
    /// top of the mask mode, so rows right-padded to a common length see none of their padding; each length must be
    /// in [1, KeyLength] (<see cref="AttentionShape.ValidateKeyLengths"/>). The lengths are downloaded and checked
    /// here, before any kernel runs (on a GPU that waits for the queued work). There is no backward with key lengths.
    /// </summary>
    public void Attention(Tensor q, long qOffset, Tensor k, long kOffset, Tensor v, long vOffset,
        Tensor output, Tensor? lse, AttentionShape shape, AttentionMaskMode mode, Tensor? allow, Tensor? keyLengths = null)
    {
        CheckAttention(q, qOffset, k, kOffset, v, vOffset, output, lse, shape, mode, allow);
        if (keyLengths is not null) CheckKeyLengths(keyLengths, shape);
        AttentionCore(q, qOffset, k, kOffset, v, vOffset, output, lse, shape, mode, mode == AttentionMaskMode.Explicit ? allow : null, keyLengths);
    }

    // ---- backward ops: every one ACCUMULATES into its gradient outputs (+=); callers zero them ------

    /// <summary>
    /// dWte[ids[b,t], :] += dOutput[b,t,:]; dWpe[positionOffset + t, :] += dOutput[b,t,:] when dWpe is given. A null
    /// dWte (frozen embeddings) does nothing; a position gradient without a token gradient is not supported.
    /// </summary>
    public void EmbeddingBackward(Tensor ids, Tensor dOutput, Tensor? dWte, Tensor? dWpe, int positionOffset)
    {
        if (dWte is null)
        {
            if (dWpe is not null) throw new NotSupportedException("a position-embedding gradient needs the token-embedding gradient beside it");
            return;
        }
        Require(ids, DType.I32, nameof(ids));
        RequireF32(dOutput, dWte);
        if (dWpe is not null) RequireF32(dWpe);
        if (ids.Rank != 2 || dOutput.Length != ids.Length * dWte.Columns
            || dWpe is not null && (dWpe.Columns != dWte.Columns || positionOffset < 0 || positionOffset + ids.Shape[1] > dWpe.Shape[0]))
            throw new ArgumentException($"embedding backward shapes disagree: ids {ids.ShapeText}, dOut {dOutput.ShapeText}, dWte {dWte.ShapeText}, dWpe {dWpe?.ShapeText}, offset {positionOffset}");
        EmbeddingBackwardCore(ids, dOutput, dWte, dWpe, positionOffset);
    }

    /// <summary>Backward of <see cref="LayerNorm"/> from the saved mean and rstd: dX, dWeight, dBias += ; null dWeight and dBias (a frozen norm) compute dX only.</summary>
    public void LayerNormBackward(Tensor dOutput, Tensor x, Tensor weight, Tensor mean, Tensor rstd, Tensor dX, Tensor? dWeight, Tensor? dBias)
    {
        if ((dWeight is null) != (dBias is null)) throw new ArgumentException("layernorm backward takes both dWeight and dBias, or neither");
        RequireF32(dOutput, x, mean, rstd, dX);
        RequireWeight(weight);
        if (dWeight is not null) RequireF32(dWeight, dBias!);
        int c = x.Columns;
        if (dOutput.Length != x.Length || dX.Length != x.Length || weight.Length != c || dWeight is not null && (dWeight.Length != c || dBias!.Length != c)
            || mean.Length != x.Rows || rstd.Length != x.Rows)
            throw new ArgumentException($"layernorm backward shapes disagree: x {x.ShapeText}, dOut {dOutput.ShapeText}, dX {dX.ShapeText}, w {weight.ShapeText}");
        using var w = Float32(weight);
        LayerNormBackwardCore(dOutput, x, w.Tensor, mean, rstd, dX, dWeight, dBias, (int)x.Rows, c);
    }

    /// <summary>
    /// Backward of <see cref="MatMul"/> (w [K, N]): dX += dOut·wᵀ, dW += xᵀ·dOut, dBias += Σ rows of dOut. A null dW
    /// (a frozen weight) skips that product.
    /// </summary>
    public void MatMulBackward(Tensor dOutput, Tensor x, Tensor w, Tensor dX, Tensor? dW, Tensor? dBias)
    {
        RequireF32(dOutput, x, dX);
        RequireWeight(w);
        if (dW is not null) RequireF32(dW);
        if (dBias is not null) RequireF32(dBias);
        if (w.Rank != 2) throw new ArgumentException($"weight must be 2-D, got {w.ShapeText}");
        int k = w.Shape[0], n = w.Shape[1];
        CheckMatMulBackward(dOutput, x, w, dX, dW, dBias, k, n);
        MatMulBackwardCore(dOutput, x, w, dX, dW, dBias, (int)(x.Length / k), k, n);
    }

    /// <summary>
    /// Backward of <see cref="MatMulTransposed"/> (w [N, K]): dX += dOut·w, dW += dOutᵀ·x, dBias += Σ rows of dOut. A
    /// null dW (a frozen weight) skips that product.
    /// </summary>
    public void MatMulTransposedBackward(Tensor dOutput, Tensor x, Tensor w, Tensor dX, Tensor? dW, Tensor? dBias)
    {
        RequireF32(dOutput, x, dX);
        RequireWeight(w);
        if (dW is not null) RequireF32(dW);
        if (dBias is not null) RequireF32(dBias);
        if (w.Rank != 2) throw new ArgumentException($"weight must be 2-D, got {w.ShapeText}");
        int n = w.Shape[0], k = w.Shape[1];
        CheckMatMulBackward(dOutput, x, w, dX, dW, dBias, k, n);
        MatMulTransposedBackwardCore(dOutput, x, w, dX, dW, dBias, (int)(x.Length / k), k, n);
    }

    /// <summary>dX += gelu'(x) · dOutput (tanh GELU).</summary>
    public void GeluBackward(Tensor x, Tensor dOutput, Tensor dX)
    {
        RequireF32(x, dOutput, dX);
        SameLength(x, dOutput); SameLength(x, dX);
        GeluBackwardCore(x, dOutput, dX);
    }

    /// <summary>
    /// Backward of <see cref="Attention"/>, recomputing the probabilities from q, k and the saved lse
    /// (flash-style, no [L, L] buffer): dq, dk, dv += , laid out with the same offsets' strides as q, k, v.
    /// output and lse are those of the forward call; the query offset must be 0 (training).
    /// </summary>
    public void AttentionBackward(Tensor q, long qOffset, Tensor k, long kOffset, Tensor v, long vOffset,
        Tensor output, Tensor dOutput, Tensor lse, Tensor dq, long dqOffset, Tensor dk, long dkOffset, Tensor dv, long dvOffset,
        AttentionShape shape, AttentionMaskMode mode, Tensor? allow)
    {
        RequireF32(output, dOutput, lse, dq, dk, dv);
        CheckAttention(q, qOffset, k, kOffset, v, vOffset, output, lse, shape, mode, allow);
        if (shape.QueryOffset != 0) throw new ArgumentException("attention backward needs query offset 0");
        SameLength(output, dOutput);
        long qSpan = AttentionQuerySpan(shape), kSpan = AttentionKeySpan(shape);
        CheckRange(dq, DType.F32, dqOffset, qSpan);
        CheckRange(dk, DType.F32, dkOffset, kSpan);
        CheckRange(dv, DType.F32, dvOffset, kSpan);
        AttentionBackwardCore(q, qOffset, k, kOffset, v, vOffset, output, dOutput, lse, dq, dqOffset, dk, dkOffset, dv, dvOffset,
            shape, mode, mode == AttentionMaskMode.Explicit ? allow : null);
    }

    /// <summary>
    /// Fused softmax + cross-entropy over rows of logits [R, V] with targets [R] (I32) and per-row weights
    /// [R]: losses[r] = weights[r] · (logsumexp(logits[r]) − logits[r, targets[r]]) and
    /// dLogits[r] = weights[r] · (softmax(logits[r]) − onehot(targets[r])) (written, not accumulated; may
    /// alias logits). A row with weight 0 is ignored: loss 0, gradient 0, its target is not read.
    /// </summary>
    public void CrossEntropy(Tensor logits, Tensor targets, Tensor weights, Tensor losses, Tensor dLogits)
    {
        RequireF32(logits, weights, losses, dLogits);
        Require(targets, DType.I32, nameof(targets));
        long rows = logits.Rows;
        if (targets.Length != rows || weights.Length != rows || losses.Length != rows || dLogits.Length != logits.Length)
            throw new ArgumentException($"cross-entropy shapes disagree: logits {logits.ShapeText}, targets {targets.ShapeText}, weights {weights.ShapeText}, losses {losses.ShapeText}, dLogits {dLogits.ShapeText}");
        CrossEntropyCore(logits, targets, weights, losses, dLogits, (int)rows, logits.Columns);
    }

    /// <summary>One AdamW update of param from grad, with moments m and v (all the same length).</summary>
    public void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, AdamWStep step)
    {
        RequireF32(param, grad, m, v);
        SameLength(param, grad); SameLength(param, m); SameLength(param, v);
        step.Validate();
        AdamWCore(param, grad, m, v, step);
    }

    /// <summary>Σ t² over an F32 tensor, accumulated in double where the device can, returned to the host.</summary>
    public double SumOfSquares(Tensor t)
    {
        RequireF32(t);
        return SumOfSquaresCore(t);
    }

    /// <summary>t *= factor, elementwise.</summary>
    public void Scale(Tensor t, float factor)
    {
        RequireF32(t);
        ScaleCore(t, factor);
    }

    /// <summary>
    /// Draws one token per row of logits [R, V] as <see cref="SamplingOptions"/> describes (temperature,
    /// top-k, top-p, Philox uniform of (seed, stream, row)), writing tokens [R] (I32) and stats
    /// [R, <see cref="SamplingOptions.StatCount"/>] (log p of the token, max p, top1−top2 margin, Σ p log p).
    /// The logits stay on the device; only tokens and stats need to come back. <paramref name="keys"/> maps rows to
    /// Philox counters when the logits are a window of longer sequences (default: row r draws at r).
    /// </summary>
    public void SampleTokens(Tensor logits, SamplingOptions options, ulong seed, ulong stream, Tensor tokens, Tensor stats, SampleRows keys = default)
    {
        RequireF32(logits, stats);
        Require(tokens, DType.I32, nameof(tokens));
        options.Validate();
        long rows = logits.Rows;
        if (tokens.Length != rows || stats.Length != rows * SamplingOptions.StatCount)
            throw new ArgumentException($"sampling shapes disagree: logits {logits.ShapeText}, tokens {tokens.ShapeText}, stats {stats.ShapeText}");
        if (keys.Width != 0 && (rows % keys.Width != 0 || keys.Start < 0 || keys.Start + keys.Width > keys.Stride))
            throw new ArgumentException($"sampling row keys {keys} do not tile {rows} rows");
        SampleTokensCore(logits, options, seed, stream, tokens, stats, (int)rows, logits.Columns, keys);
    }

    protected abstract void SampleTokensCore(Tensor logits, SamplingOptions options, ulong seed, ulong stream, Tensor tokens, Tensor stats, int rows, int vocab,
        SampleRows keys);

    // ---- LLaMA-family ops ---------------------------------------------------------------------------

    /// <summary>RMSNorm over the last dimension in float32 statistics: output = x · rstd · weight, rstd = 1/sqrt(mean(x²) + eps) kept per row.</summary>
    public void RmsNorm(Tensor x, Tensor weight, Tensor output, Tensor rstd, float eps)
    {
        RequireF32(x, output, rstd);
        RequireWeight(weight);
        if (weight.Length != x.Columns || output.Length != x.Length || rstd.Length != x.Rows)
            throw new ArgumentException($"rmsnorm shapes disagree: x {x.ShapeText}, w {weight.ShapeText}, out {output.ShapeText}, rstd {rstd.ShapeText}");
        using var w = Float32(weight);
        RmsNormCore(x, w.Tensor, output, rstd, (int)x.Rows, x.Columns, eps);
    }

    /// <summary>Backward of <see cref="RmsNorm"/> from the saved rstd: dX, dWeight += ; a null dWeight (a frozen norm) computes dX only.</summary>
    public void RmsNormBackward(Tensor dOutput, Tensor x, Tensor weight, Tensor rstd, Tensor dX, Tensor? dWeight)
    {
        RequireF32(dOutput, x, rstd, dX);
        RequireWeight(weight);
        if (dWeight is not null) RequireF32(dWeight);
        if (dOutput.Length != x.Length || dX.Length != x.Length || weight.Length != x.Columns || dWeight is not null && dWeight.Length != x.Columns || rstd.Length != x.Rows)
            throw new ArgumentException($"rmsnorm backward shapes disagree: x {x.ShapeText}, dOut {dOutput.ShapeText}, dX {dX.ShapeText}, w {weight.ShapeText}");
        using var w = Float32(weight);
        RmsNormBackwardCore(dOutput, x, w.Tensor, rstd, dX, dWeight, (int)x.Rows, x.Columns);
    }

    /// <summary>
    /// Rotary position embedding in HF's rotate-half convention, in place: for each row (b, t) of a strided
    /// view (element (b, t, h, d) at offset + (b·length + t)·rowStride + h·headDim + d) and each head, the
    /// pair (d, d + headDim/2) is rotated by angle (positionOffset + t)·theta^(−2d/headDim). With
    /// <paramref name="inverse"/> the rotation is undone, which is also the backward pass (RoPE is orthogonal).
    /// </summary>
    public void Rope(Tensor x, long offset, int rowStride, int batch, int length, int heads, int headDim, int positionOffset, float theta, bool inverse)
    {
        RequireF32(x);
        if (batch <= 0 || length <= 0 || heads <= 0 || headDim <= 0 || headDim % 2 != 0 || rowStride < heads * headDim || positionOffset < 0 || !(theta > 0))
            throw new ArgumentException($"bad rope geometry: batch {batch}, length {length}, heads {heads}, head dim {headDim} (must be even), stride {rowStride}, theta {theta}");
        CheckRange(x, DType.F32, offset, ((long)batch * length - 1) * rowStride + (long)heads * headDim);
        RopeCore(x, offset, rowStride, batch, length, heads, headDim, positionOffset, theta, inverse);
    }

    /// <summary>SwiGLU: output = silu(gate) · up, elementwise (silu(g) = g · sigmoid(g)).</summary>
    public void SwiGlu(Tensor gate, Tensor up, Tensor output)
    {
        RequireF32(gate, up, output);
        SameLength(gate, up); SameLength(gate, output);
        SwiGluCore(gate, up, output);
    }

    /// <summary>Backward of <see cref="SwiGlu"/>: dGate, dUp += .</summary>
    public void SwiGluBackward(Tensor gate, Tensor up, Tensor dOutput, Tensor dGate, Tensor dUp)
    {
        RequireF32(gate, up, dOutput, dGate, dUp);
        SameLength(gate, up); SameLength(gate, dOutput); SameLength(gate, dGate); SameLength(gate, dUp);
        SwiGluBackwardCore(gate, up, dOutput, dGate, dUp);
    }

    protected abstract void RmsNormCore(Tensor x, Tensor weight, Tensor output, Tensor rstd, int rows, int columns, float eps);
    protected abstract void RmsNormBackwardCore(Tensor dOutput, Tensor x, Tensor weight, Tensor rstd, Tensor dX, Tensor? dWeight, int rows, int columns);
    protected abstract void RopeCore(Tensor x, long offset, int rowStride, int batch, int length, int heads, int headDim, int positionOffset, float theta, bool inverse);
    protected abstract void SwiGluCore(Tensor gate, Tensor up, Tensor output);
    protected abstract void SwiGluBackwardCore(Tensor gate, Tensor up, Tensor dOutput, Tensor dGate, Tensor dUp);

    protected abstract void EmbeddingBackwardCore(Tensor ids, Tensor dOutput, Tensor dWte, Tensor? dWpe, int positionOffset);
    protected abstract void LayerNormBackwardCore(Tensor dOutput, Tensor x, Tensor weight, Tensor mean, Tensor rstd, Tensor dX, Tensor? dWeight, Tensor? dBias, int rows, int columns);
    protected abstract void MatMulBackwardCore(Tensor dOutput, Tensor x, Tensor w, Tensor dX, Tensor? dW, Tensor? dBias, int m, int k, int n);
    protected abstract void MatMulTransposedBackwardCore(Tensor dOutput, Tensor x, Tensor w, Tensor dX, Tensor? dW, Tensor? dBias, int m, int k, int n);
    protected abstract void GeluBackwardCore(Tensor x, Tensor dOutput, Tensor dX);
    protected abstract void AttentionBackwardCore(Tensor q, long qOffset, Tensor k, long kOffset, Tensor v, long vOffset,
        Tensor output, Tensor dOutput, Tensor lse, Tensor dq, long dqOffset, Tensor dk, long dkOffset, Tensor dv, long dvOffset,
        AttentionShape shape, AttentionMaskMode mode, Tensor? allow);
    protected abstract void CrossEntropyCore(Tensor logits, Tensor targets, Tensor weights, Tensor losses, Tensor dLogits, int rows, int vocab);
    protected abstract void AdamWCore(Tensor param, Tensor grad, Tensor m, Tensor v, AdamWStep step);
    protected abstract double SumOfSquaresCore(Tensor t);
    protected abstract void ScaleCore(Tensor t, float factor);

    protected abstract void FillCore(Tensor t, float value);

    /// <summary>Sets every element of a tensor of any dtype to zero bits.</summary>
    protected abstract void ClearCore(Tensor t);

    /// <summary>destination (F32) = source (F32, BF16 or F16) widened; the lengths are checked.</summary>
    protected abstract void WidenCore(Tensor source, Tensor destination);
    protected abstract void UniformCore(Tensor t, ulong seed, ulong stream);
    protected abstract void CopyRowsCore(Tensor src, long srcOffset, int srcStride, Tensor dst, long dstOffset, int dstStride, int rows, int columns);
    protected abstract void EmbeddingCore(Tensor ids, Tensor wte, Tensor? wpe, Tensor output, int positionOffset);
    protected abstract void LayerNormCore(Tensor x, Tensor weight, Tensor bias, Tensor output, Tensor mean, Tensor rstd, float eps);
    protected abstract void MatMulCore(Tensor x, Tensor w, Tensor? bias, Tensor output, int m, int k, int n);
    protected abstract void MatMulTransposedCore(Tensor x, Tensor w, Tensor? bias, Tensor output, int m, int k, int n);
    protected abstract void GeluCore(Tensor x, Tensor output);
    protected abstract void AddCore(Tensor a, Tensor b, Tensor output);
    protected abstract void SoftmaxCore(Tensor x, Tensor output, int rows, int columns);
    protected abstract void AttentionCore(Tensor q, long qOffset, Tensor k, long kOffset, Tensor v, long vOffset,
        Tensor output, Tensor? lse, AttentionShape shape, AttentionMaskMode mode, Tensor? allow, Tensor? keyLengths);

    // ---- checks ----------------------------------------------------------------------------------

    static void Require(Tensor t, DType dtype, string name)
    {
        if (t.DType != dtype) throw new ArgumentException($"{name} must be {dtype}, got {t}");
    }

    static DType Require16Bit(Tensor t) =>
        Tensor.Is16Bit(t.DType) ? t.DType : throw new ArgumentException($"raw 16-bit elements need a BF16 or F16 tensor, got {t}");

    void RequireF32(params Tensor[] tensors)
    {
        foreach (var t in tensors)
        {
            if (t.DType != DType.F32) throw new ArgumentException($"expected an F32 tensor, got {t}");
            if (t.Device != this) throw new ArgumentException($"tensor {t} belongs to another device than {Name}");
        }
    }

    /// <summary>A weight may be stored as F32, BF16 or F16 (<see cref="DType"/>); ops that read one compute in float32.</summary>
    void RequireWeight(Tensor t)
    {
        if (t.DType is not (DType.F32 or DType.BF16 or DType.F16)) throw new ArgumentException($"expected an F32, BF16 or F16 weight, got {t}");
        if (t.Device != this) throw new ArgumentException($"tensor {t} belongs to another device than {Name}");
    }

    static void SameLength(Tensor a, Tensor b)
    {
        if (a.Length != b.Length) throw new ArgumentException($"length mismatch: {a.ShapeText} vs {b.ShapeText}");
    }

    void CheckRange(Tensor t, DType dtype, long offset, long count)
    {
        Require(t, dtype, "tensor");
        if (t.Device != this) throw new ArgumentException($"tensor {t} belongs to another device than {Name}");
        if (offset < 0 || count < 0 || offset + count > t.Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"range [{offset}, {offset + count}) outside tensor {t} of {t.Length} elements");
    }

    static long AttentionQuerySpan(AttentionShape s) =>
        (s.Batch - 1) * s.QueryBatchStride + (long)(s.QueryLength - 1) * s.QueryRowStride + s.Heads * s.HeadDim;

    static long AttentionKeySpan(AttentionShape s) =>
        (s.Batch - 1) * s.KeyBatchStride + (long)(s.KeyLength - 1) * s.KeyRowStride + s.KvHeads * s.HeadDim;

    void CheckAttention(Tensor q, long qOffset, Tensor k, long kOffset, Tensor v, long vOffset,
        Tensor output, Tensor? lse, AttentionShape shape, AttentionMaskMode mode, Tensor? allow)
    {
        RequireF32(q, k, v, output);
        shape.Validate();
        CheckRange(q, DType.F32, qOffset, AttentionQuerySpan(shape));
        CheckRange(k, DType.F32, kOffset, AttentionKeySpan(shape));
        CheckRange(v, DType.F32, vOffset, AttentionKeySpan(shape));
        if (output.Length != (long)shape.Batch * shape.QueryLength * shape.Heads * shape.HeadDim)
            throw new ArgumentException($"attention output {output.ShapeText} is not [B, Tq, H*D] for {shape}");
        if (lse is not null)
        {
            Require(lse, DType.F32, nameof(lse));
            if (lse.Length != (long)shape.Batch * shape.Heads * shape.QueryLength)
                throw new ArgumentException($"attention lse {lse.ShapeText} is not [B, H, Tq]");
        }
        if (mode == AttentionMaskMode.Explicit)
        {
            if (allow is null) throw new ArgumentException("explicit attention mask mode needs an allow-mask");
            Require(allow, DType.U8, nameof(allow));
            if (shape.QueryOffset != 0 || shape.QueryLength != shape.KeyLength || allow.Length != (long)shape.KeyLength * shape.KeyLength)
                throw new ArgumentException($"allow-mask {allow.ShapeText} must be [L, L] with L = query length = key length");
        }
    }

    void CheckKeyLengths(Tensor keyLengths, AttentionShape shape)
    {
        Require(keyLengths, DType.I32, nameof(keyLengths));
        if (keyLengths.Device != this) throw new ArgumentException($"tensor {keyLengths} belongs to another device than {Name}");
        if (keyLengths.Rank != 1 || keyLengths.Shape[0] != shape.Batch)
            throw new ArgumentException($"attention key lengths {keyLengths.ShapeText} are not [B] = [{shape.Batch}]");
        Span<int> lengths = shape.Batch <= 256 ? stackalloc int[shape.Batch] : new int[shape.Batch];
        Download(keyLengths, 0, lengths);
        shape.ValidateKeyLengths(lengths);
    }

    static void CheckMatMulBackward(Tensor dOutput, Tensor x, Tensor w, Tensor dX, Tensor? dW, Tensor? dBias, int k, int n)
    {
        CheckMatMul(x, k, n, dBias, dOutput, w);
        if (dX.Length != x.Length || dW is not null && dW.Length != w.Length)
            throw new ArgumentException($"matmul backward: dX {dX.ShapeText} / dW {dW?.ShapeText} do not match x {x.ShapeText} / w {w.ShapeText}");
    }

    static void CheckMatMul(Tensor x, int k, int n, Tensor? bias, Tensor output, Tensor w)
    {
        if (x.Columns != k || x.Length % k != 0)
            throw new ArgumentException($"matmul: x {x.ShapeText} does not end in K={k} of weight {w.ShapeText}");
        long m = x.Length / k;
        if (output.Length != m * n)
            throw new ArgumentException($"matmul: output {output.ShapeText} is not [{m}, {n}]");
        if (bias is not null && (bias.DType is not (DType.F32 or DType.BF16 or DType.F16) || bias.Length != n))
            throw new ArgumentException($"matmul: bias {bias} is not a float vector [{n}]");
    }

    public virtual void Dispose()
    {
        Pool.Dispose();
        GC.SuppressFinalize(this);
    }
}
