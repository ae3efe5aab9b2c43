using DiffuSharp.Kernels;
using DiffuSharp.Runtime;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// Token sampling through <see cref="Device.SampleTokens"/> on every device.
/// <para>
/// On distributions small enough to work out by hand (probabilities, cuts, the draw and the four stats) and in draw
/// frequencies, the device and the float64 reference each against the hand-derived answer. These inputs come from
/// fixed seeds: the flavours agree on every token unless a draw lands within float rounding of a CDF step, and these
/// rows keep clear of that.
/// </para>
/// <para>
/// On fresh random logits, against the reference and the CPU device. A float32 sampler can only match a float64 one
/// where the draw is not decided by rounding, so every row is first tested for robustness on the reference itself: u
/// must lie at least 1e-5 inside the drawn token's interval of the final distribution, and the token and stats must
/// not change when TopP moves by a relative 1e-5. Greedy rows and the top-k cut compare identical float logits, so
/// they are always robust, ties included. Robust rows must match exactly (tokens) and to 1e-5 relative / 1e-6
/// absolute (stats); at least half the rows of a test must be robust, so the comparison never passes vacuously.
/// Shapes stay small for the CPU simulator (CpuSamplingTests has the CPU's rows up to GPT-2's vocabulary).
/// </para>
/// </summary>
public sealed class SamplingTests(string deviceName) : DeviceFixture(deviceName)
{
    static readonly double Ln2 = Math.Log(2), Ln3 = Math.Log(3), Ln4 = Math.Log(4);

    const double RelativeTolerance = 1e-5;
    const double AbsoluteTolerance = 1e-6;
    /// <summary>How far inside its interval of the cumulative distribution u must lie for a row to be compared: well above
    /// the float32 rounding of the kernels' masses and prefix sums (about 1e-7).</summary>
    const double MinDrawMargin = 1e-5;
    /// <summary>The relative TopP nudge of the robustness test.</summary>
    const float TopPNudge = 1e-5f;

    static readonly float[] Temperatures = [0f, 0.7f, 1f, 1.3f];
    static readonly int[] TopKs = [0, 1, 40];
    static readonly float[] TopPs = [1f, 0.9f, 0.5f];

    CpuDevice cpu = null!;

    /// <summary>The CPU device the device's draws on random logits are compared with.</summary>
    [OneTimeSetUp]
    public void CreateCpuDevice() => cpu = new CpuDevice();

    [OneTimeTearDown]
    public void DisposeCpuDevice() => cpu?.Dispose();

    /// <summary>What the hand-worked tests draw with: the float64 reference (null) and the device.</summary>
    Device?[] Flavours => [null, device];

    static string NameOf(Device? on) => on?.Name ?? "reference";

    /// <summary>Draws on a device, or with the reference when <paramref name="on"/> is null; stats come back as double either way.</summary>
    internal static (int[] Tokens, double[] Stats) Sample(Device? on, float[] logits, int rows, SamplingOptions options, ulong seed = 1, ulong stream = 0,
        SampleRows keys = default)
    {
        int vocab = logits.Length / rows;
        if (on is null) return Reference(TestUtil.ToDouble(logits), rows, vocab, options, seed, stream, keys);
        using var z = on.FromArray(logits, rows, vocab);
        using var tokens = on.Allocate(DType.I32, rows);
        using var stats = on.Allocate(DType.F32, rows, SamplingOptions.StatCount);
        on.SampleTokens(z, options, seed, stream, tokens, stats, keys);
        return (on.ToIntArray(tokens), TestUtil.ToDouble(on.ToArray(stats)));
    }

    static (int[] Tokens, double[] Stats) Reference(double[] logits, int rows, int vocab, SamplingOptions options, ulong seed, ulong stream, SampleRows keys = default)
    {
        var tokens = new int[rows];
        var stats = new double[rows * SamplingOptions.StatCount];
        Ref.Sampling.SampleTokens(logits, rows, vocab, options, seed, stream, tokens, stats, keys);
        return (tokens, stats);
    }

