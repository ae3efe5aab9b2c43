using System.Text;
using DiffuSharp.Text;

namespace DiffuSharp.Data;

/// <summary>How a text file marks where one document ends and the next begins.</summary>
public enum DocumentSeparator
{
    /// <summary>One or more blank (empty or whitespace-only) lines; each paragraph is a document.</summary>
    BlankLines,

    /// <summary>The text <c>&lt;|endoftext|&gt;</c>, anywhere in a line; blank lines are then part of a document.</summary>
    EndOfText,
}

/// <summary>
/// Splits plain-text corpora into documents. A file that contains <c>&lt;|endoftext|&gt;</c> anywhere is split on
/// that marker only (TinyStories); any other file is split on blank lines (tiny-shakespeare's speeches).
/// Line breaks inside a document become "\n"; a document is trimmed of surrounding whitespace and dropped
/// when nothing is left. The separator itself is never part of a document.
/// </summary>
public static class TextDocuments
{
    private const int ScanBytes = 1 << 20;

    /// <summary>The separator a text uses: <see cref="DocumentSeparator.EndOfText"/> when the marker occurs in it.</summary>
    public static DocumentSeparator DetectSeparator(string text) =>
        text.Contains(Gpt2Tokenizer.EndOfTextToken, StringComparison.Ordinal) ? DocumentSeparator.EndOfText : DocumentSeparator.BlankLines;

    /// <summary>The separator a UTF-8 file uses, found by scanning its bytes for the marker.</summary>
    public static DocumentSeparator DetectSeparator(Stream stream)
    {
        byte[] marker = Encoding.UTF8.GetBytes(Gpt2Tokenizer.EndOfTextToken);
        var buffer = new byte[ScanBytes + marker.Length];
        int kept = 0;
        while (true)
        {
            int read = stream.ReadAtLeast(buffer.AsSpan(kept, ScanBytes), ScanBytes, throwOnEndOfStream: false);
            int filled = kept + read;
            if (buffer.AsSpan(0, filled).IndexOf(marker) >= 0) return DocumentSeparator.EndOfText;
            if (read < ScanBytes) return DocumentSeparator.BlankLines;
            // Keep the tail so a marker split across two reads is still seen.
            kept = Math.Min(marker.Length - 1, filled);
            buffer.AsSpan(filled - kept, kept).CopyTo(buffer);
        }
    }

    /// <summary>All documents of a text, with the separator detected from the text.</summary>
    public static List<string> Split(string text) => [.. Read(new StringReader(text), DetectSeparator(text))];

    /// <summary>The documents of <paramref name="reader"/>, read lazily, line by line.</summary>
    public static IEnumerable<string> Read(TextReader reader, DocumentSeparator separator)
    {
        var document = new StringBuilder();
        while (reader.ReadLine() is { } line)
        {
            if (separator == DocumentSeparator.BlankLines)
            {
                if (string.IsNullOrWhiteSpace(line))
                {
                    if (Take(document) is { } paragraph) yield return paragraph;
                }
                else
                {
                    document.Append(line).Append('\n');
                }
                continue;
            }
            int start = 0;
            for (int at; (at = line.IndexOf(Gpt2Tokenizer.EndOfTextToken, start, StringComparison.Ordinal)) >= 0; start = at + Gpt2Tokenizer.EndOfTextToken.Length)
            {
                document.Append(line, start, at - start);
                if (Take(document) is { } story) yield return story;
            }
            document.Append(line, start, line.Length - start).Append('\n');
        }
        if (Take(document) is { } last) yield return last;
    }

    /// <summary>The trimmed text gathered so far (null when blank), and a fresh start for the next document.</summary>
    private static string? Take(StringBuilder document)
    {
        string text = document.ToString().Trim();
        document.Clear();
        return text.Length == 0 ? null : text;
    }
}
