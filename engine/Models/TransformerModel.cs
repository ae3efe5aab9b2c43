using System.Text.Json.Nodes;
using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Layers;
using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>
/// What GPT-2 and LLaMA share around their networks: the inference wrappers (full logits, cached decoding), the
/// training pass and its backward, input checks, parameter sets and vocabulary growth. A family supplies its
/// config, its parameter set, its block buffers and the network itself: <see cref="Forward(ModelActivations{TBlock}, AttentionPass)"/>
/// and <see cref="Backward(ModelActivations{TBlock}, TWeights, AttentionPass)"/>, side by side in its file.
/// </summary>
public abstract class TransformerModel<TConfig, TWeights, TBlock> : ITrainableModel
    where TConfig : IModelConfig
    where TWeights : ParameterSet
    where TBlock : BlockActivations
{
    protected TransformerModel(TConfig config, Device device, TWeights weights)
    {
        Config = config; Device = device; Weights = weights;
    }

    public TConfig Config { get; private set; }
    IModelConfig ILanguageModel.Config => Config;
    public Device Device { get; }
    public TWeights Weights { get; private set; }

    public IParameterSet Parameters => Weights;
    public long ParameterCount => Config.ParameterCount;
    public int VocabSize => Config.VocabSize;
    public int Positions => Config.Positions;
    public int Layers => Config.Layers;
    public int KvWidth => Config.KvWidth;
    public int? MaskTokenId => Config.MaskTokenId;
    public DType WeightType => Weights.StorageType;

    /// <summary>
    /// A zero-filled parameter set of <paramref name="config"/>'s shapes on the model's device (only the tensors <paramref name="allocate"/>
    /// accepts, when given), of <paramref name="dtype"/> (gradients and moments are float32).
    /// </summary>
    protected abstract TWeights ZeroWeights(TConfig config, Func<string, bool>? allocate, DType dtype = DType.F32);

    /// <summary>The config with another vocabulary size, or mask token.</summary>
    protected abstract TConfig With(TConfig config, int vocabSize, int? maskTokenId);

    /// <summary>One block's buffers for a (batch, length); <paramref name="keepLse"/> for training.</summary>
    protected abstract TBlock CreateBlock(int batch, int length, bool keepLse);

    /// <summary>Whether the family's norms keep a mean (LayerNorm) besides the rstd.</summary>
    protected abstract bool NormsKeepMeans { get; }

    /// <summary>The network: embeds act.Ids, runs the blocks under <paramref name="pass"/> and fills the logits (<see cref="ComputeLogits"/>).</summary>
    protected abstract void Forward(ModelActivations<TBlock> act, AttentionPass pass);

    /// <summary>The network in reverse, from act.Logits holding dLoss/dLogits; adds the gradients into <paramref name="grads"/>.</summary>
    protected abstract void Backward(ModelActivations<TBlock> act, TWeights grads, AttentionPass pass);

    public IParameterSet ZeroParameterSet(Func<string, bool>? allocate = null) => ZeroWeights(Config, allocate);

    /// <summary>The blocks' projections, in order.</summary>
    protected abstract IEnumerable<Linear> BlockProjections();

    public IEnumerable<(string Module, Linear Layer)> Projections()
    {
        var names = new Dictionary<Tensor, string>(ReferenceEqualityComparer.Instance);
        foreach (var (name, tensor) in Weights.Named()) names[tensor] = name;
        foreach (var layer in BlockProjections())
        {
            string weight = names[layer.Weight];
            yield return (weight[..^".weight".Length], layer);
        }
    }

    public JsonObject ConfigJson(int? maskTokenId) => ToJson(With(Config, Config.VocabSize, maskTokenId ?? Config.MaskTokenId));

    public string WeightsFile => RunLayout.ModelFile;

    /// <summary>
    /// Tensors are downloaded one at a time as the writer reaches them, so saving holds one tensor's host copy, not the model's.
    /// </summary>
    public void WriteFiles(string directory, IReadOnlyDictionary<string, string> metadata, int? maskTokenId, DType? saveType = null)
    {
        var type = saveType ?? WeightType;
        SafeTensorsWriter.Write(Path.Combine(directory, RunLayout.ModelFile), Weights.Named().Select(p => ParameterEntries.Entry(p.Name, p.Tensor, type)), metadata);
        OutputFile.WriteNew(Path.Combine(directory, RunLayout.ConfigFile), System.Text.Encoding.UTF8.GetBytes(
            ConfigJson(maskTokenId).ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }) + "\n"));
    }

    protected abstract JsonObject ToJson(TConfig config);

    /// <summary>Activation buffers for a (batch, length); keeps every layer's buffers when training needs them.</summary>
    public ModelActivations<TBlock> CreateActivations(int batch, int length, bool keepAllLayers = false) =>
        NewActivations(batch, length, keepAllLayers, lastOnly: false);

    ModelActivations<TBlock> NewActivations(int batch, int length, bool keepAllLayers, bool lastOnly) =>
        new(Device, batch, length, Config.Channels, Config.VocabSize, Config.Layers, keepAllLayers, lastOnly, NormsKeepMeans,
            keepLse => CreateBlock(batch, length, keepLse));

    /// <summary>
    /// Runs the network on ids [batch, length] and fills <paramref name="act"/>; the logits end up in act.Logits
    /// [B, T, V] (or act.LastLogits in a decoding set). With a KV cache, the ids stand at positions from
    /// <paramref name="position"/> (default: the cache's length), their keys and values are written into the cache
    /// and attention sees the cached keys (<see cref="AttentionPass"/>).
    /// With <paramref name="rowLengths"/>, rows are right-padded and attention never reaches their padding
    /// (<see cref="ILanguageModel.Logits"/>); such a pass has no backward.
    /// </summary>
    public void Forward(ReadOnlySpan<int> ids, ModelActivations<TBlock> act, AttentionMaskMode mode, Tensor? allow = null, KvCache? cache = null,
        ReadOnlySpan<int> rowLengths = default, int? position = null)
    {
        if (!rowLengths.IsEmpty && act.KeepsAllLayers)
            throw new ArgumentException("row lengths are for inference: attention over per-row key lengths has no backward");
        using var pass = new AttentionPass(Device, act.Batch, act.Length, mode, allow, cache, rowLengths, position);
        this.CheckIds(ids, act.Batch, act.Length, pass.Offset);
        Device.Upload(act.Ids, 0, ids);
        Forward(act, pass);
        pass.Complete();
    }

    /// <summary>
    /// Backpropagates from act.Logits, which must already hold dLoss/dLogits (e.g. written in place by
    /// <see cref="Device.CrossEntropy"/>), through the forward call that filled <paramref name="act"/> (made with
    /// keepAllLayers, same mode and allow-mask). Adds the parameter gradients into <paramref name="grads"/>, so
    /// micro-batches accumulate.
    /// </summary>
    public void Backward(ModelActivations<TBlock> act, TWeights grads, AttentionMaskMode mode, Tensor? allow = null)
    {
        if (!act.KeepsAllLayers || act.Logits is null)
            throw new ArgumentException("backward needs activations made with keepAllLayers and full logits");
        using var pass = new AttentionPass(Device, act.Batch, act.Length, mode, allow);
        Backward(act, grads, pass);
    }

    public ForwardResult Logits(ReadOnlySpan<int> ids, int batch, int length, AttentionMaskMode mode, Tensor? allow = null,
        ReadOnlySpan<int> rowLengths = default) => Run(ids, batch, length, mode, allow, rowLengths, keepAllLayers: false);

    public ForwardResult ForwardForTraining(ReadOnlySpan<int> ids, int batch, int length, AttentionMaskMode mode, Tensor? allow) =>
        Run(ids, batch, length, mode, allow, default, keepAllLayers: true);

    ForwardResult Run(ReadOnlySpan<int> ids, int batch, int length, AttentionMaskMode mode, Tensor? allow, ReadOnlySpan<int> rowLengths, bool keepAllLayers)
    {
        var act = CreateActivations(batch, length, keepAllLayers);
        try
        {
            Forward(ids, act, mode, allow, rowLengths: rowLengths);
            return new ForwardResult(act.Logits!, act, mode, allow);
        }
        catch
        {
            act.Dispose();
            throw;
        }
    }

    public void Backward(ForwardResult pass, IParameterSet grads)
    {
        if (pass.Owner is not ModelActivations<TBlock> act) throw new ArgumentException("the pass was not made by this model's ForwardForTraining");
        if (grads is not TWeights g) throw new ArgumentException("the gradients were not made by this model's ZeroParameterSet");
        Backward(act, g, pass.Mode, pass.Allow);
    }

    public ForwardResult CachedLogits(ReadOnlySpan<int> ids, int batch, int length, KvCache cache, int position)
    {
        var act = CreateActivations(batch, length);
        try
        {
            Forward(ids, act, AttentionMaskMode.Bidirectional, cache: cache, position: position);
            return new ForwardResult(act.Logits!, act, AttentionMaskMode.Bidirectional);
        }
        catch
        {
            act.Dispose();
            throw;
        }
    }

    public void Decode(ReadOnlySpan<int> ids, int batch, KvCache cache, Span<float> lastLogits)
    {
        using var act = NewActivations(batch, ids.Length / batch, keepAllLayers: false, lastOnly: true);
        Forward(ids, act, AttentionMaskMode.Causal, null, cache);
        Device.Download(act.LastLogits!, 0, lastLogits);
    }

    /// <summary>The head over the final norm's output: every position's logits, or the last position's in a decoding set.</summary>
    protected void ComputeLogits(ModelActivations<TBlock> act, Linear head)
    {
        if (act.Logits is not null)
        {
            head.Forward(act.FinalNorm, act.Logits);
            return;
        }
        int t = act.Length, c = Config.Channels;
        Device.CopyRows(act.FinalNorm, (long)(t - 1) * c, t * c, act.LastHidden!, 0, c, act.Batch, c);
        head.Forward(act.LastHidden!, act.LastLogits!);
    }

    /// <summary>
    /// Appends one token to the vocabulary (a new [MASK], as DiffuGPT-M does) whose embedding, and head row when
    /// untied, is the mean of the existing rows. Returns its id (the old vocabulary size).
    /// </summary>
    public int AppendToken()
    {
        int v = Config.VocabSize;
        var config = With(Config, v + 1, Config.MaskTokenId);
        var grown = ZeroWeights(config, null, Weights.StorageType);
        TrainableModelExtensions.CopyGrowing(Device, Weights, grown);
        Weights.Dispose();
        Weights = grown;
        Config = config;
        return v;
    }

    public void Dispose() => Weights.Dispose();
}
