using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>Four 32-bit words: one 16-byte shared-memory store (st.shared.v4.b32).</summary>
struct UInt4
{
    public uint X, Y, Z, W;

    public UInt4(uint x, uint y, uint z, uint w) { X = x; Y = y; Z = z; W = w; }
}

/// <summary>A thread's global loads for one K slice of one operand: up to four quads.</summary>
struct Slice
{
    public Float4 Q0, Q1, Q2, Q3;
}

/// <summary>The A registers of one m16 tile of a warp (see <see cref="MmaFragments"/>).</summary>
struct AFragment
{
    public uint R0, R1, R2, R3;
}

/// <summary>The B registers of one n8 tile of a warp (see <see cref="MmaFragments"/>).</summary>
struct BFragment
{
    public uint R0, R1;
}

/// <summary>
/// Tensor-core matmuls (compute capability 8.0+) through inline PTX: <c>mma.sync.aligned.m16n8k8</c> on TF32
/// inputs or <c>mma.sync.aligned.m16n8k16</c> on BF16 inputs, both accumulating in float32. Inputs are float32
/// tensors, rounded on their way into shared memory exactly as <c>cvt.rna.tf32.f32</c> and
/// <c>cvt.rn.bf16x2.f32</c> round (see <see cref="MmaFragments.RoundToTf32"/>); the layouts, the epilogues and
/// the edge handling are those of <see cref="GemmArgs"/>.
/// <list type="bullet">
/// <item>A group of 256 threads (8 warps, 2 x 4) computes a 128 x 128 output tile, each warp 64 x 32 of it:
///   4 x 4 instruction tiles of 16 x 8, whose 64 float32 accumulators per thread live in PTX registers
///   (<c>dsacc0..63</c>) that the inline PTX declares once, so no accumulator ever goes through local memory.</item>
/// <item>K advances in slices of 16 units (16 TF32 values or 16 BF16 pairs = 32 k), two instruction steps each,
///   through double-buffered shared tiles [128 rows][16 units + 4]: rows are M (for a) or N (for b), so both
///   operands are read alike, and the 4-unit pad puts a warp's 32 fragment loads (rows g, units t) in 32
///   different banks.</item>
/// <item>Global loads are quads along the stored rows (16-byte loads when the host proved alignment); an operand
///   stored with K as its row index is transposed by scalar stores, its lanes spread over k so that the stores
///   hit 32 different banks.</item>
/// </list>
/// <para>
/// The instructions exist only on CUDA. The emulated kernels (for the ILGPU CPU simulator) have each lane compute
/// its accumulators from the same rounded shared tiles through the accumulator layout of
/// <see cref="MmaFragments"/>, so the simulator tests everything but the fragment loads and the instruction
/// itself; the host tests check those against the PTX ISA's layout.
/// </para>
/// </summary>
static class TensorCoreMatMulKernels
{
    public const int TileM = 128, TileN = 128, Threads = 256;
    /// <summary>32-bit K units a slice holds: 16 TF32 values or 16 BF16 pairs.</summary>
    const int Units = 16;
    /// <summary>Row stride of a shared tile in units: 20 = 4 (mod 32) spreads rows g = 0..7 over distinct bank quads.</summary>
    const int Stride = Units + 4;
    const int BufferUnits = TileM * Stride;
    const int Tf32 = 0, Bf16 = 1;

    internal static int Groups(int m, int n) => ((m + TileM - 1) / TileM) * ((n + TileN - 1) / TileN);

    /// <summary>output (=, = + bias, +=) a · b with inputs rounded to TF32, on the tensor cores (mma.m16n8k8; CUDA only).</summary>
    internal static void Tf32Gemm(ArrayView<float> a, ArrayView<float> b, ArrayView<float> bias, ArrayView<float> output, GemmArgs args,
        SpecializedValue<int> layout) =>
        Run(a, b, bias, output, args.WithLayout(layout.Value), Tf32, emulate: 0);

    /// <summary>output (=, = + bias, +=) a · b with inputs rounded to BF16, on the tensor cores (mma.m16n8k16; CUDA only).</summary>
    internal static void Bf16Gemm(ArrayView<float> a, ArrayView<float> b, ArrayView<float> bias, ArrayView<float> output, GemmArgs args,
        SpecializedValue<int> layout) =>
        Run(a, b, bias, output, args.WithLayout(layout.Value), Bf16, emulate: 0);

    /// <summary><see cref="Tf32Gemm"/> with the instruction emulated, for accelerators without it (the CPU simulator).</summary>
    internal static void EmulatedTf32Gemm(ArrayView<float> a, ArrayView<float> b, ArrayView<float> bias, ArrayView<float> output, GemmArgs args,
        SpecializedValue<int> layout) =>
        Run(a, b, bias, output, args.WithLayout(layout.Value), Tf32, emulate: 1);

