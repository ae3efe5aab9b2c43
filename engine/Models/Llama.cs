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
/// LLaMA (and DiffuLLaMA, the same network run with bidirectional attention): token embedding, pre-norm
/// decoder layers of RMSNorm, grouped-query attention with rotate-half RoPE on q and k, RMSNorm and a
/// SwiGLU MLP, a final RMSNorm and an untied (or tied) head. HF LlamaForCausalLM weight names.
/// </summary>
public sealed class LlamaModel : ILanguageModel
{
    readonly List<Tensor> owned;

    LlamaModel(LlamaConfig config, Device device, Tensor embed, LlamaBlock[] blocks, Tensor norm, Tensor head, List<Tensor> owned)
    {
        Config = config; Device = device; Embed = embed; Blocks = blocks; Norm = norm; Head = head;
        this.owned = owned;
    }

    public LlamaConfig Config { get; }
    public Device Device { get; }
    public Tensor Embed { get; }
    public LlamaBlock[] Blocks { get; }
    public Tensor Norm { get; }

    /// <summary>The output projection [V, C]: <see cref="Embed"/> itself when tied.</summary>
    public Tensor Head { get; }

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
        int c = config.Channels, kv = config.KvHeads * config.HeadDim, hidden = config.Hidden;
        var owned = new List<Tensor>();
        Tensor Load(string name, params int[] shape)
        {
            var info = checkpoint.Info(name);
            if (!info.Shape.AsSpan().SequenceEqual(shape))
                throw new DiffuException($"{string.Join(", ", checkpoint.Files)}: tensor '{name}' has shape [{string.Join(", ", info.Shape)}], config.json implies [{string.Join(", ", shape)}]");
            var t = device.FromArray(checkpoint.ReadFloat32(name), shape);
            owned.Add(t);
            return t;
        }
        try
        {
            var embed = Load("model.embed_tokens.weight", config.VocabSize, c);
            var blocks = new LlamaBlock[config.Layers];
            for (int i = 0; i < config.Layers; i++)
            {
                string p = $"model.layers.{i}.";
                blocks[i] = new LlamaBlock
                {
                    InputNorm = Load(p + "input_layernorm.weight", c),
                    Query = Load(p + "self_attn.q_proj.weight", c, c),
                    Key = Load(p + "self_attn.k_proj.weight", kv, c),
                    Value = Load(p + "self_attn.v_proj.weight", kv, c),
                    Output = Load(p + "self_attn.o_proj.weight", c, c),
                    PostAttentionNorm = Load(p + "post_attention_layernorm.weight", c),
                    Gate = Load(p + "mlp.gate_proj.weight", hidden, c),
                    Up = Load(p + "mlp.up_proj.weight", hidden, c),
                    Down = Load(p + "mlp.down_proj.weight", c, hidden),
                };
            }
            var norm = Load("model.norm.weight", c);
            var head = config.TieWordEmbeddings ? embed : Load("lm_head.weight", config.VocabSize, c);
            return new LlamaModel(config, device, embed, blocks, norm, head, owned);
        }
        catch
        {
            foreach (var t in owned) t.Dispose();
            throw;
        }
    }

    public ForwardResult Logits(ReadOnlySpan<int> ids, int batch, int length, AttentionMaskMode mode, Tensor? allow = null)
    {
        var act = new LlamaActivations(this, batch, length, lastOnly: false);
        try
        {
            Forward(ids, act, mode, allow, null);
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
        using var act = new LlamaActivations(this, batch, ids.Length / batch, lastOnly: true);
        Forward(ids, act, AttentionMaskMode.Causal, null, cache);
        Device.Download(act.Logits, 0, lastLogits);
    }

    /// <summary>The network on ids [B, T] (continuing the cache when given); logits of every position, or of the last one in a decoding buffer.</summary>
    void Forward(ReadOnlySpan<int> ids, LlamaActivations act, AttentionMaskMode mode, Tensor? allow, KvCache? cache)
    {
        int b = act.Batch, t = act.Length, c = Config.Channels, h = Config.Heads, kvh = Config.KvHeads, hd = Config.HeadDim;
        if (ids.Length != b * t) throw new ArgumentException($"expected {b * t} ids for [{b}, {t}], got {ids.Length}");
        foreach (int id in ids)
            if ((uint)id >= (uint)Config.VocabSize)
                throw new DiffuException($"token id {id} is outside the vocabulary [0, {Config.VocabSize})");
        int offset = cache?.Length ?? 0;
        if (offset + t > Config.Positions)
            throw new DiffuException($"sequence of {offset + t} tokens exceeds the model's {Config.Positions} positions");
        if (cache is not null && (cache.Batch != b || offset + t > cache.Capacity || mode != AttentionMaskMode.Causal))
            throw new ArgumentException($"KV cache [{cache.Batch}, {cache.Capacity}] cannot take {t} more causal tokens after {offset} for batch {b}");

        var d = Device;
        d.Upload(act.Ids, 0, ids);
        d.Embedding(act.Ids, Embed, null, act.X, 0);
        int kvWidth = kvh * hd;
        for (int l = 0; l < Blocks.Length; l++)
        {
            var w = Blocks[l];
            d.RmsNorm(act.X, w.InputNorm, act.Normed, act.Rstd, Config.RmsNormEpsilon);
            d.MatMulTransposed(act.Normed, w.Query, null, act.Q);
            d.MatMulTransposed(act.Normed, w.Key, null, act.K);
            d.MatMulTransposed(act.Normed, w.Value, null, act.V);
            d.Rope(act.Q, 0, c, b, t, h, hd, offset, Config.RopeTheta, inverse: false);
            d.Rope(act.K, 0, kvWidth, b, t, kvh, hd, offset, Config.RopeTheta, inverse: false);
            float scale = 1f / MathF.Sqrt(hd);
            if (cache is null)
            {
                var shape = new AttentionShape(b, h, kvh, hd, t, t, 0, c, kvWidth, (long)t * c, (long)t * kvWidth, scale);
                d.Attention(act.Q, 0, act.K, 0, act.V, 0, act.Attention, null, shape, mode, allow);
            }
            else
            {
                cache.Append(l, act.K, 0, act.V, 0, kvWidth, t);
                var (keys, values) = cache.Layer(l);
                var shape = new AttentionShape(b, h, kvh, hd, t, offset + t, offset, c, kvWidth, (long)t * c, (long)cache.Capacity * kvWidth, scale);
                d.Attention(act.Q, 0, keys, 0, values, 0, act.Attention, null, shape, AttentionMaskMode.Causal, null);
            }
            d.MatMulTransposed(act.Attention, w.Output, null, act.Projected);
            d.Add(act.X, act.Projected, act.X);
            d.RmsNorm(act.X, w.PostAttentionNorm, act.Normed, act.Rstd, Config.RmsNormEpsilon);
            d.MatMulTransposed(act.Normed, w.Gate, null, act.Gate);
            d.MatMulTransposed(act.Normed, w.Up, null, act.Up);
            d.SwiGlu(act.Gate, act.Up, act.Activated);
            d.MatMulTransposed(act.Activated, w.Down, null, act.Projected);
            d.Add(act.X, act.Projected, act.X);
        }
        d.RmsNorm(act.X, Norm, act.Normed, act.Rstd, Config.RmsNormEpsilon);
        if (act.LastHidden is null)
            d.MatMulTransposed(act.Normed, Head, null, act.Logits);
        else
        {
            d.CopyRows(act.Normed, (long)(t - 1) * c, t * c, act.LastHidden, 0, c, b, c);
            d.MatMulTransposed(act.LastHidden, Head, null, act.Logits);
        }
        if (cache is not null) cache.Length = offset + t;
    }

    public void Dispose()
    {
        foreach (var t in owned) t.Dispose();
    }
}

