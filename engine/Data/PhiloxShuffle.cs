using DiffuSharp.Kernels;

namespace DiffuSharp.Data;

/// <summary>
/// Fisher–Yates shuffles driven by Philox, so a permutation is a pure function of (seed, stream, counter
/// base): the same on every machine and after a resume, with no generator state to save.
/// </summary>
static class PhiloxShuffle
{
    /// <summary>
    /// Shuffles <paramref name="items"/> in place. Step i (from the end) draws 64 random bits at counter
    /// <paramref name="counterBase"/> + i and maps them onto [0, i] by a multiply-high, whose bias (i / 2⁶⁴) is negligible.
    /// </summary>
    public static void Shuffle(Span<int> items, ulong seed, ulong stream, ulong counterBase)
    {
        for (int i = items.Length - 1; i > 0; i--)
        {
            Philox.Generate(seed, stream, counterBase + (ulong)i, out uint r0, out uint r1, out _, out _);
            ulong bits = ((ulong)r1 << 32) | r0;
            int j = (int)Math.BigMul(bits, (ulong)(i + 1), out _);
            (items[i], items[j]) = (items[j], items[i]);
        }
    }
}