    /// <summary><see cref="Bf16Gemm"/> with the instruction emulated, for accelerators without it (the CPU simulator).</summary>
    internal static void EmulatedBf16Gemm(ArrayView<float> a, ArrayView<float> b, ArrayView<float> bias, ArrayView<float> output, GemmArgs args,
        SpecializedValue<int> layout) =>
        Run(a, b, bias, output, args.WithLayout(layout.Value), Bf16, emulate: 1);

    /// <summary>
    /// The kernel body. <paramref name="format"/> and <paramref name="emulate"/> are constants at every call site,
    /// so ILGPU folds their branches away: the CUDA kernels hold no emulation and the emulated ones no inline PTX
    /// (whose <see cref="CudaAsm.Emit(string)"/> throws off CUDA). <see cref="CudaAsm.IsSupported"/> would not do:
    /// ILGPU resolves it only after its last constant folding, so both branches would stay in the PTX.
    /// </summary>
    static void Run(ArrayView<float> a, ArrayView<float> b, ArrayView<float> bias, ArrayView<float> output, GemmArgs args, int format, int emulate)
    {
        var aTiles = SharedMemory.Allocate<uint>(2 * BufferUnits);
        var bTiles = SharedMemory.Allocate<uint>(2 * BufferUnits);
        var emulated = emulate != 0 ? LocalMemory.Allocate<float>(64) : default;
        if (emulate == 0) CudaAsm.Emit(DeclareAccumulators);
        else for (int i = 0; i < 64; i++) emulated[i] = 0f;

        int t = Group.IdxX, lane = t & 31, warp = t >> 5;
        int warpRow = (warp >> 2) * 64, warpColumn = (warp & 3) * 32;
        int row0 = Grid.IdxX / args.TilesN * TileM;
        int col0 = Grid.IdxX % args.TilesN * TileN;
        int kPerSlice = format == Bf16 ? 2 * Units : Units;
        int slices = (args.K + kPerSlice - 1) / kPerSlice;
        int outerKA = args.TransposeA, outerKB = args.TransposeB == 0 ? 1 : 0;

        // Per-thread views: fragment loads and slice stores then address shared memory with constant offsets.
        int aLane = (warpRow + MmaFragments.LaneRow(lane)) * Stride + MmaFragments.LaneUnit(lane);
        int bLane = (warpColumn + MmaFragments.LaneRow(lane)) * Stride + MmaFragments.LaneUnit(lane);
        int aStore = StoreOffset(format, outerKA, t), bStore = StoreOffset(format, outerKB, t);

        var nextA = LoadSlice(a, format, outerKA, row0, 0, args.M, args.K, args.RowLengthA, args.VectorA, t);
        var nextB = LoadSlice(b, format, outerKB, col0, 0, args.N, args.K, args.RowLengthB, args.VectorB, t);
        StoreSlice(aTiles.SubView(aStore), nextA, format, outerKA);
        StoreSlice(bTiles.SubView(bStore), nextB, format, outerKB);
        Group.Barrier();

        for (int s = 0; s < slices; s++)
        {
            int current = (s & 1) * BufferUnits;
            bool more = s + 1 < slices;
            if (more)
            {
                int k0 = (s + 1) * kPerSlice;
                nextA = LoadSlice(a, format, outerKA, row0, k0, args.M, args.K, args.RowLengthA, args.VectorA, t);
                nextB = LoadSlice(b, format, outerKB, col0, k0, args.N, args.K, args.RowLengthB, args.VectorB, t);
            }

            if (emulate == 0)
            {
                var aFragments = aTiles.SubView(current + aLane);
                var bFragments = bTiles.SubView(current + bLane);
                Step(aFragments, bFragments, 0, format);
                Step(aFragments, bFragments, 8, format);
            }
            else
            {
                int aBase = current + warpRow * Stride, bBase = current + warpColumn * Stride;
                Emulate(aTiles, bTiles, aBase, bBase, lane, format, emulated);
                Emulate(aTiles, bTiles, aBase + 8, bBase + 8, lane, format, emulated);
            }

            if (more)
            {
                int other = BufferUnits - current;
                StoreSlice(aTiles.SubView(other + aStore), nextA, format, outerKA);
                StoreSlice(bTiles.SubView(other + bStore), nextB, format, outerKB);
            }
            Group.Barrier();
        }

        int rowBase = row0 + warpRow, columnBase = col0 + warpColumn;
        for (int tile = 0; tile < 16; tile++)
        {
            var c = emulate == 0
                ? Accumulators(tile)
                : new Float4(emulated[4 * tile], emulated[4 * tile + 1], emulated[4 * tile + 2], emulated[4 * tile + 3]);
            int row = rowBase + 16 * (tile >> 2), column = columnBase + 8 * (tile & 3);
            Finish(output, bias, args, row + MmaFragments.CRow(lane, 0), column + MmaFragments.CColumn(lane, 0), c.X);
            Finish(output, bias, args, row + MmaFragments.CRow(lane, 1), column + MmaFragments.CColumn(lane, 1), c.Y);
            Finish(output, bias, args, row + MmaFragments.CRow(lane, 2), column + MmaFragments.CColumn(lane, 2), c.Z);
            Finish(output, bias, args, row + MmaFragments.CRow(lane, 3), column + MmaFragments.CColumn(lane, 3), c.W);
        }
    }

