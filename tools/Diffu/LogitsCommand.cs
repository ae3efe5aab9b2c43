using System.CommandLine;
using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Cli;

/// <summary>`diffu logits`: the float32 logits [T, V] of one forward pass, written as safetensors (a probe for outside checks).</summary>
static class LogitsCommand
{
    public static Command Create(TextWriter stdout)
    {
        var model = Cli.ModelOption();
        var adapter = Cli.AdapterOption();
        var ids = new Option<string>("--ids") { Description = "comma-separated token ids, e.g. 1,2,3", Required = true };
        var bidirectional = new Option<bool>("--bidirectional") { Description = "full attention instead of causal (as a diffusion model sees its input)" };
        var output = Cli.NonEmpty(new Option<string>("--out") { Description = "output .safetensors file (tensor 'logits', F32 [T, V])", Required = true });
        var device = Cli.DeviceOption();
        var precision = Cli.PrecisionOption();
        var weights = Cli.WeightsOption();
        var command = new Command("logits", "write the logits of one forward pass") { model, adapter, ids, bidirectional, output, device, precision, weights };
        command.SetAction(parse => Run(parse.GetValue(model)!, parse.GetValue(adapter), ParseIds(parse.GetValue(ids)!), parse.GetValue(bidirectional),
            parse.GetValue(output)!, parse.GetValue(device), parse.GetValue(precision), parse.GetValue(weights), stdout));
        return command;
    }

    public static int[] ParseIds(string text)
    {
        var parts = text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length == 0) throw new DiffuException("--ids is empty");
        var ids = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!int.TryParse(parts[i], out ids[i]) || ids[i] < 0)
                throw new DiffuException($"--ids: '{parts[i]}' is not a non-negative integer token id");
        return ids;
    }

    static int Run(string modelDir, string? adapter, int[] ids, bool bidirectional, string outPath, string? deviceName, string? precision, string? weights,
        TextWriter stdout)
    {
        ModelFolder.RequireRegularFiles(modelDir, "model file");
        var inputs = ModelFolder.Files(modelDir).Concat(adapter is null ? [] : ModelFolder.Files(adapter)).ToArray();
        OutputFile.Check(outPath, "--out", inputs);
        using var device = Cli.CreateDevice(deviceName, precision);
        using var model = ModelLoader.Load(modelDir, device, adapter, Cli.WeightType(weights, modelDir));
        var mode = bidirectional ? AttentionMaskMode.Bidirectional : AttentionMaskMode.Causal;
        float[] logits;
        using (var result = model.Logits(ids, 1, ids.Length, mode)) logits = device.ToArray(result.Logits);
        var metadata = new Dictionary<string, string>
        {
            ["ids"] = string.Join(",", ids),
            ["attention"] = bidirectional ? "bidirectional" : "causal",
            ["device"] = device.Name,
        };
        OutputFile.Write(outPath, "--out",
            stream => SafeTensorsWriter.Write(stream, [SafeTensorsEntry.FromFloat32("logits", [ids.Length, model.VocabSize], logits)], metadata),
            inputs);
        stdout.WriteLine($"wrote logits [{ids.Length}, {model.VocabSize}] ({metadata["attention"]}, {device.Name}) to {outPath}");
        return Cli.Ok;
    }
}
