using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using DiffuSharp.Diffusion;
using DiffuSharp.Eval;
using DiffuSharp.IO;
using DiffuSharp.Models;
using DiffuSharp.Runtime;
using Spectre.Console;

namespace DiffuSharp.Cli;

/// <summary>
/// `diffu eval`: the paper's evaluation (method §9-§10) on one model: multiple choice (HellaSwag, PIQA, SIQA)
/// with the likelihood scorer, LAMBADA, ROCStories infilling and GSM8K by denoising (or AR decoding for AR
/// models), and unconditional generation quality against a judge model. Every input is read and checked
/// before the first forward pass; results.json and predictions.jsonl go to --out.
/// </summary>
static class EvalCommand
{
    const string Unconditional = "unconditional";
    const string ResultsFile = "results.json", PredictionsFile = "predictions.jsonl", PlotFile = "unconditional.png";

    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var model = Cli.ModelOption();
        var adapter = Cli.AdapterOption();
        var tasks = Cli.NonEmpty(new Option<string>("--task")
        {
            Description = $"comma-separated tasks: {string.Join(", ", EvalTasks.Names)}, {Unconditional} "
                + $"(not available offline: {string.Join(", ", EvalTasks.NotAvailableOffline.Keys)})",
            Required = true,
        });
        var limit = TypedOptions.OptionalInteger("--limit", "evaluate the first N examples of each task", min: 1);
        var steps = Cli.NonEmpty(new Option<string?>("--steps")
        {
            Description = "T of the likelihood scorer and the ROCStories infill (default 32); for unconditional a list, e.g. 32,64,128 (default 32,64,128,256)",
        });
        var scorer = new Option<string>("--scorer")
        {
            Description = "diffusion (method §9), elbo (a Monte-Carlo likelihood bound), ar (AR baselines), or auto: diffusion when the config has mask_token_id, else ar",
            DefaultValueFactory = _ => "auto",
        };
        scorer.AcceptOnlyFromAmong("auto", "diffusion", "elbo", "ar");
        var samples = TypedOptions.OptionalInteger("--samples", "ELBO samples per choice (default 32), or unconditional samples per T (default 64)", min: 1, max: 1 << 20);
        var batch = TypedOptions.Integer("--batch", "rows per forward pass at most", 32, min: 1, max: 1 << 16);
        var seed = TypedOptions.Integer("--seed", "seed of the scorer's masks and of sampling", 0UL, min: 0UL);
        var output = Cli.NonEmpty(new Option<string?>("--out") { Description = "folder for results.json and predictions.jsonl (and unconditional.png)" });
        var overwrite = new Option<bool>("--overwrite") { Description = "replace results.json and predictions.jsonl already in --out" };
        var data = Cli.NonEmpty(new Option<string?>("--data") { Description = "lambada only: your own passages, one per line (predict the last word)" });
        var evalData = Cli.NonEmpty(new Option<string?>("--eval-data") { Description = "folder of the evaluation sets (default: $DIFFU_EVAL_DATA, else ../shared/data/eval)" });
        var judge = Cli.NonEmpty(new Option<string?>("--judge") { Description = "unconditional: the AR model folder that scores the samples' generative perplexity" });
        var length = TypedOptions.Integer("--length", "unconditional: tokens per sample", 128, min: 1, max: 1 << 20);
        var mask = TypedOptions.OptionalInteger("--mask-token", "[MASK] id (default: config.json's mask_token_id)", min: 0);
        var cache = new Option<string>("--cache")
        {
            Description = "generation tasks (infilling, GSM8K, unconditional): keep the fixed context's keys and values after the first step (diffu generate --cache, one block): none (exact), prefix, dual",
            DefaultValueFactory = _ => "none",
        };
        cache.AcceptOnlyFromAmong(GenerateCommand.Caches.Keys.ToArray());
        var threshold = TypedOptions.OptionalFloat("--threshold", "generation tasks: parallel commits above this probability (diffu generate --threshold)",
            min: 0, max: 1, minExclusive: true);
        var tokenizer = ModelFolder.TokenizerOption();
        var device = Cli.DeviceOption();
        var precision = Cli.PrecisionOption();
        var weights = Cli.WeightsOption();
        var command = new Command("eval", "evaluate a model on the paper's benchmark tasks and generation quality")
        {
            model, adapter, tasks, limit, steps, scorer, samples, batch, seed, output, overwrite, data, evalData, judge, length, mask, cache, threshold,
            tokenizer, device, precision, weights,
        };
        command.SetAction(parse => Run(new Request(parse.GetValue(model)!, parse.GetValue(adapter), parse.GetValue(tasks)!, parse.GetValue(limit), parse.GetValue(steps),
            parse.GetValue(scorer)!, parse.GetValue(samples), parse.GetValue(batch), parse.GetValue(seed), parse.GetValue(output), parse.GetValue(overwrite),
            parse.GetValue(data), parse.GetValue(evalData), parse.GetValue(judge), parse.GetValue(length), parse.GetValue(mask), parse.GetValue(tokenizer),
            parse.GetValue(device), parse.GetValue(precision), GenerateCommand.Caches[parse.GetValue(cache)!], parse.GetValue(threshold), parse.GetValue(weights)),
            stdout, stderr));
        return command;
    }

    sealed record Request(string Model, string? Adapter, string Tasks, int? Limit, string? Steps, string Scorer, int? Samples, int Batch, ulong Seed, string? Out,
        bool Overwrite, string? Data, string? EvalData, string? Judge, int Length, int? MaskToken, string? Tokenizer, string? Device, string? Precision,
        DenoisingCache Cache, float? Threshold, string? Weights);

    /// <summary>A task with its examples read (so a bad file stops the command before any work) and how to run it.</summary>
    sealed record Planned(string Name, int Count, Func<EvalRunner, Action<int, int>, TaskResult> Run);

    static int Run(Request request, TextWriter stdout, TextWriter stderr)
    {
        var names = request.Tasks.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).Distinct(StringComparer.OrdinalIgnoreCase).ToList();
        if (names.Count == 0) throw new DiffuException("--task names no task");
        var stepsList = ParseSteps(request.Steps);
        bool unconditional = names.Remove(Unconditional);
        if (stepsList is { Count: > 1 } && names.Count > 0) throw new DiffuException("--steps takes one value for the benchmark tasks; a list is for unconditional alone");
        if (request.Data is not null && !names.Contains("lambada", StringComparer.OrdinalIgnoreCase)) throw new DiffuException("--data replaces lambada's passages: add --task lambada");
        if (unconditional && request.Judge is null) throw new DiffuException("the unconditional task needs --judge AR_MODEL_DIR to score the samples");
        if (!unconditional && request.Judge is not null) throw new DiffuException("--judge scores unconditional samples: add --task unconditional");
        string dataRoot = request.EvalData ?? Environment.GetEnvironmentVariable("DIFFU_EVAL_DATA") ?? Path.Combine("..", "shared", "data", "eval");
        var planned = names.Select(name => Plan(EvalTasks.Get(name), dataRoot, request)).ToList();
        if (request.Out is string outDir) CheckOutput(outDir, request.Overwrite, unconditional);

        using var dev = Cli.CreateDevice(request.Device, request.Precision);
        using var network = ModelLoader.Load(request.Model, dev, request.Adapter, Cli.WeightType(request.Weights, request.Model));
        var evalModel = Describe(network, request.Model, request.Tokenizer, request.MaskToken);
        var kind = request.Scorer switch
        {
            "diffusion" => EvalScorer.Diffusion,
            "elbo" => EvalScorer.Elbo,
            "ar" => EvalScorer.Ar,
            _ => evalModel.MaskTokenId is null ? EvalScorer.Ar : EvalScorer.Diffusion,
        };
        var settings = new EvalSettings
        {
            Scorer = kind, Steps = stepsList is [int t] ? t : 32, ElboSamples = request.Samples ?? 32, Batch = request.Batch, Seed = request.Seed,
            MaxTokens = EvalSettings.TokensPerPass(network.Config, dev), Cache = request.Cache, Threshold = request.Threshold,
        };
        var runner = new EvalRunner(evalModel, settings);
        using var judgeNetwork = unconditional ? ModelLoader.Load(request.Judge!, dev) : null;
        if (judgeNetwork is not null)
        {
            var judgeModel = Describe(judgeNetwork, request.Judge!, request.Tokenizer, null);
            IReadOnlyList<int> at = stepsList ?? [32, 64, 128, 256];
            int count = request.Samples ?? 64;
            if (kind == EvalScorer.Ar) throw new DiffuException("the unconditional task measures a diffusion model's denoising steps: use --scorer diffusion (or auto on a diffusion model)");
            if (request.Length >= network.Positions)
                throw new DiffuException($"--length {request.Length} plus the start token exceeds the model's {network.Positions} positions; at most --length {network.Positions - 1} fits");
            planned.Add(new Planned(Unconditional, count * at.Count, (r, progress) => r.Unconditional(judgeModel, count, request.Length, at, progress)));
        }
        stderr.WriteLine($"evaluating {request.Model} ({network.Config.ParameterCount:N0} parameters) on {dev.Description}: scorer {kind.ToString().ToLowerInvariant()}, "
            + $"{string.Join(", ", planned.Select(p => $"{p.Name} ({p.Count})"))}");
        var results = RunAll(planned, runner, stdout);
        PrintTable(results, stdout);
        if (request.Out is string dir) Write(dir, request, dev, kind, results, stdout);
        return Cli.Ok;
    }

    static List<int>? ParseSteps(string? text)
    {
        if (text is null) return null;
        var values = new List<int>();
        foreach (var part in text.Split(',', StringSplitOptions.TrimEntries))
            if (int.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out int t) && t is >= 1 and <= 1 << 20) values.Add(t);
            else throw new DiffuException($"--steps: '{part}' is not a step count from 1 to {1 << 20}");
        return values;
    }

    /// <summary>Reads a task's examples now, so that a missing or malformed file stops the command before any forward pass.</summary>
    static Planned Plan(EvalTaskInfo task, string root, Request request)
    {
        switch (task.Kind)
        {
            case EvalTaskKind.LastWord:
                var passages = request.Data is string file ? Lambada.LoadFile(file, request.Limit) : Lambada.Load(root, request.Limit);
                return new Planned(task.Name, passages.Count, (r, p) => r.LastWord(task, passages, p));
            case EvalTaskKind.MultipleChoice:
                var questions = task.Name switch
                {
                    "hellaswag" => HellaSwag.Load(root, request.Limit),
                    "piqa" => Piqa.Load(root, request.Limit),
                    _ => Siqa.Load(root, request.Limit),
                };
                return new Planned(task.Name, questions.Count, (r, p) => r.MultipleChoice(task, questions, p));
            case EvalTaskKind.Infill:
                var stories = RocStories.Load(root, request.Limit);
                return new Planned(task.Name, stories.Count, (r, p) => r.Infill(task, stories, p));
            default:
                var problems = Gsm8k.Load(root, request.Limit);
                return new Planned(task.Name, problems.Count, (r, p) => r.Generation(task, problems, p));
        }
    }

    static EvalModel Describe(ILanguageModel network, string modelDir, string? tokenizerOption, int? maskToken)
    {
        var tokenizer = ModelFolder.Tokenizer(modelDir, network.Config, tokenizerOption);
        var family = ModelFamily.Of(network.Config);
        int start = family.StartToken(tokenizer);
        int? mask = maskToken ?? network.MaskTokenId;
        if (mask is int id && (uint)id >= (uint)network.VocabSize)
            throw new DiffuException($"--mask-token {id} is outside the model's vocabulary [0, {network.VocabSize})");
        return new EvalModel(network, tokenizer, start, family.DefaultBos, mask, family.SftTokens(tokenizer));
    }

    static void CheckOutput(string dir, bool overwrite, bool plot)
    {
        if (File.Exists(dir)) throw new DiffuException($"--out {dir} is a file, not a folder");
        foreach (var name in plot ? [ResultsFile, PredictionsFile, PlotFile] : new[] { ResultsFile, PredictionsFile })
        {
            var path = Path.Combine(dir, name);
            if (File.Exists(path) && !overwrite) throw new DiffuException($"--out {dir} already holds {name}: choose another folder or pass --overwrite");
            if (Directory.Exists(dir)) OutputFile.Check(path, "--out");
        }
    }

    static List<TaskResult> RunAll(List<Planned> planned, EvalRunner runner, TextWriter stdout)
    {
        var results = new List<TaskResult>();
        if (!(AnsiConsole.Profile.Capabilities.Interactive && ReferenceEquals(stdout, Console.Out)))
        {
            foreach (var task in planned)
            {
                int shown = -1;
                results.Add(task.Run(runner, (done, total) =>
                {
                    int tenth = total == 0 ? 10 : 10 * done / total;
                    if (tenth == shown) return;
                    shown = tenth;
                    stdout.WriteLine($"{task.Name}: {done}/{total}");
                }));
            }
            return results;
        }
        AnsiConsole.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(),
                new ElapsedTimeColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .Start(context =>
            {
                var bars = planned.Select(p => context.AddTask(p.Name, autoStart: false, maxValue: Math.Max(1, p.Count))).ToList();
                for (int i = 0; i < planned.Count; i++)
                {
                    var bar = bars[i];
                    bar.StartTask();
                    var clock = System.Diagnostics.Stopwatch.StartNew();
                    results.Add(planned[i].Run(runner, (done, total) =>
                    {
                        bar.MaxValue = Math.Max(1, total);
                        bar.Value = done;
                        bar.Description = $"{planned[i].Name} {done}/{total} ({done / Math.Max(clock.Elapsed.TotalSeconds, 1e-9):F1}/s)";
                    }));
                    bar.Value = bar.MaxValue;
                    bar.StopTask();
                }
            });
        return results;
    }

    static void PrintTable(List<TaskResult> results, TextWriter stdout)
    {
        var table = new Table().AddColumns("task", "n", "metric", "value");
        foreach (var r in results)
            foreach (var (name, value) in r.Metrics)
                table.AddRow(r.Task, r.Count.ToString(CultureInfo.InvariantCulture), name, value.ToString("F2", CultureInfo.InvariantCulture));
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(stdout) });
        console.Write(table);
    }

    static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    static readonly JsonSerializerOptions Line = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    static void Write(string dir, Request request, Device device, EvalScorer kind, List<TaskResult> results, TextWriter stdout)
    {
        Directory.CreateDirectory(dir);
        var summary = new Dictionary<string, object>
        {
            ["model"] = Path.GetFullPath(request.Model),
            ["adapter"] = request.Adapter is null ? "none" : Path.GetFullPath(request.Adapter),
            ["device"] = device.Description,
            ["scorer"] = kind.ToString().ToLowerInvariant(),
            ["seed"] = request.Seed,
            ["limit"] = request.Limit is int l ? l : "all",
            ["date"] = DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm 'UTC'", CultureInfo.InvariantCulture),
            ["tasks"] = results.ToDictionary(r => r.Task, r => new { n = r.Count, metrics = r.Metrics, settings = r.Settings }),
        };
        OutputFile.Write(Path.Combine(dir, ResultsFile), "--out", stream => JsonSerializer.Serialize(stream, summary, Json));
        OutputFile.Write(Path.Combine(dir, PredictionsFile), "--out", stream =>
        {
            using var writer = new StreamWriter(stream, leaveOpen: true);
            foreach (var p in results.SelectMany(r => r.Predictions)) writer.WriteLine(JsonSerializer.Serialize(p, Line));
        });
        if (results.FirstOrDefault(r => r.Task == Unconditional) is { } u)
            OutputFile.Write(Path.Combine(dir, PlotFile), "--out", stream => stream.Write(UnconditionalPlot.Png(u)));
        stdout.WriteLine($"wrote {ResultsFile} and {PredictionsFile} to {dir}");
    }
}