    // ---- global loads and shared stores ----------------------------------------------------------

    /// <summary>
    /// This thread's quads of the K slice starting at <paramref name="k0"/> of a 128-row operand tile (rows M
    /// for a, N for b) starting at <paramref name="origin"/>. Stored rows along K (<paramref name="outerK"/> = 0):
    /// quad q = t + 256 l holds tile row q / (units / 4), k = 4 (q % (units / 4)). K as the stored row index:
    /// quad q holds k = q % 16 (TF32) or the pair k = 2 (q % 16), + 1 (BF16: two quads, the even row first) of
    /// tile rows 4 (q / 16)..+3.
    /// </summary>
    static Slice LoadSlice(ArrayView<float> data, int format, int outerK, int origin, int k0, int extent, int k, int rowLength, int vector, int t)
    {
        var s = new Slice();
        if (format == Tf32)
        {
            if (outerK != 0)
            {
                s.Q0 = GemmLoads.Quad(data, k0 + t % 16, origin + 4 * (t / 16), k, rowLength, vector);
                s.Q1 = GemmLoads.Quad(data, k0 + t % 16, origin + 4 * (t / 16 + 16), k, rowLength, vector);
            }
            else
            {
                s.Q0 = GemmLoads.Quad(data, origin + t / 4, k0 + 4 * (t % 4), extent, rowLength, vector);
                s.Q1 = GemmLoads.Quad(data, origin + t / 4 + 64, k0 + 4 * (t % 4), extent, rowLength, vector);
            }
            return s;
        }

        if (outerK != 0)
        {
            int pairRow = k0 + 2 * (t % 16);
            s.Q0 = GemmLoads.Quad(data, pairRow, origin + 4 * (t / 16), k, rowLength, vector);
            s.Q1 = GemmLoads.Quad(data, pairRow + 1, origin + 4 * (t / 16), k, rowLength, vector);
            s.Q2 = GemmLoads.Quad(data, pairRow, origin + 4 * (t / 16 + 16), k, rowLength, vector);
            s.Q3 = GemmLoads.Quad(data, pairRow + 1, origin + 4 * (t / 16 + 16), k, rowLength, vector);
        }
        else
        {
            s.Q0 = GemmLoads.Quad(data, origin + t / 8, k0 + 4 * (t % 8), extent, rowLength, vector);
            s.Q1 = GemmLoads.Quad(data, origin + t / 8 + 32, k0 + 4 * (t % 8), extent, rowLength, vector);
            s.Q2 = GemmLoads.Quad(data, origin + t / 8 + 64, k0 + 4 * (t % 8), extent, rowLength, vector);
            s.Q3 = GemmLoads.Quad(data, origin + t / 8 + 96, k0 + 4 * (t % 8), extent, rowLength, vector);
        }
        return s;
    }

    /// <summary>Where (in units from the buffer start) this thread stores the first value of its slice; see <see cref="LoadSlice"/>.</summary>
    static int StoreOffset(int format, int outerK, int t) =>
        outerK != 0 ? 4 * (t / 16) * Stride + t % 16
        : format == Tf32 ? t / 4 * Stride + 4 * (t % 4)
        : t / 8 * Stride + 2 * (t % 8);

