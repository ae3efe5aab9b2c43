namespace DiffuSharp.Data;

/// <summary>
/// SFT sequences as the trainer's <see cref="ITokenBlocks"/>, each with its source mask. A seeded Philox shuffle
/// sets aside a validation share; each epoch visits the training sequences in the order of a Philox permutation
/// keyed by (seed, epoch), so the position [epoch, index] is the whole state. Rank r of n takes the r-th slice of
/// each global batch, as <see cref="TokenBlocks"/> does.
/// </summary>
public sealed class SftBlocks : ITokenBlocks
{
    const ulong SplitStream = 0x7366742d73706c69, EpochStream = 0x7366742d65706f63;

    readonly SftSequence[] training, validation;
    readonly int[] order;
    readonly ulong seed;
    long orderEpoch = -1, epoch;
    int index;

    public SftBlocks(IReadOnlyList<SftSequence> sequences, ulong seed, double validationFraction, DataShard? shard = null)
    {
        if (sequences.Count < 2) throw new DiffuException($"SFT needs at least 2 rows (one for validation), got {sequences.Count}");
        int length = sequences[0].Ids.Length;
        if (sequences.Any(s => s.Ids.Length != length || s.Source.Length != length)) throw new ArgumentException("SFT sequences must all be as long as the cutoff");
        var all = Enumerable.Range(0, sequences.Count).ToArray();
        PhiloxShuffle.Shuffle(all, seed, SplitStream, 0);
        int held = Math.Clamp((int)Math.Ceiling(validationFraction * sequences.Count), 1, sequences.Count - 1);
        validation = all[..held].Order().Select(i => sequences[i]).ToArray();
        training = all[held..].Order().Select(i => sequences[i]).ToArray();
        order = new int[training.Length];
        this.seed = seed;
        BlockLength = length;
        VocabSize = sequences.Max(s => s.Ids.Max()) + 1;
        Shard = shard ?? DataShard.Whole;
    }

    public int BlockLength { get; }
    public int VocabSize { get; }
    public int ValidationBlockCount => validation.Length;
    public int TrainingBlockCount => training.Length;
    public DataShard Shard { get; }
    public bool HasSourceMask => true;

    public void NextTrainingBatch(int batch, Span<int> destination, Span<byte> sourceMask)
    {
        Skip((long)Shard.Rank * batch);
        for (int b = 0; b < batch; b++)
        {
            if (orderEpoch != epoch) Reshuffle();
            Copy(training[order[index]], b, destination, sourceMask);
            Skip(1);
        }
        Skip((long)(Shard.WorldSize - 1 - Shard.Rank) * batch);
    }

    public void ReadValidationBatch(int first, int batch, Span<int> destination, Span<byte> sourceMask)
    {
        for (int b = 0; b < batch; b++) Copy(validation[(first + b) % validation.Length], b, destination, sourceMask);
    }

    public long[] State
    {
        get => [epoch, index];
        set
        {
            if (value.Length != 2 || value[0] < 0 || value[1] < 0 || value[1] >= training.Length)
                throw new DiffuException($"bad saved SFT position [{string.Join(", ", value)}] for {training.Length} training rows");
            epoch = value[0];
            index = (int)value[1];
        }
    }

    void Copy(SftSequence s, int row, Span<int> destination, Span<byte> sourceMask)
    {
        s.Ids.CopyTo(destination.Slice(row * BlockLength, BlockLength));
        s.Source.CopyTo(sourceMask.Slice(row * BlockLength, BlockLength));
    }

    void Skip(long count)
    {
        long next = index + count;
        epoch += next / training.Length;
        index = (int)(next % training.Length);
    }

    void Reshuffle()
    {
        for (int i = 0; i < order.Length; i++) order[i] = i;
        PhiloxShuffle.Shuffle(order, seed, EpochStream, (ulong)epoch << 32);
        orderEpoch = epoch;
    }
}
