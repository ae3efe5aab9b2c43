using ILGPU;
using ILGPU.Runtime;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>Four quads of one thread: four query rows (or four keys) of a register tile, one Float4 each.</summary>
struct Quads4
{
    public Float4 R0, R1, R2, R3;
}

/// <summary>
/// A thread's output accumulators: its four query rows (R0..R3) times up to four column quads (C0..C3: columns
/// 4 (cg + 8 m) .. + 3 for m = 0..3). Passed and returned by value so that ILGPU keeps all 64 floats in registers.
/// </summary>
struct OutputQuads
{
    public Float4 R0C0, R0C1, R0C2, R0C3, R1C0, R1C1, R1C2, R1C3, R2C0, R2C1, R2C2, R2C3, R3C0, R3C1, R3C2, R3C3;
}

/// <summary>
/// Attention forward in the FlashAttention-2 order for float32 SIMT cores: each group owns a block of queries,
/// streams the keys and values through shared memory in tiles of 32, keeps the online softmax state and the
/// output rows in registers, and never forms an [L, L] matrix. Two variants share one body:
/// <list type="bullet">
/// <item><see cref="Forward64"/>: head dims up to 64; 4 warps, 64 queries; separate K and V tiles, so two
///   group barriers per key tile. Shared: Q 16 KB + K 8 KB + V 8 KB + P 8 KB = 40 KB.</item>
/// <item><see cref="Forward128"/>: head dims up to 128; 3 warps, 48 queries (64 queries of 128 floats alone
///   would take 32 KB of CUDA's 48 KB static limit); K and V take turns in one tile, so four group barriers per
///   key tile. Shared: Q 24 KB + K/V 16 KB + P 6 KB = 46 KB.</item>
/// </list>
/// Each warp owns 16 query rows. Lane = 8 rg + kg: the thread holds rows rg, rg + 4, rg + 8, rg + 12 of its warp,
/// <list type="number">
/// <item>S = (Scale q)·kᵀ for those rows and keys kg, kg + 8, kg + 16, kg + 24 of the tile (a 4 x 4 register
///   tile): per head-dim quad, four 16-byte shared loads of q and four of k feed 64 FMAs;</item>
/// <item>the row maxima are reduced over the 8 lanes of a row group with three butterfly shuffles; the row sums
///   stay per lane (each lane's share of the row, rescaled like the output) until the end;</item>
/// <item>P = exp(S − max) goes to the warp's own [32 keys][16 rows] shared tile as four 16-byte stores, which
///   only a warp barrier (<see cref="Forward64"/>) or the barrier before the value tile (<see cref="Forward128"/>)
///   has to order;</item>
/// <item>O += P·V for the same four rows and column quads kg, kg + 8 (+16, +24): per key one 16-byte load of
///   the four rows' probabilities and one per column quad of v feed 16 FMAs each.</item>
/// </list>
/// The q and k tiles hold rows of quads with quad c of row r at c ^ (r % 8) (an XOR swizzle): the eight key
/// groups (and four row groups) of a warp then read eight (four) different bank quads for the same c, and the
/// copies from global memory stay whole quads. The v tile needs no swizzle: a warp reads eight consecutive quads
/// of one row. The last partial query block and the keys past the end are zero-filled; causal blocks stop at their
/// last visible key, blocks of a batch row with a key length stop at that length (a right-padded row never loads its
/// padding), warps skip the tiles that none of their rows can see, and only tiles that straddle a row's limit (or
/// the end of the keys, or any tile for an explicit mask) evaluate per-element masks. The head dimension must be a
/// multiple of 4 and the warp 32 lanes wide (the host checks); a query that sees no key gets zeros and lse = −∞.
/// The launch configuration (head dim, vector loads, mask mode, per-row key lengths) is a specialized value, so
/// each combination compiles with its loop bounds and branches as constants.
/// </summary>
static class FlashAttentionKernels
{
    public const int KeyTile = 32, RowsPerWarp = 16, WarpLanes = 32, MaxHeadDim = 128;
    public const int SmallWarps = 4, SmallQueryBlock = SmallWarps * RowsPerWarp, SmallMaxHeadDim = 64;
    public const int LargeWarps = 3, LargeQueryBlock = LargeWarps * RowsPerWarp, LargeMaxHeadDim = MaxHeadDim;
    const int SmallRowQuads = SmallMaxHeadDim / 4, LargeRowQuads = LargeMaxHeadDim / 4;
    /// <summary>One warp's probability tile: [32 keys][4 row groups] quads, each the four rows of one lane.</summary>
    const int PQuads = KeyTile * 4;
    /// <summary>Quads a thread copies from global memory before it stores any: loads in flight hide latency.</summary>
    const int LoadBatch = 4;
    const int Causal = (int)AttentionMaskMode.Causal, Explicit = (int)AttentionMaskMode.Explicit;

