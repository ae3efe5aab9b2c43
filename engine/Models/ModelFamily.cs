using DiffuSharp.IO;
using DiffuSharp.Runtime;
using DiffuSharp.Text;

namespace DiffuSharp.Models;

/// <summary>
/// The special tokens of the SFT layout of method §5, <c>[BOS] + src + [SEP] + tgt + [EOS]</c> right-padded with PAD
/// (what the GSM8K task frames its prompts with), as a family's vocabulary provides them.
/// </summary>
public sealed record SftTokens(int Bos, int Sep, int Eos, int Pad);

/// <summary>
/// What the tools need to know about a model family beyond its network: its configs, loading and fresh
/// initialisation, its tokenizers, the special tokens a sequence starts with, the paper's default [MASK] and
/// the SFT tokens. Found through <see cref="Of(IModelConfig)"/> or <see cref="ForConfigFile"/>, so no caller outside
/// this folder tests for a concrete family.
/// </summary>
public abstract class ModelFamily
{
    /// <summary>Every family, in the order model_type is matched.</summary>
    public static IReadOnlyList<ModelFamily> All { get; } = [new Gpt2Family(), new LlamaFamily()];

    /// <summary>config.json's model_type.</summary>
    public abstract string Name { get; }

    /// <summary>The name people write ("GPT-2").</summary>
    public abstract string DisplayName { get; }

    /// <summary>The family whose configs these are.</summary>
    public static ModelFamily Of(IModelConfig config) =>
        All.FirstOrDefault(f => f.Owns(config)) ?? throw new ArgumentException($"no model family for {config.GetType().Name}");

    /// <summary>The family a config.json names with model_type (a GPT-2 config may leave it out).</summary>
    public static ModelFamily ForConfigFile(string configPath)
    {
        var type = JsonConfig.Load(configPath).String("model_type") ?? "gpt2";
        return All.FirstOrDefault(f => f.Name == type)
            ?? throw new ConfigException(configPath, $"unsupported model_type \"{type}\" (supported: {string.Join(", ", All.Select(f => f.Name))})");
    }

    /// <summary>A config.json of whichever family it names, read and checked.</summary>
    public static IModelConfig LoadConfigFile(string configPath) => ForConfigFile(configPath).LoadConfig(configPath);

    protected abstract bool Owns(IModelConfig config);

    public abstract IModelConfig LoadConfig(string configPath);

    /// <summary>The model in a folder holding config.json and safetensors weights, its weights stored as <paramref name="weightType"/> (null: as on disk).</summary>
    public abstract ITrainableModel Load(string directory, Device device, DType? weightType = null);

    /// <summary>The type a checkpoint stores this config's weights in: BF16 or F16 when every one is stored so, else F32 (what --weights auto loads).</summary>
    public abstract DType StoredWeightType(IModelConfig config, SafeTensorsCheckpoint checkpoint);

    /// <summary>A freshly initialised model of this config (the family's scheme), from the Philox stream of <paramref name="seed"/>.</summary>
    public abstract ITrainableModel CreateRandom(IModelConfig config, Device device, ulong seed, DType weightType = DType.F32);

    /// <summary>The family's tokenizer at <paramref name="place"/> (a folder, or a tokenizer file), or null when there is none of its kind.</summary>
    public abstract TextTokenizer? FindTokenizer(string place, IModelConfig config);

    /// <summary>What a folder must hold for <see cref="FindTokenizer"/>, and how to point at one.</summary>
    public abstract string TokenizerHint { get; }

    /// <summary>The fixed first token of a sequence: LLaMA's BOS, GPT-2's end-of-text (which also separates documents).</summary>
    public abstract int StartToken(TextTokenizer tokenizer);

    /// <summary>
    /// Whether a prompt's text is encoded after the start token: LLaMA's tokenizers put BOS before text and, when
    /// decoding, drop it (and the dummy-prefix space after it); GPT-2's end-of-text is not part of the text.
    /// </summary>
    public abstract bool TextFollowsStartToken { get; }

    /// <summary>The BOS its tokenizer's encode adds by default (LLaMA's), or null (GPT-2 adds none).</summary>
    public abstract int? DefaultBos { get; }

    /// <summary>The paper's [MASK] id: 10541 for GPT-2 (DiffuGPT-S), 811 for LLaMA (DiffuLLaMA).</summary>
    public abstract int PaperMaskToken { get; }

    /// <summary>The HF name of the token embedding (what LoRA's --lora-train-embeddings trains, PEFT's modules_to_save).</summary>
    public abstract string TokenEmbeddingName { get; }

    /// <summary>The BOS, SEP, EOS and PAD of SFT sequences (method §5) with this tokenizer.</summary>
    public abstract SftTokens SftTokens(TextTokenizer tokenizer);

    /// <summary>The config's fields as (label, value) rows, for `diffu info`.</summary>
    public abstract IEnumerable<(string Label, string Value)> Describe(IModelConfig config);

    /// <summary>The text of a generated row that starts with <see cref="StartToken"/>.</summary>
    public string DecodeRow(TextTokenizer tokenizer, ReadOnlySpan<int> row) =>
        tokenizer.Decode((TextFollowsStartToken ? row : row[1..]).ToArray());
}

sealed class Gpt2Family : ModelFamily
{
    public override string Name => "gpt2";
    public override string DisplayName => "GPT-2";
    protected override bool Owns(IModelConfig config) => config is Gpt2Config;
    public override IModelConfig LoadConfig(string configPath) => Gpt2Config.Load(configPath);
    public override ITrainableModel Load(string directory, Device device, DType? weightType = null) => Gpt2Model.Load(directory, device, weightType);
    public override DType StoredWeightType(IModelConfig config, SafeTensorsCheckpoint checkpoint) => Gpt2Model.StoredType((Gpt2Config)config, checkpoint);
    public override ITrainableModel CreateRandom(IModelConfig config, Device device, ulong seed, DType weightType = DType.F32) =>
        Gpt2Model.CreateRandom((Gpt2Config)config, device, seed, weightType);

