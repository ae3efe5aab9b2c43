using ILGPU;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>
/// The scalars of one attention launch (an <see cref="AttentionShape"/> flattened for the kernel). Public
/// because ILGPU's CPU launcher, generated in another assembly, must see every kernel parameter type.
/// </summary>
public struct AttentionArgs
{
    public int Heads, KvHeads, HeadDim, QueryLength, KeyLength, QueryOffset;
    public int QueryRowStride, KeyRowStride;
    public long QueryBatchStride, KeyBatchStride;
    public float Scale;
    public int Mode, HasLse, QueryBlocks;
    /// <summary>1 when the kernel reads per-row key lengths (the tiled forward; the flash forward has them in its specialized configuration).</summary>
    public int HasKeyLengths;

    public AttentionArgs(in AttentionShape shape, AttentionMaskMode mode, bool hasLse, int queryBlock = AttentionKernels.QueryBlock)
    {
        Heads = shape.Heads; KvHeads = shape.KvHeads; HeadDim = shape.HeadDim;
        QueryLength = shape.QueryLength; KeyLength = shape.KeyLength; QueryOffset = shape.QueryOffset;
        QueryRowStride = shape.QueryRowStride; KeyRowStride = shape.KeyRowStride;
        QueryBatchStride = shape.QueryBatchStride; KeyBatchStride = shape.KeyBatchStride;
        Scale = shape.Scale;
        Mode = (int)mode;
        HasLse = hasLse ? 1 : 0;
        QueryBlocks = (shape.QueryLength + queryBlock - 1) / queryBlock;
    }
}

/// <summary>
/// The tiled attention forward, kept for what <see cref="FlashAttentionKernels"/> does not cover (head dims that are
/// not multiples of 4, warps other than 32 lanes). One group of 128 threads per (batch, head, block of 32 queries). The
/// query block stays in shared memory; keys and values stream through one shared tile of 16 rows, and an
/// online softmax (running max and sum per query) rescales the output accumulator, so no [L, L] score
/// matrix ever exists in device memory. Per key tile:
/// <list type="number">
/// <item>all threads load the key tile;</item>
/// <item>scores: thread t takes key t % 16 and four query rows 8 apart (32 x 16 scores);</item>
/// <item>threads 0..31 each update one query row's running max/sum and turn its scores into
///   probabilities, while all threads overwrite the tile with the values;</item>
/// <item>P·V: thread t takes head columns t % 32 (+32, ...) for query rows t / 32 (+4, ...), so a warp
///   shares one probability (broadcast) and reads consecutive value columns.</item>
/// </list>
/// Rows are padded by one float (129, 17) so that reads across rows fall in different banks. Shared
/// memory: (32 x 129 + 16 x 129 + 32 x 128 + 32 x 17 + 32) floats = 43.5 KB, under CUDA's 48 KB static limit.
/// Causal blocks stop at their last visible key, and with per-row key lengths every block of a row stops at its
/// length (the tile that straddles it is masked per key). A query with no visible key gets zeros and lse = -inf.
/// </summary>
static class AttentionKernels
{
    public const int Threads = 128, QueryBlock = 32, KeyBlock = 16, MaxHeadDim = 128;
    const int QStride = MaxHeadDim + 1, KvStride = MaxHeadDim + 1, SStride = KeyBlock + 1;
    const int ScoreRowStep = Threads / KeyBlock;
    const int ColumnLanes = 32, RowGroups = Threads / ColumnLanes;
    const int Causal = (int)AttentionMaskMode.Causal, Explicit = (int)AttentionMaskMode.Explicit;

    internal static int Groups(in AttentionShape shape) =>
        shape.Batch * shape.Heads * ((shape.QueryLength + QueryBlock - 1) / QueryBlock);