    /// <summary>
    /// Launch bounds for ptxas (.maxntid, .minnctapersm): four groups a multiprocessor caps the registers at 128 for 4
    /// warps and 168 for 3, which the kernels specialized for head dims 64 and 128 meet without spilling (ptxas would
    /// otherwise take up to 232 for the key-parallel backward, two groups a multiprocessor). Four groups of at most
    /// 46 KB of shared memory fit an H100/H200 multiprocessor (228 KB); an A100 (164 KB) holds three.
    /// </summary>
    internal static KernelSpecialization LaunchBounds(int warps) => new(warps * WarpLanes, 4);

    /// <summary>
    /// The specialized launch configuration: head dim (bits 0..7), 16-byte global accesses (bit 8), mask mode (bits 9..10),
    /// per-row key lengths (bit 11, forward only).
    /// </summary>
    public static int Config(int headDim, bool vector, AttentionMaskMode mode, bool keyLengths = false) =>
        headDim | (vector ? 1 << 8 : 0) | (int)mode << 9 | (keyLengths ? 1 << 11 : 0);

    /// <summary>The mask mode of a <see cref="Config"/> value.</summary>
    internal static int Mode(int config) => (config >> 9) & 3;

    internal static void Forward64(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> output,
        ArrayView<float> lse, ArrayView<byte> allow, ArrayView<int> keyLengths, AttentionArgs a, SpecializedValue<int> config)
    {
        var qTile = SharedMemory.Allocate<Float4>(SmallQueryBlock * SmallRowQuads);
        var kTile = SharedMemory.Allocate<Float4>(KeyTile * SmallRowQuads);
        var vTile = SharedMemory.Allocate<Float4>(KeyTile * SmallRowQuads);
        var pTiles = SharedMemory.Allocate<Float4>(SmallWarps * PQuads);
        Run(q, k, v, output, lse, allow, keyLengths, a, config.Value, qTile, kTile, vTile, pTiles, SmallWarps, SmallRowQuads, 2, sharedKv: false);
    }

    internal static void Forward128(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> output,
        ArrayView<float> lse, ArrayView<byte> allow, ArrayView<int> keyLengths, AttentionArgs a, SpecializedValue<int> config)
    {
        var qTile = SharedMemory.Allocate<Float4>(LargeQueryBlock * LargeRowQuads);
        var kvTile = SharedMemory.Allocate<Float4>(KeyTile * LargeRowQuads);
        var pTiles = SharedMemory.Allocate<Float4>(LargeWarps * PQuads);
        Run(q, k, v, output, lse, allow, keyLengths, a, config.Value, qTile, kvTile, kvTile, pTiles, LargeWarps, LargeRowQuads, 4, sharedKv: true);
    }

    /// <summary>
    /// <see cref="Forward64"/> as ILGPU specializes it for GPT-2's heads (64 floats, aligned rows, causal), so that
    /// <see cref="PtxDump"/> shows the code that runs rather than the generic variant.
    /// </summary>
    internal static void Forward64Head64(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> output,
        ArrayView<float> lse, ArrayView<byte> allow, ArrayView<int> keyLengths, AttentionArgs a) =>
        Forward64(q, k, v, output, lse, allow, keyLengths, a, SpecializedValue.New(Config(64, true, AttentionMaskMode.Causal)));

    /// <summary><see cref="Forward128"/> as ILGPU specializes it for LLaMA's heads (128 floats, aligned rows, causal).</summary>
    internal static void Forward128Head128(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> output,
        ArrayView<float> lse, ArrayView<byte> allow, ArrayView<int> keyLengths, AttentionArgs a) =>
        Forward128(q, k, v, output, lse, allow, keyLengths, a, SpecializedValue.New(Config(128, true, AttentionMaskMode.Causal)));

    /// <summary><see cref="Forward64"/> for GPT-2's heads as evaluation runs it: bidirectional over right-padded rows of different lengths.</summary>
    internal static void Forward64Head64KeyLengths(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> output,
        ArrayView<float> lse, ArrayView<byte> allow, ArrayView<int> keyLengths, AttentionArgs a) =>
        Forward64(q, k, v, output, lse, allow, keyLengths, a, SpecializedValue.New(Config(64, true, AttentionMaskMode.Bidirectional, keyLengths: true)));

