using DiffuSharp.Runtime;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// One ILGPU device per test fixture, built for each backend the fixture is instantiated with (the CPU
/// simulator and CUDA). Without a CUDA GPU the CUDA fixture is reported as ignored, never as passed.
/// </summary>
public abstract class IlgpuFixture(IlgpuBackend backend)
{
    protected readonly IlgpuBackend backend = backend;
    protected IlgpuDevice device = null!;

    [OneTimeSetUp]
    public void CreateDevice()
    {
        if (backend == IlgpuBackend.Cuda && !IlgpuDevice.IsAvailable(IlgpuBackend.Cuda))
            Assert.Ignore("no CUDA GPU on this machine");
        device = new IlgpuDevice(backend);
    }

    [OneTimeTearDown]
    public void DisposeDevice() => device?.Dispose();
}
