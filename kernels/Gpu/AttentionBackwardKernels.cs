using ILGPU;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>
/// The tiled attention backward, kept for what <see cref="FlashAttentionBackwardKernels"/> does not cover (head dims
/// above 64 or not multiples of 4, warps other than 32 lanes); its <see cref="Delta"/> kernel serves both.
/// Flash-style (the FlashAttention-2 order): nothing of size [L, L] is stored; the
/// probabilities are recomputed tile by tile from q, k and the forward's lse, P = exp(Scale q·k − lse).
/// A first kernel writes D_i = Σ_d dO_i·O_i per (batch, head, query) into a [B, H, Tq] buffer. The main
/// kernel is key-parallel: one group of 128 threads per (batch, kv head, block of 16 keys) keeps its key
/// and value tiles in shared memory and its dK, dV rows in registers, and walks every query head of its
/// kv head (grouped-query attention) and every query block of 16 that can see its keys. Per query block:
/// <list type="number">
/// <item>load the q and dO tiles and the rows' lse and D;</item>
/// <item>thread t takes key t % 16 and query rows t / 16 and t / 16 + 8: S = Scale q·k, dP = dO·v,
///   P = exp(S − lse) where visible (0 elsewhere and for rows with lse = −∞), dS = P (dP − D);</item>
/// <item>thread t owns head columns t % 32 (+32, +64, +96) of key rows t / 32 (+4, +8, +12):
///   dV += Pᵀ dO and dK += dSᵀ q in registers; for the same columns of query rows t / 32 (+4, ...) it
///   forms (dS k) and adds Scale times it to dQ with float atomics, since every key block of the
///   sequence adds to the same dQ rows.</item>
/// </list>
/// The group owns its dK and dV rows outright, so it adds them (Scale dK) to global memory without atomics.
/// Shared memory: (2 x 16 x 129 + 2 x 16 x 128 + 2 x 16 x 17 + 32) floats = 34.4 KB. Causal groups skip
/// the query blocks before their first key. Every gradient is accumulated (+=).
/// </summary>
static class AttentionBackwardKernels
{
    public const int Threads = 128, Block = 16, MaxHeadDim = AttentionKernels.MaxHeadDim;
    const int KvStride = MaxHeadDim + 1, SStride = Block + 1;
    const int ScoreRowStep = Threads / Block;
    const int Lanes = 32, LaneRows = Threads / Lanes;
    const int Causal = (int)AttentionMaskMode.Causal;

    internal static int Groups(in AttentionShape shape) => shape.Batch * shape.KvHeads * KeyBlocks(shape.KeyLength);

    static int KeyBlocks(int keyLength) => (keyLength + Block - 1) / Block;

    /// <summary>delta[b, h, i] = Σ_d dOut[b, i, h D + d] · output[b, i, h D + d]; one warp per (b, h, i).</summary>
    internal static void Delta(ArrayView<float> output, ArrayView<float> dOutput, ArrayView<float> delta, int heads, int length, int dim)
    {
        long row = (long)Grid.IdxX * (Group.DimX / Warp.WarpSize) + Warp.WarpIdx;
        if (row >= delta.Length) return;
        long i = row % length;
        long bh = row / length;
        long h = bh % heads;
        long b = bh / heads;
        long start = ((b * length + i) * heads + h) * dim;
        float sum = 0f;
        for (int c = Warp.LaneIdx; c < dim; c += Warp.WarpSize) sum += dOutput[start + c] * output[start + c];
        for (int mask = Warp.WarpSize / 2; mask > 0; mask >>= 1)
            sum += Warp.ShuffleXor(sum, mask);
        if (Warp.LaneIdx == 0) delta[row] = sum;
    }

