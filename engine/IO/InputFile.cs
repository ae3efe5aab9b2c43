namespace DiffuSharp.IO;

/// <summary>
/// Opens the files the engine reads. A path may name a directory, a device or a pseudo-file as well as a
/// regular file, and .NET reports no file type: a character device such as /dev/zero reports length 0 yet
/// never ends, so a reader that trusts the length misreports it and one that reads to the end runs out of
/// memory. Every problem becomes the caller's typed exception, made by <c>fail</c> from a description.
/// </summary>
internal static class InputFile
{
    /// <summary>A regular file opened for reading at its start; its length is what it holds.</summary>
    public static FileStream Open(string path, Func<string, DiffuException> fail, int bufferSize = 4096)
    {
        var kind = FileStatus.Kind(path);
        if (kind == FileKind.Directory) throw fail("is a directory, not a file");
        if (kind == FileKind.Missing) throw fail("file not found");
        if (kind != FileKind.RegularFile) throw fail($"is {FileStatus.Describe(kind)}, not a regular file");
        FileStream? stream = null;
        try
        {
            stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize);
            // A regular file of length 0 has nothing to read; a device or pseudo-file reports 0 and has.
            if (stream.Length == 0 && stream.ReadByte() >= 0)
                throw fail("is not a regular file (it reports length 0 but has data: a device or pseudo-file)");
            return stream;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            stream?.Dispose();
            throw fail($"cannot read: {e.Message}");
        }
        catch
        {
            stream?.Dispose();
            throw;
        }
    }

    /// <summary>All bytes of a regular file of at most <paramref name="limit"/> bytes (default: what one array holds).</summary>
    public static byte[] ReadAllBytes(string path, Func<string, DiffuException> fail, long? limit = null)
    {
        using var stream = Open(path, fail);
        long length = stream.Length, most = limit ?? Array.MaxLength;
        if (length > most) throw fail($"is {length} bytes, larger than the {most}-byte limit");
        var bytes = new byte[length];
        try
        {
            stream.ReadExactly(bytes);
        }
        catch (IOException e)
        {
            throw fail($"cannot read: {e.Message}");
        }
        return bytes;
    }
}
