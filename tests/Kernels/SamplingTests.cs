using DiffuSharp.Kernels;
using DiffuSharp.Runtime;
using Cpu = DiffuSharp.Kernels.Cpu;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// Token sampling: both flavours on distributions small enough to work out by hand (probabilities, cuts, the draw
/// and the four stats), draw frequencies against probabilities, and the CPU kernel against the float64 reference on
/// random rows up to GPT-2's vocabulary. Inputs come from fixed seeds: the flavours agree on every token unless a
/// draw lands within float rounding of a CDF step, and these rows were checked to keep clear of that.
/// </summary>
public class SamplingTests
{
    static readonly double Ln2 = Math.Log(2), Ln3 = Math.Log(3), Ln4 = Math.Log(4);

    static readonly bool[] Flavours = [false, true];

    /// <summary>Runs the CPU kernel (cpu) or the reference on float logits; stats come back as double either way.</summary>
    static (int[] Tokens, double[] Stats) Sample(bool cpu, float[] logits, int rows, SamplingOptions options, ulong seed = 1, ulong stream = 0)
    {
        int vocab = logits.Length / rows;
        var tokens = new int[rows];
        var stats = new double[rows * SamplingOptions.StatCount];
        if (cpu)
        {
            var floatStats = new float[stats.Length];
            Cpu.Sampling.SampleTokens(logits, rows, vocab, options, seed, stream, tokens, floatStats);
            for (int i = 0; i < stats.Length; i++) stats[i] = floatStats[i];
        }
        else
        {
            Ref.Sampling.SampleTokens(TestUtil.ToDouble(logits), rows, vocab, options, seed, stream, tokens, stats);
        }
        return (tokens, stats);
    }

    /// <summary>One row repeated: row r draws with u = Philox.Uniform(seed, stream, r), so rows act as independent draws.</summary>
    static float[] Repeat(double[] row, int rows)
    {
        var logits = new float[row.Length * rows];
        for (int i = 0; i < logits.Length; i++) logits[i] = (float)row[i % row.Length];
        return logits;
    }

    static void AssertStat(double actual, double expected, string what) =>
        Assert.That(actual, Is.EqualTo(expected).Within(1e-6 + 1e-5 * Math.Abs(expected)), what);

    /// <summary>Checks the four stats of every row against a distribution q over the kept tokens (0 for dropped ones).</summary>
    static void AssertStats(int[] tokens, double[] stats, double[] q, string flavour)
    {
        var sorted = q.OrderDescending().ToArray();
        double negEntropy = q.Where(x => x > 0).Sum(x => x * Math.Log(x));
        for (int r = 0; r < tokens.Length; r++)
        {
            int o = r * SamplingOptions.StatCount;
            Assert.That(q[tokens[r]], Is.GreaterThan(0), $"{flavour}: row {r} drew token {tokens[r]}, which was cut");
            AssertStat(stats[o + SamplingOptions.LogProb], Math.Log(q[tokens[r]]), $"{flavour} log p, row {r}");
            AssertStat(stats[o + SamplingOptions.MaxProb], sorted[0], $"{flavour} max p, row {r}");
            AssertStat(stats[o + SamplingOptions.Margin], sorted[0] - (sorted.Length > 1 ? sorted[1] : 0), $"{flavour} margin, row {r}");
            AssertStat(stats[o + SamplingOptions.NegEntropy], negEntropy, $"{flavour} Σ p log p, row {r}");
        }
    }

    /// <summary>The token inverse CDF in id order gives for u: the first id whose cumulative q exceeds u.</summary>
    static int InverseCdf(double[] q, double u)
    {
        double cumulative = 0;
        for (int i = 0; i < q.Length; i++)
        {
            cumulative += q[i];
            if (q[i] > 0 && cumulative > u) return i;
        }
        return Array.FindLastIndex(q, x => x > 0);
    }

    static void AssertDraws(int[] tokens, double[] q, ulong seed, ulong stream, string flavour)
    {
        for (int r = 0; r < tokens.Length; r++)
            Assert.That(tokens[r], Is.EqualTo(InverseCdf(q, Philox.Uniform(seed, stream, (ulong)r))), $"{flavour}: row {r}");
    }

    [Test]
    public void LogitsOfLogOneTwoThreeGiveOneSixthTwoSixthsThreeSixths()
    {
        var logits = Repeat([0, Ln2, Ln3], 64);
        double[] q = [1 / 6.0, 2 / 6.0, 3 / 6.0];
        foreach (bool cpu in Flavours)
        {
            var (tokens, stats) = Sample(cpu, logits, 64, new SamplingOptions(1f), seed: 11, stream: 3);
            AssertDraws(tokens, q, 11, 3, cpu ? "cpu" : "reference");
            AssertStats(tokens, stats, q, cpu ? "cpu" : "reference");
        }
    }

