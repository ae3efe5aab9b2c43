using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace DiffuSharp.Kernels.Cpu;

/// <summary>Argument checks for the CPU kernels: they index through raw pointers, so a short span must fail here, not corrupt memory.</summary>
static class Guard
{
    public static void Length(int actual, long required, string name)
    {
        if (actual < required)
            throw new ArgumentException($"{name} holds {actual} elements but the shape needs {required}", name);
    }

    public static void Positive(int value, string name)
    {
        if (value <= 0) throw new ArgumentOutOfRangeException(name, value, $"{name} must be positive");
    }
}

/// <summary>Splits a range of independent items (rows, panels, heads) over the cores.</summary>
static class Work
{
    /// <summary>
    /// Calls body(start, end) over [0, count), in about two chunks per core when each chunk gets at least
    /// minPerChunk items, else on the calling thread in one piece (small inputs are not worth a fork).
    /// </summary>
    public static void For(int count, int minPerChunk, Action<int, int> body)
    {
        int chunks = Math.Min(2 * Environment.ProcessorCount, count / Math.Max(1, minPerChunk));
        if (chunks <= 1)
        {
            body(0, count);
            return;
        }
        int size = (count + chunks - 1) / chunks;
        chunks = (count + size - 1) / size;
        Parallel.For(0, chunks, c => body(c * size, Math.Min(count, (c + 1) * size)));
    }
}

/// <summary>
/// A per-thread float buffer that grows on demand and never shrinks, pinned and aligned to 64 bytes so
/// that packed panels load with aligned vector moves. Kernels take it once per call and reuse it.
/// </summary>
static unsafe class Scratch
{
    [ThreadStatic] static float[]? buffer;

    public static float* Get(long floats)
    {
        if (buffer is null || buffer.LongLength < floats + 16)
            buffer = GC.AllocateUninitializedArray<float>((int)Math.Min(Array.MaxLength, floats + 16), pinned: true);
        var p = (float*)Unsafe.AsPointer(ref buffer[0]);
        return (float*)(((nuint)p + 63) & ~(nuint)63);
    }
}

/// <summary>Level-1 vector operations shared by the kernels.</summary>
static class VectorOps
{
    /// <summary>y[0..n) += a · x[0..n).</summary>
    public static unsafe void Axpy(float a, float* x, float* y, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var av = Vector512.Create(a);
            for (; i <= n - 16; i += 16) Vector512.Store(Vector512.FusedMultiplyAdd(av, Vector512.Load(x + i), Vector512.Load(y + i)), y + i);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var av = Vector256.Create(a);
            for (; i <= n - 8; i += 8) Vector256.Store(Vector256.FusedMultiplyAdd(av, Vector256.Load(x + i), Vector256.Load(y + i)), y + i);
        }
        for (; i < n; i++) y[i] += a * x[i];
    }

    /// <summary>Σ a[i] · b[i] over n elements.</summary>
    public static unsafe float Dot(float* a, float* b, int n)
    {
        int i = 0;
        float sum = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var acc = Vector512<float>.Zero;
            for (; i <= n - 16; i += 16) acc = Vector512.FusedMultiplyAdd(Vector512.Load(a + i), Vector512.Load(b + i), acc);
            sum += Vector512.Sum(acc);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var acc = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8) acc = Vector256.FusedMultiplyAdd(Vector256.Load(a + i), Vector256.Load(b + i), acc);
            sum += Vector256.Sum(acc);
        }
        for (; i < n; i++) sum += a[i] * b[i];
        return sum;
    }
}
