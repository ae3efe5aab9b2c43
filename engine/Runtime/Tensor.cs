namespace DiffuSharp.Runtime;

/// <summary>Element types a tensor can hold on a device. Checkpoint F16/BF16 are widened to F32 on load.</summary>
/// <summary>
/// Element types. BF16 and F16 are 16-bit floats held as their raw bits (the storage type of 16-bit weights);
/// ops read them where they accept a weight, and compute in float32.
/// </summary>
public enum DType { F32, I32, U8, BF16, F16 }

/// <summary>Device memory of one element type, owned by a device and recycled through its pool.</summary>
public abstract class DeviceStorage : IDisposable
{
    protected DeviceStorage(DType dtype, long length) { DType = dtype; Length = length; }
    public DType DType { get; }
    public long Length { get; }
    public abstract void Dispose();
}

/// <summary>
/// A device buffer with a shape (row-major, last dimension fastest). A tensor owns its storage and returns
/// it to the device's pool when disposed, so a loop that allocates the same shapes each step reuses memory;
/// or it is a view: a shape over a contiguous range of another tensor's elements (a parameter inside one flat
/// buffer), which owns nothing and is usable only while the tensor it was cut from is.
/// </summary>
public sealed class Tensor : IDisposable
{
    DeviceStorage? storage;
    readonly Tensor? parent;
    bool disposed;

    internal Tensor(Device device, DeviceStorage storage, int[] shape)
    {
        Device = device;
        this.storage = storage;
        Shape = shape;
        Length = Product(shape);
    }

    Tensor(Device device, int[] shape)
    {
        Device = device;
        Shape = shape;
        Length = Product(shape);
        IsAbsent = true;
    }

    Tensor(Tensor parent, long offset, int[] shape)
    {
        Device = parent.Device;
        this.parent = parent;
        Offset = offset;
        Shape = shape;
        Length = Product(shape);
    }

    public Device Device { get; }
    public int[] Shape { get; }
    public DType DType => Storage.DType;

    /// <summary>The number of elements (the product of the shape).</summary>
    public long Length { get; }

    /// <summary>Where the elements start in the storage: 0 for an owning tensor.</summary>
    public long Offset { get; }

    public int Rank => Shape.Length;

    /// <summary>
    /// A shape without storage: the gradient of a frozen parameter in a gradient set that leaves it out. Ops refuse
    /// it; the layers' backward passes read it as "no gradient wanted" (<see cref="IfPresent"/>).
    /// </summary>
    public static Tensor Absent(Device device, params int[] shape) => new(device, (int[])shape.Clone());

    /// <summary>Whether this tensor is a shape without storage (<see cref="Absent"/>).</summary>
    public bool IsAbsent { get; }

    /// <summary>This tensor, or null when it is absent.</summary>
    public Tensor? IfPresent => IsAbsent ? null : this;

    /// <summary>Whether this tensor is a view into another's storage.</summary>
    public bool IsView => parent is not null;

    /// <summary>The last dimension.</summary>
    public int Columns => Shape[^1];

    /// <summary>The product of all dimensions but the last.</summary>
    public long Rows => Length / Math.Max(1, Shape[^1]);

    public DeviceStorage Storage => disposed ? throw new ObjectDisposedException(nameof(Tensor), "tensor used after Dispose")
        : IsAbsent ? throw new InvalidOperationException($"an absent tensor {ShapeText} (a frozen parameter's gradient) has no storage")
        : parent?.Storage ?? storage!;

    public string ShapeText => "[" + string.Join(", ", Shape) + "]";

    public override string ToString() => IsAbsent ? $"absent{ShapeText}" : $"{DType}{ShapeText}{(IsView ? $" at {Offset}" : "")} on {Device.Name}";

    /// <summary>A view of <paramref name="shape"/> over this tensor's elements from <paramref name="offset"/> on.</summary>
    public Tensor View(long offset, params int[] shape)
    {
        long n = Product(shape);
        if (IsAbsent) throw new InvalidOperationException($"an absent tensor {ShapeText} has no elements to view");
        if (offset < 0 || n == 0 || offset + n > Length)
            throw new ArgumentException($"a view [{string.Join(", ", shape)}] at {offset} does not fit in a tensor of {Length} elements");
        return new Tensor(parent ?? this, Offset + offset, (int[])shape.Clone());
    }

    public void Dispose()
    {
        disposed = true;
        var s = storage;
        storage = null;
        if (s is not null) Device.Pool.Return(s);
    }

    public static int ElementSize(DType dtype) => dtype switch
    {
        DType.U8 => 1,
        DType.BF16 or DType.F16 => 2,
        _ => 4,
    };

    /// <summary>Whether elements are 16-bit floats (BF16 or F16).</summary>
    public static bool Is16Bit(DType dtype) => dtype is DType.BF16 or DType.F16;

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
