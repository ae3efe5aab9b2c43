using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Layers;
using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>What decoding and denoising need from a model family (GPT-2, LLaMA): full logits and cached decoding.</summary>
public interface ILanguageModel : IDisposable
{
    Device Device { get; }

    /// <summary>The family's sizes (for memory estimates).</summary>
    IModelConfig Config { get; }

    int VocabSize { get; }
    int Positions { get; }
    int Layers { get; }

    /// <summary>Floats per position in one layer's KV cache.</summary>
    int KvWidth { get; }

    /// <summary>The [MASK] token named by the checkpoint's config, if any.</summary>
    int? MaskTokenId { get; }

    /// <summary>The storage type of the network's weights: F32, or BF16 / F16 (<see cref="WeightTypes"/>).</summary>
    DType WeightType { get; }

    /// <summary>
    /// One forward pass over ids [B, T]; the result holds logits [B, T, V] on the device until disposed.
    /// <paramref name="rowLengths"/> (optional, one per row, each in [1, T]) marks rows right-padded to T: no position
    /// of row b attends to positions from rowLengths[b] on, so the logits of its first rowLengths[b] positions are
    /// those of the row run alone; the logits at its pad positions mean nothing.
    /// </summary>
    ForwardResult Logits(ReadOnlySpan<int> ids, int batch, int length, AttentionMaskMode mode, Tensor? allow = null,
        ReadOnlySpan<int> rowLengths = default);

    /// <summary>
    /// Runs ids [B, T] causally after the cached positions, appends their keys and values to the cache and
    /// writes the logits of the last position [B, V] into <paramref name="lastLogits"/>.
    /// </summary>
    void Decode(ReadOnlySpan<int> ids, int batch, KvCache cache, Span<float> lastLogits);

    /// <summary>
    /// One bidirectional pass over ids [B, T] standing at positions position .. position + T − 1 of sequences whose
    /// other positions' keys and values the cache holds (block-wise approximate caching for denoising): the window's
    /// keys and values overwrite the cached ones, every query attends to every cached position, and the result holds
    /// the window's logits [B, T, V]. A pass at position 0 over the whole length fills an empty cache; the position
    /// may not lie past the cache's length.
    /// </summary>
    ForwardResult CachedLogits(ReadOnlySpan<int> ids, int batch, int length, KvCache cache, int position);
}

/// <summary>
/// Logits of a forward pass and the activation buffers that hold them (returned to the pool on Dispose); for a
/// training pass, also what its backward needs.
/// </summary>
public sealed class ForwardResult(Tensor logits, IDisposable owner, AttentionMaskMode mode = AttentionMaskMode.Causal, Tensor? allow = null) : IDisposable
{
    public Tensor Logits { get; } = logits;
    internal IDisposable Owner { get; } = owner;
    internal AttentionMaskMode Mode { get; } = mode;
    internal Tensor? Allow { get; } = allow;
    public void Dispose() => Owner.Dispose();
}

public static class LanguageModelExtensions
{
    /// <summary>
    /// Checks the ids [batch, length] of a forward pass against the vocabulary and the positions left after its
    /// first position. The mask mode, cache and row lengths are the <see cref="AttentionPass"/>'s to check.
    /// </summary>
    internal static void CheckIds(this ILanguageModel model, ReadOnlySpan<int> ids, int batch, int length, int position)
    {
        if (ids.Length != batch * length) throw new ArgumentException($"expected {batch * length} ids for [{batch}, {length}], got {ids.Length}");
        foreach (int id in ids)
            if ((uint)id >= (uint)model.VocabSize)
                throw new DiffuException($"token id {id} is outside the vocabulary [0, {model.VocabSize})");
        if (position + length > model.Positions)
            throw new DiffuException($"sequence of {position + length} tokens exceeds the model's {model.Positions} positions");
    }

    /// <summary>Reads checkpoint tensor <paramref name="name"/> into <paramref name="destination"/>, after checking its shape against the one the config implies.</summary>
    internal static void LoadInto(this SafeTensorsCheckpoint checkpoint, string name, Tensor destination)
    {
        var info = checkpoint.Info(name);
        if (!info.Shape.AsSpan().SequenceEqual(destination.Shape))
            throw new DiffuException($"{string.Join(", ", checkpoint.Files)}: tensor '{name}' has shape [{string.Join(", ", info.Shape)}], config.json implies {destination.ShapeText}");
        var device = destination.Device;
        if (!Tensor.Is16Bit(destination.DType))
        {
            device.Upload(destination, 0, checkpoint.ReadFloat32(name));
            return;
        }
        // A 16-bit destination is filled a megabyte-sized piece at a time: bits as stored when the file holds the same
        // type (copied once, never through float32), else converted and rounded; no whole-tensor host copy either way.
        bool same = info.DType == (destination.DType == DType.BF16 ? SafeTensorsDType.BF16 : SafeTensorsDType.F16);
        const int Chunk = 1 << 20;
        var bits = new ushort[(int)Math.Min(Chunk, destination.Length)];
        var floats = same ? null : new float[bits.Length];
        for (long start = 0; start < destination.Length; start += Chunk)
        {
            int n = (int)Math.Min(Chunk, destination.Length - start);
            if (same)
            {
                checkpoint.ReadBits16(name, start, bits.AsSpan(0, n));
                device.Upload(destination, start, bits.AsSpan(0, n));
            }
            else
            {
                checkpoint.ReadFloat32(name, start, floats.AsSpan(0, n));
                device.UploadRounded(destination, start, floats.AsSpan(0, n));
            }
        }
    }

    public static KvCache CreateKvCache(this ILanguageModel model, int batch, int capacity)
    {
        if (capacity > model.Positions)
            throw new DiffuException($"KV cache of {capacity} tokens exceeds the model's {model.Positions} positions");
        return new KvCache(model.Device, model.Layers, batch, capacity, model.KvWidth);
    }
}