    /// <summary><see cref="Forward128"/> for LLaMA's heads as evaluation runs it: bidirectional over right-padded rows of different lengths.</summary>
    internal static void Forward128Head128KeyLengths(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> output,
        ArrayView<float> lse, ArrayView<byte> allow, ArrayView<int> keyLengths, AttentionArgs a) =>
        Forward128(q, k, v, output, lse, allow, keyLengths, a, SpecializedValue.New(Config(128, true, AttentionMaskMode.Bidirectional, keyLengths: true)));

    /// <summary>
    /// The body of both variants; <paramref name="warps"/>, <paramref name="rowQuads"/> (quads a shared row holds),
    /// <paramref name="columnQuads"/> (column quads a thread owns) and <paramref name="sharedKv"/> are constants
    /// of the caller, so ILGPU folds them after inlining.
    /// </summary>
    static void Run(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> output,
        ArrayView<float> lse, ArrayView<byte> allow, ArrayView<int> keyLengths, AttentionArgs a, int config,
        ArrayView<Float4> qTile, ArrayView<Float4> kTile, ArrayView<Float4> vTile, ArrayView<Float4> pTiles,
        int warps, int rowQuads, int columnQuads, bool sharedKv)
    {
        int dim = config & 255;
        bool vector = (config & 256) != 0;
        int mode = Mode(config);
        bool perRowKeys = (config & 1 << 11) != 0;
        int dq = dim >> 2;
        int threads = warps * WarpLanes;
        int queryBlock = warps * RowsPerWarp;

        int t = Group.IdxX;
        int w = Warp.WarpIdx;
        int lane = Warp.LaneIdx;
        int rg = lane >> 3, kg = lane & 7;

        // Heaviest (causal) blocks of a head first; the blocks of one head run together and share its keys in L2.
        int bh = Grid.IdxX / a.QueryBlocks;
        int q0 = (a.QueryBlocks - 1 - Grid.IdxX % a.QueryBlocks) * queryBlock;
        int h = bh % a.Heads;
        int b = bh / a.Heads;
        int kvh = h / (a.Heads / a.KvHeads);
        int rows = IntrinsicMath.Min(queryBlock, a.QueryLength - q0);
        long kStart = b * a.KeyBatchStride + kvh * dim;
        LoadTile(q, b * a.QueryBatchStride + (long)q0 * a.QueryRowStride + h * dim, a.QueryRowStride, rows, queryBlock,
            dq, vector, a.Scale, qTile, rowQuads, true, threads, t);

        int keyLimit = perRowKeys ? keyLengths[b] : a.KeyLength;
        int keyEnd = mode == Causal ? IntrinsicMath.Min(keyLimit, a.QueryOffset + q0 + rows) : keyLimit;
        int warpFirst = w * RowsPerWarp;
        int warpRows = IntrinsicMath.Clamp(rows - warpFirst, 0, RowsPerWarp);
        int warpKeyEnd = warpRows == 0 ? 0
            : mode == Causal ? IntrinsicMath.Min(keyLimit, a.QueryOffset + q0 + warpFirst + warpRows) : keyLimit;
        // Keys below this are visible to every row of the warp: tiles that end there need no per-element mask.
        int unmaskedEnd = mode == Explicit ? 0 : mode == Causal ? IntrinsicMath.Min(keyLimit, a.QueryOffset + q0 + warpFirst + 1) : keyLimit;

        var qRows = qTile.SubView((warpFirst + rg) * rowQuads);
        var kRows = kTile.SubView(kg * rowQuads);
        var pWarp = pTiles.SubView(w * PQuads);
        var o = new OutputQuads();
        var runMax = new Float4(float.NegativeInfinity, float.NegativeInfinity, float.NegativeInfinity, float.NegativeInfinity);
        var runSum = new Float4();

        for (int k0 = 0; k0 < keyEnd; k0 += KeyTile)
        {
            int tileKeys = IntrinsicMath.Min(KeyTile, keyEnd - k0);
            long tileStart = kStart + (long)k0 * a.KeyRowStride;
            bool active = k0 < warpKeyEnd;
            LoadTile(k, tileStart, a.KeyRowStride, tileKeys, KeyTile, dq, vector, 1f, kTile, rowQuads, true, threads, t);
            if (!sharedKv) LoadTile(v, tileStart, a.KeyRowStride, tileKeys, KeyTile, dq, vector, 1f, vTile, rowQuads, false, threads, t);
            Group.Barrier();

            if (active)
            {
                var s = Scores(qRows, kRows, rowQuads, dq, rg, kg);
                if (k0 + KeyTile > unmaskedEnd)
                    s = Mask(s, allow, a, mode, q0 + warpFirst + rg, rows - warpFirst - rg, k0 + kg, k0 + tileKeys);

                var tileMax = new Float4(Max(s.R0), Max(s.R1), Max(s.R2), Max(s.R3));
                tileMax = Max(tileMax, Warp.ShuffleXor(tileMax, 1));
                tileMax = Max(tileMax, Warp.ShuffleXor(tileMax, 2));
                tileMax = Max(tileMax, Warp.ShuffleXor(tileMax, 4));
                var newMax = Max(runMax, tileMax);
                // A row that has seen no key yet keeps max −∞; subtracting 0 instead keeps exp(−∞ − x) at 0, never NaN.
                var shift = new Float4(Finite(newMax.X), Finite(newMax.Y), Finite(newMax.Z), Finite(newMax.W));
                var correction = new Float4(MathF.Exp(runMax.X - shift.X), MathF.Exp(runMax.Y - shift.Y),
                    MathF.Exp(runMax.Z - shift.Z), MathF.Exp(runMax.W - shift.W));
                var p = new Quads4 { R0 = Exp(s.R0, shift.X), R1 = Exp(s.R1, shift.Y), R2 = Exp(s.R2, shift.Z), R3 = Exp(s.R3, shift.W) };
                runSum = new Float4(runSum.X * correction.X + Sum(p.R0), runSum.Y * correction.Y + Sum(p.R1),
                    runSum.Z * correction.Z + Sum(p.R2), runSum.W * correction.W + Sum(p.R3));
                runMax = newMax;
                o = Rescale(o, correction, columnQuads);
                StoreProbabilities(pWarp, p, rg, kg);
                if (!sharedKv) Warp.Barrier();
            }

            if (sharedKv)
            {
                Group.Barrier();
                LoadTile(v, tileStart, a.KeyRowStride, tileKeys, KeyTile, dq, vector, 1f, vTile, rowQuads, false, threads, t);
                Group.Barrier();
            }

            if (active) o = Accumulate(o, pWarp, vTile, rg, kg, dq, rowQuads, columnQuads, swizzled: false);
            Group.Barrier();
        }

        runSum = runSum.Add(Warp.ShuffleXor(runSum, 1));
        runSum = runSum.Add(Warp.ShuffleXor(runSum, 2));
        runSum = runSum.Add(Warp.ShuffleXor(runSum, 4));
        int firstRow = warpFirst + rg;
        int width = a.Heads * dim;
        long outStart = ((long)b * a.QueryLength + q0 + firstRow) * width + h * dim + 4 * kg;
        long lseStart = ((long)b * a.Heads + h) * a.QueryLength + q0 + firstRow;
        WriteRow(output, lse, a, outStart, lseStart, firstRow, rows, kg, 0, dq, vector, runMax.X, runSum.X, o.R0C0, o.R0C1, o.R0C2, o.R0C3, width);
        WriteRow(output, lse, a, outStart, lseStart, firstRow, rows, kg, 1, dq, vector, runMax.Y, runSum.Y, o.R1C0, o.R1C1, o.R1C2, o.R1C3, width);
        WriteRow(output, lse, a, outStart, lseStart, firstRow, rows, kg, 2, dq, vector, runMax.Z, runSum.Z, o.R2C0, o.R2C1, o.R2C2, o.R2C3, width);
        WriteRow(output, lse, a, outStart, lseStart, firstRow, rows, kg, 3, dq, vector, runMax.W, runSum.W, o.R3C0, o.R3C1, o.R3C2, o.R3C3, width);
    }

