using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Serialization;
using DiffuSharp.Bench;
using DiffuSharp.IO;
using DiffuSharp.Runtime;
using Spectre.Console;

namespace DiffuSharp.Cli;

/// <summary>
/// `diffu bench`: kernel and end-to-end throughput on a device next to the device's measured ceilings and
/// the reference libraries measured in the same run (OpenBLAS or cuBLAS in process, PyTorch in a
/// subprocess). Prints a table; writes JSON and PNG plots when asked.
/// </summary>
static class BenchCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var suites = new Option<string>("--suite")
        {
            Description = $"comma-separated suites: {string.Join(", ", BenchPlan.SuiteNames)} (default: all)",
            DefaultValueFactory = _ => string.Join(",", BenchPlan.SuiteNames),
        };
        var quick = new Option<bool>("--quick") { Description = "small sizes: every suite in seconds (a smoke run, not a measurement)" };
        var shapes = new Option<string?>("--shapes") { Description = "only these matmul shapes, comma-separated MxKxN (x[M,K] · w[K,N])" };
        var squares = new Option<string?>("--squares") { Description = "square matmul sides, e.g. 1024,2048,4096,8192 (default by device)" };
        var lengths = new Option<string?>("--lengths") { Description = "attention sequence lengths, e.g. 256,1024,4096 (default by device)" };
        var tokens = TypedOptions.OptionalInteger("--tokens", "rows of the layer-shape matmuls and row-wise kernels (default: cpu 1024, cuda 8192)", min: 1, max: BenchOptions.MaxSize);
        var trainBatch = TypedOptions.OptionalInteger("--train-batch", "training row: sequences per step (default: cpu 4, cuda 8)", min: 1, max: BenchOptions.MaxSize);
        var trainLength = TypedOptions.OptionalInteger("--train-length", "training row: tokens per sequence (default: cpu 256, cuda 1024)", min: 1, max: BenchOptions.MaxSize);
        var denoiseLength = TypedOptions.OptionalInteger("--denoise-length", "denoising rows: sequence length L (default 512 on the CPU, 512, 1024 and 2048 on a GPU)", min: 2, max: BenchOptions.MaxSize);
        var denoiseSteps = TypedOptions.OptionalInteger("--denoise-steps", "denoising rows: steps T (default 64 on the CPU, 64, 128 and 256 on a GPU)", min: 1, max: BenchOptions.MaxSize);
        var evalExamples = TypedOptions.OptionalInteger("--eval-examples", "scoring row: the first N HellaSwag examples, 128 rows each (default: cpu 4, cuda 64)", min: 1, max: BenchOptions.MaxSize);
        var evalBatch = TypedOptions.OptionalInteger("--eval-batch", $"scoring row: rows per forward pass at most, as diffu eval --batch (default {BenchPlan.EvalRowsPerPass})", min: 1, max: BenchOptions.MaxSize);
        var evalData = Cli.NonEmpty(new Option<string?>("--eval-data") { Description = "scoring row: folder of the evaluation sets (default: $DIFFU_EVAL_DATA, else ../shared/data/eval)" });
        var tokenizer = Cli.NonEmpty(new Option<string?>("--tokenizer") { Description = "scoring row: folder with the GPT-2 BPE files (default: $DIFFU_TOKENIZER, else ../shared/data/tokenizers/gpt2)" });
        var repeat = TypedOptions.Integer("--repeat", "timed runs per case at most (best and median are reported)", 10, min: 1);
        var budget = TypedOptions.Double("--budget", "seconds per case after which timing stops at three runs", 2.0, min: 0, minExclusive: true);
        var reference = new Option<string>("--reference") { Description = "torch: also time PyTorch on the same cases; none: only the in-process library", DefaultValueFactory = _ => "torch" };
        reference.AcceptOnlyFromAmong("torch", "none");
        var python = Cli.NonEmpty(new Option<string?>("--python") { Description = "Python with PyTorch for the reference (default: $DIFFU_PYTHON, python3, /usr/bin/python3)" });
        var json = Cli.NonEmpty(new Option<string?>("--json") { Description = "write the results as JSON to this file" });
        var plots = Cli.NonEmpty(new Option<string?>("--plots") { Description = "write throughput plots (PNG) into this folder" });
        var markdown = Cli.NonEmpty(new Option<string?>("--markdown") { Description = "write the table as Markdown (with machine, date and command) to this file" });
        var device = Cli.DeviceOption();
        var precision = Cli.PrecisionOption();
        var command = new Command("bench", "measure kernel and end-to-end throughput against the device's ceilings and reference libraries")
        {
            suites, quick, shapes, squares, lengths, tokens, trainBatch, trainLength, denoiseLength, denoiseSteps, evalExamples, evalBatch, evalData,
            tokenizer, repeat, budget, reference, python, json, plots, markdown, device, precision,
        };
        command.SetAction(parse =>
        {
            var options = new BenchOptions
            {
                Suites = Items(parse.GetValue(suites), "--suite"),
                Quick = parse.GetValue(quick),
                MatMulShapes = ParseShapes(parse.GetValue(shapes)),
                Squares = ParseList(parse.GetValue(squares), "--squares"),
                AttentionLengths = ParseList(parse.GetValue(lengths), "--lengths"),
                Tokens = parse.GetValue(tokens) ?? 0, TrainBatch = parse.GetValue(trainBatch) ?? 0, TrainLength = parse.GetValue(trainLength) ?? 0,
                DenoiseLength = parse.GetValue(denoiseLength) ?? 0, DenoiseSteps = parse.GetValue(denoiseSteps) ?? 0,
                EvalExamples = parse.GetValue(evalExamples) ?? 0, EvalBatch = parse.GetValue(evalBatch) ?? 0,
                EvalData = parse.GetValue(evalData), Tokenizer = parse.GetValue(tokenizer),
            };
            options.Validate();
            var settings = new BenchSettings(parse.GetValue(repeat), parse.GetValue(budget), parse.GetValue(reference) == "torch",
                ResolvePython(parse.GetValue(python)), "diffu " + string.Join(' ', parse.Tokens.Select(t => t.Value)));
            return Run(options, settings, parse.GetValue(device), parse.GetValue(precision),
                new Outputs(parse.GetValue(json), parse.GetValue(plots), parse.GetValue(markdown)), stdout, stderr);
        });
        return command;
    }

    /// <summary>The comma-separated items of a list option; none when it was not given, and an error when it was given empty.</summary>
    static string[] Items(string? text, string option)
    {
        if (text is null) return [];
        var items = text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        return items.Length > 0 ? items : throw new DiffuException($"{option} '{text}' names nothing");
    }

    static (int M, int K, int N)[] ParseShapes(string? text) =>
        Items(text, "--shapes").Select(s =>
        {
            var p = s.Split('x');
            if (p.Length != 3 || !int.TryParse(p[0], out int m) || !int.TryParse(p[1], out int k) || !int.TryParse(p[2], out int n) || m <= 0 || k <= 0 || n <= 0)
                throw new DiffuException($"--shapes: '{s}' is not MxKxN with positive integers");
            return (m, k, n);
        }).ToArray();

    static int[] ParseList(string? text, string option) =>
        Items(text, option).Select(s => int.TryParse(s, out int v) && v > 0 ? v : throw new DiffuException($"{option}: '{s}' is not a positive integer")).ToArray();

    /// <summary>
    /// --python as a program that can be started: a path must be an executable regular file, a bare name must be
    /// one on the PATH. Checked before the run, since PyTorch is asked only after all of ours.
    /// </summary>
    static string? ResolvePython(string? python)
    {
        if (python is null) return null;
        string? found = python.Contains(Path.DirectorySeparatorChar) || python.Contains(Path.AltDirectorySeparatorChar) ? python
            : (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
                .Select(dir => Path.Combine(dir, python)).FirstOrDefault(p => FileStatus.Kind(p) == FileKind.RegularFile);
        if (found is null) throw new DiffuException($"--python: {python} not found on the PATH");
        FileStatus.RequireRegularFile(found, "--python");
        const UnixFileMode execute = UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute;
        if (!OperatingSystem.IsWindows() && (File.GetUnixFileMode(found) & execute) == 0)
            throw new DiffuException($"{found}: --python is not executable");
        return found;
    }

    /// <summary>The files a run writes besides the table on stdout; null: not asked for.</summary>
    sealed record Outputs(string? Json, string? Plots, string? Markdown);

    static int Run(BenchOptions options, BenchSettings settings, string? deviceName, string? precision, Outputs outputs, TextWriter stdout, TextWriter stderr)
    {
        CheckOutputs(outputs);
        using var device = Cli.CreateDevice(deviceName, precision);
        BenchPlan.RequireMemory(device, options);
        var report = RunWithProgress(device, options, settings, stdout, stderr);
        BenchTable.Write(report, stdout);
        if (outputs.Json is string jsonPath)
        {
            OutputFile.Write(jsonPath, "--json", stream => JsonSerializer.Serialize(stream, report, Json));
            stdout.WriteLine($"results: {jsonPath}");
        }
        if (outputs.Markdown is string markdownPath)
        {
            OutputFile.Write(markdownPath, "--markdown", stream => stream.Write(System.Text.Encoding.UTF8.GetBytes(BenchTable.Markdown(report))));
            stdout.WriteLine($"markdown: {markdownPath}");
        }
        if (outputs.Plots is string plotDir)
            foreach (var file in BenchPlots.Write(report, plotDir))
                stdout.WriteLine($"plot: {file}");
        var failed = report.Rows.Where(r => r.OursError is not null).ToList();
        foreach (var r in failed) stderr.WriteLine($"error: {r.Id}: {r.OursError}");
        return failed.Count == 0 ? Cli.Ok : Cli.InternalError;
    }

    static BenchReport RunWithProgress(Device device, BenchOptions options, BenchSettings settings, TextWriter stdout, TextWriter stderr)
    {
        bool interactive = AnsiConsole.Profile.Capabilities.Interactive && ReferenceEquals(stdout, Console.Out);
        if (!interactive)
        {
            string last = "";
            return BenchRunner.Run(device, options, settings, p =>
            {
                if (p.Text == last) return;
                last = p.Text;
                stderr.WriteLine($"[{p.Done}/{p.Total}] {p.Text}");
            });
        }
        BenchReport? report = null;
        AnsiConsole.Progress()
            .AutoClear(true)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(),
                new ElapsedTimeColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .Start(context =>
            {
                var task = context.AddTask("bench", maxValue: 1);
                report = BenchRunner.Run(device, options, settings, p =>
                {
                    task.MaxValue = p.Total;
                    task.Value = p.Done;
                    task.Description = Markup.Escape(p.Text.Length > 70 ? p.Text[..70] : p.Text);
                });
            });
        return report!;
    }

    /// <summary>Refuses, before anything is measured, outputs that could not be written at the end (the plot folder is created now).</summary>
    static void CheckOutputs(Outputs outputs)
    {
        var files = new List<(string Path, string Option)>();
        if (outputs.Json is string json) files.Add((json, "--json"));
        if (outputs.Markdown is string markdown) files.Add((markdown, "--markdown"));
        if (outputs.Plots is string plots)
        {
            var kind = FileStatus.Kind(plots);
            if (kind is not (FileKind.Missing or FileKind.Directory)) throw new DiffuException($"--plots {plots} is {FileStatus.Describe(kind)}, not a folder");
            Directory.CreateDirectory(plots);
            files.AddRange(BenchPlots.FileNames.Select(name => (Path.Combine(plots, name), "--plots")));
        }
        foreach (var (path, option) in files) OutputFile.Check(path, option);
        foreach (var same in files.GroupBy(f => Path.GetFullPath(f.Path)).Where(g => g.Count() > 1))
            throw new DiffuException($"{string.Join(" and ", same.Select(f => f.Option))} name the same file {same.Key}");
    }

    static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };
}
