using DiffuSharp.Kernels;

namespace DiffuSharp.Tests;

/// <summary>Shared helpers: random inputs, error metrics and paths to the repository and its shared data.</summary>
public static class TestUtil
{
    /// <summary>‖a − b‖₂ / ‖b‖₂, with b the reference (0 when both are zero).</summary>
    public static double RelativeL2(ReadOnlySpan<float> a, ReadOnlySpan<double> b)
    {
        if (a.Length != b.Length) throw new ArgumentException($"length {a.Length} vs {b.Length}");
        double num = 0, den = 0;
        for (int i = 0; i < a.Length; i++)
        {
            double d = a[i] - b[i];
            num += d * d;
            den += b[i] * b[i];
        }
        return den == 0 ? Math.Sqrt(num) : Math.Sqrt(num / den);
    }

    public static double RelativeL2(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        var bd = new double[b.Length];
        for (int i = 0; i < b.Length; i++) bd[i] = b[i];
        return RelativeL2(a, bd);
    }

    /// <summary>Uniform floats in [-scale, scale) from a seeded generator (fresh per test via the seed).</summary>
    public static float[] RandomFloats(Random rng, int n, float scale = 1f)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)((rng.NextDouble() * 2 - 1) * scale);
        return a;
    }

    /// <summary>
    /// Sets the key/value rows that per-row key lengths hide (row j &gt;= keyLengths[b] of batch b, the KvHeads · HeadDim
    /// floats of each) to NaN in a k or v array laid out as <paramref name="shape"/> says from <paramref name="offset"/>:
    /// an attention kernel that read or weighted any of them would turn its output NaN.
    /// </summary>
    public static void PoisonPaddedKeys(Span<float> kv, long offset, in AttentionShape shape, ReadOnlySpan<int> keyLengths)
    {
        for (int b = 0; b < shape.Batch; b++)
            for (int j = keyLengths[b]; j < shape.KeyLength; j++)
                kv.Slice((int)(offset + b * shape.KeyBatchStride + (long)j * shape.KeyRowStride), shape.KvHeads * shape.HeadDim).Fill(float.NaN);
    }

    public static double[] ToDouble(ReadOnlySpan<float> a)
    {
        var d = new double[a.Length];
        for (int i = 0; i < a.Length; i++) d[i] = a[i];
        return d;
    }

    /// <summary>A generator seeded from the test's random seed, so each run sees fresh inputs yet a failure can be replayed.</summary>
    public static Random NewRandom() => new(TestContext.CurrentContext.Random.Next());

    /// <summary>The repository root (the folder holding Engine.sln).</summary>
    public static string RepoRoot
    {
        get
        {
            var dir = new DirectoryInfo(TestContext.CurrentContext.TestDirectory);
            while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Engine.sln"))) dir = dir.Parent;
            return dir?.FullName ?? throw new InvalidOperationException("Engine.sln not found above the test directory");
        }
    }

    /// <summary>../shared/data beside the repository.</summary>
    public static string SharedData => Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared", "data"));

    public static string Fixtures => Path.Combine(RepoRoot, "tests", "fixtures");
}
