namespace DiffuSharp.IO;

/// <summary>The element types a safetensors header may name (spelled as in the header).</summary>
public enum SafeTensorsDType { F32, F16, BF16, I32, I64, U8, I8, F64, BOOL, I16 }

/// <summary>A safetensors file or checkpoint that is missing, unreadable or malformed. The message names the file and the problem.</summary>
public sealed class SafeTensorsFormatException : DiffuException
{
    public SafeTensorsFormatException(string filePath, string problem) : base($"{filePath}: {problem}") { FilePath = filePath; }

    public SafeTensorsFormatException(string filePath, string problem, Exception inner) : base($"{filePath}: {problem}", inner) { FilePath = filePath; }

    public string FilePath { get; }
}

/// <summary>One tensor of a safetensors file: its type, shape and byte range [Begin, End) within the data section.</summary>
public sealed record SafeTensorsInfo(string Name, SafeTensorsDType DType, int[] Shape, long Begin, long End)
{
    public long ElementCount { get; } = SafeTensorsShapes.ElementCount(Shape);
}

internal static class SafeTensorsShapes
{
    public static long ElementCount(int[] shape)
    {
        long n = 1;
        foreach (int d in shape)
        {
            if (d < 0) throw new ArgumentException($"negative dimension in shape {Format(shape)}");
            n = checked(n * d);
        }
        return n;
    }

    public static string Format(int[] shape) => "[" + string.Join(", ", shape) + "]";
}

internal static class SafeTensorsDTypes
{
    public static int ElementSize(SafeTensorsDType t) => t switch
    {
        SafeTensorsDType.F64 or SafeTensorsDType.I64 => 8,
        SafeTensorsDType.F32 or SafeTensorsDType.I32 => 4,
        SafeTensorsDType.F16 or SafeTensorsDType.BF16 or SafeTensorsDType.I16 => 2,
        SafeTensorsDType.U8 or SafeTensorsDType.I8 or SafeTensorsDType.BOOL => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, "unknown dtype"),
    };

    /// <summary>Parses a header dtype name; the names are case-sensitive, as in the format.</summary>
    public static bool TryParse(string name, out SafeTensorsDType dtype)
    {
        foreach (var t in Enum.GetValues<SafeTensorsDType>())
        {
            if (t.ToString() == name) { dtype = t; return true; }
        }
        dtype = default;
        return false;
    }

    public static bool IsFloat(SafeTensorsDType t) =>
        t is SafeTensorsDType.F32 or SafeTensorsDType.F16 or SafeTensorsDType.BF16 or SafeTensorsDType.F64;
}
