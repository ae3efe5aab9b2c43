using ILGPU;

namespace DiffuSharp.Kernels.Gpu;

/// <summary>
/// The scalars of one sampling launch, with greedy folded in (temperature 1 and no cuts, so the stats are
/// those of softmax(z)). Public because ILGPU's CPU launcher, generated in another assembly, must see every
/// kernel parameter type.
/// </summary>
public struct SamplingArgs
{
    public float Temperature, TopP;
    public int TopK, Greedy;
    public ulong Seed, Stream;
    public int RowWidth, RowStride, RowStart;

    public SamplingArgs(in SamplingOptions options, ulong seed, ulong stream, SampleRows keys)
    {
        Greedy = options.Greedy ? 1 : 0;
        Temperature = options.Greedy ? 1f : options.Temperature;
        TopK = options.Greedy ? 0 : options.TopK;
        TopP = options.Greedy ? 1f : options.TopP;
        Seed = seed;
        Stream = stream;
        RowWidth = keys.Width; RowStride = keys.Stride; RowStart = keys.Start;
    }

    /// <summary>The Philox counter of a row (<see cref="SampleRows.Key"/>).</summary>
    public readonly ulong Key(int row) => RowWidth == 0 ? (ulong)row : (ulong)((long)(row / RowWidth) * RowStride + RowStart + row % RowWidth);
}

/// <summary>
/// Token sampling as <see cref="SamplingOptions"/> defines it, one group per row of logits, with no sort and
/// no device memory beyond a few shared arrays. Filters are thresholds on an order-preserving 32-bit key of
/// the logit (scaled-logit order is logit order, and ties share a key), so a kept set is {key ≥ cut}:
/// <list type="number">
/// <item>max and argmax (lowest id on ties) of the row;</item>
/// <item>top-k: bisection over the key range for the largest cut that keeps at least K tokens, one group-wide
/// count per step; the search is exact (ties at the K-th value stay) and stops as soon as at most one token
/// separates the bounds;</item>
/// <item>top-p: the same bisection from the top-k cut, for the largest cut whose kept mass Σ exp((z − max)/T)
/// reaches TopP times the top-k-kept mass;</item>
/// <item>the kept sum S, Σ e·d (for Σ p log p), the best logit besides the argmax, and the last kept id of
/// nonzero probability (the draw's fallback) in one reduction;</item>
/// <item>the draw: each thread owns a contiguous chunk of ids, the chunk masses go through a warp scan and a
/// scan of the warp totals, and the one thread whose interval [before, after) holds u · total walks its chunk
/// in id order. Neighbouring intervals share the same float bound, so exactly one thread walks when
/// u · total &lt; total, and none (thread 0 takes the fallback) when rounding leaves u · total at the total.</item>
/// </list>
/// Greedy rows skip the cuts and the draw. Reductions are fixed-order (warp butterflies, then warps in
/// order), so a launch is deterministic. Bad rows (NaN, all −∞) give meaningless values but never an
/// out-of-range access or token.
/// </summary>
static class SamplingKernels
{
    /// <summary>The largest group a sampling launch uses.</summary>
    internal const int MaxThreads = 256;
    /// <summary>Room for the per-warp partials of a group of up to 1024 threads.</summary>
    const int MaxWarps = 32;
    /// <summary>
    /// Small rows get fewer threads: each gets at least this many ids, so a row of 16384 or more has the full
    /// group, and short rows leave room for more resident groups instead of idle lanes in barriers.
    /// </summary>
    const int MinColumnsPerThread = 64;
    /// <summary>One past the largest key: no logit reaches it.</summary>
    const long KeyEnd = 1L << 32;
    /// <summary>The key of +0 and −0, which are the same logit.</summary>
    const uint ZeroKey = 0x80000000u;

    /// <summary>Threads per group for a row of <paramref name="vocab"/> logits: a multiple of the warp size, at most <see cref="MaxThreads"/>.</summary>
    internal static int Threads(int vocab, int warpSize)
    {
        int wanted = (vocab + MinColumnsPerThread - 1) / MinColumnsPerThread;
        int rounded = (wanted + warpSize - 1) / warpSize * warpSize;
        return Math.Clamp(rounded, warpSize, MaxThreads / warpSize * warpSize);
    }

