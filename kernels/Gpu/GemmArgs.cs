using ILGPU;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>What a general matmul does with its product P = a · b.</summary>
public enum GemmEpilogue
{
    /// <summary>output = P.</summary>
    Store = 0,
    /// <summary>output = P + bias (bias [N] added to every row).</summary>
    StoreBias = 1,
    /// <summary>output += P.</summary>
    Accumulate = 2,
}

/// <summary>
/// One general matmul: output[M, N] (=, = + bias, or +=) a · b, with a stored [M, K] (or [K, M] when
/// TransposeA is 1) and b stored [K, N] (or [N, K] when TransposeB is 1), all row-major. The Vector flags
/// say the host proved that 16-byte loads/stores are aligned for that operand: its row length is a
/// multiple of 4 floats and its view starts on a 16-byte boundary. The flags travel twice: in the fields, and
/// packed in <see cref="Layout"/> as an ILGPU <c>SpecializedValue</c>, which compiles one kernel per layout with
/// the flags as constants (<see cref="WithLayout"/>): the untaken load and store paths vanish, and with them a
/// third of the tensor-core kernels' registers and most of their loop's integer instructions.
/// </summary>
public struct GemmArgs
{
    public int M, K, N;
    public int TransposeA, TransposeB;
    public int Epilogue;
    public int VectorA, VectorB, VectorC;
    public int TilesN;

    public GemmArgs(int m, int k, int n, bool transposeA, bool transposeB, GemmEpilogue epilogue,
        bool vectorA, bool vectorB, bool vectorC, int tileN)
    {
        M = m; K = k; N = n;
        TransposeA = transposeA ? 1 : 0;
        TransposeB = transposeB ? 1 : 0;
        Epilogue = (int)epilogue;
        VectorA = vectorA ? 1 : 0;
        VectorB = vectorB ? 1 : 0;
        VectorC = vectorC ? 1 : 0;
        TilesN = (n + tileN - 1) / tileN;
    }

    /// <summary>The flags packed in one int: TransposeA, TransposeB, VectorA, VectorB, VectorC in bits 0..4, Epilogue from bit 5.</summary>
    public readonly int Layout =>
        TransposeA | TransposeB << 1 | VectorA << 2 | VectorB << 3 | VectorC << 4 | Epilogue << 5;

    /// <summary>These arguments with the flags taken from <paramref name="layout"/> (a <see cref="Layout"/> value).</summary>
    public readonly GemmArgs WithLayout(int layout)
    {
        var args = this;
        args.TransposeA = layout & 1;
        args.TransposeB = (layout >> 1) & 1;
        args.VectorA = (layout >> 2) & 1;
        args.VectorB = (layout >> 3) & 1;
        args.VectorC = (layout >> 4) & 1;
        args.Epilogue = layout >> 5;
        return args;
    }

    /// <summary>Row length of the stored a: K when a is [M, K], M when it is [K, M].</summary>
    public readonly int RowLengthA => TransposeA != 0 ? M : K;

    /// <summary>Row length of the stored b: N when b is [K, N], K when it is [N, K].</summary>
    public readonly int RowLengthB => TransposeB != 0 ? K : N;
}

/// <summary>
/// Four consecutive floats. Loading or storing one through <c>view.Cast&lt;Float4&gt;()</c> makes ILGPU's
/// PTX backend emit a single 16-byte access (ld.v4.f32 / st.shared.v4.f32), which needs a 16-byte
/// aligned address.
/// </summary>
public struct Float4
{
    public float X, Y, Z, W;

    public Float4(float x, float y, float z, float w) { X = x; Y = y; Z = z; W = w; }

    /// <summary>this + a · b, lane by lane.</summary>
    public readonly Float4 MultiplyAdd(float a, Float4 b) => new(X + a * b.X, Y + a * b.Y, Z + a * b.Z, W + a * b.W);

    public readonly Float4 Add(Float4 b) => new(X + b.X, Y + b.Y, Z + b.Z, W + b.W);

    public readonly float this[int i] => i == 0 ? X : i == 1 ? Y : i == 2 ? Z : W;
}

/// <summary>Loads of matmul operand tiles shared by the SIMT and tensor-core kernels.</summary>
static class GemmLoads
{
    /// <summary>
    /// Four floats of row <paramref name="row"/> of a row-major matrix [rows, rowLength], starting at column
    /// <paramref name="column"/> (a multiple of 4); elements outside the matrix read as 0. With
    /// <paramref name="vector"/> set, the row length is a multiple of 4, so the four are all in or all out and
    /// one aligned 16-byte load fetches them.
    /// </summary>
    public static Float4 Quad(ArrayView<float> data, int row, int column, int rows, int rowLength, int vector)
    {
        if (row >= rows) return default;
        long start = (long)row * rowLength + column;
        if (vector != 0)
            return column < rowLength ? data.Cast<Float4>()[start >> 2] : default;
        return new Float4(
            column < rowLength ? data[start] : 0f,
            column + 1 < rowLength ? data[start + 1] : 0f,
            column + 2 < rowLength ? data[start + 2] : 0f,
            column + 3 < rowLength ? data[start + 3] : 0f);
    }
}
