using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>The parameters of one GPT-2 block (HF Conv1D layout: weights are [in, out]).</summary>
public sealed class Gpt2Block
{
    public required Tensor Ln1Weight, Ln1Bias, AttnWeight, AttnBias, AttnProjWeight, AttnProjBias;
    public required Tensor Ln2Weight, Ln2Bias, FcWeight, FcBias, FcProjWeight, FcProjBias;

    /// <summary>The block's tensors under their HF names relative to `h.{i}.`.</summary>
    public IEnumerable<(string Name, Tensor Tensor)> Named()
    {
        yield return ("ln_1.weight", Ln1Weight);
        yield return ("ln_1.bias", Ln1Bias);
        yield return ("attn.c_attn.weight", AttnWeight);
        yield return ("attn.c_attn.bias", AttnBias);
        yield return ("attn.c_proj.weight", AttnProjWeight);
        yield return ("attn.c_proj.bias", AttnProjBias);
        yield return ("ln_2.weight", Ln2Weight);
        yield return ("ln_2.bias", Ln2Bias);
        yield return ("mlp.c_fc.weight", FcWeight);
        yield return ("mlp.c_fc.bias", FcBias);
        yield return ("mlp.c_proj.weight", FcProjWeight);
        yield return ("mlp.c_proj.bias", FcProjBias);
    }
}

/// <summary>
/// A full set of GPT-2 tensors: the parameters of a model, or a same-shaped set for their gradients or
/// optimizer moments, each a view into the set's <see cref="ParameterBuffers"/>. Names are HF GPT2LMHeadModel's.
/// </summary>
public sealed class Gpt2Weights : IParameterSet
{
    public required Tensor Wte, Wpe, LnfWeight, LnfBias;
    public required Gpt2Block[] Blocks;

    /// <summary>The untied output head [V, C]; null when the head is tied to <see cref="Wte"/>.</summary>
    public Tensor? LmHead;

    ParameterBuffers buffers = null!;

    public IReadOnlyList<Tensor> Storage => buffers.Buffers;

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

    /// <summary>A zero-filled set on <paramref name="device"/>: one layout of every tensor of <see cref="Shapes"/>.</summary>
    public static Gpt2Weights Zeros(Gpt2Config config, Device device)
    {
        var buffers = ParameterBuffers.Allocate(device, Shapes(config));
        try
        {
            var tensors = new Dictionary<string, Tensor>();
            foreach (var (name, shape) in Shapes(config)) tensors[name] = buffers.View(name, shape);
            var blocks = new Gpt2Block[config.Layers];
            for (int i = 0; i < config.Layers; i++)
            {
                Tensor B(string n) => tensors[$"transformer.h.{i}.{n}"];
                blocks[i] = new Gpt2Block
                {
                    Ln1Weight = B("ln_1.weight"), Ln1Bias = B("ln_1.bias"),
                    AttnWeight = B("attn.c_attn.weight"), AttnBias = B("attn.c_attn.bias"),
                    AttnProjWeight = B("attn.c_proj.weight"), AttnProjBias = B("attn.c_proj.bias"),
                    Ln2Weight = B("ln_2.weight"), Ln2Bias = B("ln_2.bias"),
                    FcWeight = B("mlp.c_fc.weight"), FcBias = B("mlp.c_fc.bias"),
                    FcProjWeight = B("mlp.c_proj.weight"), FcProjBias = B("mlp.c_proj.bias"),
                };
            }
            return new Gpt2Weights
            {
                Wte = tensors["transformer.wte.weight"], Wpe = tensors["transformer.wpe.weight"], Blocks = blocks,
                LnfWeight = tensors["transformer.ln_f.weight"], LnfBias = tensors["transformer.ln_f.bias"],
                LmHead = tensors.GetValueOrDefault("lm_head.weight"), buffers = buffers,
            };
        }
        catch
        {
            buffers.Dispose();
            throw;
        }
    }