/// <summary>The buffers of one LLaMA inference pass for (batch, length), shared by all layers, from the device pool.</summary>
sealed class LlamaActivations : IDisposable
{
    public LlamaActivations(LlamaModel model, int batch, int length, bool lastOnly)
    {
        var cfg = model.Config;
        var d = model.Device;
        Batch = batch; Length = length;
        int c = cfg.Channels, kv = cfg.KvHeads * cfg.HeadDim;
        Ids = d.Allocate(DType.I32, batch, length);
        X = d.Allocate(DType.F32, batch, length, c);
        Normed = d.Allocate(DType.F32, batch, length, c);
        Rstd = d.Allocate(DType.F32, batch * length);
        Q = d.Allocate(DType.F32, batch, length, c);
        K = d.Allocate(DType.F32, batch, length, kv);
        V = d.Allocate(DType.F32, batch, length, kv);
        Attention = d.Allocate(DType.F32, batch, length, c);
        Projected = d.Allocate(DType.F32, batch, length, c);
        Gate = d.Allocate(DType.F32, batch, length, cfg.Hidden);
        Up = d.Allocate(DType.F32, batch, length, cfg.Hidden);
        Activated = d.Allocate(DType.F32, batch, length, cfg.Hidden);
        if (lastOnly) LastHidden = d.Allocate(DType.F32, batch, c);
        Logits = lastOnly ? d.Allocate(DType.F32, batch, cfg.VocabSize) : d.Allocate(DType.F32, batch, length, cfg.VocabSize);
    }

    public int Batch { get; }
    public int Length { get; }
    public Tensor Ids { get; }
    public Tensor X { get; }
    public Tensor Normed { get; }
    public Tensor Rstd { get; }
    public Tensor Q { get; }
    public Tensor K { get; }
    public Tensor V { get; }
    public Tensor Attention { get; }
    public Tensor Projected { get; }
    public Tensor Gate { get; }
    public Tensor Up { get; }
    public Tensor Activated { get; }
    public Tensor? LastHidden { get; }
    public Tensor Logits { get; }

    public void Dispose()
    {
        foreach (var t in new[] { Ids, X, Normed, Rstd, Q, K, V, Attention, Projected, Gate, Up, Activated, Logits }) t.Dispose();
        LastHidden?.Dispose();
    }
}
