using System.Globalization;
using System.Text.Json;
using DiffuSharp.IO;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Training;

/// <summary>What a checkpoint folder holds besides the weights, to continue a run exactly.</summary>
public sealed record TrainingState(long Step, TrainOptions Options, long[] DataState);

/// <summary>
/// An HF-style checkpoint folder: model.safetensors (HF GPT-2 names, F32), config.json (with
/// mask_token_id), the tokenizer files, and training_state.safetensors (AdamW moments; step, options and
/// data position in its metadata). Every file is written under a temporary name first and the renames
/// come last, so a run killed while saving leaves the previous checkpoint intact.
/// </summary>
public static class Checkpoint
{
    public const string ModelFile = "model.safetensors", ConfigFile = "config.json", StateFile = "training_state.safetensors";

    static readonly JsonSerializerOptions Json = new() { WriteIndented = false, Converters = { new System.Text.Json.Serialization.JsonStringEnumConverter() } };

    public static void Save(string directory, ITrainableModel model, IParameterSet? moment1, IParameterSet? moment2, TrainingState? state,
        string? tokenizer, int? maskTokenId)
    {
        Directory.CreateDirectory(directory);
        var device = model.Device;
        string step = (state?.Step ?? 0).ToString(CultureInfo.InvariantCulture);
        var pending = new List<(string Temp, string Final)>();
        string Stage(string name) { var tmp = Path.Combine(directory, $".{name}.next"); pending.Add((tmp, Path.Combine(directory, name))); return tmp; }
        try
        {
            SafeTensorWriter.Write(Stage(ModelFile),
                model.Parameters.Named().Select(p => SafeTensorEntry.FromFloat32(p.Name, p.Tensor.Shape, device.ToArray(p.Tensor))),
                new Dictionary<string, string> { ["format"] = "pt", ["step"] = step });
            File.WriteAllText(Stage(ConfigFile), model.ConfigJson(maskTokenId).ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
            if (state is not null && moment1 is not null && moment2 is not null)
            {
                var entries = moment1.Named().Select(p => SafeTensorEntry.FromFloat32("adam.m." + p.Name, p.Tensor.Shape, device.ToArray(p.Tensor)))
                    .Concat(moment2.Named().Select(p => SafeTensorEntry.FromFloat32("adam.v." + p.Name, p.Tensor.Shape, device.ToArray(p.Tensor))));
                SafeTensorWriter.Write(Stage(StateFile), entries, new Dictionary<string, string>
                {
                    ["step"] = step,
                    ["options"] = JsonSerializer.Serialize(state.Options, Json),
                    ["data_state"] = string.Join(",", state.DataState),
                });
            }
            if (tokenizer is not null) StageTokenizer(tokenizer, directory, Stage);
            foreach (var (temp, final) in pending) File.Move(temp, final, overwrite: true);
        }
        finally
        {
            foreach (var (temp, _) in pending) if (File.Exists(temp)) File.Delete(temp);
        }
    }

    /// <summary>
    /// Copies the tokenizer into the checkpoint: GPT-2 BPE files under HF's names (vocab.json, merges.txt),
    /// or a LLaMA tokenizer.model / llama2.c tokenizer.bin (given as the file or a folder holding it).
    /// </summary>
    static void StageTokenizer(string source, string directory, Func<string, string> stage)
    {
        if (Directory.Exists(source) && Path.GetFullPath(source) == Path.GetFullPath(directory)) return;
        var copies = TokenizerFiles(source) ?? throw new DiffuException(
            $"{source}: no tokenizer files (vocab.json + merges.txt, encoder.json + vocab.bpe, tokenizer.model or tokenizer.bin) to copy into the checkpoint");
        foreach (var (from, name) in copies)
        {
            var to = stage(name);
            File.Copy(from, to, overwrite: true);
            File.SetAttributes(to, FileAttributes.Normal);
        }
    }

    static (string From, string Name)[]? TokenizerFiles(string source)
    {
        if (File.Exists(source))
            return Path.GetExtension(source) switch
            {
                ".model" => [(source, "tokenizer.model")],
                ".bin" => [(source, "tokenizer.bin")],
                _ => null,
            };
        foreach (var (vocab, merges) in new[] { ("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe") })
            if (File.Exists(Path.Combine(source, vocab)) && File.Exists(Path.Combine(source, merges)))
                return [(Path.Combine(source, vocab), "vocab.json"), (Path.Combine(source, merges), "merges.txt")];
        foreach (var name in new[] { "tokenizer.model", "tokenizer.bin" })
            if (File.Exists(Path.Combine(source, name))) return [(Path.Combine(source, name), name)];
        return null;
    }

    /// <summary>Whether a folder or file holds a tokenizer the checkpoint can carry.</summary>
    public static bool HasTokenizer(string source) => TokenizerFiles(source) is not null;

    /// <summary>The options of the run saved in a checkpoint folder.</summary>
    public static TrainOptions LoadOptions(string directory)
    {
        string path = Path.Combine(directory, StateFile);
        if (!File.Exists(path)) throw new DiffuException($"{directory}: no {StateFile}, so there is no run to resume (is this a training output folder?)");
        using var file = SafeTensorFile.Open(path);
        return ReadOptions(file);
    }

    static TrainOptions ReadOptions(SafeTensorFile file) =>
        file.Metadata.TryGetValue("options", out var json)
            ? JsonSerializer.Deserialize<TrainOptions>(json, Json) ?? throw new DiffuException($"{file.FilePath}: empty options")
            : throw new DiffuException($"{file.FilePath}: metadata has no 'options'");

    /// <summary>Reads the training state of a checkpoint and loads the AdamW moments onto the model's device.</summary>
    public static (TrainingState State, IParameterSet Moment1, IParameterSet Moment2) LoadState(string directory, ITrainableModel model)
    {
        string path = Path.Combine(directory, StateFile);
        if (!File.Exists(path)) throw new DiffuException($"{directory}: no {StateFile}, so there is no run to resume (is this a training output folder?)");
        using var file = SafeTensorFile.Open(path);
        string Meta(string key) => file.Metadata.TryGetValue(key, out var v) ? v : throw new DiffuException($"{path}: metadata has no '{key}'");
        long step = long.Parse(Meta("step"), CultureInfo.InvariantCulture);
        using (var weights = SafeTensorFile.Open(Path.Combine(directory, ModelFile)))
            if (!weights.Metadata.TryGetValue("step", out var modelStep) || modelStep != Meta("step"))
                throw new DiffuException($"{directory}: {ModelFile} (step {modelStep ?? "?"}) and {StateFile} (step {step}) are from different steps");
        var options = ReadOptions(file);
        var dataState = Meta("data_state").Split(',', StringSplitOptions.RemoveEmptyEntries).Select(s => long.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        IParameterSet Moments(string prefix) => model.CreateParameterSet((name, shape) =>
        {
            var info = file.Info(prefix + name);
            if (!info.Shape.AsSpan().SequenceEqual(shape)) throw new DiffuException($"{path}: '{prefix}{name}' has the wrong shape");
            return model.Device.FromArray(file.ReadFloat32(prefix + name), shape);
        });
        var m = Moments("adam.m.");
        try { return (new TrainingState(step, options, dataState), m, Moments("adam.v.")); }
        catch { m.Dispose(); throw; }
    }
}
