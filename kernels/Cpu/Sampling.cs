using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace DiffuSharp.Kernels.Cpu;

/// <summary>
/// Token sampling, one row per work item, with the semantics of <see cref="Reference.Sampling"/>. A row is a few
/// vector passes over the logits z and a per-thread scratch row e = exp((z − max) / T): max, exp, stats, draw.
/// Top-k and top-p never sort the row. Both cuts are "keep z ≥ θ" for a logit threshold θ, found by bisection on the
/// logit value, each step one masked count-and-mass pass over the row; once at most <see cref="Window"/> logits lie
/// between the bounds they are gathered and the bisection goes on over them alone, until one logit value is left.
/// Comparing logits, not exponentials, keeps the ties and the order of the float64 reference even where exp rounds
/// two logits together. Masses are summed per <see cref="Chunk"/> in float and across chunks in double, always in the
/// same order, so the draw's running sum ends exactly at the kept mass it is scaled by. Without a cut a pass costs
/// about one read of the logits (BENCHMARKS.md, kernel choices).
/// </summary>
public static class Sampling
{
    /// <summary>Elements summed in float before the sum moves to double (about 1e-7 relative error per chunk).</summary>
    const int Chunk = 256;

    /// <summary>
    /// exp(d) is 0 in float for d below −104 (−87.3 in <see cref="FastExp"/>), so logits more than this many
    /// temperatures below the maximum carry no mass and the top-p search starts above them.
    /// </summary>
    const float ZeroBelow = 104f;

    /// <summary>
    /// Bounds further apart than this are bisected in bit order (a geometric step, so a −3.4e38 "masked" logit costs a
    /// few steps, not a hundred), closer ones by value.
    /// </summary>
    const float WideRange = 1 << 20;

    /// <summary>When at most this many logits lie between the bisection's bounds, they are gathered into scratch and bisected alone.</summary>
    const int Window = 256;

    /// <summary>
    /// tokens[r] and stats[r, 0..<see cref="SamplingOptions.StatCount"/>) for each row of logits [rows, vocab]; see
    /// <see cref="Reference.Sampling.SampleTokens"/> for the rules. Throws <see cref="ArgumentException"/> for a row
    /// without a finite maximum (all −∞, or holding a NaN or +∞), after the other rows are written.
    /// </summary>
    public static unsafe void SampleTokens(ReadOnlySpan<float> logits, int rows, int vocab, in SamplingOptions options,
        ulong seed, ulong stream, Span<int> tokens, Span<float> stats, SampleRows keys = default)
    {
        options.Validate();
        Guard.Positive(vocab, nameof(vocab));
        Guard.Length(logits.Length, (long)rows * vocab, nameof(logits));
        Guard.Length(tokens.Length, rows, nameof(tokens));
        Guard.Length(stats.Length, (long)rows * SamplingOptions.StatCount, nameof(stats));
        var o = options;
        int firstBadRow = int.MaxValue;
        fixed (float* pz = logits, ps = stats)
        fixed (int* pt = tokens)
        {
            float* xz = pz, xs = ps;
            int* xt = pt;
            Work.For(rows, Math.Max(1, (1 << 14) / vocab), (start, end) =>
            {
                float* scratch = Scratch.Get(vocab + 2L * Window);
                for (int r = start; r < end; r++)
                {
                    float u = Philox.Uniform(seed, stream, keys.Key(r));
                    if (!Row(xz + (long)r * vocab, vocab, o, u, scratch, xt + r, xs + (long)r * SamplingOptions.StatCount))
                        InterlockedMin(ref firstBadRow, r);
                }
            });
        }
        if (firstBadRow != int.MaxValue)
            throw new ArgumentException($"row {firstBadRow} of the logits has no finite maximum (all -inf, or a NaN or +inf)", nameof(logits));
    }

    static void InterlockedMin(ref int target, int value)
    {
        int seen = Volatile.Read(ref target);
        while (value < seen)
        {
            int previous = Interlocked.CompareExchange(ref target, value, seen);
            if (previous == seen) return;
            seen = previous;
        }
    }

