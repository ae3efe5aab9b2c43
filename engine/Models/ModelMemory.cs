using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>The sizes of a model family's config that memory estimates need, known before any weight is read.</summary>
public interface IModelConfig
{
    int VocabSize { get; }
    int Positions { get; }
    int Channels { get; }
    int Layers { get; }
    long ParameterCount { get; }

    /// <summary>The [MASK] token of a diffusion model (config.json's mask_token_id), if it names one.</summary>
    int? MaskTokenId { get; }

    /// <summary>Floats per position in one layer's KV cache (keys and values each).</summary>
    int KvWidth { get; }

    /// <summary>Floats per position (row) in one layer's activation buffers, including what training keeps for the backward pass.</summary>
    long LayerActivationFloatsPerRow { get; }
}

/// <summary>
/// Up-front estimates of the device memory a piece of work needs, from the config alone, so that a model,
/// batch or length that cannot fit is refused with the figures before anything is allocated. They follow
/// the buffers the model files allocate (float32 everywhere); anything that overflows is "too much".
/// </summary>
public static class ModelMemory
{
    const long Float = sizeof(float);

    /// <summary>The parameters alone, stored as <paramref name="weightType"/>.</summary>
    public static long Weights(IModelConfig config, DType weightType = DType.F32) =>
        Checked(() => checked(config.ParameterCount * Tensor.ElementSize(weightType)));

    /// <summary>One forward pass over [batch, length] (one set of layer buffers, shared by the layers), logits included; weights excluded.</summary>
    public static long Forward(IModelConfig config, long batch, long length) => Checked(() =>
    {
        long rows = checked(batch * length);
        return checked(Float * rows * (config.LayerActivationFloatsPerRow + HeadFloatsPerRow(config)));
    });

    /// <summary>
    /// A training step over micro-batches of [batch, length] besides the weights: gradients and the two AdamW
    /// moments (of <paramref name="trained"/> parameters, all by default; a LoRA run trains far fewer), every
    /// layer's activations, the backward pass's transient buffers and the logits.
    /// </summary>
    public static long Training(IModelConfig config, long batch, long length, long? trained = null) => Checked(() =>
    {
        checked
        {
            long rows = batch * length;
            long activations = rows * (config.Layers * config.LayerActivationFloatsPerRow + HeadFloatsPerRow(config));
            long backward = rows * config.LayerActivationFloatsPerRow;
            return Float * (3 * (trained ?? config.ParameterCount) + activations + backward);
        }
    });

    /// <summary>Cached decoding of <paramref name="batch"/> rows up to <paramref name="capacity"/> positions: the KV cache and a one-position pass.</summary>
    public static long Decoding(IModelConfig config, long batch, long capacity) => Checked(() =>
        checked(Float * 2 * config.Layers * batch * capacity * config.KvWidth + Forward(config, batch, 1)));

    /// <summary>The sum of estimates, saturating: one that overflowed (long.MaxValue) keeps the total "too much".</summary>
    public static long Total(long first, long second) => first > long.MaxValue - second ? long.MaxValue : first + second;

    /// <summary>Embedding, final norm and logits per row.</summary>
    static long HeadFloatsPerRow(IModelConfig config) => checked(3L * config.Channels + 4 + config.VocabSize);

    /// <summary>The estimate, or long.MaxValue when its checked arithmetic overflows (then nothing can hold it).</summary>
    static long Checked(Func<long> estimate)
    {
        try
        {
            return estimate();
        }
        catch (OverflowException)
        {
            return long.MaxValue;
        }
    }
}