    /// <summary>Rounds a thread's slice and stores it into the shared tile [row][unit] through a view at its <see cref="StoreOffset"/>.</summary>
    static void StoreSlice(ArrayView<uint> tiles, Slice s, int format, int outerK)
    {
        if (format == Tf32)
        {
            if (outerK != 0)
            {
                StoreColumn(tiles, 0, Tf32Of(s.Q0.X), Tf32Of(s.Q0.Y), Tf32Of(s.Q0.Z), Tf32Of(s.Q0.W));
                StoreColumn(tiles, 64 * Stride, Tf32Of(s.Q1.X), Tf32Of(s.Q1.Y), Tf32Of(s.Q1.Z), Tf32Of(s.Q1.W));
            }
            else
            {
                // The view starts at a multiple of 4 units (StoreOffset), which ILGPU cannot prove by itself.
                var quads = tiles.AsAligned16().Cast<UInt4>();
                quads[0] = new UInt4(Tf32Of(s.Q0.X), Tf32Of(s.Q0.Y), Tf32Of(s.Q0.Z), Tf32Of(s.Q0.W));
                quads[64 * Stride / 4] = new UInt4(Tf32Of(s.Q1.X), Tf32Of(s.Q1.Y), Tf32Of(s.Q1.Z), Tf32Of(s.Q1.W));
            }
            return;
        }

        if (outerK != 0)
        {
            StoreColumn(tiles, 0, Bf16Of(s.Q0.X, s.Q1.X), Bf16Of(s.Q0.Y, s.Q1.Y), Bf16Of(s.Q0.Z, s.Q1.Z), Bf16Of(s.Q0.W, s.Q1.W));
            StoreColumn(tiles, 64 * Stride, Bf16Of(s.Q2.X, s.Q3.X), Bf16Of(s.Q2.Y, s.Q3.Y), Bf16Of(s.Q2.Z, s.Q3.Z), Bf16Of(s.Q2.W, s.Q3.W));
        }
        else
        {
            StorePair(tiles, 0, Bf16Of(s.Q0.X, s.Q0.Y), Bf16Of(s.Q0.Z, s.Q0.W));
            StorePair(tiles, 32 * Stride, Bf16Of(s.Q1.X, s.Q1.Y), Bf16Of(s.Q1.Z, s.Q1.W));
            StorePair(tiles, 64 * Stride, Bf16Of(s.Q2.X, s.Q2.Y), Bf16Of(s.Q2.Z, s.Q2.W));
            StorePair(tiles, 96 * Stride, Bf16Of(s.Q3.X, s.Q3.Y), Bf16Of(s.Q3.Z, s.Q3.W));
        }
    }

    /// <summary>Four units of one column: tile rows r..r+3 at one unit.</summary>
    static void StoreColumn(ArrayView<uint> tiles, int at, uint x, uint y, uint z, uint w)
    {
        tiles[at] = x;
        tiles[at + Stride] = y;
        tiles[at + 2 * Stride] = z;
        tiles[at + 3 * Stride] = w;
    }

    static void StorePair(ArrayView<uint> tiles, int at, uint x, uint y)
    {
        tiles[at] = x;
        tiles[at + 1] = y;
    }

    /// <summary>
    /// The rounding of cvt.rna.tf32.f32, in integer arithmetic: ILGPU passes every output of inline PTX through
    /// local memory (ld.local/st.local that ptxas keeps), while these three integer ops stay in registers.
    /// </summary>
    static uint Tf32Of(float x) => MmaFragments.RoundToTf32(x);

    /// <summary>The pair (even k, odd k) rounded as cvt.rn.bf16x2.f32 does and packed as the BF16 fragments want it: even in the low half.</summary>
    static uint Bf16Of(float even, float odd) => MmaFragments.PackBf16(even, odd);

    // ---- the tensor-core steps ---------------------------------------------------------------------

