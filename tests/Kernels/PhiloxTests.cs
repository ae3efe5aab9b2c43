using DiffuSharp.Kernels;

namespace DiffuSharp.Tests.Kernels;

/// <summary>Philox4x32-10 against the known-answer vectors of the Random123 distribution, and the uniforms built on it.</summary>
public class PhiloxTests
{
    [TestCase(0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u,
        0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u)]
    [TestCase(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu,
        0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu)]
    [TestCase(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u,
        0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u)]
    public void BlockMatchesRandom123KnownAnswers(uint c0, uint c1, uint c2, uint c3, uint k0, uint k1,
        uint e0, uint e1, uint e2, uint e3)
    {
        Philox.Block(ref c0, ref c1, ref c2, ref c3, k0, k1);
        Assert.That(new[] { c0, c1, c2, c3 }, Is.EqualTo(new[] { e0, e1, e2, e3 }));
    }

    [Test]
    public void GenerateIsBlockOfCounterAndStream()
    {
        const ulong seed = 0x299f31d0a4093822UL, stream = 0x0370734413198a2eUL, counter = 0x85a308d3243f6a88UL;
        Philox.Generate(seed, stream, counter, out uint r0, out uint r1, out uint r2, out uint r3);
        Assert.That(new[] { r0, r1, r2, r3 }, Is.EqualTo(new[] { 0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u }));
    }

    [Test]
    public void UniformIsInUnitIntervalWithMeanAndVarianceOfUniform()
    {
        const int n = 1 << 20;
        double sum = 0, sumSquares = 0;
        var buckets = new int[16];
        for (ulong i = 0; i < n; i++)
        {
            float u = Philox.Uniform(1234, 7, i);
            Assert.That(u, Is.GreaterThanOrEqualTo(0f).And.LessThan(1f));
            sum += u;
            sumSquares += u * u;
            buckets[(int)(u * 16)]++;
        }
        double mean = sum / n;
        double variance = sumSquares / n - mean * mean;
        // Standard error of the mean is sqrt(1/12 / n) ≈ 2.8e-4; 5e-3 is far outside chance.
        Assert.That(mean, Is.EqualTo(0.5).Within(5e-3));
        Assert.That(variance, Is.EqualTo(1.0 / 12).Within(5e-3));
        Assert.That(buckets, Is.All.InRange(n / 16 * 0.97, n / 16 * 1.03));
    }

    [Test]
    public void UniformDependsOnSeedStreamAndIndex()
    {
        float u = Philox.Uniform(1, 2, 3);
        Assert.That(Philox.Uniform(1, 2, 3), Is.EqualTo(u));
        Assert.That(Philox.Uniform(2, 2, 3), Is.Not.EqualTo(u));
        Assert.That(Philox.Uniform(1, 3, 3), Is.Not.EqualTo(u));
        Assert.That(Philox.Uniform(1, 2, 4), Is.Not.EqualTo(u));
    }

    [Test]
    public void ToUniformCoversTheEnds()
    {
        Assert.That(Philox.ToUniform(0), Is.EqualTo(0f));
        Assert.That(Philox.ToUniform(uint.MaxValue), Is.LessThan(1f).And.GreaterThan(0.9999999f));
    }
}