    /// <summary>
    /// Copies rows [0, validRows) of one head (dq quads each, from <paramref name="start"/>, <paramref name="rowStride"/>
    /// floats apart) into the shared tile, times <paramref name="scale"/>, quad c of row r at c ^ (r % 8) when
    /// <paramref name="swizzle"/>; rows validRows..tileRows − 1 become zero (a zero value row times probability 0 must
    /// stay 0, never NaN from stale memory). Each thread issues up to <see cref="LoadBatch"/> global loads before it
    /// stores any. When the group's threads are a multiple of dq (head dims 64 and 128), a thread keeps one column
    /// quad and steps over rows, which leaves a single address increment per quad.
    /// </summary>
    internal static void LoadTile(ArrayView<float> source, long start, long rowStride, int validRows, int tileRows, int dq, bool vector,
        float scale, ArrayView<Float4> tile, int rowQuads, bool swizzle, int threads, int t)
    {
        if (threads % dq == 0)
        {
            int c = t % dq, step = threads / dq;
            long stepStride = step * rowStride;
            int row = t / dq;
            for (long at = start + row * rowStride + 4 * c; row < tileRows; row += LoadBatch * step, at += LoadBatch * stepStride)
            {
                int r1 = row + step, r2 = r1 + step, r3 = r2 + step;
                var x0 = LoadQuad(source, at, row < validRows, vector, scale);
                var x1 = LoadQuad(source, at + stepStride, r1 < validRows, vector, scale);
                var x2 = LoadQuad(source, at + 2 * stepStride, r2 < validRows, vector, scale);
                var x3 = LoadQuad(source, at + 3 * stepStride, r3 < validRows, vector, scale);
                StoreQuad(tile, rowQuads, swizzle, row, c, x0);
                if (r1 < tileRows) StoreQuad(tile, rowQuads, swizzle, r1, c, x1);
                if (r2 < tileRows) StoreQuad(tile, rowQuads, swizzle, r2, c, x2);
                if (r3 < tileRows) StoreQuad(tile, rowQuads, swizzle, r3, c, x3);
            }
            return;
        }

        int total = tileRows * dq;
        for (int e = t; e < total; e += LoadBatch * threads)
        {
            int e1 = e + threads, e2 = e1 + threads, e3 = e2 + threads;
            var x0 = LoadQuad(source, start + e / dq * rowStride + 4 * (e % dq), e / dq < validRows, vector, scale);
            var x1 = LoadQuad(source, start + e1 / dq * rowStride + 4 * (e1 % dq), e1 / dq < validRows, vector, scale);
            var x2 = LoadQuad(source, start + e2 / dq * rowStride + 4 * (e2 % dq), e2 / dq < validRows, vector, scale);
            var x3 = LoadQuad(source, start + e3 / dq * rowStride + 4 * (e3 % dq), e3 / dq < validRows, vector, scale);
            StoreQuad(tile, rowQuads, swizzle, e / dq, e % dq, x0);
            if (e1 < total) StoreQuad(tile, rowQuads, swizzle, e1 / dq, e1 % dq, x1);
            if (e2 < total) StoreQuad(tile, rowQuads, swizzle, e2 / dq, e2 % dq, x2);
            if (e3 < total) StoreQuad(tile, rowQuads, swizzle, e3 / dq, e3 % dq, x3);
        }
    }