    /// <summary>Every tensor under its HF name, in checkpoint order.</summary>
    public IEnumerable<(string Name, Tensor Tensor)> Named()
    {
        yield return ("transformer.wte.weight", Wte);
        yield return ("transformer.wpe.weight", Wpe);
        for (int i = 0; i < Blocks.Length; i++)
            foreach (var (n, t) in Blocks[i].Named()) yield return ($"transformer.h.{i}.{n}", t);
        yield return ("transformer.ln_f.weight", LnfWeight);
        yield return ("transformer.ln_f.bias", LnfBias);
        if (LmHead is not null) yield return ("lm_head.weight", LmHead);
    }

    public void Dispose() => buffers.Dispose();
}

/// <summary>
/// GPT-2 (and DiffuGPT, which is the same network without a causal mask): token + position embedding,
/// pre-LN blocks of attention and a tanh-GELU MLP, a final LayerNorm and the head tied to the token
/// embedding. Every op goes through <see cref="Runtime.Device"/>, so the same code runs on every device.
/// The forward pass fills a <see cref="Gpt2Activations"/>; the backward pass walks it in reverse.
/// </summary>
public sealed class Gpt2Model : ITrainableModel
{
    public Gpt2Model(Gpt2Config config, Device device, Gpt2Weights weights)
    {
        if (config.TieWordEmbeddings != (weights.LmHead is null))
            throw new ArgumentException("the weights' head does not match tie_word_embeddings");
        Config = config; Device = device; Weights = weights;
    }

    public Gpt2Config Config { get; private set; }
    IModelConfig ILanguageModel.Config => Config;
    public Device Device { get; }
    public Gpt2Weights Weights { get; private set; }

    /// <summary>The output projection [V, C]: the token embedding when embeddings are tied.</summary>
    public Tensor LmHead => Weights.LmHead ?? Weights.Wte;

    public int VocabSize => Config.VocabSize;
    public int Positions => Config.Positions;
    public int Layers => Config.Layers;
    public int KvWidth => Config.Channels;
    public int? MaskTokenId => Config.MaskTokenId;

    public ForwardResult Logits(ReadOnlySpan<int> ids, int batch, int length, AttentionMaskMode mode, Tensor? allow = null,
        ReadOnlySpan<int> rowLengths = default)
    {
        var act = CreateActivations(batch, length);
        try
        {
            Forward(ids, act, mode, allow, rowLengths: rowLengths);
            return new ForwardResult(act.Logits!, act);
        }
        catch
        {
            act.Dispose();
            throw;
        }
    }

    public void Decode(ReadOnlySpan<int> ids, int batch, KvCache cache, Span<float> lastLogits)
    {
        using var act = Gpt2Activations.ForDecoding(this, batch, ids.Length / batch);
        Forward(ids, act, AttentionMaskMode.Causal, null, cache);
        Device.Download(act.LastLogits!, 0, lastLogits);
    }

    /// <summary>Loads config.json and the safetensors weights (single file or sharded) of a model folder.</summary>
    public static Gpt2Model Load(string directory, Device device)
    {
        if (!Directory.Exists(directory)) throw new DiffuException($"{directory}: model folder not found");
        var config = Gpt2Config.Load(Path.Combine(directory, "config.json"));
        using var checkpoint = SafeTensorCheckpoint.Open(directory);
        return FromCheckpoint(config, checkpoint, device);
    }

