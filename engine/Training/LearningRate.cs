namespace DiffuSharp.Training;

/// <summary>How the learning rate moves after warm-up.</summary>
public enum LearningRateDecay { Cosine, Constant }

/// <summary>
/// Linear warm-up from 0 to the peak over <see cref="WarmupSteps"/>, then either constant or a cosine
/// decay to 0 at <see cref="TotalSteps"/> (HF's get_cosine_schedule_with_warmup).
/// </summary>
public sealed record LearningRateSchedule(double Peak, long WarmupSteps, long TotalSteps, LearningRateDecay Decay)
{
    /// <summary>The rate for 0-based optimizer step <paramref name="step"/>.</summary>
    public double At(long step)
    {
        if (step < WarmupSteps) return Peak * (step + 1) / WarmupSteps;
        if (Decay == LearningRateDecay.Constant) return Peak;
        long span = Math.Max(1, TotalSteps - WarmupSteps);
        double progress = Math.Clamp((step - WarmupSteps) / (double)span, 0, 1);
        return Peak * 0.5 * (1 + Math.Cos(Math.PI * progress));
    }
}
