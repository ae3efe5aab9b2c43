using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Tests.Models;

/// <summary>
/// What only the GPT-2 reference (tests/reference/gpt2_reference.py) has besides the checks both families share
/// (<see cref="ModelFixtureTests"/>): logits under an explicit allow-mask, the annealing step's mask.
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

    [Test]
    public void ExplicitAllowMaskLogitsMatchPyTorch()
    {
        var mask = expected.ReadBytes("allow_mask");
        int length = expected.Info("allow_mask").Shape[0];
        using var allow = device.FromArray(mask, length, length);
        var logits = RunLogits(AttentionMaskMode.Explicit, allow);
        Assert.That(TestUtil.RelativeL2(logits, expected.ReadFloat32("logits_explicit")), Is.LessThan(1e-4));
    }
}