    internal static void Backward(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> dOutput,
        ArrayView<float> lse, ArrayView<float> delta, ArrayView<float> dq, ArrayView<float> dk, ArrayView<float> dv,
        ArrayView<byte> allow, AttentionArgs a)
    {
        var kTile = SharedMemory.Allocate<float>(Block * KvStride);
        var vTile = SharedMemory.Allocate<float>(Block * KvStride);
        var qTile = SharedMemory.Allocate<float>(Block * MaxHeadDim);
        var doTile = SharedMemory.Allocate<float>(Block * MaxHeadDim);
        var pTile = SharedMemory.Allocate<float>(Block * SStride);
        var dsTile = SharedMemory.Allocate<float>(Block * SStride);
        var rowLse = SharedMemory.Allocate<float>(Block);
        var rowDelta = SharedMemory.Allocate<float>(Block);

        int t = Group.IdxX;
        int keyBlocks = KeyBlocks(a.KeyLength);
        int k0 = Grid.IdxX % keyBlocks * Block;
        int bkv = Grid.IdxX / keyBlocks;
        int kvh = bkv % a.KvHeads;
        int b = bkv / a.KvHeads;
        int dim = a.HeadDim;
        int keys = IntrinsicMath.Min(Block, a.KeyLength - k0);
        long kStart = b * a.KeyBatchStride + (long)k0 * a.KeyRowStride + kvh * dim;
        LoadRows(k, kStart, a.KeyRowStride, keys, dim, kTile, KvStride, t);
        LoadRows(v, kStart, a.KeyRowStride, keys, dim, vTile, KvStride, t);

        int kj = t % Block, qi = t / Block;
        int lane = t % Lanes, jr = t / Lanes;
        var dk0 = new Float4();
        var dk1 = new Float4();
        var dk2 = new Float4();
        var dk3 = new Float4();
        var dv0 = new Float4();
        var dv1 = new Float4();
        var dv2 = new Float4();
        var dv3 = new Float4();

        int groupSize = a.Heads / a.KvHeads;
        int outWidth = a.Heads * dim;
        int firstQuery = a.Mode == Causal ? IntrinsicMath.Max(0, k0 - a.QueryOffset) : 0;
        for (int g = 0; g < groupSize; g++)
        {
            int h = kvh * groupSize + g;
            long statStart = ((long)b * a.Heads + h) * a.QueryLength;
            for (int q0 = firstQuery; q0 < a.QueryLength; q0 += Block)
            {
                int rows = IntrinsicMath.Min(Block, a.QueryLength - q0);
                long qStart = b * a.QueryBatchStride + (long)q0 * a.QueryRowStride + h * dim;
                LoadRows(q, qStart, a.QueryRowStride, rows, dim, qTile, MaxHeadDim, t);
                LoadRows(dOutput, ((long)b * a.QueryLength + q0) * outWidth + h * dim, outWidth, rows, dim, doTile, MaxHeadDim, t);
                if (t < Block)
                {
                    rowLse[t] = t < rows ? lse[statStart + q0 + t] : float.NegativeInfinity;
                    rowDelta[t] = t < rows ? delta[statStart + q0 + t] : 0f;
                }
                Group.Barrier();

                float s0 = 0f, s1 = 0f, dp0 = 0f, dp1 = 0f;
                for (int c = 0; c < dim; c++)
                {
                    float kc = kTile[kj * KvStride + c];
                    float vc = vTile[kj * KvStride + c];
                    s0 += qTile[qi * MaxHeadDim + c] * kc;
                    s1 += qTile[(qi + ScoreRowStep) * MaxHeadDim + c] * kc;
                    dp0 += doTile[qi * MaxHeadDim + c] * vc;
                    dp1 += doTile[(qi + ScoreRowStep) * MaxHeadDim + c] * vc;
                }
                StoreScore(pTile, dsTile, rowLse, rowDelta, allow, a, qi, q0, rows, kj, k0, keys, s0, dp0);
                StoreScore(pTile, dsTile, rowLse, rowDelta, allow, a, qi + ScoreRowStep, q0, rows, kj, k0, keys, s1, dp1);
                Group.Barrier();

                dv0 = AccumulateKeyRow(dv0, pTile, doTile, jr, lane, rows, dim);
                dv1 = AccumulateKeyRow(dv1, pTile, doTile, jr + LaneRows, lane, rows, dim);
                dv2 = AccumulateKeyRow(dv2, pTile, doTile, jr + 2 * LaneRows, lane, rows, dim);
                dv3 = AccumulateKeyRow(dv3, pTile, doTile, jr + 3 * LaneRows, lane, rows, dim);
                dk0 = AccumulateKeyRow(dk0, dsTile, qTile, jr, lane, rows, dim);
                dk1 = AccumulateKeyRow(dk1, dsTile, qTile, jr + LaneRows, lane, rows, dim);
                dk2 = AccumulateKeyRow(dk2, dsTile, qTile, jr + 2 * LaneRows, lane, rows, dim);
                dk3 = AccumulateKeyRow(dk3, dsTile, qTile, jr + 3 * LaneRows, lane, rows, dim);

                for (int i = jr; i < rows; i += LaneRows)
                {
                    var acc = new Float4();
                    for (int j = 0; j < keys; j++)
                        acc = acc.MultiplyAdd(dsTile[i * SStride + j], Columns(kTile, j * KvStride, lane, dim));
                    AtomicAddColumns(dq, qStart + (long)i * a.QueryRowStride, acc, a.Scale, lane, dim);
                }
                Group.Barrier();
            }
        }

        StoreKeyRow(dk, dv, dk0, dv0, kStart, jr, keys, a, lane);
        StoreKeyRow(dk, dv, dk1, dv1, kStart, jr + LaneRows, keys, a, lane);
        StoreKeyRow(dk, dv, dk2, dv2, kStart, jr + 2 * LaneRows, keys, a, lane);
        StoreKeyRow(dk, dv, dk3, dv3, kStart, jr + 3 * LaneRows, keys, a, lane);
    }

