using System.Text.Json;

namespace DiffuSharp.Eval;

/// <summary>
/// Social IQA validation (method §10): the context is <c>"Question: {context} {question}\nAnswer: "</c> and the
/// choices are the three answers verbatim (no leading space; the reference encodes both without special
/// tokens). The labels file is 1-based; gold = label − 1. The question file also carries the right answer's
/// text, and a file whose label picks a different answer is refused: a shifted or mismatched labels file
/// would otherwise score silently against the wrong choices.
/// </summary>
public static class Siqa
{
    public const string QuestionsFile = "siqa/dev.jsonl";
    public const string LabelsFile = "siqa/dev-labels.lst";
    public const int Choices = 3;

    /// <summary>The 1954 validation questions under the eval data folder.</summary>
    public static IReadOnlyList<MultipleChoiceExample> Load(string dataRoot, int? limit = null) =>
        LoadFiles(Path.Combine(dataRoot, QuestionsFile), Path.Combine(dataRoot, LabelsFile), limit);

    public static IReadOnlyList<MultipleChoiceExample> LoadFiles(string questionsPath, string labelsPath, int? limit = null)
    {
        var questions = JsonLines.ReadObjects(questionsPath);
        var labels = JsonLines.ReadLabels(labelsPath, 1, Choices, questions.Count, questionsPath);
        var examples = new List<MultipleChoiceExample>(questions.Count);
        for (int i = 0; i < questions.Count; i++)
        {
            int line = i + 1;
            string context = JsonLines.String(questions[i], "context", questionsPath, line);
            string question = JsonLines.String(questions[i], "question", questionsPath, line);
            string answer = JsonLines.String(questions[i], "answer", questionsPath, line);
            if (!questions[i].TryGetProperty("options", out var options) || options.ValueKind != JsonValueKind.Array || options.GetArrayLength() != Choices)
                throw EvalFile.Error(questionsPath, line, $"field 'options' must be an array of {Choices} strings");
            var choices = new string[Choices];
            int c = 0;
            foreach (var option in options.EnumerateArray())
            {
                if (option.ValueKind != JsonValueKind.String)
                    throw EvalFile.Error(questionsPath, line, $"field 'options' must be an array of {Choices} strings, found a {option.ValueKind}");
                choices[c++] = option.GetString()!;
            }
            int gold = labels[i] - 1;
            if (!string.Equals(choices[gold], answer, StringComparison.Ordinal))
                throw EvalFile.Error(labelsPath, line,
                    $"label {labels[i]} picks \"{choices[gold]}\" but line {line} of {questionsPath} gives the answer \"{answer}\" (the files do not agree)");
            examples.Add(new MultipleChoiceExample(Context(context, question), choices, gold));
        }
        return EvalFile.Take(examples, limit);
    }

    public static string Context(string context, string question) => $"Question: {context} {question}\nAnswer: ";
}
