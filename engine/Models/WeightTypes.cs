using DiffuSharp.IO;
using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>
/// The storage type of a model's weights (--weights): float32, or BF16 / F16 kept as stored from disk to kernel
/// (activations, statistics and accumulation stay float32). "auto" keeps the checkpoint's own type.
/// </summary>
public static class WeightTypes
{
    /// <summary>The --weights choices; auto is null (the checkpoint's type, <see cref="Stored"/>).</summary>
    public static IReadOnlyDictionary<string, DType?> Choices { get; } = new Dictionary<string, DType?>
    {
        ["auto"] = null, ["f32"] = DType.F32, ["bf16"] = DType.BF16, ["f16"] = DType.F16,
    };

    /// <summary>The 16-bit and float32 types of <see cref="Choices"/>, by name (for --save-dtype).</summary>
    public static IReadOnlyDictionary<string, DType> Concrete { get; } = new Dictionary<string, DType>
    {
        ["f32"] = DType.F32, ["bf16"] = DType.BF16, ["f16"] = DType.F16,
    };

    public static string Name(DType dtype) => dtype switch
    {
        DType.F32 => "f32",
        DType.BF16 => "bf16",
        DType.F16 => "f16",
        _ => throw new ArgumentException($"{dtype} is not a weight type"),
    };

    /// <summary>BF16 or F16 when every named tensor is stored so; float32 otherwise (F32, F64, or a mix).</summary>
    public static DType Stored(SafeTensorsCheckpoint checkpoint, IEnumerable<string> names)
    {
        DType? common = null;
        foreach (string name in names)
        {
            DType dtype = checkpoint.Info(name).DType switch
            {
                SafeTensorsDType.BF16 => DType.BF16,
                SafeTensorsDType.F16 => DType.F16,
                _ => DType.F32,
            };
            if (common is not null && common != dtype) return DType.F32;
            common = dtype;
        }
        return common ?? DType.F32;
    }

    /// <summary>Bytes of one parameter stored as <paramref name="dtype"/>.</summary>
    public static int Bytes(DType dtype) => Tensor.ElementSize(dtype);
}
