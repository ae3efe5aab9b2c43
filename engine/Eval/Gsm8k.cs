using System.Text;
using System.Text.Json;

namespace DiffuSharp.Eval;

/// <summary>
/// A GSM8K problem in the paper's symbolic SFT format: <paramref name="Prompt"/> is the question and
/// <paramref name="Answer"/> the calculation chain ending in the final answer, "&lt;&lt;a op b=c&gt;&gt; ... #### n".
/// </summary>
public sealed record GsmExample(string Prompt, string Answer);

/// <summary>
/// GSM8K test (method §10, the paper's finetuned GSM8K* column): a JSON array of {instruction, output} objects
/// (prompt = instruction, answer = output), scored by the final answer after "####".
/// </summary>
public static class Gsm8k
{
    public const string FileName = "gsm_test_diffullama.json";

    /// <summary>What precedes the final answer, in the gold answers and in what a finetuned model writes.</summary>
    public const string AnswerMarker = "####";

    /// <summary>The 1319 test problems of <see cref="FileName"/> under the eval data folder.</summary>
    public static IReadOnlyList<GsmExample> Load(string dataRoot, int? limit = null) =>
        LoadFile(Path.Combine(dataRoot, FileName), limit);

    /// <summary>
    /// Problems from a JSON array of objects with string fields "instruction" and "output"; each output
    /// must hold a final answer after "####". A bad item is reported by its 1-based number and its line.
    /// </summary>
    public static IReadOnlyList<GsmExample> LoadFile(string path, int? limit = null)
    {
        ReadOnlySpan<byte> json = EvalFile.ReadAllBytes(path);
        if (json.StartsWith(Encoding.UTF8.Preamble)) json = json[Encoding.UTF8.Preamble.Length..];
        var examples = new List<GsmExample>();
        var reader = new Utf8JsonReader(json);
        long line = 1;
        int counted = 0;
        try
        {
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartArray)
                throw EvalFile.Error(path, "expected a JSON array of {\"instruction\", \"output\"} objects");
            while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
            {
                int item = examples.Count + 1;
                int start = (int)reader.TokenStartIndex;
                line += json[counted..start].Count((byte)'\n');
                counted = start;
                var element = JsonElement.ParseValue(ref reader);
                examples.Add(Example(element, path, $"item {item} (line {line})"));
            }
            // The reader throws on anything but whitespace after the array.
            while (reader.Read()) { }
        }
        catch (JsonException e)
        {
            throw EvalFile.Error(path, (e.LineNumber ?? 0) + 1, $"invalid JSON ({e.Message})");
        }
        return EvalFile.Take(examples, limit);
    }

    private static GsmExample Example(JsonElement element, string path, string where)
    {
        if (element.ValueKind != JsonValueKind.Object) throw EvalFile.Error(path, $"{where}: expected an object, found {element.ValueKind}");
        string Field(string name) =>
            element.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String
                ? value.GetString()!
                : throw EvalFile.Error(path, $"{where}: field '{name}' must be a string");
        string prompt = Field("instruction"), answer = Field("output");
        if (FinalAnswer(answer) is null) throw EvalFile.Error(path, $"{where}: the output has no final answer after '{AnswerMarker}'");
        return new GsmExample(prompt, answer);
    }

    /// <summary>
    /// The final answer of a text, normalised: the part after the last "####" (found as Python's
    /// <c>text.split("####")[-1]</c> finds it, non-overlapping from the left), stripped of surrounding
    /// whitespace, with every comma removed (thousands separators, as the reference removes them). Null when
    /// the text has no "####".
    /// </summary>
    public static string? FinalAnswer(string text)
    {
        int last = -1;
        for (int at = text.IndexOf(AnswerMarker, StringComparison.Ordinal); at >= 0; at = text.IndexOf(AnswerMarker, at + AnswerMarker.Length, StringComparison.Ordinal))
            last = at;
        return last < 0 ? null : PythonText.Strip(text[(last + AnswerMarker.Length)..]).Replace(",", "", StringComparison.Ordinal);
    }

    /// <summary>
    /// Whether the prediction's final answer is the gold one, compared as text after the normalisation of
    /// <see cref="FinalAnswer"/>, exactly as the paper's evaluation does (method §8): "12.00" is not 12 and
    /// "40." is not 40. A prediction without "####" is wrong.
    /// </summary>
    public static bool IsCorrect(string prediction, string gold)
    {
        string goldAnswer = FinalAnswer(gold) ?? throw new ArgumentException($"the gold answer has no '{AnswerMarker}': {gold}", nameof(gold));
        return FinalAnswer(prediction) is { } answer && string.Equals(answer, goldAnswer, StringComparison.Ordinal);
    }

    /// <summary>The percentage of predictions whose final answer is right (<see cref="IsCorrect"/>).</summary>
    public static double AccuracyPercent(IReadOnlyList<string> predictions, IReadOnlyList<string> golds)
    {
        if (predictions.Count != golds.Count) throw new ArgumentException($"{predictions.Count} predictions for {golds.Count} gold answers");
        if (predictions.Count == 0) throw new ArgumentException("no predictions to score");
        int correct = 0;
        for (int i = 0; i < predictions.Count; i++)
            if (IsCorrect(predictions[i], golds[i])) correct++;
        return 100.0 * correct / predictions.Count;
    }
}
