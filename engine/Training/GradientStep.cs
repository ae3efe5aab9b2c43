using DiffuSharp.Diffusion;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Training;

/// <summary>The loss and gradients of one prepared micro-batch: forward, weighted cross-entropy, backward.</summary>
public static class GradientStep
{
    /// <summary>Adds the gradients of Σ weight · CE into <paramref name="grads"/> and returns that loss.</summary>
    public static double Run(Gpt2Model model, ObjectiveBatch batch, Gpt2Weights grads, AttentionMaskMode mode, Tensor? allow) =>
        Evaluate(model, batch, grads, mode, allow);

    /// <summary>The loss Σ weight · CE of a micro-batch, without gradients (validation).</summary>
    public static double Loss(Gpt2Model model, ObjectiveBatch batch, AttentionMaskMode mode, Tensor? allow) =>
        Evaluate(model, batch, null, mode, allow);

    static double Evaluate(Gpt2Model model, ObjectiveBatch batch, Gpt2Weights? grads, AttentionMaskMode mode, Tensor? allow)
    {
        var d = model.Device;
        int rows = batch.Batch * batch.Length;
        using var act = model.CreateActivations(batch.Batch, batch.Length, keepAllLayers: grads is not null);
        model.Forward(batch.Inputs, act, mode, allow);
        using var targets = d.FromArray(batch.Targets, rows);
        using var weights = d.FromArray(batch.Weights, rows);
        using var losses = d.Allocate(DType.F32, rows);
        var logits = act.Logits!;
        d.CrossEntropy(logits, targets, weights, losses, logits);
        if (grads is not null) model.Backward(act, grads, mode, allow);
        double total = 0;
        foreach (float x in d.ToArray(losses)) total += x;
        return total;
    }
}
