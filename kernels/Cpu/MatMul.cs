using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace DiffuSharp.Kernels.Cpu;

/// <summary>
/// Matrix products in float32 arithmetic, the hot path of the CPU device. The weight operand may be stored as float32,
/// BF16 or F16 (<see cref="WeightView"/>): every kernel is generic over how it reads weight elements
/// (<see cref="IWeightElements"/>), so the 16-bit copies widen weights in registers as they stream them (half the bytes
/// of a memory-bound product) and the packed product widens them while packing.
/// <para>
/// Large products run the packed, register-blocked <see cref="Gemm"/>: either operand may be read as stored or as
/// the transpose of a row-major matrix (<see cref="Operand"/>), so Forward (w [K, N]), ForwardTransposed (w [N, K])
/// and the four products of the backward passes (dX += dOut·wᵀ or dOut·w, dW += xᵀ·dOut or dOutᵀ·x) all run the
/// same micro-kernel, the backward ones accumulating into their outputs.
/// </para>
/// <para>
/// Products with few rows skip the packing: Forward with a handful of rows (decoding) is bound by reading w and
/// streams its rows against broadcast x values; ForwardTransposed with one row streams eight rows of w at a time
/// against it, and with fewer than DotRowsLimit rows takes 4 × 4 blocks of dot products of x rows with w rows.
/// </para>
/// </summary>
public static class MatMul
{
    /// <summary>Forward with at most this many rows streams w unpacked (packing wins from 8 rows: BENCHMARKS.md, kernel choices).</summary>
    const int SmallRows = 6;
    /// <summary>
    /// ForwardTransposed with fewer rows takes dot products on w as stored: transposing w into panels is paid once
    /// per call and only wins back its cost over enough rows (the crossover is in BENCHMARKS.md, kernel choices).
    /// </summary>
    const int DotRowsLimit = 48;

    /// <summary>output[M, N] = x[M, K] · w[K, N] + bias[N]; an empty bias means none. w may be stored in 16 bits.</summary>
    public static void Forward(ReadOnlySpan<float> x, WeightView w, ReadOnlySpan<float> bias, Span<float> output, int m, int k, int n) =>
        Run(x, w, bias, output, m, k, n, transposed: false);

    /// <summary>output[M, N] = x[M, K] · wᵀ + bias[N] with w stored [N, K] (nn.Linear, the tied LM head), possibly in 16 bits.</summary>
    public static void ForwardTransposed(ReadOnlySpan<float> x, WeightView w, ReadOnlySpan<float> bias, Span<float> output, int m, int k, int n) =>
        Run(x, w, bias, output, m, k, n, transposed: true);

    static unsafe void Run(ReadOnlySpan<float> x, WeightView w, ReadOnlySpan<float> bias, Span<float> output, int m, int k, int n, bool transposed)
    {
        Guard.Positive(m, nameof(m));
        Guard.Positive(k, nameof(k));
        Guard.Positive(n, nameof(n));
        Guard.Length(x.Length, (long)m * k, nameof(x));
        Guard.Length(w.Length, (long)k * n, nameof(w));
        Guard.Length(output.Length, (long)m * n, nameof(output));
        if (!bias.IsEmpty) Guard.Length(bias.Length, n, nameof(bias));

        fixed (float* px = x, pb = bias, po = output)
        fixed (byte* pw = w.Bytes)
        {
            float* xb = bias.IsEmpty ? null : pb;
            switch (w.Format)
            {
                case WeightFormat.BF16: Run<BF16Elements>(px, pw, xb, po, m, k, n, transposed); break;
                case WeightFormat.F16: Run<F16Elements>(px, pw, xb, po, m, k, n, transposed); break;
                default: Run<F32Elements>(px, pw, xb, po, m, k, n, transposed); break;
            }
        }
    }

