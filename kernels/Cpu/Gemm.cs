using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace DiffuSharp.Kernels.Cpu;

/// <summary>
/// One operand of a product, M × K on the left or K × N on the right: stored row-major with rows ld elements
/// apart, or (Transposed) as the transpose of such a matrix, element (r, c) at c · ld + r. The right operand (a weight)
/// may be stored in 16 bits (<see cref="Format"/>); packing widens it, so the micro-kernel always multiplies float32.
/// </summary>
readonly unsafe struct Operand(void* data, int ld, bool transposed, WeightFormat format = WeightFormat.F32)
{
    public readonly void* Raw = data;
    public readonly int Ld = ld;
    public readonly bool Transposed = transposed;
    public readonly WeightFormat Format = format;

    /// <summary>The elements as float32 (a float32 operand only).</summary>
    public float* Data => (float*)Raw;

    /// <summary>The address of element index (counted in elements of the operand's format).</summary>
    public byte* At(long index) => (byte*)Raw + index * (Format == WeightFormat.F32 ? 4 : 2);
}

/// <summary>
/// The packed, register-blocked product behind every large matmul, forward and backward, the GotoBLAS/BLIS way.
/// <para>
/// The micro-kernel keeps an MR × NR tile of the output in registers (14 × 32 with AVX-512: 28 accumulators and two
/// vectors of b fill the 32 zmm registers; 6 × 16 with AVX2) and per step of k loads two vectors of b and broadcasts
/// MR values of a: 28 FMAs to 16 loads, so the two FMA ports, not the load ports, set the pace. It sweeps one b
/// micro-panel (KC × NR) over every MR-row strip of the packed a block (MC × KC); both stream from L2.
/// </para>
/// <para>
/// Packing absorbs the layouts, so one kernel serves x·w, x·wᵀ and the backward products: rows of a are packed k-major
/// (one aligned 16-float line per k), columns of b into NR-wide panels (NR values per k). Where a row-major matrix
/// must be read across its rows (a as stored, b stored transposed) the pack transposes 16 × 16 blocks in registers;
/// elsewhere it copies runs.
/// </para>
/// <para>
/// The output tile is accumulated from zero and written once per KC block: stored (plus the bias) on the first block
/// unless accumulating, added into place after. Tiles cut by the right edge go through a small buffer; strips cut by
/// the bottom edge use the same kernel specialised for fewer rows.
/// </para>
/// <para>
/// On several cores the rows are split evenly and the members of a <see cref="CoreTeam"/> walk the same sequence of
/// b blocks in a buffer they share: each packs its share of the next block's panels between the tiles of the current
/// one, and a barrier per block opens once the next block is whole. Every member packs its own a blocks. So every
/// element of b is packed once per a block, not once per core, the packing hides behind the FMAs, and the cores
/// finish together.
/// </para>
/// <para>
/// The kernel and the packs are compiled fully optimised from their first call (AggressiveOptimization): the tiered
/// JIT's unoptimised first copies would otherwise show in the first dozens of products.
/// </para>
/// </summary>
static unsafe class Gemm
{
    static readonly bool Wide = Vector512.IsHardwareAccelerated && Avx512F.IsSupported;
    static readonly int MR = Wide ? 14 : 6;
    static readonly int NR = Wide ? 32 : 16;
    /// <summary>Floats per k step of a packed a strip: MR rounded up to a whole vector, so each step is one aligned line.</summary>
    static readonly int AStride = Wide ? 16 : 8;

    /// <summary>
    /// Deepest packed block (K is split evenly, in multiples of 16). A b micro-panel of up to 128 KiB streams from L2
    /// well, and every block costs a read and a write of the output tile, so fewer, deeper blocks win (the
    /// measurement is in BENCHMARKS.md, "Measurements behind kernel choices").
    /// </summary>
    const int KC = 1024;
    /// <summary>Columns of a packed b block (KC × NC = 2 MiB at most): packed by the team, then consumed at once.</summary>
    const int NC = 512;
    /// <summary>Most rows of a packed a block per core (MC × KC = 2 MiB at most, the size of L2).</summary>
    const int MCMax = 512;
    /// <summary>Products under this many FLOPs run on one core: waking the team would cost more than it saves.</summary>
    const long MinTeamFlops = 1 << 22;

    /// <summary>Two b blocks shared by the team: one is packed while the slower member still multiplies with the other.</summary>
    static readonly float* SharedPanels = (float*)NativeMemory.AlignedAlloc((nuint)(2L * 2048 * 2048 * sizeof(float)), 64);

