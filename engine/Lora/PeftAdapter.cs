using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using DiffuSharp.IO;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Lora;

/// <summary>
/// A PEFT LoRA folder: adapter_model.safetensors (<c>base_model.model.{module}.lora_A.weight</c> / <c>lora_B.weight</c>,
/// and <c>base_model.model.{name}</c> for each fully trained base tensor, PEFT's modules_to_save) and adapter_config.json
/// (peft_type LORA, r, lora_alpha, target_modules, modules_to_save, base_model_name_or_path). Folders written by PEFT
/// load too: target_modules as a list of name suffixes, "all-linear" or a regular expression; use_rslora honoured;
/// DoRA and trained biases refused.
/// </summary>
public static class PeftAdapter
{
    public const string WeightsFile = "adapter_model.safetensors", ConfigFile = "adapter_config.json", Prefix = "base_model.model.";

    /// <summary>Whether <paramref name="directory"/> holds an adapter (adapter_config.json) rather than a model.</summary>
    public static bool IsAdapterFolder(string directory) => File.Exists(Path.Combine(directory, ConfigFile));

    /// <summary>The base model folder an adapter folder names, resolved against the adapter folder when relative.</summary>
    public static string BaseModelPath(string directory)
    {
        string configPath = Path.Combine(directory, ConfigFile);
        var name = JsonConfig.Load(configPath).String("base_model_name_or_path");
        if (string.IsNullOrWhiteSpace(name)) throw new ConfigException(configPath, "no base_model_name_or_path: give the base model with --model BASE --adapter DIR");
        string path = Path.IsPathRooted(name) ? name : Path.GetFullPath(Path.Combine(directory, name));
        if (!Directory.Exists(path))
            throw new ConfigException(configPath, $"the base model '{name}' is not a folder here: give it with --model BASE --adapter {directory}");
        return path;
    }

