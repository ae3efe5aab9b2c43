namespace DiffuSharp.Runtime;

/// <summary>Element types a tensor can hold on a device. Checkpoint F16/BF16 are widened to F32 on load.</summary>
public enum DType { F32, I32, U8 }

/// <summary>Device memory of one element type, owned by a device and recycled through its pool.</summary>
public abstract class DeviceStorage : IDisposable
{
    protected DeviceStorage(DType dtype, long length) { DType = dtype; Length = length; }
    public DType DType { get; }
    public long Length { get; }
    public abstract void Dispose();
}

/// <summary>
/// A device buffer with a shape (row-major, last dimension fastest). Disposing a tensor returns its
/// storage to the device's pool, so a loop that allocates the same shapes each step reuses memory.
/// </summary>
public sealed class Tensor : IDisposable
{
    DeviceStorage? storage;

    internal Tensor(Device device, DeviceStorage storage, int[] shape)
    {
        Device = device;
        this.storage = storage;
        Shape = shape;
    }

    public Device Device { get; }
    public int[] Shape { get; }
    public DType DType => Storage.DType;
    public long Length => Storage.Length;
    public int Rank => Shape.Length;

    /// <summary>The last dimension.</summary>
    public int Columns => Shape[^1];

    /// <summary>The product of all dimensions but the last.</summary>
    public long Rows => Length / Math.Max(1, Shape[^1]);

    public DeviceStorage Storage => storage ?? throw new ObjectDisposedException(nameof(Tensor), "tensor used after Dispose");

    public string ShapeText => "[" + string.Join(", ", Shape) + "]";

    public override string ToString() => $"{DType}{ShapeText} on {Device.Name}";

    public void Dispose()
    {
        var s = storage;
        storage = null;
        if (s is not null) Device.Pool.Return(s);
    }

    public static int ElementSize(DType dtype) => dtype == DType.U8 ? 1 : 4;

    public static long Product(ReadOnlySpan<int> shape)
    {
        long n = 1;
        foreach (int d in shape)
        {
            if (d < 0) throw new ArgumentException($"negative dimension {d}");
            n *= d;
        }
        return n;
    }
}
