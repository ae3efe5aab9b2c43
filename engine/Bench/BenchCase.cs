using System.Text.Json.Nodes;
using DiffuSharp.Runtime;

namespace DiffuSharp.Bench;

/// <summary>
/// One benchmarked operation at one shape. Work is counted per run: floating-point operations (for
/// compute-bound kernels and model steps), the bytes a perfect kernel must move (for memory-bound ones),
/// and for end-to-end rows the tokens trained, the denoising steps taken or the examples scored.
/// </summary>
public sealed record BenchCase(string Id, string Suite, string Label, string Shape)
{
    public double Flops { get; init; }
    public double Bytes { get; init; }
    public double Tokens { get; init; }
    public double Steps { get; init; }
    public double Examples { get; init; }

    /// <summary>Our implementation on the device under test: allocate, then return what one run does.</summary>
    public required Func<Device, BenchRun> Prepare { get; init; }

    /// <summary>The same work in an in-process reference library (OpenBLAS on the CPU, cuBLAS on CUDA), if any.</summary>
    public Func<Device, BenchRun>? PrepareLibrary { get; init; }

    /// <summary>The same work for the PyTorch reference script (tools/bench/torch_reference.py), if it has it.</summary>
    public JsonObject? Torch { get; init; }

    /// <summary>Why the script has no counterpart, where <see cref="Torch"/> is null (shown in the PyTorch column).</summary>
    public string? NoTorch { get; init; }

    /// <summary>The size the plots put on their x axis (matrix side, sequence length, ...).</summary>
    public double PlotX { get; init; }

    /// <summary>Rows sharing a series name are drawn as one line in the suite's plot.</summary>
    public string Series { get; init; } = "";

    /// <summary>Untimed runs before timing (first-use compilation, page faults).</summary>
    public int Warmup { get; init; } = 1;

    /// <summary>Timed runs even when the time budget is spent (1 for rows that take minutes a run).</summary>
    public int MinRuns { get; init; } = 3;

    public BenchUnit Unit => Tokens > 0 ? BenchUnit.TokensPerSecond : Steps > 0 ? BenchUnit.StepsPerSecond
        : Examples > 0 ? BenchUnit.ExamplesPerSecond : Flops > 0 ? BenchUnit.GflopPerSecond : BenchUnit.GigabytePerSecond;

    /// <summary>The rate of one run lasting <paramref name="seconds"/>, in <see cref="Unit"/>.</summary>
    public double Rate(double seconds) => Unit switch
    {
        BenchUnit.TokensPerSecond => Tokens / seconds,
        BenchUnit.StepsPerSecond => Steps / seconds,
        BenchUnit.ExamplesPerSecond => Examples / seconds,
        BenchUnit.GflopPerSecond => Flops / seconds / 1e9,
        _ => Bytes / seconds / 1e9,
    };

    /// <summary>Share of the device's ceiling: FLOP rate over peak FLOPs (for model rows this is the model
    /// FLOPs utilisation), else bytes over peak bandwidth.</summary>
    public double ShareOfCeiling(double seconds, DeviceCeilings ceilings) =>
        Flops > 0 ? Flops / seconds / (ceilings.PeakGflops * 1e9) : Bytes / seconds / (ceilings.BandwidthGBs * 1e9);
}

public enum BenchUnit { GflopPerSecond, GigabytePerSecond, TokensPerSecond, StepsPerSecond, ExamplesPerSecond }

public static class BenchUnits
{
    public static string Text(this BenchUnit unit) => unit switch
    {
        BenchUnit.GflopPerSecond => "GFLOP/s",
        BenchUnit.GigabytePerSecond => "GB/s",
        BenchUnit.TokensPerSecond => "tokens/s",
        BenchUnit.StepsPerSecond => "steps/s",
        _ => "examples/s",
    };
}

/// <summary>What one timed run does, and the buffers to free once the case is done.</summary>
public sealed class BenchRun(Action run, params IDisposable?[] owned) : IDisposable
{
    public Action Run { get; } = run;

    public void Dispose()
    {
        foreach (var o in owned) o?.Dispose();
    }
}

/// <summary>The device's own measured ceilings: fp32 FMA rate and copy bandwidth.</summary>
public sealed record DeviceCeilings(double PeakGflops, double BandwidthGBs, string Method);
