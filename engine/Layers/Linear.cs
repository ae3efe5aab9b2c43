using DiffuSharp.Runtime;

namespace DiffuSharp.Layers;

/// <summary>How a <see cref="Linear"/> stores its weight.</summary>
public enum WeightLayout
{
    /// <summary>[in, out]: GPT-2's Conv1D (y = x · W).</summary>
    InputMajor,

    /// <summary>[out, in]: nn.Linear, and every output head (y = x · Wᵀ).</summary>
    OutputMajor,
}

/// <summary>
/// An additive path beside a <see cref="Linear"/>: y += f(x). A low-rank adapter is one; it owns its parameters and
/// their gradients, so plugging one in changes neither the layer's weight nor the model file.
/// </summary>
public interface ILinearAdapter
{
    /// <summary>y += f(x), for x [M, in] and y [M, out].</summary>
    void Forward(Tensor x, Tensor y);

    /// <summary>dX += the adapter's share of dLoss/dx; the adapter's own gradients += theirs.</summary>
    void Backward(Tensor dY, Tensor x, Tensor dX);
}

/// <summary>
/// y = x · W (+ b): a weight (and optional bias) that are views into a model's parameter buffers, in either
/// layout. The layer's twin in a gradient set (same layout, same names) receives its gradients; where the twin's
/// weight or bias is absent (<see cref="Tensor.Absent"/>: a frozen parameter) that gradient is not computed. An
/// adapter adds its path in both directions.
/// </summary>
public sealed class Linear(Tensor weight, Tensor? bias, WeightLayout layout)
{
    public Tensor Weight { get; } = weight.Rank == 2 ? weight : throw new ArgumentException($"a linear weight is 2-D, got {weight.ShapeText}");
    public Tensor? Bias { get; } = bias;
    public WeightLayout Layout { get; } = layout;

    public int InFeatures => Weight.Shape[Layout == WeightLayout.InputMajor ? 0 : 1];
    public int OutFeatures => Weight.Shape[Layout == WeightLayout.InputMajor ? 1 : 0];

    /// <summary>The element type the weight is stored in.</summary>
    public DType StorageType => Weight.DType;

    /// <summary>An extra path added to the output (a low-rank adapter), or null.</summary>
    public ILinearAdapter? Adapter { get; set; }

    /// <summary>y [M, out] = x [M, in] · W (+ b) (+ the adapter's path).</summary>
    public void Forward(Tensor x, Tensor y)
    {
        var d = Weight.Device;
        if (Layout == WeightLayout.InputMajor) d.MatMul(x, Weight, Bias, y);
        else d.MatMulTransposed(x, Weight, Bias, y);
        Adapter?.Forward(x, y);
    }

    /// <summary>
    /// Accumulates dX += dLoss/dx from dY and <paramref name="gradient"/>'s weight and bias += theirs, each unless absent.
    /// <paramref name="gradient"/> is this layer's twin in the gradient set.
    /// </summary>
    public void Backward(Tensor dY, Tensor x, Tensor dX, Linear gradient)
    {
        var d = Weight.Device;
        var dW = gradient.Weight.IfPresent;
        var dB = gradient.Bias?.IfPresent;
        if (Layout == WeightLayout.InputMajor) d.MatMulBackward(dY, x, Weight, dX, dW, dB);
        else d.MatMulTransposedBackward(dY, x, Weight, dX, dW, dB);
        Adapter?.Backward(dY, x, dX);
    }
}
