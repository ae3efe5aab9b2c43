using System.Text.Json.Nodes;
using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Layers;
using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>The layers of one GPT-2 block (HF Conv1D layout: weights are [in, out]).</summary>
public sealed class Gpt2Block
{
    /// <summary>ln_1 and ln_2.</summary>
    public required LayerNorm Norm1, Norm2;

    /// <summary>attn.c_attn: the fused query/key/value projection [C, 3C].</summary>
    public required Linear Qkv;

    /// <summary>attn.c_proj: the attention output projection.</summary>
    public required Linear AttentionOutput;

    /// <summary>mlp.c_fc [C, 4C] and mlp.c_proj [4C, C].</summary>
    public required Linear Up, Down;
}

/// <summary>
/// A full set of GPT-2 tensors: the parameters of a model, or a same-shaped set for their gradients or
/// optimizer moments, each a view into the set's <see cref="ParameterBuffers"/>. Names are HF GPT2LMHeadModel's.
/// </summary>
public sealed class Gpt2Weights : ParameterSet
{
    Gpt2Weights(Gpt2Config config, Device device, Func<string, bool>? allocate, DType dtype) : base(device, Shapes(config), allocate, dtype)
    {
        float eps = config.LayerNormEpsilon;
        TokenEmbedding = this["transformer.wte.weight"];
        PositionEmbedding = this["transformer.wpe.weight"];
        Blocks = new Gpt2Block[config.Layers];
        for (int i = 0; i < config.Layers; i++)
        {
            string p = $"transformer.h.{i}.";
            Blocks[i] = new Gpt2Block
            {
                Norm1 = new LayerNorm(this[p + "ln_1.weight"], this[p + "ln_1.bias"], eps),
                Qkv = new Linear(this[p + "attn.c_attn.weight"], this[p + "attn.c_attn.bias"], WeightLayout.InputMajor),
                AttentionOutput = new Linear(this[p + "attn.c_proj.weight"], this[p + "attn.c_proj.bias"], WeightLayout.InputMajor),
                Norm2 = new LayerNorm(this[p + "ln_2.weight"], this[p + "ln_2.bias"], eps),
                Up = new Linear(this[p + "mlp.c_fc.weight"], this[p + "mlp.c_fc.bias"], WeightLayout.InputMajor),
                Down = new Linear(this[p + "mlp.c_proj.weight"], this[p + "mlp.c_proj.bias"], WeightLayout.InputMajor),
            };
        }
        FinalNorm = new LayerNorm(this["transformer.ln_f.weight"], this["transformer.ln_f.bias"], eps);
        UntiedHead = Find("lm_head.weight");
        Head = new Linear(UntiedHead ?? TokenEmbedding, null, WeightLayout.OutputMajor);
    }

    /// <summary>wte [V, C] and wpe [positions, C].</summary>
    public Tensor TokenEmbedding { get; }
    public Tensor PositionEmbedding { get; }
    public Gpt2Block[] Blocks { get; }

    /// <summary>ln_f.</summary>
    public LayerNorm FinalNorm { get; }

    /// <summary>lm_head [V, C]; null when the head is tied to <see cref="TokenEmbedding"/>.</summary>
    public Tensor? UntiedHead { get; }

    /// <summary>The output projection: lm_head, or the token embedding when tied.</summary>
    public Linear Head { get; }

    /// <summary>The element shape of every tensor of a GPT-2 with this config, by HF name, in checkpoint order.</summary>
    public static IEnumerable<(string Name, int[] Shape)> Shapes(Gpt2Config config)
    {
        int c = config.Channels;
        yield return ("transformer.wte.weight", [config.VocabSize, c]);
        yield return ("transformer.wpe.weight", [config.Positions, c]);
        for (int i = 0; i < config.Layers; i++)
        {
            string p = $"transformer.h.{i}.";
            yield return (p + "ln_1.weight", [c]);
            yield return (p + "ln_1.bias", [c]);
            yield return (p + "attn.c_attn.weight", [c, 3 * c]);
            yield return (p + "attn.c_attn.bias", [3 * c]);
            yield return (p + "attn.c_proj.weight", [c, c]);
            yield return (p + "attn.c_proj.bias", [c]);
            yield return (p + "ln_2.weight", [c]);
            yield return (p + "ln_2.bias", [c]);
            yield return (p + "mlp.c_fc.weight", [c, 4 * c]);
            yield return (p + "mlp.c_fc.bias", [4 * c]);
            yield return (p + "mlp.c_proj.weight", [4 * c, c]);
            yield return (p + "mlp.c_proj.bias", [c]);
        }
        yield return ("transformer.ln_f.weight", [c]);
        yield return ("transformer.ln_f.bias", [c]);
        if (!config.TieWordEmbeddings) yield return ("lm_head.weight", [config.VocabSize, c]);
    }

