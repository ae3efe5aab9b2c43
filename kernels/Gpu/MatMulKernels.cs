using ILGPU;
using ILGPU.Runtime;

namespace DiffuSharp.Kernels.Gpu;

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

    /// <summary>One matmul as <paramref name="args"/> describes it (layouts, epilogue); the Vector flags are not used.</summary>
    internal static void Gemm(ArrayView<float> a, ArrayView<float> b, ArrayView<float> bias, ArrayView<float> output, GemmArgs args,
        SpecializedValue<int> layout)
    {
        args = args.WithLayout(layout.Value);
        var block = Multiply(a, b, args.M, args.K, args.N, args.TransposeA != 0, args.TransposeB != 0, args.TilesN);
        int row = block.Row0, col = block.Col0;
        Finish(output, bias, args, block.C0, row, col);
        Finish(output, bias, args, block.C1, row + ThreadsY, col);
        Finish(output, bias, args, block.C2, row + 2 * ThreadsY, col);
        Finish(output, bias, args, block.C3, row + 3 * ThreadsY, col);
    }

    /// <summary>A thread's 4 x 4 results: rows Row0 + 16 i (C0..C3), columns Col0 + 16 j (the lanes).</summary>
    struct Block
    {
        public Float4 C0, C1, C2, C3;
        public int Row0, Col0;
    }

    static Block Multiply(ArrayView<float> a, ArrayView<float> b, int m, int k, int n, bool transposeA, bool transposeB, int tilesN)
    {
        var aTile = SharedMemory.Allocate<float>(TileM * AStride);
        var bTile = SharedMemory.Allocate<float>(TileK * BStride);

        int t = Group.IdxX;
        int tx = t % ThreadsX, ty = t / ThreadsX;
        int row0 = Grid.IdxX / tilesN * TileM;
        int col0 = Grid.IdxX % tilesN * TileN;

        var c0 = new Float4();
        var c1 = new Float4();
        var c2 = new Float4();
        var c3 = new Float4();

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
                var bv = new Float4(bTile[bBase], bTile[bBase + ThreadsX], bTile[bBase + 2 * ThreadsX], bTile[bBase + 3 * ThreadsX]);
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

    /// <summary>
    /// output[row, col + 16 j] (=, = + bias, +=) values[j] under the epilogue; each element has one owner
    /// thread, so accumulating needs no atomics.
    /// </summary>
    static void Finish(ArrayView<float> output, ArrayView<float> bias, GemmArgs args, Float4 values, int row, int col)
    {
        if (row >= args.M) return;
        long start = (long)row * args.N;
        for (int j = 0; j < 4; j++)
        {
            int c = col + j * ThreadsX;
            if (c >= args.N) return;
            if (args.Epilogue == (int)GemmEpilogue.Accumulate) output[start + c] += values[j];
            else if (args.Epilogue == (int)GemmEpilogue.StoreBias) output[start + c] = values[j] + bias[c];
            else output[start + c] = values[j];
        }
    }
}
