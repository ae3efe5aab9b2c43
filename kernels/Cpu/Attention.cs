using System.Runtime.Intrinsics;

namespace DiffuSharp.Kernels.Cpu;

/// <summary>
/// Flash-style scaled dot-product attention in float32. A work item is one (batch, head, block of up to
/// 64 query rows); it walks the visible keys in blocks of 64 with an online softmax (running maximum and
/// sum per row, the partial output rescaled when the maximum grows), so no [Tq, Tk] score matrix exists.
/// <para>
/// For a block of several query rows the key block is transposed to [D, 64] once, and each score row is
/// then 64 lanes of FMAs (a broadcast q value times a row of kᵀ); a single row (KV-cache decoding) takes
/// dot products instead, as the transpose would cost as much as the scores. The weighted sum of values
/// broadcasts each probability against a row of v with the partial output held in registers.
/// </para>
/// Geometry and masks are those of <see cref="AttentionShape"/> and <see cref="AttentionMaskMode"/>. A query
/// row that sees no key at all (possible only with an explicit mask) outputs zeros and lse = −∞.
/// </summary>
public static class Attention
{
    const int BlockRows = 64;
    const int BlockKeys = 64;
    /// <summary>Below this many rows in a block, scores are dot products rather than a transposed key block.</summary>
    const int TransposeRows = 4;

