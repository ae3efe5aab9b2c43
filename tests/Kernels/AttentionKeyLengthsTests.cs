using DiffuSharp.Kernels;
using DiffuSharp.Runtime;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// Attention with per-row key lengths through the public <see cref="Device.Attention"/> on each device: a row
/// right-padded into a batch attends exactly as the row alone, and lengths the op cannot honour are refused with an
/// ArgumentException before any kernel runs (a fault inside an ILGPU simulator kernel would end the process).
/// </summary>
public sealed class AttentionKeyLengthsTests(string deviceName) : DeviceFixture(deviceName)
{
    const int Heads = 4, KvHeads = 2, HeadDim = 16;
    /// <summary>A row alone may take another kernel path than in a batch (the CPU scores blocks of one to three rows as dot products), so float32 round-off differs.</summary>
    const double Tolerance = 1e-5;

    static AttentionShape Shape(int batch, int length) =>
        new(batch, Heads, KvHeads, HeadDim, length, length, 0, Heads * HeadDim, KvHeads * HeadDim,
            (long)length * Heads * HeadDim, (long)length * KvHeads * HeadDim, 1f / MathF.Sqrt(HeadDim));

    /// <summary>
    /// Rows of 45, 20 and 1 real positions padded to 45: each row's real queries get the output and lse of the row run
    /// alone at its own length, whatever its padding holds.
    /// </summary>
    [TestCase(AttentionMaskMode.Causal)]
    [TestCase(AttentionMaskMode.Bidirectional)]
    public void PaddedRowAttendsLikeTheRowAlone(AttentionMaskMode mode)
    {
        var rng = TestUtil.NewRandom();
        int[] lengths = [45, 20, 1];
        int batch = lengths.Length, length = lengths[0];
        int qWidth = Heads * HeadDim, kvWidth = KvHeads * HeadDim;
        var q = TestUtil.RandomFloats(rng, batch * length * qWidth, 2f);
        var k = TestUtil.RandomFloats(rng, batch * length * kvWidth, 2f);
        var v = TestUtil.RandomFloats(rng, batch * length * kvWidth);

        using var qT = device.FromArray(q, batch, length, qWidth);
        using var kT = device.FromArray(k, batch, length, kvWidth);
        using var vT = device.FromArray(v, batch, length, kvWidth);
        using var keyLengths = device.FromArray(lengths, batch);
        using var output = device.Allocate(DType.F32, batch, length, qWidth);
        using var lse = device.Allocate(DType.F32, batch, Heads, length);
        device.Attention(qT, 0, kT, 0, vT, 0, output, lse, Shape(batch, length), mode, null, keyLengths);
        var padded = device.ToArray(output);
        var paddedLse = device.ToArray(lse);

        for (int b = 0; b < batch; b++)
        {
            int n = lengths[b];
            using var qAlone = device.FromArray(q.AsSpan(b * length * qWidth, n * qWidth), 1, n, qWidth);
            using var kAlone = device.FromArray(k.AsSpan(b * length * kvWidth, n * kvWidth), 1, n, kvWidth);
            using var vAlone = device.FromArray(v.AsSpan(b * length * kvWidth, n * kvWidth), 1, n, kvWidth);
            using var outputAlone = device.Allocate(DType.F32, 1, n, qWidth);
            using var lseAlone = device.Allocate(DType.F32, 1, Heads, n);
            device.Attention(qAlone, 0, kAlone, 0, vAlone, 0, outputAlone, lseAlone, Shape(1, n), mode, null);

            Assert.That(TestUtil.RelativeL2(padded.AsSpan(b * length * qWidth, n * qWidth), device.ToArray(outputAlone)), Is.LessThan(Tolerance),
                $"output of row {b}");
            var alone = device.ToArray(lseAlone);
            for (int h = 0; h < Heads; h++)
                Assert.That(TestUtil.RelativeL2(paddedLse.AsSpan((b * Heads + h) * length, n), alone.AsSpan(h * n, n)), Is.LessThan(Tolerance),
                    $"lse of row {b}, head {h}");
        }
    }

    /// <summary>A zero, negative or too large length, or a tensor of the wrong type or shape, is refused and the output stays untouched.</summary>
    [TestCase(new[] { 7, 0 }, "key length 0 of batch row 1 is outside [1, 7]")]
    [TestCase(new[] { -2, 7 }, "key length -2 of batch row 0 is outside [1, 7]")]
    [TestCase(new[] { 7, 8 }, "key length 8 of batch row 1 is outside [1, 7]")]
    [TestCase(new[] { 7, 7, 7 }, "are not [B] = [2]")]
    public void InvalidKeyLengthsAreRefusedBeforeAnyKernelRuns(int[] lengths, string message)
    {
        using var keyLengths = device.FromArray(lengths, lengths.Length);
        Assert.That(RefusalOf(keyLengths), Does.Contain(message));
    }

    [Test]
    public void KeyLengthsOfTheWrongTypeOrRankAreRefused()
    {
        using var floats = device.FromArray(new float[] { 7, 7 }, 2);
        Assert.That(RefusalOf(floats), Does.Contain("keyLengths must be I32"));
        using var column = device.FromArray(new[] { 7, 7 }, 2, 1);
        Assert.That(RefusalOf(column), Does.Contain("are not [B] = [2]"));
    }

    /// <summary>Runs a [2 rows, 7 positions] attention with the given key lengths; returns the ArgumentException's message.</summary>
    string RefusalOf(Tensor keyLengths)
    {
        const int batch = 2, length = 7;
        using var q = device.Zeros(DType.F32, batch, length, Heads * HeadDim);
        using var kv = device.Zeros(DType.F32, batch, length, KvHeads * HeadDim);
        using var output = device.Allocate(DType.F32, batch, length, Heads * HeadDim);
        device.Fill(output, 7f);
        var e = Assert.Throws<ArgumentException>(() =>
            device.Attention(q, 0, kv, 0, kv, 0, output, null, Shape(batch, length), AttentionMaskMode.Bidirectional, null, keyLengths));
        Assert.That(device.ToArray(output), Is.All.EqualTo(7f), "the output was written");
        return e!.Message;
    }
}