    static unsafe void Run<TW>(float* xx, void* xw, float* xb, float* xo, int m, int k, int n, bool transposed) where TW : struct, IWeightElements
    {
        long flops = 2L * m * n * k;
        int threads = flops < (1 << 20) ? 1 : Environment.ProcessorCount;

        if (!transposed && m <= SmallRows)
        {
            var (pieces, width) = Split(n, 64, threads);
            ForPieces(pieces, piece => StreamRows<TW>(xx, xw, xb, xo, m, k, n, piece * width, Math.Min(n, (piece + 1) * width)));
            return;
        }
        if (transposed && m < DotRowsLimit)
        {
            if (m == 1)
            {
                var (parts, span) = Split(n, 8, threads);
                ForPieces(parts, piece => DotOneRow<TW>(xx, xw, xb, xo, k, piece * span, Math.Min(n, (piece + 1) * span)));
                return;
            }
            bool byRows = n < 16 * threads && m >= 8 * threads;
            var (pieces, width) = Split(byRows ? m : n, 4, threads);
            ForPieces(pieces, piece =>
            {
                int s0 = piece * width, s1 = Math.Min(byRows ? m : n, s0 + width);
                if (byRows) DotRows<TW>(xx, xw, xb, xo, s0, s1, k, n, 0, n);
                else DotRows<TW>(xx, xw, xb, xo, 0, m, k, n, s0, s1);
            });
            return;
        }

        Gemm.Multiply(new Operand(xx, k, false), new Operand(xw, transposed ? k : n, transposed, TW.Format), xb, accumulate: false, xo, m, k, n);
    }

    /// <summary>
    /// Backward of <see cref="Forward"/> (w [K, N]), accumulating: dX += dOutput · wᵀ, dW += xᵀ · dOutput when dW is not
    /// empty (an empty dW is a frozen weight), and dBias += Σ rows of dOutput when dBias is not empty.
    /// </summary>
    public static void Backward(ReadOnlySpan<float> dOutput, ReadOnlySpan<float> x, WeightView w,
        Span<float> dX, Span<float> dW, Span<float> dBias, int m, int k, int n) =>
        RunBackward(dOutput, x, w, dX, dW, dBias, m, k, n, transposed: false);

    /// <summary>
    /// Backward of <see cref="ForwardTransposed"/> (w [N, K]), accumulating: dX += dOutput · w, dW += dOutputᵀ · x when dW
    /// is not empty (an empty dW is a frozen weight), and dBias += Σ rows of dOutput when dBias is not empty.
    /// </summary>
    public static void BackwardTransposed(ReadOnlySpan<float> dOutput, ReadOnlySpan<float> x, WeightView w,
        Span<float> dX, Span<float> dW, Span<float> dBias, int m, int k, int n) =>
        RunBackward(dOutput, x, w, dX, dW, dBias, m, k, n, transposed: true);

    static unsafe void RunBackward(ReadOnlySpan<float> dOutput, ReadOnlySpan<float> x, WeightView w,
        Span<float> dX, Span<float> dW, Span<float> dBias, int m, int k, int n, bool transposed)
    {
        Guard.Positive(m, nameof(m));
        Guard.Positive(k, nameof(k));
        Guard.Positive(n, nameof(n));
        Guard.Length(dOutput.Length, (long)m * n, nameof(dOutput));
        Guard.Length(x.Length, (long)m * k, nameof(x));
        Guard.Length(w.Length, (long)k * n, nameof(w));
        Guard.Length(dX.Length, (long)m * k, nameof(dX));
        if (!dW.IsEmpty) Guard.Length(dW.Length, (long)k * n, nameof(dW));
        if (!dBias.IsEmpty) Guard.Length(dBias.Length, n, nameof(dBias));

        fixed (float* pg = dOutput, px = x, pdx = dX, pdw = dW, pdb = dBias)
        fixed (byte* pw = w.Bytes)
        {
            var g = new Operand(pg, n, false);
            var wOperand = transposed ? new Operand(pw, k, false, w.Format) : new Operand(pw, n, true, w.Format);
            if (dW.IsEmpty)
                Gemm.Multiply(g, wOperand, null, accumulate: true, pdx, m, n, k);
            else if (transposed)
                Gemm.AccumulatePair(g, wOperand, pdx, m, n, k, new Operand(pg, n, true), new Operand(px, k, false), pdw, n, m, k);
            else
                Gemm.AccumulatePair(g, wOperand, pdx, m, n, k, new Operand(px, k, true), g, pdw, k, m, n);
            if (!dBias.IsEmpty) SumRows(pg, pdb, m, n);
        }
    }

