using DiffuSharp.Diffusion;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Training;

/// <summary>
/// The objective's loss Σ weight · CE of a micro-batch, and the plain mean cross-entropy over its target
/// rows (for diffusion: the masked tokens, unweighted by 1/t, which method §2.2 logs beside the loss).
/// </summary>
public readonly record struct BatchLoss(double Loss, double MeanCrossEntropy);

/// <summary>The loss and gradients of one prepared micro-batch: forward, weighted cross-entropy, backward.</summary>
public static class GradientStep
{
    /// <summary>Adds the gradients of Σ weight · CE into <paramref name="grads"/> (a set made by the same model) and returns the loss.</summary>
    public static BatchLoss Run(ITrainableModel model, ObjectiveBatch batch, IParameterSet grads, AttentionMaskMode mode, Tensor? allow)
    {
        using var pass = model.ForwardForTraining(batch.Inputs, batch.Batch, batch.Length, mode, allow);
        return CrossEntropy(model.Device, batch, pass.Logits, () => model.Backward(pass, grads));
    }

    /// <summary>The loss of a micro-batch, without gradients (validation).</summary>
    public static BatchLoss Loss(ILanguageModel model, ObjectiveBatch batch, AttentionMaskMode mode, Tensor? allow)
    {
        using var result = model.Logits(batch.Inputs, batch.Batch, batch.Length, mode, allow);
        return CrossEntropy(model.Device, batch, result.Logits, null);
    }

    /// <summary>Weighted cross-entropy of the logits, written in place as dLoss/dLogits, then <paramref name="backward"/>.</summary>
    static BatchLoss CrossEntropy(Device d, ObjectiveBatch batch, Tensor logits, Action? backward)
    {
        int rows = batch.Batch * batch.Length;
        using var targets = d.FromArray(batch.Targets, rows);
        using var weights = d.FromArray(batch.Weights, rows);
        using var losses = d.Allocate(DType.F32, rows);
        d.CrossEntropy(logits, targets, weights, losses, logits);
        backward?.Invoke();
        var rowLosses = d.ToArray(losses);
        double total = 0, crossEntropy = 0;
        for (int r = 0; r < rows; r++)
        {
            total += rowLosses[r];
            if (batch.Weights[r] != 0) crossEntropy += rowLosses[r] / batch.Weights[r];
        }
        return new BatchLoss(total, batch.TargetCount == 0 ? 0 : crossEntropy / batch.TargetCount);
    }
}
