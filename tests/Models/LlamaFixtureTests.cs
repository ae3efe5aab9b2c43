using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Tests.Models;

/// <summary>
/// The LLaMA forward pass (GQA, untied head, BF16/F16/F32 weights) against the PyTorch reference
/// (tests/reference/llama_reference.py): causal and bidirectional logits and a greedy continuation.
/// </summary>
[TestFixture("cpu")]
[TestFixture("ilgpu-cpu")]
[TestFixture("cuda")]
public sealed class LlamaFixtureTests(string deviceName)
{
    Device device = null!;
    LlamaModel model = null!;
    SafeTensorsFile expected = null!;

    static string FixtureDir => Path.Combine(TestUtil.Fixtures, "llama-tiny");

    [OneTimeSetUp]
    public void SetUp()
    {
        device = TestDevices.Create(deviceName);
        model = LlamaModel.Load(FixtureDir, device);
        expected = SafeTensorsFile.Open(Path.Combine(FixtureDir, "expected.safetensors"));
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        expected?.Dispose();
        model?.Dispose();
        device?.Dispose();
    }

    [TestCase(AttentionMaskMode.Causal, "logits_causal")]
    [TestCase(AttentionMaskMode.Bidirectional, "logits_bidirectional")]
    public void LogitsMatchPyTorch(AttentionMaskMode mode, string name)
    {
        var ids = expected.ReadInt32("ids");
        int[] shape = expected.Info("ids").Shape;
        using var result = model.Logits(ids, shape[0], shape[1], mode);
        Assert.That(TestUtil.RelativeL2(device.ToArray(result.Logits), expected.ReadFloat32(name)), Is.LessThan(1e-4));
    }

    [Test]
    public void GreedyDecodingWithKvCacheMatchesPyTorch()
    {
        var want = expected.ReadInt32("greedy_tokens");
        var got = new ArDecoder(model).Generate(expected.ReadInt32("greedy_prompt"), want.Length, temperature: 0, seed: 0);
        Assert.That(got, Is.EqualTo(want));
    }

    /// <summary>Right-padded rows of 36, 13 and 1 positions in one bidirectional pass (RoPE positions from 0 in each).</summary>
    [Test]
    public void PaddedRowsGetTheLogitsOfEachRowAlone() => PaddedRows.CheckEachRowGetsItsLogitsAlone(model, [36, 13, 1], 36);

    [Test]
    public void BadRowLengthsAreRefused() => PaddedRows.CheckBadRowLengthsAreRefused(model);
}
