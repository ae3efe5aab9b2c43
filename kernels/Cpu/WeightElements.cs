using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace DiffuSharp.Kernels.Cpu;

/// <summary>
/// How a kernel reads a weight's elements as float32: a kernel generic over one of these structs is compiled once per
/// storage format, so the float32 copy stays what it was and the 16-bit copies widen in registers as they load
/// (half the bytes from memory). Indices count elements.
/// </summary>
unsafe interface IWeightElements
{
    static abstract WeightFormat Format { get; }
    static abstract float At(void* p, long i);
    static abstract Vector512<float> Load512(void* p, long i);
    static abstract Vector256<float> Load256(void* p, long i);
}

readonly unsafe struct F32Elements : IWeightElements
{
    public static WeightFormat Format => WeightFormat.F32;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float At(void* p, long i) => ((float*)p)[i];
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Load512(void* p, long i) => Vector512.Load((float*)p + i);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Load256(void* p, long i) => Vector256.Load((float*)p + i);
}

/// <summary>BF16: the upper halves of float32s, widened by a zero-extend and a shift.</summary>
readonly unsafe struct BF16Elements : IWeightElements
{
    public static WeightFormat Format => WeightFormat.BF16;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float At(void* p, long i) => SixteenBit.BFloat16ToSingle(((ushort*)p)[i]);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Load512(void* p, long i) => Vector512.ShiftLeft(Wide.Load16((ushort*)p + i), 16).AsSingle();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Load256(void* p, long i) => Vector256.ShiftLeft(Wide.Load8((ushort*)p + i), 16).AsSingle();
}

/// <summary>
/// F16, widened exactly with integer operations: exponent and mantissa shifted into float32 position and scaled by
/// 2^112 (exact for normal and subnormal halves alike), infinities and NaNs given float32's all-ones exponent.
/// </summary>
readonly unsafe struct F16Elements : IWeightElements
{
    const float Rebias = 5.192296858534828e33f; // 2^112: float32's exponent bias minus binary16's, as a factor

    public static WeightFormat Format => WeightFormat.F16;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float At(void* p, long i) => SixteenBit.HalfToSingle(((ushort*)p)[i]);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load512(void* p, long i)
    {
        var u = Wide.Load16((ushort*)p + i);
        var em = Vector512.ShiftLeft(u & Vector512.Create(0x7FFFu), 13);
        var scaled = em.AsSingle() * Vector512.Create(Rebias);
        var special = Vector512.GreaterThanOrEqual(em, Vector512.Create(0x0F800000u));
        var magnitude = Vector512.ConditionalSelect(special, em | Vector512.Create(0x7F800000u), scaled.AsUInt32());
        return (magnitude | Vector512.ShiftLeft(u & Vector512.Create(0x8000u), 16)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load256(void* p, long i)
    {
        var u = Wide.Load8((ushort*)p + i);
        var em = Vector256.ShiftLeft(u & Vector256.Create(0x7FFFu), 13);
        var scaled = em.AsSingle() * Vector256.Create(Rebias);
        var special = Vector256.GreaterThanOrEqual(em, Vector256.Create(0x0F800000u));
        var magnitude = Vector256.ConditionalSelect(special, em | Vector256.Create(0x7F800000u), scaled.AsUInt32());
        return (magnitude | Vector256.ShiftLeft(u & Vector256.Create(0x8000u), 16)).AsSingle();
    }
}

/// <summary>Zero-extending loads of 16-bit elements into 32-bit lanes.</summary>
static unsafe class Wide
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<uint> Load16(ushort* p)
    {
        if (Avx512F.IsSupported) return Avx512F.ConvertToVector512UInt32(Vector256.Load(p));
        var v = Vector256.Load(p);
        return Vector512.Create(Vector256.WidenLower(v), Vector256.WidenUpper(v));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<uint> Load8(ushort* p)
    {
        if (Avx2.IsSupported) return Avx2.ConvertToVector256Int32(p).AsUInt32();
        var v = Vector128.Load(p);
        return Vector256.Create(Vector128.WidenLower(v), Vector128.WidenUpper(v));
    }
}

/// <summary>Widens whole runs of 16-bit elements into float32 (packing, embedding rows, a device's Widen op).</summary>
public static unsafe class WeightWidening
{
    /// <summary>dst[0..n) = the float32 values of src[0..n) read as <typeparamref name="TW"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Widen<TW>(void* src, float* dst, int n) where TW : struct, IWeightElements
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; i <= n - 16; i += 16) Vector512.Store(TW.Load512(src, i), dst + i);
        if (Vector256.IsHardwareAccelerated)
            for (; i <= n - 8; i += 8) Vector256.Store(TW.Load256(src, i), dst + i);
        for (; i < n; i++) dst[i] = TW.At(src, i);
    }

    internal static void Widen(void* src, WeightFormat format, float* dst, int n)
    {
        switch (format)
        {
            case WeightFormat.BF16: Widen<BF16Elements>(src, dst, n); break;
            case WeightFormat.F16: Widen<F16Elements>(src, dst, n); break;
            default: new ReadOnlySpan<float>(src, n).CopyTo(new Span<float>(dst, n)); break;
        }
    }

    /// <summary>destination = source widened to float32, split over the cores for large tensors.</summary>
    public static void Widen(WeightView source, Span<float> destination)
    {
        Guard.Length(destination.Length, source.Length, nameof(destination));
        fixed (byte* ps = source.Bytes)
        fixed (float* pd = destination)
        {
            byte* s = ps;
            float* d = pd;
            var format = source.Format;
            int size = format == WeightFormat.F32 ? 4 : 2;
            Work.For(source.Length, 1 << 16, (start, end) => Widen(s + (long)start * size, format, d + start, end - start));
        }
    }
}

/// <summary>A weight's storage as the CPU kernels take it: float32 values, or the raw bits of BF16 or F16 elements.</summary>
public readonly ref struct WeightView
{
    public WeightView(ReadOnlySpan<float> values)
    {
        Bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(values);
        Format = WeightFormat.F32;
        Length = values.Length;
    }

    public WeightView(ReadOnlySpan<ushort> bits, WeightFormat format)
    {
        if (format == WeightFormat.F32) throw new ArgumentException("16-bit elements need a 16-bit format", nameof(format));
        Bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(bits);
        Format = format;
        Length = bits.Length;
    }

    public ReadOnlySpan<byte> Bytes { get; }
    public WeightFormat Format { get; }

    /// <summary>Elements (not bytes).</summary>
    public int Length { get; }

    public bool IsEmpty => Length == 0;

    public static implicit operator WeightView(ReadOnlySpan<float> values) => new(values);
    public static implicit operator WeightView(Span<float> values) => new(values);
    public static implicit operator WeightView(float[] values) => new(values);
}
