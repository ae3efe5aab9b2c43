using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using DiffuSharp.IO;

namespace DiffuSharp.Data;

/// <summary>
/// A file of tokenized documents (layout in <see cref="TokenShardFormat"/>). <see cref="Open"/> checks the
/// header, the metadata, the offsets table and every token against the vocabulary before anything is
/// read, then serves documents straight from a memory mapping; reads are safe from several threads.
/// </summary>
public sealed unsafe class TokenShard : IDisposable
{
    const int ScanChunkTokens = 1 << 24;

    readonly MemoryMappedFile map;
    readonly MemoryMappedViewAccessor view;
    readonly byte* offsets;
    readonly byte* tokens;
    bool disposed;

    TokenShard(string path, MemoryMappedFile map, MemoryMappedViewAccessor view, long dataStart, int tokenWidth,
                       int vocabSize, long documents, long tokens, TokenShardMetadata metadata, int? eosId)
    {
        FilePath = path;
        this.map = map;
        this.view = view;
        byte* basePtr = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref basePtr);
        offsets = basePtr + view.PointerOffset + dataStart;
        this.tokens = offsets + (documents + 1) * 8;
        TokenWidth = tokenWidth;
        VocabSize = vocabSize;
        DocumentCount = documents;
        TokenCount = tokens;
        Metadata = metadata;
        EosId = eosId;
    }

    public string FilePath { get; }

    /// <summary>Bytes per stored token: 2 or 4.</summary>
    public int TokenWidth { get; }

    public int VocabSize { get; }

    public long DocumentCount { get; }

    /// <summary>Tokens of all documents together (no separators are stored).</summary>
    public long TokenCount { get; }

    /// <summary>The end-of-text id the tokenizer had (appended between documents when packing), or null.</summary>
    public int? EosId { get; }

    public TokenShardMetadata Metadata { get; }

    /// <summary>Writes <paramref name="documents"/> as a shard (through a temporary file renamed over <paramref name="path"/>).</summary>
    public static void Write(string path, IReadOnlyList<int[]> documents, int vocabSize, int? eosId, TokenShardMetadata metadata)
    {
        using var writer = new TokenShardWriter(path, vocabSize, eosId, metadata);
        foreach (var document in documents) writer.Add(document);
        writer.Complete();
    }

    public static TokenShard Open(string path)
    {
        FileStream? stream = InputFile.Open(path, problem => new TokenShardException(path, problem));
        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        try
        {
            long length = stream.Length;
            if (length < TokenShardFormat.HeaderBytes)
                throw new TokenShardException(path, $"truncated: the file is {length} bytes, shorter than the {TokenShardFormat.HeaderBytes}-byte header");
            var header = new byte[TokenShardFormat.HeaderBytes];
            stream.ReadExactly(header);
            var (width, vocab, documents, tokens, metadataLength) = ParseHeader(path, header);
            if (metadataLength > length - TokenShardFormat.HeaderBytes)
                throw new TokenShardException(path, $"truncated: the metadata is {metadataLength} bytes but only {length - TokenShardFormat.HeaderBytes} follow the header");
            var metadataBytes = new byte[metadataLength];
            stream.ReadExactly(metadataBytes);
            var (metadata, eosId) = TokenShardFormat.DecodeMetadata(path, metadataBytes, vocab);

            long dataStart = TokenShardFormat.HeaderBytes + metadataLength;
            // Sizes in 128 bits: a corrupt count must not overflow into a plausible length.
            UInt128 expected = (UInt128)(ulong)dataStart + ((UInt128)documents + 1) * 8 + (UInt128)tokens * (uint)width;
            if (expected > (ulong)length)
                throw new TokenShardException(path, $"truncated: {documents} documents and {tokens} tokens of {width} bytes need {expected} bytes, the file has {length}");
            if (expected < (ulong)length)
                throw new TokenShardException(path, $"{(ulong)length - expected} unexpected bytes after the last token");

            map = MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
            stream = null;
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            var shard = new TokenShard(path, map, view, dataStart, width, vocab, (long)documents, (long)tokens, metadata, eosId);
            try
            {
                shard.CheckOffsets();
                shard.CheckTokens();
            }
            catch
            {
                shard.Dispose();
                throw;
            }
            return shard;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            view?.Dispose();
            map?.Dispose();
            throw new TokenShardException(path, $"cannot read: {e.Message}", e);
        }
        finally
        {
            stream?.Dispose();
        }
    }

    /// <summary>Index of the first token of document <paramref name="document"/>; <paramref name="document"/> = DocumentCount gives TokenCount.</summary>
    public long DocumentStart(long document)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(document);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(document, DocumentCount);
        return Offset(document);
    }

    public long DocumentLength(long document)
    {
        CheckDocument(document);
        return Offset(document + 1) - Offset(document);
    }

    public int[] ReadDocument(long document)
    {
        CheckDocument(document);
        long start = Offset(document), length = Offset(document + 1) - start;
        if (length > Array.MaxLength) throw new TokenShardException(FilePath, $"document {document} has {length} tokens, more than one array can hold");
        var ids = new int[length];
        CopyTokens(start, ids);
        return ids;
    }

    /// <summary>Tokens [<paramref name="start"/>, start + destination.Length) of the shard, across document boundaries.</summary>
    public void CopyTokens(long start, Span<int> destination)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        ArgumentOutOfRangeException.ThrowIfNegative(start);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(start, TokenCount - destination.Length);
        if (TokenWidth == 2)
        {
            var source = new ReadOnlySpan<ushort>(tokens + start * 2, destination.Length);
            for (int i = 0; i < source.Length; i++) destination[i] = source[i];
        }
        else
        {
            new ReadOnlySpan<int>(tokens + start * 4, destination.Length).CopyTo(destination);
        }
    }

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        view.SafeMemoryMappedViewHandle.ReleasePointer();
        view.Dispose();
        map.Dispose();
    }

    static (int Width, int Vocab, ulong Documents, ulong Tokens, int MetadataLength) ParseHeader(string path, ReadOnlySpan<byte> header)
    {
        if (!header[..8].SequenceEqual(TokenShardFormat.Magic))
            throw new TokenShardException(path, $"not a token shard: the file starts with {Convert.ToHexString(header[..8])}, not \"DIFFUTOK\"");
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(header[8..]);
        if (version != TokenShardFormat.Version)
            throw new TokenShardException(path, $"format version {version} is not supported (this build reads version {TokenShardFormat.Version})");
        uint width = BinaryPrimitives.ReadUInt32LittleEndian(header[12..]);
        if (width is not (2 or 4)) throw new TokenShardException(path, $"token width is {width} bytes, not 2 or 4");
        uint vocab = BinaryPrimitives.ReadUInt32LittleEndian(header[16..]);
        if (vocab == 0 || vocab > int.MaxValue) throw new TokenShardException(path, $"vocabulary size {vocab} is not in [1, {int.MaxValue}]");
        if (width == 2 && vocab > 65536) throw new TokenShardException(path, $"vocabulary size {vocab} does not fit 2-byte tokens");
        ulong documents = BinaryPrimitives.ReadUInt64LittleEndian(header[20..]);
        ulong tokens = BinaryPrimitives.ReadUInt64LittleEndian(header[28..]);
        uint metadataLength = BinaryPrimitives.ReadUInt32LittleEndian(header[36..]);
        if (metadataLength > TokenShardFormat.MaxMetadataBytes)
            throw new TokenShardException(path, $"metadata length {metadataLength} is larger than the {TokenShardFormat.MaxMetadataBytes}-byte limit");
        return ((int)width, (int)vocab, documents, tokens, (int)metadataLength);
    }

    void CheckOffsets()
    {
        if (Offset(0) != 0) throw new TokenShardException(FilePath, $"document offsets start at {(ulong)Offset(0)}, not 0");
        for (long d = 0; d < DocumentCount; d++)
        {
            ulong begin = (ulong)Offset(d), end = (ulong)Offset(d + 1);
            if (end < begin)
                throw new TokenShardException(FilePath, $"document offsets are not monotonic: document {d} ends at {end}, before its start {begin}");
            if (end > (ulong)TokenCount)
                throw new TokenShardException(FilePath, $"document {d} ends at token {end}, past the {TokenCount} tokens of the file");
        }
        if (Offset(DocumentCount) != TokenCount)
            throw new TokenShardException(FilePath, $"the last document ends at token {(ulong)Offset(DocumentCount)}, but the file holds {TokenCount} tokens");
    }

    void CheckTokens()
    {
        for (long start = 0; start < TokenCount; start += ScanChunkTokens)
        {
            int n = (int)Math.Min(ScanChunkTokens, TokenCount - start);
            int bad;
            long value;
            if (TokenWidth == 2)
            {
                var span = new ReadOnlySpan<ushort>(tokens + start * 2, n);
                bad = VocabSize >= 65536 ? -1 : span.IndexOfAnyInRange((ushort)VocabSize, ushort.MaxValue);
                value = bad >= 0 ? span[bad] : 0;
            }
            else
            {
                var span = MemoryMarshal.Cast<int, uint>(new ReadOnlySpan<int>(tokens + start * 4, n));
                bad = span.IndexOfAnyInRange((uint)VocabSize, uint.MaxValue);
                value = bad >= 0 ? span[bad] : 0;
            }
            if (bad >= 0)
            {
                long position = start + bad;
                throw new TokenShardException(FilePath, $"token {value} at position {position} (document {DocumentOf(position)}) is outside the vocabulary [0, {VocabSize})");
            }
        }
    }

    /// <summary>The document holding token <paramref name="position"/> (offsets already checked).</summary>
    long DocumentOf(long position)
    {
        long lo = 0, hi = DocumentCount - 1;
        while (lo < hi)
        {
            long mid = lo + (hi - lo + 1) / 2;
            if (Offset(mid) <= position) lo = mid;
            else hi = mid - 1;
        }
        return lo;
    }

    void CheckDocument(long document)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        ArgumentOutOfRangeException.ThrowIfNegative(document);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(document, DocumentCount);
    }

    long Offset(long index) => (long)BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(offsets + index * 8, 8));
}
