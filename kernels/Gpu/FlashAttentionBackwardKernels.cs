using ILGPU;
using ILGPU.Runtime;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>
/// Attention backward for head dims up to 64, in two kernels built from the forward's register tiles
/// (<see cref="FlashAttentionKernels"/>), after <see cref="AttentionBackwardKernels.Delta"/> has written
/// D_i = dO_i·O_i. Nothing of size [L, L] is stored: P = exp(Scale q·k − lse) is recomputed tile by tile, and
/// dS = P (dO·v − D).
/// <list type="bullet">
/// <item><see cref="QueryGradients"/>, query-parallel like the forward: a group of 3 warps owns 48 queries (q
///   and dO in shared memory), streams k and v in tiles of 32 keys, forms S and dP as two 4 x 4 register tiles
///   per thread, and accumulates dQ = Scale dS·K for its rows in registers; two group barriers and one warp
///   barrier per key tile. Shared: q 12 KB + dO 12 KB + k 8 KB + v 8 KB + dS 6 KB = 46 KB.</item>
/// <item><see cref="KeyValueGradients"/>, key-parallel: a group of 3 warps owns 48 keys (k and v in shared
///   memory) and walks every query head of its kv head and every query tile of 32 that can see its keys: Sᵀ and
///   dPᵀ as register tiles (rows are keys now), then dV += Pᵀ dO and dK += dSᵀ q for its rows in registers,
///   Pᵀ and dSᵀ passing through one warp-private tile in turn; two group barriers and three warp barriers per
///   query tile. Shared: k 12 KB + v 12 KB + q 8 KB + dO 8 KB + P 6 KB = 46 KB.</item>
/// </list>
/// Each group owns the gradient rows it writes, so neither kernel needs atomics and the result does not depend
/// on scheduling; the price is S and dP computed twice (7 products of [L, L, D] instead of 5). Every gradient
/// is accumulated (+=). A query whose lse is −∞ (it saw no key) gets P = 0 by taking lse = +∞. Head dims must be
/// multiples of 4 and warps 32 lanes wide (the host checks).
/// </summary>
static class FlashAttentionBackwardKernels
{
    public const int Warps = 3, Block = Warps * FlashAttentionKernels.RowsPerWarp, MaxHeadDim = 64;
    const int RowsPerWarp = FlashAttentionKernels.RowsPerWarp, Tile = FlashAttentionKernels.KeyTile;
    const int RowQuads = MaxHeadDim / 4, ColumnQuads = 2, PQuads = Tile * 4;
    const int Threads = Warps * FlashAttentionKernels.WarpLanes;
    const int Causal = (int)AttentionMaskMode.Causal, Explicit = (int)AttentionMaskMode.Explicit;

