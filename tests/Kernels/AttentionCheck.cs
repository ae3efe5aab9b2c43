using DiffuSharp.Kernels;
using DiffuSharp.Runtime;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Kernels;

/// <summary>q, k and v as they lie in host memory: each a buffer and the offset of its first element (one buffer when packed).</summary>
public sealed record AttentionInputs(float[] Q, int QOffset, float[] K, int KOffset, float[] V, int VOffset)
{
    public bool Packed => ReferenceEquals(Q, K) && ReferenceEquals(Q, V);

    /// <summary>
    /// Random q, k and v for <paramref name="shape"/>, each in its own buffer and read from the given offsets; the
    /// buffers end with the last batch's stride, so padding after rows and batches holds random values too.
    /// </summary>
    public static AttentionInputs Random(Random rng, AttentionShape shape, int qOffset = 0, int kOffset = 0, int vOffset = 0)
    {
        int qSpan = (int)(shape.Batch * shape.QueryBatchStride), kSpan = (int)(shape.Batch * shape.KeyBatchStride);
        return new AttentionInputs(TestUtil.RandomFloats(rng, qOffset + qSpan, 2f), qOffset, TestUtil.RandomFloats(rng, kOffset + kSpan, 2f), kOffset,
            TestUtil.RandomFloats(rng, vOffset + kSpan), vOffset);
    }

    /// <summary>GPT-2's packed qkv rows [B, T, 3C]: one buffer read at offsets 0, C and 2C.</summary>
    public static AttentionInputs RandomPacked(Random rng, int batch, int length, int heads, int headDim)
    {
        int c = heads * headDim;
        var qkv = TestUtil.RandomFloats(rng, batch * length * 3 * c, 2f);
        return new AttentionInputs(qkv, 0, qkv, c, qkv, 2 * c);
    }
}

/// <summary>An attention forward run on device tensors (q, k and v at their offsets; lse, allow and key lengths optional).</summary>
public delegate void AttentionRun(Tensor q, long qOffset, Tensor k, long kOffset, Tensor v, long vOffset, Tensor output, Tensor? lse,
    Tensor? allow, Tensor? keyLengths);

/// <summary>An attention backward run on device tensors; the gradients accumulate into dq, dk and dv at their offsets.</summary>
public delegate void AttentionBackwardRun(Tensor q, long qOffset, Tensor k, long kOffset, Tensor v, long vOffset, Tensor output,
    Tensor dOutput, Tensor lse, Tensor dq, long dqOffset, Tensor dk, long dkOffset, Tensor dv, long dvOffset, Tensor? allow);

/// <summary>
/// Attention on a device against the float64 reference: through <see cref="Device.Attention"/> and
/// <see cref="Device.AttentionBackward"/>, or through a run that calls one kernel directly (an ILGPU kernel forced by
/// name, a CPU kernel with what the device API refuses).
/// </summary>
public static class AttentionCheck
{
    /// <summary>
    /// Relative L2 bound for float32 against float64: round-off of the score and value sums grows like √K · 6e-8 for K
    /// keys or head dims (about 1e-6 here), and float atomics only reorder additions of a few dozen terms.
    /// </summary>
    public const double Tolerance = 1e-5;

    public static AttentionShape Shape(int batch, int heads, int kvHeads, int headDim, int queries, int keys, int queryOffset, bool padded)
    {
        int qRow = heads * headDim + (padded ? 3 : 0), kRow = kvHeads * headDim + (padded ? 5 : 0);
        long qBatch = (long)queries * qRow + (padded ? 2 : 0), kBatch = (long)keys * kRow + (padded ? 1 : 0);
        return new AttentionShape(batch, heads, kvHeads, headDim, queries, keys, queryOffset, qRow, kRow, qBatch, kBatch, 1f / MathF.Sqrt(headDim));
    }

