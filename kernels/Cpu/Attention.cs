using System.Runtime.Intrinsics;

namespace DiffuSharp.Kernels.Cpu;

/// <summary>
/// Flash-style scaled dot-product attention in float32. A work item is one (batch, head, block of up to
/// 64 query rows); it walks the visible keys in blocks of 64 with an online softmax (running maximum and
/// sum per row, the partial output rescaled when the maximum grows), so no [Tq, Tk] score matrix exists.
/// <para>
/// Each key block goes through three steps. Scores: for a block of several query rows the key block is
/// transposed to [D, 64] once, and four query rows at a time FMA broadcast q values into sixteen vector
/// accumulators that share each row of kᵀ; one to three rows (KV-cache decoding) take dot products instead,
/// as the transpose would cost as much as the scores. Softmax: per row, mask, raise the running maximum and
/// rescale. Values: four rows at a time broadcast their weights against each vector of v, which is loaded
/// once for the four. Without AVX-512 the same steps run one row at a time with 256-bit vectors.
/// </para>
/// The explicit allow-mask is read as [Tq, Tk] row-major (allow[i * Tk + j] for query i and key j).
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
        bool grouped = Vector512.IsHardwareAccelerated && rows >= TransposeRows;
        bool transpose = rows >= TransposeRows;
        for (int kb = 0; kb < keyEnd; kb += BlockKeys)
        {
            int nk = Math.Min(BlockKeys, keyEnd - kb);
            float* keys = kBase + (long)kb * shape.KeyRowStride;
            float* values = vBase + (long)kb * shape.KeyRowStride;
            if (transpose) TransposeKeys(keys, shape.KeyRowStride, nk, hd, kt);
            if (grouped)
            {
                for (int r = 0; r < rows; r += 4)
                    Scores4(qBase + (long)(r0 + r) * shape.QueryRowStride, shape.QueryRowStride, Math.Min(4, rows - r), kt, hd, shape.Scale,
                        scores + r * BlockKeys);
                for (int r = 0; r < rows; r++)
                {
                    float* si = scores + r * BlockKeys;
                    if (!Update(si, nk, mode, shape.QueryOffset + r0 + r - kb, allow + (long)(r0 + r) * tk + kb,
                            ref rowMax[r], ref rowSum[r], acc + (long)r * hd, hd))
                        new Span<float>(si, BlockKeys).Clear();
                }
                for (int r = 0; r < rows; r += 4)
                    WeightedValues4(scores + r * BlockKeys, Math.Min(4, rows - r), nk, values, shape.KeyRowStride, hd, acc + (long)r * hd);
                continue;
            }
            for (int r = 0; r < rows; r++)
            {
                int i = r0 + r;
                float* qi = qBase + (long)i * shape.QueryRowStride;
                float* si = scores + r * BlockKeys;
                if (transpose) ScoresTransposed(qi, kt, hd, shape.Scale, si);
                else
                {
                    for (int j = 0; j < nk; j++)
                        si[j] = shape.Scale * VectorOps.Dot(qi, keys + (long)j * shape.KeyRowStride, hd);
                }
                float* ai = acc + (long)r * hd;
                if (Update(si, nk, mode, shape.QueryOffset + i - kb, allow + (long)i * tk + kb, ref rowMax[r], ref rowSum[r], ai, hd))
                    WeightedValues(si, nk, values, shape.KeyRowStride, hd, ai);
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
    /// The online-softmax step for one row and one key block: masks the scores, raises the running maximum,
    /// rescales the running sum and the partial output by exp(old max − new max), and turns the scores into
    /// weights exp(s − max) in place. Returns false (and changes nothing) when the block hides every key.
    /// </summary>
    static unsafe bool Update(float* s, int nk, AttentionMaskMode mode, int lastVisible, byte* allowRow,
        ref float rowMax, ref float rowSum, float* acc, int hd)
    {
        if (Mask(s, nk, mode, lastVisible, allowRow) == 0) return false;
        float newMax = MathF.Max(rowMax, Reduce.Max(s, BlockKeys));
        float correction = MathF.Exp(rowMax - newMax);
        rowMax = newMax;
        rowSum = rowSum * correction + Softmax.ExpShifted(s, s, BlockKeys, newMax);
        if (correction != 1f) Softmax.Scale(acc, hd, correction);
        return true;
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

    /// <summary>One row of scores from the transposed key block without AVX-512: s[0..64) = scale · Σ_d q[d] · kt[d, 0..64).</summary>
    static unsafe void ScoresTransposed(float* q, float* kt, int hd, float scale, float* s)
    {
        new Span<float>(s, BlockKeys).Clear();
        for (int d = 0; d < hd; d++, kt += BlockKeys) VectorOps.Axpy(q[d], kt, s, BlockKeys);
        Softmax.Scale(s, BlockKeys, scale);
    }

    /// <summary>
    /// Scores of four query rows at once (AVX-512): s[r, 0..64) = scale · Σ_d q[r, d] · kt[d, 0..64), sixteen
    /// accumulators sharing each row of kt. Rows past count repeat the last query and fill unused slots of s.
    /// </summary>
    static unsafe void Scores4(float* q, int stride, int count, float* kt, int hd, float scale, float* s)
    {
        float* q0 = q, q1 = q + (long)Math.Min(1, count - 1) * stride, q2 = q + (long)Math.Min(2, count - 1) * stride, q3 = q + (long)Math.Min(3, count - 1) * stride;
        var s00 = Vector512<float>.Zero; var s01 = s00; var s02 = s00; var s03 = s00;
        var s10 = s00; var s11 = s00; var s12 = s00; var s13 = s00;
        var s20 = s00; var s21 = s00; var s22 = s00; var s23 = s00;
        var s30 = s00; var s31 = s00; var s32 = s00; var s33 = s00;
        for (int d = 0; d < hd; d++, kt += BlockKeys)
        {
            var k0 = Vector512.Load(kt); var k1 = Vector512.Load(kt + 16); var k2 = Vector512.Load(kt + 32); var k3 = Vector512.Load(kt + 48);
            var a = Vector512.Create(q0[d]);
            s00 = Vector512.FusedMultiplyAdd(a, k0, s00); s01 = Vector512.FusedMultiplyAdd(a, k1, s01);
            s02 = Vector512.FusedMultiplyAdd(a, k2, s02); s03 = Vector512.FusedMultiplyAdd(a, k3, s03);
            a = Vector512.Create(q1[d]);
            s10 = Vector512.FusedMultiplyAdd(a, k0, s10); s11 = Vector512.FusedMultiplyAdd(a, k1, s11);
            s12 = Vector512.FusedMultiplyAdd(a, k2, s12); s13 = Vector512.FusedMultiplyAdd(a, k3, s13);
            a = Vector512.Create(q2[d]);
            s20 = Vector512.FusedMultiplyAdd(a, k0, s20); s21 = Vector512.FusedMultiplyAdd(a, k1, s21);
            s22 = Vector512.FusedMultiplyAdd(a, k2, s22); s23 = Vector512.FusedMultiplyAdd(a, k3, s23);
            a = Vector512.Create(q3[d]);
            s30 = Vector512.FusedMultiplyAdd(a, k0, s30); s31 = Vector512.FusedMultiplyAdd(a, k1, s31);
            s32 = Vector512.FusedMultiplyAdd(a, k2, s32); s33 = Vector512.FusedMultiplyAdd(a, k3, s33);
        }
        var f = Vector512.Create(scale);
        (s00 * f).Store(s); (s01 * f).Store(s + 16); (s02 * f).Store(s + 32); (s03 * f).Store(s + 48);
        s += BlockKeys;
        (s10 * f).Store(s); (s11 * f).Store(s + 16); (s12 * f).Store(s + 32); (s13 * f).Store(s + 48);
        s += BlockKeys;
        (s20 * f).Store(s); (s21 * f).Store(s + 16); (s22 * f).Store(s + 32); (s23 * f).Store(s + 48);
        s += BlockKeys;
        (s30 * f).Store(s); (s31 * f).Store(s + 16); (s32 * f).Store(s + 32); (s33 * f).Store(s + 48);
    }

    /// <summary>
    /// acc[r, 0..hd) += Σ_j p[r, j] · v[j, 0..hd) for four rows at once (AVX-512): each vector of v is loaded once
    /// for the four rows. Rows past count repeat the last row's weights into unused slots of acc.
    /// </summary>
    static unsafe void WeightedValues4(float* p, int count, int nk, float* values, int stride, int hd, float* acc)
    {
        float* p0 = p, p1 = p + Math.Min(1, count - 1) * BlockKeys, p2 = p + Math.Min(2, count - 1) * BlockKeys, p3 = p + Math.Min(3, count - 1) * BlockKeys;
        float* a0 = acc, a1 = a0 + hd, a2 = a1 + hd, a3 = a2 + hd;
        int d = 0;
        for (; d <= hd - 32; d += 32)
        {
            var c00 = Vector512.Load(a0 + d); var c01 = Vector512.Load(a0 + d + 16);
            var c10 = Vector512.Load(a1 + d); var c11 = Vector512.Load(a1 + d + 16);
            var c20 = Vector512.Load(a2 + d); var c21 = Vector512.Load(a2 + d + 16);
            var c30 = Vector512.Load(a3 + d); var c31 = Vector512.Load(a3 + d + 16);
            float* vj = values + d;
            for (int j = 0; j < nk; j++, vj += stride)
            {
                var v0 = Vector512.Load(vj); var v1 = Vector512.Load(vj + 16);
                var w = Vector512.Create(p0[j]);
                c00 = Vector512.FusedMultiplyAdd(w, v0, c00); c01 = Vector512.FusedMultiplyAdd(w, v1, c01);
                w = Vector512.Create(p1[j]);
                c10 = Vector512.FusedMultiplyAdd(w, v0, c10); c11 = Vector512.FusedMultiplyAdd(w, v1, c11);
                w = Vector512.Create(p2[j]);
                c20 = Vector512.FusedMultiplyAdd(w, v0, c20); c21 = Vector512.FusedMultiplyAdd(w, v1, c21);
                w = Vector512.Create(p3[j]);
                c30 = Vector512.FusedMultiplyAdd(w, v0, c30); c31 = Vector512.FusedMultiplyAdd(w, v1, c31);
            }
            c00.Store(a0 + d); c01.Store(a0 + d + 16);
            c10.Store(a1 + d); c11.Store(a1 + d + 16);
            c20.Store(a2 + d); c21.Store(a2 + d + 16);
            c30.Store(a3 + d); c31.Store(a3 + d + 16);
        }
        for (; d <= hd - 16; d += 16)
        {
            var c0 = Vector512.Load(a0 + d); var c1 = Vector512.Load(a1 + d); var c2 = Vector512.Load(a2 + d); var c3 = Vector512.Load(a3 + d);
            float* vj = values + d;
            for (int j = 0; j < nk; j++, vj += stride)
            {
                var v0 = Vector512.Load(vj);
                c0 = Vector512.FusedMultiplyAdd(Vector512.Create(p0[j]), v0, c0);
                c1 = Vector512.FusedMultiplyAdd(Vector512.Create(p1[j]), v0, c1);
                c2 = Vector512.FusedMultiplyAdd(Vector512.Create(p2[j]), v0, c2);
                c3 = Vector512.FusedMultiplyAdd(Vector512.Create(p3[j]), v0, c3);
            }
            c0.Store(a0 + d); c1.Store(a1 + d); c2.Store(a2 + d); c3.Store(a3 + d);
        }
        for (; d < hd; d++)
        {
            float* vj = values + d;
            float c0 = a0[d], c1 = a1[d], c2 = a2[d], c3 = a3[d];
            for (int j = 0; j < nk; j++, vj += stride)
            {
                float vv = *vj;
                c0 += p0[j] * vv; c1 += p1[j] * vv; c2 += p2[j] * vv; c3 += p3[j] * vv;
            }
            a0[d] = c0; a1[d] = c1; a2[d] = c2; a3[d] = c3;
        }
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