    // ---- hand-worked distributions ---------------------------------------------------------------

    /// <summary>One row repeated: row r draws with u = Philox.Uniform(seed, stream, r), so rows act as independent draws.</summary>
    static float[] Repeat(double[] row, int rows)
    {
        var logits = new float[row.Length * rows];
        for (int i = 0; i < logits.Length; i++) logits[i] = (float)row[i % row.Length];
        return logits;
    }

    internal static void AssertStat(double actual, double expected, string what) =>
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
        foreach (var on in Flavours)
        {
            var (tokens, stats) = Sample(on, logits, 64, new SamplingOptions(1f), seed: 11, stream: 3);
            AssertDraws(tokens, q, 11, 3, NameOf(on));
            AssertStats(tokens, stats, q, NameOf(on));
        }
    }

    [Test]
    public void TemperatureDividesTheLogits()
    {
        var logits = Repeat([0, Ln2, Ln3], 32);
        double[] q = [1 / 14.0, 4 / 14.0, 9 / 14.0];
        foreach (var on in Flavours)
        {
            var (tokens, stats) = Sample(on, logits, 32, new SamplingOptions(0.5f), seed: 5);
            AssertDraws(tokens, q, 5, 0, NameOf(on));
            AssertStats(tokens, stats, q, NameOf(on));
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
        foreach (var on in Flavours)
        {
            var (tokens, stats) = Sample(on, logits, 8, options);
            Assert.That(tokens, Is.All.EqualTo(1), $"{options}, {NameOf(on)}");
            AssertStats(tokens, stats, p, $"{options}, {NameOf(on)}");
        }
    }

    [Test]
    public void TopKOfOneIsTheGreedyToken()
    {
        var rng = new Random(3);
        const int rows = 16, vocab = 100;
        var logits = TestUtil.RandomFloats(rng, rows * vocab, 4f);
        foreach (var on in Flavours)
        {
            var greedy = Sample(on, logits, rows, new SamplingOptions(0f));
            var (tokens, stats) = Sample(on, logits, rows, new SamplingOptions(1f, TopK: 1));
            Assert.That(tokens, Is.EqualTo(greedy.Tokens), NameOf(on));
            for (int r = 0; r < rows; r++)
            {
                var s = stats.AsSpan(r * SamplingOptions.StatCount, SamplingOptions.StatCount).ToArray();
                Assert.That(s, Is.EqualTo(new double[] { 0, 1, 1, 0 }).Within(1e-6), $"{NameOf(on)}, row {r}: a one-hot distribution");
            }
        }
    }

    [Test]
    public void TopKKeepsEveryTokenTiedWithTheKth()
    {
        double[] row = [1, 3, 2, 2, 0];
        double kept = Math.Exp(3) + 2 * Math.Exp(2);
        double[] q = [0, Math.Exp(3) / kept, Math.Exp(2) / kept, Math.Exp(2) / kept, 0];
        foreach (var on in Flavours)
        {
            var (tokens, stats) = Sample(on, Repeat(row, 64), 64, new SamplingOptions(1f, TopK: 2), seed: 9);
            AssertDraws(tokens, q, 9, 0, NameOf(on));
            AssertStats(tokens, stats, q, NameOf(on));
        }
    }

    [Test]
    public void TopPHalfKeepsOnlyTheTopTokenWhenItHoldsHalf()
    {
        var logits = Repeat([0, Ln2, Ln4], 32);
        double[] q = [0, 0, 1];
        foreach (var on in Flavours)
        {
            var (tokens, stats) = Sample(on, logits, 32, new SamplingOptions(1f, TopP: 0.5f));
            Assert.That(tokens, Is.All.EqualTo(2), $"{NameOf(on)}: p = 4/7 reaches 0.5 alone");
            AssertStats(tokens, stats, q, NameOf(on));
        }
    }

    [TestCase(0.6f, new[] { 0, 0, 3 / 7.0, 4 / 7.0 })]
    [TestCase(0.75f, new[] { 0, 2 / 9.0, 3 / 9.0, 4 / 9.0 })]
    [TestCase(0.3f, new[] { 0, 0, 0, 1.0 })]
    public void TopPKeepsTheTokenThatCrosses(float topP, double[] q)
    {
        var logits = Repeat([Math.Log(0.1), Math.Log(0.2), Math.Log(0.3), Math.Log(0.4)], 64);
        foreach (var on in Flavours)
        {
            var (tokens, stats) = Sample(on, logits, 64, new SamplingOptions(1f, TopP: topP), seed: 21, stream: 2);
            AssertDraws(tokens, q, 21, 2, NameOf(on));
            AssertStats(tokens, stats, q, NameOf(on));
        }
    }

    [Test]
    public void TopPKeepsAWholeGroupOfTies()
    {
        var logits = Repeat([2, 2, 2, 2, -1], 32);
        double all = 4 * Math.Exp(2);
        double[] q = [Math.Exp(2) / all, Math.Exp(2) / all, Math.Exp(2) / all, Math.Exp(2) / all, 0];
        foreach (var on in Flavours)
        {
            var (tokens, stats) = Sample(on, logits, 32, new SamplingOptions(1f, TopP: 0.3f), seed: 4);
            AssertDraws(tokens, q, 4, 0, NameOf(on));
            AssertStats(tokens, stats, q, NameOf(on));
        }
    }

    [Test]
    public void DrawBelowTheFirstStepTakesTheFirstKeptIdAndAboveTheLastTheLastKeptId()
    {
        ulong low = FindSeed(u => u < 0.01), high = FindSeed(u => u > 0.99);
        var logits = Repeat([0, 2, 0, 2.5, 1], 1);
        foreach (var on in Flavours)
        {
            Assert.That(Sample(on, logits, 1, new SamplingOptions(1f, TopK: 2), seed: low).Tokens[0], Is.EqualTo(1), $"{NameOf(on)}: u < 0.01");
            Assert.That(Sample(on, logits, 1, new SamplingOptions(1f, TopK: 2), seed: high).Tokens[0], Is.EqualTo(3), $"{NameOf(on)}: u > 0.99");
            Assert.That(Sample(on, logits, 1, new SamplingOptions(1f), seed: low).Tokens[0], Is.EqualTo(0), $"{NameOf(on)}: uncut, u < 0.01 < p(0)");
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
        foreach (var on in Flavours)
        {
            var (tokens, stats) = Sample(on, logits, 64, options, seed: 8);
            AssertDraws(tokens, q, 8, 0, $"{options}, {NameOf(on)}");
            AssertStats(tokens, stats, q, $"{options}, {NameOf(on)}");
        }
    }

    [Test]
    public void DrawFrequenciesMatchTheProbabilities()
    {
        IgnoreOnSimulator("40,000 draws in 400 launches");
        double[] row = [0.5, -1, 1.2, 0, 0.9, -0.3];
        const int rows = 100, streams = 200, vocab = 6;
        var logits = Repeat(row, rows);
        var p = row.Select(Math.Exp).ToArray();
        double sum = p.Sum();
        foreach (var options in new[] { new SamplingOptions(1f), new SamplingOptions(1f, TopK: 4, TopP: 0.8f) })
        foreach (var on in Flavours)
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
                foreach (int t in Sample(on, logits, rows, options, seed: 77, stream: s).Tokens) counts[t]++;
            double chiSquare = 0;
            int categories = 0;
            for (int i = 0; i < vocab; i++)
            {
                if (q[i] == 0)
                {
                    Assert.That(counts[i], Is.Zero, $"{options}, {NameOf(on)}: token {i} was cut");
                    continue;
                }
                double expected = q[i] * rows * streams;
                chiSquare += (counts[i] - expected) * (counts[i] - expected) / expected;
                categories++;
            }
            // χ² with at most 5 degrees of freedom exceeds 25 with probability below 2e-4.
            Assert.That(chiSquare, Is.LessThan(25), $"{options}, {NameOf(on)}: counts {string.Join(", ", counts)} over {categories} tokens");
        }
    }

    // ---- random logits against the reference and the CPU device --------------------------------------

    /// <summary>
    /// Every temperature with every (top-k, top-p) pair on rows of 7 and 1000; on rows of 1 and 5000 each temperature
    /// takes a third of the pairs, so the three temperatures share them out (the simulator pays per group barrier).
    /// </summary>
    [Test]
    public void MatchesReferenceAndCpu([Values(1, 7, 1000, 5000)] int vocab, [ValueSource(nameof(Temperatures))] float temperature)
    {
        var rng = TestUtil.NewRandom();
        int rows = vocab switch { 1 => 4, 7 => 4, 1000 => 2, _ => 1 };
        bool thirds = vocab is 1 or 5000;
        int share = Array.IndexOf(Temperatures, temperature) - 1;
        var tally = new Tally();
        int pair = 0;
        foreach (var options in OptionsFor(temperature))
        {
            if (thirds && !options.Greedy && pair++ % 3 != share) continue;
            Check(GaussianLogits(rng, rows * vocab), rows, vocab, options, (ulong)rng.NextInt64(), (ulong)rng.NextInt64(), tally);
        }
        tally.AssertSomeRobust();
    }

    /// <summary>Logits on a coarse grid tie often, at the top, at the K-th value and at the top-p edge: ties are kept whole.</summary>
    [Test]
    public void TiedLogitsMatchReference([Values(7, 1000)] int vocab)
    {
        var rng = TestUtil.NewRandom();
        int rows = vocab == 7 ? 4 : 2;
        var tally = new Tally();
        foreach (var options in new[] { new SamplingOptions(0f), new SamplingOptions(1f, 1), new SamplingOptions(1f, 3),
                     new SamplingOptions(1f, 0, 0.5f), new SamplingOptions(0.7f, 40, 0.9f) })
        {
            var logits = new float[rows * vocab];
            for (int i = 0; i < logits.Length; i++) logits[i] = rng.Next(-6, 7) * 0.5f;
            Check(logits, rows, vocab, options, (ulong)rng.NextInt64(), (ulong)rng.NextInt64(), tally);
        }
        tally.AssertSomeRobust();
    }

    /// <summary>Banned tokens (logit −∞) have probability 0: never drawn, and left out of Σ p log p.</summary>
    [Test]
    public void BannedTokensAreNeverDrawn([Values(7, 1000)] int vocab)
    {
        var rng = TestUtil.NewRandom();
        int rows = vocab == 7 ? 8 : 2;
        var tally = new Tally();
        foreach (var options in new[] { new SamplingOptions(1.3f), new SamplingOptions(0.7f, 40, 0.9f), new SamplingOptions(0f) })
        {
            var logits = GaussianLogits(rng, rows * vocab);
            for (int i = 0; i < logits.Length; i++)
                if (i % vocab != 0 && rng.Next(3) == 0) logits[i] = float.NegativeInfinity;
            var tokens = Check(logits, rows, vocab, options, (ulong)rng.NextInt64(), (ulong)rng.NextInt64(), tally);
            for (int r = 0; r < rows; r++)
                Assert.That(logits[r * vocab + tokens[r]], Is.GreaterThan(float.NegativeInfinity), $"row {r} drew a banned token");
        }
        tally.AssertSomeRobust();
    }

    /// <summary>Same seed and stream, same draw and stats, bit for bit; another stream draws afresh.</summary>
    [Test]
    public void DrawsAreReproducibleAndKeyedByStream()
    {
        var rng = TestUtil.NewRandom();
        const int rows = 16, vocab = 7;
        var logits = TestUtil.RandomFloats(rng, rows * vocab, 1f);
        var options = new SamplingOptions(1f);
        var (first, firstStats) = Sample(device, logits, rows, options, 5, 1);
        var (again, againStats) = Sample(device, logits, rows, options, 5, 1);
        var (other, _) = Sample(device, logits, rows, options, 5, 2);
        Assert.That(again, Is.EqualTo(first));
        Assert.That(againStats, Is.EqualTo(firstStats));
        Assert.That(other, Is.Not.EqualTo(first));
    }

    /// <summary>
    /// Rows [s, s + w) of each of B sequences of N positions, sampled alone with their window's keys, draw exactly what
    /// the same rows draw in a call over the whole sequences (the denoising cache's windows).
    /// </summary>
    [Test]
    public void AWindowOfRowsDrawsWhatTheWholeSequencesDraw()
    {
        var rng = TestUtil.NewRandom();
        const int batch = 3, length = 9, start = 2, width = 4, vocab = 11;
        var logits = TestUtil.RandomFloats(rng, batch * length * vocab, 2f);
        var window = new float[batch * width * vocab];
        for (int b = 0; b < batch; b++)
            Array.Copy(logits, (b * length + start) * vocab, window, b * width * vocab, width * vocab);
        var options = new SamplingOptions(1f);
        foreach (var on in Flavours)
        {
            var (whole, wholeStats) = Sample(on, logits, batch * length, options, 3, 4);
            var (part, partStats) = Sample(on, window, batch * width, options, 3, 4, SampleRows.Window(start, width, length));
            for (int b = 0; b < batch; b++)
                for (int i = 0; i < width; i++)
                {
                    int r = b * length + start + i, w = b * width + i;
                    Assert.That(part[w], Is.EqualTo(whole[r]), $"{NameOf(on)}: window row {w}");
                    for (int c = 0; c < SamplingOptions.StatCount; c++)
                        Assert.That(partStats[w * SamplingOptions.StatCount + c], Is.EqualTo(wholeStats[r * SamplingOptions.StatCount + c]), $"{NameOf(on)}: stat {c} of window row {w}");
                }
            var (plain, _) = Sample(on, window, batch * width, options, 3, 4);
            Assert.That(plain, Is.Not.EqualTo(part), $"{NameOf(on)}: without the window's keys the rows draw afresh");
        }
    }

    static IEnumerable<SamplingOptions> OptionsFor(float temperature)
    {
        if (temperature == 0f)
        {
            yield return new SamplingOptions(0f);
            yield break;
        }
        foreach (int topK in TopKs)
            foreach (float topP in TopPs)
                yield return new SamplingOptions(temperature, topK, topP);
    }

    /// <summary>Logits ~ N(0, 3²), like a language model's: a few clear leaders over a long tail, rarely two close at the top.</summary>
    static float[] GaussianLogits(Random rng, int n)
    {
        var z = new float[n];
        for (int i = 0; i < n; i++)
            z[i] = (float)(3 * Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        return z;
    }

    /// <summary>Samples on the device, the CPU device and the reference; asserts agreement on robust rows; returns the device's tokens.</summary>
    int[] Check(float[] logits, int rows, int vocab, SamplingOptions options, ulong seed, ulong stream, Tally tally)
    {
        var z = TestUtil.ToDouble(logits);
        var (expected, expectedStats) = Reference(z, rows, vocab, options, seed, stream);
        var robust = RobustRows(z, rows, vocab, options, seed, stream, expected, expectedStats);
        var (tokens, stats) = Sample(device, logits, rows, options, seed, stream);
        var (cpuTokens, _) = Sample(cpu, logits, rows, options, seed, stream);
        for (int r = 0; r < rows; r++)
        {
            Assert.That(tokens[r], Is.InRange(0, vocab - 1), $"row {r} token out of range ({options})");
            tally.Add(robust[r]);
            if (!robust[r]) continue;
            string where = $"row {r} of {rows}, vocab {vocab}, {options}, seed {seed}, stream {stream}";
            Assert.That(tokens[r], Is.EqualTo(expected[r]), $"token vs reference, {where}");
            Assert.That(cpuTokens[r], Is.EqualTo(tokens[r]), $"token vs CPU device, {where}");
            for (int s = 0; s < SamplingOptions.StatCount; s++)
            {
                double want = expectedStats[r * SamplingOptions.StatCount + s];
                double got = stats[r * SamplingOptions.StatCount + s];
                Assert.That(got, Is.EqualTo(want).Within(AbsoluteTolerance + RelativeTolerance * Math.Abs(want)), $"stat {s}, {where}");
            }
        }
        return tokens;
    }

    /// <summary>
    /// Rows whose reference draw rounding cannot flip. Greedy rows always qualify (argmax and the top-k cut compare
    /// the same float logits on every flavour). Otherwise u must lie at least <see cref="MinDrawMargin"/> inside the
    /// drawn token's interval of the final distribution, and with top-p the token and stats must not change at all
    /// when TopP moves by a relative <see cref="TopPNudge"/> (the kept set sits clear of the mass target).
    /// </summary>
    static bool[] RobustRows(double[] z, int rows, int vocab, SamplingOptions options, ulong seed, ulong stream, int[] tokens, double[] stats)
    {
        var robust = new bool[rows];
        for (int r = 0; r < rows; r++)
            robust[r] = options.Greedy || DrawMargin(z.AsSpan(r * vocab, vocab), options.Temperature, tokens[r],
                stats[r * SamplingOptions.StatCount + SamplingOptions.MaxProb], Philox.Uniform(seed, stream, (ulong)r)) >= MinDrawMargin;
        if (!options.Greedy && options.TopP < 1f)
        {
            foreach (float factor in new[] { 1f - TopPNudge, 1f + TopPNudge })
            {
                var (moved, movedStats) = Reference(z, rows, vocab, options with { TopP = Math.Min(1f, options.TopP * factor) }, seed, stream);
                for (int r = 0; r < rows; r++)
                {
                    robust[r] &= moved[r] == tokens[r];
                    for (int s = 0; s < SamplingOptions.StatCount; s++)
                        robust[r] &= movedStats[r * SamplingOptions.StatCount + s] == stats[r * SamplingOptions.StatCount + s];
                }
            }
        }
        return robust;
    }

    /// <summary>
    /// min(u − C(before token), C(token) − u) in the reference's final distribution of one row. The kept set is read
    /// back from the reference's MaxProb: with e = exp(z / T − max), the kept mass is 1 / MaxProb, reached by the
    /// most probable whole tie groups.
    /// </summary>
    static double DrawMargin(ReadOnlySpan<double> z, double temperature, int token, double maxProb, double u)
    {
        int vocab = z.Length;
        var scaled = new double[vocab];
        double max = double.NegativeInfinity;
        for (int c = 0; c < vocab; c++)
        {
            scaled[c] = z[c] / temperature;
            max = Math.Max(max, scaled[c]);
        }
        var e = new double[vocab];
        for (int c = 0; c < vocab; c++) e[c] = Math.Exp(scaled[c] - max);
        var order = new int[vocab];
        for (int c = 0; c < vocab; c++) order[c] = c;
        Array.Sort(order, (a, b) => scaled[b].CompareTo(scaled[a]));

        double keptMass = 1 / maxProb, mass = 0, threshold = scaled[order[vocab - 1]];
        for (int j = 0; j < vocab; j++)
        {
            mass += e[order[j]];
            bool endOfTies = j + 1 == vocab || scaled[order[j + 1]] != scaled[order[j]];
            if (endOfTies && mass >= keptMass * (1 - 1e-9))
            {
                threshold = scaled[order[j]];
                break;
            }
        }
        double before = 0, through = 0;
        for (int c = 0; c <= token; c++)
        {
            if (scaled[c] < threshold) continue;
            before = through;
            through += e[c] / mass;
        }
        return Math.Min(u - before, through - u);
    }

    /// <summary>Counts the rows compared; at least half (and at least one) must be robust, or the test proves little.</summary>
    sealed class Tally
    {
        int rows, robust;

        public void Add(bool isRobust)
        {
            rows++;
            if (isRobust) robust++;
        }

        public void AssertSomeRobust() =>
            Assert.That(robust, Is.GreaterThanOrEqualTo(Math.Max(1, rows / 2)), $"only {robust} of {rows} rows were robust enough to compare");
    }
}
