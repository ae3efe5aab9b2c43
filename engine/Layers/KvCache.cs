using DiffuSharp.Runtime;

namespace DiffuSharp.Layers;

/// <summary>
/// Keys and values of every layer, [B, capacity, width] each: the positions decoded so far in autoregressive
/// decoding, or every position of a denoised sequence, of which a pass recomputes a window (block-wise
/// approximate caching, Fast-dLLM).
/// </summary>
public sealed class KvCache : IDisposable
{
    readonly (Tensor Keys, Tensor Values)[] layers;

    public KvCache(Device device, int layerCount, int batch, int capacity, int width)
    {
        Batch = batch; Capacity = capacity; Width = width;
        layers = new (Tensor, Tensor)[layerCount];
        for (int i = 0; i < layers.Length; i++)
            layers[i] = (device.Allocate(DType.F32, batch, capacity, width), device.Allocate(DType.F32, batch, capacity, width));
    }

    public int Batch { get; }
    public int Capacity { get; }

    /// <summary>Floats per cached position: the key (or value) heads times the head dimension.</summary>
    public int Width { get; }

    /// <summary>How many positions are filled (always a prefix: a pass writes no further than its end, and starts no later than Length).</summary>
    public int Length { get; internal set; }

    public (Tensor Keys, Tensor Values) Layer(int index) => layers[index];

    /// <summary>Copies rows [B, T] of keys and values (each row <paramref name="rowStride"/> apart, starting at the offsets) into positions position .. position + T − 1.</summary>
    internal void Write(int layer, Tensor keys, long keyOffset, Tensor values, long valueOffset, int rowStride, int position, int length)
    {
        var device = keys.Device;
        var (k, v) = layers[layer];
        for (int b = 0; b < Batch; b++)
        {
            long src = (long)b * length * rowStride, dst = ((long)b * Capacity + position) * Width;
            device.CopyRows(keys, keyOffset + src, rowStride, k, dst, Width, length, Width);
            device.CopyRows(values, valueOffset + src, rowStride, v, dst, Width, length, Width);
        }
    }

    public void Dispose()
    {
        foreach (var (k, v) in layers) { k.Dispose(); v.Dispose(); }
    }
}
