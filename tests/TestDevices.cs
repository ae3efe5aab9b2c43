using DiffuSharp.Runtime;

namespace DiffuSharp.Tests;

/// <summary>Creates the device a device-parameterised test asks for, ignoring (never passing) CUDA tests without a GPU.</summary>
public static class TestDevices
{
    public static Device Create(string name)
    {
        if (name == "cuda" && !IlgpuDevice.IsAvailable(IlgpuBackend.Cuda))
            Assert.Ignore("no CUDA GPU on this machine: this test runs on the GPU machine (tools/gpu)");
        return Devices.Create(name);
    }
}