    /// <summary>c[M, N] = a · b + bias, or c += a · b when accumulating (bias then unused).</summary>
    public static void Multiply(Operand a, Operand b, float* bias, bool accumulate, float* c, int m, int k, int n)
    {
        var product = new Product(a, b, bias, accumulate, c, m, k, n);
        long flops = 2L * m * n * k;
        int members = flops < MinTeamFlops ? 1 : CoreTeam.Size;
        if (members == 1)
        {
            Blocked(product, 0, m, 0, n, 0, 1, TeamBarrier.Alone);
            return;
        }
        // Rows are split and b is packed once for the team; with too few rows for a strip each, columns are split
        // and each member packs the whole (small) a itself.
        bool splitRows = m >= 8 * members;
        CoreTeam.Run(members, (member, count, barrier) =>
        {
            if (splitRows)
            {
                int share = (m + count - 1) / count;
                Blocked(product, Math.Min(m, member * share), Math.Min(m, (member + 1) * share), 0, n, member, count, barrier);
            }
            else
            {
                int share = ((n + count - 1) / count + NR - 1) / NR * NR;
                int j0 = Math.Min(n, member * share), j1 = Math.Min(n, j0 + share);
                if (j0 < j1) Blocked(product, 0, m, j0, j1, 0, 1, TeamBarrier.Alone);
            }
        });
    }

    /// <summary>
    /// c1 += a1 · b1 and c2 += a2 · b2, two products of the same size (the two halves of a backward pass). On two cores
    /// each core takes one product whole: no shared blocks, no barriers, and the packing of one overlaps the FMAs of the
    /// other (slightly faster than running them one after the other on the team: BENCHMARKS.md, kernel choices).
    /// </summary>
    public static void AccumulatePair(Operand a1, Operand b1, float* c1, int m1, int k1, int n1, Operand a2, Operand b2, float* c2, int m2, int k2, int n2)
    {
        var first = new Product(a1, b1, null, true, c1, m1, k1, n1);
        var second = new Product(a2, b2, null, true, c2, m2, k2, n2);
        if (CoreTeam.Size != 2 || 2L * m1 * k1 * n1 < MinTeamFlops || 2L * m2 * k2 * n2 < MinTeamFlops)
        {
            Multiply(a1, b1, null, true, c1, m1, k1, n1);
            Multiply(a2, b2, null, true, c2, m2, k2, n2);
            return;
        }
        CoreTeam.Run(2, (member, count, _) =>
        {
            if (member == 0) Blocked(first, 0, first.M, 0, first.N, 0, 1, TeamBarrier.Alone);
            if (member == 1 || count == 1) Blocked(second, 0, second.M, 0, second.N, 0, 1, TeamBarrier.Alone);
        });
    }

    /// <summary>The operands of one product: c[M, N] (rows n apart) = a[M, K] · b[K, N] (+ bias), or c += a · b.</summary>
    readonly struct Product(Operand a, Operand b, float* bias, bool accumulate, float* c, int m, int k, int n)
    {
        public readonly Operand A = a, B = b;
        public readonly float* Bias = bias, C = c;
        public readonly bool Accumulate = accumulate;
        public readonly int M = m, K = k, N = n;
    }

