using DiffuSharp.Diffusion;
using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Lora;
using DiffuSharp.Models;
using DiffuSharp.Runtime;
using DiffuSharp.Tests.Models;
using DiffuSharp.Training;

namespace DiffuSharp.Tests.Lora;

/// <summary>
/// A LoRA model against PyTorch (tests/reference/lora_reference.py → FIXTURE/lora): the PEFT folder written by the
/// reference loads (adapters on every projection, the token embedding as modules_to_save), gives PyTorch's logits,
/// loss and every adapter and embedding gradient, on every device; merging gives the same logits.
/// </summary>
[TestFixtureSource(nameof(Fixtures))]
public sealed class LoraModelTests(string fixture, string deviceName, double tolerance)
    : FixtureModelTests(Folder(fixture), "expected.safetensors", deviceName)
{
    static IEnumerable<TestFixtureData> Fixtures() =>
        from f in new[] { "gpt2-tiny", "llama-tiny" }
        from d in new[] { ("cpu", 1e-4), ("ilgpu-cpu", 1e-3), ("cuda", 1e-3) }
        select new TestFixtureData(f, d.Item1, d.Item2);

    static string Folder(string fixture) => Path.Combine(TestUtil.Fixtures, fixture, "lora");

    float[] Logits(ILanguageModel model)
    {
        var xt = expected.ReadInt32("xt");
        int[] shape = expected.Info("xt").Shape;
        using var result = model.Logits(xt, shape[0], shape[1], AttentionMaskMode.Bidirectional);
        return device.ToArray(result.Logits);
    }

    [Test]
    public void ThePeftFolderLoadsAsTheBaseWithItsAdapters()
    {
        var lora = (LoraModel)model;
        Assert.That(lora.TrainsEmbeddings, Is.True, "modules_to_save names the embedding");
        Assert.That(lora.Adapters.Modules, Has.Count.EqualTo(lora.Base.Projections().Count()), "GPT-2's \"c_proj\" matches both c_proj");
        Assert.That(lora.Adapters.Scale, Is.EqualTo(2f));
        Assert.That(TestUtil.RelativeL2(Logits(model), TestUtil.ToDouble(expected.ReadFloat32("lora_logits"))), Is.LessThan(tolerance));
    }

    [Test]
    public void LossAndGradientsMatchPyTorch() =>
        GradientFixture.Check(model, expected, "lora", TrainingObjective.Diffusion, AttentionMaskMode.Bidirectional, null, tolerance);

    [Test]
    public void MergingGivesTheAdaptedLogits()
    {
        using var lora = (LoraModel)ModelLoader.Load(Folder(fixture), device);
        var adapted = Logits(lora);
        var merged = lora.MergeIntoBase();
        Assert.That(lora.Adapters.Modules.All(m => m.Layer.Adapter is null), Is.True);
        Assert.That(TestUtil.RelativeL2(Logits(merged), TestUtil.ToDouble(adapted)), Is.LessThan(1e-5));
    }
}

/// <summary>What a LoRA model allocates and saves: gradients for the trained tensors only, PEFT's layout back and forth.</summary>
[TestFixture("gpt2-tiny")]
[TestFixture("llama-tiny")]
public sealed class LoraModelLayoutTests(string fixture)
{
    Device device = null!;
    string dir = "";

    [SetUp]
    public void SetUp()
    {
        device = new CpuDevice();
        dir = Directory.CreateTempSubdirectory("diffu-lora-").FullName;
    }

    [TearDown]
    public void TearDown()
    {
        device?.Dispose();
        Directory.Delete(dir, recursive: true);
    }

    string Base => Path.Combine(TestUtil.Fixtures, fixture);

    static long Floats(IParameterSet set) => set.Storage.Sum(b => b.Length);

    [TestCase(false)]
    [TestCase(true)]
    public void GradientsAndMomentsHoldOnlyTheTrainedTensors(bool trainEmbeddings)
    {
        using var model = LoraModel.Create(ModelLoader.Load(Base, device), Base, LoraTargets.All, 4, 8f, trainEmbeddings, seed: 1);
        using var grads = model.ZeroParameterSet();
        long adapters = model.Adapters.ParameterCount;
        long embedding = (long)model.VocabSize * model.Config.Channels;
        Assert.That(model.ParameterCount, Is.EqualTo(adapters + (trainEmbeddings ? embedding : 0)));
        Assert.That(Floats(grads), Is.EqualTo(Floats(model.Parameters)));
        Assert.That(Floats(grads), Is.LessThan(adapters + (trainEmbeddings ? embedding : 0) + 64 * model.Adapters.Named().Count()),
            "no buffer for a frozen base tensor (alignment gaps aside)");
        using var none = model.Base.ZeroParameterSet(_ => false);
        Assert.That(none.Storage, Is.Empty);
        Assert.That(none.Named(), Is.Empty);
    }

    [Test]
    public void TheFolderWrittenReadsBackWithTheSameTensorsAndTargets()
    {
        using var model = LoraModel.Create(ModelLoader.Load(Base, device), Base, LoraTargets.Attention, 4, 8f, trainEmbeddings: true, seed: 1);
        var rng = new Random(5);
        foreach (var (_, view) in model.Parameters.Named()) device.Upload(view, 0, TestUtil.RandomFloats(rng, (int)view.Length, 0.05f));
        model.WriteFiles(dir, new Dictionary<string, string> { ["format"] = "pt" }, null);
        var config = File.ReadAllText(Path.Combine(dir, PeftAdapter.ConfigFile));
        Assert.That(config, Does.Contain("\"peft_type\": \"LORA\"").And.Contain("\"r\": 4").And.Contain("\"modules_to_save\""));
        using var loaded = (LoraModel)ModelLoader.Load(dir, device);
        Assert.That(loaded.Adapters.Modules.Select(m => m.Module), Is.EqualTo(model.Adapters.Modules.Select(m => m.Module)), "attention only: GPT-2's mlp.c_proj stays out");
        Assert.That(loaded.Parameters.Named().Select(n => (n.Name, device.ToArray(n.Tensor))),
            Is.EqualTo(model.Parameters.Named().Select(n => (n.Name, device.ToArray(n.Tensor)))));
    }

    [Test]
    public void AFolderForAnotherModelIsRefusedNamingTheTensor()
    {
        using (var model = LoraModel.Create(ModelLoader.Load(Base, device), Base, LoraTargets.All, 4, 8f, trainEmbeddings: false, seed: 1))
            model.WriteFiles(dir, new Dictionary<string, string>(), null);
        var config = Path.Combine(dir, PeftAdapter.ConfigFile);
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"r\": 4", "\"r\": 2"));
        var e = Assert.Throws<DiffuException>(() => ModelLoader.Load(dir, device).Dispose());
        Assert.That(e!.Message, Does.Contain("lora_A.weight").And.Contain("shape"));
    }
}
