using System.CommandLine;
using System.Diagnostics;
using DiffuSharp.Diffusion;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;
using DiffuSharp.Text;
using Spectre.Console;

namespace DiffuSharp.Cli;

/// <summary>
/// `diffu generate`: text from a model, by iterative denoising (the default: unconditional, prefix
/// completion, infilling, batches) or, with --ar, by autoregressive decoding with a KV cache.
/// </summary>
static class GenerateCommand
{
    static readonly Dictionary<string, DenoisingStrategy> Samplers = new()
    {
        ["random"] = DenoisingStrategy.Random, ["topk"] = DenoisingStrategy.TopK, ["maxprob"] = DenoisingStrategy.MaxProb,
        ["margin"] = DenoisingStrategy.Margin, ["entropy"] = DenoisingStrategy.Entropy,
    };

    internal static readonly Dictionary<string, DenoisingCache> Caches = new()
    {
        ["none"] = DenoisingCache.None, ["prefix"] = DenoisingCache.Prefix, ["dual"] = DenoisingCache.Dual,
    };

    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var model = Cli.ModelOption();
        var adapter = Cli.AdapterOption();
        var prompt = new Option<string[]>("--prompt") { Description = "text to continue; repeat for a batch of prompts", AllowMultipleArgumentsPerToken = false };
        var sftPrompt = new Option<string?>("--sft-prompt")
        {
            Description = "conditional generation (an SFT model, method §5): [BOS] + this query + [SEP] kept, the answer up to --cutoff denoised; "
                + "prints the answer up to its first EOS (defaults: topk, temperature 0, 64 steps)",
        };
        var cutoff = TypedOptions.Integer("--cutoff", "with --sft-prompt: positions of the whole sequence, query and answer (at most the model's)", 256, min: 4);
        var sftTokens = ModelFolder.SftTokensOption();
        var infill = new Option<string?>("--infill") { Description = "text with <mask:N> placeholders to fill, prefix and suffix kept (e.g. \"Tom <mask:12> the park.\")" };
        var length = TypedOptions.Integer("--length", "tokens to generate after the prompt (diffusion)", 64, min: 1);
        var steps = TypedOptions.Integer("--steps", "denoising steps T = forward passes (diffusion)", 64, min: 1);
        var sampler = new Option<string>("--sampler") { Description = "which slots to commit each step: topk (the paper's confidence top-k), random (ancestral), maxprob, margin, entropy", DefaultValueFactory = _ => "topk" };
        sampler.AcceptOnlyFromAmong(Samplers.Keys.ToArray());
        var temperature = TypedOptions.Float("--temperature", "sampling temperature; 0 = argmax", 1f, min: 0);
        var topP = TypedOptions.Float("--top-p", "nucleus sampling mass (1 = off)", 1f, min: 0, max: 1, minExclusive: true);
        var topK = TypedOptions.Integer("--top-k", "sample among the k most likely tokens (0 = off)", 0, min: 0);
        var block = TypedOptions.Integer("--block", "semi-autoregressive: decode in blocks of this many positions, left to right (0 = off)", 0, min: 0);
        var budget = TypedOptions.Integer("--tokens-per-step", "commit at most this many tokens per step (0 = no cap)", 0, min: 0);
        var batch = TypedOptions.Integer("--batch", "samples per prompt (or unconditional samples)", 1, min: 1);
        var seed = TypedOptions.Integer("--seed", "random seed (same seed, same text, on every device)", 0UL, min: 0UL);
        var mask = TypedOptions.OptionalInteger("--mask-token", "[MASK] id (default: config.json's mask_token_id, else 10541 for GPT-2, 811 for LLaMA)", min: 0);
        var showSteps = new Option<bool>("--show-steps") { Description = "on a terminal, redraw the text at every denoising step" };
        var ar = new Option<bool>("--ar") { Description = "autoregressive decoding instead (causal attention, KV cache)" };
        var maxNew = TypedOptions.Integer("--max-new", "tokens to generate with --ar", 64, min: 0);
        var stopAtEos = new Option<bool>("--stop-at-eos")
        {
            Description = $"end each sample's generated text at its first end-of-text token (an infill's gaps each end at theirs, its suffix is kept), "
                + $"and with --block skip the blocks after one; without it each end-of-text is shown as a line {EndOfTextMarker}",
        };
        var cache = new Option<string>("--cache")
        {
            Description = "reuse keys and values within a block (Fast-dLLM, approximate): none (exact), prefix (the positions before the block), "
                + "dual (before and after it); each block's first step runs the whole sequence",
            DefaultValueFactory = _ => "none",
        };
        cache.AcceptOnlyFromAmong(Caches.Keys.ToArray());
        var threshold = TypedOptions.OptionalFloat("--threshold",
            "parallel commits: each step also commits every masked slot of the block whose token has probability above P (at least one), so blocks end early",
            min: 0, max: 1, minExclusive: true);
        var tokenizer = ModelFolder.TokenizerOption();
        var device = Cli.DeviceOption();
        var precision = Cli.PrecisionOption();
        var weights = Cli.WeightsOption();
        var command = new Command("generate", "generate, complete or infill text")
        {
            model, adapter, prompt, infill, sftPrompt, cutoff, sftTokens, length, steps, sampler, temperature, topP, topK, block, budget, cache, threshold,
            batch, seed, mask, showSteps, ar, maxNew, stopAtEos, tokenizer, device, precision, weights,
        };
        command.SetAction(parse =>
        {
            var prompts = parse.GetValue(prompt) ?? [];
            var source = new Source(parse.GetValue(model)!, parse.GetValue(adapter), parse.GetValue(tokenizer), parse.GetValue(device), parse.GetValue(precision),
                parse.GetValue(stopAtEos), parse.GetValue(weights));
            if (parse.GetValue(ar))
            {
                if (prompts.Length != 1) throw new DiffuException("--ar decodes one --prompt");
                return RunAutoregressive(source, prompts[0], parse.GetValue(maxNew), parse.GetValue(temperature), parse.GetValue(seed), stdout, stderr);
            }
            var query = parse.GetValue(sftPrompt);
            if (query is not null && (prompts.Length > 0 || parse.GetValue(infill) is not null))
                throw new DiffuException("--sft-prompt is a query of its own: give it without --prompt or --infill");
            if (query is null && (parse.GetResult(cutoff) is { Implicit: false } || parse.GetValue(sftTokens) is not null))
                throw new DiffuException("--cutoff and --sft-tokens go with --sft-prompt");
            bool argmax = query is not null && parse.GetResult(temperature) is not { Implicit: false };
            var settings = new DenoiseSettings
            {
                Steps = parse.GetValue(steps), Strategy = Samplers[parse.GetValue(sampler)!], Seed = parse.GetValue(seed),
                Sampling = new SamplingOptions(argmax ? 0f : parse.GetValue(temperature), parse.GetValue(topK), parse.GetValue(topP)),
                BlockLength = parse.GetValue(block), TokensPerStep = parse.GetValue(budget),
                Cache = Caches[parse.GetValue(cache)!], Threshold = parse.GetValue(threshold),
            };
            return RunDiffusion(source, new DiffusionRequest(prompts, parse.GetValue(infill), parse.GetValue(length), parse.GetValue(batch),
                parse.GetValue(mask), parse.GetValue(showSteps), query, parse.GetValue(cutoff), parse.GetValue(sftTokens)), settings, stdout, stderr);
        });
        return command;
    }

    /// <summary>The line that stands for an end-of-text token in the printed text (README, Sampling).</summary>
    const string EndOfTextMarker = "⏎ <|endoftext|>";

    /// <summary>What both kinds of generation read and where they run.</summary>
    sealed record Source(string Model, string? Adapter, string? Tokenizer, string? Device, string? Precision, bool StopAtEndOfText, string? Weights);

    sealed record DiffusionRequest(string[] Prompts, string? Infill, int Length, int Samples, int? MaskToken, bool ShowSteps,
        string? SftPrompt, int Cutoff, string? SftTokens);

    /// <summary>
    /// Everything is checked from the config and the tokenizer before the weights are read: the rows against
    /// the model's positions, the mask token, and the whole batch against the memory estimate.
    /// </summary>
    static int RunDiffusion(Source source, DiffusionRequest request, DenoiseSettings settings, TextWriter stdout, TextWriter stderr)
    {
        settings.Validate();
        if (request.Infill is not null && request.Prompts.Length > 0) throw new DiffuException("give either --prompt or --infill, not both");
        ModelFolder.RequireRegularFiles(source.Model, "model file");
        var config = ModelLoader.LoadConfig(source.Model);
        var tokenizer = ModelFolder.Tokenizer(source.Model, config, source.Tokenizer);
        int maskToken = MaskToken(config, request.MaskToken);
        var family = ModelFamily.Of(config);
        int start = family.StartToken(tokenizer);
        var sft = request.SftPrompt is null ? null : ModelFolder.ParseSftTokens(request.SftTokens, config.VocabSize) ?? family.SftTokens(tokenizer);
        // One row per prompt (or the infill, the query, or one unconditional row); each sample repeats them.
        List<DenoisingRow> templates = request.SftPrompt is string query ? [DenoisingPrompts.Conditional(sft!, tokenizer.Encode(query), request.Cutoff, config.Positions)]
            : request.Infill is string text ? [DenoisingPrompts.Infill(start, text, tokenizer, config.Positions)]
            : request.Prompts.Length == 0 ? [DenoisingPrompts.Unconditional(start, request.Length, config.Positions)]
            : [.. request.Prompts.Select(p => DenoisingPrompts.Completion(start, tokenizer.Encode(p), request.Length, config.Positions))];
        long rows = (long)request.Samples * templates.Count;
        int n = templates.Max(t => t.Tokens.Length);
        var weightType = Cli.WeightType(source.Weights, source.Model);
        using var device = Cli.CreateDevice(source.Device, source.Precision);
        long passes = ModelMemory.Forward(config, rows, n);
        if (settings.Cache != DenoisingCache.None) passes = ModelMemory.Total(passes, ModelMemory.Decoding(config, rows, n));
        DeviceMemory.Require(device, ModelMemory.Total(ModelMemory.Weights(config, weightType), passes),
            $"{source.Model}: {rows:N0} rows of {n} tokens (--batch {request.Samples} x {templates.Count} {(request.Prompts.Length > 1 ? "prompts" : "row")})");
        if (rows * n > Array.MaxLength) throw new DeviceMemoryException($"{rows:N0} rows of {n} tokens are more than one array holds ({Array.MaxLength:N0} tokens)");

        using var model = Cli.LoadModel(source.Model, device, source.Adapter, weightType, stderr);
        var problem = DenoisingPrompts.Stack([.. Enumerable.Range(0, (int)rows).Select(r => templates[r % templates.Count])]);
        var denoiser = new Denoiser(model, maskToken);
        if (source.StopAtEndOfText) settings = settings with { StopToken = sft?.Eos ?? tokenizer.EndOfTextId };

        var clock = Stopwatch.StartNew();
        DenoiseResult result;
        if (request.ShowSteps && AnsiConsole.Profile.Capabilities.Interactive && ReferenceEquals(stdout, Console.Out))
        {
            DenoiseResult? done = null;
            AnsiConsole.Live(new Spectre.Console.Text("")).Start(live =>
            {
                done = denoiser.Run(problem, settings, progress =>
                {
                    live.UpdateTarget(new Panel(new Spectre.Console.Text(Render(progress.Tokens, progress.Masked, problem, tokenizer)))
                        .Header($"step {progress.Pass}/{progress.Passes}"));
                    live.Refresh();
                });
            });
            result = done!;
        }
        else result = denoiser.Run(problem, settings);
        clock.Stop();

        for (int r = 0; r < problem.Batch; r++)
        {
            if (problem.Batch > 1) stdout.WriteLine($"--- sample {r + 1}{PromptLabel(request.Prompts, r)}");
            var row = result.Tokens.AsSpan(r * n, n);
            stdout.WriteLine(sft is null ? Show(config, tokenizer, row, problem.Fixed.AsSpan(r * n, n), source.StopAtEndOfText)
                : Answer(tokenizer, row[templates[0].Gaps[0].Start..], sft.Eos));
        }
        int generated = problem.Fixed.Count(f => f == 0);
        double seconds = clock.Elapsed.TotalSeconds;
        stderr.WriteLine($"{generated} tokens in {seconds:F2} s ({generated / Math.Max(seconds, 1e-9):F1} tokens/s): {result.ForwardPasses} steps of "
            + $"{Ms(result.ForwardTime, result.ForwardPasses)} forward + {Ms(result.SelectionTime, result.ForwardPasses)} selection, "
            + $"{problem.Batch} x {n} tokens, {device.Name}");
        return Cli.Ok;
    }

    /// <summary>
    /// --mask-token, else config.json's mask_token_id, else the paper's [MASK] id for the family
    /// (<see cref="ModelFamily.PaperMaskToken"/>), which a smaller vocabulary does not have.
    /// </summary>
    static int MaskToken(IModelConfig config, int? given)
    {
        if (given is int id)
            return id < config.VocabSize ? id : throw new DiffuException($"--mask-token {id} is outside the model's vocabulary of {config.VocabSize} tokens");
        if (config.MaskTokenId is int named) return named;
        var family = ModelFamily.Of(config);
        int fallback = family.PaperMaskToken;
        if (fallback >= config.VocabSize)
            throw new DiffuException($"config.json names no mask_token_id and the {family.DisplayName} default {fallback} is outside "
                + $"the model's vocabulary of {config.VocabSize} tokens: pass --mask-token ID (below {config.VocabSize}; the one the model was trained with)");
        return fallback;
    }

    /// <summary>" (prompt 2, \"Once upon\")" for row r of a batch of prompts (rows cycle through the prompts), else nothing.</summary>
    static string PromptLabel(string[] prompts, int row)
    {
        if (prompts.Length == 0) return "";
        int p = row % prompts.Length;
        string text = prompts[p].ReplaceLineEndings(" ");
        return $" (prompt {p + 1}, \"{(text.Length <= 20 ? text : text[..20] + "…")}\")";
    }

    /// <summary>
    /// The text of a finished row: split at its end-of-text tokens, each shown as a marker line, or with
    /// --stop-at-eos each generated span cut at its first (see <see cref="DenoisingPrompts.Pieces"/>).
    /// </summary>
    static string Show(IModelConfig config, TextTokenizer tokenizer, ReadOnlySpan<int> row, ReadOnlySpan<byte> fixedMask, bool stopAtEndOfText)
    {
        var pieces = DenoisingPrompts.Pieces(row, fixedMask, tokenizer.EndOfTextId, stopAtEndOfText);
        string text = ModelFamily.Of(config).DecodeRow(tokenizer, pieces[0]);
        foreach (var piece in pieces.Skip(1))
        {
            string after = tokenizer.Decode(piece);
            text += EndOfTextLine(text) + (after.Length > 0 ? "\n" + after : "");
        }
        return text;
    }

    /// <summary>A conditional row's answer: its generated slots up to the first EOS (what follows, EOS and pads, is not text).</summary>
    static string Answer(TextTokenizer tokenizer, ReadOnlySpan<int> slots, int eos)
    {
        int end = slots.IndexOf(eos);
        return tokenizer.Decode((end < 0 ? slots : slots[..end]).ToArray());
    }

    /// <summary>The end-of-text marker as a line of its own after <paramref name="before"/>.</summary>
    static string EndOfTextLine(string before) => (before.Length > 0 && !before.EndsWith('\n') ? "\n" : "") + EndOfTextMarker;

    static string Ms(TimeSpan total, int passes) => $"{total.TotalMilliseconds / Math.Max(1, passes):F1} ms";

    /// <summary>The text of row 0 with still-masked slots shown as a placeholder.</summary>
    static string Render(int[] tokens, byte[] masked, DenoisingProblem problem, TextTokenizer tokenizer)
    {
        var text = new System.Text.StringBuilder();
        for (int i = 1; i < problem.Length; i++)
            text.Append(masked[i] != 0 ? "░" : tokenizer.Decode([tokens[i]]));
        return text.ToString();
    }

    /// <summary>Checks the prompt and --max-new against the positions and the memory estimate before reading weights or printing anything.</summary>
    static int RunAutoregressive(Source source, string prompt, int maxNew, float temperature, ulong seed, TextWriter stdout, TextWriter stderr)
    {
        ModelFolder.RequireRegularFiles(source.Model, "model file");
        var config = ModelLoader.LoadConfig(source.Model);
        var tokenizer = ModelFolder.Tokenizer(source.Model, config, source.Tokenizer);
        var family = ModelFamily.Of(config);
        bool startToken = family.TextFollowsStartToken;
        var promptIds = startToken ? [family.StartToken(tokenizer), .. tokenizer.Encode(prompt)] : tokenizer.Encode(prompt);
        if (promptIds.Count == 0) throw new DiffuException("--prompt is empty: AR decoding needs at least one token");
        long capacity = (long)promptIds.Count + maxNew;
        if (capacity > config.Positions)
        {
            string given = startToken ? $"the start token (1) + prompt ({promptIds.Count - 1} tokens)" : $"prompt ({promptIds.Count} tokens)";
            long room = config.Positions - promptIds.Count;
            throw new DiffuException($"{given} + --max-new {maxNew} = {capacity} exceeds the model's {config.Positions} positions; "
                + (room > 0 ? $"at most --max-new {room} fits" : "the prompt leaves no room: shorten it"));
        }
        var weightType = Cli.WeightType(source.Weights, source.Model);
        using var device = Cli.CreateDevice(source.Device, source.Precision);
        DeviceMemory.Require(device, ModelMemory.Total(ModelMemory.Weights(config, weightType), ModelMemory.Decoding(config, 1, capacity)),
            $"{source.Model}: decoding {capacity} positions");
        using var model = Cli.LoadModel(source.Model, device, source.Adapter, weightType, stderr);
        stdout.Write(prompt);
        stdout.Flush();

        var decoder = new ArDecoder(model);
        var generated = new List<int>();
        string shown = "";
        var clock = Stopwatch.StartNew();
        TimeSpan firstToken = default;
        var output = decoder.Generate(promptIds, maxNew, temperature, seed, tokenizer.EndOfTextId, token =>
        {
            if (generated.Count == 0 && firstToken == default) firstToken = clock.Elapsed;
            if (token == tokenizer.EndOfTextId) return;
            generated.Add(token);
            // Decode the whole continuation and print what is new, so multi-token characters come out whole.
            var text = tokenizer.Decode(generated);
            if (text.Length > shown.Length && text.StartsWith(shown, StringComparison.Ordinal))
            {
                stdout.Write(text[shown.Length..]);
                stdout.Flush();
                shown = text;
            }
        });
        clock.Stop();
        var continuation = tokenizer.Decode(generated);
        if (continuation.StartsWith(shown, StringComparison.Ordinal)) stdout.Write(continuation[shown.Length..]);
        // Decoding stops at the first end-of-text, so only the last token can be one.
        if (output.Length > 0 && output[^1] == tokenizer.EndOfTextId && !source.StopAtEndOfText) stdout.Write(EndOfTextLine(prompt + continuation));
        stdout.WriteLine();
        double seconds = clock.Elapsed.TotalSeconds;
        // As llama2.c's run.c counts: the rate after the first token, whose time (the prompt's pass) is given apart.
        string rest = output.Length > 1 ? $", then {(output.Length - 1) / Math.Max(seconds - firstToken.TotalSeconds, 1e-9):F1} tokens/s" : "";
        stderr.WriteLine($"{output.Length} tokens in {seconds:F2} s ({output.Length / Math.Max(seconds, 1e-9):F1} tokens/s; first token after "
            + $"{firstToken.TotalMilliseconds:F0} ms{rest}; prompt {promptIds.Count} tokens, {device.Name})");
        return Cli.Ok;
    }
}