    /// <summary>
    /// Output rows [i0, i1) and columns [j0, j1) for one member of a team of `members` that share the b blocks: every
    /// member walks the same sequence of blocks and packs its share of each block's panels into one of two buffers.
    /// The next block is packed a few pieces before each tile of the current one: reading b from memory is slow for
    /// one core and the FMAs leave the memory system idle, so the two overlap instead of alternating (BENCHMARKS.md,
    /// kernel choices). A barrier per block makes sure the whole next block is packed, and that no
    /// member still reads the buffer about to be refilled. A team of one packs everything into its own two buffers.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Blocked(in Product p, int i0, int i1, int j0, int j1, int member, int members, TeamBarrier barrier)
    {
        int mr = MR, nr = NR;
        // All members agree on the number of a blocks (from the largest share), so their b block sequences match.
        int largest = members == 1 ? i1 - i0 : (p.M + members - 1) / members;
        int aBlocks = Math.Max(1, (largest + MCMax - 1) / MCMax);
        int mc = Math.Max(mr, ((i1 - i0 + aBlocks - 1) / aBlocks + mr - 1) / mr * mr);
        int kBlocks = (p.K + KC - 1) / KC;
        int kcStep = Math.Min(KC, ((p.K + kBlocks - 1) / kBlocks + 15) & ~15);
        kBlocks = (p.K + kcStep - 1) / kcStep;
        int jBlocks = (j1 - j0 + NC - 1) / NC;
        int sequence = aBlocks * kBlocks * jBlocks;

        long stripsSize = (long)(mc / mr) * AStride * kcStep;
        long slotSize = members == 1 ? (long)kcStep * NC : (long)KC * NC;
        float* packA = Scratch.Get(stripsSize + (members == 1 ? 2 * slotSize : 0));
        float* slots = members == 1 ? packA + stripsSize : SharedPanels;

        var schedule = new BlockSchedule(p, j0, j1, kcStep, kBlocks, jBlocks, member, members, slots, slotSize);
        var packer = schedule.Share(0);
        packer.Pack(int.MaxValue);
        barrier.Wait();
        for (int g = 0; g < sequence; g++)
        {
            var (block, pc, jc) = schedule.Coordinates(g);
            int kc = Math.Min(kcStep, p.K - pc), nc = Math.Min(NC, j1 - jc);
            int ic = i0 + block * mc;
            int mcRows = Math.Clamp(i1 - ic, 0, mc);
            bool store = pc == 0 && !p.Accumulate;
            if (mcRows > 0 && jc == j0) PackA(p.A, ic, mcRows, pc, kc, packA);
            float* packB = schedule.Slot(g);

            packer = g + 1 < sequence ? schedule.Share(g + 1) : default;
            int strips = (mcRows + mr - 1) / mr, panels = (nc + nr - 1) / nr;
            int perTile = strips == 0 ? 0 : (packer.Pieces + panels * strips - 1) / (panels * strips);
            for (int jr = 0; jr < nc && strips > 0; jr += nr)
            {
                int cols = Math.Min(nr, nc - jr);
                float* panel = packB + (long)jr * kc;
                float* tileBias = store && p.Bias is not null ? p.Bias + jc + jr : null;
                for (int ir = 0; ir < mcRows; ir += mr)
                {
                    packer.Pack(perTile);
                    int tileRows = Math.Min(mr, mcRows - ir);
                    float* strip = packA + (long)(ir / mr) * AStride * kc;
                    float* tile = p.C + (long)(ic + ir) * p.N + jc + jr;
                    if (cols == nr) Tile(tileRows, strip, panel, kc, tile, p.N, tileBias, store);
                    else EdgeTile(tileRows, cols, strip, panel, kc, tile, p.N, tileBias, store);
                }
            }
            packer.Pack(int.MaxValue);
            barrier.Wait();
        }
    }

    /// <summary>The order of the b blocks (a block, then K block, then N block) and which part of each a member packs.</summary>
    readonly struct BlockSchedule(in Product p, int j0, int j1, int kcStep, int kBlocks, int jBlocks, int member, int members, float* slots, long slotSize)
    {
        readonly Operand b = p.B;
        readonly int k = p.K;

        public (int Block, int Pc, int Jc) Coordinates(int g) =>
            (g / (kBlocks * jBlocks), g / jBlocks % kBlocks * kcStep, j0 + g % jBlocks * NC);

        public float* Slot(int g) => slots + (g & 1) * slotSize;

        /// <summary>The packer of this member's panels of block g, into its slot.</summary>
        public BlockPacker Share(int g)
        {
            var (_, pc, jc) = Coordinates(g);
            int kc = Math.Min(kcStep, k - pc), nc = Math.Min(NC, j1 - jc);
            int panels = (nc + NR - 1) / NR;
            int first = panels * member / members, last = panels * (member + 1) / members;
            int width = Math.Min(nc, last * NR) - first * NR;
            return width <= 0 ? default : new BlockPacker(b, jc + first * NR, width, pc, kc, Slot(g) + (long)first * NR * kc);
        }
    }

    /// <summary>
    /// Packs columns [jc, jc+nc) of b[pc .. pc+kc, :] into NR-column panels at dst (panel q at q · NR · kc, NR values
    /// per k, columns past nc zero), in pieces of about 256 floats: a 16 × 16 transpose of b stored transposed, a
    /// row of the block otherwise. Pieces run panel by panel and, within one, along k, so the source is read in long runs.
    /// </summary>
    struct BlockPacker
    {
        readonly Operand b;
        readonly int jc, nc, pc, kc, kChunks, halves;
        readonly float* dst;
        int next;

        public BlockPacker(Operand b, int jc, int nc, int pc, int kc, float* dst)
        {
            this.b = b;
            this.jc = jc;
            this.nc = nc;
            this.pc = pc;
            this.kc = kc;
            this.dst = dst;
            kChunks = (kc + 15) / 16;
            halves = NR / 16;
            Pieces = b.Transposed ? (nc + NR - 1) / NR * halves * kChunks : kc;
        }

        /// <summary>How many pieces the whole share is (zero for an empty share).</summary>
        public int Pieces { get; }

