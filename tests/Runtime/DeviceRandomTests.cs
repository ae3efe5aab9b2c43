using DiffuSharp.Kernels;
using DiffuSharp.Runtime;

namespace DiffuSharp.Tests.Runtime;

/// <summary>The counter-based RNG gives the same numbers on every device.</summary>
public sealed class DeviceRandomTests
{
    static float[] Draw(string device, int n, ulong seed, ulong stream)
    {
        using var d = TestDevices.Create(device);
        using var t = d.Allocate(DType.F32, n);
        d.Uniform(t, seed, stream);
        return d.ToArray(t);
    }

    [TestCase("ilgpu-cpu")]
    [TestCase("cuda")]
    public void UniformsAreBitIdenticalToTheCpu(string device)
    {
        var rng = TestUtil.NewRandom();
        ulong seed = (ulong)rng.NextInt64(), stream = (ulong)rng.Next(1000);
        var other = Draw(device, 1031, seed, stream);
        var cpu = Draw("cpu", 1031, seed, stream);
        Assert.That(other, Is.EqualTo(cpu));
    }

    [Test]
    public void UniformsFollowThePhiloxSequenceAndDifferByStream()
    {
        var a = Draw("cpu", 64, 42, 0);
        var b = Draw("cpu", 64, 42, 1);
        for (int i = 0; i < a.Length; i++) Assert.That(a[i], Is.EqualTo(Philox.Uniform(42, 0, (ulong)i)));
        Assert.That(a, Is.Not.EqualTo(b));
        Assert.That(a, Is.All.GreaterThanOrEqualTo(0f).And.All.LessThan(1f));
    }
}
