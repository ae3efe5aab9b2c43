using System.Text.Json.Nodes;
using DiffuSharp.IO;

namespace DiffuSharp.Models;

/// <summary>The LLaMA hyper-parameters DiffuSharp uses, read from an HF config.json (LlamaForCausalLM).</summary>
public sealed record LlamaConfig(
    int VocabSize, int Positions, int Channels, int Hidden, int Layers, int Heads, int KvHeads,
    float RmsNormEpsilon = 1e-5f, float RopeTheta = 10000f, bool TieWordEmbeddings = false) : IModelConfig
{
    public int HeadDim => Channels / Heads;

    public int KvWidth => KvHeads * HeadDim;

    /// <summary>Both norms (with rstd), q, k, v, attention, projection, residuals, gate, up, SwiGLU; the attention log-sum-exp.</summary>
    public long LayerActivationFloatsPerRow => 7L * Channels + 2L * KvWidth + 3L * Hidden + 2 + Heads;

    /// <summary>The [MASK] token of a diffusion model (config.json's mask_token_id), if it names one.</summary>
    public int? MaskTokenId { get; init; }

    public static LlamaConfig Load(string path)
    {
        var json = JsonConfig.Load(path);
        var type = json.String("model_type");
        if (type != "llama") throw new ConfigException(path, $"model_type \"{type}\" is not a LLaMA config");
        int channels = json.RequireInt("hidden_size");
        int hidden = json.RequireInt("intermediate_size");
        int layers = json.RequireInt("num_hidden_layers");
        int heads = json.RequireInt("num_attention_heads");
        int kvHeads = json.Int("num_key_value_heads", heads);
        int positions = json.RequireInt("max_position_embeddings");
        int vocab = json.RequireInt("vocab_size");
        foreach (var (name, v) in new[] { ("hidden_size", channels), ("intermediate_size", hidden), ("num_hidden_layers", layers),
                     ("num_attention_heads", heads), ("num_key_value_heads", kvHeads), ("max_position_embeddings", positions), ("vocab_size", vocab) })
            json.RequirePositive(name, v);
        if (channels % heads != 0) throw new ConfigException(path, $"hidden_size ({channels}) must be divisible by num_attention_heads ({heads})");
        if (heads % kvHeads != 0) throw new ConfigException(path, $"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kvHeads})");
        if ((channels / heads) % 2 != 0) throw new ConfigException(path, $"the head dimension {channels / heads} must be even for RoPE");
        // A CPU tensor is one managed array. The kv width num_key_value_heads * head_dim is at most hidden_size,
        // as num_attention_heads is a multiple of num_key_value_heads.
        json.RequireTensorSize("model.embed_tokens.weight", "vocab_size * hidden_size", (Int128)vocab * channels);
        json.RequireTensorSize("self_attn.q_proj.weight", "hidden_size * hidden_size", (Int128)channels * channels);
        json.RequireTensorSize("mlp.gate_proj.weight", "intermediate_size * hidden_size", (Int128)hidden * channels);
        if (json.OptionalInt("head_dim") is int headDim && headDim != channels / heads)
            throw new ConfigException(path, $"unsupported head_dim {headDim}: only hidden_size / num_attention_heads = {channels / heads} is supported");
        var act = json.String("hidden_act") ?? "silu";
        if (act != "silu") throw new ConfigException(path, $"unsupported hidden_act \"{act}\" (only silu, i.e. SwiGLU)");
        if (json.Has("rope_scaling")) throw new ConfigException(path, "unsupported rope_scaling: only plain RoPE is supported");
        foreach (var flag in new[] { "attention_bias", "mlp_bias" })
            if (json.Bool(flag, false)) throw new ConfigException(path, $"unsupported option \"{flag}\": true");
        // RMSNorm divides by sqrt(mean square + eps), as LayerNorm does (see Gpt2Config). RoPE rotates pair i by
        // position · rope_theta^(-2i/d): at 1 every pair turns at the same rate, and at infinity only the first turns.
        float eps = json.FloatBetween("rms_norm_eps", 1e-6, 0, 1);
        float theta = json.FloatBetween("rope_theta", 10000, 1, double.PositiveInfinity);
        int? mask = json.OptionalInt("mask_token_id");
        if (mask is int m && (m < 0 || m >= vocab)) throw new ConfigException(path, $"mask_token_id {m} is outside the vocabulary [0, {vocab})");
        var config = new LlamaConfig(vocab, positions, channels, hidden, layers, heads, kvHeads, eps, theta, json.Bool("tie_word_embeddings", false))
        {
            MaskTokenId = mask,
        };
        if (config.ExactParameterCount > long.MaxValue)
            throw new ConfigException(path, $"num_hidden_layers {layers} is too large: the parameter count {config.ExactParameterCount} overflows a 64-bit long");
        return config;
    }

    public long ParameterCount => (long)ExactParameterCount;

    /// <summary>The parameter count in 128 bits, so that <see cref="Load"/> can check that it fits a long.</summary>
    Int128 ExactParameterCount =>
        (Int128)VocabSize * Channels * (TieWordEmbeddings ? 1 : 2) + Channels
        + (Int128)Layers * (2L * Channels + 2L * Channels * Channels + 2L * Channels * KvHeads * HeadDim + 3L * Channels * Hidden);

    public JsonObject ToJson()
    {
        var json = new JsonObject
        {
            ["model_type"] = "llama",
            ["architectures"] = new JsonArray("LlamaForCausalLM"),
            ["vocab_size"] = VocabSize,
            ["max_position_embeddings"] = Positions,
            ["hidden_size"] = Channels,
            ["intermediate_size"] = Hidden,
            ["num_hidden_layers"] = Layers,
            ["num_attention_heads"] = Heads,
            ["num_key_value_heads"] = KvHeads,
            ["rms_norm_eps"] = RmsNormEpsilon,
            ["rope_theta"] = RopeTheta,
            ["hidden_act"] = "silu",
            ["tie_word_embeddings"] = TieWordEmbeddings,
        };
        if (MaskTokenId is int mask) json["mask_token_id"] = mask;
        return json;
    }
}
