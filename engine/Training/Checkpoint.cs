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

    public static void Save(string directory, Gpt2Model model, Gpt2Weights? moment1, Gpt2Weights? moment2, TrainingState? state,
        string? tokenizerDirectory, int? maskTokenId)
    {
        Directory.CreateDirectory(directory);
        var device = model.Device;
        string step = (state?.Step ?? 0).ToString(CultureInfo.InvariantCulture);
        var pending = new List<(string Temp, string Final)>();
        string Stage(string name) { var tmp = Path.Combine(directory, $".{name}.next"); pending.Add((tmp, Path.Combine(directory, name))); return tmp; }
        try
        {
            SafeTensorWriter.Write(Stage(ModelFile),
                model.Weights.Named().Select(p => SafeTensorEntry.FromFloat32(p.Name, p.Tensor.Shape, device.ToArray(p.Tensor))),
                new Dictionary<string, string> { ["format"] = "pt", ["step"] = step });
            var config = model.Config with { MaskTokenId = maskTokenId ?? model.Config.MaskTokenId };
            File.WriteAllText(Stage(ConfigFile), config.ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
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
            if (tokenizerDirectory is not null) StageTokenizer(tokenizerDirectory, directory, Stage);
            foreach (var (temp, final) in pending) File.Move(temp, final, overwrite: true);
        }
        finally
        {
            foreach (var (temp, _) in pending) if (File.Exists(temp)) File.Delete(temp);
        }
    }

    /// <summary>Copies GPT-2 BPE files into the checkpoint under HF's names (vocab.json, merges.txt).</summary>
    static void StageTokenizer(string source, string directory, Func<string, string> stage)
    {
        if (Path.GetFullPath(source) == Path.GetFullPath(directory)) return;
        (string Vocab, string Merges)[] pairs = [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")];
        foreach (var (vocab, merges) in pairs)
        {
            string v = Path.Combine(source, vocab), m = Path.Combine(source, merges);
            if (!File.Exists(v) || !File.Exists(m)) continue;
            foreach (var (from, name) in new[] { (v, "vocab.json"), (m, "merges.txt") })
            {
                var to = stage(name);
                File.Copy(from, to, overwrite: true);
                File.SetAttributes(to, FileAttributes.Normal);
            }
            return;
        }
        throw new DiffuException($"{source}: no tokenizer files (vocab.json + merges.txt or encoder.json + vocab.bpe) to copy into the checkpoint");
    }

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

    /// <summary>Reads the training state of a checkpoint and loads the AdamW moments onto <paramref name="device"/>.</summary>
    public static (TrainingState State, Gpt2Weights Moment1, Gpt2Weights Moment2) LoadState(string directory, Gpt2Config config, Device device)
    {
        string path = Path.Combine(directory, StateFile);
        if (!File.Exists(path)) throw new DiffuException($"{directory}: no {StateFile}, so there is no run to resume (is this a training output folder?)");
        using var file = SafeTensorFile.Open(path);
        string Meta(string key) => file.Metadata.TryGetValue(key, out var v) ? v : throw new DiffuException($"{path}: metadata has no '{key}'");
        long step = long.Parse(Meta("step"), CultureInfo.InvariantCulture);
        using (var model = SafeTensorFile.Open(Path.Combine(directory, ModelFile)))
            if (!model.Metadata.TryGetValue("step", out var modelStep) || modelStep != Meta("step"))
                throw new DiffuException($"{directory}: {ModelFile} (step {modelStep ?? "?"}) and {StateFile} (step {step}) are from different steps");
        var options = ReadOptions(file);
        var dataState = Meta("data_state").Split(',', StringSplitOptions.RemoveEmptyEntries).Select(s => long.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        Gpt2Weights Moments(string prefix) => Gpt2Weights.Create(config, (name, shape) =>
        {
            var info = file.Info(prefix + name);
            if (!info.Shape.AsSpan().SequenceEqual(shape)) throw new DiffuException($"{path}: '{prefix}{name}' has the wrong shape");
            return device.FromArray(file.ReadFloat32(prefix + name), shape);
        });
        var m = Moments("adam.m.");
        try { return (new TrainingState(step, options, dataState), m, Moments("adam.v.")); }
        catch { m.Dispose(); throw; }
    }
}
