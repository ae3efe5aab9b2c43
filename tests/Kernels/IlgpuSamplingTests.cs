using DiffuSharp.Kernels;
using DiffuSharp.Runtime;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// The ILGPU sampling kernel, through <see cref="Device.SampleTokens"/>, against the float64 reference and the CPU
/// device on fresh random logits. A float32 sampler can only match a float64 one where the draw is not decided by
/// rounding, so every row is first tested for robustness on the reference itself: u must lie at least 1e-5 inside
/// the drawn token's interval of the final distribution, and the token and stats must not change when TopP moves
/// by a relative 1e-5. Greedy rows and the top-k cut compare identical float logits, so they are always robust,
/// ties included. Robust rows must match exactly (tokens) and to 1e-5 relative / 1e-6 absolute (stats); at least
/// half the rows of a test must be robust, so the comparison never passes vacuously. Shapes stay small for the CPU simulator.
/// </summary>
[TestFixture(IlgpuBackend.CpuSimulator)]
[TestFixture(IlgpuBackend.Cuda)]
public class IlgpuSamplingTests(IlgpuBackend backend) : IlgpuFixture(backend)
{
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

    /// <summary>The CPU device the GPU's draws are compared with (the base fixture made the ILGPU one).</summary>
    [OneTimeSetUp]
    public void CreateCpuDevice() => cpu = new CpuDevice();

    [OneTimeTearDown]
    public void DisposeCpuDevice() => cpu?.Dispose();

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
        var (first, firstStats) = Sample(device, logits, rows, vocab, options, 5, 1);
        var (again, againStats) = Sample(device, logits, rows, vocab, options, 5, 1);
        var (other, _) = Sample(device, logits, rows, vocab, options, 5, 2);
        Assert.That(again, Is.EqualTo(first));
        Assert.That(againStats, Is.EqualTo(firstStats));
        Assert.That(other, Is.Not.EqualTo(first));
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

    static (int[] Tokens, float[] Stats) Sample(Device on, float[] logits, int rows, int vocab, SamplingOptions options, ulong seed, ulong stream)
    {
        using var z = on.FromArray(logits, rows, vocab);
        using var tokens = on.Allocate(DType.I32, rows);
        using var stats = on.Allocate(DType.F32, rows, SamplingOptions.StatCount);
        on.SampleTokens(z, options, seed, stream, tokens, stats);
        return (on.ToIntArray(tokens), on.ToArray(stats));
    }

    static (int[] Tokens, double[] Stats) Reference(double[] logits, int rows, int vocab, SamplingOptions options, ulong seed, ulong stream)
    {
        var tokens = new int[rows];
        var stats = new double[rows * SamplingOptions.StatCount];
        Ref.Sampling.SampleTokens(logits, rows, vocab, options, seed, stream, tokens, stats);
        return (tokens, stats);
    }

    /// <summary>Samples on the device, the CPU device and the reference; asserts agreement on robust rows; returns the device's tokens.</summary>
    int[] Check(float[] logits, int rows, int vocab, SamplingOptions options, ulong seed, ulong stream, Tally tally)
    {
        var z = TestUtil.ToDouble(logits);
        var (expected, expectedStats) = Reference(z, rows, vocab, options, seed, stream);
        var robust = RobustRows(z, rows, vocab, options, seed, stream, expected, expectedStats);
        var (tokens, stats) = Sample(device, logits, rows, vocab, options, seed, stream);
        var (cpuTokens, _) = Sample(cpu, logits, rows, vocab, options, seed, stream);
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
