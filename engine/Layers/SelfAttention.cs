using DiffuSharp.Kernels;
using DiffuSharp.Runtime;

namespace DiffuSharp.Layers;

/// <summary>
/// Where one layer's queries, keys and values lie: rows of <see cref="QueryStride"/> (queries) and
/// <see cref="KvStride"/> (keys, values) elements, each starting at its offset. GPT-2 packs all three in one
/// [B, T, 3C] tensor; LLaMA has three.
/// </summary>
public readonly record struct HeadTensors(Tensor Q, long QOffset, int QueryStride, Tensor K, long KOffset, Tensor V, long VOffset, int KvStride)
{
    /// <summary>q, k and v side by side in each row of one [B, T, 3C] tensor.</summary>
    public static HeadTensors Packed(Tensor qkv, int channels) => new(qkv, 0, 3 * channels, qkv, channels, qkv, 2 * channels, 3 * channels);

    /// <summary>q [B, T, H·D], k and v [B, T, KvH·D].</summary>
    public static HeadTensors Separate(Tensor q, Tensor k, Tensor v) => new(q, 0, q.Columns, k, 0, v, 0, k.Columns);
}

/// <summary>
/// What every attention layer of one forward pass shares: the mask mode (with the allow-mask of
/// <see cref="AttentionMaskMode.Explicit"/>), per-row key lengths for right-padded rows, and the cache the pass
/// runs over, with the position of its first query. Over a cache, a causal pass continues it (its first position
/// is the cache's length); a bidirectional pass recomputes a window of positions anywhere up to the cache's length
/// and attends to every cached position. Checked once, when the pass is made.
/// </summary>
public sealed class AttentionPass : IDisposable
{
    public AttentionPass(Device device, int batch, int length, AttentionMaskMode mode, Tensor? allow = null, KvCache? cache = null,
        ReadOnlySpan<int> rowLengths = default, int? position = null)
    {
        if (position is not null && cache is null) throw new ArgumentException("a pass's first position is for a pass over a KV cache");
        int offset = position ?? cache?.Length ?? 0;
        if (cache is not null)
        {
            bool continues = mode switch
            {
                AttentionMaskMode.Causal => offset == cache.Length,
                AttentionMaskMode.Bidirectional => offset >= 0 && offset <= cache.Length,
                _ => false,
            };
            if (cache.Batch != batch || !continues || offset + length > cache.Capacity)
                throw new ArgumentException($"KV cache [{cache.Batch}, {cache.Capacity}] holding {cache.Length} positions cannot take a {mode} pass " +
                    $"of {length} tokens at position {offset} for batch {batch}");
        }
        if (!rowLengths.IsEmpty)
        {
            if (cache is not null) throw new ArgumentException("row lengths are for a full forward pass, not for a pass over a KV cache");
            if (rowLengths.Length != batch) throw new ArgumentException($"expected {batch} row lengths, got {rowLengths.Length}");
            foreach (int rowLength in rowLengths)
                if (rowLength < 1 || rowLength > length)
                    throw new ArgumentException($"row length {rowLength} is outside [1, {length}]");
        }
        Batch = batch; Length = length; Mode = mode; Allow = allow; Cache = cache; Offset = offset;
        KeyLength = cache is null ? length : mode == AttentionMaskMode.Causal ? offset + length : Math.Max(cache.Length, offset + length);
        KeyLengths = rowLengths.IsEmpty ? null : device.FromArray(rowLengths, batch);
    }

    public int Batch { get; }
    public int Length { get; }
    public AttentionMaskMode Mode { get; }
    public Tensor? Allow { get; }
    public KvCache? Cache { get; }

    /// <summary>Per-row key lengths [B] (I32), or null when every row is whole.</summary>
    public Tensor? KeyLengths { get; }

    /// <summary>The position of the pass's first token: the one asked for, else the cache's length, else 0.</summary>
    public int Offset { get; }

    /// <summary>How many keys each query attends over: the pass's own, or every cached position once the pass has written its own.</summary>
    public int KeyLength { get; }

    /// <summary>Whether a backward pass can follow: neither a cache nor per-row key lengths (which have no backward).</summary>
    public bool HasBackward => Cache is null && KeyLengths is null;

