using DiffuSharp.Diffusion;
using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;
using DiffuSharp.Training;

namespace DiffuSharp.Tests.Models;

/// <summary>
/// Loss and every parameter gradient of the GPT-2 fixture against PyTorch autograd
/// (tests/reference/gpt2_reference.py → gradients.safetensors): the diffusion loss under an annealing
/// mask, the same loss with bidirectional attention, and plain AR training.
/// </summary>
[TestFixture("cpu", 1e-4)]
[TestFixture("ilgpu-cpu", 1e-3)]
[TestFixture("cuda", 1e-3)]
public sealed class Gpt2GradientTests(string deviceName, double tolerance)
{
    Device device = null!;
    Gpt2Model model = null!;
    SafeTensorsFile expected = null!;

    [OneTimeSetUp]
    public void SetUp()
    {
        device = TestDevices.Create(deviceName);
        model = Gpt2Model.Load(Gpt2FixtureTests.FixtureDir, device);
        expected = SafeTensorsFile.Open(Path.Combine(Gpt2FixtureTests.FixtureDir, "gradients.safetensors"));
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        expected?.Dispose();
        model?.Dispose();
        device?.Dispose();
    }

    ObjectiveBatch Batch(TrainingObjective kind)
    {
        var x0 = expected.ReadInt32("x0");
        int[] shape = expected.Info("x0").Shape;
        var batch = new ObjectiveBatch(shape[0], shape[1]);
        var objective = new Objective(kind, expected.ReadInt32("mask_id")[0], seed: 0);
        if (kind == TrainingObjective.Autoregressive)
        {
            objective.Prepare(x0, batch, drawIndex: 0);
            return batch;
        }
        expected.ReadBytes("noise").CopyTo(batch.Masked, 0);
        expected.ReadFloat32("t").CopyTo(batch.NoiseLevels, 0);
        objective.ApplyNoise(x0, batch);
        Assert.That(batch.Inputs, Is.EqualTo(expected.ReadInt32("xt")), "the noised input must equal PyTorch's xt");
        return batch;
    }

    void Check(string prefix, TrainingObjective kind, AttentionMaskMode mode, Tensor? allow)
    {
        using var grads = Gpt2Weights.Zeros(model.Config, device);
        double loss = GradientStep.Run(model, Batch(kind), grads, mode, allow).Loss;
        double want = expected.ReadFloat32(prefix + "_loss")[0];
        Assert.That(Math.Abs(loss - want) / want, Is.LessThan(tolerance), $"{prefix} loss {loss} vs PyTorch {want}");
        Assert.Multiple(() =>
        {
            foreach (var (name, tensor) in grads.Named())
            {
                double error = TestUtil.RelativeL2(device.ToArray(tensor), TestUtil.ToDouble(expected.ReadFloat32($"{prefix}_grad.{name}")));
                Assert.That(error, Is.LessThan(tolerance), $"{prefix} gradient of {name}");
            }
        });
    }

    [Test]
    public void DiffusionLossWithAnnealingMaskMatchesPyTorch()
    {
        var mask = expected.ReadBytes("allow_mask");
        int l = expected.Info("allow_mask").Shape[0];
        using var allow = device.FromArray(mask, l, l);
        Check("diffusion", TrainingObjective.Diffusion, AttentionMaskMode.Explicit, allow);
    }

    [Test]
    public void DiffusionLossWithBidirectionalAttentionMatchesPyTorch() =>
        Check("bidirectional", TrainingObjective.Diffusion, AttentionMaskMode.Bidirectional, null);

    [Test]
    public void AutoregressiveLossMatchesPyTorch() =>
        Check("ar", TrainingObjective.Autoregressive, AttentionMaskMode.Causal, null);
}
