using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>The parameters of one LLaMA decoder layer (nn.Linear layout: weights are [out, in]).</summary>
public sealed class LlamaBlock
{
    public required Tensor InputNorm, Query, Key, Value, Output, PostAttentionNorm, Gate, Up, Down;
}

/// <summary>
/// A full set of LLaMA tensors under HF LlamaForCausalLM names: a model's parameters, or a same-shaped set
/// for their gradients. Head is null when the output head is tied to the embedding.
/// </summary>
public sealed class LlamaWeights : IParameterSet
{
    public required Tensor Embed, Norm;
    public required LlamaBlock[] Blocks;
    public Tensor? Head;

    ParameterBuffers buffers = null!;

    public IReadOnlyList<Tensor> Storage => buffers.Buffers;

    public static IEnumerable<(string Name, int[] Shape)> Shapes(LlamaConfig config)
    {
        int c = config.Channels, kv = config.KvHeads * config.HeadDim, hidden = config.Hidden;
        yield return ("model.embed_tokens.weight", [config.VocabSize, c]);
        for (int i = 0; i < config.Layers; i++)
        {
            string p = $"model.layers.{i}.";
            yield return (p + "input_layernorm.weight", [c]);
            yield return (p + "self_attn.q_proj.weight", [c, c]);
            yield return (p + "self_attn.k_proj.weight", [kv, c]);
            yield return (p + "self_attn.v_proj.weight", [kv, c]);
            yield return (p + "self_attn.o_proj.weight", [c, c]);
            yield return (p + "post_attention_layernorm.weight", [c]);
            yield return (p + "mlp.gate_proj.weight", [hidden, c]);
            yield return (p + "mlp.up_proj.weight", [hidden, c]);
            yield return (p + "mlp.down_proj.weight", [c, hidden]);
        }
        yield return ("model.norm.weight", [c]);
        if (!config.TieWordEmbeddings) yield return ("lm_head.weight", [config.VocabSize, c]);
    }

    /// <summary>A zero-filled set on <paramref name="device"/>: one layout of every tensor of <see cref="Shapes"/>.</summary>
    public static LlamaWeights Zeros(LlamaConfig config, Device device)
    {
        var buffers = ParameterBuffers.Allocate(device, Shapes(config));
        try
        {
            var made = new Dictionary<string, Tensor>();
            foreach (var (name, shape) in Shapes(config)) made[name] = buffers.View(name, shape);
            var blocks = new LlamaBlock[config.Layers];
            for (int i = 0; i < config.Layers; i++)
            {
                Tensor B(string n) => made[$"model.layers.{i}.{n}"];
                blocks[i] = new LlamaBlock
                {
                    InputNorm = B("input_layernorm.weight"), Query = B("self_attn.q_proj.weight"), Key = B("self_attn.k_proj.weight"),
                    Value = B("self_attn.v_proj.weight"), Output = B("self_attn.o_proj.weight"),
                    PostAttentionNorm = B("post_attention_layernorm.weight"), Gate = B("mlp.gate_proj.weight"),
                    Up = B("mlp.up_proj.weight"), Down = B("mlp.down_proj.weight"),
                };
            }
            return new LlamaWeights
            {
                Embed = made["model.embed_tokens.weight"], Norm = made["model.norm.weight"], Blocks = blocks,
                Head = made.GetValueOrDefault("lm_head.weight"), buffers = buffers,
            };
        }
        catch
        {
            buffers.Dispose();
            throw;
        }
    }

    public IEnumerable<(string Name, Tensor Tensor)> Named()
    {
        yield return ("model.embed_tokens.weight", Embed);
        for (int i = 0; i < Blocks.Length; i++)
        {
            var b = Blocks[i];
            string p = $"model.layers.{i}.";
            yield return (p + "input_layernorm.weight", b.InputNorm);
            yield return (p + "self_attn.q_proj.weight", b.Query);
            yield return (p + "self_attn.k_proj.weight", b.Key);
            yield return (p + "self_attn.v_proj.weight", b.Value);
            yield return (p + "self_attn.o_proj.weight", b.Output);
            yield return (p + "post_attention_layernorm.weight", b.PostAttentionNorm);
            yield return (p + "mlp.gate_proj.weight", b.Gate);
            yield return (p + "mlp.up_proj.weight", b.Up);
            yield return (p + "mlp.down_proj.weight", b.Down);
        }
        yield return ("model.norm.weight", Norm);
        if (Head is not null) yield return ("lm_head.weight", Head);
    }

