using System.CommandLine;
using System.Diagnostics;
using DiffuSharp.Runtime;
using Spectre.Console;

namespace DiffuSharp.Cli;

/// <summary>`diffu bench`: kernel throughput on a device. Matmul for now (both weight layouts).</summary>
static class BenchCommand
{
    public static Command Create(TextWriter stdout)
    {
        var shapes = new Option<string>("--shapes")
        {
            Description = "comma-separated MxKxN matmul shapes (x[M,K] · w[K,N])",
            DefaultValueFactory = _ => "1024x1024x1024,768x3072x512,512x768x3072",
        };
        var repeat = new Option<int>("--repeat") { Description = "timed runs per shape (the best is reported)", DefaultValueFactory = _ => 10 };
        var device = Cli.DeviceOption();
        var command = new Command("bench", "measure kernel throughput (GFLOP/s)") { shapes, repeat, device };
        command.SetAction(parse => Run(ParseShapes(parse.GetValue(shapes)!), parse.GetValue(repeat), parse.GetValue(device), stdout));
        return command;
    }

    static (int M, int K, int N)[] ParseShapes(string text) =>
        text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).Select(s =>
        {
            var p = s.Split('x');
            if (p.Length != 3 || !int.TryParse(p[0], out int m) || !int.TryParse(p[1], out int k) || !int.TryParse(p[2], out int n) || m <= 0 || k <= 0 || n <= 0)
                throw new DiffuException($"--shapes: '{s}' is not MxKxN with positive integers");
            return (m, k, n);
        }).ToArray();

    static int Run((int M, int K, int N)[] shapes, int repeat, string? deviceName, TextWriter stdout)
    {
        if (repeat <= 0) throw new DiffuException($"--repeat must be positive, got {repeat}");
        using var device = Devices.Create(deviceName);
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(stdout) });
        var table = new Table().Title($"matmul on {Markup.Escape(device.Description)}")
            .AddColumn("M x K x N").AddColumn("weight layout").AddColumn(new TableColumn("best ms").RightAligned())
            .AddColumn(new TableColumn("median ms").RightAligned()).AddColumn(new TableColumn("GFLOP/s").RightAligned());
        var rng = new Random(1);
        foreach (var (m, k, n) in shapes)
        {
            using var x = device.FromArray(RandomArray(rng, m * k), m, k);
            using var output = device.Allocate(DType.F32, m, n);
            foreach (bool transposed in new[] { false, true })
            {
                using var w = transposed ? device.FromArray(RandomArray(rng, n * k), n, k) : device.FromArray(RandomArray(rng, k * n), k, n);
                Action op = transposed ? () => device.MatMulTransposed(x, w, null, output) : () => device.MatMul(x, w, null, output);
                var (best, median) = Time(device, op, repeat);
                double gflops = 2.0 * m * k * n / best / 1e9;
                table.AddRow($"{m} x {k} x {n}", Markup.Escape(transposed ? "[N, K] (x·wᵀ)" : "[K, N] (x·w)"), (best * 1e3).ToString("F3"),
                    (median * 1e3).ToString("F3"), gflops.ToString("F1"));
            }
        }
        console.Write(table);
        return Cli.Ok;
    }

    static (double Best, double Median) Time(Device device, Action op, int repeat)
    {
        op();
        op();
        device.Synchronize();
        var times = new double[repeat];
        for (int i = 0; i < repeat; i++)
        {
            var clock = Stopwatch.StartNew();
            op();
            device.Synchronize();
            times[i] = clock.Elapsed.TotalSeconds;
        }
        Array.Sort(times);
        return (times[0], times[repeat / 2]);
    }

    static float[] RandomArray(Random rng, int n)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() - 0.5);
        return a;
    }
}