    /// <summary>Samples one row; false when it has no finite maximum. scratch holds n + 2 · <see cref="Window"/> floats.</summary>
    static unsafe bool Row(float* z, int n, in SamplingOptions o, float u, float* scratch, int* token, float* stat)
    {
        float max = MaxAndMinFinite(z, n, out float minFinite, out bool hasNaN);
        if (hasNaN || !float.IsFinite(max)) return false;

        float invT = o.Greedy ? 1f : MathF.Min(1f / o.Temperature, float.MaxValue);
        float* e = scratch;
        Exp(z, e, n, max, invT, out int maxCount, out int finiteCount, out float second);

        float threshold = float.NegativeInfinity;
        if (!o.Greedy && ((o.TopK > 0 && o.TopK < finiteCount) || o.TopP < 1))
        {
            float* windowZ = scratch + n, windowE = windowZ + Window;
            float low = minFinite;
            if (o.TopK > 0 && o.TopK < finiteCount)
            {
                low = Threshold(z, e, n, low, finiteCount, max, maxCount, o.TopK, 0, windowZ, windowE);
                threshold = low;
            }
            if (o.TopP < 1)
            {
                // Logits this far below the maximum have e = 0 exactly: starting above them changes no mass.
                low = MathF.Max(low, max - ZeroBelow * o.Temperature);
                double lowMass = Mass(z, e, n, low, out int lowCount);
                threshold = Threshold(z, e, n, low, lowCount, max, maxCount, 0, o.TopP * lowMass, windowZ, windowE);
            }
        }

        double keptMass = Stats(z, e, n, max, invT, threshold, out int keptCount, out double weighted);
        int t = o.Greedy ? FirstIndexOf(z, n, max) : Draw(z, e, n, threshold, u * keptMass);
        float secondE = keptCount > 1 ? MathF.Exp((second - max) * invT) : 0;
        double logMass = Math.Log(keptMass);
        *token = t;
        stat[SamplingOptions.LogProb] = (float)((z[t] - max) * invT - logMass);
        stat[SamplingOptions.MaxProb] = (float)(1 / keptMass);
        stat[SamplingOptions.Margin] = (float)((1 - secondE) / keptMass);
        stat[SamplingOptions.NegEntropy] = (float)(weighted / keptMass - logMass);
        return true;
    }

    /// <summary>The row maximum and the smallest finite logit; hasNaN when any logit is a NaN.</summary>
    static unsafe float MaxAndMinFinite(float* z, int n, out float minFinite, out bool hasNaN)
    {
        int i = 0;
        float max = float.NegativeInfinity, min = float.PositiveInfinity;
        bool nan = false;
        if (Vector512.IsHardwareAccelerated)
        {
            var mx = Vector512.Create(float.NegativeInfinity);
            var mn = Vector512.Create(float.PositiveInfinity);
            var bad = Vector512<float>.Zero;
            var negInf = Vector512.Create(float.NegativeInfinity);
            for (; i <= n - 16; i += 16)
            {
                var v = Vector512.Load(z + i);
                mx = Vector512.MaxNative(mx, v);
                mn = Vector512.MinNative(mn, Vector512.ConditionalSelect(Vector512.Equals(v, negInf), mn, v));
                bad |= ~Vector512.Equals(v, v);
            }
            for (int l = 0; l < 16; l++)
            {
                max = MathF.Max(max, mx[l]);
                min = MathF.Min(min, mn[l]);
            }
            nan |= bad != Vector512<float>.Zero;
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var mx = Vector256.Create(float.NegativeInfinity);
            var mn = Vector256.Create(float.PositiveInfinity);
            var bad = Vector256<float>.Zero;
            var negInf = Vector256.Create(float.NegativeInfinity);
            for (; i <= n - 8; i += 8)
            {
                var v = Vector256.Load(z + i);
                mx = Vector256.MaxNative(mx, v);
                mn = Vector256.MinNative(mn, Vector256.ConditionalSelect(Vector256.Equals(v, negInf), mn, v));
                bad |= ~Vector256.Equals(v, v);
            }
            for (int l = 0; l < 8; l++)
            {
                max = MathF.Max(max, mx[l]);
                min = MathF.Min(min, mn[l]);
            }
            nan |= bad != Vector256<float>.Zero;
        }
        for (; i < n; i++)
        {
            float v = z[i];
            nan |= float.IsNaN(v);
            max = MathF.Max(max, v);
            if (v != float.NegativeInfinity) min = MathF.Min(min, v);
        }
        minFinite = min;
        hasNaN = nan;
        return max;
    }

