using System.Diagnostics;
using DiffuSharp.Kernels;
using DiffuSharp.Layers;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Diffusion;

/// <summary>
/// A denoising problem: B rows of N tokens, some fixed (the start token, a prompt, an infill's prefix and
/// suffix), the rest to be generated. Position 0 of every row must be fixed: it is the start token that
/// the shift keeps (method §3), and it is not part of the output.
/// </summary>
public sealed class DenoisingProblem
{
    public DenoisingProblem(int batch, int length)
    {
        if (batch <= 0 || length < 2) throw new DiffuException($"a denoising problem needs batch >= 1 and length >= 2, got [{batch}, {length}]");
        Batch = batch; Length = length;
        Tokens = new int[batch * length];
        Fixed = new byte[batch * length];
    }

    public int Batch { get; }
    public int Length { get; }

    /// <summary>Token ids [B, N]; the values at generated positions are ignored.</summary>
    public int[] Tokens { get; }

    /// <summary>1 where the token is given and never changed, [B, N].</summary>
    public byte[] Fixed { get; }
}

/// <summary>Which still-masked positions a denoising step commits (method §8 and the later confidence samplers).</summary>
public enum DenoisingStrategy
{
    /// <summary>Variant A, random ancestral: each still-masked slot is committed with probability 1/(t+1).</summary>
    Random,
    /// <summary>
    /// Variant B, the paper's confidence top-k: keep the floor(|M0| t/T) least confident slots masked, by
    /// the log-probability of the sampled token, ranked over all of M0 as the reference code does.
    /// </summary>
    TopK,
    /// <summary>Keep the floor(|M0| t/T) still-masked slots with the lowest top-1 probability masked (MaskGIT / Dream maskgit_plus).</summary>
    MaxProb,
    /// <summary>Same, ranked by the top-1 minus top-2 probability margin.</summary>
    Margin,
    /// <summary>Same, ranked by negative entropy of the predicted distribution.</summary>
    Entropy,
}

/// <summary>Which keys and values a denoising step reuses from the block's first pass (block-wise approximate caching, Fast-dLLM).</summary>
public enum DenoisingCache
{
    /// <summary>Exact: every step runs the whole sequence.</summary>
    None,
    /// <summary>The positions before the block are cached; a step recomputes the block and everything after it.</summary>
    Prefix,
    /// <summary>The positions before and after the block are cached (DualCache); a step recomputes the block alone.</summary>
    Dual,
}

/// <summary>
/// How to denoise: T forward passes, a commit strategy, token sampling, optional semi-AR blocks and a per-step
/// budget; and the fast modes: a cache, confidence-threshold parallel commits and early stopping at an end token.
/// </summary>
public sealed record DenoiseSettings
{
    public int Steps { get; init; } = 64;
    public DenoisingStrategy Strategy { get; init; } = DenoisingStrategy.TopK;
    public SamplingOptions Sampling { get; init; } = new(1f);
    public ulong Seed { get; init; }

    /// <summary>Semi-autoregressive blocks: decode the generated positions left to right in blocks of this many positions (0 = one block).</summary>
    public int BlockLength { get; init; }

    /// <summary>At most this many slots committed per step (0 = no cap); what is left is filled by the last pass.</summary>
    public int TokensPerStep { get; init; }

    /// <summary>
    /// Within a block, the first step runs the whole sequence and fills the cache; the others run the window the
    /// cache leaves (<see cref="DenoisingCache"/>), from the position before the block, whose logit predicts the
    /// block's first slot (the shift).
    /// </summary>
    public DenoisingCache Cache { get; init; }

    /// <summary>
    /// Parallel commits: besides the schedule's, a step commits every still-masked slot of the block whose sampled
    /// token has a probability above this (and at least one slot per row), and a block ends as soon as it is
    /// filled, so the passes adapt to the model's confidence; null = off (exactly T passes).
    /// </summary>
    public float? Threshold { get; init; }

    /// <summary>
    /// With semi-AR blocks: once every row has committed this token with only generated positions after it, the
    /// later blocks are not run and their positions take this token. Null = off.
    /// </summary>
    public int? StopToken { get; init; }

    public void Validate()
    {
        if (Steps <= 0) throw new DiffuException($"--steps must be positive, got {Steps}");
        if (Threshold is float p && !(p > 0 && p <= 1)) throw new DiffuException($"--threshold must be in (0, 1], got {p}");
        if (BlockLength < 0 || TokensPerStep < 0) throw new DiffuException("--block and --tokens-per-step must be non-negative");
        try { Sampling.Validate(); }
        catch (ArgumentException e) { throw new DiffuException(e.Message); }
    }
}

