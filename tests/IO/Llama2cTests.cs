using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using DiffuSharp.IO;

namespace DiffuSharp.Tests;

/// <summary>
/// The llama2.c checkpoint reader and the llama2c → HF LLaMA converter on stories260K: config, tensor names
/// and shapes, the q/k row permutation (checked by rotating vectors both ways), untouched bytes of the other
/// weights (read here from the .bin at offsets computed independently), malformed files and the CLI.
/// </summary>
public class Llama2cTests
{
    private const int Dim = 64, Hidden = 172, Layers = 5, Heads = 8, KvHeads = 4, Vocab = 512, Seq = 512;
    private const int HeadSize = Dim / Heads, KvDim = KvHeads * HeadSize;

    private static string Dir => Path.Combine(TestUtil.SharedData, "llama2c");
    private static string ModelBin => Path.Combine(Dir, "stories260K.bin");
    private static string Tok512 => Path.Combine(Dir, "tok512.bin");

    private static readonly Lazy<Llama2cCheckpoint> Stories = new(() => Llama2cCheckpoint.Read(ModelBin));

    private string _dir = "";

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("diffu-llama2c-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    /// <summary>The .bin's tensors in file order with their float counts, as the format description lists them.</summary>
    private static readonly (string Name, long Floats)[] Layout =
    [
        ("token_embedding", (long)Vocab * Dim), ("rms_att", Layers * Dim), ("wq", Layers * Dim * Dim),
        ("wk", Layers * KvDim * Dim), ("wv", Layers * KvDim * Dim), ("wo", Layers * Dim * Dim), ("rms_ffn", Layers * Dim),
        ("w1", Layers * Hidden * Dim), ("w2", Layers * Dim * Hidden), ("w3", Layers * Hidden * Dim), ("rms_final", Dim),
        ("freq_cis_real", Seq * HeadSize / 2), ("freq_cis_imag", Seq * HeadSize / 2),
    ];

    /// <summary>Layer <paramref name="layer"/>'s slice of a stacked tensor, straight from the file's bytes.</summary>
    private static float[] RawSlice(string tensor, int layer, int perLayer)
    {
        long offset = 28;
        foreach (var (name, floats) in Layout)
        {
            if (name == tensor) break;
            offset += floats * 4;
        }
        byte[] bytes = File.ReadAllBytes(ModelBin);
        return MemoryMarshal.Cast<byte, float>(bytes.AsSpan((int)(offset + 4L * layer * perLayer), 4 * perLayer)).ToArray();
    }

    [Test]
    public void ReadsStories260KHeader()
    {
        var c = Stories.Value;
        Assert.That((c.Dim, c.HiddenDim, c.Layers, c.Heads, c.KvHeads, c.VocabSize, c.SeqLen), Is.EqualTo((Dim, Hidden, Layers, Heads, KvHeads, Vocab, Seq)));
        Assert.That(c.SharedClassifier, Is.True);
        Assert.That(c.Classifier, Is.Null);
        Assert.That(c.ExpectedFileBytes, Is.EqualTo(new FileInfo(ModelBin).Length));
        Assert.That(28 + 4 * Layout.Sum(l => l.Floats), Is.EqualTo(new FileInfo(ModelBin).Length));
    }

    [Test]
    public void WritesHfConfigAndTensors()
    {
        Stories.Value.WriteHuggingFace(_dir);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "config.json")))!.AsObject();
        Assert.That((string?)config["model_type"], Is.EqualTo("llama"));
        Assert.That(config["architectures"]!.AsArray().Select(a => (string?)a), Is.EqualTo(new[] { "LlamaForCausalLM" }));
        Assert.That((int)config["hidden_size"]!, Is.EqualTo(Dim));
        Assert.That((int)config["intermediate_size"]!, Is.EqualTo(Hidden));
        Assert.That((int)config["num_hidden_layers"]!, Is.EqualTo(Layers));
        Assert.That((int)config["num_attention_heads"]!, Is.EqualTo(Heads));
        Assert.That((int)config["num_key_value_heads"]!, Is.EqualTo(KvHeads));
        Assert.That((double)config["rms_norm_eps"]!, Is.EqualTo(1e-5));
        Assert.That((double)config["rope_theta"]!, Is.EqualTo(10000.0));
        Assert.That((int)config["max_position_embeddings"]!, Is.EqualTo(Seq));
        Assert.That((int)config["vocab_size"]!, Is.EqualTo(Vocab));
        Assert.That((bool)config["tie_word_embeddings"]!, Is.True);
        Assert.That((int)config["bos_token_id"]!, Is.EqualTo(1));
        Assert.That((int)config["eos_token_id"]!, Is.EqualTo(2));

        var expected = new Dictionary<string, int[]>
        {
            ["model.embed_tokens.weight"] = [Vocab, Dim],
            ["model.norm.weight"] = [Dim],
            ["lm_head.weight"] = [Vocab, Dim],
        };
        for (int l = 0; l < Layers; l++)
        {
            string p = $"model.layers.{l}.";
            expected[p + "input_layernorm.weight"] = [Dim];
            expected[p + "self_attn.q_proj.weight"] = [Dim, Dim];
            expected[p + "self_attn.k_proj.weight"] = [KvDim, Dim];
            expected[p + "self_attn.v_proj.weight"] = [KvDim, Dim];
            expected[p + "self_attn.o_proj.weight"] = [Dim, Dim];
            expected[p + "post_attention_layernorm.weight"] = [Dim];
            expected[p + "mlp.gate_proj.weight"] = [Hidden, Dim];
            expected[p + "mlp.up_proj.weight"] = [Hidden, Dim];
            expected[p + "mlp.down_proj.weight"] = [Dim, Hidden];
        }
        using var file = SafeTensorsFile.Open(Path.Combine(_dir, "model.safetensors"));
        Assert.That(file.Tensors.Select(t => t.Name), Is.EquivalentTo(expected.Keys));
        foreach (var t in file.Tensors)
        {
            Assert.That(t.Shape, Is.EqualTo(expected[t.Name]), t.Name);
            Assert.That(t.DType, Is.EqualTo(SafeTensorsDType.F32), t.Name);
        }
        Assert.That(file.ReadFloat32("lm_head.weight"), Is.EqualTo(file.ReadFloat32("model.embed_tokens.weight")));
    }

    [Test]
    public void UnpermutedWeightsAreTheFilesBytes()
    {
        Stories.Value.WriteHuggingFace(_dir);
        using var file = SafeTensorsFile.Open(Path.Combine(_dir, "model.safetensors"));
        Assert.That(file.ReadFloat32("model.embed_tokens.weight"), Is.EqualTo(RawSlice("token_embedding", 0, Vocab * Dim)));
        Assert.That(file.ReadFloat32("model.norm.weight"), Is.EqualTo(RawSlice("rms_final", 0, Dim)));
        for (int l = 0; l < Layers; l++)
        {
            string p = $"model.layers.{l}.";
            Assert.That(file.ReadFloat32(p + "input_layernorm.weight"), Is.EqualTo(RawSlice("rms_att", l, Dim)));
            Assert.That(file.ReadFloat32(p + "self_attn.v_proj.weight"), Is.EqualTo(RawSlice("wv", l, KvDim * Dim)));
            Assert.That(file.ReadFloat32(p + "self_attn.o_proj.weight"), Is.EqualTo(RawSlice("wo", l, Dim * Dim)));
            Assert.That(file.ReadFloat32(p + "post_attention_layernorm.weight"), Is.EqualTo(RawSlice("rms_ffn", l, Dim)));
            Assert.That(file.ReadFloat32(p + "mlp.gate_proj.weight"), Is.EqualTo(RawSlice("w1", l, Hidden * Dim)));
            Assert.That(file.ReadFloat32(p + "mlp.down_proj.weight"), Is.EqualTo(RawSlice("w2", l, Dim * Hidden)));
            Assert.That(file.ReadFloat32(p + "mlp.up_proj.weight"), Is.EqualTo(RawSlice("w3", l, Hidden * Dim)));
        }
    }

    [Test]
    public void QkRowsArePermutedPerHead()
    {
        Stories.Value.WriteHuggingFace(_dir);
        using var file = SafeTensorsFile.Open(Path.Combine(_dir, "model.safetensors"));
        for (int l = 0; l < Layers; l++)
        {
            foreach (var (proj, raw, heads) in new[] { ("q_proj", "wq", Heads), ("k_proj", "wk", KvHeads) })
            {
                var old = RawSlice(raw, l, heads * HeadSize * Dim);
                var converted = file.ReadFloat32($"model.layers.{l}.self_attn.{proj}.weight");
                for (int h = 0; h < heads; h++)
                {
                    for (int j = 0; j < HeadSize / 2; j++)
                    {
                        Assert.That(Row(converted, h * HeadSize + j), Is.EqualTo(Row(old, h * HeadSize + 2 * j)));
                        Assert.That(Row(converted, h * HeadSize + HeadSize / 2 + j), Is.EqualTo(Row(old, h * HeadSize + 2 * j + 1)));
                    }
                }
            }
        }
    }

    private static float[] Row(float[] w, int row) => w.AsSpan(row * Dim, Dim).ToArray();

    private static double[] MatVec(float[] w, int rows, double[] x)
    {
        var y = new double[rows];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < x.Length; c++) y[r] += w[r * x.Length + c] * x[c];
        return y;
    }

    private static double Frequency(int j) => Math.Pow(10000.0, -2.0 * j / HeadSize);

    /// <summary>llama2.c / Meta RoPE: rotates the pairs (2j, 2j+1) of each head by pos·θ_j.</summary>
    private static double[] RopeInterleaved(double[] v, int pos)
    {
        var r = (double[])v.Clone();
        for (int h = 0; h < v.Length / HeadSize; h++)
            for (int j = 0; j < HeadSize / 2; j++)
            {
                double a = pos * Frequency(j), x = v[h * HeadSize + 2 * j], y = v[h * HeadSize + 2 * j + 1];
                r[h * HeadSize + 2 * j] = x * Math.Cos(a) - y * Math.Sin(a);
                r[h * HeadSize + 2 * j + 1] = x * Math.Sin(a) + y * Math.Cos(a);
            }
        return r;
    }

    /// <summary>HF rotate-half RoPE: rotates the pairs (j, j + half) of each head by pos·θ_j.</summary>
    private static double[] RopeRotateHalf(double[] v, int pos)
    {
        var r = (double[])v.Clone();
        int half = HeadSize / 2;
        for (int h = 0; h < v.Length / HeadSize; h++)
            for (int j = 0; j < half; j++)
            {
                double a = pos * Frequency(j), x = v[h * HeadSize + j], y = v[h * HeadSize + half + j];
                r[h * HeadSize + j] = x * Math.Cos(a) - y * Math.Sin(a);
                r[h * HeadSize + half + j] = x * Math.Sin(a) + y * Math.Cos(a);
            }
        return r;
    }

    [Test]
    public void RotateHalfOnConvertedQkEqualsInterleavedOnOriginal()
    {
        var rng = TestUtil.NewRandom();
        var c = Stories.Value;
        // The file's own RoPE table fixes θ_j = 10000^(-2j/head_size), the frequencies both rotations use here.
        var cosTable = RawSlice("freq_cis_real", 0, Seq * HeadSize / 2);
        for (int p = 0; p < Seq; p += 37)
            for (int j = 0; j < HeadSize / 2; j++)
                Assert.That(cosTable[p * HeadSize / 2 + j], Is.EqualTo(Math.Cos(p * Frequency(j))).Within(1e-4));

        var tensors = c.HuggingFaceTensors().ToDictionary(t => t.Name);
        for (int l = 0; l < Layers; l++)
        {
            var wq = c.Wq.AsSpan(l * Dim * Dim, Dim * Dim).ToArray();
            var wk = c.Wk.AsSpan(l * KvDim * Dim, KvDim * Dim).ToArray();
            var wqHf = MemoryMarshal.Cast<byte, float>(tensors[$"model.layers.{l}.self_attn.q_proj.weight"].ToBytes()).ToArray();
            var wkHf = MemoryMarshal.Cast<byte, float>(tensors[$"model.layers.{l}.self_attn.k_proj.weight"].ToBytes()).ToArray();
            var x = TestUtil.ToDouble(TestUtil.RandomFloats(rng, Dim));
            var y = TestUtil.ToDouble(TestUtil.RandomFloats(rng, Dim));
            int posQ = rng.Next(Seq), posK = rng.Next(Seq);
            var q = RopeInterleaved(MatVec(wq, Dim, x), posQ);
            var qHf = RopeRotateHalf(MatVec(wqHf, Dim, x), posQ);
            for (int h = 0; h < Heads; h++)
                for (int j = 0; j < HeadSize / 2; j++)
                {
                    Assert.That(qHf[h * HeadSize + j], Is.EqualTo(q[h * HeadSize + 2 * j]).Within(1e-9));
                    Assert.That(qHf[h * HeadSize + HeadSize / 2 + j], Is.EqualTo(q[h * HeadSize + 2 * j + 1]).Within(1e-9));
                }
            // Attention scores q·k (query head h, its kv head h / (heads / kv_heads)) are the same both ways.
            var k = RopeInterleaved(MatVec(wk, KvDim, y), posK);
            var kHf = RopeRotateHalf(MatVec(wkHf, KvDim, y), posK);
            for (int h = 0; h < Heads; h++)
            {
                int kv = h / (Heads / KvHeads);
                double score = 0, scoreHf = 0;
                for (int i = 0; i < HeadSize; i++)
                {
                    score += q[h * HeadSize + i] * k[kv * HeadSize + i];
                    scoreHf += qHf[h * HeadSize + i] * kHf[kv * HeadSize + i];
                }
                Assert.That(scoreHf, Is.EqualTo(score).Within(1e-9 * (1 + Math.Abs(score))));
            }
        }
    }

    private string WriteVariant(string name, Action<byte[]> edit, int? length = null)
    {
        byte[] bytes = File.ReadAllBytes(ModelBin);
        if (length is { } n) bytes = bytes[..n];
        edit(bytes);
        string path = Path.Combine(_dir, name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    [Test]
    public void MalformedFilesAreRejectedNamingTheFile()
    {
        long size = new FileInfo(ModelBin).Length;
        string truncated = WriteVariant("truncated.bin", _ => { }, (int)size - 4);
        Assert.That(() => Llama2cCheckpoint.Read(truncated), Throws.TypeOf<DiffuException>().With.Message.Contains("truncated.bin").And.Message.Contains("truncated"));
        string headerOnly = WriteVariant("short.bin", _ => { }, 20);
        Assert.That(() => Llama2cCheckpoint.Read(headerOnly), Throws.TypeOf<DiffuException>().With.Message.Contains("short.bin").And.Message.Contains("header"));
        string zeroHeads = WriteVariant("zeroheads.bin", b => BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(12), 0));
        Assert.That(() => Llama2cCheckpoint.Read(zeroHeads), Throws.TypeOf<DiffuException>().With.Message.Contains("zeroheads.bin").And.Message.Contains("n_heads"));
        string badKv = WriteVariant("badkv.bin", b => BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(16), 3));
        Assert.That(() => Llama2cCheckpoint.Read(badKv), Throws.TypeOf<DiffuException>().With.Message.Contains("n_kv_heads"));
        string layersOff = WriteVariant("layers.bin", b => BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(8), 6));
        Assert.That(() => Llama2cCheckpoint.Read(layersOff), Throws.TypeOf<DiffuException>().With.Message.Contains("layers.bin").And.Message.Contains("needs"));
        // A negative vocab_size announces a separate classifier, which this file does not have.
        string unshared = WriteVariant("unshared.bin", b => BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(20), -Vocab));
        Assert.That(() => Llama2cCheckpoint.Read(unshared), Throws.TypeOf<DiffuException>().With.Message.Contains("truncated"));
        Assert.That(() => Llama2cCheckpoint.Read(Path.Combine(_dir, "missing.bin")), Throws.TypeOf<DiffuException>().With.Message.Contains("not found"));
    }

    /// <summary>
    /// Header values whose tensors cannot be held in an array. The first one's sizes wrap round to 0, so the
    /// 28-byte file matched its expected length and the error came from deep in the reader without the file name.
    /// </summary>
    [TestCase(1 << 30, int.MaxValue, int.MaxValue, 1, 1, int.MaxValue, int.MaxValue, "token_embedding")]
    [TestCase(65536, 64, 1, 1, 1, 1, 8, "wq")]
    [TestCase(64, int.MaxValue, 1, 1, 1, 32, 8, "w1")]
    [TestCase(64, 64, 1, 1, 1, -int.MaxValue, 8, "token_embedding")]
    public void HeaderWithTensorsTooLargeForAnArrayIsRefused(int dim, int hidden, int layers, int heads, int kvHeads, int vocab, int seqLen, string tensor)
    {
        string path = Path.Combine(_dir, "huge.bin");
        var header = new byte[Llama2cCheckpoint.HeaderBytes];
        int[] values = [dim, hidden, layers, heads, kvHeads, vocab, seqLen];
        for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(4 * i), values[i]);
        File.WriteAllBytes(path, header);
        Assert.That(() => Llama2cCheckpoint.Read(path),
            Throws.TypeOf<DiffuException>().With.Message.StartsWith(path + ": bad llama2.c header: " + tensor).And.Message.Contains("more than one array can hold"));
    }

    /// <summary>/dev/zero reports length 0 and never ends: as a checkpoint or a vocabulary it is refused, not read forever.</summary>
    [Test]
    public void CharacterDeviceAsCheckpointOrTokenizerIsRefused()
    {
        Assume.That(File.Exists("/dev/zero"), "needs /dev/zero");
        string model = Path.Combine(_dir, "zero.bin"), tokenizer = Path.Combine(_dir, "zero-tok.bin"), outDir = Path.Combine(_dir, "out");
        File.CreateSymbolicLink(model, "/dev/zero");
        File.CreateSymbolicLink(tokenizer, "/dev/zero");
        foreach (var args in new[] { new[] { "convert", "llama2c", model, Tok512, outDir }, new[] { "convert", "llama2c", ModelBin, tokenizer, outDir } })
        {
            var (code, _, err) = Cli(args);
            Assert.That(code, Is.EqualTo(2), err);
            Assert.That(err.TrimEnd().Split('\n'), Has.Length.EqualTo(1), err);
            Assert.That(err, Does.Contain("zero").And.Contain("not a regular file"));
        }
    }

    [Test]
    public void UnsharedClassifierBecomesLmHead()
    {
        var rng = TestUtil.NewRandom();
        var classifier = TestUtil.RandomFloats(rng, Vocab * Dim);
        byte[] original = File.ReadAllBytes(ModelBin);
        byte[] bytes = [.. original, .. MemoryMarshal.AsBytes(classifier.AsSpan()).ToArray()];
        BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(20), -Vocab);
        string path = Path.Combine(_dir, "unshared.bin");
        File.WriteAllBytes(path, bytes);
        var c = Llama2cCheckpoint.Read(path);
        Assert.That(c.SharedClassifier, Is.False);
        string outDir = Path.Combine(_dir, "hf");
        c.WriteHuggingFace(outDir);
        using var file = SafeTensorsFile.Open(Path.Combine(outDir, "model.safetensors"));
        Assert.That(file.ReadFloat32("lm_head.weight"), Is.EqualTo(classifier));
        Assert.That(file.ReadFloat32("model.embed_tokens.weight"), Is.EqualTo(Stories.Value.TokenEmbedding));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "config.json")))!;
        Assert.That((bool)config["tie_word_embeddings"]!, Is.False);
        Assert.That((int)config["vocab_size"]!, Is.EqualTo(Vocab));
    }

    private static (int Code, string Out, string Err) Cli(params string[] args) => DiffuSharp.Tests.CliTests.CliRun.Run(args);

    [Test]
    public void CliConvertsAndCopiesTheTokenizer()
    {
        string outDir = Path.Combine(_dir, "stories260K-hf");
        var (code, output, err) = Cli("convert", "llama2c", ModelBin, Tok512, outDir);
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(output, Does.Contain("dim 64").And.Contain("layers 5").And.Contain("tokenizer.bin"));
        Assert.That(Directory.GetFiles(outDir).Select(Path.GetFileName), Is.EquivalentTo(new[] { "model.safetensors", "config.json", "tokenizer.bin" }));
        Assert.That(File.ReadAllBytes(Path.Combine(outDir, "tokenizer.bin")), Is.EqualTo(File.ReadAllBytes(Tok512)));
        using (var file = SafeTensorsFile.Open(Path.Combine(outDir, "model.safetensors")))
            Assert.That(file.Tensors, Has.Count.EqualTo(3 + 9 * Layers));
        Assert.That(Text.LlamaTokenizers.FromFile(Path.Combine(outDir, "tokenizer.bin")).Encode("Once upon a time"), Is.EqualTo(new[] { 403, 407, 261, 378 }));

        var before = Directory.GetFiles(outDir).ToDictionary(f => f, File.GetLastWriteTimeUtc);
        var (again, _, againErr) = Cli("convert", "llama2c", ModelBin, Tok512, outDir);
        Assert.That(again, Is.EqualTo(2), "a folder that holds a model is not replaced silently");
        Assert.That(againErr, Does.Contain("--overwrite").And.Contain(outDir));
        Assert.That(Directory.GetFiles(outDir).ToDictionary(f => f, File.GetLastWriteTimeUtc), Is.EquivalentTo(before));

        (again, _, againErr) = Cli("convert", "llama2c", ModelBin, Tok512, outDir, "--overwrite");
        Assert.That(again, Is.EqualTo(0), againErr);
        Assert.That(Directory.GetFiles(outDir), Has.Length.EqualTo(3), "no temporary files are left behind");
    }

    /// <summary>Everything is checked before the first file is written: a target that is not a regular file, an
    /// OUT_DIR that is not a folder, an output that is an input.</summary>
    [Test]
    public void CliChecksEveryOutputBeforeWritingAny()
    {
        string outDir = Directory.CreateDirectory(Path.Combine(_dir, "half")).FullName;
        Directory.CreateDirectory(Path.Combine(outDir, "tokenizer.bin"));
        var (code, _, err) = Cli("convert", "llama2c", ModelBin, Tok512, outDir, "--overwrite");
        Assert.That(code, Is.EqualTo(2), err);
        Assert.That(err, Does.Contain("tokenizer.bin"));
        Assert.That(Directory.GetFiles(outDir), Is.Empty, "model.safetensors and config.json are not written either");

        foreach (var notAFolder in new[] { "/dev/null", ModelBin })
        {
            (code, _, err) = Cli("convert", "llama2c", ModelBin, Tok512, notAFolder, "--overwrite");
            Assert.That(code, Is.EqualTo(2), err);
            Assert.That(err, Does.Contain("not a folder"));
        }

        string inPlace = Directory.CreateDirectory(Path.Combine(_dir, "in-place")).FullName;
        string model = Path.Combine(inPlace, "config.json");
        File.Copy(ModelBin, model);
        long bytes = new FileInfo(model).Length;
        (code, _, err) = Cli("convert", "llama2c", model, Tok512, inPlace, "--overwrite");
        Assert.That(code, Is.EqualTo(2), err);
        Assert.That(err, Does.Contain("same file as the input"));
        Assert.That(new FileInfo(model).Length, Is.EqualTo(bytes));
    }

    [Test]
    public void CliExitsWithTwoOnBadInput()
    {
        string outDir = Path.Combine(_dir, "out");
        foreach (var args in new[]
        {
            new[] { "convert", "llama2c", Path.Combine(_dir, "missing.bin"), Tok512, outDir },
            new[] { "convert", "llama2c", ModelBin, Path.Combine(_dir, "missing-tok.bin"), outDir },
            new[] { "convert", "llama2c", ModelBin, Path.Combine(Dir, "tokenizer.bin"), outDir },
            new[] { "convert", "llama2c", WriteVariant("cut.bin", _ => { }, 1000), Tok512, outDir },
        })
        {
            var (code, output, err) = Cli(args);
            Assert.That(code, Is.EqualTo(2), string.Join(" ", args));
            Assert.That(err.TrimEnd().Split('\n'), Has.Length.EqualTo(1), err);
            Assert.That(err, Does.StartWith("error: "));
            Assert.That(Directory.Exists(outDir), Is.False, "nothing is written on bad input");
        }
    }
}
