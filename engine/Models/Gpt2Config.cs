using System.Text.Json.Nodes;
using DiffuSharp.IO;

namespace DiffuSharp.Models;

/// <summary>The GPT-2 hyper-parameters DiffuSharp uses, read from an HF config.json.</summary>
public sealed record Gpt2Config(
    int VocabSize, int Positions, int Channels, int Layers, int Heads,
    float LayerNormEpsilon = 1e-5f, bool TieWordEmbeddings = true) : IModelConfig
{
    /// <summary>The [MASK] token of a diffusion model (config.json's mask_token_id), if it names one.</summary>
    public int? MaskTokenId { get; init; }

    public int HeadDim => Channels / Heads;

    public int KvWidth => Channels;

    /// <summary>ln_1 (with mean and rstd), qkv, attention, the branch projection, residual, ln_2, fc, gelu, residual; the attention log-sum-exp.</summary>
    public long LayerActivationFloatsPerRow => 16L * Channels + 4 + Heads;

    /// <summary>The activations HF calls the tanh approximation of GELU (what GPT-2 uses).</summary>
    static readonly string[] TanhGelu = ["gelu_new", "gelu_pytorch_tanh", "gelu_fast"];

    public static Gpt2Config Load(string path)
    {
        var json = JsonConfig.Load(path);
        var type = json.String("model_type");
        if (type is not null && type != "gpt2")
            throw new ConfigException(path, $"model_type \"{type}\" is not a GPT-2 config");
        int channels = json.RequireInt("n_embd", "hidden_size");
        int layers = json.RequireInt("n_layer", "num_hidden_layers");
        int heads = json.RequireInt("n_head", "num_attention_heads");
        int positions = json.RequireInt("n_positions", "n_ctx", "max_position_embeddings");
        int vocab = json.RequireInt("vocab_size");
        foreach (var (name, v) in new[] { ("n_embd", channels), ("n_layer", layers), ("n_head", heads), ("n_positions", positions), ("vocab_size", vocab) })
            json.RequirePositive(name, v);
        if (channels % heads != 0)
            throw new ConfigException(path, $"n_embd ({channels}) must be divisible by n_head ({heads})");
        // The model computes 3 * n_embd and 4 * n_embd in ints, and Gpt2Model.CreateRandom 2 * n_layer, which also
        // keeps ParameterCount within a long; a CPU tensor is one managed array.
        json.RequireIntSize("4 * n_embd", 4 * (Int128)channels);
        json.RequireIntSize("2 * n_layer", 2 * (Int128)layers);
        json.RequireTensorSize("transformer.wte.weight", "vocab_size * n_embd", (Int128)vocab * channels);
        json.RequireTensorSize("transformer.wpe.weight", "n_positions * n_embd", (Int128)positions * channels);
        json.RequireTensorSize("mlp.c_fc.weight", "n_embd * 4 * n_embd", (Int128)channels * 4 * channels);
        var act = json.String("activation_function") ?? "gelu_new";
        if (!TanhGelu.Contains(act))
            throw new ConfigException(path, $"unsupported activation_function \"{act}\" (supported: {string.Join(", ", TanhGelu)})");
        if (json.Has("n_inner") && json.OptionalInt("n_inner") is int inner && inner != 4 * channels)
            throw new ConfigException(path, $"unsupported n_inner {inner}: only the standard 4 * n_embd = {4 * channels} is supported");
        // LayerNorm divides by sqrt(variance + eps): eps must be a positive float32 (a constant row has variance
        // 0) and well below the variances of about 1, or it flattens every activation into meaningless logits.
        float eps = json.FloatBetween("layer_norm_epsilon", 1e-5, 0, 1);
        foreach (var flag in new[] { "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn" })
            if (json.Bool(flag, false)) throw new ConfigException(path, $"unsupported option \"{flag}\": true");
        if (!json.Bool("scale_attn_weights", true)) throw new ConfigException(path, "unsupported option \"scale_attn_weights\": false");
        int? mask = json.OptionalInt("mask_token_id");
        if (mask is int m && (m < 0 || m >= vocab))
            throw new ConfigException(path, $"mask_token_id {m} is outside the vocabulary [0, {vocab})");
        return new Gpt2Config(vocab, positions, channels, layers, heads, eps, json.Bool("tie_word_embeddings", true)) { MaskTokenId = mask };
    }

    /// <summary>An HF config.json for this config.</summary>
    public JsonObject ToJson()
    {
        var json = new JsonObject
        {
            ["model_type"] = "gpt2",
            ["architectures"] = new JsonArray("GPT2LMHeadModel"),
            ["vocab_size"] = VocabSize,
            ["n_positions"] = Positions,
            ["n_ctx"] = Positions,
            ["n_embd"] = Channels,
            ["n_layer"] = Layers,
            ["n_head"] = Heads,
            ["layer_norm_epsilon"] = LayerNormEpsilon,
            ["activation_function"] = "gelu_new",
            ["tie_word_embeddings"] = TieWordEmbeddings,
        };
        if (MaskTokenId is int mask) json["mask_token_id"] = mask;
        return json;
    }

    public long ParameterCount =>
        (long)VocabSize * Channels + (long)Positions * Channels
        + Layers * (2L * Channels + 3L * Channels * Channels + 3L * Channels + (long)Channels * Channels + Channels
                    + 2L * Channels + 4L * Channels * Channels + 4L * Channels + 4L * Channels * Channels + Channels)
        + 2L * Channels + (TieWordEmbeddings ? 0 : (long)VocabSize * Channels);
}
