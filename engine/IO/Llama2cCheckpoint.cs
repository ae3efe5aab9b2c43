using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace DiffuSharp.IO;

/// <summary>
/// A llama2.c checkpoint in the legacy .bin format: a header of 7 int32 (dim, hidden_dim, n_layers, n_heads,
/// n_kv_heads, vocab_size, seq_len; a negative vocab_size means the classifier is not shared with the
/// embedding), then float32 weights, each stacked over the layers: token_embedding [vocab, dim],
/// rms_att [layers, dim], wq [layers, dim, dim], wk and wv [layers, kv_heads·head_size, dim],
/// wo [layers, dim, dim], rms_ffn [layers, dim], w1 [layers, hidden, dim], w2 [layers, dim, hidden],
/// w3 [layers, hidden, dim], rms_final [dim], freq_cis_real and freq_cis_imag [seq_len, head_size/2], and
/// wcls [vocab, dim] only when the classifier is unshared. The file's size must match the header exactly.
/// </summary>
public sealed class Llama2cCheckpoint
{
    public const int HeaderBytes = 7 * sizeof(int);

    private Llama2cCheckpoint(string path, int[] header, bool shared)
    {
        SourcePath = path;
        Dim = header[0];
        HiddenDim = header[1];
        Layers = header[2];
        Heads = header[3];
        KvHeads = header[4];
        VocabSize = Math.Abs(header[5]);
        SeqLen = header[6];
        SharedClassifier = shared;
    }

    public string SourcePath { get; }
    public int Dim { get; }
    public int HiddenDim { get; }
    public int Layers { get; }
    public int Heads { get; }
    public int KvHeads { get; }
    public int VocabSize { get; }
    public int SeqLen { get; }
    public bool SharedClassifier { get; }
    public int HeadSize => Dim / Heads;
    public int KvDim => KvHeads * HeadSize;

    public float[] TokenEmbedding { get; private set; } = [];
    public float[] RmsAttention { get; private set; } = [];
    public float[] Wq { get; private set; } = [];
    public float[] Wk { get; private set; } = [];
    public float[] Wv { get; private set; } = [];
    public float[] Wo { get; private set; } = [];
    public float[] RmsFfn { get; private set; } = [];
    public float[] W1 { get; private set; } = [];
    public float[] W2 { get; private set; } = [];
    public float[] W3 { get; private set; } = [];
    public float[] RmsFinal { get; private set; } = [];

    /// <summary>The unshared classifier [vocab, dim], or null when the embedding is the classifier.</summary>
    public float[]? Classifier { get; private set; }

    /// <summary>The number of bytes a file with this header must have.</summary>
    public long ExpectedFileBytes
    {
        get
        {
            long floats = (long)VocabSize * Dim
                          + (long)Layers * (2L * Dim + 2L * Dim * Dim + 2L * KvDim * Dim + 3L * HiddenDim * Dim)
                          + Dim
                          + 2L * SeqLen * (HeadSize / 2)
                          + (SharedClassifier ? 0 : (long)VocabSize * Dim);
            return HeaderBytes + floats * sizeof(float);
        }
    }

    public static Llama2cCheckpoint Read(string path)
    {
        using var stream = InputFile.Open(path, problem => new DiffuException($"{path}: {problem}"), 1 << 20);
        long length = stream.Length;
        if (length < HeaderBytes)
            throw new DiffuException($"{path}: truncated llama2.c checkpoint: {length} bytes, less than the {HeaderBytes}-byte header");
        Span<byte> raw = stackalloc byte[HeaderBytes];
        stream.ReadExactly(raw);
        var header = new int[7];
        for (int i = 0; i < 7; i++) header[i] = BinaryPrimitives.ReadInt32LittleEndian(raw[(4 * i)..]);
        ValidateHeader(path, header);
        var c = new Llama2cCheckpoint(path, header, shared: header[5] > 0);
        long expected = c.ExpectedFileBytes;
        if (length != expected)
            throw new DiffuException($"{path}: {(length < expected ? "truncated" : "oversized")} llama2.c checkpoint: {length} bytes, the header " +
                                     $"(dim {c.Dim}, hidden {c.HiddenDim}, layers {c.Layers}, heads {c.Heads}, kv heads {c.KvHeads}, " +
                                     $"vocab {header[5]}, seq_len {c.SeqLen}) needs {expected}");
        c.TokenEmbedding = ReadFloats(stream, (long)c.VocabSize * c.Dim);
        c.RmsAttention = ReadFloats(stream, (long)c.Layers * c.Dim);
        c.Wq = ReadFloats(stream, (long)c.Layers * c.Dim * c.Dim);
        c.Wk = ReadFloats(stream, (long)c.Layers * c.KvDim * c.Dim);
        c.Wv = ReadFloats(stream, (long)c.Layers * c.KvDim * c.Dim);
        c.Wo = ReadFloats(stream, (long)c.Layers * c.Dim * c.Dim);
        c.RmsFfn = ReadFloats(stream, (long)c.Layers * c.Dim);
        c.W1 = ReadFloats(stream, (long)c.Layers * c.HiddenDim * c.Dim);
        c.W2 = ReadFloats(stream, (long)c.Layers * c.Dim * c.HiddenDim);
        c.W3 = ReadFloats(stream, (long)c.Layers * c.HiddenDim * c.Dim);
        c.RmsFinal = ReadFloats(stream, c.Dim);
        stream.Seek(2L * c.SeqLen * (c.HeadSize / 2) * sizeof(float), SeekOrigin.Current);
        c.Classifier = c.SharedClassifier ? null : ReadFloats(stream, (long)c.VocabSize * c.Dim);
        return c;
    }

