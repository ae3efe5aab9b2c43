using DiffuSharp.Runtime;

namespace DiffuSharp.Tests;

/// <summary>Creates the device a device-parameterised test asks for, ignoring (never passing) CUDA tests without a GPU.</summary>
public static class TestDevices
{
    /// <summary>
    /// The devices every op test runs on: the CPU's SIMD kernels, the ILGPU kernels on ILGPU's CPU simulator, and the
    /// ILGPU kernels on a CUDA GPU.
    /// </summary>
    public static readonly string[] Names = ["cpu", "ilgpu-cpu", "cuda"];

    public static Device Create(string name)
    {
        if (name == "cuda" && !IlgpuDevice.IsAvailable(IlgpuBackend.Cuda))
            Assert.Ignore("no CUDA GPU on this machine: this test runs on the GPU machine (tools/gpu)");
        return Devices.Create(name);
    }
}

/// <summary>
/// A fixture whose tests run once on each device of <see cref="TestDevices.Names"/>: one test body per op, one device
/// per fixture, made before its first test. Without a CUDA GPU the CUDA fixture is reported as ignored, never as passed.
/// </summary>
[TestFixtureSource(typeof(TestDevices), nameof(TestDevices.Names))]
public abstract class DeviceFixture(string deviceName)
{
    protected readonly string deviceName = deviceName;
    protected Device device = null!;

    [OneTimeSetUp]
    public void CreateDevice() => device = TestDevices.Create(deviceName);

    [OneTimeTearDown]
    public void DisposeDevice() => device?.Dispose();

    /// <summary>
    /// Reports the running test as ignored, never as passed, on the ILGPU CPU simulator, which pays about 1 ms per group
    /// barrier: for work too large for it (<paramref name="what"/> says which); the CPU and CUDA run it.
    /// </summary>
    protected void IgnoreOnSimulator(string what)
    {
        if (deviceName == "ilgpu-cpu")
            Assert.Ignore($"{what}: too slow for the ILGPU CPU simulator, so it runs on cpu and cuda only");
    }

    protected const string AcrossCpuBlocks = "a shape that crosses the CPU kernels' blocks";
}