    /// <summary>bias[0..n) += Σ_i g[i, 0..n), split over the cores by columns so that no two threads share an output.</summary>
    static unsafe void SumRows(float* g, float* bias, int m, int n)
    {
        long work = (long)m * n;
        var (pieces, width) = Split(n, 64, work < (1 << 18) ? 1 : Environment.ProcessorCount);
        ForPieces(pieces, piece =>
        {
            int j0 = piece * width, j1 = Math.Min(n, j0 + width);
            for (int i = 0; i < m; i++) Residual.AddRange(bias, g + (long)i * n, bias, j0, j1);
        });
    }

    /// <summary>
    /// Cuts [0, extent) into at most `threads` pieces whose width is a multiple of unit (the last may be short)
    /// and at least 4 units, so that no piece is too thin to be worth a thread.
    /// </summary>
    static (int Pieces, int Width) Split(int extent, int unit, int threads)
    {
        int units = (extent + unit - 1) / unit;
        int pieces = Math.Max(1, Math.Min(threads, units / 4));
        int width = (units + pieces - 1) / pieces * unit;
        return ((extent + width - 1) / width, width);
    }

    static void ForPieces(int count, Action<int> body)
    {
        if (count == 1) body(0);
        else Parallel.For(0, count, body);
    }

    /// <summary>
    /// Few rows, w [K, N]: output[i, j0..j1) = bias + Σ_p x[i, p] · w[p, j0..j1). Walks w eight rows at a time in
    /// stripes as wide as the output rows allow while they stay in L2 as the accumulator (256 KiB): w is read in
    /// long contiguous runs that the prefetcher follows, and each accumulator vector is loaded and stored once per
    /// eight rows of w. The product is bound by reading w, not by the FMAs.
    /// </summary>
    static unsafe void StreamRows<TW>(float* x, void* w, float* bias, float* o, int m, int k, int n, int j0, int j1) where TW : struct, IWeightElements
    {
        int stripe = (1 << 16) / m;
        for (int j = j0; j < j1; j += stripe)
        {
            int cols = Math.Min(stripe, j1 - j);
            for (int r = 0; r < m; r++)
            {
                var dst = new Span<float>(o + (long)r * n + j, cols);
                if (bias is null) dst.Clear();
                else new ReadOnlySpan<float>(bias + j, cols).CopyTo(dst);
            }
            int p = 0;
            for (; p <= k - 8; p += 8)
            {
                long w0 = (long)p * n + j;
                for (int r = 0; r < m; r++)
                {
                    AddEightRows<TW>(x + (long)r * k + p, w, w0, n, o + (long)r * n + j, cols);
                }
            }
            for (; p <= k - 4; p += 4)
            {
                long w0 = (long)p * n + j;
                for (int r = 0; r < m; r++)
                {
                    float* xr = x + (long)r * k + p;
                    AddRows<TW>(xr[0], xr[1], xr[2], xr[3], w, w0, n, o + (long)r * n + j, cols);
                }
            }
            for (; p < k; p++)
            {
                long wp = (long)p * n + j;
                for (int r = 0; r < m; r++) AddRow<TW>(x[(long)r * k + p], w, wp, o + (long)r * n + j, cols);
            }
        }
    }