    private static void ValidateHeader(string path, int[] h)
    {
        string[] names = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"];
        for (int i = 0; i < 7; i++)
        {
            if (h[i] == 0 || (h[i] < 0 && i != 5))
                throw new DiffuException($"{path}: bad llama2.c header: {names[i]} is {h[i]}");
        }
        if (h[5] == int.MinValue) throw new DiffuException($"{path}: bad llama2.c header: vocab_size is {h[5]}");
        if (h[0] % h[3] != 0) throw new DiffuException($"{path}: bad llama2.c header: dim {h[0]} is not a multiple of n_heads {h[3]}");
        if (h[0] / h[3] % 2 != 0) throw new DiffuException($"{path}: bad llama2.c header: head size {h[0] / h[3]} is odd, RoPE needs it even");
        if (h[4] > h[3] || h[3] % h[4] != 0)
            throw new DiffuException($"{path}: bad llama2.c header: n_heads {h[3]} is not a multiple of n_kv_heads {h[4]}");
        // Each tensor, stacked over the layers, is read into one array. With these three bounded (in 128 bits;
        // the others are no larger), no size computed from the header afterwards can overflow, so the expected
        // file length cannot wrap round to the real one.
        (string Name, Int128 Floats)[] largest =
            [("token_embedding", (Int128)Math.Abs(h[5]) * h[0]), ("wq", (Int128)h[2] * h[0] * h[0]), ("w1", (Int128)h[2] * h[1] * h[0])];
        foreach (var (name, floats) in largest)
        {
            if (floats > Array.MaxLength)
                throw new DiffuException($"{path}: bad llama2.c header: {name} would hold {floats} floats, more than one array can hold");
        }
    }

    private static float[] ReadFloats(Stream stream, long count)
    {
        var values = new float[count];
        stream.ReadExactly(MemoryMarshal.AsBytes(values.AsSpan()));
        if (!BitConverter.IsLittleEndian)
        {
            var bits = MemoryMarshal.Cast<float, uint>(values.AsSpan());
            for (int i = 0; i < bits.Length; i++) bits[i] = BinaryPrimitives.ReverseEndianness(bits[i]);
        }
        return values;
    }

    /// <summary>
    /// Reorders the rows of a q or k projection [heads·headSize, cols] per head, from llama2.c/Meta interleaved
    /// RoPE (pairs 2j, 2j+1) to HF rotate-half RoPE (pairs j, j+half): new row j = old row 2j and new row
    /// half + j = old row 2j + 1, so HF's rotation of the new projection's output is llama2.c's rotation of the
    /// old one's, with the same per-head reordering of the output (which q·k does not see).
    /// </summary>
    public static float[] PermuteForRotateHalf(ReadOnlySpan<float> weight, int heads, int headSize, int cols)
    {
        if (weight.Length != (long)heads * headSize * cols)
            throw new ArgumentException($"weight has {weight.Length} values, not {heads}·{headSize}·{cols}");
        if (headSize % 2 != 0) throw new ArgumentException($"head size {headSize} is odd");
        int half = headSize / 2;
        var result = new float[weight.Length];
        for (int h = 0; h < heads; h++)
        {
            int head = h * headSize;
            for (int j = 0; j < half; j++)
            {
                weight.Slice((head + 2 * j) * cols, cols).CopyTo(result.AsSpan((head + j) * cols, cols));
                weight.Slice((head + 2 * j + 1) * cols, cols).CopyTo(result.AsSpan((head + half + j) * cols, cols));
            }
        }
        return result;
    }