    /// <summary>
    /// One instruction step (8 units of K from <paramref name="unit"/>) of the warp's 64 x 32 tile: 4 A and 4 B
    /// fragments, 16 mma. The views start at this lane's element of the warp tile (row g, unit t), so every load
    /// is a constant offset from them.
    /// </summary>
    static void Step(ArrayView<uint> aFragments, ArrayView<uint> bFragments, int unit, int format)
    {
        var a0 = LoadA(aFragments, unit);
        var a1 = LoadA(aFragments, unit + 16 * Stride);
        var a2 = LoadA(aFragments, unit + 32 * Stride);
        var a3 = LoadA(aFragments, unit + 48 * Stride);
        var b0 = LoadB(bFragments, unit);
        var b1 = LoadB(bFragments, unit + 8 * Stride);
        var b2 = LoadB(bFragments, unit + 16 * Stride);
        var b3 = LoadB(bFragments, unit + 24 * Stride);
        if (format == Bf16)
        {
            CudaAsm.Emit(Bf16Op + D0 + Operands + D0 + ";", a0.R0, a0.R1, a0.R2, a0.R3, b0.R0, b0.R1);
            CudaAsm.Emit(Bf16Op + D1 + Operands + D1 + ";", a0.R0, a0.R1, a0.R2, a0.R3, b1.R0, b1.R1);
            CudaAsm.Emit(Bf16Op + D2 + Operands + D2 + ";", a0.R0, a0.R1, a0.R2, a0.R3, b2.R0, b2.R1);
            CudaAsm.Emit(Bf16Op + D3 + Operands + D3 + ";", a0.R0, a0.R1, a0.R2, a0.R3, b3.R0, b3.R1);
            CudaAsm.Emit(Bf16Op + D4 + Operands + D4 + ";", a1.R0, a1.R1, a1.R2, a1.R3, b0.R0, b0.R1);
            CudaAsm.Emit(Bf16Op + D5 + Operands + D5 + ";", a1.R0, a1.R1, a1.R2, a1.R3, b1.R0, b1.R1);
            CudaAsm.Emit(Bf16Op + D6 + Operands + D6 + ";", a1.R0, a1.R1, a1.R2, a1.R3, b2.R0, b2.R1);
            CudaAsm.Emit(Bf16Op + D7 + Operands + D7 + ";", a1.R0, a1.R1, a1.R2, a1.R3, b3.R0, b3.R1);
            CudaAsm.Emit(Bf16Op + D8 + Operands + D8 + ";", a2.R0, a2.R1, a2.R2, a2.R3, b0.R0, b0.R1);
            CudaAsm.Emit(Bf16Op + D9 + Operands + D9 + ";", a2.R0, a2.R1, a2.R2, a2.R3, b1.R0, b1.R1);
            CudaAsm.Emit(Bf16Op + D10 + Operands + D10 + ";", a2.R0, a2.R1, a2.R2, a2.R3, b2.R0, b2.R1);
            CudaAsm.Emit(Bf16Op + D11 + Operands + D11 + ";", a2.R0, a2.R1, a2.R2, a2.R3, b3.R0, b3.R1);
            CudaAsm.Emit(Bf16Op + D12 + Operands + D12 + ";", a3.R0, a3.R1, a3.R2, a3.R3, b0.R0, b0.R1);
            CudaAsm.Emit(Bf16Op + D13 + Operands + D13 + ";", a3.R0, a3.R1, a3.R2, a3.R3, b1.R0, b1.R1);
            CudaAsm.Emit(Bf16Op + D14 + Operands + D14 + ";", a3.R0, a3.R1, a3.R2, a3.R3, b2.R0, b2.R1);
            CudaAsm.Emit(Bf16Op + D15 + Operands + D15 + ";", a3.R0, a3.R1, a3.R2, a3.R3, b3.R0, b3.R1);
        }
        else
        {
            CudaAsm.Emit(Tf32Op + D0 + Operands + D0 + ";", a0.R0, a0.R1, a0.R2, a0.R3, b0.R0, b0.R1);
            CudaAsm.Emit(Tf32Op + D1 + Operands + D1 + ";", a0.R0, a0.R1, a0.R2, a0.R3, b1.R0, b1.R1);
            CudaAsm.Emit(Tf32Op + D2 + Operands + D2 + ";", a0.R0, a0.R1, a0.R2, a0.R3, b2.R0, b2.R1);
            CudaAsm.Emit(Tf32Op + D3 + Operands + D3 + ";", a0.R0, a0.R1, a0.R2, a0.R3, b3.R0, b3.R1);
            CudaAsm.Emit(Tf32Op + D4 + Operands + D4 + ";", a1.R0, a1.R1, a1.R2, a1.R3, b0.R0, b0.R1);
            CudaAsm.Emit(Tf32Op + D5 + Operands + D5 + ";", a1.R0, a1.R1, a1.R2, a1.R3, b1.R0, b1.R1);
            CudaAsm.Emit(Tf32Op + D6 + Operands + D6 + ";", a1.R0, a1.R1, a1.R2, a1.R3, b2.R0, b2.R1);
            CudaAsm.Emit(Tf32Op + D7 + Operands + D7 + ";", a1.R0, a1.R1, a1.R2, a1.R3, b3.R0, b3.R1);
            CudaAsm.Emit(Tf32Op + D8 + Operands + D8 + ";", a2.R0, a2.R1, a2.R2, a2.R3, b0.R0, b0.R1);
            CudaAsm.Emit(Tf32Op + D9 + Operands + D9 + ";", a2.R0, a2.R1, a2.R2, a2.R3, b1.R0, b1.R1);
            CudaAsm.Emit(Tf32Op + D10 + Operands + D10 + ";", a2.R0, a2.R1, a2.R2, a2.R3, b2.R0, b2.R1);
            CudaAsm.Emit(Tf32Op + D11 + Operands + D11 + ";", a2.R0, a2.R1, a2.R2, a2.R3, b3.R0, b3.R1);
            CudaAsm.Emit(Tf32Op + D12 + Operands + D12 + ";", a3.R0, a3.R1, a3.R2, a3.R3, b0.R0, b0.R1);
            CudaAsm.Emit(Tf32Op + D13 + Operands + D13 + ";", a3.R0, a3.R1, a3.R2, a3.R3, b1.R0, b1.R1);
            CudaAsm.Emit(Tf32Op + D14 + Operands + D14 + ";", a3.R0, a3.R1, a3.R2, a3.R3, b2.R0, b2.R1);
            CudaAsm.Emit(Tf32Op + D15 + Operands + D15 + ";", a3.R0, a3.R1, a3.R2, a3.R3, b3.R0, b3.R1);
        }
    }