/// <summary>Where a denoising run is after one forward pass (for --show-steps).</summary>
public sealed record DenoiseProgress(int Pass, int Passes, int[] Tokens, byte[] Masked);

/// <summary>The outcome: the final tokens [B, N] (position 0 as given) and where the time went.</summary>
public sealed record DenoiseResult(int[] Tokens, int ForwardPasses, TimeSpan ForwardTime, TimeSpan SelectionTime);

/// <summary>
/// Iterative denoising with a masked-diffusion model (method §8): every step is one bidirectional forward
/// pass over the whole sequence, token sampling on the device (temperature, top-k, top-p), the shift
/// undone (the prediction for slot i comes from logit i − 1; slot 0 keeps its input), and a strategy that
/// commits some still-masked slots. Exactly T forward passes; fixed positions are never changed; after the
/// last pass every still-masked slot takes that pass's prediction.
/// </summary>
public sealed class Denoiser
{
    const ulong CommitStream = 0x636f6d6d6974;
    readonly ILanguageModel model;

    public Denoiser(ILanguageModel model, int maskTokenId)
    {
        if ((uint)maskTokenId >= (uint)model.VocabSize)
            throw new DiffuException($"mask token {maskTokenId} is outside the model's vocabulary [0, {model.VocabSize})");
        this.model = model;
        MaskTokenId = maskTokenId;
    }

    public int MaskTokenId { get; }

    public DenoiseResult Run(DenoisingProblem problem, DenoiseSettings settings, Action<DenoiseProgress>? onStep = null)
    {
        settings.Validate();
        int b = problem.Batch, n = problem.Length;
        if (n > model.Positions) throw new DiffuException($"sequence of {n} tokens exceeds the model's {model.Positions} positions");
        for (int r = 0; r < b; r++)
            if (problem.Fixed[r * n] == 0) throw new DiffuException("position 0 of every row must be a fixed start token");

        var blocks = Blocks(problem, settings.BlockLength);
        if (settings.Steps % blocks.Count != 0)
            throw new DiffuException($"--steps {settings.Steps} must be a multiple of the number of blocks ({blocks.Count})");
        int stepsPerBlock = settings.Steps / blocks.Count;

        var xt = (int[])problem.Tokens.Clone();
        var masked = new byte[b * n];
        for (int k = 0; k < b * n; k++)
            if (problem.Fixed[k] == 0) { xt[k] = MaskTokenId; masked[k] = 1; }
        var predicted = new int[b * n];
        var stats = new float[b * n * SamplingOptions.StatCount];
        var shiftedTokens = new int[b * n];
        var shiftedScores = new float[b * n];
        var shiftedConfidence = new float[b * n];
        var forward = new Stopwatch();
        var selection = new Stopwatch();
        using var cache = settings.Cache == DenoisingCache.None ? null : model.CreateKvCache(b, n);
        int pass = 0;

        foreach (var (start, end) in blocks)
        {
            if (settings.StopToken is int stop && start > blocks[0].Start && Stopped(problem, xt, stop, start))
            {
                for (int k = 0; k < b * n; k++)
                    if (problem.Fixed[k] == 0 && k % n >= start) { xt[k] = stop; masked[k] = 0; }
                break;
            }
            // The slots this block generates, per row; later blocks stay masked and are not committed here.
            var active = new byte[b * n];
            var initial = new int[b];
            for (int r = 0; r < b; r++)
                for (int i = start; i < end; i++)
                    if (problem.Fixed[r * n + i] == 0) { active[r * n + i] = 1; initial[r]++; }
            var still = (byte[])active.Clone();

            for (int t = stepsPerBlock; t >= 1; t--)
            {
                // The block's first step (and every step without a cache) runs the whole sequence; the others run
                // the window from the position before the block, whose logit predicts the block's first slot.
                var (from, to) = cache is null || t == stepsPerBlock ? (0, n) : (start - 1, settings.Cache == DenoisingCache.Dual ? end : n);
                forward.Start();
                Predict(xt, b, n, from, to, cache, settings, pass, predicted, stats);
                forward.Stop();
                selection.Start();
                pass++;
                Shift(xt, predicted, stats, Score(settings.Strategy), b, n, shiftedTokens, shiftedScores, shiftedConfidence);
                bool blockDone;
                if (t > 1)
                {
                    var before = (byte[])still.Clone();
                    Commit(settings, t - 1, stepsPerBlock, pass, b, n, active, initial, still, shiftedScores, xt, shiftedTokens);
                    blockDone = settings.Threshold is float threshold
                        && CommitConfident(threshold, b, n, start, end, before, still, shiftedConfidence, xt, shiftedTokens);
                }
                else
                {
                    for (int k = 0; k < b * n; k++)
                        if (still[k] != 0) { xt[k] = shiftedTokens[k]; still[k] = 0; }
                    blockDone = true;
                }
                for (int k = 0; k < b * n; k++)
                    if (active[k] != 0) masked[k] = still[k];
                selection.Stop();
                onStep?.Invoke(new DenoiseProgress(pass, settings.Steps, (int[])xt.Clone(), (byte[])masked.Clone()));
                if (blockDone) break;
            }
        }
        return new DenoiseResult(xt, pass, forward.Elapsed, selection.Elapsed);
    }

