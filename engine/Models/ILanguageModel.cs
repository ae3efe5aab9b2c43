using DiffuSharp.Kernels;
using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>What decoding and denoising need from a model family (GPT-2, LLaMA): full logits and cached decoding.</summary>
public interface ILanguageModel : IDisposable
{
    Device Device { get; }
    int VocabSize { get; }
    int Positions { get; }
    int Layers { get; }

    /// <summary>Floats per position in one layer's KV cache.</summary>
    int KvWidth { get; }

    /// <summary>The [MASK] token named by the checkpoint's config, if any.</summary>
    int? MaskTokenId { get; }

    /// <summary>One forward pass over ids [B, T]; the result holds logits [B, T, V] on the device until disposed.</summary>
    ForwardResult Logits(ReadOnlySpan<int> ids, int batch, int length, AttentionMaskMode mode, Tensor? allow = null);

    /// <summary>
    /// Runs ids [B, T] causally after the cached positions, appends their keys and values to the cache and
    /// writes the logits of the last position [B, V] into <paramref name="lastLogits"/>.
    /// </summary>
    void Decode(ReadOnlySpan<int> ids, int batch, KvCache cache, Span<float> lastLogits);
}

/// <summary>Logits of a forward pass and the activation buffers that hold them (returned to the pool on Dispose).</summary>
public sealed class ForwardResult(Tensor logits, IDisposable owner) : IDisposable
{
    public Tensor Logits { get; } = logits;
    public void Dispose() => owner.Dispose();
}

public static class LanguageModelExtensions
{
    public static KvCache CreateKvCache(this ILanguageModel model, int batch, int capacity)
    {
        if (capacity > model.Positions)
            throw new DiffuException($"KV cache of {capacity} tokens exceeds the model's {model.Positions} positions");
        return new KvCache(model.Device, model.Layers, batch, capacity, model.KvWidth);
    }
}
