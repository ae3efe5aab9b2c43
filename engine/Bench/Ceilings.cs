using System.Diagnostics;
using DiffuSharp.Kernels.Cpu;
using DiffuSharp.Kernels.Gpu;
using DiffuSharp.Runtime;
using ILGPU;
using ILGPU.Runtime;
using Device = DiffuSharp.Runtime.Device;

namespace DiffuSharp.Bench;

/// <summary>Measures a device's fp32 FMA rate and memory copy bandwidth (best of a few runs).</summary>
public static class Ceilings
{
    public static DeviceCeilings Measure(Device device, bool quick) => device switch
    {
        CpuDevice => MeasureCpu(quick),
        IlgpuDevice gpu => MeasureIlgpu(gpu, quick),
        _ => throw new DiffuException($"no ceiling measurement for device {device.Name}"),
    };

    static DeviceCeilings MeasureCpu(bool quick)
    {
        int threads = Environment.ProcessorCount;
        long iterations = quick ? 2_000_000 : 20_000_000;
        double flops = 0, best = double.MaxValue;
        for (int i = 0; i < 3; i++)
        {
            var clock = Stopwatch.StartNew();
            flops = Peak.FusedMultiplyAdds(threads, iterations);
            best = Math.Min(best, clock.Elapsed.TotalSeconds);
        }
        int length = (quick ? 16 : 64) << 20;
        var data = new float[length];
        data.AsSpan().Fill(1f);
        Peak.ScaleInPlace(data, 1f, threads);
        double scaleBest = double.MaxValue;
        for (int i = 0; i < 5; i++)
        {
            var clock = Stopwatch.StartNew();
            Peak.ScaleInPlace(data, 1f, threads);
            scaleBest = Math.Min(scaleBest, clock.Elapsed.TotalSeconds);
        }
        return new DeviceCeilings(flops / best / 1e9, 2.0 * length * sizeof(float) / scaleBest / 1e9,
            $"{threads} threads of independent FMA chains; in-place scale of {length * 4L >> 20} MiB (read + write)");
    }

    static DeviceCeilings MeasureIlgpu(IlgpuDevice device, bool quick)
    {
        var accelerator = device.Accelerator;
        bool simulator = device.Backend == IlgpuBackend.CpuSimulator;
        int groupSize = Math.Min(256, accelerator.MaxNumThreadsPerGroup);
        int groups = simulator ? 2 : accelerator.NumMultiprocessors * 16;
        int iterations = simulator || quick ? 256 : 4096;
        using var sink = accelerator.Allocate1D<float>((long)groups * groupSize);
        var fma = accelerator.LoadStreamKernel<ArrayView<float>, int, float, float>(PeakKernels.FusedMultiplyAdds);
        var config = new KernelConfig(groups, groupSize);
        double best = TimeKernel(accelerator, () => fma(config, sink.View, iterations, 0.999f, 1e-3f));
        double flops = PeakKernels.FlopsPerThread(iterations) * groups * groupSize;

        long length = simulator ? 1 << 16 : (quick ? 64L : 256L) << 20;
        using var data = accelerator.Allocate1D<float>(length);
        data.MemSetToZero();
        var scale = accelerator.LoadStreamKernel<ArrayView<float>, float>(PeakKernels.ScaleInPlace);
        var scaleConfig = new KernelConfig(simulator ? 2 : accelerator.NumMultiprocessors * 8, groupSize);
        double scaleBest = TimeKernel(accelerator, () => scale(scaleConfig, data.View, 1f));
        return new DeviceCeilings(flops / best / 1e9, 2.0 * length * sizeof(float) / scaleBest / 1e9,
            $"{groups} x {groupSize} threads of {PeakKernels.Chains} FMA chains; in-place scale of {length * 4 >> 20} MiB (read + write)");
    }

    static double TimeKernel(Accelerator accelerator, Action launch)
    {
        launch();
        accelerator.Synchronize();
        double best = double.MaxValue;
        for (int i = 0; i < 5; i++)
        {
            var clock = Stopwatch.StartNew();
            launch();
            accelerator.Synchronize();
            best = Math.Min(best, clock.Elapsed.TotalSeconds);
        }
        return best;
    }
}
