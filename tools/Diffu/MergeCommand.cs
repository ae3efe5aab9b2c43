using System.CommandLine;
using DiffuSharp.IO;
using DiffuSharp.Lora;
using DiffuSharp.Models;
using DiffuSharp.Runtime;
using DiffuSharp.Training;

namespace DiffuSharp.Cli;

/// <summary>`diffu merge`: a LoRA adapter folded into its base, written as a complete model folder.</summary>
static class MergeCommand
{
    public static Command Create(TextWriter stdout)
    {
        var model = Cli.NonEmpty(new Option<string>("--model")
        {
            Description = "the base model folder with --adapter, or a LoRA run or adapter folder alone (its base is in adapter_config.json)",
            Required = true,
        });
        var adapter = Cli.AdapterOption();
        var output = Cli.NonEmpty(new Option<string>("--out") { Description = "new folder for model.safetensors, config.json and the tokenizer (must not exist)", Required = true });
        var tokenizer = ModelFolder.TokenizerOption();
        var device = Cli.DeviceOption();
        var saveDtype = Cli.SaveDtypeOption("the type the base checkpoint stores; the merge itself runs in float32");
        var command = new Command("merge", "fold a LoRA adapter into its base model: W += (alpha / r) B A, and any trained embedding")
        {
            model, adapter, output, tokenizer, device, saveDtype,
        };
        command.SetAction(parse => Run(parse.GetValue(model)!, parse.GetValue(adapter), parse.GetValue(output)!, parse.GetValue(tokenizer), parse.GetValue(device),
            parse.GetValue(saveDtype), stdout));
        return command;
    }

    /// <summary>Checks everything, then writes the folder under a staging name and renames it into place: --out appears whole or not at all.</summary>
    static int Run(string modelDir, string? adapterDir, string outDir, string? tokenizerOption, string? deviceName, string? saveDtype, TextWriter stdout)
    {
        ModelFolder.RequireRegularFiles(modelDir, "model file");
        if (adapterDir is not null) ModelFolder.RequireRegularFiles(adapterDir, "adapter file");
        string target = Path.GetFullPath(outDir);
        if (FileStatus.Kind(target) != FileKind.Missing) throw new DiffuException($"--out {outDir} already exists: merge into a new folder");
        string parent = Path.GetDirectoryName(Path.TrimEndingDirectorySeparator(target))!;
        if (FileStatus.Kind(parent) != FileKind.Directory) throw new DiffuException($"--out: folder {parent} does not exist");
        var config = ModelLoader.LoadConfig(modelDir);
        string tokenizerSource = TokenizerSource(adapterDir ?? modelDir, modelDir, tokenizerOption);
        ModelFolder.Tokenizer(tokenizerSource, config, null);
        var tokenizer = Checkpoint.ReadTokenizer(tokenizerSource);

        var saveType = saveDtype is null ? ModelLoader.StoredType(modelDir) : WeightTypes.Concrete[saveDtype];
        using var device = Cli.CreateDevice(deviceName, null);
        using var loaded = ModelLoader.Load(modelDir, device, adapterDir, DType.F32);
        if (loaded is not LoraModel lora) throw new DiffuException($"{modelDir}: no LoRA adapter to merge (give --adapter DIR, or a LoRA run folder as --model)");
        var merged = lora.MergeIntoBase();
        string staging = Path.Combine(parent, $".{Path.GetFileName(target)}.merging-{Environment.ProcessId}");
        Directory.CreateDirectory(staging);
        try
        {
            merged.WriteFiles(staging, new Dictionary<string, string> { ["format"] = "pt" }, null, saveType);
            foreach (var (name, bytes) in tokenizer) OutputFile.WriteNew(Path.Combine(staging, name), bytes);
            Directory.Move(staging, target);
        }
        catch
        {
            Directory.Delete(staging, recursive: true);
            throw;
        }
        stdout.WriteLine($"merged {lora.Adapters.Modules.Count} adapters (rank {lora.Adapters.Rank}, scale {lora.Adapters.Scale:g4})"
            + $"{(lora.TrainsEmbeddings ? " and the trained token embedding" : "")} into {lora.BaseModelPath} -> {outDir} ({merged.ParameterCount:N0} parameters, saved as {WeightTypes.Name(saveType)})");
        return Cli.Ok;
    }

    /// <summary>The tokenizer files the merged folder carries: the adapter folder's own, else the base's, else --tokenizer.</summary>
    static string TokenizerSource(string adapterDir, string modelDir, string? option)
    {
        foreach (var place in new[] { RunLayout.ModelFolder(adapterDir), RunLayout.ModelFolder(modelDir) })
        {
            if (Checkpoint.HasTokenizer(place)) return place;
            if (PeftAdapter.IsAdapterFolder(place) && Checkpoint.HasTokenizer(PeftAdapter.BaseModelPath(place))) return PeftAdapter.BaseModelPath(place);
        }
        return option ?? Environment.GetEnvironmentVariable("DIFFU_TOKENIZER") ?? throw new DiffuException($"{modelDir}: no tokenizer to copy into the merged folder: pass --tokenizer DIR");
    }
}