    /// <summary>dq += Scale Σ_j dS_ij k_j for one group's 48 queries of one (batch, head).</summary>
    internal static void QueryGradients(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> dOutput,
        ArrayView<float> lse, ArrayView<float> delta, ArrayView<float> dq, ArrayView<byte> allow, AttentionArgs a,
        SpecializedValue<int> config)
    {
        var qTile = SharedMemory.Allocate<Float4>(Block * RowQuads);
        var doTile = SharedMemory.Allocate<Float4>(Block * RowQuads);
        var kTile = SharedMemory.Allocate<Float4>(Tile * RowQuads);
        var vTile = SharedMemory.Allocate<Float4>(Tile * RowQuads);
        var dsTiles = SharedMemory.Allocate<Float4>(Warps * PQuads);

        int dim = config.Value & 255;
        bool vector = (config.Value & 256) != 0;
        int mode = FlashAttentionKernels.Mode(config.Value);
        int dq4 = dim >> 2;
        int t = Group.IdxX, w = Warp.WarpIdx, lane = Warp.LaneIdx;
        int rg = lane >> 3, kg = lane & 7;

        int bh = Grid.IdxX / a.QueryBlocks;
        int q0 = (a.QueryBlocks - 1 - Grid.IdxX % a.QueryBlocks) * Block;
        int h = bh % a.Heads;
        int b = bh / a.Heads;
        int kvh = h / (a.Heads / a.KvHeads);
        int rows = IntrinsicMath.Min(Block, a.QueryLength - q0);
        int width = a.Heads * dim;
        long qStart = b * a.QueryBatchStride + (long)q0 * a.QueryRowStride + h * dim;
        long kStart = b * a.KeyBatchStride + kvh * dim;
        FlashAttentionKernels.LoadTile(q, qStart, a.QueryRowStride, rows, Block, dq4, vector, a.Scale, qTile, RowQuads, true, Threads, t);
        FlashAttentionKernels.LoadTile(dOutput, ((long)b * a.QueryLength + q0) * width + h * dim, width, rows, Block, dq4, vector, 1f,
            doTile, RowQuads, true, Threads, t);

        int warpFirst = w * RowsPerWarp;
        int firstRow = warpFirst + rg;
        long statStart = ((long)b * a.Heads + h) * a.QueryLength + q0;
        var rowLse = new Float4(Lse(lse, statStart, firstRow, rows), Lse(lse, statStart, firstRow + 4, rows),
            Lse(lse, statStart, firstRow + 8, rows), Lse(lse, statStart, firstRow + 12, rows));
        var rowDelta = new Float4(Delta(delta, statStart, firstRow, rows), Delta(delta, statStart, firstRow + 4, rows),
            Delta(delta, statStart, firstRow + 8, rows), Delta(delta, statStart, firstRow + 12, rows));

        int keyEnd = mode == Causal ? IntrinsicMath.Min(a.KeyLength, a.QueryOffset + q0 + rows) : a.KeyLength;
        int warpRows = IntrinsicMath.Clamp(rows - warpFirst, 0, RowsPerWarp);
        int warpKeyEnd = warpRows == 0 ? 0
            : mode == Causal ? IntrinsicMath.Min(a.KeyLength, a.QueryOffset + q0 + warpFirst + warpRows) : a.KeyLength;
        int unmaskedEnd = mode == Explicit ? 0 : mode == Causal ? a.QueryOffset + q0 + warpFirst + 1 : a.KeyLength;

        var qRows = qTile.SubView(firstRow * RowQuads);
        var doRows = doTile.SubView(firstRow * RowQuads);
        var kColumns = kTile.SubView(kg * RowQuads);
        var vColumns = vTile.SubView(kg * RowQuads);
        var dsWarp = dsTiles.SubView(w * PQuads);
        var acc = new OutputQuads();

        for (int k0 = 0; k0 < keyEnd; k0 += Tile)
        {
            int tileKeys = IntrinsicMath.Min(Tile, keyEnd - k0);
            long tileStart = kStart + (long)k0 * a.KeyRowStride;
            FlashAttentionKernels.LoadTile(k, tileStart, a.KeyRowStride, tileKeys, Tile, dq4, vector, 1f, kTile, RowQuads, true, Threads, t);
            FlashAttentionKernels.LoadTile(v, tileStart, a.KeyRowStride, tileKeys, Tile, dq4, vector, 1f, vTile, RowQuads, true, Threads, t);
            Group.Barrier();

            if (k0 < warpKeyEnd)
            {
                var s = FlashAttentionKernels.Scores(qRows, kColumns, RowQuads, dq4, rg, kg);
                var dp = FlashAttentionKernels.Scores(doRows, vColumns, RowQuads, dq4, rg, kg);
                if (k0 + Tile > unmaskedEnd)
                    s = FlashAttentionKernels.Mask(s, allow, a, mode, q0 + firstRow, rows - firstRow, k0 + kg, k0 + tileKeys);
                var ds = new Quads4
                {
                    R0 = ScoreGradient(s.R0, dp.R0, rowLse.X, rowDelta.X),
                    R1 = ScoreGradient(s.R1, dp.R1, rowLse.Y, rowDelta.Y),
                    R2 = ScoreGradient(s.R2, dp.R2, rowLse.Z, rowDelta.Z),
                    R3 = ScoreGradient(s.R3, dp.R3, rowLse.W, rowDelta.W),
                };
                FlashAttentionKernels.StoreProbabilities(dsWarp, ds, rg, kg);
                Warp.Barrier();
                acc = FlashAttentionKernels.Accumulate(acc, dsWarp, kTile, rg, kg, dq4, RowQuads, ColumnQuads, swizzled: true);
            }
            Group.Barrier();
        }

        long dqStart = qStart + (long)firstRow * a.QueryRowStride + 4 * kg;
        long rowStep = 4L * a.QueryRowStride;
        AddRow(dq, dqStart, firstRow < rows, kg, dq4, vector, a.Scale, acc.R0C0, acc.R0C1);
        AddRow(dq, dqStart + rowStep, firstRow + 4 < rows, kg, dq4, vector, a.Scale, acc.R1C0, acc.R1C1);
        AddRow(dq, dqStart + 2 * rowStep, firstRow + 8 < rows, kg, dq4, vector, a.Scale, acc.R2C0, acc.R2C1);
        AddRow(dq, dqStart + 3 * rowStep, firstRow + 12 < rows, kg, dq4, vector, a.Scale, acc.R3C0, acc.R3C1);
    }

