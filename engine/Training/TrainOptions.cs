using DiffuSharp.Diffusion;

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

    /// <summary>Steps over which attention anneals from causal to bidirectional (spec §4); 0 = bidirectional from the start.</summary>
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

    /// <summary>How many validation batches each evaluation averages.</summary>
    public int EvalBatches { get; init; } = 8;

    public ulong Seed { get; init; }

    /// <summary>The token shards trained on (kept so --resume can find them again).</summary>
    public string[] Data { get; init; } = [];

    public void Validate()
    {
        void Positive(string name, double v) { if (!(v > 0)) throw new DiffuException($"{name} must be positive, got {v}"); }
        Positive("--steps", Steps); Positive("--batch", Batch); Positive("--grad-accum", GradientAccumulation);
        Positive("--lr", LearningRate); Positive("--eval-every", EvalEvery); Positive("eval batches", EvalBatches);
        if (SequenceLength < 2) throw new DiffuException($"--seq-len must be at least 2, got {SequenceLength}");
        if (WarmupSteps < 0 || AnnealSteps < 0) throw new DiffuException("--warmup and --anneal-steps must be non-negative");
        if (ClipNorm < 0 || WeightDecay < 0) throw new DiffuException("clip norm and weight decay must be non-negative");
    }
}