    /// <summary>
    /// y[0..cols) += a[0] · w[0, :] + … + a[7] · w[7, :] with rows of w ldw apart: eight rows stream at once, and y is
    /// loaded and stored once per eight rows of w instead of twice (two four-row passes without AVX-512).
    /// </summary>
    static unsafe void AddEightRows<TW>(float* a, void* w, long w0, int ldw, float* y, int cols) where TW : struct, IWeightElements
    {
        if (!Vector512.IsHardwareAccelerated)
        {
            AddRows<TW>(a[0], a[1], a[2], a[3], w, w0, ldw, y, cols);
            AddRows<TW>(a[4], a[5], a[6], a[7], w, w0 + 4L * ldw, ldw, y, cols);
            return;
        }
        long w1 = w0 + ldw, w2 = w1 + ldw, w3 = w2 + ldw, w4 = w3 + ldw, w5 = w4 + ldw, w6 = w5 + ldw, w7 = w6 + ldw;
        var v0 = Vector512.Create(a[0]); var v1 = Vector512.Create(a[1]); var v2 = Vector512.Create(a[2]); var v3 = Vector512.Create(a[3]);
        var v4 = Vector512.Create(a[4]); var v5 = Vector512.Create(a[5]); var v6 = Vector512.Create(a[6]); var v7 = Vector512.Create(a[7]);
        int i = 0;
        for (; i <= cols - 16; i += 16)
        {
            var acc = Vector512.FusedMultiplyAdd(v0, TW.Load512(w, w0 + i), Vector512.Load(y + i));
            var acc2 = v4 * TW.Load512(w, w4 + i);
            acc = Vector512.FusedMultiplyAdd(v1, TW.Load512(w, w1 + i), acc);
            acc2 = Vector512.FusedMultiplyAdd(v5, TW.Load512(w, w5 + i), acc2);
            acc = Vector512.FusedMultiplyAdd(v2, TW.Load512(w, w2 + i), acc);
            acc2 = Vector512.FusedMultiplyAdd(v6, TW.Load512(w, w6 + i), acc2);
            acc = Vector512.FusedMultiplyAdd(v3, TW.Load512(w, w3 + i), acc);
            acc2 = Vector512.FusedMultiplyAdd(v7, TW.Load512(w, w7 + i), acc2);
            Vector512.Store(acc + acc2, y + i);
        }
        for (; i < cols; i++)
            y[i] += a[0] * TW.At(w, w0 + i) + a[1] * TW.At(w, w1 + i) + a[2] * TW.At(w, w2 + i) + a[3] * TW.At(w, w3 + i)
                  + a[4] * TW.At(w, w4 + i) + a[5] * TW.At(w, w5 + i) + a[6] * TW.At(w, w6 + i) + a[7] * TW.At(w, w7 + i);
    }

    /// <summary>y[0..cols) += a0 · w[0, :] + a1 · w[1, :] + a2 · w[2, :] + a3 · w[3, :] with rows of w ldw apart, from element w0.</summary>
    static unsafe void AddRows<TW>(float a0, float a1, float a2, float a3, void* w, long w0, int ldw, float* y, int cols) where TW : struct, IWeightElements
    {
        long w1 = w0 + ldw, w2 = w1 + ldw, w3 = w2 + ldw;
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var v0 = Vector512.Create(a0); var v1 = Vector512.Create(a1); var v2 = Vector512.Create(a2); var v3 = Vector512.Create(a3);
            for (; i <= cols - 16; i += 16)
            {
                var acc = Vector512.FusedMultiplyAdd(v0, TW.Load512(w, w0 + i), Vector512.Load(y + i));
                acc = Vector512.FusedMultiplyAdd(v1, TW.Load512(w, w1 + i), acc);
                acc = Vector512.FusedMultiplyAdd(v2, TW.Load512(w, w2 + i), acc);
                Vector512.Store(Vector512.FusedMultiplyAdd(v3, TW.Load512(w, w3 + i), acc), y + i);
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var v0 = Vector256.Create(a0); var v1 = Vector256.Create(a1); var v2 = Vector256.Create(a2); var v3 = Vector256.Create(a3);
            for (; i <= cols - 8; i += 8)
            {
                var acc = Vector256.FusedMultiplyAdd(v0, TW.Load256(w, w0 + i), Vector256.Load(y + i));
                acc = Vector256.FusedMultiplyAdd(v1, TW.Load256(w, w1 + i), acc);
                acc = Vector256.FusedMultiplyAdd(v2, TW.Load256(w, w2 + i), acc);
                Vector256.Store(Vector256.FusedMultiplyAdd(v3, TW.Load256(w, w3 + i), acc), y + i);
            }
        }
        for (; i < cols; i++) y[i] += a0 * TW.At(w, w0 + i) + a1 * TW.At(w, w1 + i) + a2 * TW.At(w, w2 + i) + a3 * TW.At(w, w3 + i);
    }

