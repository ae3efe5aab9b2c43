namespace DiffuSharp.Data;

/// <summary>Token shards that cannot be packed into blocks as asked (too little data, mismatched shards, bad settings).</summary>
public sealed class DatasetException(string message) : DiffuException(message);

/// <summary>
/// Pretraining data as the DiffuLLaMA recipe packs it (method §2.2, §7): every document gets the EOS token
/// appended (when the shards have one; otherwise documents are simply joined), the documents of all shards
/// are concatenated in order, and the stream is cut into blocks of <see cref="BlockLength"/> tokens; the
/// remainder that does not fill a block is dropped. Blocks are never materialised: a block is read from
/// the shards' memory mappings when asked for.
/// A fraction of whole blocks is held out for validation. Which blocks is a function of the seed alone:
/// the first k of a Philox-keyed permutation of all block indices. Both sets are kept in ascending order.
/// </summary>
public sealed class PackedDataset : IDisposable
{
    /// <summary>Philox stream of the validation split (distinct from the objective's and the loader's streams).</summary>
    const ulong SplitStream = 0x73706c6974;

    readonly TokenShard[] shards;
    readonly long[] shardStarts;
    readonly int[] validation;
    readonly int[] training;

    PackedDataset(TokenShard[] shards, int blockLength, double validationFraction, ulong seed)
    {
        this.shards = shards;
        BlockLength = blockLength;
        Seed = seed;
        var first = shards[0];
        VocabSize = first.VocabSize;
        EosId = first.EosId;
        shardStarts = new long[shards.Length + 1];
        for (int s = 0; s < shards.Length; s++)
        {
            var shard = shards[s];
            if (shard.VocabSize != VocabSize || shard.EosId != EosId || shard.Metadata.Tokenizer != first.Metadata.Tokenizer)
                throw new DatasetException($"{shard.FilePath} ({Describe(shard)}) does not match {first.FilePath} ({Describe(first)})");
            shardStarts[s + 1] = shardStarts[s] + StreamLength(shard);
        }
        StreamTokens = shardStarts[^1];
        long blocks = StreamTokens / blockLength;
        if (blocks == 0)
            throw new DatasetException($"{string.Join(", ", shards.Select(s => s.FilePath))}: {StreamTokens} tokens " +
                                       $"({(EosId is null ? "no separators" : "with EOS separators")}) do not fill one block of {blockLength}");
        if (blocks > Array.MaxLength)
            throw new DatasetException($"{blocks} blocks of {blockLength} tokens are more than this loader indexes; use longer blocks");
        BlockCount = (int)blocks;
        DroppedTokens = StreamTokens - (long)BlockCount * blockLength;

        int held = validationFraction == 0 || BlockCount < 2 ? 0 : Math.Clamp((int)Math.Round(validationFraction * BlockCount), 1, BlockCount - 1);
        var order = new int[BlockCount];
        for (int i = 0; i < order.Length; i++) order[i] = i;
        PhiloxShuffle.Shuffle(order, seed, SplitStream, 0);
        validation = order[..held];
        training = order[held..];
        Array.Sort(validation);
        Array.Sort(training);
    }

    /// <summary>
    /// Opens the shards (in this order) and packs them. <paramref name="validationFraction"/> in [0, 1): the
    /// share of blocks held out, rounded, at least one block when there are two or more and the fraction is positive.
    /// </summary>
    public static PackedDataset Open(IReadOnlyList<string> shardPaths, int blockLength, double validationFraction, ulong seed)
    {
        if (shardPaths.Count == 0) throw new DatasetException("no token shards given");
        if (blockLength < 2) throw new DatasetException($"block length must be at least 2 tokens, got {blockLength}");
        if (!(validationFraction >= 0 && validationFraction < 1))
            throw new DatasetException($"validation fraction must be in [0, 1), got {validationFraction}");
        var shards = new List<TokenShard>(shardPaths.Count);
        try
        {
            foreach (var path in shardPaths) shards.Add(TokenShard.Open(path));
            return new PackedDataset([.. shards], blockLength, validationFraction, seed);
        }
        catch
        {
            foreach (var shard in shards) shard.Dispose();
            throw;
        }
    }

    public int BlockLength { get; }

    public ulong Seed { get; }

    public int VocabSize { get; }

    /// <summary>The token appended after every document, or null when documents are joined without one.</summary>
    public int? EosId { get; }

