using DiffuSharp.Runtime;

namespace DiffuSharp.Tests.Runtime;

/// <summary>BF16 and F16 tensors on every device: two bytes an element in the pool, raw bits in and out, views, and a clear refusal where an op wants float32.</summary>
[TestFixture("cpu")]
[TestFixture("ilgpu-cpu")]
[TestFixture("cuda")]
public sealed class SixteenBitTensorTests(string deviceName)
{
    Device device = null!;

    [OneTimeSetUp]
    public void SetUp() => device = TestDevices.Create(deviceName);

    [OneTimeTearDown]
    public void TearDown() => device?.Dispose();

    [TestCase(DType.BF16)]
    [TestCase(DType.F16)]
    public void BitsRoundTripAndThePoolCountsTwoBytesAnElement(DType dtype)
    {
        var rng = TestUtil.NewRandom();
        var bits = Enumerable.Range(0, 300).Select(_ => (ushort)rng.Next(ushort.MaxValue + 1)).ToArray();
        long before = device.Pool.PooledBytes;
        using (var t = device.Allocate(dtype, 3, 100))
        {
            Assert.That(t.DType, Is.EqualTo(dtype));
            device.Upload(t, 0, bits);
            var back = new ushort[300];
            device.Download(t, 0, back);
            Assert.That(back, Is.EqualTo(bits));
            var view = t.View(100, 2, 50);
            var part = new ushort[100];
            device.Download(view, 0, part);
            Assert.That(part, Is.EqualTo(bits[100..200]), "a view of a 16-bit tensor reads its own range");
            Assert.Throws<ArgumentException>(() => device.Fill(t, 0), "float32 ops refuse 16-bit tensors with a message");
            Assert.Throws<ArgumentException>(() => device.Upload(t, 0, new float[3]));
        }
        Assert.That(device.Pool.PooledBytes - before, Is.EqualTo(600), "300 elements of 2 bytes went back to the pool");
        using var f = device.Allocate(DType.F32, 4);
        Assert.Throws<ArgumentException>(() => device.Upload(f, 0, new ushort[4]), "raw bits go only into a 16-bit tensor");
    }
}