    public static Gpt2Model FromCheckpoint(Gpt2Config config, SafeTensorCheckpoint checkpoint, Device device)
    {
        var names = new Gpt2WeightNames(checkpoint);
        if (!config.TieWordEmbeddings && !checkpoint.Contains("lm_head.weight"))
            throw new DiffuException($"{names.Source}: tie_word_embeddings is false but there is no 'lm_head.weight'");
        var weights = Gpt2Weights.Zeros(config, device);
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

    /// <summary>
    /// A freshly initialised GPT-2 (GPT-2's scheme: weights N(0, 0.02), the residual projections scaled by
    /// 1/sqrt(2 · layers), biases 0, LayerNorm weights 1), drawn from the Philox stream of <paramref name="seed"/>.
    /// </summary>
    public static Gpt2Model CreateRandom(Gpt2Config config, Device device, ulong seed)
    {
        ulong stream = 0;
        var weights = Gpt2Weights.Zeros(config, device);
        foreach (var (name, view) in weights.Named())
        {
            var values = new float[view.Length];
            stream++;
            if (name.Contains(".ln_") && name.EndsWith(".weight")) Array.Fill(values, 1f);
            else if (!name.EndsWith(".bias"))
                Gaussian.Fill(values, name.EndsWith("c_proj.weight") ? 0.02f / MathF.Sqrt(2 * config.Layers) : 0.02f, seed, stream);
            device.Upload(view, 0, values);
        }
        return new Gpt2Model(config, device, weights);
    }

    /// <summary>
    /// Appends one token to the vocabulary (a new [MASK], as DiffuGPT-M does) whose embedding, and head row
    /// when untied, is the mean of the existing rows. Returns its id (the old vocabulary size).
    /// </summary>
    public int AppendToken()
    {
        int v = Config.VocabSize;
        var grown = Gpt2Weights.Zeros(Config with { VocabSize = v + 1 }, Device);
        TrainableModelExtensions.CopyGrowing(Device, Weights, grown);
        Weights.Dispose();
        Weights = grown;
        Config = Config with { VocabSize = v + 1 };
        return v;
    }

    public IParameterSet Parameters => Weights;
    public long ParameterCount => Config.ParameterCount;
    public IParameterSet ZeroParameterSet() => Gpt2Weights.Zeros(Config, Device);
    public System.Text.Json.Nodes.JsonObject ConfigJson(int? maskTokenId) => (Config with { MaskTokenId = maskTokenId ?? Config.MaskTokenId }).ToJson();

    /// <summary>Activation buffers for a (batch, length); keeps every layer's buffers when training needs them.</summary>
    public Gpt2Activations CreateActivations(int batch, int length, bool keepAllLayers = false) =>
        new(this, batch, length, keepAllLayers);

    /// <summary>
    /// Runs the network on ids [batch, length] and fills <paramref name="act"/>; the logits end up in
    /// act.Logits [B, T, V]. With a KV cache, the ids continue the cached sequence (positions start at
    /// cache.Length, attention sees the cached keys) and the cache grows by <paramref name="act"/>.Length.
    /// With <paramref name="rowLengths"/>, rows are right-padded and attention never reaches their padding
    /// (<see cref="ILanguageModel.Logits"/>); such a pass has no backward.
    /// </summary>
    public void Forward(ReadOnlySpan<int> ids, Gpt2Activations act, AttentionMaskMode mode, Tensor? allow = null, KvCache? cache = null,
        ReadOnlySpan<int> rowLengths = default)
    {
        int b = act.Batch, t = act.Length, c = Config.Channels, h = Config.Heads;
        int offset = this.CheckInputs(ids, b, t, mode, cache, rowLengths);
        if (!rowLengths.IsEmpty && act.KeepsAllLayers)
            throw new ArgumentException("row lengths are for inference: attention over per-row key lengths has no backward");

        var d = Device;
        var W = Weights;
        d.Upload(act.Ids, 0, ids);
        using var keyLengths = rowLengths.IsEmpty ? null : d.FromArray(rowLengths, b);
        d.Embedding(act.Ids, W.Wte, W.Wpe, act.Encoded, offset);
        var residual = act.Encoded;
        for (int l = 0; l < W.Blocks.Length; l++)
        {
            var w = W.Blocks[l];
            var a = act.Layer(l);
            d.LayerNorm(residual, w.Ln1Weight, w.Ln1Bias, a.Ln1, a.Ln1Mean, a.Ln1Rstd, Config.LayerNormEpsilon);
            d.MatMul(a.Ln1, w.AttnWeight, w.AttnBias, a.Qkv);
            if (cache is null)
            {
                var shape = AttentionShape.PackedSelfAttention(b, t, h, Config.HeadDim);
                d.Attention(a.Qkv, 0, a.Qkv, c, a.Qkv, 2 * c, a.Att, a.AttLse, shape, mode, allow, keyLengths);
            }
            else
            {
                cache.Append(l, a.Qkv, c, a.Qkv, 2 * c, 3 * c, t);
                var (keys, values) = cache.Layer(l);
                var shape = new AttentionShape(b, h, h, Config.HeadDim, t, offset + t, offset,
                    3 * c, c, (long)t * 3 * c, (long)cache.Capacity * c, 1f / MathF.Sqrt(Config.HeadDim));
                d.Attention(a.Qkv, 0, keys, 0, values, 0, a.Att, a.AttLse, shape, AttentionMaskMode.Causal, null);
            }
            d.MatMul(a.Att, w.AttnProjWeight, w.AttnProjBias, a.AttProj);
            d.Add(residual, a.AttProj, a.Residual2);
            d.LayerNorm(a.Residual2, w.Ln2Weight, w.Ln2Bias, a.Ln2, a.Ln2Mean, a.Ln2Rstd, Config.LayerNormEpsilon);
            d.MatMul(a.Ln2, w.FcWeight, w.FcBias, a.Fc);
            d.Gelu(a.Fc, a.FcGelu);
            d.MatMul(a.FcGelu, w.FcProjWeight, w.FcProjBias, a.FcProj);
            d.Add(a.Residual2, a.FcProj, a.Residual3);
            residual = a.Residual3;
        }
        d.LayerNorm(residual, W.LnfWeight, W.LnfBias, act.LnF, act.LnFMean, act.LnFRstd, Config.LayerNormEpsilon);
        if (act.Logits is not null)
            d.MatMulTransposed(act.LnF, LmHead, null, act.Logits);
        else
        {
            d.CopyRows(act.LnF, (long)(t - 1) * c, t * c, act.LastHidden!, 0, c, b, c);
            d.MatMulTransposed(act.LastHidden!, LmHead, null, act.LastLogits!);
        }
        if (cache is not null) cache.Length = offset + t;
    }

    /// <summary>
    /// Backpropagates from act.Logits, which must already hold dLoss/dLogits (e.g. written in place by
    /// <see cref="Device.CrossEntropy"/>), through the network of the forward call that filled
    /// <paramref name="act"/> (made with keepAllLayers, same mode and allow-mask). Adds the parameter
    /// gradients into <paramref name="grads"/>, so micro-batches accumulate.
    /// </summary>
    public void Backward(Gpt2Activations act, Gpt2Weights grads, AttentionMaskMode mode, Tensor? allow = null)
    {
        if (!act.KeepsAllLayers || act.Logits is null)
            throw new ArgumentException("backward needs activations made with keepAllLayers and full logits");
        int b = act.Batch, t = act.Length, c = Config.Channels;
        var d = Device;
        var W = Weights;
        using var dLn = d.Allocate(DType.F32, b, t, c);
        using var dResidual = d.Zeros(DType.F32, b, t, c);
        using var dQkv = d.Allocate(DType.F32, b, t, 3 * c);
        using var dAtt = d.Allocate(DType.F32, b, t, c);
        using var dFc = d.Allocate(DType.F32, b, t, 4 * c);
        using var dFcGelu = d.Allocate(DType.F32, b, t, 4 * c);

        d.Fill(dLn, 0);
        d.MatMulTransposedBackward(act.Logits, act.LnF, LmHead, dLn, grads.LmHead ?? grads.Wte, null);
        var last = act.Layer(W.Blocks.Length - 1).Residual3;
        d.LayerNormBackward(dLn, last, W.LnfWeight, act.LnFMean, act.LnFRstd, dResidual, grads.LnfWeight, grads.LnfBias);
        var shape = AttentionShape.PackedSelfAttention(b, t, Config.Heads, Config.HeadDim);
        for (int l = W.Blocks.Length - 1; l >= 0; l--)
        {
            var w = W.Blocks[l];
            var g = grads.Blocks[l];
            var a = act.Layer(l);
            var input = l == 0 ? act.Encoded : act.Layer(l - 1).Residual3;
            // dResidual holds dLoss/dResidual3; the MLP branch and the skip both receive it.
            d.Fill(dFcGelu, 0);
            d.MatMulBackward(dResidual, a.FcGelu, w.FcProjWeight, dFcGelu, g.FcProjWeight, g.FcProjBias);
            d.Fill(dFc, 0);
            d.GeluBackward(a.Fc, dFcGelu, dFc);
            d.Fill(dLn, 0);
            d.MatMulBackward(dFc, a.Ln2, w.FcWeight, dLn, g.FcWeight, g.FcBias);
            d.LayerNormBackward(dLn, a.Residual2, w.Ln2Weight, a.Ln2Mean, a.Ln2Rstd, dResidual, g.Ln2Weight, g.Ln2Bias);
            // dResidual now holds dLoss/dResidual2; the attention branch and the skip both receive it.
            d.Fill(dAtt, 0);
            d.MatMulBackward(dResidual, a.Att, w.AttnProjWeight, dAtt, g.AttnProjWeight, g.AttnProjBias);
            d.Fill(dQkv, 0);
            d.AttentionBackward(a.Qkv, 0, a.Qkv, c, a.Qkv, 2 * c, a.Att, dAtt, a.AttLse!, dQkv, 0, dQkv, c, dQkv, 2 * c, shape, mode, allow);
            d.Fill(dLn, 0);
            d.MatMulBackward(dQkv, a.Ln1, w.AttnWeight, dLn, g.AttnWeight, g.AttnBias);
            d.LayerNormBackward(dLn, input, w.Ln1Weight, a.Ln1Mean, a.Ln1Rstd, dResidual, g.Ln1Weight, g.Ln1Bias);
        }
        d.EmbeddingBackward(act.Ids, dResidual, grads.Wte, grads.Wpe, 0);
    }

    public void Dispose() => Weights.Dispose();
}

/// <summary>
/// Finds GPT-2 weights under the names the various writers use: HF GPT2LMHeadModel (`transformer.*`),
/// a bare GPT2Model (no prefix), and the DiffuGPT wrapper (`denoise_model.*` with `embed_tokens.weight`).
/// </summary>
sealed class Gpt2WeightNames
{
    static readonly string[] Prefixes = ["transformer.", "denoise_model.", ""];
    readonly string prefix;

