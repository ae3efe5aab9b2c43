using DiffuSharp.Diffusion;
using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;
using DiffuSharp.Training;

namespace DiffuSharp.Tests.Models;

/// <summary>
/// The LLaMA backward pass (RMSNorm, RoPE, GQA attention, SwiGLU, untied head) against PyTorch autograd
/// (tests/reference/llama_reference.py → llama-tiny/gradients.safetensors): the diffusion loss with
/// bidirectional attention and plain AR training, loss and every parameter gradient.
/// </summary>
[TestFixture("cpu", 1e-4)]
[TestFixture("ilgpu-cpu", 1e-3)]
[TestFixture("cuda", 1e-3)]
public sealed class LlamaGradientTests(string deviceName, double tolerance)
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
        expected = SafeTensorsFile.Open(Path.Combine(FixtureDir, "gradients.safetensors"));
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        expected?.Dispose();
        model?.Dispose();
        device?.Dispose();
    }

    void Check(string prefix, TrainingObjective kind, AttentionMaskMode mode)
    {
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
            Assert.That(batch.Inputs, Is.EqualTo(expected.ReadInt32("xt")));
        }
        using var grads = LlamaWeights.Zeros(model.Config, device);
        double loss = GradientStep.Run(model, batch, grads, mode, null).Loss;
        double want = expected.ReadFloat32(prefix + "_loss")[0];
        Assert.That(Math.Abs(loss - want) / want, Is.LessThan(tolerance), $"{prefix} loss {loss} vs PyTorch {want}");
        Assert.Multiple(() =>
        {
            foreach (var (name, tensor) in grads.Named())
                Assert.That(TestUtil.RelativeL2(device.ToArray(tensor), TestUtil.ToDouble(expected.ReadFloat32($"{prefix}_grad.{name}"))),
                    Is.LessThan(tolerance), $"{prefix} gradient of {name}");
        });
    }

    [Test]
    public void DiffusionLossWithBidirectionalAttentionMatchesPyTorch() =>
        Check("diffusion", TrainingObjective.Diffusion, AttentionMaskMode.Bidirectional);

    [Test]
    public void AutoregressiveLossMatchesPyTorch() =>
        Check("ar", TrainingObjective.Autoregressive, AttentionMaskMode.Causal);
}