    /// <summary>A fragment of an m16 tile, <paramref name="at"/> units past the lane's element of the first one.</summary>
    static AFragment LoadA(ArrayView<uint> fragments, int at) => new()
    {
        R0 = fragments[at + MmaFragments.ARowStep(0) * Stride + MmaFragments.AUnitStep(0)],
        R1 = fragments[at + MmaFragments.ARowStep(1) * Stride + MmaFragments.AUnitStep(1)],
        R2 = fragments[at + MmaFragments.ARowStep(2) * Stride + MmaFragments.AUnitStep(2)],
        R3 = fragments[at + MmaFragments.ARowStep(3) * Stride + MmaFragments.AUnitStep(3)],
    };

    /// <summary>B fragment of an n8 tile (a row of the [n][unit] tile per column), <paramref name="at"/> units past the lane's element of the first one.</summary>
    static BFragment LoadB(ArrayView<uint> fragments, int at) => new()
    {
        R0 = fragments[at + MmaFragments.BUnitStep(0)],
        R1 = fragments[at + MmaFragments.BUnitStep(1)],
    };

    /// <summary>
    /// The simulator's stand-in for <see cref="Step"/>: each of the lane's 64 accumulators (tile i, j, index q at
    /// row 16 i + CRow, column 8 j + CColumn) adds the dot product of its A row and B column over the step's 8 units.
    /// </summary>
    static void Emulate(ArrayView<uint> aTiles, ArrayView<uint> bTiles, int aBase, int bBase, int lane, int format, ArrayView<float> accumulators)
    {
        for (int index = 0; index < 64; index++)
        {
            int tile = index >> 2, q = index & 3;
            int aRow = aBase + (16 * (tile >> 2) + MmaFragments.CRow(lane, q)) * Stride;
            int bRow = bBase + (8 * (tile & 3) + MmaFragments.CColumn(lane, q)) * Stride;
            float sum = 0f;
            for (int u = 0; u < 8; u++)
            {
                uint x = aTiles[aRow + u], y = bTiles[bRow + u];
                sum += format == Bf16
                    ? MmaFragments.Bf16Low(x) * MmaFragments.Bf16Low(y) + MmaFragments.Bf16High(x) * MmaFragments.Bf16High(y)
                    : MmaFragments.Tf32Value(x) * MmaFragments.Tf32Value(y);
            }
            accumulators[index] += sum;
        }
    }

    // ---- accumulators in PTX registers ---------------------------------------------------------------

    const string Tf32Op = "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 ";
    const string Bf16Op = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 ";
    const string Operands = ", {%0, %1, %2, %3}, {%4, %5}, ";
    const string D0 = "{dsacc0, dsacc1, dsacc2, dsacc3}", D1 = "{dsacc4, dsacc5, dsacc6, dsacc7}";
    const string D2 = "{dsacc8, dsacc9, dsacc10, dsacc11}", D3 = "{dsacc12, dsacc13, dsacc14, dsacc15}";
    const string D4 = "{dsacc16, dsacc17, dsacc18, dsacc19}", D5 = "{dsacc20, dsacc21, dsacc22, dsacc23}";
    const string D6 = "{dsacc24, dsacc25, dsacc26, dsacc27}", D7 = "{dsacc28, dsacc29, dsacc30, dsacc31}";
    const string D8 = "{dsacc32, dsacc33, dsacc34, dsacc35}", D9 = "{dsacc36, dsacc37, dsacc38, dsacc39}";
    const string D10 = "{dsacc40, dsacc41, dsacc42, dsacc43}", D11 = "{dsacc44, dsacc45, dsacc46, dsacc47}";
    const string D12 = "{dsacc48, dsacc49, dsacc50, dsacc51}", D13 = "{dsacc52, dsacc53, dsacc54, dsacc55}";
    const string D14 = "{dsacc56, dsacc57, dsacc58, dsacc59}", D15 = "{dsacc60, dsacc61, dsacc62, dsacc63}";

