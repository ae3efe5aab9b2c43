namespace DiffuSharp.Eval;

/// <summary>
/// One LAMBADA passage. <paramref name="Text"/> is the line without surrounding whitespace, what the reference
/// encodes in full; <paramref name="Prefix"/> is every word but the last joined by single spaces, and
/// <paramref name="Target"/> the last whitespace-separated word. The masked tokens are those of
/// enc(Text) beyond enc(Prefix) (method §10 assumes enc(Prefix) is a token prefix of enc(Text)).
/// </summary>
public sealed record LambadaExample(string Text, string Prefix, string Target);

/// <summary>
/// LAMBADA (method §10): the test file has one passage per line; the model fills in the last word and is right
/// when its decoded text, stripped, equals that word. Words are split as Python's <c>str.split()</c> does.
/// </summary>
public static class Lambada
{
    public const string FileName = "lambada_test_plain_text.txt";

    /// <summary>The 5153 test passages of <see cref="FileName"/> under the eval data folder.</summary>
    public static IReadOnlyList<LambadaExample> Load(string dataRoot, int? limit = null) =>
        LoadFile(Path.Combine(dataRoot, FileName), limit);

    /// <summary>
    /// Passages from any text file, one per line (the <c>--data FILE</c> form). Blank lines are skipped; a
    /// line with fewer than two words has no prefix to condition on and is an error naming the line.
    /// </summary>
    public static IReadOnlyList<LambadaExample> LoadFile(string path, int? limit = null)
    {
        var lines = EvalFile.ReadLines(path);
        var examples = new List<LambadaExample>(lines.Count);
        for (int i = 0; i < lines.Count; i++)
        {
            var words = PythonText.Split(lines[i]);
            if (words.Count == 0) continue;
            if (words.Count < 2)
                throw EvalFile.Error(path, i + 1, $"a passage needs at least two words (a prefix and the word to predict), found only '{words[0]}'");
            examples.Add(new LambadaExample(PythonText.Strip(lines[i]), string.Join(' ', words[..^1]), words[^1]));
        }
        return EvalFile.Take(examples, limit);
    }

    /// <summary>The exact-match rule of the reference: the prediction, stripped of surrounding whitespace, equals the target.</summary>
    public static bool IsExactMatch(string prediction, string target) =>
        string.Equals(PythonText.Strip(prediction), PythonText.Strip(target), StringComparison.Ordinal);
}
