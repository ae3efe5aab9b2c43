using System.Text.Json.Nodes;
using DiffuSharp.Kernels;
using DiffuSharp.Layers;
using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>A full set of a model's tensors under their HF names: its parameters, or same-shaped gradients or optimizer moments.</summary>
public interface IParameterSet : IDisposable
{
    /// <summary>Every tensor under its HF name, in checkpoint order (views into <see cref="Storage"/>).</summary>
    IEnumerable<(string Name, Tensor Tensor)> Named();

    /// <summary>
    /// The contiguous buffers that hold the set (<see cref="ParameterBuffers"/>), for whole-set ops: norm, clip,
    /// AdamW, all-reduce. The sets of one model pair buffer for buffer.
    /// </summary>
    IReadOnlyList<Tensor> Storage { get; }
}

/// <summary>What the trainer needs from a model family beyond inference.</summary>
public interface ITrainableModel : ILanguageModel
{
    IParameterSet Parameters { get; }
    long ParameterCount { get; }

    /// <summary>
    /// A zero-filled set of the parameters' shapes and layout (gradients, AdamW moments). With <paramref name="allocate"/>,
    /// the tensors it rejects are absent (no memory): backward computes no gradient for them, as for frozen weights.
    /// </summary>
    IParameterSet ZeroParameterSet(Func<string, bool>? allocate = null);

    /// <summary>The model's HF config.json, with mask_token_id when given.</summary>
    JsonObject ConfigJson(int? maskTokenId);

    /// <summary>The file of <see cref="WriteFiles"/> that holds the weights (and the step in its metadata).</summary>
    string WeightsFile { get; }

    /// <summary>
    /// Writes the model's own files into a checkpoint folder, each flushed to disk: model.safetensors (HF names, with
    /// <paramref name="metadata"/>) and config.json (with mask_token_id when given), or a LoRA model's PEFT files. The
    /// weights are stored as <paramref name="saveType"/> (F32, BF16 or F16; default: the type they are held in, and
    /// float32 for LoRA adapters).
    /// </summary>
    void WriteFiles(string directory, IReadOnlyDictionary<string, string> metadata, int? maskTokenId, DType? saveType = null);

    /// <summary>
    /// One forward pass over ids [B, T] that keeps every layer's buffers for <see cref="Backward"/>; the result's
    /// logits [B, T, V] are meant to be overwritten with dLoss/dLogits before the backward call.
    /// </summary>
    ForwardResult ForwardForTraining(ReadOnlySpan<int> ids, int batch, int length, AttentionMaskMode mode, Tensor? allow);

    /// <summary>
    /// Backpropagates from the pass's logits, which must hold dLoss/dLogits, and adds the parameter gradients into
    /// <paramref name="grads"/> (a set from <see cref="ZeroParameterSet"/>), so micro-batches accumulate.
    /// </summary>
    void Backward(ForwardResult pass, IParameterSet grads);

    /// <summary>The projections of the blocks (not the head) under their HF module names, e.g. transformer.h.0.attn.c_attn.</summary>
    IEnumerable<(string Module, Linear Layer)> Projections();

    /// <summary>Appends a token (a new [MASK]) whose embedding, and untied head row, is the mean of the others; returns its id.</summary>
    int AppendToken();
}

public static class TrainableModelExtensions
{
    /// <summary>
    /// Copies every tensor of <paramref name="from"/> into the same-named one of <paramref name="to"/>; a table that
    /// grew by one row (an appended token) gets the mean of the old rows as its new row.
    /// </summary>
    internal static void CopyGrowing(Device device, IParameterSet from, IParameterSet to)
    {
        var target = to.Named().ToDictionary(n => n.Name, n => n.Tensor, StringComparer.Ordinal);
        foreach (var (name, source) in from.Named())
        {
            var dest = target[name];
            var values = device.ToArray(source);
            if (dest.Length != source.Length) values = AppendMeanRow(values, source.Shape[0], source.Shape[1]);
            device.UploadRounded(dest, 0, values);
        }
    }

    /// <summary>A [V, C] table with one more row, the mean of the others.</summary>
    static float[] AppendMeanRow(float[] rows, int v, int c)
    {
        var grown = new float[(long)(v + 1) * c];
        rows.CopyTo(grown, 0);
        for (int j = 0; j < c; j++)
        {
            double sum = 0;
            for (int i = 0; i < v; i++) sum += rows[(long)i * c + j];
            grown[(long)v * c + j] = (float)(sum / v);
        }
        return grown;
    }
}