    public void Dispose() => buffers.Dispose();
}

/// <summary>
/// LLaMA (and DiffuLLaMA, the same network run with bidirectional attention): token embedding, pre-norm
/// decoder layers of RMSNorm, grouped-query attention with rotate-half RoPE on q and k, RMSNorm and a
/// SwiGLU MLP, a final RMSNorm and an untied (or tied) head. HF LlamaForCausalLM weight names.
/// </summary>
public sealed class LlamaModel : ITrainableModel
{
    public LlamaModel(LlamaConfig config, Device device, LlamaWeights weights)
    {
        if (config.TieWordEmbeddings != (weights.Head is null))
            throw new ArgumentException("the weights' head does not match tie_word_embeddings");
        Config = config; Device = device; Weights = weights;
    }

    public LlamaConfig Config { get; private set; }
    IModelConfig ILanguageModel.Config => Config;
    public Device Device { get; }
    public LlamaWeights Weights { get; private set; }

    public IParameterSet Parameters => Weights;
    public long ParameterCount => Config.ParameterCount;
    public IParameterSet ZeroParameterSet() => LlamaWeights.Zeros(Config, Device);
    public System.Text.Json.Nodes.JsonObject ConfigJson(int? maskTokenId) => (Config with { MaskTokenId = maskTokenId ?? Config.MaskTokenId }).ToJson();

    public int AppendToken()
    {
        int v = Config.VocabSize;
        var grown = LlamaWeights.Zeros(Config with { VocabSize = v + 1 }, Device);
        TrainableModelExtensions.CopyGrowing(Device, Weights, grown);
        Weights.Dispose();
        Weights = grown;
        Config = Config with { VocabSize = v + 1 };
        return v;
    }

    /// <summary>The output projection [V, C]: the embedding itself when tied.</summary>
    public Tensor Head => Weights.Head ?? Weights.Embed;

    public int VocabSize => Config.VocabSize;
    public int Positions => Config.Positions;
    public int Layers => Config.Layers;
    public int KvWidth => Config.KvHeads * Config.HeadDim;
    public int? MaskTokenId => Config.MaskTokenId;

    public static LlamaModel Load(string directory, Device device)
    {
        if (!Directory.Exists(directory)) throw new DiffuException($"{directory}: model folder not found");
        var config = LlamaConfig.Load(Path.Combine(directory, "config.json"));
        using var checkpoint = SafeTensorCheckpoint.Open(directory);
        return FromCheckpoint(config, checkpoint, device);
    }