    /// <summary>output [B, Tq, H·D] = softmax(Scale · q·kᵀ + mask) · v; lse [B, H, Tq] when not empty.</summary>
    public static unsafe void Forward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> output,
        Span<float> lse, in AttentionShape shape, AttentionMaskMode mode, ReadOnlySpan<byte> allow)
    {
        shape.Validate();
        int tq = shape.QueryLength, tk = shape.KeyLength, heads = shape.Heads, hd = shape.HeadDim;
        Guard.Length(q.Length, (shape.Batch - 1) * shape.QueryBatchStride + (long)(tq - 1) * shape.QueryRowStride + heads * hd, nameof(q));
        long kvNeeded = (shape.Batch - 1) * shape.KeyBatchStride + (long)(tk - 1) * shape.KeyRowStride + shape.KvHeads * hd;
        Guard.Length(k.Length, kvNeeded, nameof(k));
        Guard.Length(v.Length, kvNeeded, nameof(v));
        Guard.Length(output.Length, (long)shape.Batch * tq * heads * hd, nameof(output));
        if (!lse.IsEmpty) Guard.Length(lse.Length, (long)shape.Batch * heads * tq, nameof(lse));
        if (mode == AttentionMaskMode.Explicit) Guard.Length(allow.Length, (long)tq * tk, nameof(allow));

        int rowBlocks = (tq + BlockRows - 1) / BlockRows;
        int items = shape.Batch * heads * rowBlocks;
        long work = (long)shape.Batch * heads * tq * tk * hd;
        var s = shape;
        bool keepLse = !lse.IsEmpty;
        fixed (float* pq = q, pk = k, pv = v, po = output, pl = lse)
        fixed (byte* pa = allow)
        {
            float* xq = pq, xk = pk, xv = pv, xo = po, xl = keepLse ? pl : null;
            byte* xa = pa;
            Work.For(items, work < (1 << 18) ? items : 1, (start, end) =>
            {
                for (int item = start; item < end; item++)
                {
                    int block = item % rowBlocks;
                    int h = item / rowBlocks % s.Heads;
                    int b = item / rowBlocks / s.Heads;
                    RowBlock(xq, xk, xv, xo, xl, s, mode, xa, b, h, block * BlockRows, Math.Min(s.QueryLength, (block + 1) * BlockRows));
                }
            });
        }
    }

    /// <summary>Query rows [r0, r1) of head h in batch b.</summary>
    static unsafe void RowBlock(float* q, float* k, float* v, float* output, float* lse, in AttentionShape shape,
        AttentionMaskMode mode, byte* allow, int b, int h, int r0, int r1)
    {
        int hd = shape.HeadDim, tk = shape.KeyLength, rows = r1 - r0;
        int kvh = h / shape.GroupSize;
        float* qBase = q + b * shape.QueryBatchStride + (long)h * hd;
        float* kBase = k + b * shape.KeyBatchStride + (long)kvh * hd;
        float* vBase = v + b * shape.KeyBatchStride + (long)kvh * hd;

        float* kt = Scratch.Get((long)hd * BlockKeys + BlockRows * BlockKeys + (long)BlockRows * hd + 2 * BlockRows);
        float* scores = kt + (long)hd * BlockKeys;
        float* acc = scores + BlockRows * BlockKeys;
        float* rowMax = acc + (long)BlockRows * hd;
        float* rowSum = rowMax + BlockRows;
        new Span<float>(acc, rows * hd).Clear();
        new Span<float>(rowMax, rows).Fill(float.NegativeInfinity);
        new Span<float>(rowSum, rows).Clear();

        int keyEnd = mode == AttentionMaskMode.Causal ? Math.Min(tk, shape.QueryOffset + r1) : tk;
        bool transpose = rows >= TransposeRows;
        for (int kb = 0; kb < keyEnd; kb += BlockKeys)
        {
            int nk = Math.Min(BlockKeys, keyEnd - kb);
            if (transpose) TransposeKeys(kBase + (long)kb * shape.KeyRowStride, shape.KeyRowStride, nk, hd, kt);
            for (int r = 0; r < rows; r++)
            {
                int i = r0 + r;
                float* qi = qBase + (long)i * shape.QueryRowStride;
                float* si = scores + r * BlockKeys;
                if (transpose) ScoresTransposed(qi, kt, hd, shape.Scale, si);
                else
                {
                    for (int j = 0; j < nk; j++)
                        si[j] = shape.Scale * VectorOps.Dot(qi, kBase + (long)(kb + j) * shape.KeyRowStride, hd);
                }
                int visible = Mask(si, nk, mode, shape.QueryOffset + i - kb, allow + (long)i * tk + kb);
                if (visible == 0) continue;
                float blockMax = Reduce.Max(si, BlockKeys);
                float newMax = MathF.Max(rowMax[r], blockMax);
                float correction = MathF.Exp(rowMax[r] - newMax);
                rowMax[r] = newMax;
                rowSum[r] = rowSum[r] * correction + Softmax.ExpShifted(si, si, BlockKeys, newMax);
                float* ai = acc + (long)r * hd;
                if (correction != 1f) Softmax.Scale(ai, hd, correction);
                WeightedValues(si, nk, vBase + (long)kb * shape.KeyRowStride, shape.KeyRowStride, hd, ai);
            }
        }

        int outStride = shape.Heads * hd;
        for (int r = 0; r < rows; r++)
        {
            int i = r0 + r;
            float* dst = output + ((long)b * shape.QueryLength + i) * outStride + (long)h * hd;
            float* ai = acc + (long)r * hd;
            float sum = rowSum[r];
            float inv = sum > 0 ? 1f / sum : 0f;
            for (int d = 0; d < hd; d++) dst[d] = ai[d] * inv;
            if (lse is not null)
                lse[((long)b * shape.Heads + h) * shape.QueryLength + i] = sum > 0 ? rowMax[r] + MathF.Log(sum) : float.NegativeInfinity;
        }
    }

    /// <summary>
    /// Sets hidden scores to −∞ (and lanes past nk, so a whole block of 64 can be reduced) and returns how many
    /// keys are visible. lastVisible is the last key index, relative to the block, that a causal query may see.
    /// </summary>
    static unsafe int Mask(float* s, int nk, AttentionMaskMode mode, int lastVisible, byte* allowRow)
    {
        int visible = nk;
        if (mode == AttentionMaskMode.Causal && lastVisible < nk - 1)
            visible = Math.Max(0, lastVisible + 1);
        for (int j = visible; j < BlockKeys; j++) s[j] = float.NegativeInfinity;
        if (mode != AttentionMaskMode.Explicit) return visible;
        int count = 0;
        for (int j = 0; j < nk; j++)
        {
            if (allowRow[j] == 0) s[j] = float.NegativeInfinity;
            else count++;
        }
        return count;
    }

    /// <summary>kt[d, j] = key row j's element d for j &lt; nk; zero past nk.</summary>
    static unsafe void TransposeKeys(float* keys, int stride, int nk, int hd, float* kt)
    {
        for (int j = 0; j < nk; j++)
        {
            float* kj = keys + (long)j * stride;
            for (int d = 0; d < hd; d++) kt[d * BlockKeys + j] = kj[d];
        }
        if (nk < BlockKeys)
            for (int d = 0; d < hd; d++) new Span<float>(kt + d * BlockKeys + nk, BlockKeys - nk).Clear();
    }

    /// <summary>s[0..64) = scale · Σ_d q[d] · kt[d, 0..64).</summary>
    static unsafe void ScoresTransposed(float* q, float* kt, int hd, float scale, float* s)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            var s0 = Vector512<float>.Zero; var s1 = s0; var s2 = s0; var s3 = s0;
            for (int d = 0; d < hd; d++, kt += BlockKeys)
            {
                var qd = Vector512.Create(q[d]);
                s0 = Vector512.FusedMultiplyAdd(qd, Vector512.Load(kt), s0);
                s1 = Vector512.FusedMultiplyAdd(qd, Vector512.Load(kt + 16), s1);
                s2 = Vector512.FusedMultiplyAdd(qd, Vector512.Load(kt + 32), s2);
                s3 = Vector512.FusedMultiplyAdd(qd, Vector512.Load(kt + 48), s3);
            }
            (s0 * scale).Store(s); (s1 * scale).Store(s + 16); (s2 * scale).Store(s + 32); (s3 * scale).Store(s + 48);
            return;
        }
        new Span<float>(s, BlockKeys).Clear();
        for (int d = 0; d < hd; d++, kt += BlockKeys) VectorOps.Axpy(q[d], kt, s, BlockKeys);
        Softmax.Scale(s, BlockKeys, scale);
    }

    /// <summary>acc[0..hd) += Σ_j p[j] · v[j, 0..hd) over the keys of the block, skipping zero weights.</summary>
    static unsafe void WeightedValues(float* p, int nk, float* values, int stride, int hd, float* acc)
    {
        int d = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; d <= hd - 64; d += 64)
            {
                var a0 = Vector512.Load(acc + d); var a1 = Vector512.Load(acc + d + 16);
                var a2 = Vector512.Load(acc + d + 32); var a3 = Vector512.Load(acc + d + 48);
                float* vj = values + d;
                for (int j = 0; j < nk; j++, vj += stride)
                {
                    if (p[j] == 0f) continue;
                    var pj = Vector512.Create(p[j]);
                    a0 = Vector512.FusedMultiplyAdd(pj, Vector512.Load(vj), a0);
                    a1 = Vector512.FusedMultiplyAdd(pj, Vector512.Load(vj + 16), a1);
                    a2 = Vector512.FusedMultiplyAdd(pj, Vector512.Load(vj + 32), a2);
                    a3 = Vector512.FusedMultiplyAdd(pj, Vector512.Load(vj + 48), a3);
                }
                a0.Store(acc + d); a1.Store(acc + d + 16); a2.Store(acc + d + 32); a3.Store(acc + d + 48);
            }
            for (; d <= hd - 16; d += 16)
            {
                var a0 = Vector512.Load(acc + d);
                float* vj = values + d;
                for (int j = 0; j < nk; j++, vj += stride)
                    if (p[j] != 0f) a0 = Vector512.FusedMultiplyAdd(Vector512.Create(p[j]), Vector512.Load(vj), a0);
                a0.Store(acc + d);
            }
        }
        if (d < hd)
        {
            for (int j = 0; j < nk; j++)
                if (p[j] != 0f) VectorOps.Axpy(p[j], values + (long)j * stride + d, acc + d, hd - d);
        }
    }
}
