using DiffuSharp.Kernels;
using DiffuSharp.Runtime;

namespace DiffuSharp.Tests.Kernels;

/// <summary>
/// Attention through <see cref="Device.Attention"/> and <see cref="Device.AttentionBackward"/> on every device against
/// the float64 reference, on fresh random inputs (see <see cref="AttentionCheck"/>): lengths and head dims that are not multiples of the CPU's 64-key blocks
/// or the ILGPU kernels' tiles (64 or 48 queries x 32 keys flash, 32 x 16 tiled), grouped-query heads, KV-cache query
/// offsets, GPT-2's packed qkv, per-row key lengths, and q, k and v with padded rows and batches read from non-zero
/// offsets.
/// </summary>
public sealed class AttentionTests(string deviceName) : DeviceFixture(deviceName)
{
    static readonly AttentionMaskMode[] Modes = [AttentionMaskMode.Causal, AttentionMaskMode.Bidirectional, AttentionMaskMode.Explicit];

    /// <summary>
    /// Tight rows: every mask mode at lengths 1 to 33 with head dims 8, 16, 64 and, for grouped-query heads, 16. Padded
    /// rows (3 floats after each q row, 5 after each k and v row, 2 and 1 after each batch, read from offsets 7, 11 and
    /// 4): head dims 8 to 128, one query after a cache of keys, and fewer queries than keys.
    /// </summary>
    static IEnumerable<TestCaseData> AttentionCases()
    {
        foreach (var mode in Modes)
        {
            foreach (int length in new[] { 1, 7, 33 })
                foreach (int headDim in new[] { 8, 16, 64 })
                    yield return new TestCaseData(mode, 2, 4, 4, headDim, length, length, 0, false);
            yield return new TestCaseData(mode, 2, 4, 2, 16, 33, 33, 0, false);
        }
        yield return new TestCaseData(AttentionMaskMode.Causal, 1, 1, 1, 8, 1, 1, 0, true);
        foreach (var mode in Modes)
        {
            yield return new TestCaseData(mode, 2, 2, 2, 8, 7, 7, 0, true);
            yield return new TestCaseData(mode, 1, 2, 2, 64, 33, 33, 0, true);
        }
        yield return new TestCaseData(AttentionMaskMode.Causal, 2, 4, 2, 16, 70, 70, 0, true);
        yield return new TestCaseData(AttentionMaskMode.Explicit, 1, 4, 2, 24, 70, 70, 0, true);
        yield return new TestCaseData(AttentionMaskMode.Bidirectional, 1, 4, 1, 64, 70, 70, 0, true);
        yield return new TestCaseData(AttentionMaskMode.Causal, 1, 2, 2, 128, 33, 33, 0, true);
        yield return new TestCaseData(AttentionMaskMode.Bidirectional, 1, 1, 1, 100, 7, 7, 0, true);
        yield return new TestCaseData(AttentionMaskMode.Causal, 2, 4, 2, 64, 1, 33, 32, true);
        yield return new TestCaseData(AttentionMaskMode.Causal, 1, 2, 2, 8, 1, 70, 69, true);
        yield return new TestCaseData(AttentionMaskMode.Causal, 1, 2, 1, 32, 5, 70, 40, true);
        yield return new TestCaseData(AttentionMaskMode.Bidirectional, 1, 2, 2, 16, 1, 33, 0, true);
    }

    [TestCaseSource(nameof(AttentionCases))]
    public void AttentionMatchesReference(AttentionMaskMode mode, int batch, int heads, int kvHeads, int headDim, int queries, int keys,
        int queryOffset, bool padded) => CheckAttention(mode, batch, heads, kvHeads, headDim, queries, keys, queryOffset, padded);

    /// <summary>
    /// Tight rows of 100 and 130 positions, across the CPU kernel's 64-query and 64-key blocks: every mask mode with head
    /// dims 8, 16, 64 and, for grouped-query heads, 24 and 72.
    /// </summary>
    static IEnumerable<TestCaseData> AttentionAcrossCpuBlocksCases()
    {
        foreach (var mode in Modes)
        {
            foreach (int headDim in new[] { 8, 16, 64 })
                yield return new TestCaseData(mode, 2, 4, 4, headDim, 100, 100, 0, false);
            yield return new TestCaseData(mode, 1, 8, 2, 24, 100, 100, 0, false);
            yield return new TestCaseData(mode, 1, 2, 1, 72, 130, 130, 0, false);
        }
    }