    /// <summary>Copies `count` rows of one head into a shared tile; the tile's other rows are zero.</summary>
    static void LoadRows(ArrayView<float> source, long start, long rowStride, int count, int dim, ArrayView<float> tile, int tileStride, int t)
    {
        for (int e = t; e < Block * dim; e += Threads)
        {
            int r = e / dim, c = e - r * dim;
            tile[r * tileStride + c] = r < count ? source[start + r * rowStride + c] : 0f;
        }
    }

    /// <summary>P and dS of one (query row, key) pair of the tile; zeros where the key is hidden or out of range.</summary>
    static void StoreScore(ArrayView<float> pTile, ArrayView<float> dsTile, ArrayView<float> rowLse, ArrayView<float> rowDelta,
        ArrayView<byte> allow, AttentionArgs a, int row, int q0, int rows, int key, int k0, int keys, float dot, float dp)
    {
        float l = rowLse[row];
        bool visible = row < rows && key < keys && l != float.NegativeInfinity && AttentionKernels.Visible(allow, a, q0 + row, k0 + key);
        float p = visible ? MathF.Exp(dot * a.Scale - l) : 0f;
        pTile[row * SStride + key] = p;
        dsTile[row * SStride + key] = visible ? p * (dp - rowDelta[row]) : 0f;
    }

    /// <summary>acc[m] += Σ_i weights[i, key] tile[i, lane + 32 m] over the tile's valid query rows.</summary>
    static Float4 AccumulateKeyRow(Float4 acc, ArrayView<float> weights, ArrayView<float> tile, int key, int lane, int rows, int dim)
    {
        for (int i = 0; i < rows; i++)
            acc = acc.MultiplyAdd(weights[i * SStride + key], Columns(tile, i * MaxHeadDim, lane, dim));
        return acc;
    }

    /// <summary>Columns lane, lane + 32, lane + 64, lane + 96 of a tile row; zero past the head dimension.</summary>
    static Float4 Columns(ArrayView<float> tile, int start, int lane, int dim) => new(
        lane < dim ? tile[start + lane] : 0f,
        lane + Lanes < dim ? tile[start + lane + Lanes] : 0f,
        lane + 2 * Lanes < dim ? tile[start + lane + 2 * Lanes] : 0f,
        lane + 3 * Lanes < dim ? tile[start + lane + 3 * Lanes] : 0f);

    static void AtomicAddColumns(ArrayView<float> target, long start, Float4 values, float factor, int lane, int dim)
    {
        for (int m = 0; m < 4; m++)
        {
            int c = lane + m * Lanes;
            if (c < dim) Atomic.Add(ref target[start + c], factor * values[m]);
        }
    }

    /// <summary>dK row += Scale · (dSᵀ q) row and dV row += (Pᵀ dO) row, for key `key` of the block when it exists.</summary>
    static void StoreKeyRow(ArrayView<float> dk, ArrayView<float> dv, Float4 dkRow, Float4 dvRow, long kStart, int key, int keys, AttentionArgs a, int lane)
    {
        if (key >= keys) return;
        long start = kStart + (long)key * a.KeyRowStride;
        for (int m = 0; m < 4; m++)
        {
            int c = lane + m * Lanes;
            if (c < a.HeadDim)
            {
                dk[start + c] += a.Scale * dkRow[m];
                dv[start + c] += dvRow[m];
            }
        }
    }
}
