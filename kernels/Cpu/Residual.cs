using System.Runtime.Intrinsics;

namespace DiffuSharp.Kernels.Cpu;

/// <summary>The residual connection, vectorised and split over the cores when large.</summary>
public static class Residual
{
    /// <summary>output = a + b elementwise; output may alias a or b (each element is read before it is written).</summary>
    public static unsafe void Add(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> output)
    {
        int n = a.Length;
        Guard.Length(b.Length, n, nameof(b));
        Guard.Length(output.Length, n, nameof(output));
        fixed (float* pa = a, pb = b, po = output)
        {
            float* xa = pa, xb = pb, xo = po;
            Work.For(n, 1 << 15, (start, end) => AddRange(xa, xb, xo, start, end));
        }
    }

    /// <summary>o[i] = a[i] + b[i] for i in [start, end).</summary>
    internal static unsafe void AddRange(float* a, float* b, float* o, int start, int end)
    {
        int i = start;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; i <= end - 64; i += 64)
            {
                var s0 = Vector512.Load(a + i) + Vector512.Load(b + i);
                var s1 = Vector512.Load(a + i + 16) + Vector512.Load(b + i + 16);
                var s2 = Vector512.Load(a + i + 32) + Vector512.Load(b + i + 32);
                var s3 = Vector512.Load(a + i + 48) + Vector512.Load(b + i + 48);
                Vector512.Store(s0, o + i); Vector512.Store(s1, o + i + 16); Vector512.Store(s2, o + i + 32); Vector512.Store(s3, o + i + 48);
            }
            for (; i <= end - 16; i += 16) Vector512.Store(Vector512.Load(a + i) + Vector512.Load(b + i), o + i);
        }
        if (Vector256.IsHardwareAccelerated)
            for (; i <= end - 8; i += 8) Vector256.Store(Vector256.Load(a + i) + Vector256.Load(b + i), o + i);
        for (; i < end; i++) o[i] = a[i] + b[i];
    }
}