    /// <summary>
    /// Declares the 64 accumulators at function scope (this runs first in the kernel, before any branch, so the
    /// declaration precedes every use in the PTX text) and zeroes them.
    /// </summary>
    const string DeclareAccumulators = ".reg .f32 dsacc<64>;\n\t" +
        "mov.f32 dsacc0, 0f00000000; mov.f32 dsacc1, 0f00000000; mov.f32 dsacc2, 0f00000000; mov.f32 dsacc3, 0f00000000;\n\t" +
        "mov.f32 dsacc4, 0f00000000; mov.f32 dsacc5, 0f00000000; mov.f32 dsacc6, 0f00000000; mov.f32 dsacc7, 0f00000000;\n\t" +
        "mov.f32 dsacc8, 0f00000000; mov.f32 dsacc9, 0f00000000; mov.f32 dsacc10, 0f00000000; mov.f32 dsacc11, 0f00000000;\n\t" +
        "mov.f32 dsacc12, 0f00000000; mov.f32 dsacc13, 0f00000000; mov.f32 dsacc14, 0f00000000; mov.f32 dsacc15, 0f00000000;\n\t" +
        "mov.f32 dsacc16, 0f00000000; mov.f32 dsacc17, 0f00000000; mov.f32 dsacc18, 0f00000000; mov.f32 dsacc19, 0f00000000;\n\t" +
        "mov.f32 dsacc20, 0f00000000; mov.f32 dsacc21, 0f00000000; mov.f32 dsacc22, 0f00000000; mov.f32 dsacc23, 0f00000000;\n\t" +
        "mov.f32 dsacc24, 0f00000000; mov.f32 dsacc25, 0f00000000; mov.f32 dsacc26, 0f00000000; mov.f32 dsacc27, 0f00000000;\n\t" +
        "mov.f32 dsacc28, 0f00000000; mov.f32 dsacc29, 0f00000000; mov.f32 dsacc30, 0f00000000; mov.f32 dsacc31, 0f00000000;\n\t" +
        "mov.f32 dsacc32, 0f00000000; mov.f32 dsacc33, 0f00000000; mov.f32 dsacc34, 0f00000000; mov.f32 dsacc35, 0f00000000;\n\t" +
        "mov.f32 dsacc36, 0f00000000; mov.f32 dsacc37, 0f00000000; mov.f32 dsacc38, 0f00000000; mov.f32 dsacc39, 0f00000000;\n\t" +
        "mov.f32 dsacc40, 0f00000000; mov.f32 dsacc41, 0f00000000; mov.f32 dsacc42, 0f00000000; mov.f32 dsacc43, 0f00000000;\n\t" +
        "mov.f32 dsacc44, 0f00000000; mov.f32 dsacc45, 0f00000000; mov.f32 dsacc46, 0f00000000; mov.f32 dsacc47, 0f00000000;\n\t" +
        "mov.f32 dsacc48, 0f00000000; mov.f32 dsacc49, 0f00000000; mov.f32 dsacc50, 0f00000000; mov.f32 dsacc51, 0f00000000;\n\t" +
        "mov.f32 dsacc52, 0f00000000; mov.f32 dsacc53, 0f00000000; mov.f32 dsacc54, 0f00000000; mov.f32 dsacc55, 0f00000000;\n\t" +
        "mov.f32 dsacc56, 0f00000000; mov.f32 dsacc57, 0f00000000; mov.f32 dsacc58, 0f00000000; mov.f32 dsacc59, 0f00000000;\n\t" +
        "mov.f32 dsacc60, 0f00000000; mov.f32 dsacc61, 0f00000000; mov.f32 dsacc62, 0f00000000; mov.f32 dsacc63, 0f00000000;";

