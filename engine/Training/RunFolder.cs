using DiffuSharp.IO;

namespace DiffuSharp.Training;

/// <summary>
/// A training run's output folder (layout: <see cref="RunLayout"/>), held by one process at a time through
/// an exclusive OS lock on its lock file: the kernel drops the lock when the holder dies, so no stale marker
/// can block a later run. Checkpoints are written into a hidden staging folder and renamed into place, so
/// after a kill at any instant the folder holds the previous complete checkpoint or the new one; only the newest
/// few are kept. Leftovers of a killed save are removed when the folder is opened again.
/// </summary>
public sealed class RunFolder : IDisposable
{
    const string StagingSuffix = ".partial", DeletingSuffix = ".deleting";

    /// <summary>What earlier versions named their staged files (.model.safetensors.next, .next.tmp-GUID).</summary>
    const string FlatStagingMarker = ".next";

    /// <summary>
    /// Files that earlier versions kept at the top of the run folder. Such a folder is recognised by its
    /// training state; it still resumes, and <see cref="Clear"/> removes these files only from such a folder.
    /// </summary>
    static readonly string[] FlatCheckpointFiles =
        [RunLayout.ModelFile, RunLayout.ConfigFile, Checkpoint.StateFile, "vocab.json", "merges.txt", "tokenizer.model", "tokenizer.bin"];

    readonly FileStream lockStream;
    readonly bool created;

    RunFolder(string path, FileStream lockStream, bool created)
    {
        Path = path;
        this.lockStream = lockStream;
        this.created = created;
    }

    public string Path { get; }

    public string LogPath => System.IO.Path.Combine(Path, RunLayout.LogFile);
    public string PlotPath => System.IO.Path.Combine(Path, RunLayout.PlotFile);

    /// <summary>
    /// Takes the folder (creating it if needed) for this process, or fails at once, naming the folder, when
    /// another process holds it. Removes what a killed save left behind. A model folder that is not a run
    /// (config.json or weights without a training state) is refused untouched: a run never mixes its files in.
    /// </summary>
    public static RunFolder Open(string path)
    {
        path = System.IO.Path.GetFullPath(path);
        if (File.Exists(path)) throw new DiffuException($"{path}: is a file, not an output folder");
        if (IsModelFolder(path))
            throw new DiffuException($"{path}: holds a model (config.json or weights) that no training run wrote; choose another output folder");
        bool created = !Directory.Exists(path);
        Directory.CreateDirectory(path);
        FileStream stream;
        try
        {
            stream = new FileStream(System.IO.Path.Combine(path, RunLayout.LockFile), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException e) when (e is not FileNotFoundException and not DirectoryNotFoundException)
        {
            throw new DiffuException($"{path}: another process is writing to this output folder (it holds {RunLayout.LockFile}); wait for it or choose another --out");
        }
        var folder = new RunFolder(path, stream, created);
        folder.RemoveLeftovers();
        return folder;
    }

    /// <summary>The newest complete checkpoint: a step folder, or the top folder itself in the older flat layout.</summary>
    public string? LatestCheckpoint => RunLayout.LatestCheckpoint(Path) ?? (IsFlatRun(Path) ? Path : null);

    /// <summary>Whether the folder holds anything of an earlier run (checkpoints, a log, a plot).</summary>
    public bool HoldsRun =>
        Directory.Exists(System.IO.Path.Combine(Path, RunLayout.CheckpointsFolder)) || File.Exists(LogPath) || File.Exists(PlotPath) || IsFlatRun(Path);

    static bool IsFlatRun(string path) => File.Exists(System.IO.Path.Combine(path, Checkpoint.StateFile));

    static bool IsModelFolder(string path) =>
        !IsFlatRun(path) && new[] { RunLayout.ConfigFile, RunLayout.ModelFile, SafeTensorsCheckpoint.IndexFileName, Lora.PeftAdapter.ConfigFile }.Any(name => File.Exists(System.IO.Path.Combine(path, name)));

    /// <summary>
    /// Refuses a run whose checkpoints cannot fit on this folder's disk: <paramref name="keep"/> complete ones plus
    /// the one being written, counting the space this folder's checkpoints already take (they are replaced as it goes).
    /// </summary>
    public void RequireSpace(long checkpointBytes, int keep)
    {
        long need = checkpointBytes > long.MaxValue / (keep + 1L) ? long.MaxValue : checkpointBytes * (keep + 1L);
        var checkpoints = new DirectoryInfo(System.IO.Path.Combine(Path, RunLayout.CheckpointsFolder));
        long held = checkpoints.Exists ? checkpoints.EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length) : 0;
        long free = new DriveInfo(Path).AvailableFreeSpace;
        if (free + held < need)
            throw new DiffuException($"{Path}: {keep} checkpoint(s) of about {Runtime.DeviceMemory.Format(checkpointBytes)} plus the one being written need "
                + $"{Runtime.DeviceMemory.Format(need)}, but the disk has {Runtime.DeviceMemory.Format(free + held)} for them (free up space, lower --keep or choose another --out)");
    }

