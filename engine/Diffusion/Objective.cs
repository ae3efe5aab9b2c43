using DiffuSharp.Kernels;

namespace DiffuSharp.Diffusion;

/// <summary>What a training step optimises.</summary>
public enum TrainingObjective
{
    /// <summary>The DiffuGPT/DiffuLLaMA masked-diffusion loss (method §2): 1/t weighting, shift, masked-count denominator.</summary>
    Diffusion,
    /// <summary>Plain next-token prediction with causal attention, for training base models.</summary>
    Autoregressive,
}

/// <summary>
/// One micro-batch prepared for a forward/backward pass: the ids the model sees and, per logit row, the
/// cross-entropy target and weight. Row (b, i) predicts token i + 1 of sequence b (the AR shift kept by
/// DiffuGPT); the last row of each sequence has weight 0. The weights already hold the objective's
/// normalisation, so the loss is Σ weight · CE.
/// </summary>
public sealed class ObjectiveBatch
{
    public ObjectiveBatch(int batch, int length)
    {
        if (batch <= 0 || length < 2) throw new ArgumentException($"a training batch needs batch >= 1 and length >= 2, got [{batch}, {length}]");
        Batch = batch; Length = length;
        Inputs = new int[batch * length];
        Targets = new int[batch * length];
        Weights = new float[batch * length];
        Masked = new byte[batch * length];
        NoiseLevels = new float[batch];
    }

    public int Batch { get; }
    public int Length { get; }
    public int[] Inputs { get; }
    public int[] Targets { get; }
    public float[] Weights { get; }

    /// <summary>1 where the input token was replaced by the mask token (diffusion only).</summary>
    public byte[] Masked { get; }

    /// <summary>t per sequence (diffusion only).</summary>
    public float[] NoiseLevels { get; }

    /// <summary>How many rows carry a loss (the denominator of the diffusion loss).</summary>
    public int TargetCount { get; internal set; }
}

/// <summary>
/// The paper's continual pre-training objectives, exactly as docs/method.md §2-§4 describes, with all
/// randomness drawn from Philox keyed by the seed and a draw index, so a resumed run draws the same.
/// </summary>
public sealed class Objective
{
    /// <summary>ε in t = ε + (1 − ε) u (method §2.2 step 1).</summary>
    public const float NoiseFloor = 1e-3f;

    const ulong NoiseLevelStream = 0x7431, TokenMaskStream = 0x6d61736b, AnnealStream = 0x616e6e6c;

    public Objective(TrainingObjective kind, int maskTokenId, ulong seed)
    {
        if (kind == TrainingObjective.Diffusion && maskTokenId < 0) throw new ArgumentException($"mask token id must be set for diffusion, got {maskTokenId}");
        Kind = kind; MaskTokenId = maskTokenId; Seed = seed;
    }

    public TrainingObjective Kind { get; }
    public int MaskTokenId { get; }
    public ulong Seed { get; }

    /// <summary>
    /// Fills <paramref name="into"/> from clean ids x0 [B, L]. <paramref name="drawIndex"/> numbers the
    /// micro-batch (its noise draws), <paramref name="scale"/> multiplies every weight (1 / gradient-
    /// accumulation steps). <paramref name="source"/> (optional, [B, L]) marks prompt tokens that are never
    /// masked (conditional fine-tuning, method §5).
    /// Diffusion: t_b = ε + (1−ε)u_b; token (b, i) is masked iff u_bi &lt; t_b and it is not a source token;
    /// row (b, i) targets x0[b, i+1] with weight 1/(t_b · N) when position i+1 was masked, N = number of
    /// masked targets (positions ≥ 1) in the micro-batch. Position 0 is maskable but never a target.
    /// Autoregressive: inputs = x0, every row i &lt; L−1 targets x0[b, i+1] with weight 1/(B(L−1)).
    /// </summary>
    public void Prepare(ReadOnlySpan<int> x0, ObjectiveBatch into, ulong drawIndex, float scale = 1f, ReadOnlySpan<byte> source = default)
    {
        int b = into.Batch, l = into.Length;
        if (x0.Length != b * l) throw new ArgumentException($"expected {b * l} ids, got {x0.Length}");
        if (!source.IsEmpty && source.Length != b * l) throw new ArgumentException($"source mask must be [{b}, {l}]");
        if (Kind == TrainingObjective.Autoregressive)
        {
            SetTargets(x0, into);
            Array.Clear(into.Masked);
            Array.Clear(into.Weights);
            x0.CopyTo(into.Inputs);
            Array.Clear(into.NoiseLevels);
            float w = scale / (b * (l - 1));
            for (int s = 0; s < b; s++)
                for (int i = 0; i + 1 < l; i++) into.Weights[s * l + i] = w;
            into.TargetCount = b * (l - 1);
            return;
        }

        for (int s = 0; s < b; s++)
        {
            float t = NoiseFloor + (1 - NoiseFloor) * Philox.Uniform(Seed, NoiseLevelStream, (drawIndex << 24) + (ulong)s);
            into.NoiseLevels[s] = t;
            for (int i = 0; i < l; i++)
            {
                int k = s * l + i;
                bool noise = (source.IsEmpty || source[k] == 0) && Philox.Uniform(Seed, TokenMaskStream, (drawIndex << 32) + (ulong)k) < t;
                into.Masked[k] = noise ? (byte)1 : (byte)0;
            }
        }
        ApplyNoise(x0, into, scale);
    }

