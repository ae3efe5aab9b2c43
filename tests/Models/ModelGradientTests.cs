using DiffuSharp.Diffusion;
using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;
using DiffuSharp.Training;

namespace DiffuSharp.Tests.Models;

/// <summary>
/// Each family's loss and every parameter gradient against PyTorch autograd (tests/reference/*_reference.py →
/// FIXTURE/gradients.safetensors): the diffusion loss with bidirectional attention, under an annealing (explicit)
/// mask where the reference has one (GPT-2's), and plain AR training. One test body for both families, through
/// <see cref="ITrainableModel"/>, on every device.
/// </summary>
[TestFixtureSource(nameof(Fixtures))]
public sealed class ModelGradientTests(string fixture, string bidirectionalPrefix, string deviceName, double tolerance)
    : FixtureModelTests(Path.Combine(TestUtil.Fixtures, fixture), "gradients.safetensors", deviceName)
{
    /// <summary>The fixtures name the bidirectional diffusion case differently: GPT-2's "diffusion" is the annealing one.</summary>
    static IEnumerable<TestFixtureData> Fixtures() =>
        from f in new[] { ("gpt2-tiny", "bidirectional"), ("llama-tiny", "diffusion") }
        from d in new[] { ("cpu", 1e-4), ("ilgpu-cpu", 1e-3), ("cuda", 1e-3) }
        select new TestFixtureData(f.Item1, f.Item2, d.Item1, d.Item2);

    [Test]
    public void DiffusionLossWithBidirectionalAttentionMatchesPyTorch() =>
        GradientFixture.Check(model, expected, bidirectionalPrefix, TrainingObjective.Diffusion, AttentionMaskMode.Bidirectional, null, tolerance);

    [Test]
    public void DiffusionLossWithAnnealingMaskMatchesPyTorch()
    {
        if (!expected.Contains("allow_mask")) Assert.Ignore($"the {fixture} reference has no annealing-mask case");
        var mask = expected.ReadBytes("allow_mask");
        int l = expected.Info("allow_mask").Shape[0];
        using var allow = device.FromArray(mask, l, l);
        GradientFixture.Check(model, expected, "diffusion", TrainingObjective.Diffusion, AttentionMaskMode.Explicit, allow, tolerance);
    }

    [Test]
    public void AutoregressiveLossMatchesPyTorch() =>
        GradientFixture.Check(model, expected, "ar", TrainingObjective.Autoregressive, AttentionMaskMode.Causal, null, tolerance);
}

/// <summary>The check every gradient test runs: a fixture's batch, one gradient step, the loss and every gradient against PyTorch's.</summary>
static class GradientFixture
{
    public static void Check(ITrainableModel model, SafeTensorsFile expected, string prefix, TrainingObjective kind, AttentionMaskMode mode,
        Tensor? allow, double tolerance)
    {
        var device = model.Device;
        var x0 = expected.ReadInt32("x0");
        int[] shape = expected.Info("x0").Shape;
        var batch = new ObjectiveBatch(shape[0], shape[1]);
        var objective = new Objective(kind, expected.ReadInt32("mask_id")[0], seed: 0);
        if (kind == TrainingObjective.Autoregressive) objective.Prepare(x0, batch, drawIndex: 0);
        else
        {
            expected.ReadBytes("noise").CopyTo(batch.Masked, 0);
            expected.ReadFloat32("t").CopyTo(batch.NoiseLevels, 0);
            objective.ApplyNoise(x0, batch);
            Assert.That(batch.Inputs, Is.EqualTo(expected.ReadInt32("xt")), "the noised input must equal PyTorch's xt");
        }
        using var grads = model.ZeroParameterSet();
        double loss = GradientStep.Run(model, batch, grads, mode, allow).Loss;
        double want = expected.ReadFloat32(prefix + "_loss")[0];
        Assert.That(Math.Abs(loss - want) / want, Is.LessThan(tolerance), $"{prefix} loss {loss} vs PyTorch {want}");
        Assert.Multiple(() =>
        {
            foreach (var (name, tensor) in grads.Named())
                Assert.That(TestUtil.RelativeL2(device.ToArray(tensor), TestUtil.ToDouble(expected.ReadFloat32($"{prefix}_grad.{name}"))),
                    Is.LessThan(tolerance), $"{prefix} gradient of {name}");
        });
    }
}
