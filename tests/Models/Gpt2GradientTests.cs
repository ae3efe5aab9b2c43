using DiffuSharp.Diffusion;
using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;
using DiffuSharp.Training;

namespace DiffuSharp.Tests.Models;

/// <summary>
/// The GPT-2 fixture's diffusion loss under an annealing (explicit) mask and every parameter gradient against
/// PyTorch autograd (tests/reference/gpt2_reference.py → gradients.safetensors); the cases both families have are
/// <see cref="ModelGradientTests"/>.
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

    [Test]
    public void DiffusionLossWithAnnealingMaskMatchesPyTorch()
    {
        var mask = expected.ReadBytes("allow_mask");
        int l = expected.Info("allow_mask").Shape[0];
        using var allow = device.FromArray(mask, l, l);
        GradientFixture.Check(model, expected, "diffusion", TrainingObjective.Diffusion, AttentionMaskMode.Explicit, allow, tolerance);
    }
}
