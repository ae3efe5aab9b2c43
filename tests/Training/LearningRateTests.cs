using DiffuSharp.Training;

namespace DiffuSharp.Tests.Training;

public sealed class LearningRateTests
{
    [Test]
    public void WarmupIsLinearThenCosineDecaysToZero()
    {
        var s = new LearningRateSchedule(1e-3, 10, 110, LearningRateDecay.Cosine);
        Assert.That(s.At(0), Is.EqualTo(1e-4).Within(1e-12));
        Assert.That(s.At(4), Is.EqualTo(5e-4).Within(1e-12));
        Assert.That(s.At(10), Is.EqualTo(1e-3).Within(1e-12));
        Assert.That(s.At(60), Is.EqualTo(0.5e-3).Within(1e-12), "half-way through the decay cos = 0");
        Assert.That(s.At(110), Is.EqualTo(0).Within(1e-15));
    }

    [Test]
    public void ConstantStaysAtThePeakAfterWarmup()
    {
        var s = new LearningRateSchedule(2e-5, 0, 100, LearningRateDecay.Constant);
        Assert.That(s.At(0), Is.EqualTo(2e-5));
        Assert.That(s.At(99), Is.EqualTo(2e-5));
    }
}
