using DiffuSharp.Kernels.Gpu;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// The tensor-core fragment layouts, checked on the host: no GPU runs the mma instructions here, so a warp is
/// simulated in plain C#. Each of the 32 lanes fills its registers through <see cref="MmaFragments"/> (the
/// functions the kernel uses); a model of the instruction, transcribed separately from the PTX ISA's tables
/// ("Matrix Fragments for mma.m16n8k8" .tf32, "for mma.m16n8k16 with floating point type" .bf16, in the ISA's
/// own terms: groupID, threadID_in_group, element index i), reads the lanes' registers as the hardware does and
/// computes D = A·B + C into the lanes' accumulators; the kernel's reading of the accumulators must then give
/// the plain product. A layout error in the kernel puts elements in the wrong place and fails by far more than
/// the rounding tolerance.
/// </summary>
public class MmaFragmentTests
{
    const int Lanes = 32;

    // ---- the PTX ISA's tables, element by element ---------------------------------------------

    /// <summary>TF32 m16n8k8, multiplicand A element a_i (one per .b32 register).</summary>
    static (int Row, int Col) IsaTf32A(int laneid, int i)
    {
        int groupID = laneid >> 2, threadID_in_group = laneid % 4;
        int row = i == 0 || i == 2 ? groupID : groupID + 8;
        int col = i == 0 || i == 1 ? threadID_in_group : threadID_in_group + 4;
        return (row, col);
    }

    /// <summary>TF32 m16n8k8, multiplicand B element b_i (one per .b32 register).</summary>
    static (int Row, int Col) IsaTf32B(int laneid, int i)
    {
        int groupID = laneid >> 2, threadID_in_group = laneid % 4;
        return (i == 0 ? threadID_in_group : threadID_in_group + 4, groupID);
    }

    /// <summary>BF16 m16n8k16, multiplicand A element a_i; elements fill the four .b32 registers low half first.</summary>
    static (int Row, int Col) IsaBf16A(int laneid, int i)
    {
        int groupID = laneid >> 2, threadID_in_group = laneid % 4;
        int row = (0 <= i && i < 2) || (4 <= i && i < 6) ? groupID : groupID + 8;
        int col = i < 4 ? threadID_in_group * 2 + (i & 0x1) : threadID_in_group * 2 + (i & 0x1) + 8;
        return (row, col);
    }

    /// <summary>BF16 m16n8k16, multiplicand B element b_i; elements fill the two .b32 registers low half first.</summary>
    static (int Row, int Col) IsaBf16B(int laneid, int i)
    {
        int groupID = laneid >> 2, threadID_in_group = laneid % 4;
        int row = i < 2 ? threadID_in_group * 2 + (i & 0x1) : threadID_in_group * 2 + (i & 0x1) + 8;
        return (row, groupID);
    }

    /// <summary>Accumulators c_i / d_i (.f32) of both shapes.</summary>
    static (int Row, int Col) IsaAccumulator(int laneid, int i)
    {
        int groupID = laneid >> 2, threadID_in_group = laneid % 4;
        return (i < 2 ? groupID : groupID + 8, threadID_in_group * 2 + (i & 0x1));
    }

    // ---- the simulated warp ---------------------------------------------------------------------

    /// <summary>
    /// The instruction as the model reads it: lane registers → A [16, k], B [k, 8], C [16, 8] by the ISA tables,
    /// D = A·B + C (in double), written back to the lanes' accumulators by the ISA table.
    /// </summary>
    static float[,] Execute(int k, Func<int, int, float> aElement, Func<int, int, float> bElement,
        Func<int, int, (int, int)> isaA, Func<int, int, (int, int)> isaB, int elementsA, int elementsB, float[,] accumulators)
    {
        var a = new double[16, k];
        var b = new double[k, 8];
        var c = new double[16, 8];
        var seen = new bool[16, k];
        for (int lane = 0; lane < Lanes; lane++)
        {
            for (int i = 0; i < elementsA; i++)
            {
                var (r, col) = isaA(lane, i);
                Assert.That(seen[r, col], Is.False, $"A[{r}, {col}] held twice");
                seen[r, col] = true;
                a[r, col] = aElement(lane, i);
            }
            for (int i = 0; i < elementsB; i++)
            {
                var (r, col) = isaB(lane, i);
                b[r, col] = bElement(lane, i);
            }
            for (int i = 0; i < 4; i++)
            {
                var (r, col) = IsaAccumulator(lane, i);
                c[r, col] = accumulators[lane, i];
            }
        }

        var d = new float[Lanes, 4];
        for (int lane = 0; lane < Lanes; lane++)
        {
            for (int i = 0; i < 4; i++)
            {
                var (r, col) = IsaAccumulator(lane, i);
                double sum = c[r, col];
                for (int p = 0; p < k; p++) sum += a[r, p] * b[p, col];
                d[lane, i] = (float)sum;
            }
        }
        return d;
    }