    /// <summary>
    /// One forward pass over positions [from, to) of every row (the whole sequence without a cache) and token
    /// sampling on the device; the window's tokens and stats land at their positions of <paramref name="predicted"/>
    /// and <paramref name="stats"/>, drawn with the uniforms the whole sequence would draw.
    /// </summary>
    void Predict(int[] xt, int b, int n, int from, int to, KvCache? cache, DenoiseSettings settings, int pass, int[] predicted, float[] stats)
    {
        var d = model.Device;
        int w = to - from;
        var ids = xt;
        if (w < n)
        {
            ids = new int[b * w];
            for (int r = 0; r < b; r++) Array.Copy(xt, r * n + from, ids, r * w, w);
        }
        using var result = cache is null ? model.Logits(ids, b, n, AttentionMaskMode.Bidirectional) : model.CachedLogits(ids, b, w, cache, from);
        using var tokensOut = d.Allocate(DType.I32, b * w);
        using var statsOut = d.Allocate(DType.F32, b * w, SamplingOptions.StatCount);
        d.SampleTokens(result.Logits, settings.Sampling, settings.Seed, (ulong)pass, tokensOut, statsOut, SampleRows.Window(from, w, n));
        if (w == n)
        {
            d.Download(tokensOut, 0, predicted);
            d.Download(statsOut, 0, stats);
            return;
        }
        var windowTokens = new int[b * w];
        var windowStats = new float[b * w * SamplingOptions.StatCount];
        d.Download(tokensOut, 0, windowTokens);
        d.Download(statsOut, 0, windowStats);
        for (int r = 0; r < b; r++)
        {
            Array.Copy(windowTokens, r * w, predicted, r * n + from, w);
            Array.Copy(windowStats, r * w * SamplingOptions.StatCount, stats, (r * n + from) * SamplingOptions.StatCount, w * SamplingOptions.StatCount);
        }
    }

    /// <summary>
    /// Parallel commits: every still-masked slot of the block [start, end) whose sampled token's probability
    /// exceeds <paramref name="threshold"/> takes it, and a row that commits nothing this step (the schedule's
    /// commits, from <paramref name="before"/> to <paramref name="still"/>, included) commits its most confident
    /// slot. Returns whether the block is filled in every row.
    /// </summary>
    static bool CommitConfident(float threshold, int b, int n, int start, int end, byte[] before, byte[] still, float[] confidence, int[] xt, int[] tokens)
    {
        bool done = true;
        for (int r = 0; r < b; r++)
        {
            int best = -1;
            bool committed = false;
            for (int k = r * n + start; k < r * n + end; k++)
            {
                committed |= before[k] != still[k];
                if (still[k] == 0) continue;
                if (confidence[k] > threshold) { xt[k] = tokens[k]; still[k] = 0; committed = true; }
                else if (best < 0 || confidence[k] > confidence[best]) best = k;
            }
            if (!committed && best >= 0) { xt[best] = tokens[best]; still[best] = 0; }
            for (int k = r * n + start; k < r * n + end; k++) done &= still[k] == 0;
        }
        return done;
    }

    /// <summary>
    /// Whether every row has committed <paramref name="stop"/> at a generated position before <paramref name="start"/>
    /// with no fixed position after it, so nothing the later blocks generate would be kept.
    /// </summary>
    static bool Stopped(DenoisingProblem problem, int[] xt, int stop, int start)
    {
        int n = problem.Length;
        for (int r = 0; r < problem.Batch; r++)
        {
            int row = r * n, at = -1;
            for (int i = 1; i < start && at < 0; i++)
                if (problem.Fixed[row + i] == 0 && xt[row + i] == stop) at = i;
            if (at < 0) return false;
            for (int i = at + 1; i < n; i++)
                if (problem.Fixed[row + i] != 0) return false;
        }
        return true;
    }

    /// <summary>The stat column a strategy ranks by (higher = more confident); Random ranks by nothing.</summary>
    static int Score(DenoisingStrategy strategy) => strategy switch
    {
        DenoisingStrategy.TopK => SamplingOptions.LogProb,
        DenoisingStrategy.MaxProb => SamplingOptions.MaxProb,
        DenoisingStrategy.Margin => SamplingOptions.Margin,
        DenoisingStrategy.Entropy => SamplingOptions.NegEntropy,
        _ => SamplingOptions.LogProb,
    };