    public Gpt2WeightNames(SafeTensorCheckpoint checkpoint)
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

/// <summary>Per-layer activation buffers of one GPT-2 forward pass.</summary>
public sealed class Gpt2LayerActivations : IDisposable
{
    internal Gpt2LayerActivations(Device d, int b, int t, int c)
    {
        int rows = b * t;
        Ln1 = d.Allocate(DType.F32, b, t, c); Ln1Mean = d.Allocate(DType.F32, rows); Ln1Rstd = d.Allocate(DType.F32, rows);
        Qkv = d.Allocate(DType.F32, b, t, 3 * c);
        Att = d.Allocate(DType.F32, b, t, c);
        AttProj = d.Allocate(DType.F32, b, t, c);
        Residual2 = d.Allocate(DType.F32, b, t, c);
        Ln2 = d.Allocate(DType.F32, b, t, c); Ln2Mean = d.Allocate(DType.F32, rows); Ln2Rstd = d.Allocate(DType.F32, rows);
        Fc = d.Allocate(DType.F32, b, t, 4 * c);
        FcGelu = d.Allocate(DType.F32, b, t, 4 * c);
        FcProj = d.Allocate(DType.F32, b, t, c);
        Residual3 = d.Allocate(DType.F32, b, t, c);
    }

    public Tensor Ln1, Ln1Mean, Ln1Rstd, Qkv, Att, AttProj, Residual2, Ln2, Ln2Mean, Ln2Rstd, Fc, FcGelu, FcProj, Residual3;

