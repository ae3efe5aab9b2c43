namespace DiffuSharp.Data;

/// <summary>
/// Token shards as the trainer's <see cref="ITokenBlocks"/>: packed blocks, a validation split and a resumable
/// shuffle (<see cref="BlockLoader"/>). Rank r of n takes rows r·B .. (r+1)·B − 1 of each global batch of n·B
/// blocks, so every rank walks the same shuffled stream and the ranks together read what one process would.
/// </summary>
public sealed class TokenBlocks : ITokenBlocks, IDisposable
{
    readonly PackedDataset dataset;
    readonly BlockLoader loader;

    TokenBlocks(PackedDataset dataset, DataShard shard)
    {
        this.dataset = dataset;
        loader = new BlockLoader(dataset);
        Shard = shard;
    }

    /// <summary>Opens the shards; <paramref name="shard"/> defaults to the whole stream.</summary>
    public static TokenBlocks Open(string[] shards, int blockLength, ulong seed, double validationFraction, DataShard? shard = null)
    {
        if (shards.Length == 0) throw new DiffuException("no token shards given (--data)");
        return new TokenBlocks(PackedDataset.Open(shards, blockLength, validationFraction, seed), shard ?? DataShard.Whole);
    }

    public int BlockLength => loader.BlockLength;
    public int VocabSize => dataset.VocabSize;
    public int ValidationBlockCount => dataset.ValidationBlocks;
    public DataShard Shard { get; }

    public void NextTrainingBatch(int batch, Span<int> destination, Span<byte> sourceMask)
    {
        loader.Skip((long)Shard.Rank * batch);
        loader.NextBatch(batch, destination);
        loader.Skip((long)(Shard.WorldSize - 1 - Shard.Rank) * batch);
    }

    public void ReadValidationBatch(int first, int batch, Span<int> destination, Span<byte> sourceMask) =>
        dataset.ReadValidationBatch(first, batch, destination);

    public long[] State
    {
        get { var s = loader.GetState(); return [s.Epoch, s.Index]; }
        set
        {
            if (value.Length != 2 || value[1] is < 0 or > int.MaxValue) throw new DiffuException($"bad saved data position [{string.Join(", ", value)}]");
            loader.SetState(new LoaderState(value[0], (int)value[1]));
        }
    }

    public void Dispose() => dataset.Dispose();
}
