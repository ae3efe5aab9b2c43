using DiffuSharp.Runtime;

namespace DiffuSharp.Tests.Runtime;

/// <summary>The buffer pool recycles shapes and keeps its free buffers within a byte budget, dropping the least recently used shapes.</summary>
public sealed class BufferPoolTests
{
    sealed class CountedStorage(DType dtype, long length) : DeviceStorage(dtype, length)
    {
        public bool Disposed;
        public override void Dispose() => Disposed = true;
    }

    [Test]
    public void FreeBuffersStayWithinTheBudgetAndTheRecentShapesStay()
    {
        var pool = new BufferPool((dtype, length) => new CountedStorage(dtype, length), () => 1000);
        var first = (CountedStorage)pool.Rent(DType.F32, 100);            // 400 bytes
        pool.Return(first);
        Assert.That(pool.Rent(DType.F32, 100), Is.SameAs(first), "the same shape comes back");
        pool.Return(first);
        var others = Enumerable.Range(101, 5).Select(n => (CountedStorage)pool.Rent(DType.F32, n)).ToList();
        foreach (var s in others)
        {
            pool.Return(s);
            Assert.That(pool.PooledBytes, Is.LessThanOrEqualTo(1000));
        }
        Assert.That(first.Disposed, "the least recently used shape went first");
        Assert.That(others[^1].Disposed, Is.False, "the most recent stays");
        Assert.That(pool.MaxPooledBytes, Is.EqualTo(1000));
        long fresh = pool.FreshAllocations;
        Assert.That(pool.Rent(DType.F32, 105), Is.SameAs(others[^1]));
        Assert.That(pool.FreshAllocations, Is.EqualTo(fresh));
    }

    [Test]
    public void WithoutABudgetEverythingIsKept()
    {
        var pool = new BufferPool((dtype, length) => new CountedStorage(dtype, length));
        var all = Enumerable.Range(1, 50).Select(n => (CountedStorage)pool.Rent(DType.U8, n * 1000)).ToList();
        foreach (var s in all) pool.Return(s);
        Assert.That(all.Any(s => s.Disposed), Is.False);
        Assert.That(pool.PooledBytes, Is.EqualTo(all.Sum(s => s.Length)));
    }
}