    /// <summary>
    /// Writes the model's adapters (and trained embedding), stored as <paramref name="saveType"/>, and its PEFT config into
    /// <paramref name="directory"/>, each flushed to disk.
    /// </summary>
    public static void Write(string directory, LoraModel model, IReadOnlyDictionary<string, string> metadata, DType saveType)
    {
        var entries = model.Parameters.Named().Select(n => ParameterEntries.Entry(n.Name, n.Tensor, saveType));
        SafeTensorsWriter.Write(Path.Combine(directory, WeightsFile), entries, metadata);
        var adapters = model.Adapters;
        var config = new JsonObject
        {
            ["peft_type"] = "LORA",
            ["task_type"] = "CAUSAL_LM",
            ["base_model_name_or_path"] = model.BaseModelPath,
            ["r"] = adapters.Rank,
            ["lora_alpha"] = adapters.Alpha,
            ["use_rslora"] = adapters.RankStabilized,
            ["lora_dropout"] = 0.0,
            ["bias"] = "none",
            ["fan_in_fan_out"] = adapters.Modules[0].Layer.Layout == Layers.WeightLayout.InputMajor,
            ["target_modules"] = new JsonArray(adapters.TargetModules.Select(m => (JsonNode)JsonValue.Create(m)!).ToArray()),
            ["modules_to_save"] = model.TrainsEmbeddings ? new JsonArray(JsonValue.Create(Module(model.EmbeddingName))) : null,
        };
        OutputFile.WriteNew(Path.Combine(directory, ConfigFile),
            System.Text.Encoding.UTF8.GetBytes(config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n"));
    }

    /// <summary>"transformer.wte.weight" → "wte": the last module name, as PEFT lists modules_to_save.</summary>
    static string Module(string tensorName)
    {
        var parts = tensorName.Split('.');
        return parts[^2];
    }

    /// <summary>
    /// Reads an adapter folder for <paramref name="baseModel"/>: every tensor's shape is checked, trained base tensors are
    /// written into the base, the adapters attached. The model returned owns the base; on an error the caller still does.
    /// </summary>
    public static LoraModel Load(string directory, ITrainableModel baseModel, string baseModelPath)
    {
        string configPath = Path.Combine(directory, ConfigFile);
        if (!File.Exists(configPath)) throw new DiffuException($"{directory}: no {ConfigFile}, so this is not a LoRA adapter folder");
        var json = JsonConfig.Load(configPath);
        if (json.String("peft_type") is string type && type != "LORA") throw new ConfigException(configPath, $"peft_type is {type}; only LORA adapters are supported");
        if (json.Bool("use_dora", false)) throw new ConfigException(configPath, "DoRA adapters (use_dora) are not supported");
        if (json.String("bias") is string bias && bias != "none") throw new ConfigException(configPath, $"bias is \"{bias}\"; adapters that train biases are not supported");
        int rank = json.RequireInt("r");
        float alpha = json.FloatBetween("lora_alpha", 8, 0, float.MaxValue);
        var modules = baseModel.Projections().Where(TargetMatcher(json.Node("target_modules"), configPath)).ToList();
        if (modules.Count == 0) throw new ConfigException(configPath, "target_modules matches none of the model's projections");
        var saved = ModulesToSave(json.Node("modules_to_save"), configPath);
        var family = ModelFamily.Of(baseModel.Config);
        var unsupported = saved.Where(m => m != Module(family.TokenEmbeddingName)).ToList();
        if (unsupported.Count > 0)
            throw new ConfigException(configPath, $"modules_to_save lists {string.Join(", ", unsupported)}; only the token embedding ({Module(family.TokenEmbeddingName)}) is supported");
        var adapters = LoraSet.Zeros(baseModel.Device, modules, rank, alpha, json.Bool("use_rslora", false));
        try
        {
            var model = new LoraModel(baseModel, adapters, trainEmbeddings: saved.Count > 0, baseModelPath);
            using var file = SafeTensorsFile.Open(Path.Combine(directory, WeightsFile));
            foreach (var (name, view) in model.Parameters.Named())
            {
                var info = file.Info(name);
                if (!info.Shape.AsSpan().SequenceEqual(view.Shape))
                    throw new DiffuException($"{file.FilePath}: '{name}' has shape [{string.Join(", ", info.Shape)}], the base model implies {view.ShapeText}");
                baseModel.Device.UploadRounded(view, 0, file.ReadFloat32(name));
            }
            return model;
        }
        catch
        {
            adapters.Dispose();
            throw;
        }
    }

    /// <summary>PEFT's matching of target_modules: a list of names, each equal to a module name or a suffix after a dot; "all-linear"; or a regular expression over the whole name.</summary>
    static Func<(string Module, Layers.Linear Layer), bool> TargetMatcher(JsonNode? node, string configPath)
    {
        switch (node)
        {
            case JsonArray list:
                var names = list.Select(n => n is JsonValue v && v.TryGetValue(out string? s) && !string.IsNullOrEmpty(s) ? s
                    : throw new ConfigException(configPath, "target_modules must list module names")).ToList();
                return p => names.Any(n => p.Module == n || p.Module.EndsWith("." + n, StringComparison.Ordinal));
            case JsonValue value when value.TryGetValue(out string? text) && text == "all-linear":
                return _ => true;
            case JsonValue value when value.TryGetValue(out string? pattern):
                Regex regex;
                try { regex = new Regex($"^(?:{pattern})$", RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1)); }
                catch (ArgumentException e) { throw new ConfigException(configPath, $"target_modules is not a regular expression ({e.Message})"); }
                return p => regex.IsMatch(p.Module);
            default:
                throw new ConfigException(configPath, "target_modules is missing (a list of module names, \"all-linear\" or a regular expression)");
        }
    }

    static List<string> ModulesToSave(JsonNode? node, string configPath) => node switch
    {
        null => [],
        JsonArray list => list.Select(n => n is JsonValue v && v.TryGetValue(out string? s) && !string.IsNullOrEmpty(s) ? s
            : throw new ConfigException(configPath, "modules_to_save must list module names")).ToList(),
        _ => throw new ConfigException(configPath, "modules_to_save must be a list of module names or null"),
    };
}
