using System.CommandLine;
using DiffuSharp.Data;
using DiffuSharp.Diffusion;
using DiffuSharp.IO;
using DiffuSharp.Lora;
using DiffuSharp.Models;
using DiffuSharp.Runtime;
using DiffuSharp.Text;
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
        var defaults = new TrainOptions();
        var init = Cli.NonEmpty(new Option<string?>("--init") { Description = "start from this model folder or run folder (e.g. an AR GPT-2 to adapt)" });
        var config = Cli.NonEmpty(new Option<string?>("--config") { Description = "start from random weights: a preset name in models/ (gpt2-tiny, gpt2-small, llama-tiny) or a config.json path" });
        var resume = Cli.NonEmpty(new Option<string?>("--resume") { Description = "continue the run saved in this folder up to --steps" });
        var objective = new Option<string>("--objective") { Description = "diffusion (the DiffuGPT objective) or ar (next-token)", DefaultValueFactory = _ => "diffusion" };
        objective.AcceptOnlyFromAmong("diffusion", "ar");
        var data = Cli.NonEmpty(new Option<string[]>("--data") { Description = "token shard(s) written by `diffu tokenize`", AllowMultipleArgumentsPerToken = true });
        var sft = Cli.NonEmpty(new Option<string?>("--sft")
        {
            Description = "conditional fine-tuning (method §5) instead of --data: a JSON array or JSON Lines file of {\"instruction\", \"output\"} or {\"src\", \"tgt\"} rows; the query is never noised",
        });
        var cutoff = TypedOptions.Integer("--cutoff", "with --sft: tokens per sequence ([BOS] + query + [SEP] + answer + [EOS], right-padded)", 256, min: 4);
        var sftTokens = ModelFolder.SftTokensOption();
        var steps = TypedOptions.Integer("--steps", "total optimizer steps of the run", defaults.Steps, min: 1L);
        var batch = TypedOptions.Integer("--batch", "sequences per micro-batch", defaults.Batch, min: 1);
        var seqLen = TypedOptions.Integer("--seq-len", "tokens per sequence", defaults.SequenceLength, min: 2);
        var lr = TypedOptions.Double("--lr", "peak learning rate", defaults.LearningRate, min: 0, max: float.MaxValue, minExclusive: true);
        var warmup = TypedOptions.Integer("--warmup", "linear warm-up steps", defaults.WarmupSteps, min: 0L);
        var schedule = new Option<string>("--schedule") { Description = "after warm-up: cosine (to 0) or constant", DefaultValueFactory = _ => "cosine" };
        schedule.AcceptOnlyFromAmong("cosine", "constant");
        var anneal = TypedOptions.Integer("--anneal-steps", "steps to anneal attention from causal to bidirectional (0 = bidirectional at once)", defaults.AnnealSteps, min: 0L);
        var accum = TypedOptions.Integer("--grad-accum", "micro-batches per optimizer step", defaults.GradientAccumulation, min: 1);
        var evalEvery = TypedOptions.Integer("--eval-every", "validate, checkpoint and plot every N steps", defaults.EvalEvery, min: 1L);
        var evalBatches = TypedOptions.Integer("--eval-batches", "validation batches per evaluation", defaults.EvalBatches, min: 1);
        var seed = TypedOptions.Integer("--seed", "seed for initialisation, data order and noise", defaults.Seed, min: 0UL);
        var mask = new Option<string?>("--mask-token")
        {
            Description = "[MASK] token: an existing id or 'new' to append one with the mean embedding "
                + "(default: the --init model's mask_token_id, else the paper's: 10541 for GPT-2 as DiffuGPT-S, 811 for LLaMA as DiffuLLaMA)",
        };
        var weightDecay = TypedOptions.Float("--weight-decay", "AdamW decoupled weight decay", defaults.WeightDecay, min: 0);
        var clip = TypedOptions.Float("--clip", "global gradient-norm clip (0 = off)", defaults.ClipNorm, min: 0);
        var valFraction = TypedOptions.Double("--val-fraction", "share of blocks held out for validation, below 1", defaults.ValidationFraction, min: 0, max: 1);
        var recipe = new Option<string?>("--recipe")
        {
            Description = "the paper's recipes as defaults for the options not given: annealed (DiffuGPT: attention annealed over 10K steps, "
                + "3e-4 cosine, 2K warm-up), no-anneal (DiffuLLaMA-7B: bidirectional from step 0, constant 2e-5, no warm-up) "
                + "or sft (DiffuGPT's GSM8K fine-tuning: anneal steps 1, 3e-4 cosine, 2K warm-up)",
        };
        recipe.AcceptOnlyFromAmong(Recipes.Keys.ToArray());
        var output = Cli.NonEmpty(new Option<string?>("--out") { Description = "output folder: checkpoints/step-N/, train_log.jsonl, loss.png (a folder that holds a run needs --resume or --overwrite)" });
        var overwrite = new Option<bool>("--overwrite") { Description = "start a new run in an --out folder that holds an earlier run, deleting that run's checkpoints, log and plot" };
        var keep = TypedOptions.Integer("--keep", "how many of the newest checkpoints to keep", defaults.KeepCheckpoints, min: 1);
        var maxLoss = TypedOptions.Double("--max-loss", "stop as diverged when a step's or the validation loss exceeds this (the last checkpoint is kept)",
            defaults.MaxLoss, min: 0, minExclusive: true);
        var loraRank = TypedOptions.OptionalInteger("--lora-rank", "train LoRA adapters of this rank on the --init model, which stays frozen "
            + "(checkpoints are PEFT adapter folders: adapter_model.safetensors + adapter_config.json)", min: 1, max: 1 << 16);
        var loraAlpha = TypedOptions.OptionalFloat("--lora-alpha", "with --lora-rank: the adapters' alpha, scale alpha / rank (default 2 x rank)", min: 0, minExclusive: true);
        var loraTargets = new Option<string>("--lora-targets") { Description = "with --lora-rank: the projections adapted: attn, mlp or all", DefaultValueFactory = _ => "all" };
        loraTargets.AcceptOnlyFromAmong(LoraTargetNames.Keys.ToArray());
        var loraEmbeddings = new Option<bool>("--lora-train-embeddings")
        {
            Description = "with --lora-rank: also train the token embedding in full (PEFT's modules_to_save; with GPT-2's tied head, the head too), as DiffuLLaMA's SFT did",
        };
        var tokenizer = ModelFolder.TokenizerOption();
        var device = Cli.DeviceOption();
        var precision = Cli.PrecisionOption();
        var weights = Cli.WeightsOption();
        weights.Description = "storage type of --init's weights: auto (float32 for a full run, which updates float32 master weights; as stored for a LoRA "
            + "run's frozen base), f32, or bf16 / f16 (LoRA runs only)";
        var saveDtype = Cli.SaveDtypeOption("f32: the float32 weights a full run trains, or a LoRA run's adapters");
        saveDtype.Description += "; a run resumed from 16-bit checkpoints continues from the rounded weights";
        var command = new Command("train", "train a model (AR) or adapt one into a diffusion model")
        {
            init, config, resume, objective, data, sft, cutoff, sftTokens, steps, batch, seqLen, lr, warmup, schedule, anneal, accum, evalEvery, evalBatches,
            seed, mask, weightDecay, clip, valFraction, recipe, loraRank, loraAlpha, loraTargets, loraEmbeddings, output, overwrite, keep, maxLoss, tokenizer, device, precision,
            weights, saveDtype,
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
                WeightDecay = parse.GetValue(weightDecay), ClipNorm = parse.GetValue(clip), MaxLoss = parse.GetValue(maxLoss), KeepCheckpoints = parse.GetValue(keep),
                ValidationFraction = parse.GetValue(valFraction),
                Data = (parse.GetValue(data) ?? []).Select(Path.GetFullPath).ToArray(),
                SaveType = parse.GetValue(saveDtype) is string save ? WeightTypes.Concrete[save] : null,
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
            if (parse.GetValue(loraRank) is int rank)
                options = options with
                {
                    Lora = new LoraOptions(rank, parse.GetValue(loraAlpha) ?? 2f * rank, LoraTargetNames[parse.GetValue(loraTargets)!], parse.GetValue(loraEmbeddings)),
                };
            else if (new Option[] { loraAlpha, loraTargets, loraEmbeddings }.FirstOrDefault(o => Given(parse, o)) is Option loraOption)
                throw new DiffuException($"{loraOption.Name} goes with --lora-rank");
            var fixedOnResume = new Option[] { objective, sft, cutoff, sftTokens, batch, seqLen, lr, warmup, schedule, anneal, accum, evalEvery, evalBatches, seed, mask,
                weightDecay, clip, valFraction, recipe, loraRank, loraAlpha, loraTargets, loraEmbeddings, tokenizer, overwrite, weights, saveDtype };
            var request = new Request(parse.GetValue(init), parse.GetValue(config), parse.GetValue(resume), parse.GetValue(output),
                parse.GetValue(tokenizer), parse.GetValue(device), parse.GetValue(precision), parse.GetValue(weights),
                parse.GetValue(sft), Given(parse, cutoff) ? parse.GetValue(cutoff) : null, parse.GetValue(sftTokens), Given(parse, seqLen),
                Given(parse, steps), Given(parse, maxLoss), Given(parse, keep), parse.GetValue(mask), parse.GetValue(overwrite),
                fixedOnResume.Where(o => Given(parse, o)).Select(o => o.Name).ToArray());
            return Run(request, options, stdout, stderr);
        });
        return command;
    }

    static readonly Dictionary<string, LoraTargets> LoraTargetNames = new()
    {
        ["attn"] = LoraTargets.Attention, ["mlp"] = LoraTargets.Mlp, ["all"] = LoraTargets.All,
    };

    /// <summary>Whether the option was on the command line (not just its default).</summary>
    static bool Given(ParseResult parse, Option option) => parse.GetResult(option) is { Implicit: false };

    /// <summary>The adaptation recipes of the paper (method §6): anneal steps, peak LR, schedule, warm-up.</summary>
    static readonly Dictionary<string, (long AnnealSteps, double LearningRate, LearningRateDecay Decay, long WarmupSteps)> Recipes = new()
    {
        ["annealed"] = (10_000, 3e-4, LearningRateDecay.Cosine, 2_000),
        ["no-anneal"] = (0, 2e-5, LearningRateDecay.Constant, 0),
        ["sft"] = (1, 3e-4, LearningRateDecay.Cosine, 2_000),
    };

    sealed record Request(string? Init, string? Config, string? Resume, string? Out, string? Tokenizer, string? Device, string? Precision, string? Weights,
        string? Sft, int? Cutoff, string? SftTokens, bool SequenceLengthGiven,
        bool StepsGiven, bool MaxLossGiven, bool KeepGiven, string? MaskToken, bool Overwrite, string[] GivenFixedOptions);

    /// <summary>
    /// Checks every input before any work (sources, output folder, data, tokenizer, model size against the
    /// device's memory), takes the output folder's lock, then trains. Nothing is written before all checks pass.
    /// </summary>
    static int Run(Request request, TrainOptions options, TextWriter stdout, TextWriter stderr)
    {
        int sources = (request.Init is null ? 0 : 1) + (request.Config is null ? 0 : 1) + (request.Resume is null ? 0 : 1);
        if (sources != 1) throw new DiffuException("give exactly one of --init DIR, --config PRESET or --resume DIR");
        return request.Resume is string resumeDir ? Resume(resumeDir, request, options, stdout, stderr) : Start(request, options, stdout, stderr);
    }

    static int Start(Request request, TrainOptions options, TextWriter stdout, TextWriter stderr)
    {
        string outDir = Path.GetFullPath(request.Out ?? throw new DiffuException("--out DIR is required"));
        if (request.Sft is string sftFile)
        {
            if (options.Data.Length > 0) throw new DiffuException("give --data (token shards) or --sft (pairs), not both");
            if (request.SequenceLengthGiven) throw new DiffuException("with --sft the sequence length is --cutoff, not --seq-len");
            options = options with { Data = [Path.GetFullPath(sftFile)], SequenceLength = request.Cutoff ?? 256 };
        }
        else if (request.Cutoff is not null || request.SftTokens is not null) throw new DiffuException("--cutoff and --sft-tokens go with --sft");
        if (options.Data.Length == 0) throw new DiffuException("--data FILE (or --sft FILE) is required (make token shards with `diffu tokenize`)");
        options.Validate();
        if (options.Lora is not null)
        {
            if (request.Init is null) throw new DiffuException("--lora-rank adapts a trained model: give it with --init DIR");
            if (PeftAdapter.IsAdapterFolder(RunLayout.ModelFolder(request.Init)))
                throw new DiffuException($"--init {request.Init} is a LoRA adapter: continue its run with --resume, or merge it first (diffu merge) and adapt the result");
            if (options.Objective == TrainingObjective.Diffusion && request.MaskToken == "new")
                throw new DiffuException("--mask-token new grows the vocabulary, which a LoRA run keeps frozen: append the token in a full run first, or give an existing id");
        }
        IModelConfig config;
        if (request.Init is string init)
        {
            string from = Path.GetFullPath(RunLayout.ModelFolder(init));
            if (IsSameOrInside(Path.GetFullPath(init), outDir) || IsSameOrInside(from, outDir))
                throw new DiffuException($"--out {request.Out} would overwrite --init {init}: write the new run to another folder");
            config = ModelLoader.LoadConfig(from);
        }
        else config = Presets.Load(request.Config!);
        var weightType = TrainedWeightType(request, options);
        string tokenizerSource = TokenizerFor(request);
        var tokenizer = Checkpoint.ReadTokenizer(tokenizerSource);
        var textTokenizer = ModelFolder.Tokenizer(tokenizerSource, config, null);
        if (request.Sft is not null)
            options = options with { Sft = ModelFolder.ParseSftTokens(request.SftTokens, config.VocabSize) ?? ModelFamily.Of(config).SftTokens(textTokenizer) };
        int vocab = config.VocabSize;
        if (options.Objective == TrainingObjective.Diffusion)
        {
            if (request.MaskToken == "new") vocab++;
            else options = options with
            {
                MaskTokenId = ParseMaskToken(request.MaskToken ?? (config.MaskTokenId ?? ModelFamily.Of(config).PaperMaskToken).ToString(), config.VocabSize),
            };
        }
        if (options.SequenceLength > config.Positions)
            throw new DiffuException($"--seq-len {options.SequenceLength} exceeds the model's {config.Positions} positions");

        using var device = Cli.CreateDevice(request.Device, request.Precision);
        RequireMemory(device, config, options, weightType);
        var blocks = OpenData(options, vocab, textTokenizer, stderr);
        using var ownsBlocks = blocks as IDisposable;
        using var run = RunFolder.Open(outDir);
        if (run.HoldsRun && !request.Overwrite)
            throw new DiffuException($"{outDir} already holds a training run ({Describe(run)}): continue it with --resume {request.Out}, "
                + "or start again with --overwrite (which deletes it)");
        using var trainer = NewRun(request, options, device, blocks, weightType);
        run.RequireSpace(CheckpointBytes(trainer.Model, tokenizer), CheckpointsOnDisk(options, 0));
        run.Clear();
        return Train(trainer, run, tokenizer, device, stdout, stderr);
    }

    static int Resume(string resumeDir, Request request, TrainOptions given, TextWriter stdout, TextWriter stderr)
    {
        if (request.Out is string o && Path.GetFullPath(o) != Path.GetFullPath(resumeDir))
            throw new DiffuException($"--resume continues the run in its own folder ({resumeDir}); leave out --out (copy the folder first to branch a run)");
        if (request.GivenFixedOptions.Length > 0)
            throw new DiffuException($"{string.Join(", ", request.GivenFixedOptions)}: fixed by the run being resumed (stored in its checkpoint); "
                + "on --resume only --steps, --max-loss, --data, --keep, --device and --precision can be given");
        if (!Directory.Exists(resumeDir)) throw new DiffuException($"{resumeDir}: no such folder to resume");
        using var run = RunFolder.Open(resumeDir);
        var checkpoint = run.LatestCheckpoint ?? throw new DiffuException(run.HoldsRun
            ? $"{resumeDir}: the run stopped before its first checkpoint, so there is nothing to resume; start it again with --overwrite"
            : $"{resumeDir}: no training run here to resume (no checkpoints/)");
        var saved = Checkpoint.LoadOptions(checkpoint);
        var tokenizer = Checkpoint.ReadTokenizer(checkpoint);
        var options = saved with
        {
            Steps = request.StepsGiven ? given.Steps : saved.Steps,
            MaxLoss = request.MaxLossGiven ? given.MaxLoss : saved.MaxLoss,
            KeepCheckpoints = request.KeepGiven ? given.KeepCheckpoints : saved.KeepCheckpoints,
            Data = given.Data.Length > 0 ? given.Data : saved.Data,
        };
        if (options.Data.Length == 0) throw new DiffuException("--data FILE is required (the checkpoint names no token shards)");
        if (options.Sft is not null && given.Data.Length > 0) throw new DiffuException("an SFT run resumes on its own pairs file; --data does not apply");
        options.Validate();
        var config = ModelLoader.LoadConfig(checkpoint);
        using var device = Cli.CreateDevice(request.Device, request.Precision);
        RequireMemory(device, config, options);
        var blocks = OpenData(options, config.VocabSize, options.Sft is null ? null : ModelFolder.Tokenizer(checkpoint, config, null), stderr);
        using var ownsBlocks = blocks as IDisposable;
        using var trainer = Trainer.Resume(checkpoint, device, blocks, options);
        run.RequireSpace(CheckpointBytes(trainer.Model, tokenizer), CheckpointsOnDisk(options, RunLayout.Checkpoints(resumeDir).Count));
        if (options.Steps != saved.Steps && options.Decay == LearningRateDecay.Cosine)
        {
            var before = new LearningRateSchedule(options.LearningRate, options.WarmupSteps, saved.Steps, options.Decay);
            var after = new LearningRateSchedule(options.LearningRate, options.WarmupSteps, options.Steps, options.Decay);
            stderr.WriteLine($"note: --steps {options.Steps} (was {saved.Steps}) re-spreads the cosine schedule over the new length: "
                + $"the learning rate at step {trainer.Step + 1} becomes {after.At(trainer.Step):g3} instead of {before.At(trainer.Step):g3}");
        }
        return Train(trainer, run, tokenizer, device, stdout, stderr);
    }

    static int Train(Trainer trainer, RunFolder run, IReadOnlyList<(string Name, byte[] Bytes)> tokenizer, Device device, TextWriter stdout, TextWriter stderr)
    {
        var o = trainer.Options;
        var trained = trainer.Model is LoraModel lora
            ? $"LoRA rank {lora.Adapters.Rank} on {lora.Adapters.Modules.Count} projections{(lora.TrainsEmbeddings ? " and the token embedding" : "")}: "
                + $"{lora.ParameterCount:N0} trained parameters, {lora.Base.ParameterCount:N0} frozen"
            : $"{trainer.Model.ParameterCount:N0} parameters";
        stderr.WriteLine($"training {o.Objective} on {device.Description}: {trained}, "
            + $"steps {trainer.Step} -> {o.Steps}, batch {o.Batch} x {o.SequenceLength} x {o.GradientAccumulation}, lr {o.LearningRate:g3}, out {run.Path}");
        var title = $"{(o.Objective == TrainingObjective.Diffusion ? "diffusion" : "AR")} training, {Path.GetFileName(run.Path)}";
        void Plot(IReadOnlyList<TrainLogRow> rows) =>
            run.ReplaceFile(RunLayout.PlotFile, temp => LossPlot.Write(temp, rows, title, o.Objective == TrainingObjective.Diffusion));
        ProgressView.Run(trainer, run, tokenizer, Plot, stdout);
        var last = trainer.History.LastOrDefault(r => r.ValLoss is not null);
        var first = trainer.History.FirstOrDefault(r => r.ValLoss is not null);
        stdout.WriteLine($"done: step {trainer.Step}; validation loss {first?.ValLoss:F4} -> {last?.ValLoss:F4}, "
            + $"mean target CE {first?.ValCe:F4} -> {last?.ValCe:F4}; {RunLayout.CheckpointsFolder}/{RunLayout.StepFolderName(trainer.Step)}, "
            + $"{RunLayout.LogFile} and {RunLayout.PlotFile} in {run.Path}");
        return Cli.Ok;
    }

    /// <summary>
    /// Refuses a run whose weights, optimizer state and activations cannot fit on the device. A LoRA run keeps gradients
    /// and moments for the trained embedding only (the adapters, a few percent of the weights at most, are left out of the estimate).
    /// </summary>
    /// <summary>
    /// The type --init's weights load as: float32 for a full run (AdamW updates float32 master weights) and for LoRA's
    /// trained embedding; a LoRA run's frozen base as --weights says, by default as stored. Refused up front otherwise.
    /// </summary>
    static DType TrainedWeightType(Request request, TrainOptions options)
    {
        var asked = WeightTypes.Choices[request.Weights ?? "auto"];
        if (options.Lora is null)
        {
            if (asked is DType t && t != DType.F32)
                throw new DiffuException($"--weights {request.Weights}: a full run updates float32 master weights; 16-bit weights are for a LoRA run's frozen base "
                    + "(--lora-rank); store the result in 16 bits with --save-dtype bf16");
            return DType.F32;
        }
        var type = asked ?? (request.Init is string init ? ModelLoader.StoredType(init) : DType.F32);
        if (options.Lora.TrainEmbeddings && type != DType.F32)
            throw new DiffuException($"--lora-train-embeddings trains the token embedding in float32, but the base loads as {WeightTypes.Name(type)}: add --weights f32");
        return type;
    }

    static void RequireMemory(Device device, IModelConfig config, TrainOptions options, DType weightType = DType.F32)
    {
        long? trained = options.Lora is { } lora ? (lora.TrainEmbeddings ? (long)config.VocabSize * config.Channels : 0) : null;
        DeviceMemory.Require(device, SaturatingAdd(ModelMemory.Weights(config, weightType), ModelMemory.Training(config, options.Batch, options.SequenceLength, trained)),
            $"training {trained ?? config.ParameterCount:N0} of {config.ParameterCount:N0} parameters with micro-batches of {options.Batch} x {options.SequenceLength}");
    }

    /// <summary>The most checkpoints the run can have on disk at once: --keep, or fewer when the run saves fewer (one every --eval-every and the last).</summary>
    static int CheckpointsOnDisk(TrainOptions options, int existing) =>
        (int)Math.Min(options.KeepCheckpoints, Math.Min(int.MaxValue - 1, existing + options.Steps / options.EvalEvery + 1));

    static long SaturatingAdd(long a, long b) => a > long.MaxValue - b ? long.MaxValue : a + b;

    /// <summary>One checkpoint on disk: the trained float32 tensors (a LoRA run's adapters) and their two AdamW moments, and the tokenizer.</summary>
    static long CheckpointBytes(ITrainableModel model, IReadOnlyList<(string Name, byte[] Bytes)> tokenizer)
    {
        long weights = model.ParameterCount > long.MaxValue / 12 ? long.MaxValue : 12 * model.ParameterCount;
        return SaturatingAdd(weights, tokenizer.Sum(f => (long)f.Bytes.Length));
    }

    /// <summary>The training data, checked against the model's vocabulary and for validation blocks: token shards, or SFT pairs (method §5).</summary>
    static ITokenBlocks OpenData(TrainOptions options, int modelVocab, TextTokenizer? tokenizer, TextWriter stderr)
    {
        if (options.Sft is SftTokens tokens) return OpenSft(options, tokens, modelVocab, tokenizer!, stderr);
        var shards = options.Data;
        var blocks = TokenBlocks.Open(shards, options.SequenceLength, options.Seed, options.ValidationFraction);
        try
        {
            if (blocks.VocabSize > modelVocab)
                throw new DiffuException($"{string.Join(", ", shards)}: tokens of a {blocks.VocabSize}-token vocabulary, but the model has {modelVocab}: "
                    + "tokenize with the model's tokenizer (or --vocab-limit)");
            if (blocks.ValidationBlockCount == 0)
                throw new DiffuException($"{string.Join(", ", shards)}: no validation blocks of {options.SequenceLength} tokens (raise --val-fraction or give more data)");
            return blocks;
        }
        catch
        {
            blocks.Dispose();
            throw;
        }
    }

    /// <summary>Every pair read, encoded (the text's own tokens, no BOS) and framed before training starts.</summary>
    static SftBlocks OpenSft(TrainOptions options, SftTokens tokens, int modelVocab, TextTokenizer tokenizer, TextWriter stderr)
    {
        string path = options.Data[0];
        var pairs = SftFile.Read(path);
        int cutoff = options.SequenceLength, truncated = 0;
        var sequences = new List<SftSequence>(pairs.Count);
        foreach (var pair in pairs)
        {
            var source = tokenizer.Encode(pair.Source);
            var target = tokenizer.Encode(pair.Target);
            if (source.Count + target.Count + 3 > cutoff) truncated++;
            sequences.Add(SftSequence.Build(source.ToArray(), target.ToArray(), tokens, cutoff));
        }
        var blocks = new SftBlocks(sequences, options.Seed, options.ValidationFraction);
        if (blocks.VocabSize > modelVocab)
            throw new DiffuException($"{path}: token id {blocks.VocabSize - 1} (with --sft-tokens) is outside the model's vocabulary of {modelVocab}");
        stderr.WriteLine($"sft: {pairs.Count} pairs from {path} ({blocks.TrainingBlockCount} training, {blocks.ValidationBlockCount} validation), "
            + $"cutoff {cutoff}, {truncated} truncated; BOS {tokens.Bos}, SEP {tokens.Sep}, EOS {tokens.Eos}, PAD {tokens.Pad}");
        return blocks;
    }

    static bool IsSameOrInside(string path, string folder)
    {
        string p = Path.TrimEndingDirectorySeparator(path), f = Path.TrimEndingDirectorySeparator(folder);
        return p == f || p.StartsWith(f + Path.DirectorySeparatorChar, StringComparison.Ordinal);
    }

    static string Describe(RunFolder run) =>
        RunLayout.Checkpoints(run.Path) is { Count: > 0 } all ? $"checkpoint at step {all[^1].Step}"
        : run.LatestCheckpoint is not null ? "a checkpoint" : "a log but no checkpoint yet";

    /// <summary>A run from --init or --config; for diffusion the mask token is set (or appended) first.</summary>
    static Trainer NewRun(Request request, TrainOptions options, Device device, ITokenBlocks blocks, DType weightType)
    {
        ITrainableModel model;
        if (request.Init is string initDir) model = ModelLoader.Load(initDir, device, weightType: weightType);
        else
        {
            var config = Presets.Load(request.Config!);
            model = ModelFamily.Of(config).CreateRandom(config, device, options.Seed);
        }
        try
        {
            if (options.Objective == TrainingObjective.Diffusion && request.MaskToken == "new")
                options = options with { MaskTokenId = model.AppendToken() };
            if (options.Lora is { } lora)
                model = LoraModel.Create(model, Path.GetFullPath(RunLayout.ModelFolder(request.Init!)), lora.Targets, lora.Rank, lora.Alpha, lora.TrainEmbeddings, options.Seed);
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
        request.Init is string init && RunLayout.ModelFolder(init) is var dir && Checkpoint.HasTokenizer(dir) ? dir
        : request.Tokenizer ?? Environment.GetEnvironmentVariable("DIFFU_TOKENIZER")
          ?? throw new DiffuException("no tokenizer to store with the checkpoint: pass --tokenizer DIR");

    static int ParseMaskToken(string text, int vocab) =>
        !int.TryParse(text, out int id) || id < 0 ? throw new DiffuException($"--mask-token: '{text}' is neither a token id nor 'new'")
        : id >= vocab ? throw new DiffuException($"--mask-token {id} is outside the model's vocabulary [0, {vocab}): give an id below {vocab}, or 'new' to append a [MASK] token")
        : id;
}

/// <summary>Model presets: models/NAME/config.json next to the program or in the working directory, or a path.</summary>
static class Presets
{
    public static IModelConfig Load(string nameOrPath)
    {
        if (File.Exists(nameOrPath)) return ModelFamily.LoadConfigFile(nameOrPath);
        if (Directory.Exists(nameOrPath) && File.Exists(Path.Combine(nameOrPath, "config.json"))) return ModelFamily.LoadConfigFile(Path.Combine(nameOrPath, "config.json"));
        foreach (var root in new[] { AppContext.BaseDirectory, Directory.GetCurrentDirectory() })
        {
            var path = Path.Combine(root, "models", nameOrPath, "config.json");
            if (File.Exists(path)) return ModelFamily.LoadConfigFile(path);
        }
        throw new DiffuException($"unknown preset '{nameOrPath}': not a config.json path, and no models/{nameOrPath}/config.json");
    }
}
