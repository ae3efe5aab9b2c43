using System.Text;
using DiffuSharp.IO;

namespace DiffuSharp.Eval;

/// <summary>
/// Reading the evaluation data files: every problem becomes a <see cref="DiffuException"/> that names the
/// file and, where there is one, the line, so a bad download or a hand-edited file is easy to find.
/// </summary>
internal static class EvalFile
{
    /// <summary>The largest data file read: the biggest one used here (HellaSwag) is under 8 MiB.</summary>
    public const long MaxBytes = 256 << 20;

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    public static DiffuException Error(string path, string problem) => new($"{path}: {problem}");

    public static DiffuException Error(string path, long line, string problem) => new($"{path}: line {line}: {problem}");

    public static FileStream Open(string path) => InputFile.Open(path, problem => Error(path, problem));

    public static byte[] ReadAllBytes(string path) => InputFile.ReadAllBytes(path, problem => Error(path, problem), MaxBytes);

    /// <summary>
    /// The lines of a UTF-8 text file without their "\n" or "\r\n", a leading byte-order mark dropped. The file
    /// is split on bytes before decoding, so a line that is not valid UTF-8 is reported by its own number
    /// (a buffered decoder would fail somewhere ahead of it). A final line break does not start another line.
    /// </summary>
    public static List<string> ReadLines(string path)
    {
        ReadOnlySpan<byte> bytes = ReadAllBytes(path);
        if (bytes.StartsWith(Encoding.UTF8.Preamble)) bytes = bytes[Encoding.UTF8.Preamble.Length..];
        var lines = new List<string>();
        while (!bytes.IsEmpty)
        {
            int end = bytes.IndexOf((byte)'\n');
            var line = end < 0 ? bytes : bytes[..end];
            if (line.EndsWith("\r"u8)) line = line[..^1];
            try
            {
                lines.Add(StrictUtf8.GetString(line));
            }
            catch (DecoderFallbackException)
            {
                throw Error(path, lines.Count + 1, "not valid UTF-8 text");
            }
            bytes = end < 0 ? [] : bytes[(end + 1)..];
        }
        return lines;
    }

    /// <summary>The first <paramref name="limit"/> items (all when null).</summary>
    public static IReadOnlyList<T> Take<T>(List<T> items, int? limit)
    {
        if (limit is { } n)
        {
            ArgumentOutOfRangeException.ThrowIfNegative(n, nameof(limit));
            if (n < items.Count) items.RemoveRange(n, items.Count - n);
        }
        return items;
    }
}
