using ILGPU;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>
/// Which element of a warp tile each lane holds in its registers for the tensor-core instructions
/// <c>mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32</c> and <c>mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32</c>
/// (PTX ISA, "Matrix Fragments for mma.m16n8k8" and "for mma.m16n8k16 with floating point type").
/// <para>
/// Positions along K are counted in 32-bit units: one unit is one TF32 value (k = unit) or one pair of
/// BF16 values packed low half first (k = 2 unit, 2 unit + 1). In these units both instructions use the same
/// layout: A is 16 x 8 units, B is 8 units x 8, C/D is 16 x 8 floats. With g = lane / 4 and t = lane % 4:
/// A register r holds row g + 8 (r &amp; 1), unit t + 4 (r / 2); B register r holds unit t + 4 r of column g;
/// accumulator i holds row g + 8 (i / 2), column 2 t + (i &amp; 1).
/// </para>
/// The kernel loads its fragments through these functions, and the host tests check them against the PTX
/// ISA's tables element by element, so a wrong layout is caught without a GPU.
/// </summary>
public static class MmaFragments
{
    /// <summary>
    /// The lane's part of every position: g = lane / 4 is the row of its A and C elements (and the column of
    /// its B elements), before the register's step.
    /// </summary>
    public static int LaneRow(int lane) => lane >> 2;

    /// <summary>The lane's part of every K position: unit t = lane % 4, before the register's step.</summary>
    public static int LaneUnit(int lane) => lane & 3;

    /// <summary>Rows A register <paramref name="register"/> (0..3) adds to <see cref="LaneRow"/>.</summary>
    public static int ARowStep(int register) => 8 * (register & 1);

    /// <summary>Units A register <paramref name="register"/> (0..3) adds to <see cref="LaneUnit"/>.</summary>
    public static int AUnitStep(int register) => 4 * (register >> 1);

    /// <summary>Units B register <paramref name="register"/> (0..1) adds to <see cref="LaneUnit"/>.</summary>
    public static int BUnitStep(int register) => 4 * register;

    /// <summary>Row (0..15) of the A element in register <paramref name="register"/> (0..3) of <paramref name="lane"/>.</summary>
    public static int ARow(int lane, int register) => LaneRow(lane) + ARowStep(register);

    /// <summary>K unit (0..7) of the A element in register <paramref name="register"/> (0..3) of <paramref name="lane"/>.</summary>
    public static int AUnit(int lane, int register) => LaneUnit(lane) + AUnitStep(register);

    /// <summary>K unit (0..7) of the B element in register <paramref name="register"/> (0..1) of <paramref name="lane"/>.</summary>
    public static int BUnit(int lane, int register) => LaneUnit(lane) + BUnitStep(register);

    /// <summary>Column (0..7) of the B elements of <paramref name="lane"/>.</summary>
    public static int BColumn(int lane) => LaneRow(lane);

    /// <summary>Row (0..15) of accumulator <paramref name="index"/> (0..3) of <paramref name="lane"/>.</summary>
    public static int CRow(int lane, int index) => LaneRow(lane) + 8 * (index >> 1);

    /// <summary>Column (0..7) of accumulator <paramref name="index"/> (0..3) of <paramref name="lane"/>.</summary>
    public static int CColumn(int lane, int index) => 2 * LaneUnit(lane) + (index & 1);

    /// <summary>
    /// The TF32 bits of <paramref name="x"/> as <c>cvt.rna.tf32.f32</c> rounds it: to the nearest value with 10
    /// mantissa bits, ties away from zero (the low 13 bits end up 0). Infinities and NaNs pass unchanged.
    /// </summary>
    public static uint RoundToTf32(float x)
    {
        uint bits = Interop.FloatAsInt(x);
        if ((bits & 0x7F800000u) == 0x7F800000u) return bits;
        return (bits + 0x1000u) & 0xFFFFE000u;
    }

    /// <summary>
    /// The bfloat16 bits of <paramref name="x"/> as <c>cvt.rn.bf16x2.f32</c> rounds it: to the nearest value
    /// with 7 mantissa bits, ties to even. NaNs become the canonical quiet NaN.
    /// </summary>
    public static uint RoundToBf16(float x)
    {
        uint bits = Interop.FloatAsInt(x);
        if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u;
        return (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    }

    /// <summary>Two bfloat16 values in one register as the mma instruction reads a pair: <paramref name="low"/> (even k) in bits 0..15.</summary>
    public static uint PackBf16(float low, float high) => RoundToBf16(low) | (RoundToBf16(high) << 16);

    /// <summary>The float value of TF32 bits.</summary>
    public static float Tf32Value(uint bits) => Interop.IntAsFloat(bits);

    /// <summary>The float value of the low (even k) bfloat16 of a packed pair.</summary>
    public static float Bf16Low(uint pair) => Interop.IntAsFloat(pair << 16);

    /// <summary>The float value of the high (odd k) bfloat16 of a packed pair.</summary>
    public static float Bf16High(uint pair) => Interop.IntAsFloat(pair & 0xFFFF0000u);
}