    /// <summary>
    /// A zero-filled set on <paramref name="device"/>: one layout of every tensor of <see cref="Shapes"/>, or of those
    /// <paramref name="allocate"/> accepts (the others absent: frozen parameters' gradients).
    /// </summary>
    public static Gpt2Weights Zeros(Gpt2Config config, Device device, Func<string, bool>? allocate = null, DType dtype = DType.F32) =>
        new(config, device, allocate, dtype);
}

/// <summary>
/// GPT-2 (and DiffuGPT, which is the same network without a causal mask): token + position embedding,
/// pre-LN blocks of attention and a tanh-GELU MLP, a final LayerNorm and the head tied to the token
/// embedding. Every op goes through <see cref="Runtime.Device"/>, so the same code runs on every device.
/// The forward pass fills a <see cref="ModelActivations{TBlock}"/>; the backward pass walks it in reverse.
/// </summary>
public sealed class Gpt2Model : TransformerModel<Gpt2Config, Gpt2Weights, Gpt2BlockActivations>
{
    readonly SelfAttention attention;

    public Gpt2Model(Gpt2Config config, Device device, Gpt2Weights weights) : base(config, device, weights)
    {
        if (config.TieWordEmbeddings != (weights.UntiedHead is null))
            throw new ArgumentException("the weights' head does not match tie_word_embeddings");
        attention = new SelfAttention(config.Heads, config.Heads, config.HeadDim, ropeTheta: null);
    }

    /// <summary>
    /// Loads config.json and the safetensors weights (single file or sharded) of a model folder, stored as
    /// <paramref name="weightType"/> (null: as the checkpoint stores them, <see cref="WeightTypes.Stored"/>).
    /// </summary>
    public static Gpt2Model Load(string directory, Device device, DType? weightType = null)
    {
        if (!Directory.Exists(directory)) throw new DiffuException($"{directory}: model folder not found");
        var config = Gpt2Config.Load(Path.Combine(directory, "config.json"));
        using var checkpoint = SafeTensorsCheckpoint.Open(directory);
        return FromCheckpoint(config, checkpoint, device, weightType);
    }

