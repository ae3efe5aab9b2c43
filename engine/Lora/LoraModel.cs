using System.Text.Json.Nodes;
using DiffuSharp.Kernels;
using DiffuSharp.Layers;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Lora;

/// <summary>
/// A frozen base model with LoRA adapters in its projections' slots, trained as a model of its own: its parameters
/// are the adapters and, with <see cref="TrainsEmbeddings"/>, the base's token embedding (PEFT's modules_to_save; with a
/// tied head that trains the head too). The base's gradient set holds only what is trained (<see cref="Tensor.Absent"/>
/// for the rest), so the frozen weights cost no gradient or optimizer memory. Inference runs the base with the adapters
/// in place.
/// </summary>
public sealed class LoraModel : ITrainableModel
{
    readonly ITrainableModel model;
    readonly Func<string, bool> trained;
    LoraParameters? bound;

    /// <summary>Takes ownership of <paramref name="baseModel"/> and <paramref name="adapters"/> (made for it) and attaches the adapters.</summary>
    public LoraModel(ITrainableModel baseModel, LoraSet adapters, bool trainEmbeddings, string baseModelPath)
    {
        model = baseModel;
        Adapters = adapters;
        TrainsEmbeddings = trainEmbeddings;
        BaseModelPath = baseModelPath;
        EmbeddingName = ModelFamily.Of(baseModel.Config).TokenEmbeddingName;
        trained = name => trainEmbeddings && name == EmbeddingName;
        var embedding = baseModel.Parameters.Named().Where(n => trained(n.Name)).ToList();
        Parameters = new LoraParameters(adapters, embedding, owned: null);
        adapters.Attach(null);
    }

    /// <summary>New adapters on <paramref name="targets"/> with PEFT's initialisation (B = 0: the model starts as the base).</summary>
    public static LoraModel Create(ITrainableModel baseModel, string baseModelPath, LoraTargets targets, int rank, float alpha, bool trainEmbeddings, ulong seed) =>
        new(baseModel, LoraSet.CreateRandom(baseModel, rank, alpha, targets, seed), trainEmbeddings, baseModelPath);

    public ITrainableModel Base => model;
    public LoraSet Adapters { get; }
    public bool TrainsEmbeddings { get; }

    /// <summary>The base model folder (adapter_config.json's base_model_name_or_path).</summary>
    public string BaseModelPath { get; }

    /// <summary>The base's token-embedding tensor name (what modules_to_save trains).</summary>
    public string EmbeddingName { get; }

    public IParameterSet Parameters { get; }
    public DType WeightType => model.WeightType;
    public long ParameterCount => Parameters.Named().Sum(n => n.Tensor.Length);

    public IParameterSet ZeroParameterSet(Func<string, bool>? allocate = null)
    {
        var adapters = Adapters.ZerosLike();
        try
        {
            var baseSet = model.ZeroParameterSet(trained);
            return new LoraParameters(adapters, baseSet.Named().ToList(), baseSet);
        }
        catch
        {
            adapters.Dispose();
            throw;
        }
    }

    public void Backward(ForwardResult pass, IParameterSet grads)
    {
        if (grads is not LoraParameters g || g.Base is null) throw new ArgumentException("the gradients were not made by this model's ZeroParameterSet");
        if (!ReferenceEquals(bound, g))
        {
            Adapters.Attach(g.Adapters);
            bound = g;
        }
        model.Backward(pass, g.Base);
    }

    public ForwardResult ForwardForTraining(ReadOnlySpan<int> ids, int batch, int length, AttentionMaskMode mode, Tensor? allow) =>
        model.ForwardForTraining(ids, batch, length, mode, allow);

    public ForwardResult Logits(ReadOnlySpan<int> ids, int batch, int length, AttentionMaskMode mode, Tensor? allow = null, ReadOnlySpan<int> rowLengths = default) =>
        model.Logits(ids, batch, length, mode, allow, rowLengths);

    public void Decode(ReadOnlySpan<int> ids, int batch, KvCache cache, Span<float> lastLogits) => model.Decode(ids, batch, cache, lastLogits);

    public ForwardResult CachedLogits(ReadOnlySpan<int> ids, int batch, int length, KvCache cache, int position) =>
        model.CachedLogits(ids, batch, length, cache, position);

    public IEnumerable<(string Module, Linear Layer)> Projections() => model.Projections();

    public JsonObject ConfigJson(int? maskTokenId) => model.ConfigJson(maskTokenId);

    public string WeightsFile => PeftAdapter.WeightsFile;

    /// <summary>PEFT's adapter_model.safetensors (the adapters and any trained embedding) and adapter_config.json.</summary>
    public void WriteFiles(string directory, IReadOnlyDictionary<string, string> metadata, int? maskTokenId, DType? saveType = null) =>
        PeftAdapter.Write(directory, this, metadata, saveType ?? DType.F32);

    public int AppendToken() =>
        throw new DiffuException("a LoRA run keeps the base model's vocabulary: append the [MASK] token in a full run first (--mask-token new without --lora-rank)");

    /// <summary>Folds the adapters into the base weights and hands the base over (the caller owns it; this model is spent).</summary>
    public ITrainableModel MergeIntoBase()
    {
        Adapters.Merge();
        return model;
    }

    public Device Device => model.Device;
    public IModelConfig Config => model.Config;
    public int VocabSize => model.VocabSize;
    public int Positions => model.Positions;
    public int Layers => model.Layers;
    public int KvWidth => model.KvWidth;
    public int? MaskTokenId => model.MaskTokenId;

    public void Dispose()
    {
        Adapters.Dispose();
        model.Dispose();
    }
}

/// <summary>
/// The trained tensors of a <see cref="LoraModel"/> as one set: the adapters' buffers, then the trained base tensors
/// (the embedding) under PEFT's names. Its gradients and moments are the same kind of set, pairing buffer for buffer.
/// </summary>
sealed class LoraParameters : IParameterSet
{
    readonly IReadOnlyList<(string Name, Tensor Tensor)> baseTensors;
    readonly List<Tensor> storage;

    /// <summary><paramref name="owned"/> is the base gradient (or moment) set the base tensors live in, disposed with this one; null for the model's own parameters.</summary>
    public LoraParameters(LoraSet adapters, IReadOnlyList<(string Name, Tensor Tensor)> baseTensors, IParameterSet? owned)
    {
        Adapters = adapters;
        this.baseTensors = baseTensors;
        Base = owned;
        storage = [.. adapters.Storage, .. baseTensors.Select(t => t.Tensor)];
    }

    public LoraSet Adapters { get; }

    /// <summary>The base model's gradient set (only the trained tensors present), for a gradient or moment set.</summary>
    public IParameterSet? Base { get; }

    public IEnumerable<(string Name, Tensor Tensor)> Named() =>
        Adapters.Named().Concat(baseTensors.Select(t => (PeftAdapter.Prefix + t.Name, t.Tensor)));

    public IReadOnlyList<Tensor> Storage => storage;

    public void Dispose()
    {
        if (Base is null) return;
        Adapters.Dispose();
        Base.Dispose();
    }
}