    static float[,] RandomMatrix(Random rng, int rows, int columns)
    {
        var m = new float[rows, columns];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < columns; c++)
                m[r, c] = (float)(rng.NextDouble() * 2 - 1);
        return m;
    }

    /// <summary>The lanes' initial accumulators, placed where the kernel believes C[row, column] lives.</summary>
    static float[,] KernelAccumulators(float[,] c)
    {
        var acc = new float[Lanes, 4];
        for (int lane = 0; lane < Lanes; lane++)
            for (int i = 0; i < 4; i++)
                acc[lane, i] = c[MmaFragments.CRow(lane, i), MmaFragments.CColumn(lane, i)];
        return acc;
    }

    /// <summary>Compares each accumulator, as the kernel reads it back, with the plain product at the kernel's (row, column).</summary>
    static void AssertKernelSees(float[,] d, Func<int, int, double> expected, double tolerance)
    {
        for (int lane = 0; lane < Lanes; lane++)
        {
            for (int i = 0; i < 4; i++)
            {
                int row = MmaFragments.CRow(lane, i), column = MmaFragments.CColumn(lane, i);
                Assert.That(d[lane, i], Is.EqualTo(expected(row, column)).Within(tolerance), $"lane {lane} accumulator {i} = D[{row}, {column}]");
            }
        }
    }

    [Test]
    public void Tf32FragmentsReproduceThePlainProduct()
    {
        var rng = TestUtil.NewRandom();
        var a = RandomMatrix(rng, 16, 8);
        var b = RandomMatrix(rng, 8, 8);
        var c = RandomMatrix(rng, 16, 8);

        // Lane registers as the kernel loads them: A[ARow, AUnit], B[BUnit, BColumn], rounded to TF32.
        var aRegisters = new uint[Lanes, 4];
        var bRegisters = new uint[Lanes, 2];
        for (int lane = 0; lane < Lanes; lane++)
        {
            for (int r = 0; r < 4; r++) aRegisters[lane, r] = MmaFragments.RoundToTf32(a[MmaFragments.ARow(lane, r), MmaFragments.AUnit(lane, r)]);
            for (int r = 0; r < 2; r++) bRegisters[lane, r] = MmaFragments.RoundToTf32(b[MmaFragments.BUnit(lane, r), MmaFragments.BColumn(lane)]);
        }

        var d = Execute(8,
            (lane, i) => BitConverter.UInt32BitsToSingle(aRegisters[lane, i]),
            (lane, i) => BitConverter.UInt32BitsToSingle(bRegisters[lane, i]),
            IsaTf32A, IsaTf32B, 4, 2, KernelAccumulators(c));

        AssertKernelSees(d, (row, column) =>
        {
            double sum = c[row, column];
            for (int p = 0; p < 8; p++) sum += Tf32(a[row, p]) * Tf32(b[p, column]);
            return sum;
        }, 1e-5);
    }

    [Test]
    public void Bf16FragmentsReproduceThePlainProduct()
    {
        var rng = TestUtil.NewRandom();
        var a = RandomMatrix(rng, 16, 16);
        var b = RandomMatrix(rng, 16, 8);
        var c = RandomMatrix(rng, 16, 8);

        // Lane registers as the kernel fills them: register r packs the pair k = 2 unit (low half), 2 unit + 1.
        var aRegisters = new uint[Lanes, 4];
        var bRegisters = new uint[Lanes, 2];
        for (int lane = 0; lane < Lanes; lane++)
        {
            for (int r = 0; r < 4; r++)
            {
                int row = MmaFragments.ARow(lane, r), unit = MmaFragments.AUnit(lane, r);
                aRegisters[lane, r] = MmaFragments.PackBf16(a[row, 2 * unit], a[row, 2 * unit + 1]);
            }
            for (int r = 0; r < 2; r++)
            {
                int column = MmaFragments.BColumn(lane), unit = MmaFragments.BUnit(lane, r);
                bRegisters[lane, r] = MmaFragments.PackBf16(b[2 * unit, column], b[2 * unit + 1, column]);
            }
        }

        // Element i of a lane is half i % 2 (low first) of register i / 2.
        var d = Execute(16,
            (lane, i) => Half(aRegisters[lane, i / 2], i % 2),
            (lane, i) => Half(bRegisters[lane, i / 2], i % 2),
            IsaBf16A, IsaBf16B, 8, 4, KernelAccumulators(c));

        AssertKernelSees(d, (row, column) =>
        {
            double sum = c[row, column];
            for (int p = 0; p < 16; p++) sum += Bf16(a[row, p]) * Bf16(b[p, column]);
            return sum;
        }, 1e-5);
    }

    /// <summary>Every element of A, B and C belongs to exactly one (lane, register) of the kernel's layout, and the ISA's.</summary>
    [Test]
    public void LayoutsCoverEveryElementOnce()
    {
        var a = new int[16, 8];
        var b = new int[8, 8];
        var c = new int[16, 8];
        for (int lane = 0; lane < Lanes; lane++)
        {
            for (int r = 0; r < 4; r++) a[MmaFragments.ARow(lane, r), MmaFragments.AUnit(lane, r)]++;
            for (int r = 0; r < 2; r++) b[MmaFragments.BUnit(lane, r), MmaFragments.BColumn(lane)]++;
            for (int i = 0; i < 4; i++) c[MmaFragments.CRow(lane, i), MmaFragments.CColumn(lane, i)]++;
        }
        Assert.That(a.Cast<int>(), Is.All.EqualTo(1), "A units");
        Assert.That(b.Cast<int>(), Is.All.EqualTo(1), "B units");
        Assert.That(c.Cast<int>(), Is.All.EqualTo(1), "accumulators");
    }

    // ---- rounding ---------------------------------------------------------------------------------

    static double Tf32(float x) => BitConverter.UInt32BitsToSingle(MmaFragments.RoundToTf32(x));

    static double Bf16(float x) => BitConverter.UInt32BitsToSingle(MmaFragments.RoundToBf16(x) << 16);

    static float Half(uint register, int half) => BitConverter.UInt32BitsToSingle(half == 0 ? register << 16 : register & 0xFFFF0000u);

    /// <summary>x rounded to <paramref name="mantissaBits"/> explicit mantissa bits in double arithmetic (normal floats only).</summary>
    static double RoundMantissa(float x, int mantissaBits, MidpointRounding mode)
    {
        int exponent = Math.ILogB(x);
        double unit = Math.ScaleB(1.0, exponent - mantissaBits);
        return Math.Round(x / unit, mode) * unit;
    }

    [Test]
    public void Tf32RoundsToNearestTiesAwayFromZero()
    {
        var rng = TestUtil.NewRandom();
        var values = new List<float> { 1f, -1f, 3.14159265f, 1e-30f, -7.5e20f, 65504f, float.MaxValue / 4 };
        for (int i = 0; i < 2000; i++) values.Add((float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, rng.Next(-60, 60))));
        // Exact ties: 1 + 2^-11 and 1 + 3 · 2^-11 lie halfway between TF32 neighbours.
        values.Add(1f + MathF.ScaleB(1f, -11));
        values.Add(-(1f + 3 * MathF.ScaleB(1f, -11)));
        foreach (float x in values)
            Assert.That(Tf32(x), Is.EqualTo(RoundMantissa(x, 10, MidpointRounding.AwayFromZero)), $"x = {x:R}");
        Assert.That(Tf32(1f + MathF.ScaleB(1f, -11)), Is.EqualTo(1.0 + Math.ScaleB(1, -10)), "tie goes away from zero");
        Assert.That(float.IsPositiveInfinity((float)Tf32(float.PositiveInfinity)), Is.True);
        Assert.That(float.IsNaN((float)Tf32(float.NaN)), Is.True);
    }

    [Test]
    public void Bf16RoundsToNearestTiesToEven()
    {
        var rng = TestUtil.NewRandom();
        var values = new List<float> { 1f, -1f, 3.14159265f, 1e-30f, -7.5e20f, 65504f };
        for (int i = 0; i < 2000; i++) values.Add((float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, rng.Next(-60, 60))));
        values.Add(1f + MathF.ScaleB(1f, -8));
        values.Add(1f + 3 * MathF.ScaleB(1f, -8));
        foreach (float x in values)
            Assert.That(Bf16(x), Is.EqualTo(RoundMantissa(x, 7, MidpointRounding.ToEven)), $"x = {x:R}");
        Assert.That(Bf16(1f + MathF.ScaleB(1f, -8)), Is.EqualTo(1.0), "tie goes to the even neighbour (down)");
        Assert.That(Bf16(1f + 3 * MathF.ScaleB(1f, -8)), Is.EqualTo(1.0 + Math.ScaleB(1, -6)), "tie goes to the even neighbour (up)");
        Assert.That(float.IsNaN((float)Bf16(float.NaN)), Is.True);
        Assert.That(MmaFragments.PackBf16(1f, 2f), Is.EqualTo(0x4000_3F80u), "low half holds the first (even k) value");
    }
}
