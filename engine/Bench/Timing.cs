using System.Diagnostics;
using DiffuSharp.Runtime;

namespace DiffuSharp.Bench;

/// <summary>Best and median wall time of one run, over <see cref="Runs"/> runs after warm-up.</summary>
public sealed record Timed(double Best, double Median, int Runs);

/// <summary>
/// The timing policy, the same for our kernels and the in-process references (and mirrored by the PyTorch
/// script): warm-up runs (first-use compilation, page faults), then up to <c>repeat</c> timed runs, each
/// closed by a device synchronisation; it stops early once the budget is spent and <c>minRuns</c> runs (three by default) are done.
/// </summary>
public static class Timing
{
    public static Timed Measure(Device device, Action run, int repeat, double budgetSeconds, int warmup = 1, int minRuns = 3)
    {
        for (int i = 0; i < warmup; i++) run();
        device.Synchronize();
        // No room reserved for all of them: --repeat may be huge, the budget stops the loop.
        var times = new List<double>();
        var total = Stopwatch.StartNew();
        while (times.Count < repeat)
        {
            var clock = Stopwatch.StartNew();
            run();
            device.Synchronize();
            times.Add(clock.Elapsed.TotalSeconds);
            if (times.Count >= minRuns && total.Elapsed.TotalSeconds > budgetSeconds) break;
        }
        times.Sort();
        return new Timed(times[0], times[times.Count / 2], times.Count);
    }
}
