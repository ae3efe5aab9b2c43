using ILGPU;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>Four floats kept in registers: one row of a thread's 4x4 register block.</summary>
struct Vec4
{
    public float X, Y, Z, W;

    public Vec4(float x, float y, float z, float w) { X = x; Y = y; Z = z; W = w; }

    /// <summary>this + a * b, lane by lane.</summary>
    public readonly Vec4 MultiplyAdd(float a, Vec4 b) => new(X + a * b.X, Y + a * b.Y, Z + a * b.Z, W + a * b.W);

    public readonly float this[int i] => i == 0 ? X : i == 1 ? Y : i == 2 ? Z : W;
}

/// <summary>
/// out[M, N] = a[M, K] · b[K, N], the forward matmul (x · w + bias, with w either [K, N] as GPT-2's Conv1D
/// or [N, K] as nn.Linear) and the backward ones (out += a · b with a or b read transposed: dX += dOut · wᵀ,
/// dW += xᵀ · dOut, ...). One tiled kernel serves all: a group of 256 threads (16 x 16) computes a 64 x 64
/// output tile; each thread owns a 4 x 4 register block whose rows and columns are 16 apart, so a warp's
/// shared-memory reads hit consecutive banks and its output stores are coalesced. The K dimension is walked
/// in steps of 16 through shared memory: a tile of a [64][16 + 1] and a tile of b [16][64 + 1]; the pad
/// columns keep the transposed stores of a transposed layout free of bank conflicts, while global loads
/// always run along the stored rows (coalesced). Loads outside the matrices write zeros, so any M, K, N works.
/// </summary>
static class MatMulKernels
{
    public const int TileM = 64, TileN = 64, TileK = 16;
    public const int ThreadsX = 16, ThreadsY = 16, Threads = ThreadsX * ThreadsY;
    const int AStride = TileK + 1, BStride = TileN + 1;
    const int LoadsPerThread = TileM * TileK / Threads;

    internal static int Groups(int m, int n) => ((m + TileM - 1) / TileM) * ((n + TileN - 1) / TileN);

    /// <summary>output = x[M, K] · w[K, N] (+ bias).</summary>
    internal static void Forward(ArrayView<float> x, ArrayView<float> w, ArrayView<float> bias, ArrayView<float> output,
        int m, int k, int n, int hasBias)
    {
        var block = Multiply(x, w, m, k, n, transposeA: false, transposeB: false);
        StoreWithBias(output, bias, hasBias, block, m, n);
    }

    /// <summary>output = x[M, K] · w[N, K]ᵀ (+ bias).</summary>
    internal static void ForwardTransposed(ArrayView<float> x, ArrayView<float> w, ArrayView<float> bias, ArrayView<float> output,
        int m, int k, int n, int hasBias)
    {
        var block = Multiply(x, w, m, k, n, transposeA: false, transposeB: true);
        StoreWithBias(output, bias, hasBias, block, m, n);
    }

    /// <summary>
    /// output[M, N] += a · b, where a is stored [M, K] (or [K, M] when <paramref name="transposeA"/> is 1) and
    /// b is stored [K, N] (or [N, K] when <paramref name="transposeB"/> is 1). The flags are uniform over the
    /// grid, so their branches cost no divergence.
    /// </summary>
    internal static void Accumulate(ArrayView<float> a, ArrayView<float> b, ArrayView<float> output,
        int m, int k, int n, int transposeA, int transposeB)
    {
        var block = Multiply(a, b, m, k, n, transposeA != 0, transposeB != 0);
        int row = block.Row0, col = block.Col0;
        AddTo(output, block.C0, row, col, m, n);
        AddTo(output, block.C1, row + ThreadsY, col, m, n);
        AddTo(output, block.C2, row + 2 * ThreadsY, col, m, n);
        AddTo(output, block.C3, row + 3 * ThreadsY, col, m, n);
    }

    /// <summary>A thread's 4 x 4 results: rows Row0 + 16 i (C0..C3), columns Col0 + 16 j (the lanes).</summary>
    struct Block
    {
        public Vec4 C0, C1, C2, C3;
        public int Row0, Col0;
    }

