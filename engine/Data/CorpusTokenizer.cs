using System.Diagnostics;
using System.Text;
using DiffuSharp.IO;
using DiffuSharp.Text;

namespace DiffuSharp.Data;

/// <summary>What one input file contributed to a shard (<paramref name="Bytes"/>: how much of it was read).</summary>
public sealed record TokenizedFile(string Path, DocumentSeparator Separator, long Bytes, long Documents, long Tokens);

/// <summary>The result of <see cref="CorpusTokenizer.Run"/>.</summary>
/// <param name="StoppedEarly">True when the document limit was reached before the end of the inputs.</param>
public sealed record TokenizeSummary(IReadOnlyList<TokenizedFile> Files, long Documents, long Tokens, long Bytes,
                                     TimeSpan Elapsed, bool StoppedEarly);

/// <summary>
/// Text files to one token shard: each file is split into documents (<see cref="TextDocuments"/>), each
/// document encoded without any separator, and the documents written in file order. Documents are encoded
/// in parallel a batch at a time and written in their original order, so the shard does not depend on the
/// number of threads.
/// </summary>
public static class CorpusTokenizer
{
    private const int BatchDocuments = 256;
    private const int BatchChars = 1 << 20;

    /// <param name="bytesRead">Called after each batch with the bytes of input read so far (for a progress bar).</param>
    public static TokenizeSummary Run(IReadOnlyList<string> inputs, TextTokenizer tokenizer, string outputPath,
                                      long? maxDocuments = null, Action<long>? bytesRead = null)
    {
        if (inputs.Count == 0) throw new DiffuException("no input files");
        if (maxDocuments is <= 0) throw new DiffuException($"the document limit must be positive, got {maxDocuments}");
        foreach (var input in inputs) FileStatus.RequireRegularFile(input, "input file");
        var clock = Stopwatch.StartNew();
        var metadata = new TokenShardMetadata(tokenizer.Name, [.. inputs]);
        using var writer = new TokenShardWriter(outputPath, tokenizer.VocabSize, tokenizer.EndOfTextId, metadata);
        var files = new List<TokenizedFile>();
        long done = 0;
        bool stopped = false;
        foreach (var input in inputs)
        {
            long documentsBefore = writer.DocumentCount, tokensBefore = writer.TokenCount;
            using var stream = InputFile.Open(input, problem => new DiffuException($"{input}: {problem}"), 1 << 16);
            var separator = TextDocuments.DetectSeparator(stream);
            stream.Position = 0;
            using var reader = new StreamReader(stream, new UTF8Encoding(false, throwOnInvalidBytes: true), detectEncodingFromByteOrderMarks: true);
            var batch = new List<string>(BatchDocuments);
            int chars = 0;
            void Flush()
            {
                var encoded = new int[batch.Count][];
                Parallel.For(0, batch.Count, i => encoded[i] = [.. tokenizer.Encode(batch[i])]);
                foreach (var ids in encoded) writer.Add(ids);
                batch.Clear();
                chars = 0;
                bytesRead?.Invoke(done + stream.Position);
            }
            try
            {
                foreach (var document in TextDocuments.Read(reader, separator))
                {
                    if (writer.DocumentCount + batch.Count == maxDocuments)
                    {
                        stopped = true;
                        break;
                    }
                    batch.Add(document);
                    chars += document.Length;
                    if (batch.Count == BatchDocuments || chars >= BatchChars) Flush();
                }
            }
            catch (DecoderFallbackException e)
            {
                throw new DiffuException($"{input}: not valid UTF-8 text (near byte {stream.Position}): {e.Message}", e);
            }
            Flush();
            long bytes = stopped ? stream.Position : stream.Length;
            done += bytes;
            files.Add(new TokenizedFile(input, separator, bytes, writer.DocumentCount - documentsBefore, writer.TokenCount - tokensBefore));
            if (stopped) break;
        }
        if (writer.DocumentCount == 0) throw new DiffuException($"{string.Join(", ", inputs)}: no documents (the input holds only whitespace)");
        writer.Complete();
        return new TokenizeSummary(files, writer.DocumentCount, writer.TokenCount, done, clock.Elapsed, stopped);
    }
}
