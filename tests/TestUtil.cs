using DiffuSharp.Kernels;

namespace DiffuSharp.Tests;

/// <summary>Shared helpers: random inputs, error metrics and paths to the repository and its shared data.</summary>
public static class TestUtil
{
    /// <summary>‖a − b‖₂ / ‖b‖₂, with b the reference (‖a − b‖₂ when b is zero).</summary>
    public static double RelativeL2(ReadOnlySpan<float> a, ReadOnlySpan<double> b) => RelativeL2(ToDouble(a), b);

    public static double RelativeL2(ReadOnlySpan<float> a, ReadOnlySpan<float> b) => RelativeL2(a, ToDouble(b));

    public static double RelativeL2(ReadOnlySpan<double> a, ReadOnlySpan<double> b)
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

    /// <summary>
    /// ‖(actual − start) − expected‖₂ / ‖expected‖₂: what an op that accumulates (+=) added to a buffer that started at
    /// <paramref name="start"/>, against the reference gradient, so an op that overwrote its output, or added twice, fails.
    /// </summary>
    public static double AddedRelativeL2(ReadOnlySpan<float> actual, ReadOnlySpan<float> start, ReadOnlySpan<double> expected)
    {
        var added = new double[actual.Length];
        for (int i = 0; i < added.Length; i++) added[i] = (double)actual[i] - start[i];
        return RelativeL2(added, expected);
    }

    public static double AddedRelativeL2(ReadOnlySpan<double> actual, ReadOnlySpan<double> start, ReadOnlySpan<double> expected)
    {
        var added = new double[actual.Length];
        for (int i = 0; i < added.Length; i++) added[i] = actual[i] - start[i];
        return RelativeL2(added, expected);
    }

    /// <summary>
    /// Random nonzero starting values for a gradient buffer, scaled to the RMS of the expected gradient so that float
    /// rounding of the start does not hide what the op adds (see <see cref="AddedRelativeL2(ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{double})"/>).
    /// </summary>
    public static float[] GradientStart(Random rng, ReadOnlySpan<double> expected)
    {
        double sum = 0;
        foreach (double e in expected) sum += e * e;
        double rms = expected.Length == 0 ? 1 : Math.Sqrt(sum / expected.Length);
        return RandomFloats(rng, expected.Length, (float)(rms > 0 ? rms : 1));
    }

    /// <summary>Uniform floats in [-scale, scale) from a seeded generator (fresh per test via the seed).</summary>
    public static float[] RandomFloats(Random rng, int n, float scale = 1f)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)((rng.NextDouble() * 2 - 1) * scale);
        return a;
    }

    /// <summary>Uniform doubles in [-scale, scale).</summary>
    public static double[] RandomDoubles(Random rng, int n, double scale = 1)
    {
        var a = new double[n];
        for (int i = 0; i < n; i++) a[i] = (rng.NextDouble() * 2 - 1) * scale;
        return a;
    }

    /// <summary>
    /// A random [L, L] allow-mask for <see cref="AttentionMaskMode.Explicit"/>: about half the keys visible and the diagonal
    /// always, so every query sees a key, except row <paramref name="hiddenRow"/> (when inside), which sees none.
    /// </summary>
    public static byte[] RandomAllowMask(Random rng, int length, int hiddenRow = -1)
    {
        var allow = new byte[length * length];
        for (int i = 0; i < length; i++)
            for (int j = 0; j < length; j++) allow[i * length + j] = (byte)(i != hiddenRow && (i == j || rng.Next(2) == 0) ? 1 : 0);
        return allow;
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

    public static double Dot(ReadOnlySpan<double> a, ReadOnlySpan<double> b)
    {
        double sum = 0;
        for (int i = 0; i < a.Length; i++) sum += a[i] * b[i];
        return sum;
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