    /// <summary>The four floats at <paramref name="at"/>, scaled, when <paramref name="valid"/> (a row of the source); zero otherwise.</summary>
    static Float4 LoadQuad(ArrayView<float> source, long at, bool valid, bool vector, float scale)
    {
        if (!valid) return default;
        var x = vector ? source.Cast<Float4>()[at >> 2] : new Float4(source[at], source[at + 1], source[at + 2], source[at + 3]);
        return new Float4(x.X * scale, x.Y * scale, x.Z * scale, x.W * scale);
    }

    static void StoreQuad(ArrayView<Float4> tile, int rowQuads, bool swizzle, int row, int c, Float4 x) =>
        tile[row * rowQuads + (swizzle ? c ^ (row & 7) : c)] = x;

    /// <summary>
    /// The thread's 4 x 4 scores: rows rg + 4 i of the warp (views at row rg), keys kg + 8 u of the tile (view at
    /// key kg). Row rg + 4 i sits at swizzle rg (i even) or rg + 4 (i odd); key kg + 8 u at swizzle kg. One quad a
    /// pass: unrolling two made ptxas hoist 16 loads and cost 24 registers (a group per multiprocessor) for no
    /// fewer instructions per FMA.
    /// </summary>
    internal static Quads4 Scores(ArrayView<Float4> qRows, ArrayView<Float4> kRows, int rowQuads, int dq, int rg, int kg)
    {
        var s = new Quads4();
        for (int c = 0; c < dq; c++) s = ScoreStep(s, qRows, kRows, rowQuads, c ^ rg, c ^ kg);
        return s;
    }

