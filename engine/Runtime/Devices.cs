using DiffuSharp.Kernels;

namespace DiffuSharp.Runtime;

/// <summary>Creates devices by the names accepted by --device and DIFFU_DEVICE.</summary>
public static class Devices
{
    public static readonly string[] Names = ["auto", "cpu", "cuda", "opencl", "ilgpu-cpu"];

    /// <summary>
    /// Creates the named device; null or empty means the DIFFU_DEVICE environment variable, then "auto"
    /// (CUDA when a CUDA GPU is present, else the CPU).
    /// </summary>
    public static Device Create(string? name)
    {
        if (string.IsNullOrWhiteSpace(name)) name = Environment.GetEnvironmentVariable("DIFFU_DEVICE");
        if (string.IsNullOrWhiteSpace(name)) name = "auto";
        switch (name.Trim().ToLowerInvariant())
        {
            case "cpu": return new CpuDevice();
            case "cuda": return new IlgpuDevice(IlgpuBackend.Cuda);
            case "opencl": return new IlgpuDevice(IlgpuBackend.OpenCL);
            case "ilgpu-cpu": return new IlgpuDevice(IlgpuBackend.CpuSimulator);
            case "auto": return IlgpuDevice.IsAvailable(IlgpuBackend.Cuda) ? new IlgpuDevice(IlgpuBackend.Cuda) : new CpuDevice();
            default: throw new DiffuException($"unknown device '{name}': expected one of {string.Join(", ", Names)}");
        }
    }

    /// <summary>
    /// Creates the named device (as <see cref="Create(string?)"/>) with its matmuls in <paramref name="precision"/>.
    /// F32 suits every device; TF32 and BF16 need a CUDA GPU of compute capability 8.0+ (see
    /// <see cref="IlgpuDevice.MatMulPrecision"/>) and otherwise throw a <see cref="DiffuException"/> that says why.
    /// </summary>
    public static Device Create(string? name, MatMulPrecision precision)
    {
        var device = Create(name);
        if (precision == MatMulPrecision.F32) return device;
        try
        {
            if (device is not IlgpuDevice gpu)
                throw new DiffuException($"matmul precision {precision} runs on CUDA tensor cores; the {device.Name} device multiplies in float32 only");
            gpu.MatMulPrecision = precision;
            return device;
        }
        catch
        {
            device.Dispose();
            throw;
        }
    }
}
