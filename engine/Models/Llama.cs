using System.Text.Json.Nodes;
using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Layers;
using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>The layers of one LLaMA decoder layer (nn.Linear layout: weights are [out, in]).</summary>
public sealed class LlamaBlock
{
    /// <summary>input_layernorm and post_attention_layernorm.</summary>
    public required RmsNorm Norm1, Norm2;

    /// <summary>self_attn.q_proj, k_proj and v_proj.</summary>
    public required Linear Query, Key, Value;

    /// <summary>self_attn.o_proj: the attention output projection.</summary>
    public required Linear AttentionOutput;

    /// <summary>mlp.gate_proj, up_proj [hidden, C] and down_proj [C, hidden].</summary>
    public required Linear Gate, Up, Down;
}

/// <summary>
/// A full set of LLaMA tensors under HF LlamaForCausalLM names: a model's parameters, or a same-shaped set
/// for their gradients or optimizer moments, each a view into the set's <see cref="ParameterBuffers"/>.
/// </summary>
public sealed class LlamaWeights : ParameterSet
{
    LlamaWeights(LlamaConfig config, Device device, Func<string, bool>? allocate, DType dtype) : base(device, Shapes(config), allocate, dtype)
    {
        float eps = config.RmsNormEpsilon;
        TokenEmbedding = this["model.embed_tokens.weight"];
        Blocks = new LlamaBlock[config.Layers];
        for (int i = 0; i < config.Layers; i++)
        {
            string p = $"model.layers.{i}.";
            Linear L(string name) => new(this[p + name], null, WeightLayout.OutputMajor);
            Blocks[i] = new LlamaBlock
            {
                Norm1 = new RmsNorm(this[p + "input_layernorm.weight"], eps),
                Query = L("self_attn.q_proj.weight"), Key = L("self_attn.k_proj.weight"), Value = L("self_attn.v_proj.weight"),
                AttentionOutput = L("self_attn.o_proj.weight"),
                Norm2 = new RmsNorm(this[p + "post_attention_layernorm.weight"], eps),
                Gate = L("mlp.gate_proj.weight"), Up = L("mlp.up_proj.weight"), Down = L("mlp.down_proj.weight"),
            };
        }
        FinalNorm = new RmsNorm(this["model.norm.weight"], eps);
        UntiedHead = Find("lm_head.weight");
        Head = new Linear(UntiedHead ?? TokenEmbedding, null, WeightLayout.OutputMajor);
    }

    /// <summary>embed_tokens [V, C].</summary>
    public Tensor TokenEmbedding { get; }
    public LlamaBlock[] Blocks { get; }

    /// <summary>model.norm.</summary>
    public RmsNorm FinalNorm { get; }

    /// <summary>lm_head [V, C]; null when the head is tied to <see cref="TokenEmbedding"/>.</summary>
    public Tensor? UntiedHead { get; }

    /// <summary>The output projection: lm_head, or the embedding when tied.</summary>
    public Linear Head { get; }

    /// <summary>The element shape of every tensor of a LLaMA with this config, by HF name, in checkpoint order.</summary>
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

    /// <summary>
    /// A zero-filled set on <paramref name="device"/>: one layout of every tensor of <see cref="Shapes"/>, or of those
    /// <paramref name="allocate"/> accepts (the others absent: frozen parameters' gradients).
    /// </summary>
    public static LlamaWeights Zeros(LlamaConfig config, Device device, Func<string, bool>? allocate = null, DType dtype = DType.F32) =>
        new(config, device, allocate, dtype);
}

/// <summary>
/// LLaMA (and DiffuLLaMA, the same network run with bidirectional attention): token embedding, pre-norm
/// decoder layers of RMSNorm, grouped-query attention with rotate-half RoPE on q and k, RMSNorm and a
/// SwiGLU MLP, a final RMSNorm and an untied (or tied) head. HF LlamaForCausalLM weight names.
/// </summary>
public sealed class LlamaModel : TransformerModel<LlamaConfig, LlamaWeights, LlamaBlockActivations>
{
    readonly SelfAttention attention;

    public LlamaModel(LlamaConfig config, Device device, LlamaWeights weights) : base(config, device, weights)
    {
        if (config.TieWordEmbeddings != (weights.UntiedHead is null))
            throw new ArgumentException("the weights' head does not match tie_word_embeddings");
        attention = new SelfAttention(config.Heads, config.KvHeads, config.HeadDim, config.RopeTheta);
    }