    /// <summary>Length of the packed stream: all tokens plus one EOS per document (when there is an EOS).</summary>
    public long StreamTokens { get; }

    public int BlockCount { get; }

    /// <summary>Tokens at the end of the stream that do not fill a block.</summary>
    public long DroppedTokens { get; }

    public int TrainingBlocks => training.Length;

    public int ValidationBlocks => validation.Length;

    /// <summary>The block index (in stream order) of training block <paramref name="i"/>.</summary>
    public int TrainingBlock(int i) => training[i];

    /// <summary>The block index (in stream order) of validation block <paramref name="i"/>.</summary>
    public int ValidationBlock(int i) => validation[i];

    /// <summary>Validation blocks first, first + 1, ..., first + batchSize − 1, wrapping around, as [batchSize, BlockLength].</summary>
    public void ReadValidationBatch(int first, int batchSize, Span<int> destination)
    {
        if (ValidationBlocks == 0) throw new DatasetException("the data has no validation blocks (validation fraction 0, or a single block)");
        ArgumentOutOfRangeException.ThrowIfNegative(first);
        CheckBatch(batchSize, destination);
        for (int b = 0; b < batchSize; b++)
            ReadBlock(validation[(int)(((long)first + b) % ValidationBlocks)], destination.Slice(b * BlockLength, BlockLength));
    }

    /// <summary>Block <paramref name="block"/> of the packed stream: tokens [block·L, (block+1)·L).</summary>
    public void ReadBlock(int block, Span<int> destination)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(block);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(block, BlockCount);
        if (destination.Length < BlockLength) throw new ArgumentException($"destination holds {destination.Length} tokens, a block is {BlockLength}");
        ReadStream((long)block * BlockLength, destination[..BlockLength]);
    }

    public void Dispose()
    {
        foreach (var shard in shards) shard.Dispose();
    }

    internal void CheckBatch(int batchSize, Span<int> destination)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        if (destination.Length < (long)batchSize * BlockLength)
            throw new ArgumentException($"destination holds {destination.Length} tokens, a batch of {batchSize} × {BlockLength} needs {(long)batchSize * BlockLength}");
    }

    /// <summary>Copies stream tokens [position, position + destination.Length), inserting EOS after each document.</summary>
    void ReadStream(long position, Span<int> destination)
    {
        int s = Array.BinarySearch(shardStarts, position);
        // An exact hit may be the start of an empty shard: move to the last shard starting there.
        if (s >= 0) while (s + 1 < shards.Length && shardStarts[s + 1] == position) s++;
        else s = ~s - 1;
        int eos = EosId is null ? 0 : 1;
        long local = position - shardStarts[s];
        long document = DocumentAt(shards[s], local, eos);
        var shard = shards[s];
        long inDocument = local - (shard.DocumentStart(document) + eos * document);
        int written = 0;
        while (written < destination.Length)
        {
            long length = shard.DocumentLength(document);
            if (inDocument < length)
            {
                int n = (int)Math.Min(length - inDocument, destination.Length - written);
                shard.CopyTokens(shard.DocumentStart(document) + inDocument, destination.Slice(written, n));
                written += n;
                inDocument += n;
                continue;
            }
            if (eos == 1 && inDocument == length)
            {
                destination[written++] = EosId!.Value;
                inDocument++;
                continue;
            }
            document++;
            inDocument = 0;
            while (document == shard.DocumentCount)
            {
                shard = shards[++s];
                document = 0;
            }
        }
    }

    /// <summary>The last document whose packed start (offset + one EOS per earlier document) is at or before <paramref name="position"/>.</summary>
    static long DocumentAt(TokenShard shard, long position, int eos)
    {
        long lo = 0, hi = shard.DocumentCount - 1;
        while (lo < hi)
        {
            long mid = lo + (hi - lo + 1) / 2;
            if (shard.DocumentStart(mid) + eos * mid <= position) lo = mid;
            else hi = mid - 1;
        }
        return lo;
    }

    static long StreamLength(TokenShard shard) => shard.TokenCount + (shard.EosId is null ? 0 : shard.DocumentCount);

    static string Describe(TokenShard shard) =>
        $"tokenizer {shard.Metadata.Tokenizer}, vocabulary {shard.VocabSize}, EOS {(shard.EosId is { } e ? e.ToString() : "none")}";
}
