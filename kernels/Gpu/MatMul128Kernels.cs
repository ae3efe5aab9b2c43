using ILGPU;
using ILGPU.Runtime;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>A thread's 8 x 8 float32 accumulators: rows R0..R7, each as two quads of columns (L: 0..3, H: 4..7).</summary>
struct Block8x8
{
    public Float4 R0L, R0H, R1L, R1H, R2L, R2H, R3L, R3H, R4L, R4H, R5L, R5H, R6L, R6H, R7L, R7H;

    /// <summary>
    /// One k step of the outer product: rows take a (a0 rows 0..3, a1 rows 4..7), columns take b (b0 columns
    /// 0..3, b1 columns 4..7). Returned by value so that ILGPU keeps all 64 floats in registers.
    /// </summary>
    public static Block8x8 Step(Block8x8 c, Float4 a0, Float4 a1, Float4 b0, Float4 b1) => new()
    {
        R0L = c.R0L.MultiplyAdd(a0.X, b0), R0H = c.R0H.MultiplyAdd(a0.X, b1),
        R1L = c.R1L.MultiplyAdd(a0.Y, b0), R1H = c.R1H.MultiplyAdd(a0.Y, b1),
        R2L = c.R2L.MultiplyAdd(a0.Z, b0), R2H = c.R2H.MultiplyAdd(a0.Z, b1),
        R3L = c.R3L.MultiplyAdd(a0.W, b0), R3H = c.R3H.MultiplyAdd(a0.W, b1),
        R4L = c.R4L.MultiplyAdd(a1.X, b0), R4H = c.R4H.MultiplyAdd(a1.X, b1),
        R5L = c.R5L.MultiplyAdd(a1.Y, b0), R5H = c.R5H.MultiplyAdd(a1.Y, b1),
        R6L = c.R6L.MultiplyAdd(a1.Z, b0), R6H = c.R6H.MultiplyAdd(a1.Z, b1),
        R7L = c.R7L.MultiplyAdd(a1.W, b0), R7H = c.R7H.MultiplyAdd(a1.W, b1),
    };
}

/// <summary>
/// The float32 matmul for large shapes (SIMT cores): a group of 256 threads computes a 128 x 128 output tile,
/// each thread an 8 x 8 register block, walking K in slices of 16 through double-buffered shared memory.
/// <list type="bullet">
/// <item>Shared tiles hold a and b with K as the outer index ([16][128]), so a thread reads its 8 rows of a
///   and 8 columns of b for one k as four 16-byte loads (ld.shared.v4.f32) and does 64 FMAs with them.</item>
/// <item>Thread (ty, tx) = (t / 16, t % 16) owns rows 4 ty..4 ty+3 and 64 + 4 ty..+3, columns 4 tx..+3 and
///   64 + 4 tx..+3: a warp's b reads cover 256 contiguous bytes (no bank conflicts) and its a reads are
///   two broadcasts.</item>
/// <item>Global loads fetch 4 consecutive floats along the stored rows: one 16-byte load when the host proved
///   alignment (<see cref="GemmArgs.VectorA"/>), four predicated scalar loads otherwise. An operand whose
///   stored rows run along K ([M, K] a, [N, K] b) is transposed on its way into shared memory by four scalar
///   stores, one tile row per lane, so a warp's stores hit 32 different banks.</item>
/// <item>Double buffering: the next K slice is loaded into registers before the current one is multiplied,
///   and stored to the other buffer after it, so one barrier per slice suffices and global latency hides
///   behind 1024 FMAs. Slices of 16 rather than 8 halve the per-slice overhead (loads, stores, the barrier,
///   the register moves ptxas emits at the loop's back edge): 79% of the loop's instructions are FMAs for
///   sm_90, at 128 registers (two groups per multiprocessor) for the common aligned layouts.</item>
/// </list>
/// Out-of-range elements load as 0 and out-of-range outputs are not written, so any M, K, N works.
/// </summary>
static class MatMul128Kernels
{
    public const int TileM = 128, TileN = 128, TileK = 16, Threads = 256;
    /// <summary>Row stride of a shared tile (floats): no pad is needed, since a warp's transposed stores cover 32 consecutive rows of one k.</summary>
    const int Stride = TileM;
    const int BufferFloats = TileK * Stride;
    const int Stride4 = Stride / 4, BufferQuads = BufferFloats / 4;

    internal static int Groups(int m, int n) => ((m + TileM - 1) / TileM) * ((n + TileN - 1) / TileN);