    public static LlamaModel FromCheckpoint(LlamaConfig config, SafeTensorCheckpoint checkpoint, Device device)
    {
        var weights = LlamaWeights.Zeros(config, device);
        try
        {
            foreach (var (name, view) in weights.Named()) checkpoint.LoadInto(name, view);
            return new LlamaModel(config, device, weights);
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    public ForwardResult Logits(ReadOnlySpan<int> ids, int batch, int length, AttentionMaskMode mode, Tensor? allow = null,
        ReadOnlySpan<int> rowLengths = default)
    {
        var act = CreateActivations(batch, length);
        try
        {
            Forward(ids, act, mode, allow, rowLengths: rowLengths);
            return new ForwardResult(act.Logits, act);
        }
        catch
        {
            act.Dispose();
            throw;
        }
    }

    public void Decode(ReadOnlySpan<int> ids, int batch, KvCache cache, Span<float> lastLogits)
    {
        using var act = new LlamaActivations(this, batch, ids.Length / batch, keepAllLayers: false, lastOnly: true);
        Forward(ids, act, AttentionMaskMode.Causal, null, cache);
        Device.Download(act.Logits, 0, lastLogits);
    }

    /// <summary>Activation buffers for a (batch, length); keeps every layer's buffers when training needs them.</summary>
    public LlamaActivations CreateActivations(int batch, int length, bool keepAllLayers = false) =>
        new(this, batch, length, keepAllLayers, lastOnly: false);

    /// <summary>
    /// Runs the network on ids [B, T] (continuing the cache when given) and fills <paramref name="act"/>:
    /// logits of every position, or of the last one in a decoding buffer. With <paramref name="rowLengths"/>, rows
    /// are right-padded and attention never reaches their padding (<see cref="ILanguageModel.Logits"/>); such a
    /// pass has no backward.
    /// </summary>
    public void Forward(ReadOnlySpan<int> ids, LlamaActivations act, AttentionMaskMode mode, Tensor? allow = null, KvCache? cache = null,
        ReadOnlySpan<int> rowLengths = default)
    {
        int b = act.Batch, t = act.Length, c = Config.Channels, h = Config.Heads, kvh = Config.KvHeads, hd = Config.HeadDim;
        int offset = this.CheckInputs(ids, b, t, mode, cache, rowLengths);
        if (!rowLengths.IsEmpty && act.KeepsAllLayers)
            throw new ArgumentException("row lengths are for inference: attention over per-row key lengths has no backward");

        var d = Device;
        d.Upload(act.Ids, 0, ids);
        using var keyLengths = rowLengths.IsEmpty ? null : d.FromArray(rowLengths, b);
        d.Embedding(act.Ids, Weights.Embed, null, act.Embedded, 0);
        var residual = act.Embedded;
        for (int l = 0; l < Weights.Blocks.Length; l++)
        {
            var w = Weights.Blocks[l];
            var a = act.Layer(l);
            d.RmsNorm(residual, w.InputNorm, a.Normed1, a.Rstd1, Config.RmsNormEpsilon);
            d.MatMulTransposed(a.Normed1, w.Query, null, a.Q);
            d.MatMulTransposed(a.Normed1, w.Key, null, a.K);
            d.MatMulTransposed(a.Normed1, w.Value, null, a.V);
            d.Rope(a.Q, 0, c, b, t, h, hd, offset, Config.RopeTheta, inverse: false);
            d.Rope(a.K, 0, KvWidth, b, t, kvh, hd, offset, Config.RopeTheta, inverse: false);
            if (cache is null)
                d.Attention(a.Q, 0, a.K, 0, a.V, 0, a.Attention, a.Lse, SelfAttention(b, t), mode, allow, keyLengths);
            else
            {
                cache.Append(l, a.K, 0, a.V, 0, KvWidth, t);
                var (keys, values) = cache.Layer(l);
                var shape = new AttentionShape(b, h, kvh, hd, t, offset + t, offset, c, KvWidth, (long)t * c, (long)cache.Capacity * KvWidth, 1f / MathF.Sqrt(hd));
                d.Attention(a.Q, 0, keys, 0, values, 0, a.Attention, null, shape, AttentionMaskMode.Causal, null);
            }
            d.MatMulTransposed(a.Attention, w.Output, null, a.Projected);
            d.Add(residual, a.Projected, a.Residual2);
            d.RmsNorm(a.Residual2, w.PostAttentionNorm, a.Normed2, a.Rstd2, Config.RmsNormEpsilon);
            d.MatMulTransposed(a.Normed2, w.Gate, null, a.Gate);
            d.MatMulTransposed(a.Normed2, w.Up, null, a.Up);
            d.SwiGlu(a.Gate, a.Up, a.Activated);
            d.MatMulTransposed(a.Activated, w.Down, null, a.Projected);
            d.Add(a.Residual2, a.Projected, a.Residual3);
            residual = a.Residual3;
        }
        d.RmsNorm(residual, Weights.Norm, act.NormedFinal, act.RstdFinal, Config.RmsNormEpsilon);
        if (act.LastHidden is null)
            d.MatMulTransposed(act.NormedFinal, Head, null, act.Logits);
        else
        {
            d.CopyRows(act.NormedFinal, (long)(t - 1) * c, t * c, act.LastHidden, 0, c, b, c);
            d.MatMulTransposed(act.LastHidden, Head, null, act.Logits);
        }
        if (cache is not null) cache.Length = offset + t;
    }

    AttentionShape SelfAttention(int b, int t) =>
        new(b, Config.Heads, Config.KvHeads, Config.HeadDim, t, t, 0, Config.Channels, KvWidth, (long)t * Config.Channels, (long)t * KvWidth,
            1f / MathF.Sqrt(Config.HeadDim));

    /// <summary>
    /// Backpropagates from act.Logits, which must already hold dLoss/dLogits, through the forward call that
    /// filled <paramref name="act"/> (made with keepAllLayers, same mode and allow-mask). Adds the parameter
    /// gradients into <paramref name="grads"/>.
    /// </summary>
    public void Backward(LlamaActivations act, LlamaWeights grads, AttentionMaskMode mode, Tensor? allow = null)
    {
        if (!act.KeepsAllLayers || act.LastHidden is not null)
            throw new ArgumentException("backward needs activations made with keepAllLayers and full logits");
        int b = act.Batch, t = act.Length, c = Config.Channels, hd = Config.HeadDim;
        var d = Device;
        var W = Weights;
        using var dNormed = d.Allocate(DType.F32, b, t, c);
        using var dResidual = d.Zeros(DType.F32, b, t, c);
        using var dAttention = d.Allocate(DType.F32, b, t, c);
        using var dQ = d.Allocate(DType.F32, b, t, c);
        using var dK = d.Allocate(DType.F32, b, t, KvWidth);
        using var dV = d.Allocate(DType.F32, b, t, KvWidth);
        using var dGate = d.Allocate(DType.F32, b, t, Config.Hidden);
        using var dUp = d.Allocate(DType.F32, b, t, Config.Hidden);
        using var dActivated = d.Allocate(DType.F32, b, t, Config.Hidden);

        d.Fill(dNormed, 0);
        d.MatMulTransposedBackward(act.Logits, act.NormedFinal, Head, dNormed, grads.Head ?? grads.Embed, null);
        d.RmsNormBackward(dNormed, act.Layer(W.Blocks.Length - 1).Residual3, W.Norm, act.RstdFinal, dResidual, grads.Norm);
        for (int l = W.Blocks.Length - 1; l >= 0; l--)
        {
            var w = W.Blocks[l];
            var g = grads.Blocks[l];
            var a = act.Layer(l);
            var input = l == 0 ? act.Embedded : act.Layer(l - 1).Residual3;
            // dResidual holds dLoss/dResidual3: the MLP branch and the skip both receive it.
            d.Fill(dActivated, 0);
            d.MatMulTransposedBackward(dResidual, a.Activated, w.Down, dActivated, g.Down, null);
            d.Fill(dGate, 0);
            d.Fill(dUp, 0);
            d.SwiGluBackward(a.Gate, a.Up, dActivated, dGate, dUp);
            d.Fill(dNormed, 0);
            d.MatMulTransposedBackward(dGate, a.Normed2, w.Gate, dNormed, g.Gate, null);
            d.MatMulTransposedBackward(dUp, a.Normed2, w.Up, dNormed, g.Up, null);
            d.RmsNormBackward(dNormed, a.Residual2, w.PostAttentionNorm, a.Rstd2, dResidual, g.PostAttentionNorm);
            // dResidual now holds dLoss/dResidual2: the attention branch and the skip both receive it.
            d.Fill(dAttention, 0);
            d.MatMulTransposedBackward(dResidual, a.Attention, w.Output, dAttention, g.Output, null);
            d.Fill(dQ, 0);
            d.Fill(dK, 0);
            d.Fill(dV, 0);
            d.AttentionBackward(a.Q, 0, a.K, 0, a.V, 0, a.Attention, dAttention, a.Lse!, dQ, 0, dK, 0, dV, 0, SelfAttention(b, t), mode, allow);
            // RoPE is a rotation: its backward rotates the gradient back.
            d.Rope(dQ, 0, c, b, t, Config.Heads, hd, 0, Config.RopeTheta, inverse: true);
            d.Rope(dK, 0, KvWidth, b, t, Config.KvHeads, hd, 0, Config.RopeTheta, inverse: true);
            d.Fill(dNormed, 0);
            d.MatMulTransposedBackward(dQ, a.Normed1, w.Query, dNormed, g.Query, null);
            d.MatMulTransposedBackward(dK, a.Normed1, w.Key, dNormed, g.Key, null);
            d.MatMulTransposedBackward(dV, a.Normed1, w.Value, dNormed, g.Value, null);
            d.RmsNormBackward(dNormed, input, w.InputNorm, a.Rstd1, dResidual, g.InputNorm);
        }
        d.EmbeddingBackward(act.Ids, dResidual, grads.Embed, null, 0);
    }

    public void Dispose() => Weights.Dispose();
}

/// <summary>Per-layer buffers of one LLaMA forward pass.</summary>
public sealed class LlamaLayerActivations : IDisposable
{
    internal LlamaLayerActivations(Device d, LlamaConfig cfg, int b, int t, bool keepLse)
    {
        int c = cfg.Channels, kv = cfg.KvHeads * cfg.HeadDim;
        Normed1 = d.Allocate(DType.F32, b, t, c); Rstd1 = d.Allocate(DType.F32, b * t);
        Q = d.Allocate(DType.F32, b, t, c); K = d.Allocate(DType.F32, b, t, kv); V = d.Allocate(DType.F32, b, t, kv);
        Attention = d.Allocate(DType.F32, b, t, c);
        Projected = d.Allocate(DType.F32, b, t, c);
        Residual2 = d.Allocate(DType.F32, b, t, c);
        Normed2 = d.Allocate(DType.F32, b, t, c); Rstd2 = d.Allocate(DType.F32, b * t);
        Gate = d.Allocate(DType.F32, b, t, cfg.Hidden); Up = d.Allocate(DType.F32, b, t, cfg.Hidden); Activated = d.Allocate(DType.F32, b, t, cfg.Hidden);
        Residual3 = d.Allocate(DType.F32, b, t, c);
        if (keepLse) Lse = d.Allocate(DType.F32, b, cfg.Heads, t);
    }

    public Tensor Normed1, Rstd1, Q, K, V, Attention, Projected, Residual2, Normed2, Rstd2, Gate, Up, Activated, Residual3;

    /// <summary>Attention log-sum-exp [B, H, T], kept for the backward pass; null in inference.</summary>
    public Tensor? Lse;

    public void Dispose()
    {
        foreach (var x in new[] { Normed1, Rstd1, Q, K, V, Attention, Projected, Residual2, Normed2, Rstd2, Gate, Up, Activated, Residual3 }) x.Dispose();
        Lse?.Dispose();
    }
}

/// <summary>
/// The buffers of a LLaMA forward pass for one (batch, length), from the device pool. Inference shares
/// one set of layer buffers among all layers; training keeps every layer's.
/// </summary>
public sealed class LlamaActivations : IDisposable
{
    readonly LlamaLayerActivations[] layers;

    internal LlamaActivations(LlamaModel model, int batch, int length, bool keepAllLayers, bool lastOnly)
    {
        if (batch <= 0 || length <= 0) throw new ArgumentException($"batch and length must be positive, got [{batch}, {length}]");
        var cfg = model.Config;
        var d = model.Device;
        Batch = batch; Length = length; KeepsAllLayers = keepAllLayers;
        int c = cfg.Channels;
        Ids = d.Allocate(DType.I32, batch, length);
        Embedded = d.Allocate(DType.F32, batch, length, c);
        layers = new LlamaLayerActivations[keepAllLayers ? cfg.Layers : 1];
        for (int i = 0; i < layers.Length; i++) layers[i] = new LlamaLayerActivations(d, cfg, batch, length, keepAllLayers);
        NormedFinal = d.Allocate(DType.F32, batch, length, c);
        RstdFinal = d.Allocate(DType.F32, batch * length);
        if (lastOnly) LastHidden = d.Allocate(DType.F32, batch, c);
        Logits = lastOnly ? d.Allocate(DType.F32, batch, cfg.VocabSize) : d.Allocate(DType.F32, batch, length, cfg.VocabSize);
    }

    public int Batch { get; }
    public int Length { get; }
    public bool KeepsAllLayers { get; }
    public Tensor Ids { get; }
    public Tensor Embedded { get; }
    public Tensor NormedFinal { get; }
    public Tensor RstdFinal { get; }
    public Tensor? LastHidden { get; }

    /// <summary>Logits [B, T, V], or [B, V] of the last position in a decoding buffer.</summary>
    public Tensor Logits { get; }

    public LlamaLayerActivations Layer(int index) => layers[layers.Length == 1 ? 0 : index];

    public void Dispose()
    {
        Ids.Dispose(); Embedded.Dispose();
        foreach (var l in layers) l.Dispose();
        NormedFinal.Dispose(); RstdFinal.Dispose(); LastHidden?.Dispose(); Logits.Dispose();
    }
}
