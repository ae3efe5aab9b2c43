using System.Globalization;
using System.Text.Json;
using DiffuSharp.IO;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Training;

/// <summary>What a checkpoint folder holds besides the weights, to continue a run exactly.</summary>
public sealed record TrainingState(long Step, TrainOptions Options, long[] DataState);

/// <summary>
/// An HF-style checkpoint folder: model.safetensors (HF names, F32), config.json (with mask_token_id),
/// the tokenizer files, and training_state.safetensors (AdamW moments; step, options and data position in
/// its metadata). <see cref="Write"/> fills a fresh folder; making it appear whole is <see cref="RunFolder"/>'s job.
/// </summary>
public static class Checkpoint
{
    public const string StateFile = "training_state.safetensors";

    static readonly JsonSerializerOptions Json = new() { WriteIndented = false, Converters = { new System.Text.Json.Serialization.JsonStringEnumConverter() } };

    /// <summary>
    /// Writes every file of a checkpoint into <paramref name="directory"/> (empty), each flushed to disk: the model's
    /// own (<see cref="ITrainableModel.WriteFiles"/>), the training state and the tokenizer.
    /// </summary>
    public static void Write(string directory, ITrainableModel model, IParameterSet? moment1, IParameterSet? moment2, TrainingState? state,
        IReadOnlyList<(string Name, byte[] Bytes)>? tokenizer, int? maskTokenId, DType? saveType = null)
    {
        var device = model.Device;
        string step = (state?.Step ?? 0).ToString(CultureInfo.InvariantCulture);
        static IEnumerable<SafeTensorsEntry> Entries(Device device, IParameterSet set, string prefix) =>
            set.Named().Select(p => SafeTensorsEntry.DeferredFloat32(prefix + p.Name, p.Tensor.Shape, () => device.ToArray(p.Tensor)));
        model.WriteFiles(directory, new Dictionary<string, string> { ["format"] = "pt", ["step"] = step }, maskTokenId, saveType);
        CrashPoints.Reach("checkpoint-model-written");
        if (state is not null && moment1 is not null && moment2 is not null)
        {
            SafeTensorsWriter.Write(Path.Combine(directory, StateFile), Entries(device, moment1, "adam.m.").Concat(Entries(device, moment2, "adam.v.")),
                new Dictionary<string, string>
                {
                    ["step"] = step,
                    ["options"] = JsonSerializer.Serialize(state.Options, Json),
                    ["data_state"] = string.Join(",", state.DataState),
                });
            CrashPoints.Reach("checkpoint-state-written");
        }
        foreach (var (name, bytes) in tokenizer ?? []) OutputFile.WriteNew(Path.Combine(directory, name), bytes);
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

    /// <summary>
    /// The tokenizer a run's checkpoints carry, read once when the run starts: GPT-2 BPE files under HF's names
    /// (vocab.json, merges.txt), or a LLaMA tokenizer.model / llama2.c tokenizer.bin (the file or a folder holding
    /// it). Held in memory, so later checkpoints never depend on the source (or on a pruned checkpoint) still being there.
    /// </summary>
    public static IReadOnlyList<(string Name, byte[] Bytes)> ReadTokenizer(string source) =>
        (TokenizerFiles(source) ?? throw new DiffuException(Directory.Exists(source) || File.Exists(source)
            ? $"{source}: no tokenizer files (vocab.json + merges.txt, encoder.json + vocab.bpe, tokenizer.model or tokenizer.bin) to copy into the checkpoint"
            : $"{source}: tokenizer folder or file not found"))
        .Select(f => (f.Name, File.ReadAllBytes(f.From))).ToArray();

    /// <summary>The options of the run saved in a checkpoint folder (or a run folder's newest).</summary>
    public static TrainOptions LoadOptions(string directory)
    {
        directory = RunLayout.ModelFolder(directory);
        string path = Path.Combine(directory, StateFile);
        if (!File.Exists(path)) throw new DiffuException($"{directory}: no {StateFile}, so there is no run to resume (is this a training output folder?)");
        using var file = SafeTensorsFile.Open(path);
        return ReadOptions(file);
    }

    static TrainOptions ReadOptions(SafeTensorsFile file) =>
        file.Metadata.TryGetValue("options", out var json)
            ? JsonSerializer.Deserialize<TrainOptions>(json, Json) ?? throw new DiffuException($"{file.FilePath}: empty options")
            : throw new DiffuException($"{file.FilePath}: metadata has no 'options'");

    /// <summary>Reads the training state of a checkpoint and loads the AdamW moments onto the model's device.</summary>
    public static (TrainingState State, IParameterSet Moment1, IParameterSet Moment2) LoadState(string directory, ITrainableModel model)
    {
        string path = Path.Combine(directory, StateFile);
        if (!File.Exists(path)) throw new DiffuException($"{directory}: no {StateFile}, so there is no run to resume (is this a training output folder?)");
        using var file = SafeTensorsFile.Open(path);
        string Meta(string key) => file.Metadata.TryGetValue(key, out var v) ? v : throw new DiffuException($"{path}: metadata has no '{key}'");
        long step = long.Parse(Meta("step"), CultureInfo.InvariantCulture);
        using (var weights = SafeTensorsFile.Open(Path.Combine(directory, model.WeightsFile)))
            if (!weights.Metadata.TryGetValue("step", out var modelStep) || modelStep != Meta("step"))
                throw new DiffuException($"{directory}: {model.WeightsFile} (step {modelStep ?? "?"}) and {StateFile} (step {step}) are from different steps");
        var options = ReadOptions(file);
        var dataState = Meta("data_state").Split(',', StringSplitOptions.RemoveEmptyEntries).Select(s => long.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        IParameterSet Moments(string prefix)
        {
            var set = model.ZeroParameterSet();
            try
            {
                foreach (var (name, view) in set.Named())
                {
                    if (!file.Info(prefix + name).Shape.AsSpan().SequenceEqual(view.Shape)) throw new DiffuException($"{path}: '{prefix}{name}' has the wrong shape");
                    model.Device.Upload(view, 0, file.ReadFloat32(prefix + name));
                }
                return set;
            }
            catch
            {
                set.Dispose();
                throw;
            }
        }
        var m = Moments("adam.m.");
        try { return (new TrainingState(step, options, dataState), m, Moments("adam.v.")); }
        catch { m.Dispose(); throw; }
    }
}
