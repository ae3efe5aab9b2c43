using DiffuSharp.Runtime;

namespace DiffuSharp.Layers;

/// <summary>LayerNorm over the last dimension with a weight and a bias (GPT-2); backward from the saved mean and rstd.</summary>
public sealed class LayerNorm(Tensor weight, Tensor bias, float epsilon)
{
    public Tensor Weight { get; } = weight;
    public Tensor Bias { get; } = bias;
    public float Epsilon { get; } = epsilon;

    public void Forward(Tensor x, Tensor y, Tensor mean, Tensor rstd) => Weight.Device.LayerNorm(x, Weight, Bias, y, mean, rstd, Epsilon);

    /// <summary>dX += dLoss/dx; <paramref name="gradient"/>'s weight and bias += theirs unless they are absent (a frozen norm).</summary>
    public void Backward(Tensor dY, Tensor x, Tensor mean, Tensor rstd, Tensor dX, LayerNorm gradient) =>
        Weight.Device.LayerNormBackward(dY, x, Weight, mean, rstd, dX, gradient.Weight.IfPresent, gradient.Bias.IfPresent);
}

/// <summary>RMSNorm over the last dimension with a weight (LLaMA); backward from the saved rstd.</summary>
public sealed class RmsNorm(Tensor weight, float epsilon)
{
    public Tensor Weight { get; } = weight;
    public float Epsilon { get; } = epsilon;

    public void Forward(Tensor x, Tensor y, Tensor rstd) => Weight.Device.RmsNorm(x, Weight, y, rstd, Epsilon);

    /// <summary>dX += dLoss/dx; <paramref name="gradient"/>'s weight += its own unless it is absent (a frozen norm).</summary>
    public void Backward(Tensor dY, Tensor x, Tensor rstd, Tensor dX, RmsNorm gradient) =>
        Weight.Device.RmsNormBackward(dY, x, Weight, rstd, dX, gradient.Weight.IfPresent);
}