    /// <summary>Attention log-sum-exp [B, H, T], kept for the backward pass; null when not needed.</summary>
    public Tensor? AttLse;

    public void Dispose()
    {
        foreach (var x in new[] { Ln1, Ln1Mean, Ln1Rstd, Qkv, Att, AttProj, Residual2, Ln2, Ln2Mean, Ln2Rstd, Fc, FcGelu, FcProj, Residual3 }) x.Dispose();
        AttLse?.Dispose();
    }
}

/// <summary>
/// The buffers of a GPT-2 forward pass for one (batch, length). Inference shares one set of layer
/// buffers among all layers; training keeps every layer's. Buffers come from the device pool, so making
/// and disposing a set per step allocates nothing after the first step.
/// </summary>
public sealed class Gpt2Activations : IDisposable
{
    readonly Gpt2LayerActivations[] layers;

    internal Gpt2Activations(Gpt2Model model, int batch, int length, bool keepAllLayers, bool lastLogitsOnly = false)
    {
        if (batch <= 0 || length <= 0) throw new ArgumentException($"batch and length must be positive, got [{batch}, {length}]");
        var cfg = model.Config;
        var d = model.Device;
        Batch = batch; Length = length; KeepsAllLayers = keepAllLayers;
        int c = cfg.Channels;
        Ids = d.Allocate(DType.I32, batch, length);
        Encoded = d.Allocate(DType.F32, batch, length, c);
        int sets = keepAllLayers ? cfg.Layers : 1;
        layers = new Gpt2LayerActivations[sets];
        for (int i = 0; i < sets; i++)
        {
            layers[i] = new Gpt2LayerActivations(d, batch, length, c);
            if (keepAllLayers) layers[i].AttLse = d.Allocate(DType.F32, batch, cfg.Heads, length);
        }
        LnF = d.Allocate(DType.F32, batch, length, c);
        LnFMean = d.Allocate(DType.F32, batch * length);
        LnFRstd = d.Allocate(DType.F32, batch * length);
        if (lastLogitsOnly)
        {
            LastHidden = d.Allocate(DType.F32, batch, c);
            LastLogits = d.Allocate(DType.F32, batch, cfg.VocabSize);
        }
        else Logits = d.Allocate(DType.F32, batch, length, cfg.VocabSize);
    }

    public int Batch { get; }
    public int Length { get; }
    public bool KeepsAllLayers { get; }
    public Tensor Ids { get; }
    public Tensor Encoded { get; }
    public Tensor LnF { get; }
    public Tensor LnFMean { get; }
    public Tensor LnFRstd { get; }

    /// <summary>Logits [B, T, V] for every position (null when only the last position is computed).</summary>
    public Tensor? Logits { get; }

    /// <summary>The final hidden state and logits [B, V] of the last position, for decoding.</summary>
    public Tensor? LastHidden { get; }
    public Tensor? LastLogits { get; }

    public Gpt2LayerActivations Layer(int index) => layers[layers.Length == 1 ? 0 : index];

    /// <summary>Buffers for one decoding step: only the last position's logits are computed.</summary>
    public static Gpt2Activations ForDecoding(Gpt2Model model, int batch, int length) => new(model, batch, length, false, true);

    public void Dispose()
    {
        Ids.Dispose(); Encoded.Dispose();
        foreach (var l in layers) l.Dispose();
        LnF.Dispose(); LnFMean.Dispose(); LnFRstd.Dispose();
        Logits?.Dispose(); LastHidden?.Dispose(); LastLogits?.Dispose();
    }
}
