namespace DiffuSharp.Eval;

/// <summary>
/// PIQA validation (method §10): the context is <c>"Question: {goal}\nAnswer: "</c> and each choice is
/// <c>" " + sol</c>, both as the reference builds them. The choice's leading space is kept although the
/// context already ends with one: the two are encoded separately and their tokens joined, so the model sees
/// "Answer:" followed by a space token and then the solution's tokens with their own leading space. The
/// goal and the solutions are used verbatim (some solutions end with a space). Gold is the 0/1 label.
/// </summary>
public static class Piqa
{
    public const string QuestionsFile = "piqa/valid.jsonl";
    public const string LabelsFile = "piqa/valid-labels.lst";
    public const int Choices = 2;

    /// <summary>The 1838 validation questions under the eval data folder.</summary>
    public static IReadOnlyList<MultipleChoiceExample> Load(string dataRoot, int? limit = null) =>
        LoadFiles(Path.Combine(dataRoot, QuestionsFile), Path.Combine(dataRoot, LabelsFile), limit);

    public static IReadOnlyList<MultipleChoiceExample> LoadFiles(string questionsPath, string labelsPath, int? limit = null)
    {
        var questions = JsonLines.ReadObjects(questionsPath);
        var labels = JsonLines.ReadLabels(labelsPath, 0, Choices - 1, questions.Count, questionsPath);
        var examples = new List<MultipleChoiceExample>(questions.Count);
        for (int i = 0; i < questions.Count; i++)
        {
            string goal = JsonLines.String(questions[i], "goal", questionsPath, i + 1);
            string sol1 = JsonLines.String(questions[i], "sol1", questionsPath, i + 1);
            string sol2 = JsonLines.String(questions[i], "sol2", questionsPath, i + 1);
            examples.Add(new MultipleChoiceExample(Context(goal), [" " + sol1, " " + sol2], labels[i]));
        }
        return EvalFile.Take(examples, limit);
    }

    public static string Context(string goal) => $"Question: {goal}\nAnswer: ";
}