    /// <summary>The four accumulators of instruction tile <paramref name="tile"/> (m16 tile tile / 4, n8 tile tile % 4).</summary>
    static Float4 Accumulators(int tile)
    {
        float x, y, z, w;
        switch (tile)
        {
            case 0: CudaAsm.Emit("mov.f32 %0, dsacc0;", out x); CudaAsm.Emit("mov.f32 %0, dsacc1;", out y); CudaAsm.Emit("mov.f32 %0, dsacc2;", out z); CudaAsm.Emit("mov.f32 %0, dsacc3;", out w); break;
            case 1: CudaAsm.Emit("mov.f32 %0, dsacc4;", out x); CudaAsm.Emit("mov.f32 %0, dsacc5;", out y); CudaAsm.Emit("mov.f32 %0, dsacc6;", out z); CudaAsm.Emit("mov.f32 %0, dsacc7;", out w); break;
            case 2: CudaAsm.Emit("mov.f32 %0, dsacc8;", out x); CudaAsm.Emit("mov.f32 %0, dsacc9;", out y); CudaAsm.Emit("mov.f32 %0, dsacc10;", out z); CudaAsm.Emit("mov.f32 %0, dsacc11;", out w); break;
            case 3: CudaAsm.Emit("mov.f32 %0, dsacc12;", out x); CudaAsm.Emit("mov.f32 %0, dsacc13;", out y); CudaAsm.Emit("mov.f32 %0, dsacc14;", out z); CudaAsm.Emit("mov.f32 %0, dsacc15;", out w); break;
            case 4: CudaAsm.Emit("mov.f32 %0, dsacc16;", out x); CudaAsm.Emit("mov.f32 %0, dsacc17;", out y); CudaAsm.Emit("mov.f32 %0, dsacc18;", out z); CudaAsm.Emit("mov.f32 %0, dsacc19;", out w); break;
            case 5: CudaAsm.Emit("mov.f32 %0, dsacc20;", out x); CudaAsm.Emit("mov.f32 %0, dsacc21;", out y); CudaAsm.Emit("mov.f32 %0, dsacc22;", out z); CudaAsm.Emit("mov.f32 %0, dsacc23;", out w); break;
            case 6: CudaAsm.Emit("mov.f32 %0, dsacc24;", out x); CudaAsm.Emit("mov.f32 %0, dsacc25;", out y); CudaAsm.Emit("mov.f32 %0, dsacc26;", out z); CudaAsm.Emit("mov.f32 %0, dsacc27;", out w); break;
            case 7: CudaAsm.Emit("mov.f32 %0, dsacc28;", out x); CudaAsm.Emit("mov.f32 %0, dsacc29;", out y); CudaAsm.Emit("mov.f32 %0, dsacc30;", out z); CudaAsm.Emit("mov.f32 %0, dsacc31;", out w); break;
            case 8: CudaAsm.Emit("mov.f32 %0, dsacc32;", out x); CudaAsm.Emit("mov.f32 %0, dsacc33;", out y); CudaAsm.Emit("mov.f32 %0, dsacc34;", out z); CudaAsm.Emit("mov.f32 %0, dsacc35;", out w); break;
            case 9: CudaAsm.Emit("mov.f32 %0, dsacc36;", out x); CudaAsm.Emit("mov.f32 %0, dsacc37;", out y); CudaAsm.Emit("mov.f32 %0, dsacc38;", out z); CudaAsm.Emit("mov.f32 %0, dsacc39;", out w); break;
            case 10: CudaAsm.Emit("mov.f32 %0, dsacc40;", out x); CudaAsm.Emit("mov.f32 %0, dsacc41;", out y); CudaAsm.Emit("mov.f32 %0, dsacc42;", out z); CudaAsm.Emit("mov.f32 %0, dsacc43;", out w); break;
            case 11: CudaAsm.Emit("mov.f32 %0, dsacc44;", out x); CudaAsm.Emit("mov.f32 %0, dsacc45;", out y); CudaAsm.Emit("mov.f32 %0, dsacc46;", out z); CudaAsm.Emit("mov.f32 %0, dsacc47;", out w); break;
            case 12: CudaAsm.Emit("mov.f32 %0, dsacc48;", out x); CudaAsm.Emit("mov.f32 %0, dsacc49;", out y); CudaAsm.Emit("mov.f32 %0, dsacc50;", out z); CudaAsm.Emit("mov.f32 %0, dsacc51;", out w); break;
            case 13: CudaAsm.Emit("mov.f32 %0, dsacc52;", out x); CudaAsm.Emit("mov.f32 %0, dsacc53;", out y); CudaAsm.Emit("mov.f32 %0, dsacc54;", out z); CudaAsm.Emit("mov.f32 %0, dsacc55;", out w); break;
            case 14: CudaAsm.Emit("mov.f32 %0, dsacc56;", out x); CudaAsm.Emit("mov.f32 %0, dsacc57;", out y); CudaAsm.Emit("mov.f32 %0, dsacc58;", out z); CudaAsm.Emit("mov.f32 %0, dsacc59;", out w); break;
            default: CudaAsm.Emit("mov.f32 %0, dsacc60;", out x); CudaAsm.Emit("mov.f32 %0, dsacc61;", out y); CudaAsm.Emit("mov.f32 %0, dsacc62;", out z); CudaAsm.Emit("mov.f32 %0, dsacc63;", out w); break;
        }
        return new Float4(x, y, z, w);
    }

    /// <summary>output[row, column] (=, = + bias, +=) value under the epilogue; outside [M, N] nothing is written.</summary>
    static void Finish(ArrayView<float> output, ArrayView<float> bias, GemmArgs args, int row, int column, float value)
    {
        if (row >= args.M || column >= args.N) return;
        long at = (long)row * args.N + column;
        if (args.Epilogue == (int)GemmEpilogue.Accumulate) output[at] += value;
        else if (args.Epilogue == (int)GemmEpilogue.StoreBias) output[at] = value + bias[column];
        else output[at] = value;
    }
}
