using System.Text.Json.Serialization;

namespace DiffuSharp.Training;

/// <summary>
/// One line of train_log.jsonl: an optimizer step, with the validation loss when it was evaluated. The
/// row of step 0 carries only the validation figures before training (Loss is null). Ce is the mean
/// cross-entropy over the target tokens (for diffusion the masked ones, without the 1/t weight).
/// </summary>
public sealed record TrainLogRow(
    long Step,
    double? Loss,
    double? Ce,
    double Lr,
    double GradNorm,
    [property: JsonPropertyName("tokens_per_s")] double TokensPerSecond,
    double? ValLoss = null,
    double? ValCe = null);