    /// <summary>
    /// dk += Scale Σ_i dS_ij q_i and dv += Σ_i P_ij dO_i for one group's 48 keys of one (batch, kv head), over every
    /// query head that reads them. <see cref="AttentionArgs.QueryBlocks"/> holds the number of key blocks here.
    /// </summary>
    internal static void KeyValueGradients(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> dOutput,
        ArrayView<float> lse, ArrayView<float> delta, ArrayView<float> dk, ArrayView<float> dv, ArrayView<byte> allow, AttentionArgs a,
        SpecializedValue<int> config)
    {
        var kTile = SharedMemory.Allocate<Float4>(Block * RowQuads);
        var vTile = SharedMemory.Allocate<Float4>(Block * RowQuads);
        var qTile = SharedMemory.Allocate<Float4>(Tile * RowQuads);
        var doTile = SharedMemory.Allocate<Float4>(Tile * RowQuads);
        var pTiles = SharedMemory.Allocate<Float4>(Warps * PQuads);

        int dim = config.Value & 255;
        bool vector = (config.Value & 256) != 0;
        int mode = FlashAttentionKernels.Mode(config.Value);
        int dq4 = dim >> 2;
        int t = Group.IdxX, w = Warp.WarpIdx, lane = Warp.LaneIdx;
        int rg = lane >> 3, kg = lane & 7;

        int bkv = Grid.IdxX / a.QueryBlocks;
        int k0 = Grid.IdxX % a.QueryBlocks * Block;
        int kvh = bkv % a.KvHeads;
        int b = bkv / a.KvHeads;
        int keys = IntrinsicMath.Min(Block, a.KeyLength - k0);
        int width = a.Heads * dim;
        long kStart = b * a.KeyBatchStride + (long)k0 * a.KeyRowStride + kvh * dim;
        FlashAttentionKernels.LoadTile(k, kStart, a.KeyRowStride, keys, Block, dq4, vector, a.Scale, kTile, RowQuads, true, Threads, t);
        FlashAttentionKernels.LoadTile(v, kStart, a.KeyRowStride, keys, Block, dq4, vector, 1f, vTile, RowQuads, true, Threads, t);

        int warpFirst = w * RowsPerWarp;
        int firstRow = warpFirst + rg;
        int warpKey = k0 + warpFirst;
        bool warpHasKeys = warpFirst < keys;
        var kRows = kTile.SubView(firstRow * RowQuads);
        var vRows = vTile.SubView(firstRow * RowQuads);
        var qColumns = qTile.SubView(kg * RowQuads);
        var doColumns = doTile.SubView(kg * RowQuads);
        var pWarp = pTiles.SubView(w * PQuads);
        var accK = new OutputQuads();
        var accV = new OutputQuads();

        int groupSize = a.Heads / a.KvHeads;
        int firstQuery = mode == Causal ? IntrinsicMath.Max(0, k0 - a.QueryOffset) : 0;
        for (int g = 0; g < groupSize; g++)
        {
            int h = kvh * groupSize + g;
            long statStart = ((long)b * a.Heads + h) * a.QueryLength;
            for (int q0 = firstQuery; q0 < a.QueryLength; q0 += Tile)
            {
                int queries = IntrinsicMath.Min(Tile, a.QueryLength - q0);
                FlashAttentionKernels.LoadTile(q, b * a.QueryBatchStride + (long)q0 * a.QueryRowStride + h * dim, a.QueryRowStride, queries, Tile,
                    dq4, vector, 1f, qTile, RowQuads, true, Threads, t);
                FlashAttentionKernels.LoadTile(dOutput, ((long)b * a.QueryLength + q0) * width + h * dim, width, queries, Tile,
                    dq4, vector, 1f, doTile, RowQuads, true, Threads, t);
                Group.Barrier();

                // Causal: skip tiles whose last query cannot see the warp's first key.
                if (warpHasKeys && (mode != Causal || q0 + Tile - 1 + a.QueryOffset >= warpKey))
                {
                    var st = FlashAttentionKernels.Scores(kRows, qColumns, RowQuads, dq4, rg, kg);
                    long stats = statStart + q0 + kg;
                    var columnLse = new Float4(Lse(lse, stats, 0, queries - kg), Lse(lse, stats, 8, queries - kg),
                        Lse(lse, stats, 16, queries - kg), Lse(lse, stats, 24, queries - kg));
                    var columnDelta = new Float4(Delta(delta, stats, 0, queries - kg), Delta(delta, stats, 8, queries - kg),
                        Delta(delta, stats, 16, queries - kg), Delta(delta, stats, 24, queries - kg));
                    if (mode == Explicit || mode == Causal && warpKey + RowsPerWarp - 1 > a.QueryOffset + q0)
                        st = MaskTransposed(st, allow, a, mode, q0 + kg, warpKey + rg);
                    var p = new Quads4
                    {
                        R0 = Probabilities(st.R0, columnLse), R1 = Probabilities(st.R1, columnLse),
                        R2 = Probabilities(st.R2, columnLse), R3 = Probabilities(st.R3, columnLse),
                    };
                    FlashAttentionKernels.StoreProbabilities(pWarp, p, rg, kg);
                    Warp.Barrier();
                    accV = FlashAttentionKernels.Accumulate(accV, pWarp, doTile, rg, kg, dq4, RowQuads, ColumnQuads, swizzled: true);
                    // dPᵀ only now: formed before the dV pass its 16 registers would be live through it.
                    var dpt = FlashAttentionKernels.Scores(vRows, doColumns, RowQuads, dq4, rg, kg);
                    var ds = new Quads4
                    {
                        R0 = Mul(p.R0, Sub(dpt.R0, columnDelta)), R1 = Mul(p.R1, Sub(dpt.R1, columnDelta)),
                        R2 = Mul(p.R2, Sub(dpt.R2, columnDelta)), R3 = Mul(p.R3, Sub(dpt.R3, columnDelta)),
                    };
                    Warp.Barrier();
                    FlashAttentionKernels.StoreProbabilities(pWarp, ds, rg, kg);
                    Warp.Barrier();
                    accK = FlashAttentionKernels.Accumulate(accK, pWarp, qTile, rg, kg, dq4, RowQuads, ColumnQuads, swizzled: true);
                }
                Group.Barrier();
            }
        }

        long rowStart = kStart + (long)firstRow * a.KeyRowStride + 4 * kg;
        long rowStep = 4L * a.KeyRowStride;
        AddRow(dk, rowStart, firstRow < keys, kg, dq4, vector, a.Scale, accK.R0C0, accK.R0C1);
        AddRow(dk, rowStart + rowStep, firstRow + 4 < keys, kg, dq4, vector, a.Scale, accK.R1C0, accK.R1C1);
        AddRow(dk, rowStart + 2 * rowStep, firstRow + 8 < keys, kg, dq4, vector, a.Scale, accK.R2C0, accK.R2C1);
        AddRow(dk, rowStart + 3 * rowStep, firstRow + 12 < keys, kg, dq4, vector, a.Scale, accK.R3C0, accK.R3C1);
        AddRow(dv, rowStart, firstRow < keys, kg, dq4, vector, 1f, accV.R0C0, accV.R0C1);
        AddRow(dv, rowStart + rowStep, firstRow + 4 < keys, kg, dq4, vector, 1f, accV.R1C0, accV.R1C1);
        AddRow(dv, rowStart + 2 * rowStep, firstRow + 8 < keys, kg, dq4, vector, 1f, accV.R2C0, accV.R2C1);
        AddRow(dv, rowStart + 3 * rowStep, firstRow + 12 < keys, kg, dq4, vector, 1f, accV.R3C0, accV.R3C1);
    }