    [TestCaseSource(nameof(AttentionAcrossCpuBlocksCases))]
    public void AttentionAcrossCpuBlocksMatchesReference(AttentionMaskMode mode, int batch, int heads, int kvHeads, int headDim, int queries,
        int keys, int queryOffset, bool padded)
    {
        IgnoreOnSimulator(AcrossCpuBlocks);
        CheckAttention(mode, batch, heads, kvHeads, headDim, queries, keys, queryOffset, padded);
    }

    void CheckAttention(AttentionMaskMode mode, int batch, int heads, int kvHeads, int headDim, int queries, int keys, int queryOffset, bool padded)
    {
        var rng = TestUtil.NewRandom();
        var shape = AttentionCheck.Shape(batch, heads, kvHeads, headDim, queries, keys, queryOffset, padded);
        var x = padded ? AttentionInputs.Random(rng, shape, 7, 11, 4) : AttentionInputs.Random(rng, shape);
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, keys) : null;
        AttentionCheck.Forward(device, shape, mode, x, allow);
    }

    /// <summary>One query at position <paramref name="position"/> against a KV cache of 128 rows a batch, causal and bidirectional.</summary>
    [TestCase(1, 1)]
    [TestCase(8, 16)]
    [TestCase(40, 64)]
    [TestCase(99, 64)]
    public void AttentionDecodesWithQueryOffset(int position, int headDim)
    {
        var rng = TestUtil.NewRandom();
        const int batch = 2, heads = 4, kvHeads = 2, maxLength = 128;
        var shape = new AttentionShape(batch, heads, kvHeads, headDim, 1, position + 1, position,
            heads * headDim, kvHeads * headDim, heads * headDim, (long)maxLength * kvHeads * headDim, 1f / MathF.Sqrt(headDim));
        var x = new AttentionInputs(TestUtil.RandomFloats(rng, batch * heads * headDim), 0,
            TestUtil.RandomFloats(rng, batch * maxLength * kvHeads * headDim), 0, TestUtil.RandomFloats(rng, batch * maxLength * kvHeads * headDim), 0);
        AttentionCheck.Forward(device, shape, AttentionMaskMode.Causal, x, null);
        AttentionCheck.Forward(device, shape, AttentionMaskMode.Bidirectional, x, null);
    }

    /// <summary>A causal chunk of queries after <paramref name="offset"/> cached keys.</summary>
    [TestCase(5, 10, 16)]
    [TestCase(7, 93, 64)]
    [TestCase(70, 100, 32)]
    public void AttentionChunkWithQueryOffset(int queries, int offset, int headDim)
    {
        var rng = TestUtil.NewRandom();
        const int batch = 2, heads = 2;
        int keys = offset + queries;
        var shape = new AttentionShape(batch, heads, heads, headDim, queries, keys, offset,
            heads * headDim, heads * headDim, (long)queries * heads * headDim, (long)keys * heads * headDim, 0.3f);
        var x = new AttentionInputs(TestUtil.RandomFloats(rng, batch * queries * heads * headDim), 0,
            TestUtil.RandomFloats(rng, batch * keys * heads * headDim), 0, TestUtil.RandomFloats(rng, batch * keys * heads * headDim), 0);
        AttentionCheck.Forward(device, shape, AttentionMaskMode.Causal, x, null);
    }

    /// <summary>GPT-2's packed qkv rows [B, T, 3C]: one tensor read three times.</summary>
    [TestCase(2, 1, 3, 8, AttentionMaskMode.Causal)]
    [TestCase(2, 33, 2, 16, AttentionMaskMode.Causal)]
    [TestCase(2, 70, 3, 16, AttentionMaskMode.Causal)]
    [TestCase(1, 70, 2, 64, AttentionMaskMode.Causal)]
    [TestCase(1, 70, 2, 64, AttentionMaskMode.Bidirectional)]
    [TestCase(2, 33, 3, 64, AttentionMaskMode.Bidirectional)]
    [TestCase(2, 7, 1, 8, AttentionMaskMode.Explicit)]
    [TestCase(2, 100, 3, 8, AttentionMaskMode.Explicit)]
    public void PackedQkvAttentionMatchesReference(int batch, int length, int heads, int headDim, AttentionMaskMode mode)
    {
        var rng = TestUtil.NewRandom();
        var x = AttentionInputs.RandomPacked(rng, batch, length, heads, headDim);
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, length) : null;
        AttentionCheck.Forward(device, AttentionShape.PackedSelfAttention(batch, length, heads, headDim), mode, x, allow);
    }

    /// <summary>
    /// Per-row key lengths: rows of 1 and 7 keys right-padded into one batch, every mask mode. The padded keys and values
    /// are NaN, so a kernel that read one, or gave one a zero weight instead of skipping it, fails.
    /// </summary>
    [TestCase(AttentionMaskMode.Causal, 3, 3, 8, 7, new[] { 1, 7 })]
    [TestCase(AttentionMaskMode.Bidirectional, 3, 3, 8, 7, new[] { 1, 7 })]
    [TestCase(AttentionMaskMode.Explicit, 3, 3, 8, 7, new[] { 1, 7 })]
    public void AttentionWithKeyLengthsMatchesReference(AttentionMaskMode mode, int heads, int kvHeads, int headDim, int length, int[] keyLengths) =>
        CheckAttentionWithKeyLengths(mode, heads, kvHeads, headDim, length, keyLengths);

    /// <summary>
    /// Per-row key lengths across the CPU kernel's 64-key blocks: rows of very different lengths (all keys, an odd count
    /// inside a block, a single key) right-padded into one batch, grouped-query heads, one odd head dim past 64, every
    /// mask mode.
    /// </summary>
    static IEnumerable<TestCaseData> KeyLengthsAcrossCpuBlocksCases()
    {
        foreach (var mode in Modes)
        {
            yield return new TestCaseData(mode, 4, 2, 16, 100, new[] { 100, 37, 1 });
            yield return new TestCaseData(mode, 2, 1, 72, 130, new[] { 65, 130, 3, 64 });
        }
    }

    [TestCaseSource(nameof(KeyLengthsAcrossCpuBlocksCases))]
    public void AttentionWithKeyLengthsAcrossCpuBlocksMatchesReference(AttentionMaskMode mode, int heads, int kvHeads, int headDim, int length,
        int[] keyLengths)
    {
        IgnoreOnSimulator(AcrossCpuBlocks);
        CheckAttentionWithKeyLengths(mode, heads, kvHeads, headDim, length, keyLengths);
    }

    void CheckAttentionWithKeyLengths(AttentionMaskMode mode, int heads, int kvHeads, int headDim, int length, int[] keyLengths)
    {
        var rng = TestUtil.NewRandom();
        var shape = AttentionCheck.Shape(keyLengths.Length, heads, kvHeads, headDim, length, length, 0, padded: false);
        var x = AttentionInputs.Random(rng, shape);
        TestUtil.PoisonPaddedKeys(x.K, 0, shape, keyLengths);
        TestUtil.PoisonPaddedKeys(x.V, 0, shape, keyLengths);
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, length) : null;
        AttentionCheck.Forward(device, shape, mode, x, allow, keyLengths);
    }

    /// <summary>
    /// A causal chunk after cached keys (query offset 30) whose rows end before, inside and after the chunk's first keys,
    /// across the CPU kernel's 64-key blocks (IlgpuKernelTests has such chunks for each ILGPU kernel).
    /// </summary>
    [Test]
    public void AttentionWithKeyLengthsAndQueryOffsetMatchesReference()
    {
        IgnoreOnSimulator(AcrossCpuBlocks);
        var rng = TestUtil.NewRandom();
        const int heads = 2, headDim = 16, queries = 70, keys = 100, offset = 30;
        int[] keyLengths = [100, 45, 12];
        int batch = keyLengths.Length;
        var shape = new AttentionShape(batch, heads, heads, headDim, queries, keys, offset,
            heads * headDim, heads * headDim, (long)queries * heads * headDim, (long)keys * heads * headDim, 0.3f);
        var x = new AttentionInputs(TestUtil.RandomFloats(rng, batch * queries * heads * headDim), 0,
            TestUtil.RandomFloats(rng, batch * keys * heads * headDim), 0, TestUtil.RandomFloats(rng, batch * keys * heads * headDim), 0);
        TestUtil.PoisonPaddedKeys(x.K, 0, shape, keyLengths);
        TestUtil.PoisonPaddedKeys(x.V, 0, shape, keyLengths);
        AttentionCheck.Forward(device, shape, AttentionMaskMode.Causal, x, null, keyLengths);
    }

    /// <summary>A query whose mask row is empty gets zeros and lse −∞, and no NaN reaches any other query.</summary>
    [TestCase(5, 16, 2, 0.25f)]
    [TestCase(19, 8, 5, 0.5f)]
    public void QueryWithoutVisibleKeysGivesZerosAndMinusInfinity(int length, int headDim, int hiddenRow, float scale)
    {
        var rng = TestUtil.NewRandom();
        var shape = new AttentionShape(1, 1, 1, headDim, length, length, 0, headDim, headDim, length * headDim, length * headDim, scale);
        var x = new AttentionInputs(TestUtil.RandomFloats(rng, length * headDim), 0, TestUtil.RandomFloats(rng, length * headDim), 0,
            TestUtil.RandomFloats(rng, length * headDim), 0);
        var allow = TestUtil.RandomAllowMask(rng, length, hiddenRow);

        using var q = device.FromArray(x.Q, length, headDim);
        using var k = device.FromArray(x.K, length, headDim);
        using var v = device.FromArray(x.V, length, headDim);
        using var allowT = device.FromArray(allow, length, length);
        using var output = device.Allocate(DType.F32, 1, length, headDim);
        using var lse = device.Allocate(DType.F32, 1, 1, length);
        device.Fill(output, float.NaN);
        device.Attention(q, 0, k, 0, v, 0, output, lse, shape, AttentionMaskMode.Explicit, allowT);

        var o = device.ToArray(output);
        var l = device.ToArray(lse);
        Assert.That(o.AsSpan(hiddenRow * headDim, headDim).ToArray(), Is.All.EqualTo(0f));
        Assert.That(l[hiddenRow], Is.EqualTo(float.NegativeInfinity));
        Assert.That(o, Has.None.NaN);
        Assert.That(l.Where((_, i) => i != hiddenRow), Is.All.Matches<float>(float.IsFinite));
        AttentionCheck.Forward(device, shape, AttentionMaskMode.Explicit, x, allow);
    }

    // ---- backward --------------------------------------------------------------------------------

    /// <summary>
    /// Tight rows: every mask mode at lengths 1 to 33 with head dims 8, 64 and, for grouped-query heads, 16. Padded rows
    /// (as for the forward, with the gradients at offsets 3, 5 and 9 of their own buffers): head dims 8 to 128 and fewer
    /// queries than keys. Explicit masks hide one query row from every key.
    /// </summary>
    static IEnumerable<TestCaseData> AttentionBackwardCases()
    {
        foreach (var mode in Modes)
        {
            foreach (int length in new[] { 1, 7, 33 })
                foreach (int headDim in new[] { 8, 64 })
                    yield return new TestCaseData(mode, 2, 3, 3, headDim, length, length, false);
            yield return new TestCaseData(mode, 2, 4, 2, 16, 33, 33, false);
        }
        yield return new TestCaseData(AttentionMaskMode.Causal, 1, 1, 1, 8, 1, 1, true);
        foreach (var mode in Modes)
        {
            yield return new TestCaseData(mode, 2, 2, 2, 8, 7, 7, true);
            yield return new TestCaseData(mode, 1, 2, 2, 64, 33, 33, true);
        }
        yield return new TestCaseData(AttentionMaskMode.Causal, 2, 4, 2, 16, 70, 70, true);
        yield return new TestCaseData(AttentionMaskMode.Explicit, 1, 4, 2, 16, 70, 70, true);
        yield return new TestCaseData(AttentionMaskMode.Bidirectional, 1, 4, 1, 64, 70, 70, true);
        yield return new TestCaseData(AttentionMaskMode.Causal, 1, 2, 1, 128, 33, 33, true);
        yield return new TestCaseData(AttentionMaskMode.Bidirectional, 1, 1, 1, 40, 7, 7, true);
        yield return new TestCaseData(AttentionMaskMode.Bidirectional, 2, 2, 2, 16, 5, 33, true);
        yield return new TestCaseData(AttentionMaskMode.Causal, 1, 2, 2, 16, 20, 33, true);
    }

    [TestCaseSource(nameof(AttentionBackwardCases))]
    public void AttentionBackwardMatchesReference(AttentionMaskMode mode, int batch, int heads, int kvHeads, int headDim, int queries, int keys,
        bool padded) => CheckAttentionBackward(mode, batch, heads, kvHeads, headDim, queries, keys, padded);

    /// <summary>
    /// Tight rows of 100 and 130 positions, across the CPU kernel's 64-query and 64-key blocks: every mask mode with head
    /// dims 8, 64 and, for grouped-query heads, 24 and 72.
    /// </summary>
    static IEnumerable<TestCaseData> AttentionBackwardAcrossCpuBlocksCases()
    {
        foreach (var mode in Modes)
        {
            foreach (int headDim in new[] { 8, 64 })
                yield return new TestCaseData(mode, 2, 3, 3, headDim, 100, 100, false);
            yield return new TestCaseData(mode, 1, 8, 2, 24, 100, 100, false);
            yield return new TestCaseData(mode, 1, 2, 1, 72, 130, 130, false);
        }
    }

    [TestCaseSource(nameof(AttentionBackwardAcrossCpuBlocksCases))]
    public void AttentionBackwardAcrossCpuBlocksMatchesReference(AttentionMaskMode mode, int batch, int heads, int kvHeads, int headDim,
        int queries, int keys, bool padded)
    {
        IgnoreOnSimulator(AcrossCpuBlocks);
        CheckAttentionBackward(mode, batch, heads, kvHeads, headDim, queries, keys, padded);
    }

    void CheckAttentionBackward(AttentionMaskMode mode, int batch, int heads, int kvHeads, int headDim, int queries, int keys, bool padded)
    {
        var rng = TestUtil.NewRandom();
        var shape = AttentionCheck.Shape(batch, heads, kvHeads, headDim, queries, keys, 0, padded);
        var x = padded ? AttentionInputs.Random(rng, shape, 7, 11, 4) : AttentionInputs.Random(rng, shape);
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, keys, hiddenRow: keys / 2) : null;
        AttentionCheck.Backward(device, rng, shape, mode, x, allow, padded ? (3, 5, 9) : null);
    }

    /// <summary>GPT-2's packed qkv rows [B, T, 3C], with the gradients going into one packed dQkv buffer.</summary>
    [TestCase(2, 1, 3, 8, AttentionMaskMode.Causal)]
    [TestCase(2, 33, 2, 16, AttentionMaskMode.Causal)]
    [TestCase(2, 37, 3, 16, AttentionMaskMode.Causal)]
    [TestCase(2, 70, 3, 16, AttentionMaskMode.Causal)]
    [TestCase(1, 70, 2, 64, AttentionMaskMode.Causal)]
    [TestCase(2, 33, 3, 64, AttentionMaskMode.Bidirectional)]
    [TestCase(2, 37, 3, 16, AttentionMaskMode.Bidirectional)]
    [TestCase(1, 70, 1, 64, AttentionMaskMode.Bidirectional)]
    [TestCase(2, 7, 1, 8, AttentionMaskMode.Explicit)]
    [TestCase(2, 37, 3, 16, AttentionMaskMode.Explicit)]
    [TestCase(2, 100, 3, 8, AttentionMaskMode.Explicit)]
    public void PackedQkvAttentionBackwardMatchesReference(int batch, int length, int heads, int headDim, AttentionMaskMode mode)
    {
        var rng = TestUtil.NewRandom();
        var x = AttentionInputs.RandomPacked(rng, batch, length, heads, headDim);
        var allow = mode == AttentionMaskMode.Explicit ? TestUtil.RandomAllowMask(rng, length, hiddenRow: 5) : null;
        AttentionCheck.Backward(device, rng, AttentionShape.PackedSelfAttention(batch, length, heads, headDim), mode, x, allow);
    }

    /// <summary>A query whose mask row is empty has lse −∞ and must add nothing (and no NaN) anywhere.</summary>
    [TestCase(5, 16, 2, 0.25f)]
    [TestCase(19, 8, 5, 0.5f)]
    public void QueryWithoutVisibleKeysAddsNothing(int length, int headDim, int hiddenRow, float scale)
    {
        var rng = TestUtil.NewRandom();
        var shape = new AttentionShape(1, 1, 1, headDim, length, length, 0, headDim, headDim, length * headDim, length * headDim, scale);
        var x = new AttentionInputs(TestUtil.RandomFloats(rng, length * headDim), 0, TestUtil.RandomFloats(rng, length * headDim), 0,
            TestUtil.RandomFloats(rng, length * headDim), 0);
        var allow = TestUtil.RandomAllowMask(rng, length, hiddenRow);
        AttentionCheck.Forward(device, shape, AttentionMaskMode.Explicit, x, allow);
        var (dq, dqStart) = AttentionCheck.Backward(device, rng, shape, AttentionMaskMode.Explicit, x, allow);
        Assert.That(dq.AsSpan(hiddenRow * headDim, headDim).ToArray(), Is.EqualTo(dqStart.AsSpan(hiddenRow * headDim, headDim).ToArray()),
            "dq of the blind query is untouched");
    }
}
