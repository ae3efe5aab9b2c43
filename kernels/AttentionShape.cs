namespace DiffuSharp.Kernels;

/// <summary>Which key positions a query may attend to.</summary>
public enum AttentionMaskMode
{
    /// <summary>Key j is visible to query i when j &lt;= QueryOffset + i.</summary>
    Causal,
    /// <summary>Every key is visible (diffusion inference and fully annealed training).</summary>
    Bidirectional,
    /// <summary>An explicit [L, L] allow-mask (1 = visible), shared by the batch and heads (mask annealing).</summary>
    Explicit,
}

/// <summary>
/// Geometry of one attention call. q, k and v are read with row strides so that GPT-2's packed qkv
/// buffer [B, T, 3C] and a KV cache [B, Tmax, C] can be used in place. Head h of a row starts at column
/// h * HeadDim; query head h reads key/value head h / (Heads / KvHeads) (grouped-query attention).
/// The output is contiguous [B, QueryLength, Heads * HeadDim]; the log-sum-exp, if kept, is [B, Heads, QueryLength].
/// The forward pass may also take per-row key lengths (see <see cref="ValidateKeyLengths"/>).
/// </summary>
public readonly record struct AttentionShape(
    int Batch, int Heads, int KvHeads, int HeadDim,
    int QueryLength, int KeyLength, int QueryOffset,
    int QueryRowStride, int KeyRowStride,
    long QueryBatchStride, long KeyBatchStride,
    float Scale)
{
    /// <summary>The shape of self-attention over GPT-2's packed qkv rows [B, T, 3C] (q at 0, k at C, v at 2C).</summary>
    public static AttentionShape PackedSelfAttention(int batch, int length, int heads, int headDim)
    {
        int c = heads * headDim;
        return new AttentionShape(batch, heads, heads, headDim, length, length, 0,
            3 * c, 3 * c, (long)length * 3 * c, (long)length * 3 * c, 1.0f / MathF.Sqrt(headDim));
    }

    public int GroupSize => Heads / KvHeads;

    /// <summary>Throws ArgumentException when the geometry is inconsistent; kernels assume it is not.</summary>
    public void Validate()
    {
        if (Batch <= 0 || Heads <= 0 || KvHeads <= 0 || HeadDim <= 0 || QueryLength <= 0 || KeyLength <= 0)
            throw new ArgumentException($"attention dimensions must be positive: {this}");
        if (Heads % KvHeads != 0)
            throw new ArgumentException($"heads ({Heads}) must be a multiple of kv heads ({KvHeads})");
        if (QueryOffset < 0 || QueryOffset + QueryLength > KeyLength)
            throw new ArgumentException($"query offset {QueryOffset} + length {QueryLength} exceeds key length {KeyLength}");
        if (QueryRowStride < Heads * HeadDim || KeyRowStride < KvHeads * HeadDim)
            throw new ArgumentException($"row strides too small for the heads: {this}");
    }

    /// <summary>
    /// Throws ArgumentException unless <paramref name="keyLengths"/> holds one length per batch row, each in
    /// [1, KeyLength]. With key lengths, key j of row b is visible only when j &lt; keyLengths[b], on top of the mask
    /// mode: rows of different lengths right-padded into one batch see none of their padding, and every query (pads
    /// included) keeps key 0, so only an explicit mask can leave a query with no key.
    /// </summary>
    public void ValidateKeyLengths(ReadOnlySpan<int> keyLengths)
    {
        if (keyLengths.Length != Batch)
            throw new ArgumentException($"attention key lengths: expected one per batch row ({Batch}), got {keyLengths.Length}");
        for (int b = 0; b < keyLengths.Length; b++)
        {
            if (keyLengths[b] < 1 || keyLengths[b] > KeyLength)
                throw new ArgumentException($"attention key length {keyLengths[b]} of batch row {b} is outside [1, {KeyLength}]");
        }
    }
}