    /// <summary>
    /// Runs the attention with and without lse and checks output and lse against the reference. Output and lse start as
    /// NaN, so an element left unwritten fails; a query that sees no key must get lse −∞; the output without lse must be
    /// the output with it, bit for bit.
    /// </summary>
    public static void Forward(Device device, AttentionShape shape, AttentionMaskMode mode, AttentionInputs x, byte[]? allow,
        int[]? keyLengths = null, AttentionRun? run = null)
    {
        int outLength = shape.Batch * shape.QueryLength * shape.Heads * shape.HeadDim;
        int lseLength = shape.Batch * shape.Heads * shape.QueryLength;
        var expected = new double[outLength];
        var expectedLse = new double[lseLength];
        Ref.Attention.Forward(TestUtil.ToDouble(x.Q).AsSpan(x.QOffset), TestUtil.ToDouble(x.K).AsSpan(x.KOffset), TestUtil.ToDouble(x.V).AsSpan(x.VOffset),
            expected, expectedLse, shape, mode, allow, keyLengths);

        using var inputs = Upload(device, x);
        using var allowT = allow is null ? null : device.FromArray(allow, shape.KeyLength, shape.KeyLength);
        using var keyLengthsT = keyLengths is null ? null : device.FromArray(keyLengths, keyLengths.Length);
        using var output = device.Allocate(DType.F32, shape.Batch, shape.QueryLength, shape.Heads * shape.HeadDim);
        using var lse = device.Allocate(DType.F32, shape.Batch, shape.Heads, shape.QueryLength);
        run ??= (q, qo, k, ko, v, vo, o, l, a, kl) => device.Attention(q, qo, k, ko, v, vo, o, l, shape, mode, a, kl);

        device.Fill(output, float.NaN);
        device.Fill(lse, float.NaN);
        run(inputs.Q, x.QOffset, inputs.K, x.KOffset, inputs.V, x.VOffset, output, lse, allowT, keyLengthsT);
        var actual = device.ToArray(output);
        Assert.That(TestUtil.RelativeL2(actual, expected), Is.LessThan(Tolerance), "output");
        Assert.That(LseError(device.ToArray(lse), expectedLse), Is.LessThan(Tolerance), "lse");

        device.Fill(output, float.NaN);
        run(inputs.Q, x.QOffset, inputs.K, x.KOffset, inputs.V, x.VOffset, output, null, allowT, keyLengthsT);
        Assert.That(device.ToArray(output), Is.EqualTo(actual), "output without lse");
    }

