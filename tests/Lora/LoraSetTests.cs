using DiffuSharp.Kernels;
using DiffuSharp.Lora;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Tests.Lora;

/// <summary>
/// LoRA sets on both fixtures: PEFT's names and targets, an untrained adapter (B = 0) leaving the model as it was,
/// merging giving the attached model's logits.
/// </summary>
[TestFixture("gpt2-tiny", "transformer.h.0.attn.c_attn", 4, 8)]
[TestFixture("llama-tiny", "model.layers.0.self_attn.q_proj", 8, 14)]
public sealed class LoraSetTests(string fixture, string firstModule, int attentionModules, int allModules)
{
    Device device = null!;
    ITrainableModel model = null!;
    readonly int[] ids = [1, 5, 9, 14, 2, 7, 30, 11, 4, 3, 8, 21];

    [SetUp]
    public void SetUp()
    {
        device = new CpuDevice();
        model = ModelLoader.Load(Path.Combine(TestUtil.Fixtures, fixture), device);
    }

    [TearDown]
    public void TearDown()
    {
        model?.Dispose();
        device?.Dispose();
    }

    float[] Logits()
    {
        using var result = model.Logits(ids, 1, ids.Length, AttentionMaskMode.Bidirectional);
        return device.ToArray(result.Logits);
    }

    /// <summary>Random A and B (not PEFT's zero B), so the adapters change the output.</summary>
    LoraSet Random(LoraTargets targets)
    {
        var set = LoraSet.Zeros(model, 4, 8f, targets);
        var rng = new Random(7);
        foreach (var (_, view) in set.Named()) device.Upload(view, 0, TestUtil.RandomFloats(rng, (int)view.Length, 0.05f));
        return set;
    }

    [Test]
    public void TargetsNameTheProjectionsAsPeftDoes()
    {
        using var attention = LoraSet.Zeros(model, 4, 8f, LoraTargets.Attention);
        using var all = LoraSet.Zeros(model, 4, 8f, LoraTargets.All);
        Assert.That(attention.Modules, Has.Count.EqualTo(attentionModules));
        Assert.That(all.Modules, Has.Count.EqualTo(allModules));
        Assert.That(attention.Modules[0].Module, Is.EqualTo(firstModule));
        Assert.That(attention.Named().First().Name, Is.EqualTo($"base_model.model.{firstModule}.lora_A.weight"));
        Assert.That(attention.A(firstModule).Shape, Is.EqualTo(new[] { 4, attention.Modules[0].Layer.InFeatures }));
        Assert.That(attention.B(firstModule).Shape, Is.EqualTo(new[] { attention.Modules[0].Layer.OutFeatures, 4 }));
    }

    [Test]
    public void AFreshAdapterLeavesTheModelAsItWas()
    {
        var before = Logits();
        using var set = LoraSet.CreateRandom(model, 4, 8f, LoraTargets.All, seed: 3);
        set.Attach(null);
        Assert.That(device.ToArray(set.A(firstModule)), Has.Some.Not.EqualTo(0f));
        Assert.That(Logits(), Is.EqualTo(before), "B = 0: y is the base model's, bit for bit");
    }

    [Test]
    public void MergingGivesTheAttachedModelsLogits()
    {
        var before = Logits();
        using var set = Random(LoraTargets.All);
        set.Attach(null);
        var attached = Logits();
        Assert.That(TestUtil.RelativeL2(attached, before), Is.GreaterThan(1e-3), "the adapters change the output");
        set.Merge();
        Assert.That(set.Modules.All(m => m.Layer.Adapter is null), Is.True);
        Assert.That(TestUtil.RelativeL2(Logits(), attached), Is.LessThan(1e-5));
    }

    [Test]
    public void TargetModulesAreSuffixesThatKeepAttentionAndMlpApart()
    {
        using var attention = LoraSet.Zeros(model, 4, 8f, LoraTargets.Attention);
        using var mlp = LoraSet.Zeros(model, 4, 8f, LoraTargets.Mlp);
        Assert.That(attention.TargetModules, Has.All.StartWith(fixture.StartsWith("gpt2") ? "attn." : "self_attn."));
        Assert.That(mlp.TargetModules, Has.All.StartWith("mlp."));
        Assert.That(attention.TargetModules.Count + mlp.TargetModules.Count, Is.EqualTo(allModules / 2), "one entry per projection kind");
    }
}
