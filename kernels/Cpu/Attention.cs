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
/// <para>
/// Backward (FlashAttention-2's order) is one work item per (batch, key/value head), so that the query heads of a
/// group, which all add into the same dk and dv rows, run on one thread and no locks are needed. It walks the keys
/// in blocks of 64 (transposed once per block for all the heads of the group), and for each block the query rows
/// that can see it in blocks of 64: it recomputes the scores and P = exp(S − lse) from q, k and the saved lse,
/// forms dP = dO·vᵀ and dS = Scale · P ∘ (dP − D) with D_i = dO_i · O_i, and adds dv += Pᵀ·dO, dk += dSᵀ·q and
/// dq += dS·k straight into the caller's gradients with the same four-row kernels as the forward pass.
/// </para>
/// The explicit allow-mask is read as [Tq, Tk] row-major (allow[i * Tk + j] for query i and key j). Per-row key
/// lengths end a row's key loop at its length, so a short row of a right-padded batch costs in proportion to its
/// length and never reads its padding.
/// Geometry and masks are those of <see cref="AttentionShape"/> and <see cref="AttentionMaskMode"/>. A query
/// row that sees no key at all (possible only with an explicit mask) outputs zeros and lse = −∞.
/// </summary>
public static class Attention
{
    const int BlockRows = 64;
    const int BlockKeys = 64;
    /// <summary>Below this many rows in a block, scores are dot products rather than a transposed key block.</summary>
    const int TransposeRows = 4;

