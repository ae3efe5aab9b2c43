using System.Buffers.Binary;
using DiffuSharp.IO;

namespace DiffuSharp.Data;

/// <summary>
/// Builds a token shard one document at a time, so a corpus never has to fit in memory. Tokens go to a
/// scratch file beside the target while the offsets stay in memory (8 bytes a document); <see cref="Complete"/>
/// writes header, metadata, offsets and tokens as an <see cref="OutputFile"/> (a temporary renamed over the
/// target), so a killed run never leaves a half-written shard, and the scratch file is named like its
/// temporaries, so a later write removes it. Disposing without completing deletes the scratch file.
/// </summary>
public sealed class TokenShardWriter : IDisposable
{
    const int BufferTokens = 1 << 16;

    readonly string path;
    readonly string tokensPath;
    readonly int vocabSize;
    readonly int? eosId;
    readonly TokenShardMetadata metadata;
    readonly int width;
    readonly List<long> offsets = [0];
    readonly byte[] buffer;
    FileStream? tokens;

    public TokenShardWriter(string path, int vocabSize, int? eosId, TokenShardMetadata metadata)
    {
        if (vocabSize <= 0) throw new TokenShardException(path, $"vocabulary size must be positive, got {vocabSize}");
        if (eosId is { } eos && (eos < 0 || eos >= vocabSize))
            throw new TokenShardException(path, $"EOS id {eos} is outside the vocabulary [0, {vocabSize})");
        string? folder = Path.GetDirectoryName(Path.GetFullPath(path));
        if (folder is null || !Directory.Exists(folder)) throw new TokenShardException(path, $"output folder {folder} not found");
        OutputFile.Check(path, "token shard");
        this.path = path;
        this.vocabSize = vocabSize;
        this.eosId = eosId;
        this.metadata = metadata;
        width = TokenShardFormat.TokenWidth(vocabSize);
        buffer = new byte[BufferTokens * width];
        tokensPath = OutputFile.TemporaryPath(path);
        tokens = new FileStream(tokensPath, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1 << 20);
    }

    public long DocumentCount => offsets.Count - 1;

    public long TokenCount => offsets[^1];

    /// <summary>Appends one document; every token must lie in [0, vocabulary size).</summary>
    public void Add(ReadOnlySpan<int> document)
    {
        var tokens = this.tokens ?? throw new InvalidOperationException($"{path}: the shard is already complete");
        // Check the whole document before writing any of it, so a rejected document leaves the shard as it was.
        int bad = document.IndexOfAnyExceptInRange(0, vocabSize - 1);
        if (bad >= 0)
            throw new TokenShardException(path, $"document {DocumentCount} has token {document[bad]} at position {bad}, outside the vocabulary [0, {vocabSize})");
        for (int start = 0; start < document.Length; start += BufferTokens)
        {
            var chunk = document.Slice(start, Math.Min(BufferTokens, document.Length - start));
            for (int i = 0; i < chunk.Length; i++)
            {
                if (width == 2) BinaryPrimitives.WriteUInt16LittleEndian(buffer.AsSpan(i * 2), (ushort)chunk[i]);
                else BinaryPrimitives.WriteInt32LittleEndian(buffer.AsSpan(i * 4), chunk[i]);
            }
            tokens.Write(buffer, 0, chunk.Length * width);
        }
        offsets.Add(TokenCount + document.Length);
    }

    /// <summary>Writes the shard to its path (replacing a regular file there) and deletes the scratch file.</summary>
    public void Complete()
    {
        var tokens = this.tokens ?? throw new InvalidOperationException($"{path}: the shard is already complete");
        byte[] metadata = TokenShardFormat.EncodeMetadata(this.metadata, eosId);
        byte[] header = TokenShardFormat.EncodeHeader(width, vocabSize, DocumentCount, TokenCount, metadata);
        try
        {
            OutputFile.Write(path, "token shard", stream =>
            {
                stream.Write(header);
                stream.Write(metadata);
                Span<byte> offset = stackalloc byte[8];
                foreach (long o in offsets)
                {
                    BinaryPrimitives.WriteUInt64LittleEndian(offset, (ulong)o);
                    stream.Write(offset);
                }
                tokens.Flush();
                tokens.Position = 0;
                tokens.CopyTo(stream, 1 << 20);
            });
        }
        finally
        {
            DeleteScratch();
        }
    }

    public void Dispose() => DeleteScratch();

    void DeleteScratch()
    {
        if (tokens is null) return;
        tokens.Dispose();
        tokens = null;
        File.Delete(tokensPath);
    }
}