    /// <summary>One head-dim quad: four q quads (rows 0, 4, 8, 12 from the view) and four k quads (keys 0, 8, 16, 24), 64 FMAs.</summary>
    static Quads4 ScoreStep(Quads4 s, ArrayView<Float4> qRows, ArrayView<Float4> kRows, int rowQuads, int qc, int kc)
    {
        // Views at the quad first, constant row offsets second: each load is one base register plus an immediate.
        var keys = kRows.SubView(kc);
        var evenRows = qRows.SubView(qc);
        var oddRows = qRows.SubView(qc ^ 4);
        var k0 = keys[0];
        var k1 = keys[8 * rowQuads];
        var k2 = keys[16 * rowQuads];
        var k3 = keys[24 * rowQuads];
        return new Quads4
        {
            R0 = Dots(s.R0, evenRows[0], k0, k1, k2, k3),
            R1 = Dots(s.R1, oddRows[4 * rowQuads], k0, k1, k2, k3),
            R2 = Dots(s.R2, evenRows[8 * rowQuads], k0, k1, k2, k3),
            R3 = Dots(s.R3, oddRows[12 * rowQuads], k0, k1, k2, k3),
        };
    }

    /// <summary>acc + (q·k0, q·k1, q·k2, q·k3), each dot written as a chain that ptxas contracts into FMAs.</summary>
    static Float4 Dots(Float4 acc, Float4 q, Float4 k0, Float4 k1, Float4 k2, Float4 k3) => new(
        acc.X + q.X * k0.X + q.Y * k0.Y + q.Z * k0.Z + q.W * k0.W,
        acc.Y + q.X * k1.X + q.Y * k1.Y + q.Z * k1.Z + q.W * k1.W,
        acc.Z + q.X * k2.X + q.Y * k2.Y + q.Z * k2.Z + q.W * k2.W,
        acc.W + q.X * k3.X + q.Y * k3.Y + q.Z * k3.Z + q.W * k3.W);

    /// <summary>
    /// Scores of hidden (query, key) pairs become −∞. <paramref name="query"/> is the query of row 0 (rows step by 4),
    /// <paramref name="validRows"/> how many of the block's rows from there exist, <paramref name="key"/> the key of
    /// column 0 (columns step by 8) and <paramref name="keyEnd"/> the first key not loaded.
    /// </summary>
    internal static Quads4 Mask(Quads4 s, ArrayView<byte> allow, AttentionArgs a, int mode, int query, int validRows, int key, int keyEnd) => new()
    {
        R0 = MaskRow(s.R0, allow, a, mode, query, 0 < validRows, key, keyEnd),
        R1 = MaskRow(s.R1, allow, a, mode, query + 4, 4 < validRows, key, keyEnd),
        R2 = MaskRow(s.R2, allow, a, mode, query + 8, 8 < validRows, key, keyEnd),
        R3 = MaskRow(s.R3, allow, a, mode, query + 12, 12 < validRows, key, keyEnd),
    };

    static Float4 MaskRow(Float4 s, ArrayView<byte> allow, AttentionArgs a, int mode, int query, bool rowExists, int key, int keyEnd) => new(
        Visible(allow, a, mode, query, rowExists, key, keyEnd) ? s.X : float.NegativeInfinity,
        Visible(allow, a, mode, query, rowExists, key + 8, keyEnd) ? s.Y : float.NegativeInfinity,
        Visible(allow, a, mode, query, rowExists, key + 16, keyEnd) ? s.Z : float.NegativeInfinity,
        Visible(allow, a, mode, query, rowExists, key + 24, keyEnd) ? s.W : float.NegativeInfinity);

    /// <summary>The mask of <see cref="AttentionKernels.Visible"/> for a loaded key; rows past the queries read no mask byte.</summary>
    internal static bool Visible(ArrayView<byte> allow, AttentionArgs a, int mode, int query, bool rowExists, int key, int keyEnd) =>
        key < keyEnd && (mode == Causal ? key <= a.QueryOffset + query
            : mode != Explicit || rowExists && allow[(long)query * a.KeyLength + key] != 0);

    static float Finite(float max) => max == float.NegativeInfinity ? 0f : max;

    static float Max(Float4 x) => MathF.Max(MathF.Max(x.X, x.Y), MathF.Max(x.Z, x.W));

    static Float4 Max(Float4 a, Float4 b) => new(MathF.Max(a.X, b.X), MathF.Max(a.Y, b.Y), MathF.Max(a.Z, b.Z), MathF.Max(a.W, b.W));

    static float Sum(Float4 x) => x.X + x.Y + x.Z + x.W;

    internal static Float4 Exp(Float4 s, float shift) =>
        new(MathF.Exp(s.X - shift), MathF.Exp(s.Y - shift), MathF.Exp(s.Z - shift), MathF.Exp(s.W - shift));

