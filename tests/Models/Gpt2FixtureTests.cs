using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Tests.Models;

/// <summary>
/// The GPT-2 forward pass against the PyTorch reference (tests/reference/gpt2_reference.py), which wrote
/// a tiny random GPT-2 with HF's layout and its logits under causal, bidirectional and explicit masks.
/// </summary>
[TestFixture("cpu")]
[TestFixture("ilgpu-cpu")]
[TestFixture("cuda")]
public sealed class Gpt2FixtureTests(string deviceName)
{
    Device device = null!;
    Gpt2Model model = null!;
    SafeTensorsFile expected = null!;

    public static string FixtureDir => Path.Combine(TestUtil.Fixtures, "gpt2-tiny");

    [OneTimeSetUp]
    public void SetUp()
    {
        device = TestDevices.Create(deviceName);
        model = Gpt2Model.Load(FixtureDir, device);
        expected = SafeTensorsFile.Open(Path.Combine(FixtureDir, "expected.safetensors"));
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        expected?.Dispose();
        model?.Dispose();
        device?.Dispose();
    }

    float[] RunLogits(AttentionMaskMode mode, Tensor? allow = null)
    {
        var ids = expected.ReadInt32("ids");
        int[] shape = expected.Info("ids").Shape;
        using var act = model.CreateActivations(shape[0], shape[1]);
        model.Forward(ids, act, mode, allow);
        return device.ToArray(act.Logits!);
    }

    [TestCase(AttentionMaskMode.Causal, "logits_causal")]
    [TestCase(AttentionMaskMode.Bidirectional, "logits_bidirectional")]
    public void LogitsMatchPyTorch(AttentionMaskMode mode, string name)
    {
        var logits = RunLogits(mode);
        var reference = expected.ReadFloat32(name);
        Assert.That(TestUtil.RelativeL2(logits, reference), Is.LessThan(1e-4));
    }

    [Test]
    public void ExplicitAllowMaskLogitsMatchPyTorch()
    {
        var mask = expected.ReadBytes("allow_mask");
        int length = expected.Info("allow_mask").Shape[0];
        using var allow = device.FromArray(mask, length, length);
        var logits = RunLogits(AttentionMaskMode.Explicit, allow);
        Assert.That(TestUtil.RelativeL2(logits, expected.ReadFloat32("logits_explicit")), Is.LessThan(1e-4));
    }

    [Test]
    public void GreedyDecodingWithKvCacheMatchesPyTorch()
    {
        var prompt = expected.ReadInt32("greedy_prompt");
        var want = expected.ReadInt32("greedy_tokens");
        var got = new ArDecoder(model).Generate(prompt, want.Length, temperature: 0, seed: 0);
        Assert.That(got, Is.EqualTo(want));
    }

    /// <summary>Right-padded rows of 36, 13 and 1 positions in one bidirectional pass, and the row-length checks.</summary>
    [Test]
    public void PaddedRowsGetTheLogitsOfEachRowAlone() => PaddedRows.CheckEachRowGetsItsLogitsAlone(model, [36, 13, 1], 36);

    [Test]
    public void BadRowLengthsAreRefused() => PaddedRows.CheckBadRowLengthsAreRefused(model);
}
