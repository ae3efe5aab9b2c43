using System.Text;
using System.Text.Json.Nodes;
using DiffuSharp.IO;
using DiffuSharp.Models;

namespace DiffuSharp.Tests;

/// <summary>
/// config.json files that are hostile rather than merely wrong: each is a <see cref="ConfigException"/> naming
/// the file, and through the CLI exit code 2 with one line on stderr.
/// </summary>
public sealed class ConfigTests
{
    string dir = null!;

    [SetUp]
    public void SetUp() => dir = Directory.CreateTempSubdirectory("diffu-config-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(dir, recursive: true);

    const string Gpt2Json = """{"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 8, "vocab_size": 512}""";

    const string LlamaJson = """
        {"model_type": "llama", "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
         "num_attention_heads": 8, "num_key_value_heads": 4, "max_position_embeddings": 512, "vocab_size": 512}
        """;

    /// <summary>A GPT-2 or LLaMA config.json of a tiny model with the fields of <paramref name="extra"/> added or replaced.</summary>
    string WriteModelConfig(string family, string extra)
    {
        var config = JsonNode.Parse(family == "llama" ? LlamaJson : Gpt2Json)!.AsObject();
        foreach (var (key, value) in JsonNode.Parse("{" + extra + "}")!.AsObject()) config[key] = value?.DeepClone();
        return Write(config.ToJsonString());
    }

    /// <summary>Loads a GPT-2 or LLaMA config.json and returns its parameter count.</summary>
    static long LoadModelConfig(string family, string path) =>
        family == "llama" ? LlamaConfig.Load(path).ParameterCount : Gpt2Config.Load(path).ParameterCount;

    string Write(string json) => Write(Encoding.UTF8.GetBytes(json));

    string Write(byte[] bytes)
    {
        string path = Path.Combine(dir, "config.json");
        File.WriteAllBytes(path, bytes);
        return path;
    }

    static ConfigException Refused(string path, string problem)
    {
        var e = Assert.Throws<ConfigException>(() => JsonConfig.Load(path))!;
        Assert.That(e.Path, Is.EqualTo(path));
        Assert.That(e.Message, Does.StartWith(path + ": ").And.Contain(problem));
        return e;
    }

    /// <summary>`diffu info` on the folder holding config.json: exit code 2 and one line that names the file.</summary>
    void ExpectCliError(string problem)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = DiffuSharp.Cli.Cli.Run(["info", dir], stdout, stderr);
        string err = stderr.ToString();
        Assert.That(code, Is.EqualTo(2), err);
        Assert.That(err.TrimEnd().Split('\n'), Has.Length.EqualTo(1), err);
        Assert.That(err, Does.StartWith("error: ").And.Contain("config.json").And.Contain(problem));
    }

    [Test]
    public void DirectoryIsRefused()
    {
        string path = Path.Combine(dir, "config.json");
        Directory.CreateDirectory(path);
        Refused(path, "is a directory");
    }

    /// <summary>/dev/zero reports length 0 and never ends: refused before it is read, not read until memory runs out.</summary>
    [Test]
    public void CharacterDeviceIsRefused()
    {
        Assume.That(File.Exists("/dev/zero"), "needs /dev/zero");
        string path = Path.Combine(dir, "config.json");
        File.CreateSymbolicLink(path, "/dev/zero");
        Refused(path, "not a regular file");
        ExpectCliError("not a regular file");
    }

    [Test]
    public void OversizedFileIsRefused()
    {
        string path = Write(new string(' ', (int)JsonConfig.MaxBytes) + "{}");
        Refused(path, "larger than the");
    }

    /// <summary>JsonNode would accept these and throw an ArgumentException when a field is first read.</summary>
    [TestCase("""{"n_embd": 64, "n_embd": 64}""", "\"n_embd\"")]
    [TestCase("""{"a": {"b": 1, "b": 2}}""", "\"b\"")]
    [TestCase("""{"a": [{"c": 1}, {"c": 1, "c": 2}]}""", "\"c\"")]
    [TestCase("""{"\n": 1, "\u000a": 2}""", "\"\\n\"")]
    public void KeyWrittenTwiceIsRefusedAtAnyDepth(string json, string key) => Refused(Write(json), $"key {key} is written twice");

    [Test]
    public void SameKeyInDifferentObjectsIsAccepted() =>
        Assert.That(JsonConfig.Load(Write("""{"a": {"x": 1}, "b": {"x": 1}, "x": 2}""")).Int("x", 0), Is.EqualTo(2));

    [Test]
    public void KeyWrittenTwiceExitsWithTwo()
    {
        Write("""{"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 8, "vocab_size": 512, "n_layer": 3}""");
        ExpectCliError("key \"n_layer\" is written twice");
    }

    [Test]
    public void InvalidUtf8IsRefused() =>
        Refused(Write([.. "{\"model_type\": \"gp"u8, 0xFF, .. "\"}"u8]), "invalid text in a JSON string");

    /// <summary>Half a surrogate pair parses, and JsonNode would throw an InvalidOperationException when the field is read.</summary>
    [Test]
    public void LoneSurrogateIsRefused() => Refused(Write("""{"model_type": "\ud800"}"""), "invalid text in a JSON string");

