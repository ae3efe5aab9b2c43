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
    private const int BufferTokens = 1 << 16;

    private readonly string _path;
    private readonly string _tokensPath;
    private readonly int _vocabSize;
    private readonly int? _eosId;
    private readonly TokenShardMetadata _metadata;
    private readonly int _width;
    private readonly List<long> _offsets = [0];
    private readonly byte[] _buffer;
    private FileStream? _tokens;

    public TokenShardWriter(string path, int vocabSize, int? eosId, TokenShardMetadata metadata)
    {
        if (vocabSize <= 0) throw new TokenShardException(path, $"vocabulary size must be positive, got {vocabSize}");
        if (eosId is { } eos && (eos < 0 || eos >= vocabSize))
            throw new TokenShardException(path, $"EOS id {eos} is outside the vocabulary [0, {vocabSize})");
        string? folder = Path.GetDirectoryName(Path.GetFullPath(path));
        if (folder is null || !Directory.Exists(folder)) throw new TokenShardException(path, $"output folder {folder} not found");
        OutputFile.Check(path, "token shard");
        _path = path;
        _vocabSize = vocabSize;
        _eosId = eosId;
        _metadata = metadata;
        _width = TokenShardFormat.TokenWidth(vocabSize);
        _buffer = new byte[BufferTokens * _width];
        _tokensPath = OutputFile.TemporaryPath(path);
        _tokens = new FileStream(_tokensPath, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1 << 20);
    }

    public long DocumentCount => _offsets.Count - 1;

    public long TokenCount => _offsets[^1];

    /// <summary>Appends one document; every token must lie in [0, vocabulary size).</summary>
    public void Add(ReadOnlySpan<int> document)
    {
        var tokens = _tokens ?? throw new InvalidOperationException($"{_path}: the shard is already complete");
        // Check the whole document before writing any of it, so a rejected document leaves the shard as it was.
        int bad = document.IndexOfAnyExceptInRange(0, _vocabSize - 1);
        if (bad >= 0)
            throw new TokenShardException(_path, $"document {DocumentCount} has token {document[bad]} at position {bad}, outside the vocabulary [0, {_vocabSize})");
        for (int start = 0; start < document.Length; start += BufferTokens)
        {
            var chunk = document.Slice(start, Math.Min(BufferTokens, document.Length - start));
            for (int i = 0; i < chunk.Length; i++)
            {
                if (_width == 2) BinaryPrimitives.WriteUInt16LittleEndian(_buffer.AsSpan(i * 2), (ushort)chunk[i]);
                else BinaryPrimitives.WriteInt32LittleEndian(_buffer.AsSpan(i * 4), chunk[i]);
            }
            tokens.Write(_buffer, 0, chunk.Length * _width);
        }
        _offsets.Add(TokenCount + document.Length);
    }

    /// <summary>Writes the shard to its path (replacing a regular file there) and deletes the scratch file.</summary>
    public void Complete()
    {
        var tokens = _tokens ?? throw new InvalidOperationException($"{_path}: the shard is already complete");
        byte[] metadata = TokenShardFormat.EncodeMetadata(_metadata, _eosId);
        byte[] header = TokenShardFormat.EncodeHeader(_width, _vocabSize, DocumentCount, TokenCount, metadata);
        try
        {
            OutputFile.Write(_path, "token shard", stream =>
            {
                stream.Write(header);
                stream.Write(metadata);
                Span<byte> offset = stackalloc byte[8];
                foreach (long o in _offsets)
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

    private void DeleteScratch()
    {
        if (_tokens is null) return;
        _tokens.Dispose();
        _tokens = null;
        File.Delete(_tokensPath);
    }
}
