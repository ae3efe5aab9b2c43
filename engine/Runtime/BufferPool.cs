namespace DiffuSharp.Runtime;

/// <summary>
/// Recycles device storage by (dtype, length). A training or decoding loop that frees and re-allocates
/// the same shapes every step gets its old buffers back, so after the first step it allocates nothing.
/// Free buffers are kept up to a byte budget (a device gives a quarter of its free memory when the pool is
/// first used): work whose shapes keep changing (evaluation passes of many lengths) would otherwise hold
/// every size it ever used. Over the budget, the shapes used least recently are released first.
/// </summary>
public sealed class BufferPool : IDisposable
{
    sealed class Shelf
    {
        public readonly Stack<DeviceStorage> Free = new();
        public long LastUse;
    }

    readonly Dictionary<(DType, long), Shelf> shelves = new();
    readonly Func<DType, long, DeviceStorage> allocate;
    readonly Func<long>? budget;
    readonly object gate = new();
    long clock;

    /// <param name="budget">the most bytes of free buffers to keep, asked once on first use (null: no limit)</param>
    public BufferPool(Func<DType, long, DeviceStorage> allocate, Func<long>? budget = null)
    {
        this.allocate = allocate;
        this.budget = budget;
    }

    /// <summary>How many buffers were created fresh (not reused) since the pool was made.</summary>
    public long FreshAllocations { get; private set; }

    /// <summary>Bytes held by buffers that are currently free in the pool.</summary>
    public long PooledBytes { get; private set; }

    /// <summary>The most bytes of free buffers kept (fixed on first use).</summary>
    public long MaxPooledBytes { get; private set; } = -1;

    public DeviceStorage Rent(DType dtype, long length)
    {
        lock (gate)
        {
            if (shelves.TryGetValue((dtype, length), out var shelf) && shelf.Free.Count > 0)
            {
                var s = shelf.Free.Pop();
                shelf.LastUse = ++clock;
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
            if (MaxPooledBytes < 0) MaxPooledBytes = Math.Max(0, budget?.Invoke() ?? long.MaxValue);
            var key = (storage.DType, storage.Length);
            if (!shelves.TryGetValue(key, out var shelf)) shelves[key] = shelf = new Shelf();
            shelf.Free.Push(storage);
            shelf.LastUse = ++clock;
            PooledBytes += Bytes(storage);
            if (PooledBytes > MaxPooledBytes) Evict();
        }
    }

    /// <summary>Releases whole shelves, least recently used first, until the free buffers fit the budget.</summary>
    void Evict()
    {
        foreach (var (key, shelf) in shelves.OrderBy(s => s.Value.LastUse).ToList())
        {
            if (PooledBytes <= MaxPooledBytes) break;
            while (shelf.Free.Count > 0)
            {
                var s = shelf.Free.Pop();
                PooledBytes -= Bytes(s);
                s.Dispose();
            }
            shelves.Remove(key);
        }
    }

    /// <summary>Releases every free buffer back to the device.</summary>
    public void Trim()
    {
        lock (gate)
        {
            foreach (var shelf in shelves.Values)
                while (shelf.Free.Count > 0) shelf.Free.Pop().Dispose();
            shelves.Clear();
            PooledBytes = 0;
        }
    }

    public void Dispose() => Trim();

    static long Bytes(DeviceStorage s) => s.Length * Tensor.ElementSize(s.DType);
}
