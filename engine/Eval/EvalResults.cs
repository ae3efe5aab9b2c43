namespace DiffuSharp.Eval;

/// <summary>
/// One example's outcome for predictions.jsonl: the gold answer and the prediction as text, whether it was
/// right (null for ROUGE tasks, which grade by overlap), and for multiple choice the score of every choice
/// (lower is better: the diffusion score, or minus the mean log-probability for the AR scorer).
/// </summary>
public sealed record EvalPrediction(string Task, int Index, string Gold, string Prediction, bool? Correct, double[]? Scores = null);

/// <summary>A task's result: its metrics (name -> value), how many examples, the settings that produced it, and every prediction.</summary>
public sealed record TaskResult(string Task, int Count, IReadOnlyDictionary<string, double> Metrics, IReadOnlyDictionary<string, string> Settings,
    IReadOnlyList<EvalPrediction> Predictions);