    /// <summary><see cref="QueryGradients"/> as ILGPU specializes it for GPT-2's heads (64 floats, aligned rows, causal), for <see cref="PtxDump"/>.</summary>
    internal static void QueryGradientsHead64(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> dOutput,
        ArrayView<float> lse, ArrayView<float> delta, ArrayView<float> dq, ArrayView<byte> allow, AttentionArgs a) =>
        QueryGradients(q, k, v, dOutput, lse, delta, dq, allow, a, SpecializedValue.New(FlashAttentionKernels.Config(64, true, AttentionMaskMode.Causal)));

    /// <summary><see cref="KeyValueGradients"/> as ILGPU specializes it for GPT-2's heads (64 floats, aligned rows, causal), for <see cref="PtxDump"/>.</summary>
    internal static void KeyValueGradientsHead64(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> dOutput,
        ArrayView<float> lse, ArrayView<float> delta, ArrayView<float> dk, ArrayView<float> dv, ArrayView<byte> allow, AttentionArgs a) =>
        KeyValueGradients(q, k, v, dOutput, lse, delta, dk, dv, allow, a, SpecializedValue.New(FlashAttentionKernels.Config(64, true, AttentionMaskMode.Causal)));

    /// <summary>lse of row <paramref name="row"/> from <paramref name="start"/>; +∞ (so that P = 0) past the rows and for rows that saw no key.</summary>
    static float Lse(ArrayView<float> lse, long start, int row, int rows)
    {
        if (row >= rows) return float.PositiveInfinity;
        float l = lse[start + row];
        return l == float.NegativeInfinity ? float.PositiveInfinity : l;
    }

