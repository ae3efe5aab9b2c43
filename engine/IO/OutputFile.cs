using System.Diagnostics;

namespace DiffuSharp.IO;

/// <summary>
/// A named output file (--out, --json, a plot): the data goes to a temporary file in the target's folder,
/// is flushed to disk and renamed over the target only when complete, so a failure or a kill never leaves
/// a half-written target. Only a regular file is replaced (renaming over /dev/full or a FIFO would replace
/// the node itself), and never one the same command reads. Temporary names carry the process id, so a
/// later write to the same target removes those of processes that no longer exist.
/// </summary>
public static class OutputFile
{
    /// <summary>Refuses a target that cannot be written safely; commands call it before the work that produces the data.</summary>
    /// <param name="what">the option or role named in messages, e.g. "--out"</param>
    /// <param name="inputs">files the command reads: the target may be none of them (compared by device and inode)</param>
    public static void Check(string path, string what, IEnumerable<string>? inputs = null)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new DiffuException($"{what}: the path is empty");
        if (Path.EndsInDirectorySeparator(path)) throw new DiffuException($"{what} {path} names a folder, not a file");
        string folder = Path.GetDirectoryName(Target(path))!;
        if (FileStatus.Kind(folder) != FileKind.Directory) throw new DiffuException($"{what}: output folder {folder} does not exist");
        var kind = FileStatus.Kind(path);
        if (kind is not (FileKind.Missing or FileKind.RegularFile))
            throw new DiffuException($"{what} {path} is {FileStatus.Describe(kind)}; only a regular file is replaced");
        foreach (var input in inputs ?? [])
            if (FileStatus.SameFile(path, input)) throw new DiffuException($"{what} {path} is the same file as the input {input}");
    }

    /// <summary>Creates <paramref name="path"/> (which must not exist) with <paramref name="bytes"/>, flushed to disk: a file of a folder being staged.</summary>
    public static void WriteNew(string path, byte[] bytes)
    {
        using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None);
        stream.Write(bytes);
        stream.Flush(flushToDisk: true);
    }

    /// <summary>Writes the target through a temporary file: <paramref name="write"/> fills the stream; on any error the target is untouched.</summary>
    public static void Write(string path, string what, Action<Stream> write, IEnumerable<string>? inputs = null)
    {
        Check(path, what, inputs);
        string target = Target(path);
        RemoveStaleTemporaries(target);
        string temp = TemporaryPath(target);
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            // Again just before the rename: the target may have been replaced while the data was written.
            Check(path, what, inputs);
            File.Move(temp, target, overwrite: true);
        }
        catch
        {
            File.Delete(temp);
            throw;
        }
    }

    /// <summary>A new temporary name beside <paramref name="path"/> that names this process (also for scratch files).</summary>
    public static string TemporaryPath(string path) =>
        Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, $"{Prefix(path)}{Environment.ProcessId}-{Guid.NewGuid():N}.tmp");

    /// <summary>Deletes the temporary files of <paramref name="path"/> left by processes that no longer run (killed by SIGKILL).</summary>
    public static void RemoveStaleTemporaries(string path)
    {
        string prefix = Prefix(path);
        foreach (var file in Directory.EnumerateFiles(Path.GetDirectoryName(Path.GetFullPath(path))!, "*.tmp"))
        {
            string name = Path.GetFileName(file);
            if (!name.StartsWith(prefix, StringComparison.Ordinal)) continue;
            string owner = name[prefix.Length..].Split('-')[0];
            if (int.TryParse(owner, out int pid) && !Running(pid) && FileStatus.Kind(file) == FileKind.RegularFile) File.Delete(file);
        }
    }

    static string Prefix(string path) => $".{Path.GetFileName(path)}.";

    /// <summary>The file a write replaces: the final target of a symbolic link (written through, as a shell redirection does), else the path.</summary>
    static string Target(string path)
    {
        var info = new FileInfo(path);
        return info.LinkTarget is null ? info.FullName : info.ResolveLinkTarget(returnFinalTarget: true)!.FullName;
    }

    static bool Running(int pid)
    {
        try
        {
            using var process = Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException)
        {
            return false;
        }
    }
}