    /// <summary>Removes everything an earlier run wrote here (asked for with --overwrite); other files are left alone.</summary>
    public void Clear()
    {
        var checkpoints = System.IO.Path.Combine(Path, RunLayout.CheckpointsFolder);
        if (Directory.Exists(checkpoints)) Directory.Delete(checkpoints, recursive: true);
        var names = new[] { RunLayout.LogFile, RunLayout.PlotFile }.AsEnumerable();
        if (IsFlatRun(Path)) names = names.Concat(FlatCheckpointFiles);
        foreach (var name in names) File.Delete(System.IO.Path.Combine(Path, name));
    }

    /// <summary>
    /// Writes the checkpoint of <paramref name="step"/>: <paramref name="write"/> fills an empty staging
    /// folder (its files flushed to disk), which is then renamed to its step name; then all but the newest
    /// <paramref name="keep"/> checkpoints are removed.
    /// </summary>
    public string SaveCheckpoint(long step, int keep, Action<string> write)
    {
        var root = Directory.CreateDirectory(System.IO.Path.Combine(Path, RunLayout.CheckpointsFolder)).FullName;
        string name = RunLayout.StepFolderName(step);
        string staging = System.IO.Path.Combine(root, "." + name + StagingSuffix), final = System.IO.Path.Combine(root, name);
        if (Directory.Exists(staging)) Directory.Delete(staging, recursive: true);
        Directory.CreateDirectory(staging);
        try
        {
            write(staging);
            CrashPoints.Reach("checkpoint-staged");
            if (Directory.Exists(final)) Retire(final);
            Directory.Move(staging, final);
        }
        catch
        {
            if (Directory.Exists(staging)) Directory.Delete(staging, recursive: true);
            throw;
        }
        CrashPoints.Reach("checkpoint-renamed");
        Prune(keep);
        return final;
    }

    /// <summary>Removes all but the newest <paramref name="keep"/> checkpoints (also what a save killed before its pruning left).</summary>
    public void Prune(int keep)
    {
        if (keep < 1) throw new ArgumentOutOfRangeException(nameof(keep), keep, "at least one checkpoint must stay");
        var all = RunLayout.Checkpoints(Path);
        for (int i = 0; i < all.Count - keep; i++) Retire(all[i].Path);
    }

    /// <summary>
    /// Replaces a file of the run folder (the log, the plot) through a temporary file and a rename, so a
    /// reader or a kill never sees it half written.
    /// </summary>
    public void ReplaceFile(string name, Action<string> write)
    {
        string target = System.IO.Path.Combine(Path, name), temp = System.IO.Path.Combine(Path, "." + name + StagingSuffix);
        try
        {
            write(temp);
            CrashPoints.Reach("file-staged");
            File.Move(temp, target, overwrite: true);
        }
        finally
        {
            File.Delete(temp);
        }
    }

    /// <summary>Hides a checkpoint under a name no reader takes, then deletes it: a kill halfway leaves no half folder that looks complete.</summary>
    static void Retire(string checkpoint)
    {
        string hidden = System.IO.Path.Combine(System.IO.Path.GetDirectoryName(checkpoint)!, "." + System.IO.Path.GetFileName(checkpoint) + DeletingSuffix);
        if (Directory.Exists(hidden)) Directory.Delete(hidden, recursive: true);
        Directory.Move(checkpoint, hidden);
        CrashPoints.Reach("checkpoint-retired");
        Directory.Delete(hidden, recursive: true);
    }

    /// <summary>Staging and half-deleted folders and temporary files of a process that was killed while writing.</summary>
    void RemoveLeftovers()
    {
        var root = System.IO.Path.Combine(Path, RunLayout.CheckpointsFolder);
        if (Directory.Exists(root))
            foreach (var dir in Directory.EnumerateDirectories(root, ".*"))
                if (dir.EndsWith(StagingSuffix, StringComparison.Ordinal) || dir.EndsWith(DeletingSuffix, StringComparison.Ordinal))
                    Directory.Delete(dir, recursive: true);
        foreach (var file in Directory.EnumerateFiles(Path, ".*"))
            if (file.EndsWith(StagingSuffix, StringComparison.Ordinal) || file.Contains(FlatStagingMarker, StringComparison.Ordinal))
                File.Delete(file);
    }

    /// <summary>Releases the lock; a folder this process created and left empty (a run refused before its first write) is removed.</summary>
    public void Dispose()
    {
        bool unused = created && Directory.EnumerateFileSystemEntries(Path).All(e => System.IO.Path.GetFileName(e) == RunLayout.LockFile);
        if (unused) File.Delete(System.IO.Path.Combine(Path, RunLayout.LockFile));
        lockStream.Dispose();
        if (unused)
        {
            try { Directory.Delete(Path); }
            catch (IOException) { } // another process has just taken it
        }
    }
}