    /// <summary>
    /// Builds the diffusion inputs and loss weights from x0 and the noise already in
    /// <paramref name="into"/> (Masked and NoiseLevels): masked positions get the mask token, and row (b, i)
    /// weighs 1/(t_b · N) when position i+1 is masked (N = masked positions ≥ 1 over the micro-batch).
    /// </summary>
    public void ApplyNoise(ReadOnlySpan<int> x0, ObjectiveBatch into, float scale = 1f)
    {
        int b = into.Batch, l = into.Length;
        if (x0.Length != b * l) throw new ArgumentException($"expected {b * l} ids, got {x0.Length}");
        SetTargets(x0, into);
        Array.Clear(into.Weights);
        int masked = 0;
        for (int k = 0; k < b * l; k++)
        {
            bool noise = into.Masked[k] != 0;
            into.Inputs[k] = noise ? MaskTokenId : x0[k];
            if (noise && k % l != 0) masked++;
        }
        into.TargetCount = masked;
        if (masked == 0) return;
        for (int s = 0; s < b; s++)
        {
            float w = scale / (into.NoiseLevels[s] * masked);
            for (int i = 0; i + 1 < l; i++)
                if (into.Masked[s * l + i + 1] != 0) into.Weights[s * l + i] = w;
        }
    }

    /// <summary>Row (b, i) targets x0[b, i + 1]; the last row of each sequence has no target (0, weight 0).</summary>
    static void SetTargets(ReadOnlySpan<int> x0, ObjectiveBatch into)
    {
        int b = into.Batch, l = into.Length;
        Array.Clear(into.Targets);
        for (int s = 0; s < b; s++)
            for (int i = 0; i + 1 < l; i++) into.Targets[s * l + i] = x0[s * l + i + 1];
    }

    /// <summary>The annealing ratio r = min(1, (step + 1) / annealSteps) (method §4); 1 when annealSteps ≤ 0.</summary>
    public static double AnnealRatio(long step, long annealSteps) =>
        annealSteps <= 0 ? 1.0 : Math.Min(1.0, (step + 1) / (double)annealSteps);

    /// <summary>
    /// The [L, L] allow-mask of one optimizer step (method §4): the causal triangle (diagonal included) OR
    /// i.i.d. Bernoulli(r) entries, one matrix shared by the batch and every head. Null when r = 1, which
    /// means full bidirectional attention.
    /// </summary>
    public byte[]? AnnealMask(int length, long step, long annealSteps)
    {
        double r = AnnealRatio(step, annealSteps);
        if (r >= 1) return null;
        var allow = new byte[length * length];
        for (int i = 0; i < length; i++)
            for (int j = 0; j < length; j++)
            {
                int k = i * length + j;
                allow[k] = j <= i || Philox.Uniform(Seed, AnnealStream, ((ulong)step << 32) + (ulong)k) < r ? (byte)1 : (byte)0;
            }
        return allow;
    }
}
