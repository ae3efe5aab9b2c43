using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Tests.Models;

/// <summary>Weight names, config.json validation and bad-input errors of the GPT-2 loader (on the CPU).</summary>
public sealed class Gpt2LoadingTests
{
    string temp = null!;

    [SetUp]
    public void SetUp() => temp = Directory.CreateTempSubdirectory("diffu-gpt2-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(temp, recursive: true);

    static string Fixture => Gpt2FixtureTests.FixtureDir;

    /// <summary>Copies the fixture with every tensor renamed by <paramref name="rename"/> (null drops it).</summary>
    void WriteRenamed(Func<string, string?> rename, string? configText = null)
    {
        using var source = SafeTensorsFile.Open(Path.Combine(Fixture, "model.safetensors"));
        var entries = new List<SafeTensorsEntry>();
        foreach (var t in source.Tensors)
            if (rename(t.Name) is string name)
                entries.Add(SafeTensorsEntry.FromFloat32(name, t.Shape, source.ReadFloat32(t.Name)));
        SafeTensorsWriter.Write(Path.Combine(temp, "model.safetensors"), entries);
        File.WriteAllText(Path.Combine(temp, "config.json"), configText ?? File.ReadAllText(Path.Combine(Fixture, "config.json")));
    }

    static float[] Logits(string dir, int[] ids)
    {
        using var device = new CpuDevice();
        using var model = Gpt2Model.Load(dir, device);
        using var act = model.CreateActivations(1, ids.Length);
        model.Forward(ids, act, AttentionMaskMode.Bidirectional);
        return device.ToArray(act.Logits!);
    }

    [Test]
    public void DiffuGptNamesLoadTheSameWeights()
    {
        WriteRenamed(n => n == "transformer.wte.weight" ? "embed_tokens.weight" : n.Replace("transformer.", "denoise_model."));
        int[] ids = [5, 17, 300, 2, 511, 0];
        Assert.That(Logits(temp, ids), Is.EqualTo(Logits(Fixture, ids)));
    }

    [Test]
    public void BareGpt2ModelNamesLoad()
    {
        WriteRenamed(n => n.Replace("transformer.", ""));
        int[] ids = [1, 2, 3];
        Assert.That(Logits(temp, ids), Is.EqualTo(Logits(Fixture, ids)));
    }

    [Test]
    public void MissingTensorIsReportedByName()
    {
        WriteRenamed(n => n == "transformer.h.1.mlp.c_fc.bias" ? null : n);
        using var device = new CpuDevice();
        var e = Assert.Throws<DiffuException>(() => Gpt2Model.Load(temp, device))!;
        Assert.That(e.Message, Does.Contain("transformer.h.1.mlp.c_fc.bias"));
    }

    [Test]
    public void ShapeDisagreeingWithConfigIsReported()
    {
        var config = File.ReadAllText(Path.Combine(Fixture, "config.json")).Replace("\"n_positions\": 64", "\"n_positions\": 32");
        Assume.That(config, Does.Contain("\"n_positions\": 32"), "fixture config layout changed");
        WriteRenamed(n => n, config);
        using var device = new CpuDevice();
        var e = Assert.Throws<DiffuException>(() => Gpt2Model.Load(temp, device))!;
        Assert.That(e.Message, Does.Contain("wpe.weight").And.Contain("[32, 64]"));
    }

    [TestCase("{\"n_embd\": 64, \"n_layer\": 2, \"n_head\": 4, \"vocab_size\": 512}", "n_positions")]
    [TestCase("{\"n_embd\": 64, \"n_layer\": 2, \"n_head\": 5, \"n_positions\": 8, \"vocab_size\": 512}", "divisible")]
    [TestCase("{\"n_embd\": 64, \"n_layer\": 2, \"n_head\": 4, \"n_positions\": 8, \"vocab_size\": 512, \"activation_function\": \"relu\"}", "activation_function")]
    [TestCase("{\"n_embd\": \"64\", \"n_layer\": 2, \"n_head\": 4, \"n_positions\": 8, \"vocab_size\": 512}", "n_embd")]
    [TestCase("{\"model_type\": \"llama\", \"n_embd\": 64}", "model_type")]
    [TestCase("{\"n_embd\": 64, \"n_layer\": 0, \"n_head\": 4, \"n_positions\": 8, \"vocab_size\": 512}", "n_layer")]
    [TestCase("{\"n_embd\": 64, ", "invalid JSON")]
    [TestCase("[1, 2]", "JSON object")]
    public void BadConfigGetsAClearError(string json, string mentions)
    {
        var path = Path.Combine(temp, "config.json");
        File.WriteAllText(path, json);
        var e = Assert.Throws<ConfigException>(() => Gpt2Config.Load(path))!;
        Assert.That(e.Message, Does.Contain(mentions).And.Contain(path));
    }

    [Test]
    public void Gpt2SmallConfigParses()
    {
        var c = Gpt2Config.Load(Path.Combine(TestUtil.SharedData, "tokenizers", "gpt2", "gpt2_124M_config.json"));
        Assert.That(c, Is.EqualTo(new Gpt2Config(50257, 1024, 768, 12, 12, 1e-5f, true)));
        Assert.That(c.ParameterCount, Is.EqualTo(124_439_808), "GPT-2 small's well-known parameter count");
    }

    [Test]
    public void OutOfVocabularyIdsAndOverlongSequencesAreRejected()
    {
        using var device = new CpuDevice();
        using var model = Gpt2Model.Load(Fixture, device);
        using (var act = model.CreateActivations(1, 2))
            Assert.That(() => model.Forward([1, 512], act, AttentionMaskMode.Causal), Throws.TypeOf<DiffuException>().With.Message.Contains("512"));
        using (var act = model.CreateActivations(1, model.Config.Positions + 1))
            Assert.That(() => model.Forward(new int[model.Config.Positions + 1], act, AttentionMaskMode.Causal),
                Throws.TypeOf<DiffuException>().With.Message.Contains("positions"));
    }

    [Test]
    public void DecodingStepsReuseBuffersFromThePool()
    {
        int[] prompt = [128, 135, 233, 190, 447];
        using var device = new CpuDevice();
        using var model = Gpt2Model.Load(Fixture, device);
        var decoder = new ArDecoder(model);
        decoder.Generate(prompt, 12, temperature: 0.8f, seed: 1);
        long before = device.Pool.FreshAllocations;
        decoder.Generate(prompt, 12, temperature: 0.8f, seed: 2);
        Assert.That(device.Pool.FreshAllocations, Is.EqualTo(before), "a second generation of the same length must allocate nothing new");
    }
}