        /// <summary>Packs the next count pieces (fewer when the share runs out).</summary>
        public void Pack(int count)
        {
            float* block = stackalloc float[256];
            for (int end = (int)Math.Min(Pieces, (long)next + count); next < end; next++)
            {
                if (b.Transposed)
                {
                    var (panel, half, p0) = Piece(next);
                    int col = panel * NR + half * 16;
                    int lines = Math.Clamp(nc - col, 0, 16), len = Math.Min(16, kc - p0);
                    long start = (long)(jc + col) * b.Ld + pc + p0;
                    float* target = dst + (long)panel * NR * kc + (long)p0 * NR + half * 16;
                    if (b.Format == WeightFormat.F32) Transpose16(b.Data + start, b.Ld, lines, len, target, NR);
                    else
                    {
                        // A 16-bit block is widened line by line into a 16 × 16 float block first, then transposed as float32.
                        for (int r = 0; r < lines; r++) WeightWidening.Widen(b.At(start + (long)r * b.Ld), b.Format, block + r * 16, len);
                        Transpose16(block, 16, lines, len, target, NR);
                    }
                }
                else CopyRow(next);
            }
        }

        readonly (int Panel, int Half, int P0) Piece(int u) => (u / (halves * kChunks), u / kChunks % halves, u % kChunks * 16);

        /// <summary>Row p of the block (nc floats) dealt out to the panels.</summary>
        readonly void CopyRow(int p)
        {
            float* d = dst + (long)p * NR;
            long panelSize = (long)kc * NR;
            if (b.Format != WeightFormat.F32)
            {
                byte* row = b.At((long)(pc + p) * b.Ld + jc);
                int size = 2;
                for (int col = 0; col < nc; col += NR, d += panelSize)
                {
                    int width = Math.Min(NR, nc - col);
                    WeightWidening.Widen(row + (long)col * size, b.Format, d, width);
                    if (width < NR) new Span<float>(d + width, NR - width).Clear();
                }
                return;
            }
            float* src = b.Data + (long)(pc + p) * b.Ld + jc;
            int j = 0;
            for (; j + NR <= nc; j += NR, d += panelSize)
            {
                if (NR == 32)
                {
                    Vector512.StoreAligned(Vector512.Load(src + j), d);
                    Vector512.StoreAligned(Vector512.Load(src + j + 16), d + 16);
                }
                else new ReadOnlySpan<float>(src + j, NR).CopyTo(new Span<float>(d, NR));
            }
            if (j < nc)
            {
                new ReadOnlySpan<float>(src + j, nc - j).CopyTo(new Span<float>(d, nc - j));
                new Span<float>(d + nc - j, NR - (nc - j)).Clear();
            }
        }
    }

    /// <summary>
    /// Packs a[ic .. ic+rows, pc .. pc+kc] into strips of MR rows (the last may be shorter), strip s at s · AStride · kc,
    /// each k-major with AStride floats per k of which the first rows-of-the-strip are used.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void PackA(Operand a, int ic, int rows, int pc, int kc, float* dst)
    {
        if (a.Transposed)
        {
            // Sixteen rows of the stored matrix at a time, dealt out to every strip: each source line is read once
            // while it is in L1, and each strip receives a whole kilobyte at once.
            for (int p = 0; p < kc; p += 16)
            {
                int steps = Math.Min(16, kc - p);
                float* src = a.Data + (long)(pc + p) * a.Ld + ic;
                for (int ir = 0; ir < rows; ir += MR)
                    CopyRuns(src + ir, a.Ld, Math.Min(MR, rows - ir), steps, dst + ((long)(ir / MR) * kc + p) * AStride, AStride);
            }
            return;
        }
        for (int ir = 0; ir < rows; ir += MR)
            Transpose16(a.Data + (long)(ic + ir) * a.Ld + pc, a.Ld, Math.Min(MR, rows - ir), kc, dst + (long)(ir / MR) * AStride * kc, AStride);
    }