    [Test]
    public void TemperatureDividesTheLogits()
    {
        var logits = Repeat([0, Ln2, Ln3], 32);
        double[] q = [1 / 14.0, 4 / 14.0, 9 / 14.0];
        foreach (bool cpu in Flavours)
        {
            var (tokens, stats) = Sample(cpu, logits, 32, new SamplingOptions(0.5f), seed: 5);
            AssertDraws(tokens, q, 5, 0, cpu ? "cpu" : "reference");
            AssertStats(tokens, stats, q, cpu ? "cpu" : "reference");
        }
    }

    [Test]
    public void GreedyTakesTheLowestIdOfTiedMaximaAndIgnoresTheCuts()
    {
        double[] row = [1, 3, 0, 3];
        var logits = Repeat(row, 8);
        double sum = row.Sum(Math.Exp);
        var p = row.Select(z => Math.Exp(z) / sum).ToArray();
        foreach (var options in new[] { new SamplingOptions(0f), new SamplingOptions(0f, TopK: 1, TopP: 0.1f) })
        foreach (bool cpu in Flavours)
        {
            var (tokens, stats) = Sample(cpu, logits, 8, options);
            Assert.That(tokens, Is.All.EqualTo(1), $"{options}, cpu {cpu}");
            AssertStats(tokens, stats, p, $"{options}, cpu {cpu}");
        }
    }

    [Test]
    public void TopKOfOneIsTheGreedyToken()
    {
        var rng = new Random(3);
        const int rows = 16, vocab = 100;
        var logits = TestUtil.RandomFloats(rng, rows * vocab, 4f);
        foreach (bool cpu in Flavours)
        {
            var greedy = Sample(cpu, logits, rows, new SamplingOptions(0f));
            var (tokens, stats) = Sample(cpu, logits, rows, new SamplingOptions(1f, TopK: 1));
            Assert.That(tokens, Is.EqualTo(greedy.Tokens), $"cpu {cpu}");
            for (int r = 0; r < rows; r++)
            {
                var s = stats.AsSpan(r * SamplingOptions.StatCount, SamplingOptions.StatCount).ToArray();
                Assert.That(s, Is.EqualTo(new double[] { 0, 1, 1, 0 }).Within(1e-6), $"cpu {cpu}, row {r}: a one-hot distribution");
            }
        }
    }

    [Test]
    public void TopKKeepsEveryTokenTiedWithTheKth()
    {
        double[] row = [1, 3, 2, 2, 0];
        double kept = Math.Exp(3) + 2 * Math.Exp(2);
        double[] q = [0, Math.Exp(3) / kept, Math.Exp(2) / kept, Math.Exp(2) / kept, 0];
        foreach (bool cpu in Flavours)
        {
            var (tokens, stats) = Sample(cpu, Repeat(row, 64), 64, new SamplingOptions(1f, TopK: 2), seed: 9);
            AssertDraws(tokens, q, 9, 0, cpu ? "cpu" : "reference");
            AssertStats(tokens, stats, q, cpu ? "cpu" : "reference");
        }
    }

    [Test]
    public void TopPHalfKeepsOnlyTheTopTokenWhenItHoldsHalf()
    {
        var logits = Repeat([0, Ln2, Ln4], 32);
        double[] q = [0, 0, 1];
        foreach (bool cpu in Flavours)
        {
            var (tokens, stats) = Sample(cpu, logits, 32, new SamplingOptions(1f, TopP: 0.5f));
            Assert.That(tokens, Is.All.EqualTo(2), $"cpu {cpu}: p = 4/7 reaches 0.5 alone");
            AssertStats(tokens, stats, q, cpu ? "cpu" : "reference");
        }
    }

    [TestCase(0.6f, new[] { 0, 0, 3 / 7.0, 4 / 7.0 })]
    [TestCase(0.75f, new[] { 0, 2 / 9.0, 3 / 9.0, 4 / 9.0 })]
    [TestCase(0.3f, new[] { 0, 0, 0, 1.0 })]
    public void TopPKeepsTheTokenThatCrosses(float topP, double[] q)
    {
        var logits = Repeat([Math.Log(0.1), Math.Log(0.2), Math.Log(0.3), Math.Log(0.4)], 64);
        foreach (bool cpu in Flavours)
        {
            var (tokens, stats) = Sample(cpu, logits, 64, new SamplingOptions(1f, TopP: topP), seed: 21, stream: 2);
            AssertDraws(tokens, q, 21, 2, cpu ? "cpu" : "reference");
            AssertStats(tokens, stats, q, cpu ? "cpu" : "reference");
        }
    }