    /// <summary>
    /// e[i] = exp((z[i] − max) · invT) (<see cref="FastExp"/>: −∞ gives 0, and the maximum exactly 1), counting the
    /// logits equal to the maximum and the finite ones, and finding the second-largest logit (the maximum again when it is tied).
    /// </summary>
    static unsafe void Exp(float* z, float* e, int n, float max, float invT, out int maxCount, out int finiteCount, out float second)
    {
        int i = 0, atMax = 0, finite = 0;
        float below = float.NegativeInfinity;
        if (Vector512.IsHardwareAccelerated)
        {
            var mx = Vector512.Create(max);
            var scale = Vector512.Create(invT);
            var negInf = Vector512.Create(float.NegativeInfinity);
            var countMax = Vector512<int>.Zero;
            var countFinite = Vector512<int>.Zero;
            var best = negInf;
            for (; i <= n - 16; i += 16)
            {
                var v = Vector512.Load(z + i);
                Vector512.Store(FastExp.Exp((v - mx) * scale), e + i);
                var isMax = Vector512.Equals(v, mx);
                countMax -= isMax.AsInt32();
                countFinite -= Vector512.GreaterThan(v, negInf).AsInt32();
                best = Vector512.MaxNative(best, Vector512.ConditionalSelect(isMax, negInf, v));
            }
            atMax += Vector512.Sum(countMax);
            finite += Vector512.Sum(countFinite);
            for (int l = 0; l < 16; l++) below = MathF.Max(below, best[l]);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var mx = Vector256.Create(max);
            var scale = Vector256.Create(invT);
            var negInf = Vector256.Create(float.NegativeInfinity);
            var countMax = Vector256<int>.Zero;
            var countFinite = Vector256<int>.Zero;
            var best = negInf;
            for (; i <= n - 8; i += 8)
            {
                var v = Vector256.Load(z + i);
                Vector256.Store(FastExp.Exp((v - mx) * scale), e + i);
                var isMax = Vector256.Equals(v, mx);
                countMax -= isMax.AsInt32();
                countFinite -= Vector256.GreaterThan(v, negInf).AsInt32();
                best = Vector256.MaxNative(best, Vector256.ConditionalSelect(isMax, negInf, v));
            }
            atMax += Vector256.Sum(countMax);
            finite += Vector256.Sum(countFinite);
            for (int l = 0; l < 8; l++) below = MathF.Max(below, best[l]);
        }
        for (; i < n; i++)
        {
            float v = z[i];
            e[i] = MathF.Exp((v - max) * invT);
            if (v == max) atMax++;
            else below = MathF.Max(below, v);
            if (v > float.NegativeInfinity) finite++;
        }
        maxCount = atMax;
        finiteCount = finite;
        second = atMax > 1 ? max : below;
    }