    internal static Float4 Scale(Float4 x, float f) => new(x.X * f, x.Y * f, x.Z * f, x.W * f);

    /// <summary>Row i of the output times correction component i; only the first <paramref name="columnQuads"/> column quads exist.</summary>
    static OutputQuads Rescale(OutputQuads o, Float4 c, int columnQuads) => new()
    {
        R0C0 = Scale(o.R0C0, c.X), R0C1 = Scale(o.R0C1, c.X),
        R0C2 = columnQuads > 2 ? Scale(o.R0C2, c.X) : o.R0C2, R0C3 = columnQuads > 3 ? Scale(o.R0C3, c.X) : o.R0C3,
        R1C0 = Scale(o.R1C0, c.Y), R1C1 = Scale(o.R1C1, c.Y),
        R1C2 = columnQuads > 2 ? Scale(o.R1C2, c.Y) : o.R1C2, R1C3 = columnQuads > 3 ? Scale(o.R1C3, c.Y) : o.R1C3,
        R2C0 = Scale(o.R2C0, c.Z), R2C1 = Scale(o.R2C1, c.Z),
        R2C2 = columnQuads > 2 ? Scale(o.R2C2, c.Z) : o.R2C2, R2C3 = columnQuads > 3 ? Scale(o.R2C3, c.Z) : o.R2C3,
        R3C0 = Scale(o.R3C0, c.W), R3C1 = Scale(o.R3C1, c.W),
        R3C2 = columnQuads > 2 ? Scale(o.R3C2, c.W) : o.R3C2, R3C3 = columnQuads > 3 ? Scale(o.R3C3, c.W) : o.R3C3,
    };

    /// <summary>
    /// The thread's probabilities into its warp's tile [key][row group]: key kg + 8 u gets the quad of its four rows.
    /// A warp's stores cover 8 bank quads four times, the minimum for 512 bytes.
    /// </summary>
    internal static void StoreProbabilities(ArrayView<Float4> pWarp, Quads4 p, int rg, int kg)
    {
        int at = kg * 4 + rg;
        pWarp[at] = new Float4(p.R0.X, p.R1.X, p.R2.X, p.R3.X);
        pWarp[at + 32] = new Float4(p.R0.Y, p.R1.Y, p.R2.Y, p.R3.Y);
        pWarp[at + 64] = new Float4(p.R0.Z, p.R1.Z, p.R2.Z, p.R3.Z);
        pWarp[at + 96] = new Float4(p.R0.W, p.R1.W, p.R2.W, p.R3.W);
    }

    /// <summary>
    /// o += P·V over one 32-key tile: <paramref name="pWarp"/> is the warp's probability tile ([32 keys][4 row groups]
    /// quads), <paramref name="vTile"/> the value rows ([32 keys][rowQuads]), swizzled or not. The thread's rows are
    /// those of its row group <paramref name="rg"/>, its columns quads cg + 8 m. Eight keys a pass, written out, so
    /// that every load is a base register plus an immediate.
    /// </summary>
    internal static OutputQuads Accumulate(OutputQuads o, ArrayView<Float4> pWarp, ArrayView<Float4> vTile, int rg, int cg,
        int dq, int rowQuads, int columnQuads, bool swizzled)
    {
        bool fullColumns = dq == 8 * columnQuads;
        for (int j0 = 0; j0 < KeyTile; j0 += 8)
        {
            var p8 = pWarp.SubView(j0 * 4 + rg);
            var v8 = vTile.SubView(j0 * rowQuads + cg);
            o = ValueStep(o, p8, v8, 0, cg, dq, rowQuads, columnQuads, fullColumns, swizzled);
            o = ValueStep(o, p8, v8, 1, cg, dq, rowQuads, columnQuads, fullColumns, swizzled);
            o = ValueStep(o, p8, v8, 2, cg, dq, rowQuads, columnQuads, fullColumns, swizzled);
            o = ValueStep(o, p8, v8, 3, cg, dq, rowQuads, columnQuads, fullColumns, swizzled);
            o = ValueStep(o, p8, v8, 4, cg, dq, rowQuads, columnQuads, fullColumns, swizzled);
            o = ValueStep(o, p8, v8, 5, cg, dq, rowQuads, columnQuads, fullColumns, swizzled);
            o = ValueStep(o, p8, v8, 6, cg, dq, rowQuads, columnQuads, fullColumns, swizzled);
            o = ValueStep(o, p8, v8, 7, cg, dq, rowQuads, columnQuads, fullColumns, swizzled);
        }
        return o;
    }