    /// <summary>BPE files in a folder; a model with fewer than the 50257 GPT-2 tokens uses the first vocab_size tokens.</summary>
    public override TextTokenizer? FindTokenizer(string place, IModelConfig config) =>
        Directory.Exists(place) ? Gpt2Tokenizer.FromDirectory(place, config.VocabSize < 50257 ? config.VocabSize : null) : null;

    public override string TokenizerHint => "vocab.json + merges.txt or encoder.json + vocab.bpe; pass --tokenizer DIR or set DIFFU_TOKENIZER";
    public override int StartToken(TextTokenizer tokenizer) => tokenizer.EndOfTextId ?? 0;
    public override bool TextFollowsStartToken => false;
    public override int? DefaultBos => null;
    public override int PaperMaskToken => 10541;
    public override string TokenEmbeddingName => "transformer.wte.weight";

    /// <summary>GPT-2 has only end-of-text, which serves as all four (HF's GPT-2 bos = eos).</summary>
    public override SftTokens SftTokens(TextTokenizer tokenizer)
    {
        int eot = tokenizer.EndOfTextId ?? StartToken(tokenizer);
        return new(eot, eot, eot, eot);
    }

    public override IEnumerable<(string Label, string Value)> Describe(IModelConfig config)
    {
        var c = (Gpt2Config)config;
        yield return ("family", Name);
        yield return ("layers", c.Layers.ToString());
        yield return ("channels", c.Channels.ToString());
        yield return ("heads", $"{c.Heads} (head dim {c.HeadDim})");
        yield return ("positions", c.Positions.ToString());
        yield return ("vocab", c.VocabSize.ToString());
        yield return ("layer norm eps", c.LayerNormEpsilon.ToString("g"));
        yield return ("tied embeddings", c.TieWordEmbeddings ? "yes" : "no");
        yield return ("parameters (config)", c.ParameterCount.ToString("N0"));
        if (c.MaskTokenId is int m) yield return ("mask token", m.ToString());
    }
}

sealed class LlamaFamily : ModelFamily
{
    public override string Name => "llama";
    public override string DisplayName => "LLaMA";
    protected override bool Owns(IModelConfig config) => config is LlamaConfig;
    public override IModelConfig LoadConfig(string configPath) => LlamaConfig.Load(configPath);
    public override ITrainableModel Load(string directory, Device device, DType? weightType = null) => LlamaModel.Load(directory, device, weightType);
    public override DType StoredWeightType(IModelConfig config, SafeTensorsCheckpoint checkpoint) =>
        WeightTypes.Stored(checkpoint, LlamaWeights.Shapes((LlamaConfig)config).Select(s => s.Name));
    public override ITrainableModel CreateRandom(IModelConfig config, Device device, ulong seed, DType weightType = DType.F32) =>
        LlamaModel.CreateRandom((LlamaConfig)config, device, seed, weightType);

    /// <summary>A SentencePiece tokenizer.model or a llama2.c tokenizer.bin: the file itself, or a folder holding one.</summary>
    public override TextTokenizer? FindTokenizer(string place, IModelConfig config)
    {
        if (File.Exists(place)) return LlamaTokenizers.FromFile(place);
        foreach (var name in new[] { "tokenizer.model", "tokenizer.bin" })
            if (File.Exists(Path.Combine(place, name))) return LlamaTokenizers.FromFile(Path.Combine(place, name));
        return null;
    }

    public override string TokenizerHint => "tokenizer.model or tokenizer.bin; pass --tokenizer FILE or set DIFFU_TOKENIZER";
    public override int StartToken(TextTokenizer tokenizer) => LlamaTokenizers.BeginOfSentenceId;
    public override bool TextFollowsStartToken => true;
    public override int? DefaultBos => LlamaTokenizers.BeginOfSentenceId;
    public override int PaperMaskToken => 811;
    public override string TokenEmbeddingName => "model.embed_tokens.weight";

    /// <summary>BOS (1) and EOS (2), with EOS also as SEP and PAD (LLaMA has neither).</summary>
    public override SftTokens SftTokens(TextTokenizer tokenizer) =>
        new(LlamaTokenizers.BeginOfSentenceId, LlamaTokenizers.EndOfSentenceId, LlamaTokenizers.EndOfSentenceId, LlamaTokenizers.EndOfSentenceId);

    public override IEnumerable<(string Label, string Value)> Describe(IModelConfig config)
    {
        var c = (LlamaConfig)config;
        yield return ("family", Name);
        yield return ("layers", c.Layers.ToString());
        yield return ("hidden size", c.Channels.ToString());
        yield return ("intermediate size", c.Hidden.ToString());
        yield return ("heads", $"{c.Heads} ({c.KvHeads} key/value heads, head dim {c.HeadDim})");
        yield return ("positions", c.Positions.ToString());
        yield return ("vocab", c.VocabSize.ToString());
        yield return ("rms norm eps", c.RmsNormEpsilon.ToString("g"));
        yield return ("rope theta", c.RopeTheta.ToString("g"));
        yield return ("tied embeddings", c.TieWordEmbeddings ? "yes" : "no");
        yield return ("parameters (config)", c.ParameterCount.ToString("N0"));
        if (c.MaskTokenId is int m) yield return ("mask token", m.ToString());
    }
}
