using System.Runtime.Intrinsics;

namespace DiffuSharp.Kernels.Cpu;

/// <summary>The AdamW update of <see cref="AdamWStep"/>, vectorised and split over the cores; every element is independent.</summary>
public static class AdamW
{
    /// <summary>
    /// m = β1 m + (1−β1) g; v = β2 v + (1−β2) g²; p −= lr (m̂ / (sqrt(v̂) + ε) + λ p) with m̂ = m / (1 − β1^step) and
    /// v̂ = v / (1 − β2^step); the decay term uses p from before the update. The bias corrections are taken in double.
    /// </summary>
    public static unsafe void Update(Span<float> param, ReadOnlySpan<float> grad, Span<float> m, Span<float> v, in AdamWStep step)
    {
        step.Validate();
        int n = param.Length;
        Guard.Length(grad.Length, n, nameof(grad));
        Guard.Length(m.Length, n, nameof(m));
        Guard.Length(v.Length, n, nameof(v));
        var h = new Hyper(step.Beta1, step.Beta2, step.LearningRate, step.Epsilon, step.WeightDecay,
            (float)(1.0 / (1.0 - Math.Pow(step.Beta1, step.Step))), (float)(1.0 / (1.0 - Math.Pow(step.Beta2, step.Step))));
        fixed (float* pp = param, pg = grad, pm = m, pv = v)
        {
            float* xp = pp, xg = pg, xm = pm, xv = pv;
            Work.For(n, 1 << 14, (start, end) => Range(xp, xg, xm, xv, h, start, end));
        }
    }

    /// <summary>The hyper-parameters of one step, with the reciprocal bias corrections.</summary>
    readonly record struct Hyper(float Beta1, float Beta2, float LearningRate, float Epsilon, float Decay, float InvCorrection1, float InvCorrection2);

    static unsafe void Range(float* p, float* g, float* m, float* v, Hyper h, int start, int end)
    {
        int i = start;
        if (Vector512.IsHardwareAccelerated)
        {
            var b1 = Vector512.Create(h.Beta1); var c1 = Vector512.Create(1f - h.Beta1);
            var b2 = Vector512.Create(h.Beta2); var c2 = Vector512.Create(1f - h.Beta2);
            var inv1 = Vector512.Create(h.InvCorrection1); var inv2 = Vector512.Create(h.InvCorrection2);
            var lr = Vector512.Create(h.LearningRate); var eps = Vector512.Create(h.Epsilon); var decay = Vector512.Create(h.Decay);
            for (; i <= end - 16; i += 16)
            {
                var gv = Vector512.Load(g + i);
                var mv = Vector512.FusedMultiplyAdd(b1, Vector512.Load(m + i), c1 * gv);
                var vv = Vector512.FusedMultiplyAdd(b2, Vector512.Load(v + i), c2 * gv * gv);
                var pv = Vector512.Load(p + i);
                var update = Vector512.FusedMultiplyAdd(decay, pv, mv * inv1 / (Vector512.Sqrt(vv * inv2) + eps));
                Vector512.Store(mv, m + i);
                Vector512.Store(vv, v + i);
                Vector512.Store(Vector512.FusedMultiplyAdd(-lr, update, pv), p + i);
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var b1 = Vector256.Create(h.Beta1); var c1 = Vector256.Create(1f - h.Beta1);
            var b2 = Vector256.Create(h.Beta2); var c2 = Vector256.Create(1f - h.Beta2);
            var inv1 = Vector256.Create(h.InvCorrection1); var inv2 = Vector256.Create(h.InvCorrection2);
            var lr = Vector256.Create(h.LearningRate); var eps = Vector256.Create(h.Epsilon); var decay = Vector256.Create(h.Decay);
            for (; i <= end - 8; i += 8)
            {
                var gv = Vector256.Load(g + i);
                var mv = Vector256.FusedMultiplyAdd(b1, Vector256.Load(m + i), c1 * gv);
                var vv = Vector256.FusedMultiplyAdd(b2, Vector256.Load(v + i), c2 * gv * gv);
                var pv = Vector256.Load(p + i);
                var update = Vector256.FusedMultiplyAdd(decay, pv, mv * inv1 / (Vector256.Sqrt(vv * inv2) + eps));
                Vector256.Store(mv, m + i);
                Vector256.Store(vv, v + i);
                Vector256.Store(Vector256.FusedMultiplyAdd(-lr, update, pv), p + i);
            }
        }
        for (; i < end; i++)
        {
            float gi = g[i];
            float mi = h.Beta1 * m[i] + (1f - h.Beta1) * gi;
            float vi = h.Beta2 * v[i] + (1f - h.Beta2) * gi * gi;
            m[i] = mi;
            v[i] = vi;
            p[i] -= h.LearningRate * (mi * h.InvCorrection1 / (MathF.Sqrt(vi * h.InvCorrection2) + h.Epsilon) + h.Decay * p[i]);
        }
    }
}
