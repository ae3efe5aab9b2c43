namespace DiffuSharp.Data;

/// <summary>
/// Which share of the training stream one process reads in a data-parallel run: rank r of <see cref="WorldSize"/>
/// takes the r-th slice of each global batch, so the ranks together read what one process would.
/// </summary>
public readonly record struct DataShard
{
    public DataShard(int rank, int worldSize)
    {
        if (worldSize < 1 || rank < 0 || rank >= worldSize)
            throw new ArgumentException($"rank {rank} of world size {worldSize}: need 0 <= rank < world size");
        Rank = rank;
        WorldSize = worldSize;
    }

    public int Rank { get; }
    public int WorldSize { get; }

    /// <summary>One process reading the whole stream.</summary>
    public static DataShard Whole => new(0, 1);
}

/// <summary>Fixed-length token blocks for training, with a validation split and a resumable position.</summary>
public interface ITokenBlocks
{
    int BlockLength { get; }

    /// <summary>Every token id is below this.</summary>
    int VocabSize { get; }

    int ValidationBlockCount { get; }

    /// <summary>This process's share of the training stream; validation blocks are not sharded.</summary>
    DataShard Shard => DataShard.Whole;

    /// <summary>
    /// Whether blocks come with a source mask (1 on tokens that are conditioning, never noised: an SFT prompt);
    /// when false, the batch methods leave their mask argument alone and every token may be noised.
    /// </summary>
    bool HasSourceMask => false;

    /// <summary>
    /// This rank's next <paramref name="batch"/> training blocks, [batch, BlockLength], and their source mask when
    /// <see cref="HasSourceMask"/>; advances the position past the whole global batch (every rank's slice).
    /// </summary>
    void NextTrainingBatch(int batch, Span<int> destination, Span<byte> sourceMask);

    /// <summary>Validation blocks first .. first + batch − 1 (wrapping around), [batch, BlockLength], with their source mask when there is one.</summary>
    void ReadValidationBatch(int first, int batch, Span<int> destination, Span<byte> sourceMask);

    /// <summary>The position in the training stream, to store in a checkpoint and restore on resume.</summary>
    long[] State { get; set; }
}