    public static Gpt2Model FromCheckpoint(Gpt2Config config, SafeTensorsCheckpoint checkpoint, Device device, DType? weightType = null)
    {
        var names = new Gpt2WeightNames(checkpoint);
        if (!config.TieWordEmbeddings && !checkpoint.Contains("lm_head.weight"))
            throw new DiffuException($"{names.Source}: tie_word_embeddings is false but there is no 'lm_head.weight'");
        var dtype = weightType ?? StoredType(config, checkpoint);
        var weights = Gpt2Weights.Zeros(config, device, dtype: dtype);
        try
        {
            foreach (var (hfName, view) in weights.Named()) checkpoint.LoadInto(names.Resolve(hfName), view);
            return new Gpt2Model(config, device, weights);
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    /// <summary>The type the checkpoint stores this config's weights in, under whichever GPT-2 names it uses (<see cref="WeightTypes.Stored"/>).</summary>
    public static DType StoredType(Gpt2Config config, SafeTensorsCheckpoint checkpoint)
    {
        var names = new Gpt2WeightNames(checkpoint);
        return WeightTypes.Stored(checkpoint, Gpt2Weights.Shapes(config).Select(s => names.Resolve(s.Name)));
    }

    /// <summary>
    /// A freshly initialised GPT-2 (GPT-2's scheme: weights N(0, 0.02), the residual projections scaled by
    /// 1/sqrt(2 · layers), biases 0, LayerNorm weights 1), drawn from the Philox stream of <paramref name="seed"/>.
    /// </summary>
    public static Gpt2Model CreateRandom(Gpt2Config config, Device device, ulong seed, DType weightType = DType.F32)
    {
        var weights = Gpt2Weights.Zeros(config, device, dtype: weightType);
        float residual = 0.02f / MathF.Sqrt(2 * config.Layers);
        weights.Initialize(seed, name =>
            name.Contains(".ln_") && name.EndsWith(".weight") ? (1f, 0f)
            : name.EndsWith(".bias") ? (0f, 0f)
            : (0f, name.EndsWith("c_proj.weight") ? residual : 0.02f));
        return new Gpt2Model(config, device, weights);
    }

    protected override Gpt2Weights ZeroWeights(Gpt2Config config, Func<string, bool>? allocate, DType dtype = DType.F32) =>
        Gpt2Weights.Zeros(config, Device, allocate, dtype);
    protected override Gpt2Config With(Gpt2Config config, int vocabSize, int? maskTokenId) => config with { VocabSize = vocabSize, MaskTokenId = maskTokenId };
    protected override JsonObject ToJson(Gpt2Config config) => config.ToJson();
    protected override bool NormsKeepMeans => true;
    protected override IEnumerable<Linear> BlockProjections() => Weights.Blocks.SelectMany(b => new[] { b.Qkv, b.AttentionOutput, b.Up, b.Down });

    protected override Gpt2BlockActivations CreateBlock(int batch, int length, bool keepLse) =>
        new(Device, batch, length, Config.Channels, Config.Heads, keepLse);

    protected override void Forward(ModelActivations<Gpt2BlockActivations> act, AttentionPass pass)
    {
        int c = Config.Channels;
        var d = Device;
        var weights = Weights;
        d.Embedding(act.Ids, weights.TokenEmbedding, weights.PositionEmbedding, act.Embedded, pass.Offset);
        var residual = act.Embedded;
        for (int l = 0; l < weights.Blocks.Length; l++)
        {
            var w = weights.Blocks[l];
            var a = act.Block(l);
            w.Norm1.Forward(residual, a.Norm1, a.Norm1Mean!, a.Norm1Rstd);
            w.Qkv.Forward(a.Norm1, a.Qkv);
            attention.Forward(HeadTensors.Packed(a.Qkv, c), a.Attention, a.Lse, pass, l);
            w.AttentionOutput.Forward(a.Attention, a.Branch);
            d.Add(residual, a.Branch, a.AfterAttention);
            w.Norm2.Forward(a.AfterAttention, a.Norm2, a.Norm2Mean!, a.Norm2Rstd);
            w.Up.Forward(a.Norm2, a.Fc);
            d.Gelu(a.Fc, a.Activated);
            w.Down.Forward(a.Activated, a.Branch);
            d.Add(a.AfterAttention, a.Branch, a.Output);
            residual = a.Output;
        }
        weights.FinalNorm.Forward(residual, act.FinalNorm, act.FinalMean!, act.FinalRstd);
        ComputeLogits(act, weights.Head);
    }

    protected override void Backward(ModelActivations<Gpt2BlockActivations> act, Gpt2Weights grads, AttentionPass pass)
    {
        int b = act.Batch, t = act.Length, c = Config.Channels;
        var d = Device;
        var weights = Weights;
        using var dNorm = d.Allocate(DType.F32, b, t, c);
        using var dResidual = d.Zeros(DType.F32, b, t, c);
        using var dQkv = d.Allocate(DType.F32, b, t, 3 * c);
        using var dAttention = d.Allocate(DType.F32, b, t, c);
        using var dFc = d.Allocate(DType.F32, b, t, 4 * c);
        using var dActivated = d.Allocate(DType.F32, b, t, 4 * c);

        d.Fill(dNorm, 0);
        weights.Head.Backward(act.Logits!, act.FinalNorm, dNorm, grads.Head);
        weights.FinalNorm.Backward(dNorm, act.Block(weights.Blocks.Length - 1).Output, act.FinalMean!, act.FinalRstd, dResidual, grads.FinalNorm);
        for (int l = weights.Blocks.Length - 1; l >= 0; l--)
        {
            var w = weights.Blocks[l];
            var g = grads.Blocks[l];
            var a = act.Block(l);
            // dResidual holds dLoss/dOutput; the MLP branch and the skip both receive it.
            d.Fill(dActivated, 0);
            w.Down.Backward(dResidual, a.Activated, dActivated, g.Down);
            d.Fill(dFc, 0);
            d.GeluBackward(a.Fc, dActivated, dFc);
            d.Fill(dNorm, 0);
            w.Up.Backward(dFc, a.Norm2, dNorm, g.Up);
            w.Norm2.Backward(dNorm, a.AfterAttention, a.Norm2Mean!, a.Norm2Rstd, dResidual, g.Norm2);
            // dResidual now holds dLoss/dAfterAttention; the attention branch and the skip both receive it.
            d.Fill(dAttention, 0);
            w.AttentionOutput.Backward(dResidual, a.Attention, dAttention, g.AttentionOutput);
            d.Fill(dQkv, 0);
            attention.Backward(HeadTensors.Packed(a.Qkv, c), a.Attention, dAttention, a.Lse!, HeadTensors.Packed(dQkv, c), pass);
            d.Fill(dNorm, 0);
            w.Qkv.Backward(dQkv, a.Norm1, dNorm, g.Qkv);
            w.Norm1.Backward(dNorm, act.BlockInput(l), a.Norm1Mean!, a.Norm1Rstd, dResidual, g.Norm1);
        }
        d.EmbeddingBackward(act.Ids, dResidual, grads.TokenEmbedding.IfPresent, grads.PositionEmbedding.IfPresent, 0);
    }
}

/// <summary>One GPT-2 block's buffers: the shared ones and the fused qkv [B, T, 3C] and the MLP's pre-GELU fc [B, T, 4C].</summary>
public sealed class Gpt2BlockActivations : BlockActivations
{
    internal Gpt2BlockActivations(Device d, int b, int t, int c, int heads, bool keepLse) : base(d, b, t, c, 4 * c, heads, withMeans: true, keepLse)
    {
        Qkv = Own(d.Allocate(DType.F32, b, t, 3 * c));
        Fc = Own(d.Allocate(DType.F32, b, t, 4 * c));
    }

    public Tensor Qkv { get; }
    public Tensor Fc { get; }
}

/// <summary>
/// Finds GPT-2 weights under the names the various writers use: HF GPT2LMHeadModel (`transformer.*`),
/// a bare GPT2Model (no prefix), and the DiffuGPT wrapper (`denoise_model.*` with `embed_tokens.weight`).
/// </summary>
sealed class Gpt2WeightNames
{
    static readonly string[] Prefixes = ["transformer.", "denoise_model.", ""];
    readonly string prefix;

    public Gpt2WeightNames(SafeTensorsCheckpoint checkpoint)
    {
        Source = string.Join(", ", checkpoint.Files);
        prefix = Prefixes.FirstOrDefault(p => checkpoint.Contains(p + "h.0.ln_1.weight") || checkpoint.Contains(p + "ln_f.weight"))
            ?? throw new DiffuException($"{Source}: no GPT-2 weights found (looked for 'transformer.h.0.ln_1.weight', 'denoise_model.h.0.ln_1.weight' or 'h.0.ln_1.weight')");
        string[] embeddings = [prefix + "wte.weight", "embed_tokens.weight", "transformer.wte.weight"];
        TokenEmbedding = embeddings.FirstOrDefault(checkpoint.Contains)
            ?? throw new DiffuException($"{Source}: no token embedding found (looked for {string.Join(", ", embeddings.Distinct().Select(e => $"'{e}'"))})");
    }

    public string Source { get; }
    public string TokenEmbedding { get; }

    /// <summary>The checkpoint's name for an HF GPT2LMHeadModel name.</summary>
    public string Resolve(string hfName) =>
        hfName == "transformer.wte.weight" ? TokenEmbedding
        : hfName.StartsWith("transformer.", StringComparison.Ordinal) ? prefix + hfName["transformer.".Length..]
        : hfName;
}
