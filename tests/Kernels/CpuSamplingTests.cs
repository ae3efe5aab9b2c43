using DiffuSharp.Kernels;
using DiffuSharp.Runtime;
using Cpu = DiffuSharp.Kernels.Cpu;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// What only the CPU's sampling kernel has, beside what <see cref="SamplingTests"/> runs on every device: agreement
/// with the float64 reference on every row, not only the robust ones, on fixed random rows up to GPT-2's vocabulary
/// (the CPU's sums were checked to keep these draws clear of their CDF steps), and its checks of the rows, options and
/// spans it is handed (the reference checks the rows too).
/// </summary>
public class CpuSamplingTests
{
    CpuDevice cpu = null!;

    [OneTimeSetUp]
    public void CreateDevice() => cpu = new CpuDevice();

    [OneTimeTearDown]
    public void DisposeDevice() => cpu?.Dispose();

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
        var expected = SamplingTests.Sample(null, logits, rows, options, seed: 1234, stream: (ulong)vocab);
        var actual = SamplingTests.Sample(cpu, logits, rows, options, seed: 1234, stream: (ulong)vocab);
        Assert.That(actual.Tokens, Is.EqualTo(expected.Tokens));
        for (int i = 0; i < actual.Stats.Length; i++)
            SamplingTests.AssertStat(actual.Stats[i], expected.Stats[i], $"row {i / SamplingOptions.StatCount}, stat {i % SamplingOptions.StatCount}");
    }

    [Test]
    public void CpuDeviceSampleTokensMatchesReference()
    {
        const int rows = 12, vocab = 1000;
        var logits = RandomLogits(new Random(42), rows, vocab);
        var options = new SamplingOptions(0.9f, TopK: 40, TopP: 0.9f);
        var actual = SamplingTests.Sample(cpu, logits, rows, options, seed: 99, stream: 7);
        var expected = SamplingTests.Sample(null, logits, rows, options, seed: 99, stream: 7);
        Assert.That(actual.Tokens, Is.EqualTo(expected.Tokens));
        for (int i = 0; i < actual.Stats.Length; i++) SamplingTests.AssertStat(actual.Stats[i], expected.Stats[i], $"stat {i}");
    }

    [Test]
    public void RowsWithoutAFiniteMaximumAreRejected()
    {
        foreach (float bad in new[] { float.NaN, float.PositiveInfinity })
        foreach (var on in new Device?[] { null, cpu })
        {
            var logits = new float[] { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19 };
            logits[17] = bad;
            string flavour = on?.Name ?? "reference";
            var ex = Assert.Throws<ArgumentException>(() => SamplingTests.Sample(on, logits, 2, new SamplingOptions(1f)));
            Assert.That(ex!.Message, Does.Contain("row 1"), $"{bad}, {flavour}");
        }
        foreach (var on in new Device?[] { null, cpu })
            Assert.Throws<ArgumentException>(() => SamplingTests.Sample(on, [float.NegativeInfinity, float.NegativeInfinity], 1, new SamplingOptions(0f)));
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