    /// <summary>
    /// Key u of eight: the four rows' weights (one quad of <paramref name="p8"/>, the view at key 0 and this lane's
    /// row group) times the thread's column quads cg + 8 m of the key's row (<paramref name="v8"/>: the view at key 0,
    /// quad cg; a swizzled row keeps them at (cg ^ u) + 8 m). Quads past the head dim are skipped unless the head dim
    /// fills every column quad (a constant once specialized).
    /// </summary>
    static OutputQuads ValueStep(OutputQuads o, ArrayView<Float4> p8, ArrayView<Float4> v8, int u, int cg,
        int dq, int rowQuads, int columnQuads, bool fullColumns, bool swizzled)
    {
        var p = p8[u * 4];
        int row = u * rowQuads + (swizzled ? (cg ^ u) - cg : 0);
        var v0 = fullColumns || cg < dq ? v8[row] : default;
        var v1 = fullColumns || cg + 8 < dq ? v8[row + 8] : default;
        var v2 = columnQuads > 2 && (fullColumns || cg + 16 < dq) ? v8[row + 16] : default;
        var v3 = columnQuads > 3 && (fullColumns || cg + 24 < dq) ? v8[row + 24] : default;
        return new OutputQuads
        {
            R0C0 = o.R0C0.MultiplyAdd(p.X, v0), R0C1 = o.R0C1.MultiplyAdd(p.X, v1),
            R0C2 = columnQuads > 2 ? o.R0C2.MultiplyAdd(p.X, v2) : o.R0C2, R0C3 = columnQuads > 3 ? o.R0C3.MultiplyAdd(p.X, v3) : o.R0C3,
            R1C0 = o.R1C0.MultiplyAdd(p.Y, v0), R1C1 = o.R1C1.MultiplyAdd(p.Y, v1),
            R1C2 = columnQuads > 2 ? o.R1C2.MultiplyAdd(p.Y, v2) : o.R1C2, R1C3 = columnQuads > 3 ? o.R1C3.MultiplyAdd(p.Y, v3) : o.R1C3,
            R2C0 = o.R2C0.MultiplyAdd(p.Z, v0), R2C1 = o.R2C1.MultiplyAdd(p.Z, v1),
            R2C2 = columnQuads > 2 ? o.R2C2.MultiplyAdd(p.Z, v2) : o.R2C2, R2C3 = columnQuads > 3 ? o.R2C3.MultiplyAdd(p.Z, v3) : o.R2C3,
            R3C0 = o.R3C0.MultiplyAdd(p.W, v0), R3C1 = o.R3C1.MultiplyAdd(p.W, v1),
            R3C2 = columnQuads > 2 ? o.R3C2.MultiplyAdd(p.W, v2) : o.R3C2, R3C3 = columnQuads > 3 ? o.R3C3.MultiplyAdd(p.W, v3) : o.R3C3,
        };
    }

    /// <summary>
    /// Row <paramref name="i"/> of the thread (block row firstRow + 4 i): its column quads kg + 8 m divided by the
    /// row sum, and its lse (written by lane kg = i of the row group). Rows past the block's queries write nothing.
    /// </summary>
    static void WriteRow(ArrayView<float> output, ArrayView<float> lse, AttentionArgs a, long outStart, long lseStart,
        int firstRow, int rows, int kg, int i, int dq, bool vector, float max, float sum, Float4 c0, Float4 c1, Float4 c2, Float4 c3, int width)
    {
        if (firstRow + 4 * i >= rows) return;
        float inverse = sum > 0f ? 1f / sum : 0f;
        long start = outStart + (long)4 * i * width;
        WriteQuad(output, start, kg < dq, vector, Scale(c0, inverse));
        WriteQuad(output, start + 32, kg + 8 < dq, vector, Scale(c1, inverse));
        WriteQuad(output, start + 64, kg + 16 < dq, vector, Scale(c2, inverse));
        WriteQuad(output, start + 96, kg + 24 < dq, vector, Scale(c3, inverse));
        if (a.HasLse != 0 && kg == i)
            lse[lseStart + 4 * i] = sum > 0f ? max + MathF.Log(sum) : float.NegativeInfinity;
    }

    internal static void WriteQuad(ArrayView<float> output, long at, bool exists, bool vector, Float4 x)
    {
        if (!exists) return;
        if (vector)
        {
            output.Cast<Float4>()[at >> 2] = x;
            return;
        }
        output[at] = x.X;
        output[at + 1] = x.Y;
        output[at + 2] = x.Z;
        output[at + 3] = x.W;
    }
}