    [Test]
    public void TopPKeepsAWholeGroupOfTies()
    {
        var logits = Repeat([2, 2, 2, 2, -1], 32);
        double all = 4 * Math.Exp(2);
        double[] q = [Math.Exp(2) / all, Math.Exp(2) / all, Math.Exp(2) / all, Math.Exp(2) / all, 0];
        foreach (bool cpu in Flavours)
        {
            var (tokens, stats) = Sample(cpu, logits, 32, new SamplingOptions(1f, TopP: 0.3f), seed: 4);
            AssertDraws(tokens, q, 4, 0, cpu ? "cpu" : "reference");
            AssertStats(tokens, stats, q, cpu ? "cpu" : "reference");
        }
    }

    [Test]
    public void DrawBelowTheFirstStepTakesTheFirstKeptIdAndAboveTheLastTheLastKeptId()
    {
        ulong low = FindSeed(u => u < 0.01), high = FindSeed(u => u > 0.99);
        var logits = Repeat([0, 2, 0, 2.5, 1], 1);
        foreach (bool cpu in Flavours)
        {
            Assert.That(Sample(cpu, logits, 1, new SamplingOptions(1f, TopK: 2), seed: low).Tokens[0], Is.EqualTo(1), $"cpu {cpu}: u < 0.01");
            Assert.That(Sample(cpu, logits, 1, new SamplingOptions(1f, TopK: 2), seed: high).Tokens[0], Is.EqualTo(3), $"cpu {cpu}: u > 0.99");
            Assert.That(Sample(cpu, logits, 1, new SamplingOptions(1f), seed: low).Tokens[0], Is.EqualTo(0), $"cpu {cpu}: uncut, u < 0.01 < p(0)");
        }
    }

    static ulong FindSeed(Func<float, bool> wanted)
    {
        for (ulong seed = 0; ; seed++)
            if (wanted(Philox.Uniform(seed, 0, 0))) return seed;
    }

    [Test]
    public void MinusInfinityLogitsAreNeverDrawn()
    {
        var logits = Repeat([float.NegativeInfinity, 0, float.NegativeInfinity, Ln3, float.MinValue], 64);
        double[] q = [0, 0.25, 0, 0.75, 0];
        foreach (var options in new[] { new SamplingOptions(1f), new SamplingOptions(1f, TopK: 3), new SamplingOptions(1f, TopP: 0.99f) })
        foreach (bool cpu in Flavours)
        {
            var (tokens, stats) = Sample(cpu, logits, 64, options, seed: 8);
            AssertDraws(tokens, q, 8, 0, $"{options}, cpu {cpu}");
            AssertStats(tokens, stats, q, $"{options}, cpu {cpu}");
        }
    }

    [Test]
    public void DrawFrequenciesMatchTheProbabilities()
    {
        double[] row = [0.5, -1, 1.2, 0, 0.9, -0.3];
        const int rows = 100, streams = 200, vocab = 6;
        var logits = Repeat(row, rows);
        var p = row.Select(Math.Exp).ToArray();
        double sum = p.Sum();
        foreach (var options in new[] { new SamplingOptions(1f), new SamplingOptions(1f, TopK: 4, TopP: 0.8f) })
        foreach (bool cpu in Flavours)
        {
            var q = p.Select(x => x / sum).ToArray();
            if (options.TopK > 0)
            {
                // top-k 4 drops ids 1 and 5; the rest renormalised are 2: 0.39, 4: 0.29, 0: 0.20, 3: 0.12, and top-p 0.8 keeps 2, 4, 0.
                q[1] = q[5] = q[3] = 0;
                q = q.Select(x => x / q.Sum()).ToArray();
            }
            var counts = new int[vocab];
            for (ulong s = 0; s < streams; s++)
                foreach (int t in Sample(cpu, logits, rows, options, seed: 77, stream: s).Tokens) counts[t]++;
            double chiSquare = 0;
            int categories = 0;
            for (int i = 0; i < vocab; i++)
            {
                if (q[i] == 0)
                {
                    Assert.That(counts[i], Is.Zero, $"{options}, cpu {cpu}: token {i} was cut");
                    continue;
                }
                double expected = q[i] * rows * streams;
                chiSquare += (counts[i] - expected) * (counts[i] - expected) / expected;
                categories++;
            }
            // χ² with at most 5 degrees of freedom exceeds 25 with probability below 2e-4.
            Assert.That(chiSquare, Is.LessThan(25), $"{options}, cpu {cpu}: counts {string.Join(", ", counts)} over {categories} tokens");
        }
    }

