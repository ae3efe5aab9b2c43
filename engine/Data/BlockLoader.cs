namespace DiffuSharp.Data;

/// <summary>Where a <see cref="BlockLoader"/> stands: the epoch, and how many of its blocks have been handed out.</summary>
public readonly record struct LoaderState(long Epoch, int Index);

/// <summary>
/// Training batches from a <see cref="PackedDataset"/>. Each epoch visits every training block once, in the
/// order of a Philox permutation keyed by (dataset seed, epoch); a batch that runs past the end of an epoch
/// continues into the next. The position is <see cref="LoaderState"/> alone, so a loader restored with
/// <see cref="SetState"/> hands out exactly the batches an uninterrupted one would have.
/// </summary>
public sealed class BlockLoader
{
    /// <summary>Philox stream of the epoch shuffles; the counter is (epoch &lt;&lt; 32) + step.</summary>
    const ulong ShuffleStream = 0x73687566666c65;

    readonly int[] order;
    long orderEpoch = -1;
    long epoch;
    int index;

    /// <summary>Starts at epoch 0, block 0. A dataset always has at least one training block.</summary>
    public BlockLoader(PackedDataset dataset)
    {
        Dataset = dataset;
        order = new int[dataset.TrainingBlocks];
    }

    public PackedDataset Dataset { get; }

    public int BlockLength => Dataset.BlockLength;

    public LoaderState GetState() => new(epoch, index);

    /// <summary>Continues from a state that <see cref="GetState"/> gave on the same data.</summary>
    public void SetState(LoaderState state)
    {
        if (state.Epoch < 0 || state.Epoch > uint.MaxValue || state.Index < 0 || state.Index >= Dataset.TrainingBlocks)
            throw new DatasetException($"loader state (epoch {state.Epoch}, index {state.Index}) does not fit this data, which has {Dataset.TrainingBlocks} training blocks an epoch");
        epoch = state.Epoch;
        index = state.Index;
    }

    /// <summary>The next <paramref name="batchSize"/> training blocks as [batchSize, BlockLength] ids; advances the position.</summary>
    public void NextBatch(int batchSize, Span<int> destination)
    {
        Dataset.CheckBatch(batchSize, destination);
        for (int b = 0; b < batchSize; b++)
        {
            if (orderEpoch != epoch) Reshuffle();
            Dataset.ReadBlock(Dataset.TrainingBlock(order[index]), destination.Slice(b * BlockLength, BlockLength));
            if (++index == order.Length)
            {
                epoch++;
                index = 0;
            }
        }
    }

    /// <summary>Moves the position past <paramref name="count"/> blocks without reading them (other ranks' share of a batch).</summary>
    public void Skip(long count)
    {
        if (count < 0) throw new ArgumentOutOfRangeException(nameof(count), "cannot skip backwards");
        long index = this.index + count;
        epoch += index / order.Length;
        this.index = (int)(index % order.Length);
    }

    void Reshuffle()
    {
        for (int i = 0; i < order.Length; i++) order[i] = i;
        PhiloxShuffle.Shuffle(order, Dataset.Seed, ShuffleStream, (ulong)epoch << 32);
        orderEpoch = epoch;
    }
}
