using DiffuSharp.Runtime;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Kernels;

/// <summary>The embedding without a position table (LLaMA: positions come from RoPE), forward and backward, on every device.</summary>
public sealed class TokenEmbeddingTests(string deviceName) : DeviceFixture(deviceName)
{
    [Test]
    public void TokenRowsAloneMatchTheReference()
    {
        var rng = TestUtil.NewRandom();
        const int batch = 2, length = 7, channels = 33, vocab = 11;
        var ids = Enumerable.Range(0, batch * length).Select(_ => rng.Next(vocab)).ToArray();
        var table = TestUtil.RandomFloats(rng, vocab * channels);
        var dOut = TestUtil.RandomFloats(rng, batch * length * channels);
        var start = TestUtil.RandomFloats(rng, vocab * channels);

        var expected = new double[batch * length * channels];
        Ref.Embedding.Forward(ids, TestUtil.ToDouble(table), default, expected, batch, length, channels, 0);
        var expectedGrad = TestUtil.ToDouble(start);
        Ref.Embedding.Backward(ids, TestUtil.ToDouble(dOut), expectedGrad, default, batch, length, channels, 0);

        using var idTensor = device.FromArray(ids, batch, length);
        using var wte = device.FromArray(table, vocab, channels);
        using var output = device.Allocate(DType.F32, batch, length, channels);
        device.Embedding(idTensor, wte, null, output, 0);
        Assert.That(TestUtil.RelativeL2(device.ToArray(output), expected), Is.LessThan(1e-6));

        using var grad = device.FromArray(start, vocab, channels);
        using var gradOut = device.FromArray(dOut, batch, length, channels);
        device.EmbeddingBackward(idTensor, gradOut, grad, null, 0);
        Assert.That(TestUtil.RelativeL2(device.ToArray(grad), expectedGrad), Is.LessThan(1e-6));
    }
}
