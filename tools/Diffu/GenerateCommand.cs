using System.CommandLine;
using System.Diagnostics;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Cli;

/// <summary>`diffu generate`: text from a model. For now autoregressive decoding with a KV cache (--ar).</summary>
static class GenerateCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var model = Cli.ModelOption();
        var prompt = new Option<string>("--prompt") { Description = "the text to continue", Required = true };
        var ar = new Option<bool>("--ar") { Description = "autoregressive decoding (causal attention, KV cache)" };
        var maxNew = new Option<int>("--max-new") { Description = "how many tokens to generate", DefaultValueFactory = _ => 64 };
        var temperature = new Option<float>("--temperature") { Description = "sampling temperature; 0 = greedy", DefaultValueFactory = _ => 1f };
        var seed = new Option<ulong>("--seed") { Description = "random seed (same seed, same text, on every device)", DefaultValueFactory = _ => 0 };
        var tokenizer = ModelFolder.TokenizerOption();
        var device = Cli.DeviceOption();
        var command = new Command("generate", "generate text from a prompt") { model, prompt, ar, maxNew, temperature, seed, tokenizer, device };
        command.SetAction(parse =>
        {
            if (!parse.GetValue(ar))
                throw new DiffuException("diffusion sampling is not implemented yet; pass --ar for autoregressive decoding");
            return Run(parse.GetValue(model)!, parse.GetValue(prompt)!, parse.GetValue(maxNew), parse.GetValue(temperature),
                parse.GetValue(seed), parse.GetValue(tokenizer), parse.GetValue(device), stdout, stderr);
        });
        return command;
    }

    static int Run(string modelDir, string prompt, int maxNew, float temperature, ulong seed, string? tokenizerDir, string? deviceName,
        TextWriter stdout, TextWriter stderr)
    {
        using var device = Devices.Create(deviceName);
        using var model = Gpt2Model.Load(modelDir, device);
        var tokenizer = ModelFolder.Tokenizer(modelDir, model.Config, tokenizerDir);
        var promptIds = tokenizer.Encode(prompt);
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
