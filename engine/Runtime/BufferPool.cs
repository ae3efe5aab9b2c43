namespace DiffuSharp.Runtime;

/// <summary>
/// Recycles device storage by (dtype, length). A training or decoding loop that frees and re-allocates
/// the same shapes every step gets its old buffers back, so after the first step it allocates nothing.
/// </summary>
public sealed class BufferPool : IDisposable
{
    readonly Dictionary<(DType, long), Stack<DeviceStorage>> free = new();
    readonly Func<DType, long, DeviceStorage> allocate;
    readonly object gate = new();

    public BufferPool(Func<DType, long, DeviceStorage> allocate) => this.allocate = allocate;

    /// <summary>How many buffers were created fresh (not reused) since the pool was made.</summary>
    public long FreshAllocations { get; private set; }

    /// <summary>Bytes held by buffers that are currently free in the pool.</summary>
    public long PooledBytes { get; private set; }

    public DeviceStorage Rent(DType dtype, long length)
    {
        lock (gate)
        {
            if (free.TryGetValue((dtype, length), out var stack) && stack.Count > 0)
            {
                var s = stack.Pop();
                PooledBytes -= Bytes(s);
                return s;
            }
            FreshAllocations++;
        }
        return allocate(dtype, length);
    }

    public void Return(DeviceStorage storage)
    {
        lock (gate)
        {
            var key = (storage.DType, storage.Length);
            if (!free.TryGetValue(key, out var stack)) free[key] = stack = new Stack<DeviceStorage>();
            stack.Push(storage);
            PooledBytes += Bytes(storage);
        }
    }

    /// <summary>Releases every free buffer back to the device.</summary>
    public void Trim()
    {
        lock (gate)
        {
            foreach (var stack in free.Values)
                while (stack.Count > 0) stack.Pop().Dispose();
            free.Clear();
            PooledBytes = 0;
        }
    }

    public void Dispose() => Trim();

    static long Bytes(DeviceStorage s) => s.Length * Tensor.ElementSize(s.DType);
}
