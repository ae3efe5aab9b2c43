namespace DiffuSharp.Training;

/// <summary>One line of train_log.jsonl: an optimizer step, with the validation loss when it was evaluated.</summary>
public sealed record TrainLogRow(long Step, double Loss, double Lr, double GradNorm, double TokensPerSecond, double? ValLoss = null);