    /// <summary>
    /// Rows of four kinds, by row index: moderate N(0, 2²), peaked N(0, 6²), small integers (large groups of ties), and
    /// N(0, 3²) with about 3% of the ids masked to −∞ or float.MinValue.
    /// </summary>
    static float[] RandomLogits(Random rng, int rows, int vocab)
    {
        var logits = new float[rows * vocab];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < vocab; c++)
            {
                double normal = Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
                logits[r * vocab + c] = (r % 4) switch
                {
                    0 => (float)(2 * normal),
                    1 => (float)(6 * normal),
                    2 => rng.Next(-3, 4),
                    _ => rng.NextDouble() < 0.03 && c > 0 ? (rng.Next(2) == 0 ? float.NegativeInfinity : float.MinValue) : (float)(3 * normal),
                };
            }
        }
        return logits;
    }

    static int RowsFor(int vocab) => vocab switch { 1 => 8, 7 => 64, 1000 => 16, _ => 8 };

    [Test]
    public void CpuMatchesReference(
        [Values(1, 7, 1000, 50257)] int vocab,
        [Values(0f, 0.7f, 1f, 1.3f)] float temperature,
        [Values(0, 1, 40)] int topK,
        [Values(1f, 0.9f, 0.5f)] float topP)
    {
        int rows = RowsFor(vocab);
        var rng = new Random(vocab * 1009 + topK * 31 + (int)(temperature * 10) + (int)(topP * 100));
        var logits = RandomLogits(rng, rows, vocab);
        var options = new SamplingOptions(temperature, topK, topP);
        var expected = Sample(false, logits, rows, options, seed: 1234, stream: (ulong)vocab);
        var actual = Sample(true, logits, rows, options, seed: 1234, stream: (ulong)vocab);
        Assert.That(actual.Tokens, Is.EqualTo(expected.Tokens));
        for (int i = 0; i < actual.Stats.Length; i++)
            AssertStat(actual.Stats[i], expected.Stats[i], $"row {i / SamplingOptions.StatCount}, stat {i % SamplingOptions.StatCount}");
    }

    [Test]
    public void CpuDeviceSampleTokensMatchesReference()
    {
        const int rows = 12, vocab = 1000;
        var logits = RandomLogits(new Random(42), rows, vocab);
        var options = new SamplingOptions(0.9f, TopK: 40, TopP: 0.9f);
        using var device = new CpuDevice();
        using var logitsT = device.FromArray(logits, rows, vocab);
        using var tokensT = device.Allocate(DType.I32, rows);
        using var statsT = device.Allocate(DType.F32, rows, SamplingOptions.StatCount);
        device.SampleTokens(logitsT, options, 99, 7, tokensT, statsT);

        var expected = Sample(false, logits, rows, options, seed: 99, stream: 7);
        Assert.That(device.ToIntArray(tokensT), Is.EqualTo(expected.Tokens));
        var stats = device.ToArray(statsT);
        for (int i = 0; i < stats.Length; i++) AssertStat(stats[i], expected.Stats[i], $"stat {i}");
    }

    [Test]
    public void RowsWithoutAFiniteMaximumAreRejected()
    {
        foreach (float bad in new[] { float.NaN, float.PositiveInfinity })
        foreach (bool cpu in Flavours)
        {
            var logits = new float[] { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19 };
            logits[17] = bad;
            var ex = Assert.Throws<ArgumentException>(() => Sample(cpu, logits, 2, new SamplingOptions(1f)));
            Assert.That(ex!.Message, Does.Contain("row 1"), $"{bad}, cpu {cpu}");
        }
        foreach (bool cpu in Flavours)
            Assert.Throws<ArgumentException>(() => Sample(cpu, [float.NegativeInfinity, float.NegativeInfinity], 1, new SamplingOptions(0f)));
    }

    [Test]
    public void BadOptionsAndShortSpansAreRejected()
    {
        var tokens = new int[2];
        var stats = new float[8];
        Assert.Throws<ArgumentException>(() => Cpu.Sampling.SampleTokens(new float[6], 2, 3, new SamplingOptions(1f, TopP: 0f), 0, 0, tokens, stats));
        Assert.Throws<ArgumentException>(() => Cpu.Sampling.SampleTokens(new float[6], 2, 3, new SamplingOptions(-1f), 0, 0, tokens, stats));
        Assert.Throws<ArgumentException>(() => Cpu.Sampling.SampleTokens(new float[5], 2, 3, new SamplingOptions(1f), 0, 0, tokens, stats));
        Assert.Throws<ArgumentException>(() => Cpu.Sampling.SampleTokens(new float[6], 2, 3, new SamplingOptions(1f), 0, 0, tokens, new float[7]));
    }
}