    /// <summary>
    /// output [B, Tq, H·D] = softmax(Scale · q·kᵀ + mask) · v; lse [B, H, Tq] when not empty; keys from keyLengths[b]
    /// on hidden from row b when keyLengths is not empty (<see cref="AttentionShape.ValidateKeyLengths"/>).
    /// </summary>
    public static unsafe void Forward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> output,
        Span<float> lse, in AttentionShape shape, AttentionMaskMode mode, ReadOnlySpan<byte> allow, ReadOnlySpan<int> keyLengths = default)
    {
        shape.Validate();
        if (!keyLengths.IsEmpty) shape.ValidateKeyLengths(keyLengths);
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
        bool perRowKeys = !keyLengths.IsEmpty;
        fixed (float* pq = q, pk = k, pv = v, po = output, pl = lse)
        fixed (byte* pa = allow)
        fixed (int* pkl = keyLengths)
        {
            float* xq = pq, xk = pk, xv = pv, xo = po, xl = keepLse ? pl : null;
            byte* xa = pa;
            int* xkl = pkl;
            Work.For(items, work < (1 << 18) ? items : 1, (start, end) =>
            {
                for (int item = start; item < end; item++)
                {
                    int block = item % rowBlocks;
                    int h = item / rowBlocks % s.Heads;
                    int b = item / rowBlocks / s.Heads;
                    RowBlock(xq, xk, xv, xo, xl, s, mode, xa, perRowKeys ? xkl[b] : s.KeyLength, b, h,
                        block * BlockRows, Math.Min(s.QueryLength, (block + 1) * BlockRows));
                }
            });
        }
    }

    /// <summary>
    /// Backward of <see cref="Forward"/>, accumulating into dq, dk and dv, which are laid out with the strides of q, k
    /// and v. output and lse are those of the forward call; a query row with lse = −∞ (no visible key) adds nothing.
    /// </summary>
    public static unsafe void Backward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, ReadOnlySpan<float> output,
        ReadOnlySpan<float> dOutput, ReadOnlySpan<float> lse, Span<float> dq, Span<float> dk, Span<float> dv,
        in AttentionShape shape, AttentionMaskMode mode, ReadOnlySpan<byte> allow)
    {
        shape.Validate();
        int tq = shape.QueryLength, tk = shape.KeyLength, heads = shape.Heads, hd = shape.HeadDim;
        long qNeeded = (shape.Batch - 1) * shape.QueryBatchStride + (long)(tq - 1) * shape.QueryRowStride + heads * hd;
        long kvNeeded = (shape.Batch - 1) * shape.KeyBatchStride + (long)(tk - 1) * shape.KeyRowStride + shape.KvHeads * hd;
        long outNeeded = (long)shape.Batch * tq * heads * hd;
        Guard.Length(q.Length, qNeeded, nameof(q));
        Guard.Length(dq.Length, qNeeded, nameof(dq));
        Guard.Length(k.Length, kvNeeded, nameof(k));
        Guard.Length(v.Length, kvNeeded, nameof(v));
        Guard.Length(dk.Length, kvNeeded, nameof(dk));
        Guard.Length(dv.Length, kvNeeded, nameof(dv));
        Guard.Length(output.Length, outNeeded, nameof(output));
        Guard.Length(dOutput.Length, outNeeded, nameof(dOutput));
        Guard.Length(lse.Length, (long)shape.Batch * heads * tq, nameof(lse));
        if (mode == AttentionMaskMode.Explicit) Guard.Length(allow.Length, (long)tq * tk, nameof(allow));

        int items = shape.Batch * shape.KvHeads;
        long work = (long)shape.Batch * heads * tq * tk * hd;
        var s = shape;
        fixed (float* pq = q, pk = k, pv = v, po = output, pdo = dOutput, pl = lse, pdq = dq, pdk = dk, pdv = dv)
        fixed (byte* pa = allow)
        {
            var t = new BackwardTensors(pq, pk, pv, po, pdo, pl, pdq, pdk, pdv, pa);
            Work.For(items, work < (1 << 18) ? items : 1, (start, end) =>
            {
                for (int item = start; item < end; item++) KvHeadBackward(t, s, mode, item / s.KvHeads, item % s.KvHeads);
            });
        }
    }

    /// <summary>The buffers of one backward call, each at element 0 of the caller's view.</summary>
    readonly unsafe struct BackwardTensors(float* q, float* k, float* v, float* output, float* dOutput, float* lse,
        float* dq, float* dk, float* dv, byte* allow)
    {
        public readonly float* Q = q, K = k, V = v, Output = output, DOutput = dOutput, Lse = lse, DQ = dq, DK = dk, DV = dv;
        public readonly byte* Allow = allow;
    }

    /// <summary>Everything that reads or writes key/value head kvh of batch b: the query heads of its group.</summary>
    static unsafe void KvHeadBackward(in BackwardTensors t, in AttentionShape shape, AttentionMaskMode mode, int b, int kvh)
    {
        int hd = shape.HeadDim, tq = shape.QueryLength, tk = shape.KeyLength, group = shape.GroupSize;
        int outStride = shape.Heads * hd, qStride = shape.QueryRowStride, kStride = shape.KeyRowStride;
        long kvOffset = b * shape.KeyBatchStride + (long)kvh * hd;
        float* kBase = t.K + kvOffset, vBase = t.V + kvOffset, dkBase = t.DK + kvOffset, dvBase = t.DV + kvOffset;

        float* kt = Scratch.Get(2L * hd * BlockKeys + 2 * BlockRows * BlockKeys + (long)group * tq);
        float* vt = kt + (long)hd * BlockKeys;
        float* p = vt + (long)hd * BlockKeys;
        float* dS = p + BlockRows * BlockKeys;
        float* rowD = dS + BlockRows * BlockKeys;

        for (int g = 0; g < group; g++)
        {
            long o = (long)b * tq * outStride + (long)(kvh * group + g) * hd;
            for (int i = 0; i < tq; i++)
                rowD[g * tq + i] = VectorOps.Dot(t.DOutput + o + (long)i * outStride, t.Output + o + (long)i * outStride, hd);
        }

        for (int kb = 0; kb < tk; kb += BlockKeys)
        {
            int nk = Math.Min(BlockKeys, tk - kb);
            float* keys = kBase + (long)kb * kStride;
            TransposeKeys(keys, kStride, nk, hd, kt);
            TransposeKeys(vBase + (long)kb * kStride, kStride, nk, hd, vt);
            float* dKeys = dkBase + (long)kb * kStride, dValues = dvBase + (long)kb * kStride;
            int firstRow = mode == AttentionMaskMode.Causal ? Math.Max(0, kb - shape.QueryOffset) : 0;
            for (int g = 0; g < group; g++)
            {
                int h = kvh * group + g;
                float* qHead = t.Q + b * shape.QueryBatchStride + (long)h * hd;
                float* dqHead = t.DQ + b * shape.QueryBatchStride + (long)h * hd;
                float* dOHead = t.DOutput + (long)b * tq * outStride + (long)h * hd;
                float* lseHead = t.Lse + ((long)b * shape.Heads + h) * tq;
                for (int r0 = firstRow; r0 < tq; r0 += BlockRows)
                {
                    int rows = Math.Min(BlockRows, tq - r0);
                    float* qRows = qHead + (long)r0 * qStride, dORows = dOHead + (long)r0 * outStride;
                    BlockScores(qRows, qStride, rows, kt, hd, shape.Scale, p);
                    BlockScores(dORows, outStride, rows, vt, hd, 1f, dS);
                    for (int r = 0; r < rows; r++)
                    {
                        int i = r0 + r;
                        float* pi = p + r * BlockKeys, dSi = dS + r * BlockKeys;
                        float rowLse = lseHead[i];
                        if (float.IsNegativeInfinity(rowLse) || Mask(pi, nk, mode, shape.QueryOffset + i - kb, t.Allow + (long)i * tk + kb) == 0)
                        {
                            new Span<float>(pi, BlockKeys).Clear();
                            new Span<float>(dSi, BlockKeys).Clear();
                        }
                        else ScoreGradients(pi, dSi, rowLse, rowD[g * tq + i], shape.Scale);
                    }
                    Weighted(p, 1, BlockKeys, nk, rows, dORows, outStride, hd, dValues, kStride);
                    Weighted(dS, 1, BlockKeys, nk, rows, qRows, qStride, hd, dKeys, kStride);
                    Weighted(dS, BlockKeys, 1, rows, nk, keys, kStride, hd, dqHead + (long)r0 * qStride, qStride);
                }
            }
        }
    }

    /// <summary>s[r, 0..64) = scale · Σ_d x[r, d] · kt[d, 0..64) for count rows of x (rows stride apart).</summary>
    static unsafe void BlockScores(float* x, int stride, int count, float* kt, int hd, float scale, float* s)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            for (int r = 0; r < count; r += 4)
                Scores4(x + (long)r * stride, stride, Math.Min(4, count - r), kt, hd, scale, s + r * BlockKeys);
        }
        else
        {
            for (int r = 0; r < count; r++) ScoresTransposed(x + (long)r * stride, kt, hd, scale, s + r * BlockKeys);
        }
    }

    /// <summary>
    /// For one query row: p = exp(s − lse) over the 64 lanes (masked scores are −∞, so their weight is 0), and in
    /// place of dP, dS = scale · p · (dP − D).
    /// </summary>
    static unsafe void ScoreGradients(float* p, float* dS, float lse, float rowD, float scale)
    {
        int c = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var l = Vector512.Create(lse);
            var d = Vector512.Create(rowD);
            var f = Vector512.Create(scale);
            for (; c < BlockKeys; c += 16)
            {
                var pc = FastExp.Exp(Vector512.Load(p + c) - l);
                Vector512.Store(pc, p + c);
                Vector512.Store(f * pc * (Vector512.Load(dS + c) - d), dS + c);
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var l = Vector256.Create(lse);
            var d = Vector256.Create(rowD);
            var f = Vector256.Create(scale);
            for (; c < BlockKeys; c += 8)
            {
                var pc = FastExp.Exp(Vector256.Load(p + c) - l);
                Vector256.Store(pc, p + c);
                Vector256.Store(f * pc * (Vector256.Load(dS + c) - d), dS + c);
            }
        }
        for (; c < BlockKeys; c++)
        {
            float pc = MathF.Exp(p[c] - lse);
            p[c] = pc;
            dS[c] = scale * pc * (dS[c] - rowD);
        }
    }

    /// <summary>
    /// acc[r, :] += Σ_j w[r, j] · values[j, :] for count rows and n values, the weight w[r, j] read at p[r · pRow + j · pCol]
    /// (see <see cref="WeightedValues4"/>); without AVX-512, one row and one non-zero weight at a time.
    /// </summary>
    static unsafe void Weighted(float* p, int pRow, int pCol, int count, int n, float* values, int stride, int hd, float* acc, int accStride)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            for (int r = 0; r < count; r += 4)
                WeightedValues4(p + (long)r * pRow, pRow, pCol, Math.Min(4, count - r), n, values, stride, hd, acc + (long)r * accStride, accStride);
            return;
        }
        for (int r = 0; r < count; r++)
        {
            for (int j = 0; j < n; j++)
            {
                float w = p[(long)r * pRow + (long)j * pCol];
                if (w != 0f) VectorOps.Axpy(w, values + (long)j * stride, acc + (long)r * accStride, hd);
            }
        }
    }

    /// <summary>Query rows [r0, r1) of head h in batch b, which has keys [0, keyLength).</summary>
    static unsafe void RowBlock(float* q, float* k, float* v, float* output, float* lse, in AttentionShape shape,
        AttentionMaskMode mode, byte* allow, int keyLength, int b, int h, int r0, int r1)
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

        // The last block may stop inside a key block: Mask hides its lanes from nk on.
        int keyEnd = mode == AttentionMaskMode.Causal ? Math.Min(keyLength, shape.QueryOffset + r1) : keyLength;
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
                    WeightedValues4(scores + r * BlockKeys, BlockKeys, 1, Math.Min(4, rows - r), nk, values, shape.KeyRowStride, hd, acc + (long)r * hd, hd);
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
    /// for the four rows. The weight p[r, j] is read at p[r · pRow + j · pCol], so the same kernel multiplies by a
    /// block of weights or by its transpose; rows of acc are accStride apart and rows of v stride apart. Rows past
    /// count alias the last row (weights and accumulator): it is computed again and stored twice with the same
    /// value, so nothing outside the count rows is touched and acc may be a caller's gradient.
    /// </summary>
    static unsafe void WeightedValues4(float* p, int pRow, int pCol, int count, int nk, float* values, int stride, int hd, float* acc, int accStride)
    {
        int o1 = Math.Min(1, count - 1) * pRow, o2 = Math.Min(2, count - 1) * pRow, o3 = Math.Min(3, count - 1) * pRow;
        float* a0 = acc, a1 = acc + (long)Math.Min(1, count - 1) * accStride, a2 = acc + (long)Math.Min(2, count - 1) * accStride,
            a3 = acc + (long)Math.Min(3, count - 1) * accStride;
        int d = 0;
        for (; d <= hd - 32; d += 32)
        {
            var c00 = Vector512.Load(a0 + d); var c01 = Vector512.Load(a0 + d + 16);
            var c10 = Vector512.Load(a1 + d); var c11 = Vector512.Load(a1 + d + 16);
            var c20 = Vector512.Load(a2 + d); var c21 = Vector512.Load(a2 + d + 16);
            var c30 = Vector512.Load(a3 + d); var c31 = Vector512.Load(a3 + d + 16);
            float* vj = values + d;
            float* pj = p;
            for (int j = 0; j < nk; j++, vj += stride, pj += pCol)
            {
                var v0 = Vector512.Load(vj); var v1 = Vector512.Load(vj + 16);
                var w = Vector512.Create(pj[0]);
                c00 = Vector512.FusedMultiplyAdd(w, v0, c00); c01 = Vector512.FusedMultiplyAdd(w, v1, c01);
                w = Vector512.Create(pj[o1]);
                c10 = Vector512.FusedMultiplyAdd(w, v0, c10); c11 = Vector512.FusedMultiplyAdd(w, v1, c11);
                w = Vector512.Create(pj[o2]);
                c20 = Vector512.FusedMultiplyAdd(w, v0, c20); c21 = Vector512.FusedMultiplyAdd(w, v1, c21);
                w = Vector512.Create(pj[o3]);
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
            float* pj = p;
            for (int j = 0; j < nk; j++, vj += stride, pj += pCol)
            {
                var v0 = Vector512.Load(vj);
                c0 = Vector512.FusedMultiplyAdd(Vector512.Create(pj[0]), v0, c0);
                c1 = Vector512.FusedMultiplyAdd(Vector512.Create(pj[o1]), v0, c1);
                c2 = Vector512.FusedMultiplyAdd(Vector512.Create(pj[o2]), v0, c2);
                c3 = Vector512.FusedMultiplyAdd(Vector512.Create(pj[o3]), v0, c3);
            }
            c0.Store(a0 + d); c1.Store(a1 + d); c2.Store(a2 + d); c3.Store(a3 + d);
        }
        for (; d < hd; d++)
        {
            float* vj = values + d;
            float* pj = p;
            float c0 = a0[d], c1 = a1[d], c2 = a2[d], c3 = a3[d];
            for (int j = 0; j < nk; j++, vj += stride, pj += pCol)
            {
                float vv = *vj;
                c0 += pj[0] * vv; c1 += pj[o1] * vv; c2 += pj[o2] * vv; c3 += pj[o3] * vv;
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
