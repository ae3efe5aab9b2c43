using System.CommandLine;
using DiffuSharp.Diffusion;
using DiffuSharp.Models;
using DiffuSharp.Runtime;
using DiffuSharp.Training;
using Spectre.Console;

namespace DiffuSharp.Cli;

/// <summary>
/// `diffu train`: AR training of a base model or the paper's diffusion adaptation, with a live progress
/// bar, train_log.jsonl, loss.png and a checkpoint in --out at every evaluation.
/// </summary>
static class TrainCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var init = new Option<string?>("--init") { Description = "start from this checkpoint folder (e.g. an AR GPT-2 to adapt)" };
        var config = new Option<string?>("--config") { Description = "start from random weights: a preset name in models/ (gpt2-tiny, gpt2-small) or a config.json path" };
        var resume = new Option<string?>("--resume") { Description = "continue the run saved in this folder up to --steps" };
        var objective = new Option<string>("--objective") { Description = "diffusion (the DiffuGPT objective) or ar (next-token)", DefaultValueFactory = _ => "diffusion" };
        objective.AcceptOnlyFromAmong("diffusion", "ar");
        var data = new Option<string[]>("--data") { Description = "token shard(s) written by `diffu tokenize`", AllowMultipleArgumentsPerToken = true };
        var steps = new Option<long>("--steps") { Description = "total optimizer steps of the run", DefaultValueFactory = _ => 1000 };
        var batch = new Option<int>("--batch") { Description = "sequences per micro-batch", DefaultValueFactory = _ => 8 };
        var seqLen = new Option<int>("--seq-len") { Description = "tokens per sequence", DefaultValueFactory = _ => 128 };
        var lr = new Option<double>("--lr") { Description = "peak learning rate", DefaultValueFactory = _ => 3e-4 };
        var warmup = new Option<long>("--warmup") { Description = "linear warm-up steps", DefaultValueFactory = _ => 0 };
        var schedule = new Option<string>("--schedule") { Description = "after warm-up: cosine (to 0) or constant", DefaultValueFactory = _ => "cosine" };
        schedule.AcceptOnlyFromAmong("cosine", "constant");
        var anneal = new Option<long>("--anneal-steps") { Description = "steps to anneal attention from causal to bidirectional (0 = bidirectional at once)", DefaultValueFactory = _ => 0 };
        var accum = new Option<int>("--grad-accum") { Description = "micro-batches per optimizer step", DefaultValueFactory = _ => 1 };
        var evalEvery = new Option<long>("--eval-every") { Description = "validate, checkpoint and plot every N steps", DefaultValueFactory = _ => 100 };
        var evalBatches = new Option<int>("--eval-batches") { Description = "validation batches per evaluation", DefaultValueFactory = _ => 8 };
        var seed = new Option<ulong>("--seed") { Description = "seed for initialisation, data order and noise", DefaultValueFactory = _ => 0 };
        var mask = new Option<string>("--mask-token")
        {
            Description = "[MASK] token: an existing id (DiffuGPT-S uses 10541) or 'new' to append one with the mean embedding",
            DefaultValueFactory = _ => "10541",
        };
        var weightDecay = new Option<float>("--weight-decay") { Description = "AdamW decoupled weight decay", DefaultValueFactory = _ => 0f };
        var clip = new Option<float>("--clip") { Description = "global gradient-norm clip (0 = off)", DefaultValueFactory = _ => 1f };
        var valFraction = new Option<double>("--val-fraction") { Description = "share of blocks held out for validation", DefaultValueFactory = _ => 0.05 };
        var recipe = new Option<string?>("--recipe")
        {
            Description = "the paper's adaptation recipes as defaults for the options not given: annealed (DiffuGPT: attention annealed over 10K steps, "
                + "3e-4 cosine, 2K warm-up) or no-anneal (DiffuLLaMA-7B: bidirectional from step 0, constant 2e-5, no warm-up)",
        };
        recipe.AcceptOnlyFromAmong(Recipes.Keys.ToArray());
        var output = new Option<string?>("--out") { Description = "output folder: latest checkpoint, train_log.jsonl, loss.png" };
        var tokenizer = ModelFolder.TokenizerOption();
        var device = Cli.DeviceOption();
        var precision = Cli.PrecisionOption();
        var command = new Command("train", "train a model (AR) or adapt one into a diffusion model")
        {
            init, config, resume, objective, data, steps, batch, seqLen, lr, warmup, schedule, anneal, accum, evalEvery, evalBatches,
            seed, mask, weightDecay, clip, valFraction, recipe, output, tokenizer, device, precision,
        };
        command.SetAction(parse =>
        {
            var options = new TrainOptions
            {
                Objective = parse.GetValue(objective) == "ar" ? TrainingObjective.Autoregressive : TrainingObjective.Diffusion,
                Steps = parse.GetValue(steps), Batch = parse.GetValue(batch), SequenceLength = parse.GetValue(seqLen),
                LearningRate = parse.GetValue(lr), WarmupSteps = parse.GetValue(warmup),
                Decay = parse.GetValue(schedule) == "constant" ? LearningRateDecay.Constant : LearningRateDecay.Cosine,
                AnnealSteps = parse.GetValue(anneal), GradientAccumulation = parse.GetValue(accum), EvalEvery = parse.GetValue(evalEvery),
                EvalBatches = parse.GetValue(evalBatches), Seed = parse.GetValue(seed),
                WeightDecay = parse.GetValue(weightDecay), ClipNorm = parse.GetValue(clip),
                Data = (parse.GetValue(data) ?? []).Select(Path.GetFullPath).ToArray(),
            };
            if (parse.GetValue(recipe) is string name)
            {
                var r = Recipes[name];
                options = options with
                {
                    AnnealSteps = Given(parse, anneal) ? options.AnnealSteps : r.AnnealSteps,
                    LearningRate = Given(parse, lr) ? options.LearningRate : r.LearningRate,
                    Decay = Given(parse, schedule) ? options.Decay : r.Decay,
                    WarmupSteps = Given(parse, warmup) ? options.WarmupSteps : r.WarmupSteps,
                };
            }
            var request = new Request(parse.GetValue(init), parse.GetValue(config), parse.GetValue(resume), parse.GetValue(output),
                parse.GetValue(tokenizer), parse.GetValue(device), parse.GetValue(precision), parse.GetValue(valFraction),
                Given(parse, steps), parse.GetValue(mask)!);
            return Run(request, options, stdout, stderr);
        });
        return command;
    }

    /// <summary>Whether the option was on the command line (not just its default).</summary>
    static bool Given(ParseResult parse, Option option) => parse.GetResult(option) is { Implicit: false };

    /// <summary>The adaptation recipes of the paper (spec §6): anneal steps, peak LR, schedule, warm-up.</summary>
    static readonly Dictionary<string, (long AnnealSteps, double LearningRate, LearningRateDecay Decay, long WarmupSteps)> Recipes = new()
    {
        ["annealed"] = (10_000, 3e-4, LearningRateDecay.Cosine, 2_000),
        ["no-anneal"] = (0, 2e-5, LearningRateDecay.Constant, 0),
    };

    sealed record Request(string? Init, string? Config, string? Resume, string? Out, string? Tokenizer, string? Device, string? Precision,
        double ValidationFraction, bool StepsGiven, string MaskToken);

    static int Run(Request request, TrainOptions options, TextWriter stdout, TextWriter stderr)
    {
        int sources = (request.Init is null ? 0 : 1) + (request.Config is null ? 0 : 1) + (request.Resume is null ? 0 : 1);
        if (sources != 1) throw new DiffuException("give exactly one of --init DIR, --config PRESET or --resume DIR");
        string outDir = request.Out ?? request.Resume ?? throw new DiffuException("--out DIR is required");
        var saved = request.Resume is string resumeFrom ? Checkpoint.LoadOptions(resumeFrom) : null;
        var run = saved ?? options;
        var shards = options.Data.Length > 0 ? options.Data : saved?.Data ?? [];
        if (shards.Length == 0) throw new DiffuException("--data FILE is required (make one with `diffu tokenize`)");

        string tokenizerDir = request.Resume ?? TokenizerFor(request);
        using var device = Cli.CreateDevice(request.Device, request.Precision);
        using var blocks = TrainingData.Open(shards, run.SequenceLength, run.Seed, request.ValidationFraction);
        using var trainer = request.Resume is string resumeDir
            ? Trainer.Resume(resumeDir, device, blocks, request.StepsGiven ? options.Steps : null)
            : NewRun(request, options, device, blocks);

        var o = trainer.Options;
        stderr.WriteLine($"training {o.Objective} on {device.Description}: {trainer.Model.ParameterCount:N0} parameters, "
            + $"steps {trainer.Step} -> {o.Steps}, batch {o.Batch} x {o.SequenceLength} x {o.GradientAccumulation}, lr {o.LearningRate:g3}, out {outDir}");
        var title = $"{(o.Objective == TrainingObjective.Diffusion ? "diffusion" : "AR")} training, {Path.GetFileName(Path.GetFullPath(outDir))}";
        void Plot(IReadOnlyList<TrainLogRow> rows) =>
            LossPlot.Write(Path.Combine(outDir, LossPlot.FileName), rows, title, o.Objective == TrainingObjective.Diffusion);
        ProgressView.Run(trainer, outDir, tokenizerDir, Plot, stdout);
        var last = trainer.History.LastOrDefault(r => r.ValLoss is not null);
        var first = trainer.History.FirstOrDefault(r => r.ValLoss is not null);
        stdout.WriteLine($"done: step {trainer.Step}; validation loss {first?.ValLoss:F4} -> {last?.ValLoss:F4}, "
            + $"mean target CE {first?.ValCe:F4} -> {last?.ValCe:F4}; checkpoint, {Trainer.LogFile} and {LossPlot.FileName} in {outDir}");
        return Cli.Ok;
    }

    /// <summary>A run from --init or --config; for diffusion the mask token is set (or appended) first.</summary>
    static Trainer NewRun(Request request, TrainOptions options, Device device, ITokenBlocks blocks)
    {
        ITrainableModel model = request.Init is string initDir ? ModelLoader.Load(initDir, device) : Gpt2Model.CreateRandom(Presets.Load(request.Config!), device, options.Seed);
        try
        {
            if (options.Objective == TrainingObjective.Diffusion)
                options = options with { MaskTokenId = request.MaskToken == "new" ? model.AppendToken() : ParseMaskToken(request.MaskToken) };
            return new Trainer(model, blocks, options, ownsModel: true);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>The tokenizer files stored with the checkpoint: the --init folder's own, else --tokenizer, else $DIFFU_TOKENIZER.</summary>
    static string TokenizerFor(Request request) =>
        request.Init is string dir && Checkpoint.HasTokenizer(dir) ? dir
        : request.Tokenizer ?? Environment.GetEnvironmentVariable("DIFFU_TOKENIZER")
          ?? throw new DiffuException("no tokenizer to store with the checkpoint: pass --tokenizer DIR");

    static int ParseMaskToken(string text) =>
        int.TryParse(text, out int id) && id >= 0 ? id : throw new DiffuException($"--mask-token: '{text}' is neither a token id nor 'new'");
}

/// <summary>Model presets: models/NAME/config.json next to the program or in the working directory, or a path.</summary>
static class Presets
{
    public static Gpt2Config Load(string nameOrPath)
    {
        if (File.Exists(nameOrPath)) return Gpt2Config.Load(nameOrPath);
        if (Directory.Exists(nameOrPath) && File.Exists(Path.Combine(nameOrPath, "config.json"))) return Gpt2Config.Load(Path.Combine(nameOrPath, "config.json"));
        foreach (var root in new[] { AppContext.BaseDirectory, Directory.GetCurrentDirectory() })
        {
            var path = Path.Combine(root, "models", nameOrPath, "config.json");
            if (File.Exists(path)) return Gpt2Config.Load(path);
        }
        throw new DiffuException($"unknown preset '{nameOrPath}': not a config.json path, and no models/{nameOrPath}/config.json");
    }
}
