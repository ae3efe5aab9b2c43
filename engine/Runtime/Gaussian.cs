using DiffuSharp.Kernels;

namespace DiffuSharp.Runtime;

/// <summary>Standard normal draws from Philox uniforms (Box-Muller), reproducible from (seed, stream).</summary>
public static class Gaussian
{
    public static void Fill(Span<float> values, float std, ulong seed, ulong stream)
    {
        for (int i = 0; i < values.Length; i += 2)
        {
            Philox.Generate(seed, stream, (ulong)i / 2, out uint r0, out uint r1, out _, out _);
            double u1 = (Philox.ToUniform(r0) + 0.5 / 16777216.0), u2 = Philox.ToUniform(r1);
            double radius = Math.Sqrt(-2 * Math.Log(u1)) * std;
            values[i] = (float)(radius * Math.Cos(2 * Math.PI * u2));
            if (i + 1 < values.Length) values[i + 1] = (float)(radius * Math.Sin(2 * Math.PI * u2));
        }
    }
}