    internal static void Forward(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> output,
        ArrayView<float> lse, ArrayView<byte> allow, ArrayView<int> keyLengths, AttentionArgs a)
    {
        var qTile = SharedMemory.Allocate<float>(QueryBlock * QStride);
        var kvTile = SharedMemory.Allocate<float>(KeyBlock * KvStride);
        var oTile = SharedMemory.Allocate<float>(QueryBlock * MaxHeadDim);
        var sTile = SharedMemory.Allocate<float>(QueryBlock * SStride);
        var rowScale = SharedMemory.Allocate<float>(QueryBlock);

        int t = Group.IdxX;
        int qBlock = Grid.IdxX % a.QueryBlocks;
        int bh = Grid.IdxX / a.QueryBlocks;
        int h = bh % a.Heads;
        int b = bh / a.Heads;
        int kvh = h / (a.Heads / a.KvHeads);
        int dim = a.HeadDim;
        int q0 = qBlock * QueryBlock;
        int rows = IntrinsicMath.Min(QueryBlock, a.QueryLength - q0);
        long qBase = b * a.QueryBatchStride + (long)q0 * a.QueryRowStride + h * dim;
        long kBase = b * a.KeyBatchStride + kvh * dim;

        for (int e = t; e < QueryBlock * dim; e += Threads)
        {
            int r = e / dim, c = e - r * dim;
            qTile[r * QStride + c] = r < rows ? q[qBase + (long)r * a.QueryRowStride + c] : 0f;
            oTile[r * MaxHeadDim + c] = 0f;
        }

        float runMax = float.NegativeInfinity;
        float runSum = 0f;
        int keyLimit = a.HasKeyLengths != 0 ? keyLengths[b] : a.KeyLength;
        int keyEnd = a.Mode == Causal ? IntrinsicMath.Min(keyLimit, a.QueryOffset + q0 + rows) : keyLimit;
        int kj = t % KeyBlock;
        int qi = t / KeyBlock;

        for (int k0 = 0; k0 < keyEnd; k0 += KeyBlock)
        {
            int keys = IntrinsicMath.Min(KeyBlock, keyEnd - k0);
            LoadKeyTile(k, kvTile, kBase + (long)k0 * a.KeyRowStride, a.KeyRowStride, keys, dim, t);
            Group.Barrier();

            var dots = new Float4();
            for (int c = 0; c < dim; c++)
            {
                float kc = kvTile[kj * KvStride + c];
                dots = dots.MultiplyAdd(kc, new Float4(
                    qTile[qi * QStride + c],
                    qTile[(qi + ScoreRowStep) * QStride + c],
                    qTile[(qi + 2 * ScoreRowStep) * QStride + c],
                    qTile[(qi + 3 * ScoreRowStep) * QStride + c]));
            }
            for (int j = 0; j < 4; j++)
            {
                int row = qi + j * ScoreRowStep;
                bool visible = row < rows && kj < keys && Visible(allow, a, q0 + row, k0 + kj);
                sTile[row * SStride + kj] = visible ? dots[j] * a.Scale : float.NegativeInfinity;
            }
            Group.Barrier();

            if (t < QueryBlock)
            {
                float tileMax = float.NegativeInfinity;
                for (int j = 0; j < keys; j++) tileMax = MathF.Max(tileMax, sTile[t * SStride + j]);
                float newMax = MathF.Max(runMax, tileMax);
                float correction = 1f;
                float tileSum = 0f;
                if (newMax != float.NegativeInfinity)
                {
                    correction = MathF.Exp(runMax - newMax);
                    for (int j = 0; j < keys; j++)
                    {
                        float p = MathF.Exp(sTile[t * SStride + j] - newMax);
                        sTile[t * SStride + j] = p;
                        tileSum += p;
                    }
                }
                else
                {
                    for (int j = 0; j < keys; j++) sTile[t * SStride + j] = 0f;
                }
                runSum = runSum * correction + tileSum;
                runMax = newMax;
                rowScale[t] = correction;
            }
            LoadKeyTile(v, kvTile, kBase + (long)k0 * a.KeyRowStride, a.KeyRowStride, keys, dim, t);
            Group.Barrier();

            for (int c = t % ColumnLanes; c < dim; c += ColumnLanes)
            {
                for (int row = t / ColumnLanes; row < rows; row += RowGroups)
                {
                    float acc = 0f;
                    for (int j = 0; j < keys; j++) acc += sTile[row * SStride + j] * kvTile[j * KvStride + c];
                    int o = row * MaxHeadDim + c;
                    oTile[o] = oTile[o] * rowScale[row] + acc;
                }
            }
            Group.Barrier();
        }

        if (t < QueryBlock)
        {
            rowScale[t] = runSum > 0f ? 1f / runSum : 0f;
            if (a.HasLse != 0 && t < rows)
                lse[((long)b * a.Heads + h) * a.QueryLength + q0 + t] = runSum > 0f ? runMax + MathF.Log(runSum) : float.NegativeInfinity;
        }
        Group.Barrier();

        int width = a.Heads * dim;
        for (int e = t; e < rows * dim; e += Threads)
        {
            int r = e / dim, c = e - r * dim;
            output[((long)b * a.QueryLength + q0 + r) * width + h * dim + c] = oTile[r * MaxHeadDim + c] * rowScale[r];
        }
    }

    /// <summary>Copies `keys` rows of one head into the shared tile; rows past the end are zero (0 * garbage could be NaN).</summary>
    static void LoadKeyTile(ArrayView<float> source, ArrayView<float> tile, long start, int rowStride, int keys, int dim, int t)
    {
        for (int e = t; e < KeyBlock * dim; e += Threads)
        {
            int r = e / dim, c = e - r * dim;
            tile[r * KvStride + c] = r < keys ? source[start + (long)r * rowStride + c] : 0f;
        }
    }

    internal static bool Visible(ArrayView<byte> allow, AttentionArgs a, int query, int key) =>
        a.Mode == Causal ? key <= a.QueryOffset + query
        : a.Mode == Explicit ? allow[(long)query * a.KeyLength + key] != 0
        : true;
}
