namespace DiffuSharp.Kernels;

/// <summary>
/// One AdamW update (Loshchilov and Hutter: decoupled weight decay, bias-corrected moments):
/// m = β1 m + (1−β1) g; v = β2 v + (1−β2) g²; p −= lr (m̂ / (sqrt(v̂) + ε) + λ p),
/// with m̂ = m / (1 − β1^step), v̂ = v / (1 − β2^step) and <see cref="Step"/> counted from 1.
/// </summary>
public readonly record struct AdamWStep(float LearningRate, float Beta1, float Beta2, float Epsilon, float WeightDecay, int Step)
{
    public float Correction1 => 1f - MathF.Pow(Beta1, Step);
    public float Correction2 => 1f - MathF.Pow(Beta2, Step);

    public void Validate()
    {
        if (Step < 1) throw new ArgumentException($"AdamW step must count from 1, got {Step}");
        if (!(Beta1 is >= 0 and < 1) || !(Beta2 is >= 0 and < 1)) throw new ArgumentException($"AdamW betas must be in [0, 1): {Beta1}, {Beta2}");
        if (!(Epsilon > 0) || !float.IsFinite(LearningRate) || LearningRate < 0 || WeightDecay < 0)
            throw new ArgumentException($"bad AdamW hyper-parameters: {this}");
    }
}