    /// <summary>
    /// Loads config.json and the safetensors weights of a model folder, stored as <paramref name="weightType"/> (null:
    /// as the checkpoint stores them, <see cref="WeightTypes.Stored"/>).
    /// </summary>
    public static LlamaModel Load(string directory, Device device, DType? weightType = null)
    {
        if (!Directory.Exists(directory)) throw new DiffuException($"{directory}: model folder not found");
        var config = LlamaConfig.Load(Path.Combine(directory, "config.json"));
        using var checkpoint = SafeTensorsCheckpoint.Open(directory);
        return FromCheckpoint(config, checkpoint, device, weightType);
    }

    public static LlamaModel FromCheckpoint(LlamaConfig config, SafeTensorsCheckpoint checkpoint, Device device, DType? weightType = null)
    {
        var dtype = weightType ?? ModelFamily.Of(config).StoredWeightType(config, checkpoint);
        var weights = LlamaWeights.Zeros(config, device, dtype: dtype);
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

    /// <summary>
    /// A freshly initialised LLaMA (HF's scheme: every projection and the embedding N(0, 0.02), RMSNorm weights 1),
    /// drawn from the Philox stream of <paramref name="seed"/>.
    /// </summary>
    public static LlamaModel CreateRandom(LlamaConfig config, Device device, ulong seed, DType weightType = DType.F32)
    {
        var weights = LlamaWeights.Zeros(config, device, dtype: weightType);
        weights.Initialize(seed, name => name.EndsWith("norm.weight") ? (1f, 0f) : (0f, 0.02f));
        return new LlamaModel(config, device, weights);
    }

    protected override LlamaWeights ZeroWeights(LlamaConfig config, Func<string, bool>? allocate, DType dtype = DType.F32) =>
        LlamaWeights.Zeros(config, Device, allocate, dtype);
    protected override LlamaConfig With(LlamaConfig config, int vocabSize, int? maskTokenId) => config with { VocabSize = vocabSize, MaskTokenId = maskTokenId };
    protected override JsonObject ToJson(LlamaConfig config) => config.ToJson();
    protected override bool NormsKeepMeans => false;
    protected override IEnumerable<Linear> BlockProjections() =>
        Weights.Blocks.SelectMany(b => new[] { b.Query, b.Key, b.Value, b.AttentionOutput, b.Gate, b.Up, b.Down });

    protected override LlamaBlockActivations CreateBlock(int batch, int length, bool keepLse) => new(Device, Config, batch, length, keepLse);

    protected override void Forward(ModelActivations<LlamaBlockActivations> act, AttentionPass pass)
    {
        var d = Device;
        var weights = Weights;
        d.Embedding(act.Ids, weights.TokenEmbedding, null, act.Embedded, 0);
        var residual = act.Embedded;
        for (int l = 0; l < weights.Blocks.Length; l++)
        {
            var w = weights.Blocks[l];
            var a = act.Block(l);
            w.Norm1.Forward(residual, a.Norm1, a.Norm1Rstd);
            w.Query.Forward(a.Norm1, a.Q);
            w.Key.Forward(a.Norm1, a.K);
            w.Value.Forward(a.Norm1, a.V);
            attention.Forward(HeadTensors.Separate(a.Q, a.K, a.V), a.Attention, a.Lse, pass, l);
            w.AttentionOutput.Forward(a.Attention, a.Branch);
            d.Add(residual, a.Branch, a.AfterAttention);
            w.Norm2.Forward(a.AfterAttention, a.Norm2, a.Norm2Rstd);
            w.Gate.Forward(a.Norm2, a.Gate);
            w.Up.Forward(a.Norm2, a.Up);
            d.SwiGlu(a.Gate, a.Up, a.Activated);
            w.Down.Forward(a.Activated, a.Branch);
            d.Add(a.AfterAttention, a.Branch, a.Output);
            residual = a.Output;
        }
        weights.FinalNorm.Forward(residual, act.FinalNorm, act.FinalRstd);
        ComputeLogits(act, weights.Head);
    }

    protected override void Backward(ModelActivations<LlamaBlockActivations> act, LlamaWeights grads, AttentionPass pass)
    {
        int b = act.Batch, t = act.Length, c = Config.Channels;
        var d = Device;
        var weights = Weights;
        using var dNorm = d.Allocate(DType.F32, b, t, c);
        using var dResidual = d.Zeros(DType.F32, b, t, c);
        using var dAttention = d.Allocate(DType.F32, b, t, c);
        using var dQ = d.Allocate(DType.F32, b, t, c);
        using var dK = d.Allocate(DType.F32, b, t, KvWidth);
        using var dV = d.Allocate(DType.F32, b, t, KvWidth);
        using var dGate = d.Allocate(DType.F32, b, t, Config.Hidden);
        using var dUp = d.Allocate(DType.F32, b, t, Config.Hidden);
        using var dActivated = d.Allocate(DType.F32, b, t, Config.Hidden);

        d.Fill(dNorm, 0);
        weights.Head.Backward(act.Logits!, act.FinalNorm, dNorm, grads.Head);
        weights.FinalNorm.Backward(dNorm, act.Block(weights.Blocks.Length - 1).Output, act.FinalRstd, dResidual, grads.FinalNorm);
        for (int l = weights.Blocks.Length - 1; l >= 0; l--)
        {
            var w = weights.Blocks[l];
            var g = grads.Blocks[l];
            var a = act.Block(l);
            // dResidual holds dLoss/dOutput: the MLP branch and the skip both receive it.
            d.Fill(dActivated, 0);
            w.Down.Backward(dResidual, a.Activated, dActivated, g.Down);
            d.Fill(dGate, 0);
            d.Fill(dUp, 0);
            d.SwiGluBackward(a.Gate, a.Up, dActivated, dGate, dUp);
            d.Fill(dNorm, 0);
            w.Gate.Backward(dGate, a.Norm2, dNorm, g.Gate);
            w.Up.Backward(dUp, a.Norm2, dNorm, g.Up);
            w.Norm2.Backward(dNorm, a.AfterAttention, a.Norm2Rstd, dResidual, g.Norm2);
            // dResidual now holds dLoss/dAfterAttention: the attention branch and the skip both receive it.
            d.Fill(dAttention, 0);
            w.AttentionOutput.Backward(dResidual, a.Attention, dAttention, g.AttentionOutput);
            d.Fill(dQ, 0);
            d.Fill(dK, 0);
            d.Fill(dV, 0);
            attention.Backward(HeadTensors.Separate(a.Q, a.K, a.V), a.Attention, dAttention, a.Lse!, HeadTensors.Separate(dQ, dK, dV), pass);
            d.Fill(dNorm, 0);
            w.Query.Backward(dQ, a.Norm1, dNorm, g.Query);
            w.Key.Backward(dK, a.Norm1, dNorm, g.Key);
            w.Value.Backward(dV, a.Norm1, dNorm, g.Value);
            w.Norm1.Backward(dNorm, act.BlockInput(l), a.Norm1Rstd, dResidual, g.Norm1);
        }
        d.EmbeddingBackward(act.Ids, dResidual, grads.TokenEmbedding.IfPresent, null, 0);
    }
}

/// <summary>One LLaMA layer's buffers: the shared ones and q [B, T, C], k and v [B, T, KvH·D], the MLP's gate and up [B, T, hidden].</summary>
public sealed class LlamaBlockActivations : BlockActivations
{
    internal LlamaBlockActivations(Device d, LlamaConfig cfg, int b, int t, bool keepLse)
        : base(d, b, t, cfg.Channels, cfg.Hidden, cfg.Heads, withMeans: false, keepLse)
    {
        int c = cfg.Channels, kv = cfg.KvWidth;
        Q = Own(d.Allocate(DType.F32, b, t, c));
        K = Own(d.Allocate(DType.F32, b, t, kv));
        V = Own(d.Allocate(DType.F32, b, t, kv));
        Gate = Own(d.Allocate(DType.F32, b, t, cfg.Hidden));
        Up = Own(d.Allocate(DType.F32, b, t, cfg.Hidden));
    }

    public Tensor Q { get; }
    public Tensor K { get; }
    public Tensor V { get; }
    public Tensor Gate { get; }
    public Tensor Up { get; }
}