    internal static void Gemm(ArrayView<float> a, ArrayView<float> b, ArrayView<float> bias, ArrayView<float> output, GemmArgs args,
        SpecializedValue<int> layout)
    {
        args = args.WithLayout(layout.Value);
        var aTiles = SharedMemory.Allocate<Float4>(2 * BufferQuads);
        var bTiles = SharedMemory.Allocate<Float4>(2 * BufferQuads);

        int t = Group.IdxX;
        int tx = t % 16, ty = t / 16;
        int row0 = Grid.IdxX / args.TilesN * TileM;
        int col0 = Grid.IdxX % args.TilesN * TileN;
        int slices = (args.K + TileK - 1) / TileK;

        var nextA0 = LoadSlice(a, args.TransposeA, row0, 0, args.M, args.K, args.RowLengthA, args.VectorA, t);
        var nextA1 = LoadSlice(a, args.TransposeA, row0, 0, args.M, args.K, args.RowLengthA, args.VectorA, t + Threads);
        var nextB0 = LoadSlice(b, args.TransposeB == 0 ? 1 : 0, col0, 0, args.N, args.K, args.RowLengthB, args.VectorB, t);
        var nextB1 = LoadSlice(b, args.TransposeB == 0 ? 1 : 0, col0, 0, args.N, args.K, args.RowLengthB, args.VectorB, t + Threads);
        StoreSlice(aTiles, 0, nextA0, args.TransposeA, t);
        StoreSlice(aTiles, 0, nextA1, args.TransposeA, t + Threads);
        StoreSlice(bTiles, 0, nextB0, args.TransposeB == 0 ? 1 : 0, t);
        StoreSlice(bTiles, 0, nextB1, args.TransposeB == 0 ? 1 : 0, t + Threads);
        Group.Barrier();

        var c = new Block8x8();
        for (int s = 0; s < slices; s++)
        {
            int current = (s & 1) * BufferQuads;
            bool more = s + 1 < slices;
            if (more)
            {
                int k0 = (s + 1) * TileK;
                nextA0 = LoadSlice(a, args.TransposeA, row0, k0, args.M, args.K, args.RowLengthA, args.VectorA, t);
                nextA1 = LoadSlice(a, args.TransposeA, row0, k0, args.M, args.K, args.RowLengthA, args.VectorA, t + Threads);
                nextB0 = LoadSlice(b, args.TransposeB == 0 ? 1 : 0, col0, k0, args.N, args.K, args.RowLengthB, args.VectorB, t);
                nextB1 = LoadSlice(b, args.TransposeB == 0 ? 1 : 0, col0, k0, args.N, args.K, args.RowLengthB, args.VectorB, t + Threads);
            }

            var aRows = aTiles.SubView(current + ty);
            var bColumns = bTiles.SubView(current + tx);
            c = Multiply(c, aRows, bColumns, 0);
            c = Multiply(c, aRows, bColumns, 1);
            c = Multiply(c, aRows, bColumns, 2);
            c = Multiply(c, aRows, bColumns, 3);
            c = Multiply(c, aRows, bColumns, 4);
            c = Multiply(c, aRows, bColumns, 5);
            c = Multiply(c, aRows, bColumns, 6);
            c = Multiply(c, aRows, bColumns, 7);
            c = Multiply(c, aRows, bColumns, 8);
            c = Multiply(c, aRows, bColumns, 9);
            c = Multiply(c, aRows, bColumns, 10);
            c = Multiply(c, aRows, bColumns, 11);
            c = Multiply(c, aRows, bColumns, 12);
            c = Multiply(c, aRows, bColumns, 13);
            c = Multiply(c, aRows, bColumns, 14);
            c = Multiply(c, aRows, bColumns, 15);

            if (more)
            {
                int other = BufferQuads - current;
                StoreSlice(aTiles, other, nextA0, args.TransposeA, t);
                StoreSlice(aTiles, other, nextA1, args.TransposeA, t + Threads);
                StoreSlice(bTiles, other, nextB0, args.TransposeB == 0 ? 1 : 0, t);
                StoreSlice(bTiles, other, nextB1, args.TransposeB == 0 ? 1 : 0, t + Threads);
            }
            Group.Barrier();
        }

        int r = row0 + 4 * ty, r2 = r + 64, left = col0 + 4 * tx, right = left + 64;
        Write(output, bias, args, r, left, right, c.R0L, c.R0H);
        Write(output, bias, args, r + 1, left, right, c.R1L, c.R1H);
        Write(output, bias, args, r + 2, left, right, c.R2L, c.R2H);
        Write(output, bias, args, r + 3, left, right, c.R3L, c.R3H);
        Write(output, bias, args, r2, left, right, c.R4L, c.R4H);
        Write(output, bias, args, r2 + 1, left, right, c.R5L, c.R5H);
        Write(output, bias, args, r2 + 2, left, right, c.R6L, c.R6H);
        Write(output, bias, args, r2 + 3, left, right, c.R7L, c.R7H);
    }

