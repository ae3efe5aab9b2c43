using System.Globalization;

namespace DiffuSharp.IO;

/// <summary>
/// Where a training run keeps its files: <c>checkpoints/step-NNNNNNNN/</c> (each a complete HF model
/// folder, made under a hidden staging name and renamed into place in one step), <c>train_log.jsonl</c>
/// and <c>loss.png</c>. A run folder stands for its newest checkpoint wherever a model folder is expected.
/// </summary>
public static class RunLayout
{
    public const string CheckpointsFolder = "checkpoints", LogFile = "train_log.jsonl", PlotFile = "loss.png", LockFile = ".lock";

    /// <summary>A model folder's weights and config (HF's names).</summary>
    public const string ModelFile = "model.safetensors", ConfigFile = "config.json";

    const string StepPrefix = "step-";

    public static string StepFolderName(long step) => StepPrefix + step.ToString("D8", CultureInfo.InvariantCulture);

    /// <summary>The run's complete checkpoints, oldest first. Staging and half-deleted folders have hidden names and are not listed.</summary>
    public static List<(long Step, string Path)> Checkpoints(string runFolder)
    {
        var root = Path.Combine(runFolder, CheckpointsFolder);
        var found = new List<(long, string)>();
        if (!Directory.Exists(root)) return found;
        foreach (var dir in Directory.EnumerateDirectories(root))
        {
            var name = Path.GetFileName(dir);
            if (name.StartsWith(StepPrefix, StringComparison.Ordinal)
                && long.TryParse(name.AsSpan(StepPrefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out long step))
                found.Add((step, dir));
        }
        found.Sort((a, b) => a.Item1.CompareTo(b.Item1));
        return found;
    }

    /// <summary>The newest complete checkpoint folder of a run, if it has one.</summary>
    public static string? LatestCheckpoint(string runFolder) => Checkpoints(runFolder) is { Count: > 0 } all ? all[^1].Path : null;

    /// <summary>The model folder a path names: a run folder's newest checkpoint, else the path itself.</summary>
    public static string ModelFolder(string path) => Directory.Exists(path) ? LatestCheckpoint(path) ?? path : path;
}