    /// <summary>A 32-bit key with the order of the float (−∞ lowest); ±0 share one key.</summary>
    static long Key(float x)
    {
        if (x == 0f) return ZeroKey;
        uint bits = Interop.FloatAsInt(x);
        return (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
    }

    /// <summary>Group-wide sums of two values through slot <paramref name="phase"/> (0 or 1) of the shared arrays.
    /// Alternating the phase between consecutive calls lets one barrier per call suffice.</summary>
    static (float A, float B) GroupSum(float a, float b, ArrayView<float> sharedA, ArrayView<float> sharedB, int phase)
    {
        for (int mask = Warp.WarpSize / 2; mask > 0; mask >>= 1)
        {
            a += Warp.ShuffleXor(a, mask);
            b += Warp.ShuffleXor(b, mask);
        }
        int slot = phase * MaxWarps;
        if (Warp.LaneIdx == 0)
        {
            sharedA[slot + Warp.WarpIdx] = a;
            sharedB[slot + Warp.WarpIdx] = b;
        }
        Group.Barrier();
        a = 0f;
        b = 0f;
        int warps = Group.DimX / Warp.WarpSize;
        for (int w = 0; w < warps; w++)
        {
            a += sharedA[slot + w];
            b += sharedB[slot + w];
        }
        return (a, b);
    }

    /// <summary>
    /// The largest cut in [lo, hi) whose kept set {key ≥ cut} has at least <paramref name="minCount"/> tokens
    /// and mass at least <paramref name="minMass"/>, given that lo qualifies (keeping <paramref name="countLo"/>
    /// tokens) and hi does not (keeping <paramref name="countHi"/>). Only the kept set matters, so the search
    /// stops once the bounds keep sets that differ by at most one token. Mass is summed only when asked for.
    /// </summary>
    static long Bisect(ArrayView<float> z, int vocab, long lo, float countLo, long hi, float countHi,
        float minCount, float minMass, float max, float temperature, ArrayView<float> counts, ArrayView<float> masses)
    {
        for (int step = 0; hi - lo > 1 && countLo - countHi > 1f; step++)
        {
            long mid = lo + (hi - lo) / 2;
            float count = 0f, mass = 0f;
            for (int c = Group.IdxX; c < vocab; c += Group.DimX)
            {
                float x = z[c];
                if (Key(x) < mid) continue;
                count += 1f;
                if (minMass > 0f) mass += MathF.Exp((x - max) / temperature);
            }
            var sums = GroupSum(count, mass, counts, masses, step & 1);
            if (sums.A >= minCount && sums.B >= minMass)
            {
                lo = mid;
                countLo = sums.A;
            }
            else
            {
                hi = mid;
                countHi = sums.A;
            }
        }
        return lo;
    }

    /// <summary>One group per row: tokens[row] and stats[row, 0..4) as <see cref="SamplingOptions"/> defines them.</summary>
    internal static void Sample(ArrayView<float> logits, ArrayView<int> tokens, ArrayView<float> stats, int vocab, SamplingArgs args)
    {
        var bestValues = SharedMemory.Allocate<float>(MaxWarps);
        var bestIds = SharedMemory.Allocate<int>(MaxWarps);
        var topKCounts = SharedMemory.Allocate<float>(2 * MaxWarps);
        var topKMasses = SharedMemory.Allocate<float>(2 * MaxWarps);
        var keptCounts = SharedMemory.Allocate<float>(MaxWarps);
        var keptMasses = SharedMemory.Allocate<float>(MaxWarps);
        var topPCounts = SharedMemory.Allocate<float>(2 * MaxWarps);
        var topPMasses = SharedMemory.Allocate<float>(2 * MaxWarps);
        var warpSums = SharedMemory.Allocate<float>(MaxWarps);
        var warpWeighted = SharedMemory.Allocate<float>(MaxWarps);
        var warpSeconds = SharedMemory.Allocate<float>(MaxWarps);
        var warpLasts = SharedMemory.Allocate<int>(MaxWarps);
        var warpTotals = SharedMemory.Allocate<float>(MaxWarps);

        int t = Group.IdxX;
        int threads = Group.DimX;
        int lane = Warp.LaneIdx;
        int warp = Warp.WarpIdx;
        int warps = threads / Warp.WarpSize;
        int row = Grid.IdxX;
        var z = logits.SubView((long)row * vocab, vocab);
        float temperature = args.Temperature;

        // Pass 1: max and argmax, lowest id on ties.
        float max = float.NegativeInfinity;
        int argmax = int.MaxValue;
        for (int c = t; c < vocab; c += threads)
        {
            float x = z[c];
            if (x > max)
            {
                max = x;
                argmax = c;
            }
        }
        for (int mask = Warp.WarpSize / 2; mask > 0; mask >>= 1)
        {
            float otherMax = Warp.ShuffleXor(max, mask);
            int otherId = Warp.ShuffleXor(argmax, mask);
            if (otherMax > max || otherMax == max && otherId < argmax)
            {
                max = otherMax;
                argmax = otherId;
            }
        }
        if (lane == 0)
        {
            bestValues[warp] = max;
            bestIds[warp] = argmax;
        }
        Group.Barrier();
        max = float.NegativeInfinity;
        argmax = int.MaxValue;
        for (int w = 0; w < warps; w++)
        {
            float value = bestValues[w];
            int id = bestIds[w];
            if (value > max || value == max && id < argmax)
            {
                max = value;
                argmax = id;
            }
        }

        // Cuts: top-k by count, then top-p by mass within the top-k set.
        long cut = 0;
        if (args.TopK > 0 && args.TopK < vocab)
            cut = Bisect(z, vocab, 0, vocab, KeyEnd, 0f, args.TopK, 0f, max, temperature, topKCounts, topKMasses);
        if (args.TopP < 1f)
        {
            float count = 0f, mass = 0f;
            for (int c = t; c < vocab; c += threads)
            {
                float x = z[c];
                if (Key(x) < cut) continue;
                count += 1f;
                mass += MathF.Exp((x - max) / temperature);
            }
            var kept = GroupSum(count, mass, keptCounts, keptMasses, 0);
            cut = Bisect(z, vocab, cut, kept.A, KeyEnd, 0f, 0f, args.TopP * kept.B, max, temperature, topPCounts, topPMasses);
        }

        // The kept distribution: S, Σ e·d, the best logit besides the argmax, the last id of nonzero probability.
        float sum = 0f, weighted = 0f, second = float.NegativeInfinity;
        int last = -1;
        for (int c = t; c < vocab; c += threads)
        {
            float x = z[c];
            if (Key(x) < cut) continue;
            float d = (x - max) / temperature;
            float e = MathF.Exp(d);
            sum += e;
            if (e > 0f)
            {
                weighted += e * d;
                last = c;
            }
            if (c != argmax) second = MathF.Max(second, x);
        }
        for (int mask = Warp.WarpSize / 2; mask > 0; mask >>= 1)
        {
            sum += Warp.ShuffleXor(sum, mask);
            weighted += Warp.ShuffleXor(weighted, mask);
            second = MathF.Max(second, Warp.ShuffleXor(second, mask));
            last = Math.Max(last, Warp.ShuffleXor(last, mask));
        }
        if (lane == 0)
        {
            warpSums[warp] = sum;
            warpWeighted[warp] = weighted;
            warpSeconds[warp] = second;
            warpLasts[warp] = last;
        }
        Group.Barrier();
        sum = 0f;
        weighted = 0f;
        second = float.NegativeInfinity;
        last = -1;
        for (int w = 0; w < warps; w++)
        {
            sum += warpSums[w];
            weighted += warpWeighted[w];
            second = MathF.Max(second, warpSeconds[w]);
            last = Math.Max(last, warpLasts[w]);
        }
        float logSum = MathF.Log(sum);
        float maxProb = 1f / sum;
        float margin = (1f - MathF.Exp((second - max) / temperature)) / sum;
        float negEntropy = weighted / sum - logSum;

        if (args.Greedy != 0)
        {
            if (t == 0) Write(tokens, stats, row, vocab, argmax, -logSum, maxProb, margin, negEntropy);
            return;
        }

        // The draw: chunk masses, their prefix sums in id order, and one walk.
        int chunk = (vocab + threads - 1) / threads;
        int begin = Math.Min(vocab, t * chunk);
        int end = Math.Min(vocab, begin + chunk);
        float own = 0f;
        for (int c = begin; c < end; c++)
        {
            float x = z[c];
            if (Key(x) >= cut) own += MathF.Exp((x - max) / temperature);
        }
        float inclusive = own;
        for (int offset = 1; offset < Warp.WarpSize; offset <<= 1)
        {
            float below = Warp.ShuffleUp(inclusive, offset);
            if (lane >= offset) inclusive += below;
        }
        float exclusive = Warp.ShuffleUp(inclusive, 1);
        if (lane == 0) exclusive = 0f;
        if (lane == Warp.WarpSize - 1) warpTotals[warp] = inclusive;
        Group.Barrier();
        float warpStart = 0f, total = 0f;
        for (int w = 0; w < warps; w++)
        {
            if (w == warp) warpStart = total;
            total += warpTotals[w];
        }
        float before = warpStart + exclusive;
        float after = warpStart + inclusive;
        float target = Philox.Uniform(args.Seed, args.Stream, args.Key(row)) * total;

        if (before <= target && target < after)
        {
            float cumulative = before;
            int chosen = begin;
            for (int c = begin; c < end; c++)
            {
                float x = z[c];
                if (Key(x) < cut) continue;
                float e = MathF.Exp((x - max) / temperature);
                if (e == 0f) continue;
                chosen = c;
                cumulative += e;
                if (cumulative > target) break;
            }
            Write(tokens, stats, row, vocab, chosen, (z[chosen] - max) / temperature - logSum, maxProb, margin, negEntropy);
        }
        else if (t == 0 && !(target < total))
        {
            int chosen = Math.Max(last, 0);
            Write(tokens, stats, row, vocab, chosen, (z[chosen] - max) / temperature - logSum, maxProb, margin, negEntropy);
        }
    }

    /// <summary>The token (clamped into the vocabulary, which only a bad row needs) and its four stats.</summary>
    static void Write(ArrayView<int> tokens, ArrayView<float> stats, int row, int vocab, int token,
        float logProb, float maxProb, float margin, float negEntropy)
    {
        tokens[row] = Math.Min(Math.Max(token, 0), vocab - 1);
        long s = (long)row * SamplingOptions.StatCount;
        stats[s + SamplingOptions.LogProb] = logProb;
        stats[s + SamplingOptions.MaxProb] = maxProb;
        stats[s + SamplingOptions.Margin] = margin;
        stats[s + SamplingOptions.NegEntropy] = negEntropy;
    }
}