    [Test]
    public void DeepNestingIsRefused() => Refused(Write(new string('[', 1000) + new string(']', 1000)), "invalid JSON");

    /// <summary>An epsilon of 1e308 was accepted and gave meaningless logits; 1e-50 rounds to a float32 0.</summary>
    [TestCase("gpt2", "layer_norm_epsilon", "1e308", "(0, 1)")]
    [TestCase("gpt2", "layer_norm_epsilon", "1", "(0, 1)")]
    [TestCase("gpt2", "layer_norm_epsilon", "0", "(0, 1)")]
    [TestCase("gpt2", "layer_norm_epsilon", "-1e-5", "(0, 1)")]
    [TestCase("gpt2", "layer_norm_epsilon", "1e-50", "(0, 1)")]
    [TestCase("llama", "rms_norm_eps", "1e308", "(0, 1)")]
    [TestCase("llama", "rms_norm_eps", "2", "(0, 1)")]
    [TestCase("llama", "rms_norm_eps", "0", "(0, 1)")]
    [TestCase("llama", "rope_theta", "1e300", "(1, Infinity)")]
    [TestCase("llama", "rope_theta", "1", "(1, Infinity)")]
    [TestCase("llama", "rope_theta", "0.5", "(1, Infinity)")]
    [TestCase("llama", "rope_theta", "-10000", "(1, Infinity)")]
    public void NormEpsilonAndRopeThetaOutsideTheirRangeAreRefused(string family, string field, string value, string range)
    {
        string path = WriteModelConfig(family, $"\"{field}\": {value}");
        var e = Assert.Throws<ConfigException>(() => LoadModelConfig(family, path))!;
        Assert.That(e.Message, Does.StartWith(path + ": ").And.Contain($"field \"{field}\" must be in {range} as a float32, got "));
        ExpectCliError(field);
    }

    [TestCase("gpt2", "\"layer_norm_epsilon\": 1e-12")]
    [TestCase("llama", "\"rms_norm_eps\": 1e-5, \"rope_theta\": 500000")]
    public void UsualEpsilonsAndRopeThetasAreAccepted(string family, string extra) =>
        Assert.That(() => LoadModelConfig(family, WriteModelConfig(family, extra)), Throws.Nothing);

    /// <summary>
    /// Sizes the models compute in ints, or hold in one array, from these fields used to overflow inside the
    /// model (an OverflowException or a negative dimension); they are refused at load, naming the fields.
    /// </summary>
    [TestCase("gpt2", "\"n_embd\": 536870912", "4 * n_embd = 2147483648 overflows")]
    [TestCase("gpt2", "\"n_embd\": 65536", "mlp.c_fc.weight would hold n_embd * 4 * n_embd = 17179869184 elements")]
    [TestCase("gpt2", "\"vocab_size\": 2147483647", "transformer.wte.weight would hold vocab_size * n_embd")]
    [TestCase("gpt2", "\"n_positions\": 2147483647", "transformer.wpe.weight would hold n_positions * n_embd")]
    [TestCase("gpt2", "\"n_layer\": 2147483647", "2 * n_layer = 4294967294 overflows")]
    [TestCase("llama", "\"vocab_size\": 2147483647", "model.embed_tokens.weight would hold vocab_size * hidden_size")]
    [TestCase("llama", "\"hidden_size\": 65536", "self_attn.q_proj.weight would hold hidden_size * hidden_size = 4294967296 elements")]
    [TestCase("llama", "\"intermediate_size\": 2147483647", "mlp.gate_proj.weight would hold intermediate_size * hidden_size")]
    [TestCase("llama", "\"hidden_size\": 46336, \"intermediate_size\": 46336, \"num_hidden_layers\": 2000000000",
        "num_hidden_layers 2000000000 is too large: the parameter count")]
    public void SizesThatOverflowAreRefusedAtLoad(string family, string extra, string problem)
    {
        string path = WriteModelConfig(family, extra);
        var e = Assert.Throws<ConfigException>(() => LoadModelConfig(family, path))!;
        Assert.That(e.Message, Does.StartWith(path + ": ").And.Contain(problem));
        ExpectCliError(problem);
    }

    /// <summary>Sizes just inside the bounds are accepted (they bound arithmetic, not memory), and the parameter count does not wrap.</summary>
    [TestCase("gpt2", "\"n_embd\": 23168, \"vocab_size\": 92690, \"n_layer\": 1073741823")]
    [TestCase("llama", "\"hidden_size\": 46336, \"intermediate_size\": 46336, \"vocab_size\": 46336, \"num_hidden_layers\": 500000000")]
    public void LargeSizesThatFitAreAccepted(string family, string extra) =>
        Assert.That(LoadModelConfig(family, WriteModelConfig(family, extra)), Is.GreaterThan(1_000_000_000_000_000_000L));

    [Test]
    public void ByteOrderMarkIsAccepted()
    {
        string path = Write([.. Encoding.UTF8.Preamble, .. Encoding.UTF8.GetBytes("{\"model_type\": \"gpt2\"}")]);
        Assert.That(JsonConfig.Load(path).String("model_type"), Is.EqualTo("gpt2"));
    }
}