    /// <summary>
    /// The device's forward (output and lse, as training hands them over), a random dOutput, then the backward into
    /// gradient buffers that start at random values; what it added to dq, dk and dv, over their whole buffers (padding
    /// included), is compared with the reference backward of the reference forward. The gradients lie in buffers laid
    /// out as the inputs, at <paramref name="gradientOffsets"/> (default: the inputs' offsets), or in one buffer when
    /// the inputs are packed. Returns the device's dq buffer and its starting values.
    /// </summary>
    public static (float[] Dq, float[] DqStart) Backward(Device device, Random rng, AttentionShape shape, AttentionMaskMode mode, AttentionInputs x,
        byte[]? allow, (int Dq, int Dk, int Dv)? gradientOffsets = null, AttentionBackwardRun? run = null)
    {
        int outLength = shape.Batch * shape.QueryLength * shape.Heads * shape.HeadDim;
        var (dqOffset, dkOffset, dvOffset) = gradientOffsets ?? (x.QOffset, x.KOffset, x.VOffset);
        var qD = TestUtil.ToDouble(x.Q);
        var kD = x.Packed ? qD : TestUtil.ToDouble(x.K);
        var vD = x.Packed ? qD : TestUtil.ToDouble(x.V);
        var outputD = new double[outLength];
        var lseD = new double[shape.Batch * shape.Heads * shape.QueryLength];
        Ref.Attention.Forward(qD.AsSpan(x.QOffset), kD.AsSpan(x.KOffset), vD.AsSpan(x.VOffset), outputD, lseD, shape, mode, allow);
        var dOut = TestUtil.RandomFloats(rng, outLength);

        var expectedDq = new double[dqOffset + x.Q.Length - x.QOffset];
        var expectedDk = x.Packed ? expectedDq : new double[dkOffset + x.K.Length - x.KOffset];
        var expectedDv = x.Packed ? expectedDq : new double[dvOffset + x.V.Length - x.VOffset];
        Ref.Attention.Backward(qD.AsSpan(x.QOffset), kD.AsSpan(x.KOffset), vD.AsSpan(x.VOffset), outputD, TestUtil.ToDouble(dOut), lseD,
            expectedDq.AsSpan(dqOffset), expectedDk.AsSpan(dkOffset), expectedDv.AsSpan(dvOffset), shape, mode, allow);

        using var inputs = Upload(device, x);
        using var allowT = allow is null ? null : device.FromArray(allow, shape.KeyLength, shape.KeyLength);
        using var output = device.Allocate(DType.F32, shape.Batch, shape.QueryLength, shape.Heads * shape.HeadDim);
        using var lse = device.Allocate(DType.F32, shape.Batch, shape.Heads, shape.QueryLength);
        device.Attention(inputs.Q, x.QOffset, inputs.K, x.KOffset, inputs.V, x.VOffset, output, lse, shape, mode, allowT);

        var dqStart = TestUtil.GradientStart(rng, expectedDq);
        var dkStart = x.Packed ? dqStart : TestUtil.GradientStart(rng, expectedDk);
        var dvStart = x.Packed ? dqStart : TestUtil.GradientStart(rng, expectedDv);
        using var dOutT = device.FromArray(dOut, shape.Batch, shape.QueryLength, shape.Heads * shape.HeadDim);
        using var dqT = device.FromArray(dqStart, dqStart.Length);
        using var dkT = x.Packed ? null : device.FromArray(dkStart, dkStart.Length);
        using var dvT = x.Packed ? null : device.FromArray(dvStart, dvStart.Length);
        run ??= (q, qo, k, ko, v, vo, o, dO, l, dq, dqo, dk, dko, dv, dvo, a) =>
            device.AttentionBackward(q, qo, k, ko, v, vo, o, dO, l, dq, dqo, dk, dko, dv, dvo, shape, mode, a);
        run(inputs.Q, x.QOffset, inputs.K, x.KOffset, inputs.V, x.VOffset, output, dOutT, lse,
            dqT, dqOffset, dkT ?? dqT, dkOffset, dvT ?? dqT, dvOffset, allowT);

        var dq = device.ToArray(dqT);
        Assert.That(dq, Has.All.Matches<float>(float.IsFinite), x.Packed ? "dqkv" : "dq");
        if (x.Packed)
        {
            Assert.That(TestUtil.AddedRelativeL2(dq, dqStart, expectedDq), Is.LessThan(Tolerance), "dqkv");
            return (dq, dqStart);
        }
        var dk = device.ToArray(dkT!);
        var dv = device.ToArray(dvT!);
        Assert.That(dk, Has.All.Matches<float>(float.IsFinite), "dk");
        Assert.That(dv, Has.All.Matches<float>(float.IsFinite), "dv");
        Assert.That(TestUtil.AddedRelativeL2(dq, dqStart, expectedDq), Is.LessThan(Tolerance), "dq");
        Assert.That(TestUtil.AddedRelativeL2(dk, dkStart, expectedDk), Is.LessThan(Tolerance), "dk");
        Assert.That(TestUtil.AddedRelativeL2(dv, dvStart, expectedDv), Is.LessThan(Tolerance), "dv");
        return (dq, dqStart);
    }

    /// <summary>
    /// ‖lse − expected‖₂ / max(‖expected‖₂, √n), after checking that exactly the queries that see no key have lse −∞
    /// (those are left out). An lse is a logarithm: an error δ in it scales each probability exp(s − lse) by e^−δ, so it
    /// is bounded relative to its size, and absolutely where that size is below 1 per query; a single lse near zero (one
    /// query, one key) would otherwise turn the round-off of its scores into any relative error at all.
    /// </summary>
    static double LseError(float[] actual, double[] expected)
    {
        double error = 0, size = 0;
        int n = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            if (double.IsNegativeInfinity(expected[i]))
            {
                Assert.That(actual[i], Is.EqualTo(float.NegativeInfinity), $"lse[{i}] of a query that sees no key");
                continue;
            }
            double d = actual[i] - expected[i];
            error += d * d;
            size += expected[i] * expected[i];
            n++;
        }
        return Math.Sqrt(error) / Math.Max(Math.Sqrt(size), Math.Sqrt(n));
    }

    /// <summary>q, k and v uploaded as flat tensors; packed inputs as one tensor read three times.</summary>
    static UploadedInputs Upload(Device device, AttentionInputs x)
    {
        var q = device.FromArray(x.Q, x.Q.Length);
        if (x.Packed) return new UploadedInputs(q, q, q);
        return new UploadedInputs(q, device.FromArray(x.K, x.K.Length), device.FromArray(x.V, x.V.Length));
    }

    sealed record UploadedInputs(Tensor Q, Tensor K, Tensor V) : IDisposable
    {
        public void Dispose()
        {
            Q.Dispose();
            if (!ReferenceEquals(K, Q)) K.Dispose();
            if (!ReferenceEquals(V, Q)) V.Dispose();
        }
    }
}