    /// <summary>
    /// Undoes the shift (method §3): slot i gets the prediction of logit i − 1, slot 0 keeps its input token
    /// (its score slot takes row 0's score, a dummy).
    /// </summary>
    static void Shift(int[] xt, int[] predicted, float[] stats, int column, int b, int n, int[] tokens, float[] scores, float[] confidence)
    {
        for (int r = 0; r < b; r++)
        {
            int row = r * n;
            tokens[row] = xt[row];
            scores[row] = stats[row * SamplingOptions.StatCount + column];
            confidence[row] = 0;
            for (int i = 1; i < n; i++)
            {
                tokens[row + i] = predicted[row + i - 1];
                scores[row + i] = stats[(row + i - 1) * SamplingOptions.StatCount + column];
                confidence[row + i] = MathF.Exp(stats[(row + i - 1) * SamplingOptions.StatCount + SamplingOptions.LogProb]);
            }
        }
    }

    /// <summary>
    /// Loop index t (T−1 down to 1 within the block): decides which still-masked slots take their
    /// prediction now, writes those into xt and clears them from <paramref name="still"/>.
    /// </summary>
    void Commit(DenoiseSettings settings, int t, int steps, int pass, int b, int n, byte[] active, int[] initial, byte[] still,
        float[] scores, int[] xt, int[] tokens)
    {
        var commit = new List<(int Index, float Priority)>();
        for (int r = 0; r < b; r++)
        {
            int row = r * n;
            commit.Clear();
            int keep = (int)((long)initial[r] * t / steps);
            switch (settings.Strategy)
            {
                case DenoisingStrategy.Random:
                    for (int i = 0; i < n; i++)
                    {
                        if (still[row + i] == 0) continue;
                        float u = Philox.Uniform(settings.Seed ^ CommitStream, (ulong)pass, (ulong)(row + i));
                        if (u < 1f / (t + 1)) commit.Add((row + i, -u));
                    }
                    break;
                case DenoisingStrategy.TopK:
                {
                    // Reference behaviour (method §8 B): rank every slot; slots outside this row's maskable set
                    // score +1000; "low" = score below the keep-th smallest; low slots stay masked.
                    var ranked = new float[n];
                    for (int i = 0; i < n; i++) ranked[i] = active[row + i] != 0 ? scores[row + i] : 1000f;
                    Array.Sort(ranked);
                    float cutoff = ranked[Math.Min(keep, n - 1)];
                    for (int i = 0; i < n; i++)
                        if (still[row + i] != 0 && !(scores[row + i] < cutoff)) commit.Add((row + i, scores[row + i]));
                    break;
                }
                default:
                {
                    var candidates = new List<int>();
                    for (int i = 0; i < n; i++) if (still[row + i] != 0) candidates.Add(row + i);
                    candidates.Sort((x, y) => scores[x] != scores[y] ? scores[x].CompareTo(scores[y]) : x.CompareTo(y));
                    for (int c = keep; c < candidates.Count; c++) commit.Add((candidates[c], scores[candidates[c]]));
                    break;
                }
            }
            if (settings.TokensPerStep > 0 && commit.Count > settings.TokensPerStep)
            {
                commit.Sort((x, y) => y.Priority.CompareTo(x.Priority));
                commit.RemoveRange(settings.TokensPerStep, commit.Count - settings.TokensPerStep);
            }
            foreach (var (k, _) in commit)
            {
                xt[k] = tokens[k];
                still[k] = 0;
            }
        }
    }

    /// <summary>
    /// The position ranges decoded one after another: one range over every generated position, or
    /// consecutive blocks of <paramref name="blockLength"/> from the first generated position.
    /// </summary>
    static List<(int Start, int End)> Blocks(DenoisingProblem problem, int blockLength)
    {
        int n = problem.Length, first = n;
        for (int r = 0; r < problem.Batch; r++)
            for (int i = 0; i < n; i++)
                if (problem.Fixed[r * n + i] == 0) { first = Math.Min(first, i); break; }
        if (first == n) throw new DiffuException("nothing to generate: every position is fixed");
        if (blockLength <= 0) return [(first, n)];
        var blocks = new List<(int, int)>();
        // In long arithmetic: a block length near int.MaxValue must make one block, not wrap around.
        for (long s = first; s < n; s += blockLength) blocks.Add(((int)s, (int)Math.Min(n, s + blockLength)));
        return blocks;
    }
}