    /// <summary>The weights under HF LlamaForCausalLM names, q_proj and k_proj permuted for rotate-half RoPE.</summary>
    public IEnumerable<SafeTensorsEntry> HuggingFaceTensors()
    {
        yield return SafeTensorsEntry.FromFloat32("model.embed_tokens.weight", [VocabSize, Dim], TokenEmbedding);
        for (int l = 0; l < Layers; l++)
        {
            string p = $"model.layers.{l}.";
            yield return SafeTensorsEntry.FromFloat32(p + "input_layernorm.weight", [Dim], Layer(RmsAttention, l, Dim));
            yield return SafeTensorsEntry.FromFloat32(p + "self_attn.q_proj.weight", [Dim, Dim],
                                                     PermuteForRotateHalf(Layer(Wq, l, Dim * Dim), Heads, HeadSize, Dim));
            yield return SafeTensorsEntry.FromFloat32(p + "self_attn.k_proj.weight", [KvDim, Dim],
                                                     PermuteForRotateHalf(Layer(Wk, l, KvDim * Dim), KvHeads, HeadSize, Dim));
            yield return SafeTensorsEntry.FromFloat32(p + "self_attn.v_proj.weight", [KvDim, Dim], Layer(Wv, l, KvDim * Dim));
            yield return SafeTensorsEntry.FromFloat32(p + "self_attn.o_proj.weight", [Dim, Dim], Layer(Wo, l, Dim * Dim));
            yield return SafeTensorsEntry.FromFloat32(p + "post_attention_layernorm.weight", [Dim], Layer(RmsFfn, l, Dim));
            yield return SafeTensorsEntry.FromFloat32(p + "mlp.gate_proj.weight", [HiddenDim, Dim], Layer(W1, l, HiddenDim * Dim));
            yield return SafeTensorsEntry.FromFloat32(p + "mlp.up_proj.weight", [HiddenDim, Dim], Layer(W3, l, HiddenDim * Dim));
            yield return SafeTensorsEntry.FromFloat32(p + "mlp.down_proj.weight", [Dim, HiddenDim], Layer(W2, l, Dim * HiddenDim));
        }
        yield return SafeTensorsEntry.FromFloat32("model.norm.weight", [Dim], RmsFinal);
        yield return SafeTensorsEntry.FromFloat32("lm_head.weight", [VocabSize, Dim], Classifier ?? TokenEmbedding);
    }

    private static ReadOnlySpan<float> Layer(float[] stacked, int layer, int size) => stacked.AsSpan(layer * size, size);

    /// <summary>The HF LlamaForCausalLM config.json of the model.</summary>
    public JsonObject HuggingFaceConfig() => new()
    {
        ["architectures"] = new JsonArray("LlamaForCausalLM"),
        ["model_type"] = "llama",
        ["hidden_size"] = Dim,
        ["intermediate_size"] = HiddenDim,
        ["num_hidden_layers"] = Layers,
        ["num_attention_heads"] = Heads,
        ["num_key_value_heads"] = KvHeads,
        ["hidden_act"] = "silu",
        ["rms_norm_eps"] = 1e-5,
        ["rope_theta"] = 10000.0,
        ["max_position_embeddings"] = SeqLen,
        ["vocab_size"] = VocabSize,
        ["tie_word_embeddings"] = SharedClassifier,
        ["bos_token_id"] = 1,
        ["eos_token_id"] = 2,
        ["torch_dtype"] = "float32",
    };

    /// <summary>
    /// Writes model.safetensors and config.json into <paramref name="dir"/>, each as an <see cref="OutputFile"/>
    /// (replacing regular files of those names, never the source checkpoint).
    /// </summary>
    public void WriteHuggingFace(string dir)
    {
        Directory.CreateDirectory(dir);
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["source"] = "llama2.c " + Path.GetFileName(SourcePath) };
        OutputFile.Write(Path.Combine(dir, SafeTensorsCheckpoint.SingleFileName), "output",
            stream => SafeTensorsWriter.Write(stream, HuggingFaceTensors(), metadata), [SourcePath]);
        byte[] json = System.Text.Encoding.UTF8.GetBytes(HuggingFaceConfig().ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        OutputFile.Write(Path.Combine(dir, "config.json"), "output", stream => stream.Write(json), [SourcePath]);
    }
}