    /// <summary>Σ e[i] and the count over the i &lt; len with z[i] ≥ threshold, in float: one chunk of every mass in this file.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe float ChunkMass(float* z, float* e, int len, float threshold, out int count)
    {
        int i = 0, kept = 0;
        float mass = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var t = Vector512.Create(threshold);
            var acc0 = Vector512<float>.Zero;
            var acc1 = Vector512<float>.Zero;
            var cnt = Vector512<int>.Zero;
            for (; i <= len - 32; i += 32)
            {
                var keep0 = Vector512.GreaterThanOrEqual(Vector512.Load(z + i), t);
                var keep1 = Vector512.GreaterThanOrEqual(Vector512.Load(z + i + 16), t);
                acc0 += Vector512.Load(e + i) & keep0;
                acc1 += Vector512.Load(e + i + 16) & keep1;
                cnt -= keep0.AsInt32() + keep1.AsInt32();
            }
            for (; i <= len - 16; i += 16)
            {
                var keep = Vector512.GreaterThanOrEqual(Vector512.Load(z + i), t);
                acc0 += Vector512.Load(e + i) & keep;
                cnt -= keep.AsInt32();
            }
            mass += Vector512.Sum(acc0 + acc1);
            kept += Vector512.Sum(cnt);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var t = Vector256.Create(threshold);
            var acc = Vector256<float>.Zero;
            var cnt = Vector256<int>.Zero;
            for (; i <= len - 8; i += 8)
            {
                var keep = Vector256.GreaterThanOrEqual(Vector256.Load(z + i), t);
                acc += Vector256.Load(e + i) & keep;
                cnt -= keep.AsInt32();
            }
            mass += Vector256.Sum(acc);
            kept += Vector256.Sum(cnt);
        }
        for (; i < len; i++)
        {
            if (z[i] >= threshold)
            {
                mass += e[i];
                kept++;
            }
        }
        count = kept;
        return mass;
    }

    /// <summary>Σ e[i] and the count over z[i] ≥ threshold, chunk by chunk.</summary>
    static unsafe double Mass(float* z, float* e, int n, float threshold, out int count)
    {
        double mass = 0;
        int kept = 0;
        for (int c = 0; c < n; c += Chunk)
        {
            mass += ChunkMass(z + c, e + c, Math.Min(Chunk, n - c), threshold, out int k);
            kept += k;
        }
        count = kept;
        return mass;
    }

    /// <summary>
    /// The largest logit θ ≥ low with count(z ≥ θ) ≥ needCount and mass(z ≥ θ) ≥ needMass, given that low meets both
    /// (with lowCount logits at or above it) and that the maximum has maxCount copies. Bisects [low, high) over the
    /// whole row until at most <see cref="Window"/> logits lie inside, gathers those, and goes on over them alone
    /// until one logit value is left inside.
    /// </summary>
    static unsafe float Threshold(float* z, float* e, int n, float low, int lowCount, float max, int maxCount,
        int needCount, double needMass, float* windowZ, float* windowE)
    {
        float high = max;
        int highCount = maxCount;
        double highMass = maxCount;
        if (highCount >= needCount && highMass >= needMass) return high;
        float* bz = z, be = e;
        int bn = n, baseCount = 0;
        double baseMass = 0;
        while (true)
        {
            if (bz == z && lowCount - highCount <= Window)
            {
                bn = Gather(z, e, n, low, high, windowZ, windowE);
                bz = windowZ;
                be = windowE;
                baseCount = highCount;
                baseMass = highMass;
            }
            if (lowCount - highCount <= 1) break;
            float mid = high - low <= WideRange ? low * 0.5f + high * 0.5f : OrderedMidpoint(low, high);
            if (!(mid > low && mid < high)) mid = OrderedMidpoint(low, high);
            if (!(mid > low && mid < high)) break;
            double m = baseMass + Mass(bz, be, bn, mid, out int c);
            c += baseCount;
            if (c >= needCount && m >= needMass)
            {
                low = mid;
                lowCount = c;
            }
            else
            {
                high = mid;
                highCount = c;
                highMass = m;
            }
        }

        // [low, high) holds a single logit value now: one logit, or ties between bounds with no float between them
        // (then every logit inside equals low). Empty only if rounding made the two tests disagree.
        if (lowCount == highCount) return high;
        if (bz == z) return low;
        float theta = low;
        for (int i = 0; i < bn; i++)
            if (bz[i] < high) theta = MathF.Max(theta, bz[i]);
        return theta;
    }

    /// <summary>
    /// The float halfway between low and high in bit order (IEEE floats, sign-flipped, sort like integers): a geometric
    /// step that crosses a wide range such as [−3.4e38, 10] in a few dozen steps where halving the value would take a hundred.
    /// </summary>
    static float OrderedMidpoint(float low, float high)
    {
        long mid = ((long)OrderedBits(low) + OrderedBits(high)) >> 1;
        return BitConverter.Int32BitsToSingle(OrderedBits((int)mid));
    }

    /// <summary>A float's bits as an int that sorts like the float.</summary>
    static int OrderedBits(float value) => OrderedBits(BitConverter.SingleToInt32Bits(value));

    /// <summary>Negative floats flip their magnitude bits; the map is its own inverse, so it also turns an ordered int back into float bits.</summary>
    static int OrderedBits(int bits) => bits >= 0 ? bits : bits ^ 0x7FFFFFFF;

    /// <summary>
    /// Copies the (z, e) pairs with low ≤ z &lt; high into windowZ, windowE, at most <see cref="Window"/> of them (its
    /// caller has counted that many or fewer); returns how many.
    /// </summary>
    static unsafe int Gather(float* z, float* e, int n, float low, float high, float* windowZ, float* windowE)
    {
        int i = 0, w = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var lo = Vector512.Create(low);
            var hi = Vector512.Create(high);
            for (; i <= n - 16; i += 16)
            {
                var v = Vector512.Load(z + i);
                ulong bits = (Vector512.GreaterThanOrEqual(v, lo) & Vector512.LessThan(v, hi)).ExtractMostSignificantBits();
                for (; bits != 0 && w < Window; bits &= bits - 1)
                {
                    int j = i + BitOperations.TrailingZeroCount(bits);
                    windowZ[w] = z[j];
                    windowE[w++] = e[j];
                }
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var lo = Vector256.Create(low);
            var hi = Vector256.Create(high);
            for (; i <= n - 8; i += 8)
            {
                var v = Vector256.Load(z + i);
                uint bits = (Vector256.GreaterThanOrEqual(v, lo) & Vector256.LessThan(v, hi)).ExtractMostSignificantBits();
                for (; bits != 0 && w < Window; bits &= bits - 1)
                {
                    int j = i + BitOperations.TrailingZeroCount(bits);
                    windowZ[w] = z[j];
                    windowE[w++] = e[j];
                }
            }
        }
        for (; i < n && w < Window; i++)
        {
            if (z[i] >= low && z[i] < high)
            {
                windowZ[w] = z[i];
                windowE[w++] = e[i];
            }
        }
        return w;
    }

    /// <summary>The kept mass (chunked exactly as <see cref="Draw"/> sums it), the kept count and Σ e · (z − max) · invT over the kept logits.</summary>
    static unsafe double Stats(float* z, float* e, int n, float max, float invT, float threshold, out int keptCount, out double weighted)
    {
        double mass = 0, sum = 0;
        int kept = 0;
        for (int c = 0; c < n; c += Chunk)
        {
            int len = Math.Min(Chunk, n - c);
            mass += ChunkMass(z + c, e + c, len, threshold, out int k);
            kept += k;
            sum += WeightedLogits(z + c, e + c, len, max, invT, threshold);
        }
        keptCount = kept;
        weighted = sum;
        return mass;
    }

    /// <summary>
    /// Σ e · d with d = (z − max) · invT over the kept i &lt; len. d is floored at −<see cref="ZeroBelow"/>, below which
    /// e is 0, so that a −∞ logit adds 0 rather than 0 · −∞.
    /// </summary>
    static unsafe float WeightedLogits(float* z, float* e, int len, float max, float invT, float threshold)
    {
        const float Floor = -ZeroBelow;
        int i = 0;
        float sum = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var t = Vector512.Create(threshold);
            var mx = Vector512.Create(max);
            var scale = Vector512.Create(invT);
            var floor = Vector512.Create(Floor);
            var acc = Vector512<float>.Zero;
            for (; i <= len - 16; i += 16)
            {
                var v = Vector512.Load(z + i);
                var d = Vector512.Max((v - mx) * scale, floor);
                acc = Vector512.FusedMultiplyAdd(Vector512.Load(e + i) & Vector512.GreaterThanOrEqual(v, t), d, acc);
            }
            sum += Vector512.Sum(acc);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var t = Vector256.Create(threshold);
            var mx = Vector256.Create(max);
            var scale = Vector256.Create(invT);
            var floor = Vector256.Create(Floor);
            var acc = Vector256<float>.Zero;
            for (; i <= len - 8; i += 8)
            {
                var v = Vector256.Load(z + i);
                var d = Vector256.Max((v - mx) * scale, floor);
                acc = Vector256.FusedMultiplyAdd(Vector256.Load(e + i) & Vector256.GreaterThanOrEqual(v, t), d, acc);
            }
            sum += Vector256.Sum(acc);
        }
        for (; i < len; i++)
            if (z[i] >= threshold) sum += e[i] * MathF.Max((z[i] - max) * invT, Floor);
        return sum;
    }

    /// <summary>
    /// Inverse CDF in id order: the first kept i whose running mass exceeds target. Whole chunks are skipped on their
    /// <see cref="ChunkMass"/>, the chunk holding the crossing is walked one element at a time; if rounding leaves the
    /// walk short, the last kept id of nonzero mass.
    /// </summary>
    static unsafe int Draw(float* z, float* e, int n, float threshold, double target)
    {
        double cumulative = 0;
        for (int c = 0; c < n; c += Chunk)
        {
            int len = Math.Min(Chunk, n - c);
            float chunk = ChunkMass(z + c, e + c, len, threshold, out _);
            if (cumulative + chunk <= target)
            {
                cumulative += chunk;
                continue;
            }
            for (int i = c; i < c + len; i++)
            {
                if (z[i] < threshold || e[i] == 0) continue;
                cumulative += e[i];
                if (cumulative > target) return i;
            }
        }
        int last = n - 1;
        while (z[last] < threshold || e[last] == 0) last--;
        return last;
    }

    /// <summary>The lowest i with z[i] == value (value occurs in z).</summary>
    static unsafe int FirstIndexOf(float* z, int n, float value)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var v = Vector512.Create(value);
            for (; i <= n - 16; i += 16)
            {
                ulong bits = Vector512.Equals(Vector512.Load(z + i), v).ExtractMostSignificantBits();
                if (bits != 0) return i + BitOperations.TrailingZeroCount(bits);
            }
        }
        while (z[i] != value) i++;
        return i;
    }
}