    static float Delta(ArrayView<float> delta, long start, int row, int rows) => row < rows ? delta[start + row] : 0f;

    /// <summary>dS = P (dP − D) with P = exp(S − lse), for one row of scores (S already scaled; −∞ where hidden).</summary>
    static Float4 ScoreGradient(Float4 s, Float4 dp, float lse, float delta)
    {
        var p = FlashAttentionKernels.Exp(s, lse);
        return new Float4(p.X * (dp.X - delta), p.Y * (dp.Y - delta), p.Z * (dp.Z - delta), p.W * (dp.W - delta));
    }

    /// <summary>exp(Sᵀ − lse) for one key row against four query columns.</summary>
    static Float4 Probabilities(Float4 st, Float4 lse) =>
        new(MathF.Exp(st.X - lse.X), MathF.Exp(st.Y - lse.Y), MathF.Exp(st.Z - lse.Z), MathF.Exp(st.W - lse.W));

    static Float4 Sub(Float4 a, Float4 b) => new(a.X - b.X, a.Y - b.Y, a.Z - b.Z, a.W - b.W);

    static Float4 Mul(Float4 a, Float4 b) => new(a.X * b.X, a.Y * b.Y, a.Z * b.Z, a.W * b.W);

    /// <summary>
    /// Hidden (query, key) pairs of a transposed tile become −∞: rows are keys <paramref name="key"/> + 4 i, columns
    /// queries <paramref name="query"/> + 8 u. Keys past the end are hidden too, so no mask byte past a row is read.
    /// </summary>
    static Quads4 MaskTransposed(Quads4 st, ArrayView<byte> allow, AttentionArgs a, int mode, int query, int key) => new()
    {
        R0 = MaskKeyRow(st.R0, allow, a, mode, query, key),
        R1 = MaskKeyRow(st.R1, allow, a, mode, query, key + 4),
        R2 = MaskKeyRow(st.R2, allow, a, mode, query, key + 8),
        R3 = MaskKeyRow(st.R3, allow, a, mode, query, key + 12),
    };

    static Float4 MaskKeyRow(Float4 st, ArrayView<byte> allow, AttentionArgs a, int mode, int query, int key) => new(
        FlashAttentionKernels.Visible(allow, a, mode, query, query < a.QueryLength, key, a.KeyLength) ? st.X : float.NegativeInfinity,
        FlashAttentionKernels.Visible(allow, a, mode, query + 8, query + 8 < a.QueryLength, key, a.KeyLength) ? st.Y : float.NegativeInfinity,
        FlashAttentionKernels.Visible(allow, a, mode, query + 16, query + 16 < a.QueryLength, key, a.KeyLength) ? st.Z : float.NegativeInfinity,
        FlashAttentionKernels.Visible(allow, a, mode, query + 24, query + 24 < a.QueryLength, key, a.KeyLength) ? st.W : float.NegativeInfinity);

    /// <summary>target[at + 32 m ..] += factor · quad m for the row's column quads kg and kg + 8 that exist.</summary>
    static void AddRow(ArrayView<float> target, long at, bool exists, int kg, int dq4, bool vector, float factor, Float4 c0, Float4 c1)
    {
        if (!exists) return;
        AddQuad(target, at, kg < dq4, vector, FlashAttentionKernels.Scale(c0, factor));
        AddQuad(target, at + 32, kg + 8 < dq4, vector, FlashAttentionKernels.Scale(c1, factor));
    }

    static void AddQuad(ArrayView<float> target, long at, bool exists, bool vector, Float4 x)
    {
        if (!exists) return;
        if (vector)
        {
            var quads = target.Cast<Float4>();
            quads[at >> 2] = quads[at >> 2].Add(x);
            return;
        }
        target[at] += x.X;
        target[at + 1] += x.Y;
        target[at + 2] += x.Z;
        target[at + 3] += x.W;
    }
}
