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

    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var model = Cli.ModelOption();
        var prompt = new Option<string[]>("--prompt") { Description = "text to continue; repeat for a batch of prompts", AllowMultipleArgumentsPerToken = false };
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
        var tokenizer = ModelFolder.TokenizerOption();
        var device = Cli.DeviceOption();
        var precision = Cli.PrecisionOption();
        var command = new Command("generate", "generate, complete or infill text")
        {
            model, prompt, infill, length, steps, sampler, temperature, topP, topK, block, budget, batch, seed, mask, showSteps, ar, maxNew, tokenizer, device, precision,
        };
        command.SetAction(parse =>
        {
            var prompts = parse.GetValue(prompt) ?? [];
            if (parse.GetValue(ar))
            {
                if (prompts.Length != 1) throw new DiffuException("--ar decodes one --prompt");
                return RunAutoregressive(parse.GetValue(model)!, prompts[0], parse.GetValue(maxNew), parse.GetValue(temperature),
                    parse.GetValue(seed), parse.GetValue(tokenizer), parse.GetValue(device), parse.GetValue(precision), stdout, stderr);
            }
            var settings = new DenoiseSettings
            {
                Steps = parse.GetValue(steps), Strategy = Samplers[parse.GetValue(sampler)!], Seed = parse.GetValue(seed),
                Sampling = new SamplingOptions(parse.GetValue(temperature), parse.GetValue(topK), parse.GetValue(topP)),
                BlockLength = parse.GetValue(block), TokensPerStep = parse.GetValue(budget),
            };
            return RunDiffusion(new DiffusionRequest(parse.GetValue(model)!, prompts, parse.GetValue(infill), parse.GetValue(length),
                parse.GetValue(batch), parse.GetValue(mask), parse.GetValue(showSteps), parse.GetValue(tokenizer), parse.GetValue(device), parse.GetValue(precision)),
                settings, stdout, stderr);
        });
        return command;
    }

    sealed record DiffusionRequest(string Model, string[] Prompts, string? Infill, int Length, int Samples, int? MaskToken, bool ShowSteps,
        string? Tokenizer, string? Device, string? Precision);

    static int RunDiffusion(DiffusionRequest request, DenoiseSettings settings, TextWriter stdout, TextWriter stderr)
    {
        settings.Validate();
        if (request.Samples <= 0) throw new DiffuException($"--batch must be positive, got {request.Samples}");
        if (request.Infill is not null && request.Prompts.Length > 0) throw new DiffuException("give either --prompt or --infill, not both");
        using var device = Cli.CreateDevice(request.Device, request.Precision);
        using var model = ModelLoader.Load(request.Model, device);
        var tokenizer = ModelFolder.Tokenizer(request.Model, model, request.Tokenizer);
        int start = ModelFolder.StartToken(model, tokenizer);
        var rows = new List<DenoisingRow>();
        for (int s = 0; s < request.Samples; s++)
        {
            if (request.Infill is string text) rows.Add(DenoisingPrompts.Infill(start, text, tokenizer));
            else if (request.Prompts.Length == 0) rows.Add(DenoisingPrompts.Unconditional(start, request.Length));
            else rows.AddRange(request.Prompts.Select(p => DenoisingPrompts.Completion(start, tokenizer.Encode(p), request.Length)));
        }
        var problem = DenoisingPrompts.Stack(rows);
        var denoiser = new Denoiser(model, request.MaskToken ?? model.MaskTokenId ?? DefaultMaskToken(model));

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

        int n = problem.Length;
        for (int r = 0; r < problem.Batch; r++)
        {
            if (problem.Batch > 1) stdout.WriteLine($"--- sample {r + 1}");
            stdout.WriteLine(ModelFolder.DecodeRow(model, tokenizer, result.Tokens.AsSpan(r * n, n)));
        }
        int generated = problem.Fixed.Count(f => f == 0);
        double seconds = clock.Elapsed.TotalSeconds;
        stderr.WriteLine($"{generated} tokens in {seconds:F2} s ({generated / Math.Max(seconds, 1e-9):F1} tokens/s): {result.ForwardPasses} steps of "
            + $"{Ms(result.ForwardTime, result.ForwardPasses)} forward + {Ms(result.SelectionTime, result.ForwardPasses)} selection, "
            + $"{problem.Batch} x {n} tokens, {device.Name}");
        return Cli.Ok;
    }

    /// <summary>The paper's [MASK] ids when the config names none: 10541 for GPT-2 (DiffuGPT-S), 811 for LLaMA (DiffuLLaMA).</summary>
    static int DefaultMaskToken(ILanguageModel model) => model is LlamaModel ? 811 : 10541;

    static string Ms(TimeSpan total, int passes) => $"{total.TotalMilliseconds / Math.Max(1, passes):F1} ms";

    /// <summary>The text of row 0 with still-masked slots shown as a placeholder.</summary>
    static string Render(int[] tokens, byte[] masked, DenoisingProblem problem, TextTokenizer tokenizer)
    {
        var text = new System.Text.StringBuilder();
        for (int i = 1; i < problem.Length; i++)
            text.Append(masked[i] != 0 ? "░" : tokenizer.Decode([tokens[i]]));
        return text.ToString();
    }

    static int RunAutoregressive(string modelDir, string prompt, int maxNew, float temperature, ulong seed, string? tokenizerDir, string? deviceName,
        string? precision, TextWriter stdout, TextWriter stderr)
    {
        using var device = Cli.CreateDevice(deviceName, precision);
        using var model = ModelLoader.Load(modelDir, device);
        var tokenizer = ModelFolder.Tokenizer(modelDir, model, tokenizerDir);
        var promptIds = model is LlamaModel ? [ModelFolder.StartToken(model, tokenizer), .. tokenizer.Encode(prompt)] : tokenizer.Encode(prompt);
        stdout.Write(prompt);
        stdout.Flush();

        var decoder = new ArDecoder(model);
        var generated = new List<int>();
        string shown = "";
        var clock = Stopwatch.StartNew();
        decoder.Generate(promptIds, maxNew, temperature, seed, tokenizer.EndOfTextId, token =>
        {
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
        var final = tokenizer.Decode(generated);
        if (final.StartsWith(shown, StringComparison.Ordinal)) stdout.Write(final[shown.Length..]);
        stdout.WriteLine();
        double seconds = clock.Elapsed.TotalSeconds;
        stderr.WriteLine($"{generated.Count} tokens in {seconds:F2} s ({generated.Count / Math.Max(seconds, 1e-9):F1} tokens/s, prompt {promptIds.Count} tokens, {device.Name})");
        return Cli.Ok;
    }
}
