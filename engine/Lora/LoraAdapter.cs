using DiffuSharp.Layers;
using DiffuSharp.Runtime;

namespace DiffuSharp.Lora;

/// <summary>
/// A low-rank adapter in a <see cref="Linear"/>'s adapter slot: y += s · (x · Aᵀ) · Bᵀ with A [r, in], B [out, r] and
/// s = alpha / r (PEFT's lora_A.weight, lora_B.weight and scaling), whatever the base weight's layout. The backward
/// recomputes h = x · Aᵀ and accumulates dX += s · dY · B · A, dB += s · dYᵀ · h, dA += s · (dY · B)ᵀ · x into the
/// adapter's gradient views (an adapter attached for inference has none, and no backward).
/// </summary>
public sealed class LoraAdapter(Tensor a, Tensor b, Tensor? gradA, Tensor? gradB, float scale) : ILinearAdapter
{
    public Tensor A { get; } = a;
    public Tensor B { get; } = b;
    public Tensor? GradA { get; } = gradA;
    public Tensor? GradB { get; } = gradB;
    public float Scale { get; } = scale;
    public int Rank => A.Shape[0];

    public void Forward(Tensor x, Tensor y)
    {
        var d = A.Device;
        long rows = x.Length / x.Columns;
        using var h = d.Allocate(DType.F32, (int)rows, Rank);
        using var z = d.Allocate(DType.F32, (int)rows, y.Columns);
        d.MatMulTransposed(x, A, null, h);
        d.MatMulTransposed(h, B, null, z);
        d.Scale(z, Scale);
        d.Add(y, z, y);
    }

    public void Backward(Tensor dY, Tensor x, Tensor dX)
    {
        if (GradA is null || GradB is null) throw new InvalidOperationException("the adapter was attached without gradients (for inference)");
        var d = A.Device;
        int rows = (int)(x.Length / x.Columns);
        using var h = d.Allocate(DType.F32, rows, Rank);
        using var scaled = d.Zeros(DType.F32, rows, dY.Columns);
        using var dH = d.Zeros(DType.F32, rows, Rank);
        d.MatMulTransposed(x, A, null, h);
        d.Add(scaled, dY, scaled);
        d.Scale(scaled, Scale);
        d.MatMulTransposedBackward(scaled, h, B, dH, GradB, null);
        d.MatMulTransposedBackward(dH, x, A, dX, GradA, null);
    }
}
