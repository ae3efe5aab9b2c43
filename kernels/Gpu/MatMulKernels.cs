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
/// out[M, N] = x[M, K] · w (+ bias), with w either [K, N] (GPT-2 Conv1D) or [N, K] (nn.Linear).
/// A group of 256 threads (16 x 16) computes a 64 x 64 output tile; each thread owns a 4 x 4 register block
/// whose rows and columns are 16 apart, so a warp's shared-memory reads hit consecutive banks and its
/// output stores are coalesced. The K dimension is walked in steps of 16 through shared memory:
/// a tile of x [64][16] and a tile of w [16][64 + 1] (the pad column keeps the transposed store of the
/// [N, K] layout free of bank conflicts). Loads outside the matrices write zeros, so any M, K, N works.
/// </summary>
static class MatMulKernels
{
    public const int TileM = 64, TileN = 64, TileK = 16;
    public const int ThreadsX = 16, ThreadsY = 16, Threads = ThreadsX * ThreadsY;
    const int WStride = TileN + 1;
    const int LoadsPerThread = TileM * TileK / Threads;

    internal static int Groups(int m, int n) => ((m + TileM - 1) / TileM) * ((n + TileN - 1) / TileN);

    internal static void Forward(ArrayView<float> x, ArrayView<float> w, ArrayView<float> bias, ArrayView<float> output,
        int m, int k, int n, int hasBias) =>
        Tile(x, w, bias, output, m, k, n, hasBias, transposed: false);

    internal static void ForwardTransposed(ArrayView<float> x, ArrayView<float> w, ArrayView<float> bias, ArrayView<float> output,
        int m, int k, int n, int hasBias) =>
        Tile(x, w, bias, output, m, k, n, hasBias, transposed: true);

    static void Tile(ArrayView<float> x, ArrayView<float> w, ArrayView<float> bias, ArrayView<float> output,
        int m, int k, int n, int hasBias, bool transposed)
    {
        var xTile = SharedMemory.Allocate<float>(TileM * TileK);
        var wTile = SharedMemory.Allocate<float>(TileK * WStride);

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
                int xr = row0 + e / TileK, xk = k0 + e % TileK;
                xTile[e] = xr < m && xk < k ? x[(long)xr * k + xk] : 0f;

                if (transposed)
                {
                    int wn = e / TileK, wk = e % TileK;
                    int gn = col0 + wn, gk = k0 + wk;
                    wTile[wk * WStride + wn] = gn < n && gk < k ? w[(long)gn * k + gk] : 0f;
                }
                else
                {
                    int wk = e / TileN, wn = e % TileN;
                    int gn = col0 + wn, gk = k0 + wk;
                    wTile[wk * WStride + wn] = gn < n && gk < k ? w[(long)gk * n + gn] : 0f;
                }
            }
            Group.Barrier();

            for (int kk = 0; kk < TileK; kk++)
            {
                int wBase = kk * WStride + tx;
                var b = new Vec4(wTile[wBase], wTile[wBase + ThreadsX], wTile[wBase + 2 * ThreadsX], wTile[wBase + 3 * ThreadsX]);
                int xBase = ty * TileK + kk;
                c0 = c0.MultiplyAdd(xTile[xBase], b);
                c1 = c1.MultiplyAdd(xTile[xBase + ThreadsY * TileK], b);
                c2 = c2.MultiplyAdd(xTile[xBase + 2 * ThreadsY * TileK], b);
                c3 = c3.MultiplyAdd(xTile[xBase + 3 * ThreadsY * TileK], b);
            }
            Group.Barrier();
        }

        Store(output, bias, hasBias, c0, row0 + ty, col0 + tx, m, n);
        Store(output, bias, hasBias, c1, row0 + ty + ThreadsY, col0 + tx, m, n);
        Store(output, bias, hasBias, c2, row0 + ty + 2 * ThreadsY, col0 + tx, m, n);
        Store(output, bias, hasBias, c3, row0 + ty + 3 * ThreadsY, col0 + tx, m, n);
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
}