    static Block Multiply(ArrayView<float> a, ArrayView<float> b, int m, int k, int n, bool transposeA, bool transposeB)
    {
        var aTile = SharedMemory.Allocate<float>(TileM * AStride);
        var bTile = SharedMemory.Allocate<float>(TileK * BStride);

        int t = Group.IdxX;
        int tx = t % ThreadsX, ty = t / ThreadsX;
        int tilesN = (n + TileN - 1) / TileN;
        int row0 = Grid.IdxX / tilesN * TileM;
        int col0 = Grid.IdxX % tilesN * TileN;

        var c0 = new Vec4();
        var c1 = new Vec4();
        var c2 = new Vec4();
        var c3 = new Vec4();

        for (int k0 = 0; k0 < k; k0 += TileK)
        {
            for (int l = 0; l < LoadsPerThread; l++)
            {
                int e = t + l * Threads;
                if (transposeA)
                {
                    int am = e % TileM, ak = e / TileM;
                    int gm = row0 + am, gk = k0 + ak;
                    aTile[am * AStride + ak] = gm < m && gk < k ? a[(long)gk * m + gm] : 0f;
                }
                else
                {
                    int am = e / TileK, ak = e % TileK;
                    int gm = row0 + am, gk = k0 + ak;
                    aTile[am * AStride + ak] = gm < m && gk < k ? a[(long)gm * k + gk] : 0f;
                }

                if (transposeB)
                {
                    int bn = e / TileK, bk = e % TileK;
                    int gn = col0 + bn, gk = k0 + bk;
                    bTile[bk * BStride + bn] = gn < n && gk < k ? b[(long)gn * k + gk] : 0f;
                }
                else
                {
                    int bk = e / TileN, bn = e % TileN;
                    int gn = col0 + bn, gk = k0 + bk;
                    bTile[bk * BStride + bn] = gn < n && gk < k ? b[(long)gk * n + gn] : 0f;
                }
            }
            Group.Barrier();

            for (int kk = 0; kk < TileK; kk++)
            {
                int bBase = kk * BStride + tx;
                var bv = new Vec4(bTile[bBase], bTile[bBase + ThreadsX], bTile[bBase + 2 * ThreadsX], bTile[bBase + 3 * ThreadsX]);
                int aBase = ty * AStride + kk;
                c0 = c0.MultiplyAdd(aTile[aBase], bv);
                c1 = c1.MultiplyAdd(aTile[aBase + ThreadsY * AStride], bv);
                c2 = c2.MultiplyAdd(aTile[aBase + 2 * ThreadsY * AStride], bv);
                c3 = c3.MultiplyAdd(aTile[aBase + 3 * ThreadsY * AStride], bv);
            }
            Group.Barrier();
        }

        return new Block { C0 = c0, C1 = c1, C2 = c2, C3 = c3, Row0 = row0 + ty, Col0 = col0 + tx };
    }

    static void StoreWithBias(ArrayView<float> output, ArrayView<float> bias, int hasBias, Block block, int m, int n)
    {
        Store(output, bias, hasBias, block.C0, block.Row0, block.Col0, m, n);
        Store(output, bias, hasBias, block.C1, block.Row0 + ThreadsY, block.Col0, m, n);
        Store(output, bias, hasBias, block.C2, block.Row0 + 2 * ThreadsY, block.Col0, m, n);
        Store(output, bias, hasBias, block.C3, block.Row0 + 3 * ThreadsY, block.Col0, m, n);
    }

    static void Store(ArrayView<float> output, ArrayView<float> bias, int hasBias, Vec4 values, int row, int col, int m, int n)
    {
        if (row >= m) return;
        long start = (long)row * n;
        for (int j = 0; j < 4; j++)
        {
            int c = col + j * ThreadsX;
            if (c < n) output[start + c] = values[j] + (hasBias != 0 ? bias[c] : 0f);
        }
    }

    /// <summary>output[row, col + 16 j] += values[j]; each element has one owner thread, so no atomics.</summary>
    static void AddTo(ArrayView<float> output, Vec4 values, int row, int col, int m, int n)
    {
        if (row >= m) return;
        long start = (long)row * n;
        for (int j = 0; j < 4; j++)
        {
            int c = col + j * ThreadsX;
            if (c < n) output[start + c] += values[j];
        }
    }
}
