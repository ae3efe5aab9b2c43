using DiffuSharp.Diffusion;
using DiffuSharp.Lora;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Training;

/// <summary>Everything that defines a training run; stored in the checkpoint so --resume continues the same run.</summary>
public sealed record TrainOptions
{
    public TrainingObjective Objective { get; init; } = TrainingObjective.Diffusion;

    /// <summary>Total optimizer steps of the run (a resumed run continues up to it).</summary>
    public long Steps { get; init; } = 1000;
    public int Batch { get; init; } = 8;
    public int SequenceLength { get; init; } = 128;
    public int GradientAccumulation { get; init; } = 1;
    public double LearningRate { get; init; } = 3e-4;
    public long WarmupSteps { get; init; }
    public LearningRateDecay Decay { get; init; } = LearningRateDecay.Cosine;

    /// <summary>Steps over which attention anneals from causal to bidirectional (method §4); 0 = bidirectional from the start.</summary>
    public long AnnealSteps { get; init; }

    /// <summary>The [MASK] token id (DiffuGPT-S uses 10541, an existing GPT-2 token).</summary>
    public int MaskTokenId { get; init; } = 10541;

    public float Beta1 { get; init; } = 0.9f;
    public float Beta2 { get; init; } = 0.999f;
    public float Epsilon { get; init; } = 1e-8f;
    public float WeightDecay { get; init; }
    public float ClipNorm { get; init; } = 1f;

    /// <summary>Validation and checkpoint cadence in steps (also at the last step).</summary>
    public long EvalEvery { get; init; } = 100;

    /// <summary>The share of the data's blocks held out for validation (part of the run: it decides the split).</summary>
    public double ValidationFraction { get; init; } = 0.05;

    /// <summary>How many of the newest checkpoints stay on disk.</summary>
    public int KeepCheckpoints { get; init; } = 1;

    /// <summary>How many validation batches each evaluation averages.</summary>
    public int EvalBatches { get; init; } = 8;

    public ulong Seed { get; init; }

    /// <summary>
    /// A step or validation loss above this stops the run as diverged. The 1/t weight lets one batch of
    /// a healthy diffusion run reach about 1000 x its cross-entropy (t down to 1e-3), so the default sits well above that.
    /// </summary>
    public double MaxLoss { get; init; } = 1e5;

    /// <summary>The token shards trained on, or the SFT pairs file (kept so --resume can find them again).</summary>
    public string[] Data { get; init; } = [];

    /// <summary>
    /// Conditional fine-tuning (method §5): Data is one file of pairs, each one sequence of SequenceLength tokens (the
    /// cutoff) framed by these tokens, its source never noised. Null for packed token shards.
    /// </summary>
    public SftTokens? Sft { get; init; }

    /// <summary>A LoRA run (the base frozen, adapters trained), or null for full training.</summary>
    public LoraOptions? Lora { get; init; }

    /// <summary>The type checkpoints store the weights in (--save-dtype): null keeps the type they are trained in (float32; a LoRA run's adapters).</summary>
    public DType? SaveType { get; init; }

    /// <summary>Refuses values no run can use (non-finite, out of range, sizes that overflow), naming the option.</summary>
    public void Validate()
    {
        static void Check(bool ok, string message) { if (!ok) throw new DiffuException(message); }
        Check(Steps > 0, $"--steps must be positive, got {Steps}");
        Check(Batch > 0, $"--batch must be positive, got {Batch}");
        Check(GradientAccumulation > 0, $"--grad-accum must be positive, got {GradientAccumulation}");
        Check(SequenceLength >= 2, $"--seq-len must be at least 2, got {SequenceLength}");
        Check((long)Batch * SequenceLength <= Array.MaxLength,
            $"--batch {Batch} x --seq-len {SequenceLength} = {(long)Batch * SequenceLength:N0} tokens per micro-batch is more than one buffer can hold ({Array.MaxLength:N0})");
        Check(Steps <= long.MaxValue / GradientAccumulation, $"--steps {Steps} x --grad-accum {GradientAccumulation} micro-batches overflows a 64-bit count");
        Check(LearningRate > 0 && float.IsFinite((float)LearningRate), $"--lr must be a positive number that float32 holds, got {LearningRate}");
        Check(EvalEvery > 0, $"--eval-every must be positive, got {EvalEvery}");
        Check(EvalBatches > 0, $"--eval-batches must be positive, got {EvalBatches}");
        Check(ValidationFraction is >= 0 and < 1, $"--val-fraction must lie in [0, 1), got {ValidationFraction}");
        Check(KeepCheckpoints > 0, $"--keep must be at least 1, got {KeepCheckpoints}");
        Check(WarmupSteps >= 0, $"--warmup must be non-negative, got {WarmupSteps}");
        Check(AnnealSteps >= 0, $"--anneal-steps must be non-negative, got {AnnealSteps}");
        Check(float.IsFinite(ClipNorm) && ClipNorm >= 0, $"--clip must be a non-negative finite number (0 = off), got {ClipNorm}");
        Check(float.IsFinite(WeightDecay) && WeightDecay >= 0, $"--weight-decay must be a non-negative finite number, got {WeightDecay}");
        Check(LearningRate * WeightDecay < 1, $"--lr {LearningRate:g3} x --weight-decay {WeightDecay:g3} must be below 1 (decoupled decay multiplies each weight by 1 - lr x decay)");
        Check(Beta1 is >= 0 and < 1 && Beta2 is >= 0 and < 1, $"AdamW betas must lie in [0, 1), got {Beta1}, {Beta2}");
        Check(float.IsFinite(Epsilon) && Epsilon > 0, $"AdamW epsilon must be a positive finite number, got {Epsilon}");
        Check(double.IsFinite(MaxLoss) && MaxLoss > 0, $"--max-loss must be a positive finite number, got {MaxLoss}");
        Check(Sft is null || SequenceLength >= 4, $"--cutoff must leave room for BOS, SEP, EOS and one token, got {SequenceLength}");
        Check(Lora is null || Lora.Rank > 0, $"--lora-rank must be positive, got {Lora?.Rank}");
        Check(Lora is null || float.IsFinite(Lora.Alpha) && Lora.Alpha > 0, $"--lora-alpha must be a positive finite number, got {Lora?.Alpha}");
    }
}

/// <summary>A LoRA run's adapters: rank, alpha (scale alpha / rank), the projections adapted, and whether the token embedding is trained in full.</summary>
public sealed record LoraOptions(int Rank, float Alpha, LoraTargets Targets, bool TrainEmbeddings);