    /// <summary>
    /// Step <paramref name="kk"/> of a slice, from views at this thread's quads of k row 0. The sixteen steps are
    /// written out with constant <paramref name="kk"/> because neither ILGPU nor ptxas unrolls the loop: the
    /// shared loads then take immediate offsets from one base register and nothing but 64 FMAs and 4 loads remains.
    /// </summary>
    static Block8x8 Multiply(Block8x8 c, ArrayView<Float4> aRows, ArrayView<Float4> bColumns, int kk)
    {
        int row = kk * Stride4;
        return Block8x8.Step(c, aRows[row], aRows[row + 16], bColumns[row], bColumns[row + 16]);
    }

    /// <summary>
    /// Quad <paramref name="q"/> (0..511; thread t takes t and t + 256) of the K slice [k0, k0 + 16) of an
    /// operand tile of 128 rows (M for a, N for b) starting at <paramref name="origin"/>. <paramref name="outerK"/>
    /// = 1 when the operand is stored with K as its row index ([K, M] a, [K, N] b): the quad is k = q / 32, tile
    /// rows 4 (q % 32)..+3. Otherwise the stored rows run along K and the quad is tile row q % 128, k = 4 (q / 128)..+3:
    /// a warp's 32 lanes take 32 rows, so their transposed shared stores hit 32 banks.
    /// </summary>
    static Float4 LoadSlice(ArrayView<float> data, int outerK, int origin, int k0, int extent, int k, int rowLength, int vector, int q) =>
        outerK != 0
            ? GemmLoads.Quad(data, k0 + q / 32, origin + 4 * (q % 32), k, rowLength, vector)
            : GemmLoads.Quad(data, origin + q % 128, k0 + 4 * (q / 128), extent, rowLength, vector);

    /// <summary>Stores slice quad <paramref name="q"/> into the shared tile [k][row] at <paramref name="buffer"/> (in quads).</summary>
    static void StoreSlice(ArrayView<Float4> tiles, int buffer, Float4 v, int outerK, int q)
    {
        if (outerK != 0)
        {
            tiles[buffer + q / 32 * Stride4 + q % 32] = v;
            return;
        }
        var floats = tiles.Cast<float>();
        int at = buffer * 4 + 4 * (q / 128) * Stride + q % 128;
        floats[at] = v.X;
        floats[at + Stride] = v.Y;
        floats[at + 2 * Stride] = v.Z;
        floats[at + 3 * Stride] = v.W;
    }

    /// <summary>Writes one row's two quads (columns left.. and right..) under the epilogue; outputs outside [M, N] are skipped.</summary>
    static void Write(ArrayView<float> output, ArrayView<float> bias, GemmArgs args, int row, int left, int right, Float4 lo, Float4 hi)
    {
        if (row >= args.M) return;
        WriteQuad(output, bias, args, row, left, lo);
        WriteQuad(output, bias, args, row, right, hi);
    }

    internal static void WriteQuad(ArrayView<float> output, ArrayView<float> bias, GemmArgs args, int row, int column, Float4 v)
    {
        if (column >= args.N) return;
        long start = (long)row * args.N + column;
        if (args.VectorC != 0)
        {
            var quads = output.Cast<Float4>();
            if (args.Epilogue == (int)GemmEpilogue.Accumulate) quads[start >> 2] = quads[start >> 2].Add(v);
            else if (args.Epilogue == (int)GemmEpilogue.StoreBias) quads[start >> 2] = v.Add(bias.Cast<Float4>()[column >> 2]);
            else quads[start >> 2] = v;
            return;
        }
        for (int j = 0; j < 4; j++)
        {
            if (column + j >= args.N) return;
            long at = start + j;
            if (args.Epilogue == (int)GemmEpilogue.Accumulate) output[at] += v[j];
            else if (args.Epilogue == (int)GemmEpilogue.StoreBias) output[at] = v[j] + bias[column + j];
            else output[at] = v[j];
        }
    }
}
