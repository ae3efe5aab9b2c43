namespace DiffuSharp.Kernels.Reference;

/// <summary>The AdamW update of <see cref="AdamWStep"/>, in float64 (the hyper-parameters are widened from float).</summary>
public static class AdamW
{
    /// <summary>
    /// m = β1 m + (1−β1) g; v = β2 v + (1−β2) g²; p −= lr (m̂ / (sqrt(v̂) + ε) + λ p) with m̂ = m / (1 − β1^step),
    /// v̂ = v / (1 − β2^step); the decay term uses p from before the update.
    /// </summary>
    public static void Update(Span<double> param, ReadOnlySpan<double> grad, Span<double> m, Span<double> v, in AdamWStep step)
    {
        step.Validate();
        double beta1 = step.Beta1, beta2 = step.Beta2, lr = step.LearningRate, eps = step.Epsilon, decay = step.WeightDecay;
        double correction1 = 1.0 - Math.Pow(beta1, step.Step);
        double correction2 = 1.0 - Math.Pow(beta2, step.Step);
        for (int i = 0; i < param.Length; i++)
        {
            double g = grad[i];
            m[i] = beta1 * m[i] + (1.0 - beta1) * g;
            v[i] = beta2 * v[i] + (1.0 - beta2) * g * g;
            double mHat = m[i] / correction1;
            double vHat = v[i] / correction2;
            param[i] -= lr * (mHat / (Math.Sqrt(vHat) + eps) + decay * param[i]);
        }
    }
}
