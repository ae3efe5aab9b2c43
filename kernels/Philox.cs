using System.Runtime.CompilerServices;

namespace DiffuSharp.Kernels;

/// <summary>
/// Philox4x32-10 counter-based generator (Salmon et al., SC'11). Pure integer arithmetic with no state, so
/// the same (key, counter) gives the same numbers on the CPU, in an ILGPU kernel and after a resume.
/// The engine keys it by (seed) and counts with (counter, stream): one call yields four 32-bit words.
/// </summary>
public static class Philox
{
    const uint M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
    const uint W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;

    /// <summary>The raw bijection: ten rounds over a 128-bit counter with a 64-bit key.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Block(ref uint c0, ref uint c1, ref uint c2, ref uint c3, uint k0, uint k1)
    {
        for (int round = 0; round < 10; round++)
        {
            ulong p0 = (ulong)M0 * c0;
            ulong p1 = (ulong)M1 * c2;
            uint hi0 = (uint)(p0 >> 32), lo0 = (uint)p0;
            uint hi1 = (uint)(p1 >> 32), lo1 = (uint)p1;
            uint n0 = hi1 ^ c1 ^ k0;
            uint n2 = hi0 ^ c3 ^ k1;
            c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
            k0 += W0; k1 += W1;
        }
    }

    /// <summary>Four random words for (seed, stream, counter).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Generate(ulong seed, ulong stream, ulong counter,
        out uint r0, out uint r1, out uint r2, out uint r3)
    {
        r0 = (uint)counter; r1 = (uint)(counter >> 32);
        r2 = (uint)stream; r3 = (uint)(stream >> 32);
        Block(ref r0, ref r1, ref r2, ref r3, (uint)seed, (uint)(seed >> 32));
    }

    /// <summary>A uniform float in [0, 1) with 24 random bits, from one 32-bit word.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToUniform(uint word) => (word >> 8) * (1.0f / 16777216.0f);

    /// <summary>
    /// The index-th uniform of a (seed, stream) sequence: word index % 4 of block index / 4. Every device
    /// that asks for element i of a sequence gets the same value, whatever order it computes them in.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Uniform(ulong seed, ulong stream, ulong index)
    {
        Generate(seed, stream, index >> 2, out uint r0, out uint r1, out uint r2, out uint r3);
        uint lane = (uint)(index & 3);
        uint word = lane == 0 ? r0 : lane == 1 ? r1 : lane == 2 ? r2 : r3;
        return ToUniform(word);
    }
}