    /// <summary>y[0..cols) += a · w[0, :] from element w0.</summary>
    static unsafe void AddRow<TW>(float a, void* w, long w0, float* y, int cols) where TW : struct, IWeightElements
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var av = Vector512.Create(a);
            for (; i <= cols - 16; i += 16) Vector512.Store(Vector512.FusedMultiplyAdd(av, TW.Load512(w, w0 + i), Vector512.Load(y + i)), y + i);
        }
        for (; i < cols; i++) y[i] += a * TW.At(w, w0 + i);
    }

    /// <summary>
    /// Few rows, w [N, K]: output[i, j] = bias[j] + x[i, :] · w[j, :] for i in [i0, i1), j in [j0, j1). Blocks of four rows of x
    /// by four rows of w keep sixteen vector accumulators along K (eight loads feed sixteen FMAs), then take one
    /// horizontal sum per output. Rows past the edge repeat the last row and are not stored.
    /// </summary>
    static unsafe void DotRows<TW>(float* x, void* w, float* bias, float* o, int i0, int i1, int k, int n, int j0, int j1) where TW : struct, IWeightElements
    {
        float* sums = stackalloc float[16];
        for (int j = j0; j < j1; j += 4)
        {
            int wRows = Math.Min(4, j1 - j);
            for (int i = i0; i < i1; i += 4)
            {
                int xRows = Math.Min(4, i1 - i);
                DotBlock<TW>(x + (long)i * k, xRows, w, (long)j * k, wRows, k, sums);
                for (int r = 0; r < xRows; r++)
                {
                    float* oi = o + (long)(i + r) * n + j;
                    for (int c = 0; c < wRows; c++) oi[c] = sums[r * 4 + c] + (bias is null ? 0f : bias[j + c]);
                }
            }
        }
    }

    /// <summary>
    /// One row, w [N, K] (decoding): o[j] = bias[j] + x · w[j, :] for j in [j0, j1). Four rows of w stream side by side
    /// against the one x row (which stays in L1), each with two accumulators along K so that the FMAs' latency hides
    /// behind the loads: the product is bound by reading w once.
    /// </summary>
    static unsafe void DotOneRow<TW>(float* x, void* w, float* bias, float* o, int k, int j0, int j1) where TW : struct, IWeightElements
    {
        int j = j0;
        float* s = stackalloc float[8];
        if (Vector512.IsHardwareAccelerated && k >= 16)
        {
            for (; j <= j1 - 8; j += 8)
            {
                long w0 = (long)j * k, w1 = w0 + k, w2 = w1 + k, w3 = w2 + k, w4 = w3 + k, w5 = w4 + k, w6 = w5 + k, w7 = w6 + k;
                var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0; var a4 = a0; var a5 = a0; var a6 = a0; var a7 = a0;
                int p = 0;
                for (; p <= k - 16; p += 16)
                {
                    var xa = Vector512.Load(x + p);
                    a0 = Vector512.FusedMultiplyAdd(xa, TW.Load512(w, w0 + p), a0); a1 = Vector512.FusedMultiplyAdd(xa, TW.Load512(w, w1 + p), a1);
                    a2 = Vector512.FusedMultiplyAdd(xa, TW.Load512(w, w2 + p), a2); a3 = Vector512.FusedMultiplyAdd(xa, TW.Load512(w, w3 + p), a3);
                    a4 = Vector512.FusedMultiplyAdd(xa, TW.Load512(w, w4 + p), a4); a5 = Vector512.FusedMultiplyAdd(xa, TW.Load512(w, w5 + p), a5);
                    a6 = Vector512.FusedMultiplyAdd(xa, TW.Load512(w, w6 + p), a6); a7 = Vector512.FusedMultiplyAdd(xa, TW.Load512(w, w7 + p), a7);
                }
                s[0] = Vector512.Sum(a0); s[1] = Vector512.Sum(a1); s[2] = Vector512.Sum(a2); s[3] = Vector512.Sum(a3);
                s[4] = Vector512.Sum(a4); s[5] = Vector512.Sum(a5); s[6] = Vector512.Sum(a6); s[7] = Vector512.Sum(a7);
                for (int c = 0; c < 8; c++)
                {
                    long wc = w0 + (long)c * k;
                    float sum = s[c];
                    for (int q = p; q < k; q++) sum += x[q] * TW.At(w, wc + q);
                    o[j + c] = sum + (bias is null ? 0f : bias[j + c]);
                }
            }
        }
        if (j < j1) DotRows<TW>(x, w, bias, o, 0, 1, k, j1, j, j1);
    }

    /// <summary>sums[r * 4 + c] = x[r, :] · w[c, :] for a 4 × 4 block (rows past xRows or wRows repeat the last one).</summary>
    static unsafe void DotBlock<TW>(float* x, int xRows, void* w, long wStart, int wRows, int k, float* sums) where TW : struct, IWeightElements
    {
        float* x0 = x, x1 = x + (long)Math.Min(1, xRows - 1) * k, x2 = x + (long)Math.Min(2, xRows - 1) * k, x3 = x + (long)Math.Min(3, xRows - 1) * k;
        long w0 = wStart, w1 = wStart + (long)Math.Min(1, wRows - 1) * k, w2 = wStart + (long)Math.Min(2, wRows - 1) * k, w3 = wStart + (long)Math.Min(3, wRows - 1) * k;
        int p = 0;
        new Span<float>(sums, 16).Clear();
        if (Vector512.IsHardwareAccelerated && k >= 16)
        {
            var s00 = Vector512<float>.Zero; var s01 = s00; var s02 = s00; var s03 = s00;
            var s10 = s00; var s11 = s00; var s12 = s00; var s13 = s00;
            var s20 = s00; var s21 = s00; var s22 = s00; var s23 = s00;
            var s30 = s00; var s31 = s00; var s32 = s00; var s33 = s00;
            for (; p <= k - 16; p += 16)
            {
                var b0 = TW.Load512(w, w0 + p); var b1 = TW.Load512(w, w1 + p); var b2 = TW.Load512(w, w2 + p); var b3 = TW.Load512(w, w3 + p);
                var a = Vector512.Load(x0 + p);
                s00 = Vector512.FusedMultiplyAdd(a, b0, s00); s01 = Vector512.FusedMultiplyAdd(a, b1, s01);
                s02 = Vector512.FusedMultiplyAdd(a, b2, s02); s03 = Vector512.FusedMultiplyAdd(a, b3, s03);
                a = Vector512.Load(x1 + p);
                s10 = Vector512.FusedMultiplyAdd(a, b0, s10); s11 = Vector512.FusedMultiplyAdd(a, b1, s11);
                s12 = Vector512.FusedMultiplyAdd(a, b2, s12); s13 = Vector512.FusedMultiplyAdd(a, b3, s13);
                a = Vector512.Load(x2 + p);
                s20 = Vector512.FusedMultiplyAdd(a, b0, s20); s21 = Vector512.FusedMultiplyAdd(a, b1, s21);
                s22 = Vector512.FusedMultiplyAdd(a, b2, s22); s23 = Vector512.FusedMultiplyAdd(a, b3, s23);
                a = Vector512.Load(x3 + p);
                s30 = Vector512.FusedMultiplyAdd(a, b0, s30); s31 = Vector512.FusedMultiplyAdd(a, b1, s31);
                s32 = Vector512.FusedMultiplyAdd(a, b2, s32); s33 = Vector512.FusedMultiplyAdd(a, b3, s33);
            }
            sums[0] = Vector512.Sum(s00); sums[1] = Vector512.Sum(s01); sums[2] = Vector512.Sum(s02); sums[3] = Vector512.Sum(s03);
            sums[4] = Vector512.Sum(s10); sums[5] = Vector512.Sum(s11); sums[6] = Vector512.Sum(s12); sums[7] = Vector512.Sum(s13);
            sums[8] = Vector512.Sum(s20); sums[9] = Vector512.Sum(s21); sums[10] = Vector512.Sum(s22); sums[11] = Vector512.Sum(s23);
            sums[12] = Vector512.Sum(s30); sums[13] = Vector512.Sum(s31); sums[14] = Vector512.Sum(s32); sums[15] = Vector512.Sum(s33);
        }
        else if (Vector256.IsHardwareAccelerated && k >= 8)
        {
            for (int r = 0; r < 4; r += 2)
            {
                float* xa = r == 0 ? x0 : x2, xb = r == 0 ? x1 : x3;
                var s0 = Vector256<float>.Zero; var s1 = s0; var s2 = s0; var s3 = s0;
                var s4 = s0; var s5 = s0; var s6 = s0; var s7 = s0;
                for (p = 0; p <= k - 8; p += 8)
                {
                    var b0 = TW.Load256(w, w0 + p); var b1 = TW.Load256(w, w1 + p); var b2 = TW.Load256(w, w2 + p); var b3 = TW.Load256(w, w3 + p);
                    var a = Vector256.Load(xa + p);
                    s0 = Vector256.FusedMultiplyAdd(a, b0, s0); s1 = Vector256.FusedMultiplyAdd(a, b1, s1);
                    s2 = Vector256.FusedMultiplyAdd(a, b2, s2); s3 = Vector256.FusedMultiplyAdd(a, b3, s3);
                    a = Vector256.Load(xb + p);
                    s4 = Vector256.FusedMultiplyAdd(a, b0, s4); s5 = Vector256.FusedMultiplyAdd(a, b1, s5);
                    s6 = Vector256.FusedMultiplyAdd(a, b2, s6); s7 = Vector256.FusedMultiplyAdd(a, b3, s7);
                }
                float* dst = sums + r * 4;
                dst[0] = Vector256.Sum(s0); dst[1] = Vector256.Sum(s1); dst[2] = Vector256.Sum(s2); dst[3] = Vector256.Sum(s3);
                dst[4] = Vector256.Sum(s4); dst[5] = Vector256.Sum(s5); dst[6] = Vector256.Sum(s6); dst[7] = Vector256.Sum(s7);
            }
        }
        for (int r = 0; r < 4; r++)
        {
            float* xr = r == 0 ? x0 : r == 1 ? x1 : r == 2 ? x2 : x3;
            for (int c = 0; c < 4; c++)
            {
                long wc = c == 0 ? w0 : c == 1 ? w1 : c == 2 ? w2 : w3;
                float tail = 0;
                for (int t = p; t < k; t++) tail += xr[t] * TW.At(w, wc + t);
                sums[r * 4 + c] += tail;
            }
        }
    }
}
