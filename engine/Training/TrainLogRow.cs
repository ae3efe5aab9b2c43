using System.Text.Json.Serialization;

namespace DiffuSharp.Training;

/// <summary>
/// One line of train_log.jsonl: an optimizer step, with the validation loss when it was evaluated. The
/// row of step 0 carries only the validation loss before training (Loss is null).
/// </summary>
public sealed record TrainLogRow(
    long Step,
    double? Loss,
    double Lr,
    double GradNorm,
    [property: JsonPropertyName("tokens_per_s")] double TokensPerSecond,
    double? ValLoss = null);