    /// <summary>
    /// dst[p · stride + r] = src[r · ld + p] for p &lt; len and r &lt; lines (at most 16), zero for lines ≤ r &lt; min(16, stride):
    /// the transpose of a row-major block, 16 × 16 at a time in registers (with AVX-512 the stride is at least 16).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Transpose16(float* src, int ld, int lines, int len, float* dst, int stride)
    {
        int p = 0;
        int width = Math.Min(16, stride);
        if (Avx512F.IsSupported)
        {
            var zero = Vector512<float>.Zero;
            for (; p <= len - 16; p += 16)
            {
                float* s = src + p;
                var r0 = lines > 0 ? Vector512.Load(s) : zero;
                var r1 = lines > 1 ? Vector512.Load(s + ld) : zero;
                var r2 = lines > 2 ? Vector512.Load(s + 2L * ld) : zero;
                var r3 = lines > 3 ? Vector512.Load(s + 3L * ld) : zero;
                var r4 = lines > 4 ? Vector512.Load(s + 4L * ld) : zero;
                var r5 = lines > 5 ? Vector512.Load(s + 5L * ld) : zero;
                var r6 = lines > 6 ? Vector512.Load(s + 6L * ld) : zero;
                var r7 = lines > 7 ? Vector512.Load(s + 7L * ld) : zero;
                var r8 = lines > 8 ? Vector512.Load(s + 8L * ld) : zero;
                var r9 = lines > 9 ? Vector512.Load(s + 9L * ld) : zero;
                var r10 = lines > 10 ? Vector512.Load(s + 10L * ld) : zero;
                var r11 = lines > 11 ? Vector512.Load(s + 11L * ld) : zero;
                var r12 = lines > 12 ? Vector512.Load(s + 12L * ld) : zero;
                var r13 = lines > 13 ? Vector512.Load(s + 13L * ld) : zero;
                var r14 = lines > 14 ? Vector512.Load(s + 14L * ld) : zero;
                var r15 = lines > 15 ? Vector512.Load(s + 15L * ld) : zero;

                // Pairs of rows interleaved within 128-bit lanes, then pairs of pairs: u[4g + j] holds, per lane L,
                // rows 4g .. 4g+3 of column 4L + j.
                var t0 = Avx512F.UnpackLow(r0, r1); var t1 = Avx512F.UnpackHigh(r0, r1);
                var t2 = Avx512F.UnpackLow(r2, r3); var t3 = Avx512F.UnpackHigh(r2, r3);
                var t4 = Avx512F.UnpackLow(r4, r5); var t5 = Avx512F.UnpackHigh(r4, r5);
                var t6 = Avx512F.UnpackLow(r6, r7); var t7 = Avx512F.UnpackHigh(r6, r7);
                var t8 = Avx512F.UnpackLow(r8, r9); var t9 = Avx512F.UnpackHigh(r8, r9);
                var t10 = Avx512F.UnpackLow(r10, r11); var t11 = Avx512F.UnpackHigh(r10, r11);
                var t12 = Avx512F.UnpackLow(r12, r13); var t13 = Avx512F.UnpackHigh(r12, r13);
                var t14 = Avx512F.UnpackLow(r14, r15); var t15 = Avx512F.UnpackHigh(r14, r15);
                var u0 = PairLow(t0, t2); var u1 = PairHigh(t0, t2); var u2 = PairLow(t1, t3); var u3 = PairHigh(t1, t3);
                var u4 = PairLow(t4, t6); var u5 = PairHigh(t4, t6); var u6 = PairLow(t5, t7); var u7 = PairHigh(t5, t7);
                var u8 = PairLow(t8, t10); var u9 = PairHigh(t8, t10); var u10 = PairLow(t9, t11); var u11 = PairHigh(t9, t11);
                var u12 = PairLow(t12, t14); var u13 = PairHigh(t12, t14); var u14 = PairLow(t13, t15); var u15 = PairHigh(t13, t15);

                float* d = dst + (long)p * stride;
                Gather(u0, u4, u8, u12, d, stride);
                Gather(u1, u5, u9, u13, d + stride, stride);
                Gather(u2, u6, u10, u14, d + 2 * stride, stride);
                Gather(u3, u7, u11, u15, d + 3 * stride, stride);
            }
        }
        for (; p < len; p++)
        {
            float* d = dst + (long)p * stride;
            for (int r = 0; r < width; r++) d[r] = r < lines ? src[(long)r * ld + p] : 0f;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> PairLow(Vector512<float> x, Vector512<float> y) => Avx512F.UnpackLow(x.AsDouble(), y.AsDouble()).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> PairHigh(Vector512<float> x, Vector512<float> y) => Avx512F.UnpackHigh(x.AsDouble(), y.AsDouble()).AsSingle();

    /// <summary>
    /// From the u vectors of columns 4L + j (rows 0-3, 4-7, 8-11, 12-15) writes the whole columns j, j + 4, j + 8 and
    /// j + 12 at d, d + 4 · stride, d + 8 · stride and d + 12 · stride.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Gather(Vector512<float> q0, Vector512<float> q1, Vector512<float> q2, Vector512<float> q3, float* d, int stride)
    {
        var even01 = Avx512F.Shuffle4x128(q0, q1, 0x88); var odd01 = Avx512F.Shuffle4x128(q0, q1, 0xDD);
        var even23 = Avx512F.Shuffle4x128(q2, q3, 0x88); var odd23 = Avx512F.Shuffle4x128(q2, q3, 0xDD);
        Vector512.Store(Avx512F.Shuffle4x128(even01, even23, 0x88), d);
        Vector512.Store(Avx512F.Shuffle4x128(odd01, odd23, 0x88), d + 4L * stride);
        Vector512.Store(Avx512F.Shuffle4x128(even01, even23, 0xDD), d + 8L * stride);
        Vector512.Store(Avx512F.Shuffle4x128(odd01, odd23, 0xDD), d + 12L * stride);
    }

    /// <summary>
    /// dst[p · stride + r] = src[p · ld + r] for p &lt; len, r &lt; count (count ≤ stride ≤ 16): a left operand stored
    /// transposed is already k-major, so its strip is a run of short copies (masked loads: no read past count).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void CopyRuns(float* src, int ld, int count, int len, float* dst, int stride)
    {
        if (Avx512F.IsSupported && stride == 16)
        {
            var mask = Vector512.LessThan(Vector512<int>.Indices, Vector512.Create(count)).AsSingle();
            for (int p = 0; p < len; p++)
                Vector512.Store(Avx512F.MaskLoad(src + (long)p * ld, mask, Vector512<float>.Zero), dst + (long)p * 16);
            return;
        }
        for (int p = 0; p < len; p++)
            for (int r = 0; r < count; r++) dst[(long)p * stride + r] = src[(long)p * ld + r];
    }

    /// <summary>A tile cut by the right edge: computed into a buffer NR wide, then its first cols columns put in place.</summary>
    static void EdgeTile(int rows, int cols, float* a, float* b, int kc, float* c, int ldc, float* bias, bool store)
    {
        int nr = NR;
        float* buffer = stackalloc float[14 * 32 + 16];
        float* tile = (float*)(((nuint)buffer + 63) & ~(nuint)63);
        Tile(rows, a, b, kc, tile, nr, null, store: true);
        for (int r = 0; r < rows; r++)
        {
            float* row = c + (long)r * ldc;
            float* t = tile + r * nr;
            for (int j = 0; j < cols; j++)
                row[j] = t[j] + (!store ? row[j] : bias is null ? 0f : bias[j]);
        }
    }

    /// <summary>c[rows, NR] (+)= a · b over kc steps of the packed strip and panel; see <see cref="Kernel512{R}"/>.</summary>
    static void Tile(int rows, float* a, float* b, int kc, float* c, int ldc, float* bias, bool store)
    {
        if (Wide)
        {
            switch (rows)
            {
                case 14: Kernel512<R14>(a, b, kc, c, ldc, bias, store); break;
                case 13: Kernel512<R13>(a, b, kc, c, ldc, bias, store); break;
                case 12: Kernel512<R12>(a, b, kc, c, ldc, bias, store); break;
                case 11: Kernel512<R11>(a, b, kc, c, ldc, bias, store); break;
                case 10: Kernel512<R10>(a, b, kc, c, ldc, bias, store); break;
                case 9: Kernel512<R9>(a, b, kc, c, ldc, bias, store); break;
                case 8: Kernel512<R8>(a, b, kc, c, ldc, bias, store); break;
                case 7: Kernel512<R7>(a, b, kc, c, ldc, bias, store); break;
                case 6: Kernel512<R6>(a, b, kc, c, ldc, bias, store); break;
                case 5: Kernel512<R5>(a, b, kc, c, ldc, bias, store); break;
                case 4: Kernel512<R4>(a, b, kc, c, ldc, bias, store); break;
                case 3: Kernel512<R3>(a, b, kc, c, ldc, bias, store); break;
                case 2: Kernel512<R2>(a, b, kc, c, ldc, bias, store); break;
                default: Kernel512<R1>(a, b, kc, c, ldc, bias, store); break;
            }
            return;
        }
        switch (rows)
        {
            case 6: Kernel256<R6>(a, b, kc, c, ldc, bias, store); break;
            case 5: Kernel256<R5>(a, b, kc, c, ldc, bias, store); break;
            case 4: Kernel256<R4>(a, b, kc, c, ldc, bias, store); break;
            case 3: Kernel256<R3>(a, b, kc, c, ldc, bias, store); break;
            case 2: Kernel256<R2>(a, b, kc, c, ldc, bias, store); break;
            default: Kernel256<R1>(a, b, kc, c, ldc, bias, store); break;
        }
    }

    /// <summary>The number of rows a kernel is specialised for: the JIT compiles one body per type and drops the rest.</summary>
    interface IRows { static abstract int Count { get; } }
    struct R1 : IRows { public static int Count => 1; }
    struct R2 : IRows { public static int Count => 2; }
    struct R3 : IRows { public static int Count => 3; }
    struct R4 : IRows { public static int Count => 4; }
    struct R5 : IRows { public static int Count => 5; }
    struct R6 : IRows { public static int Count => 6; }
    struct R7 : IRows { public static int Count => 7; }
    struct R8 : IRows { public static int Count => 8; }
    struct R9 : IRows { public static int Count => 9; }
    struct R10 : IRows { public static int Count => 10; }
    struct R11 : IRows { public static int Count => 11; }
    struct R12 : IRows { public static int Count => 12; }
    struct R13 : IRows { public static int Count => 13; }
    struct R14 : IRows { public static int Count => 14; }

    /// <summary>
    /// c[R, 32] = acc (+ bias) when storing, else c += acc, where acc = a · b over kc steps: a is R values per k, b 32.
    /// The inner loop is two aligned loads, R broadcasts and 2R FMAs into accumulators that never leave registers (for
    /// R = 14: 28 of them plus the two b vectors, all 32 zmm registers, no spills). The output is only touched after
    /// the loop, so its lines are prefetched first and arrive while the FMAs run.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Kernel512<R>(float* a, float* b, int kc, float* c, int ldc, float* bias, bool store) where R : struct, IRows
    {
        // Into L2 only: the rows of a tile are often 4 KiB apart and would all fall in one set of the 12-way L1.
        for (int r = 0; r < R.Count; r++)
        {
            Sse.Prefetch1(c + (long)r * ldc);
            Sse.Prefetch1(c + (long)r * ldc + 16);
        }
        var z = Vector512<float>.Zero;
        Vector512<float> c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z, c40 = z, c41 = z, c50 = z, c51 = z, c60 = z, c61 = z;
        Vector512<float> c70 = z, c71 = z, c80 = z, c81 = z, c90 = z, c91 = z, ca0 = z, ca1 = z, cb0 = z, cb1 = z, cc0 = z, cc1 = z, cd0 = z, cd1 = z;
        for (int p = 0; p < kc; p++)
        {
            var b0 = Vector512.LoadAligned(b);
            var b1 = Vector512.LoadAligned(b + 16);
            Vector512<float> v = Vector512.Create(a[0]);
            c00 = Vector512.FusedMultiplyAdd(v, b0, c00); c01 = Vector512.FusedMultiplyAdd(v, b1, c01);
            if (R.Count > 1) { v = Vector512.Create(a[1]); c10 = Vector512.FusedMultiplyAdd(v, b0, c10); c11 = Vector512.FusedMultiplyAdd(v, b1, c11); }
            if (R.Count > 2) { v = Vector512.Create(a[2]); c20 = Vector512.FusedMultiplyAdd(v, b0, c20); c21 = Vector512.FusedMultiplyAdd(v, b1, c21); }
            if (R.Count > 3) { v = Vector512.Create(a[3]); c30 = Vector512.FusedMultiplyAdd(v, b0, c30); c31 = Vector512.FusedMultiplyAdd(v, b1, c31); }
            if (R.Count > 4) { v = Vector512.Create(a[4]); c40 = Vector512.FusedMultiplyAdd(v, b0, c40); c41 = Vector512.FusedMultiplyAdd(v, b1, c41); }
            if (R.Count > 5) { v = Vector512.Create(a[5]); c50 = Vector512.FusedMultiplyAdd(v, b0, c50); c51 = Vector512.FusedMultiplyAdd(v, b1, c51); }
            if (R.Count > 6) { v = Vector512.Create(a[6]); c60 = Vector512.FusedMultiplyAdd(v, b0, c60); c61 = Vector512.FusedMultiplyAdd(v, b1, c61); }
            if (R.Count > 7) { v = Vector512.Create(a[7]); c70 = Vector512.FusedMultiplyAdd(v, b0, c70); c71 = Vector512.FusedMultiplyAdd(v, b1, c71); }
            if (R.Count > 8) { v = Vector512.Create(a[8]); c80 = Vector512.FusedMultiplyAdd(v, b0, c80); c81 = Vector512.FusedMultiplyAdd(v, b1, c81); }
            if (R.Count > 9) { v = Vector512.Create(a[9]); c90 = Vector512.FusedMultiplyAdd(v, b0, c90); c91 = Vector512.FusedMultiplyAdd(v, b1, c91); }
            if (R.Count > 10) { v = Vector512.Create(a[10]); ca0 = Vector512.FusedMultiplyAdd(v, b0, ca0); ca1 = Vector512.FusedMultiplyAdd(v, b1, ca1); }
            if (R.Count > 11) { v = Vector512.Create(a[11]); cb0 = Vector512.FusedMultiplyAdd(v, b0, cb0); cb1 = Vector512.FusedMultiplyAdd(v, b1, cb1); }
            if (R.Count > 12) { v = Vector512.Create(a[12]); cc0 = Vector512.FusedMultiplyAdd(v, b0, cc0); cc1 = Vector512.FusedMultiplyAdd(v, b1, cc1); }
            if (R.Count > 13) { v = Vector512.Create(a[13]); cd0 = Vector512.FusedMultiplyAdd(v, b0, cd0); cd1 = Vector512.FusedMultiplyAdd(v, b1, cd1); }
            // The a strip streams from L2 or beyond, one line per step; the hardware prefetcher alone left it short.
            Sse.Prefetch0(a + 16 * 16);
            a += 16;
            b += 32;
        }
        var bias0 = bias is null ? z : Vector512.Load(bias);
        var bias1 = bias is null ? z : Vector512.Load(bias + 16);
        Put512(c, c00, c01, bias0, bias1, store);
        if (R.Count > 1) Put512(c + ldc, c10, c11, bias0, bias1, store);
        if (R.Count > 2) Put512(c + 2L * ldc, c20, c21, bias0, bias1, store);
        if (R.Count > 3) Put512(c + 3L * ldc, c30, c31, bias0, bias1, store);
        if (R.Count > 4) Put512(c + 4L * ldc, c40, c41, bias0, bias1, store);
        if (R.Count > 5) Put512(c + 5L * ldc, c50, c51, bias0, bias1, store);
        if (R.Count > 6) Put512(c + 6L * ldc, c60, c61, bias0, bias1, store);
        if (R.Count > 7) Put512(c + 7L * ldc, c70, c71, bias0, bias1, store);
        if (R.Count > 8) Put512(c + 8L * ldc, c80, c81, bias0, bias1, store);
        if (R.Count > 9) Put512(c + 9L * ldc, c90, c91, bias0, bias1, store);
        if (R.Count > 10) Put512(c + 10L * ldc, ca0, ca1, bias0, bias1, store);
        if (R.Count > 11) Put512(c + 11L * ldc, cb0, cb1, bias0, bias1, store);
        if (R.Count > 12) Put512(c + 12L * ldc, cc0, cc1, bias0, bias1, store);
        if (R.Count > 13) Put512(c + 13L * ldc, cd0, cd1, bias0, bias1, store);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Put512(float* row, Vector512<float> v0, Vector512<float> v1, Vector512<float> bias0, Vector512<float> bias1, bool store)
    {
        if (store)
        {
            Vector512.Store(v0 + bias0, row);
            Vector512.Store(v1 + bias1, row + 16);
        }
        else
        {
            Vector512.Store(v0 + Vector512.Load(row), row);
            Vector512.Store(v1 + Vector512.Load(row + 16), row + 16);
        }
    }

    /// <summary>The AVX2 kernel, c[R, 16] with R ≤ 6: 12 accumulators and two b vectors of the 16 ymm registers.</summary>
    static void Kernel256<R>(float* a, float* b, int kc, float* c, int ldc, float* bias, bool store) where R : struct, IRows
    {
        var z = Vector256<float>.Zero;
        Vector256<float> c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z, c40 = z, c41 = z, c50 = z, c51 = z;
        for (int p = 0; p < kc; p++)
        {
            var b0 = Vector256.Load(b);
            var b1 = Vector256.Load(b + 8);
            Vector256<float> v = Vector256.Create(a[0]);
            c00 = Vector256.FusedMultiplyAdd(v, b0, c00); c01 = Vector256.FusedMultiplyAdd(v, b1, c01);
            if (R.Count > 1) { v = Vector256.Create(a[1]); c10 = Vector256.FusedMultiplyAdd(v, b0, c10); c11 = Vector256.FusedMultiplyAdd(v, b1, c11); }
            if (R.Count > 2) { v = Vector256.Create(a[2]); c20 = Vector256.FusedMultiplyAdd(v, b0, c20); c21 = Vector256.FusedMultiplyAdd(v, b1, c21); }
            if (R.Count > 3) { v = Vector256.Create(a[3]); c30 = Vector256.FusedMultiplyAdd(v, b0, c30); c31 = Vector256.FusedMultiplyAdd(v, b1, c31); }
            if (R.Count > 4) { v = Vector256.Create(a[4]); c40 = Vector256.FusedMultiplyAdd(v, b0, c40); c41 = Vector256.FusedMultiplyAdd(v, b1, c41); }
            if (R.Count > 5) { v = Vector256.Create(a[5]); c50 = Vector256.FusedMultiplyAdd(v, b0, c50); c51 = Vector256.FusedMultiplyAdd(v, b1, c51); }
            a += 8;
            b += 16;
        }
        var bias0 = bias is null ? z : Vector256.Load(bias);
        var bias1 = bias is null ? z : Vector256.Load(bias + 8);
        Put256(c, c00, c01, bias0, bias1, store);
        if (R.Count > 1) Put256(c + ldc, c10, c11, bias0, bias1, store);
        if (R.Count > 2) Put256(c + 2L * ldc, c20, c21, bias0, bias1, store);
        if (R.Count > 3) Put256(c + 3L * ldc, c30, c31, bias0, bias1, store);
        if (R.Count > 4) Put256(c + 4L * ldc, c40, c41, bias0, bias1, store);
        if (R.Count > 5) Put256(c + 5L * ldc, c50, c51, bias0, bias1, store);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Put256(float* row, Vector256<float> v0, Vector256<float> v1, Vector256<float> bias0, Vector256<float> bias1, bool store)
    {
        if (store)
        {
            Vector256.Store(v0 + bias0, row);
            Vector256.Store(v1 + bias1, row + 8);
        }
        else
        {
            Vector256.Store(v0 + Vector256.Load(row), row);
            Vector256.Store(v1 + Vector256.Load(row + 8), row + 8);
        }
    }
}
