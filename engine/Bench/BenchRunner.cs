using System.Runtime.InteropServices;
using DiffuSharp.Runtime;

namespace DiffuSharp.Bench;

/// <summary>One timing turned into a rate: best and median seconds, runs, the rate in the row's unit and
/// the share of the device's ceiling (FLOPs or bandwidth).</summary>
public sealed record Measured(double Best, double Median, int Runs, double Rate, double Share);

/// <summary>One row of the report: ours, the in-process library (OpenBLAS / cuBLAS) and PyTorch, each if measured.</summary>
public sealed record BenchRow(string Id, string Suite, string Label, string Shape, string Unit, double PlotX, string Series,
    Measured? Ours, string? OursError, Measured? Library, Measured? Torch, string? TorchError)
{
    /// <summary>Our rate over the reference's: the library's where there is one, else PyTorch's.</summary>
    public double? Ratio => Ours is null ? null : (Library ?? Torch) is Measured r ? Ours.Rate / r.Rate : null;
}

public sealed record BenchReport(DateTimeOffset Date, string Command, string Machine, string Device, DeviceCeilings Ceilings,
    string? Library, string? LibraryAbsent, string? TorchVersion, string? TorchDevice, string? TorchError, IReadOnlyList<BenchRow> Rows);

/// <summary>How to time: runs per case, the per-case time budget, and whether to ask PyTorch.</summary>
/// <summary>Where a bench run is: cases done of all (the PyTorch reference counts as one more), and what runs now.</summary>
public sealed record BenchProgress(int Done, int Total, string Text);

public sealed record BenchSettings(int Repeat = 10, double BudgetSeconds = 2, bool Torch = true, string? Python = null, string Command = "diffu bench");

/// <summary>
/// Runs the plan: the device's ceilings, then each case on our kernels and on the in-process library
/// (one case's buffers at a time), then PyTorch on the same cases in a separate process.
/// </summary>
public static class BenchRunner
{
    public static BenchReport Run(Device device, BenchOptions options, BenchSettings settings, Action<BenchProgress>? progress = null)
    {
        if (settings.Repeat <= 0) throw new DiffuException($"--repeat must be positive, got {settings.Repeat}");
        if (!(settings.BudgetSeconds > 0)) throw new DiffuException($"--budget must be positive, got {settings.BudgetSeconds}");
        progress?.Invoke(new BenchProgress(0, 1, "measuring the device's ceilings"));
        var ceilings = Ceilings.Measure(device, options.Quick);

        OpenBlas? openBlas = null;
        CuBlasReference? cuBlas = null;
        string? libraryAbsent = null;
        if (device is CpuDevice)
        {
            openBlas = OpenBlas.TryLoad();
            openBlas?.SetThreads(Environment.ProcessorCount);
            if (openBlas is null) libraryAbsent = "OpenBLAS not found (apt-get install libopenblas0-pthread, or set DIFFU_OPENBLAS)";
        }
        else
        {
            cuBlas = CuBlasReference.TryCreate(device, out libraryAbsent);
        }

        try
        {
            var cases = BenchPlan.Create(device, options, openBlas, cuBlas);
            var ours = new Dictionary<string, Timed>();
            var library = new Dictionary<string, Timed>();
            var errors = new Dictionary<string, string>();
            for (int i = 0; i < cases.Count; i++)
            {
                var c = cases[i];
                progress?.Invoke(new BenchProgress(i, cases.Count + 1, $"{c.Suite}: {c.Label} {c.Shape}"));
                try
                {
                    ours[c.Id] = Time(device, c, c.Prepare, settings);
                    if (c.PrepareLibrary is not null) library[c.Id] = Time(device, c, c.PrepareLibrary, settings);
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    // One failing case (out of memory, a kernel the GPU rejects) is recorded in its row and the
                    // others still run: a GPU session is too short to lose the whole table to one case.
                    errors[c.Id] = $"{e.GetType().Name}: {e.Message}";
                }
            }

            TorchTimings? torch = null;
            string? torchError = null;
            string? torchDevice = device switch { CpuDevice => "cpu", IlgpuDevice { Backend: IlgpuBackend.Cuda } => "cuda", _ => null };
            if (!settings.Torch) torchError = "not asked for (--reference none)";
            else if (torchDevice is null) torchError = $"no PyTorch counterpart of device {device.Name}";
            else
            {
                progress?.Invoke(new BenchProgress(cases.Count, cases.Count + 1, "PyTorch reference"));
                torch = TorchReference.Run(cases, torchDevice, Environment.ProcessorCount, settings.Repeat, settings.BudgetSeconds, settings.Python,
                    line => progress?.Invoke(new BenchProgress(cases.Count, cases.Count + 1, line)));
                torchError = torch.Error;
            }

            // A ceiling measured while something else ran would inflate every share: take the better of two.
            progress?.Invoke(new BenchProgress(cases.Count + 1, cases.Count + 1, "measuring the device's ceilings again"));
            var again = Ceilings.Measure(device, options.Quick);
            ceilings = ceilings with
            {
                PeakGflops = Math.Max(ceilings.PeakGflops, again.PeakGflops),
                BandwidthGBs = Math.Max(ceilings.BandwidthGBs, again.BandwidthGBs),
                Method = ceilings.Method + ", best of the start and the end of the run",
            };
            progress?.Invoke(new BenchProgress(cases.Count + 1, cases.Count + 1, "done"));
            var rows = cases.Select(c => new BenchRow(c.Id, c.Suite, c.Label, c.Shape, c.Unit.Text(), c.PlotX, c.Series,
                ours.TryGetValue(c.Id, out var o) ? ToMeasured(c, o, ceilings) : null, errors.GetValueOrDefault(c.Id),
                library.TryGetValue(c.Id, out var l) ? ToMeasured(c, l, ceilings) : null,
                torch is not null && torch.Results.TryGetValue(c.Id, out var t) ? ToMeasured(c, t, ceilings) : null,
                torch?.Errors.GetValueOrDefault(c.Id) ?? (torch is not null ? c.NoTorch : null))).ToList();
            return new BenchReport(DateTimeOffset.Now, settings.Command, MachineDescription(), device.Description, ceilings,
                openBlas?.Description ?? cuBlas?.Description, libraryAbsent, torch?.Version, torch?.DeviceName, torchError, rows);
        }
        finally
        {
            cuBlas?.Dispose();
        }
    }

    static Timed Time(Device device, BenchCase c, Func<Device, BenchRun> prepare, BenchSettings settings)
    {
        using var run = prepare(device);
        return Timing.Measure(device, run.Run, settings.Repeat, settings.BudgetSeconds, c.Warmup, c.MinRuns);
    }

    static Measured ToMeasured(BenchCase c, Timed t, DeviceCeilings ceilings) =>
        new(t.Best, t.Median, t.Runs, c.Rate(t.Best), c.ShareOfCeiling(t.Best, ceilings));

    static string MachineDescription()
    {
        string cpu = "unknown CPU";
        try
        {
            var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name"));
            if (line is not null) cpu = line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException)
        {
            // not Linux: the processor name stays unknown
        }
        return $"{cpu}, {Environment.ProcessorCount} cores, {RuntimeInformation.OSDescription}, .NET {Environment.Version}";
    }
}
