using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Tests.Models;

/// <summary>
/// Each family's forward pass against its PyTorch reference (tests/reference/gpt2_reference.py and
/// llama_reference.py, which wrote tiny random models with HF's layouts and their outputs): causal and
/// bidirectional logits, a greedy continuation through the KV cache, and right-padded rows. One test body for
/// both families, through the family-neutral interface, on every device.
/// </summary>
[TestFixtureSource(nameof(Fixtures))]
public sealed class ModelFixtureTests(string fixture, string deviceName)
    : FixtureModelTests(Path.Combine(TestUtil.Fixtures, fixture), "expected.safetensors", deviceName)
{
    static IEnumerable<TestFixtureData> Fixtures() =>
        from f in new[] { "gpt2-tiny", "llama-tiny" } from d in new[] { "cpu", "ilgpu-cpu", "cuda" } select new TestFixtureData(f, d);

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

    /// <summary>Right-padded rows of 36, 13 and 1 positions in one bidirectional pass (LLaMA's RoPE positions from 0 in each).</summary>
    [Test]
    public void PaddedRowsGetTheLogitsOfEachRowAlone() => PaddedRows.CheckEachRowGetsItsLogitsAlone(model, [36, 13, 1], 36);

    [Test]
    public void BadRowLengthsAreRefused() => PaddedRows.CheckBadRowLengthsAreRefused(model);
}
