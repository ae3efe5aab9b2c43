using DiffuSharp.Kernels;
using DiffuSharp.Models;

namespace DiffuSharp.Tests.Models;

/// <summary>
/// What evaluation relies on when it packs rows of different lengths into one bidirectional forward pass: with row
/// lengths, each real position of a right-padded row gets the logits of that row run alone, unpadded.
/// </summary>
static class PaddedRows
{
    /// <summary>Rows of random ids with the given lengths, right-padded with random ids to <paramref name="length"/>.</summary>
    public static void CheckEachRowGetsItsLogitsAlone(ILanguageModel model, int[] rowLengths, int length)
    {
        var rng = TestUtil.NewRandom();
        int batch = rowLengths.Length, vocab = model.VocabSize;
        var ids = new int[batch * length];
        for (int i = 0; i < ids.Length; i++) ids[i] = rng.Next(vocab);

        float[] padded, unlimited;
        using (var result = model.Logits(ids, batch, length, AttentionMaskMode.Bidirectional, rowLengths: rowLengths))
            padded = model.Device.ToArray(result.Logits);
        using (var result = model.Logits(ids, batch, length, AttentionMaskMode.Bidirectional))
            unlimited = model.Device.ToArray(result.Logits);

        for (int b = 0; b < batch; b++)
        {
            int n = rowLengths[b];
            using var alone = model.Logits(ids.AsSpan(b * length, n), 1, n, AttentionMaskMode.Bidirectional);
            var expected = model.Device.ToArray(alone.Logits);
            Assert.That(TestUtil.RelativeL2(padded.AsSpan(b * length * vocab, n * vocab), expected), Is.LessThan(1e-5), $"row {b} of length {n}");
            // Without the lengths the padding leaks into a short row: the check above is not vacuous.
            if (n < length)
                Assert.That(TestUtil.RelativeL2(unlimited.AsSpan(b * length * vocab, n * vocab), expected), Is.GreaterThan(1e-3),
                    $"row {b} of length {n} without row lengths");
        }
    }

    /// <summary>A length of 0 or past the batch's length, or one length too few, is an ArgumentException before the pass runs.</summary>
    public static void CheckBadRowLengthsAreRefused(ILanguageModel model)
    {
        var ids = new int[2 * 5];
        Assert.That(() => model.Logits(ids, 2, 5, AttentionMaskMode.Bidirectional, rowLengths: [5, 0]),
            Throws.ArgumentException.With.Message.Contains("row length 0 is outside [1, 5]"));
        Assert.That(() => model.Logits(ids, 2, 5, AttentionMaskMode.Bidirectional, rowLengths: [6, 5]),
            Throws.ArgumentException.With.Message.Contains("row length 6 is outside [1, 5]"));
        Assert.That(() => model.Logits(ids, 2, 5, AttentionMaskMode.Bidirectional, rowLengths: [5]),
            Throws.ArgumentException.With.Message.Contains("expected 2 row lengths, got 1"));
    }
}