    /// <summary>Marks the pass's positions as cached, once every layer has written its keys and values.</summary>
    public void Complete()
    {
        if (Cache is not null) Cache.Length = KeyLength;
    }

    public void Dispose() => KeyLengths?.Dispose();
}

/// <summary>
/// Multi-head (grouped-query when <see cref="KvHeads"/> &lt; <see cref="Heads"/>) scaled dot-product attention with
/// optional rotate-half RoPE on queries and keys. It owns the choice the pass asks for: self-attention under the
/// pass's mask mode, or, with a cache, writing this layer's keys and values at the pass's positions and attending
/// over the cached keys under the pass's mode.
/// </summary>
public sealed class SelfAttention(int heads, int kvHeads, int headDim, float? ropeTheta)
{
    public int Heads { get; } = heads;
    public int KvHeads { get; } = kvHeads;
    public int HeadDim { get; } = headDim;

    /// <summary>RoPE's base, or null for no rotary embedding (GPT-2's positions are learned).</summary>
    public float? RopeTheta { get; } = ropeTheta;

    float Scale => 1f / MathF.Sqrt(HeadDim);

    /// <summary>output [B, T, H·D] from the heads; lse [B, H, T] (optional) keeps each query's log-sum-exp for backward.</summary>
    public void Forward(in HeadTensors x, Tensor output, Tensor? lse, AttentionPass pass, int layer)
    {
        var d = output.Device;
        int b = pass.Batch, t = pass.Length;
        if (RopeTheta is float theta)
        {
            d.Rope(x.Q, x.QOffset, x.QueryStride, b, t, Heads, HeadDim, pass.Offset, theta, inverse: false);
            d.Rope(x.K, x.KOffset, x.KvStride, b, t, KvHeads, HeadDim, pass.Offset, theta, inverse: false);
        }
        if (pass.Cache is not KvCache cache)
        {
            d.Attention(x.Q, x.QOffset, x.K, x.KOffset, x.V, x.VOffset, output, lse, Shape(x, b, t), pass.Mode, pass.Allow, pass.KeyLengths);
            return;
        }
        cache.Write(layer, x.K, x.KOffset, x.V, x.VOffset, x.KvStride, pass.Offset, t);
        var (keys, values) = cache.Layer(layer);
        var shape = new AttentionShape(b, Heads, KvHeads, HeadDim, t, pass.KeyLength, pass.Offset,
            x.QueryStride, cache.Width, (long)t * x.QueryStride, (long)cache.Capacity * cache.Width, Scale);
        d.Attention(x.Q, x.QOffset, keys, 0, values, 0, output, lse, shape, pass.Mode, null);
    }

    /// <summary>
    /// dx += the gradients of q, k and v (laid out like x) from dOutput, recomputing the probabilities from the
    /// forward's lse; RoPE's backward rotates dq and dk back.
    /// </summary>
    public void Backward(in HeadTensors x, Tensor output, Tensor dOutput, Tensor lse, in HeadTensors dx, AttentionPass pass)
    {
        if (!pass.HasBackward) throw new ArgumentException("a pass over a cache or with row lengths has no backward");
        var d = output.Device;
        int b = pass.Batch, t = pass.Length;
        d.AttentionBackward(x.Q, x.QOffset, x.K, x.KOffset, x.V, x.VOffset, output, dOutput, lse,
            dx.Q, dx.QOffset, dx.K, dx.KOffset, dx.V, dx.VOffset, Shape(x, b, t), pass.Mode, pass.Allow);
        if (RopeTheta is float theta)
        {
            d.Rope(dx.Q, dx.QOffset, dx.QueryStride, b, t, Heads, HeadDim, 0, theta, inverse: true);
            d.Rope(dx.K, dx.KOffset, dx.KvStride, b, t, KvHeads, HeadDim, 0, theta, inverse: true);
        }
    }

    AttentionShape Shape(in HeadTensors x, int b, int t) =>
        new(b, Heads, KvHeads, HeadDim, t, t, 0, x.QueryStride, x.KvStride, (long)t * x.QueryStride, (long)t * x.KvStride, Scale);
}
