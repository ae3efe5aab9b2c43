using System.Text.Json;

namespace DiffuSharp.Eval;

/// <summary>
/// The question files of PIQA and Social IQA: one JSON object per line, with a labels file beside it that
/// holds one integer per line, aligned with the questions.
/// </summary>
internal static class JsonLines
{
    /// <summary>Each line of <paramref name="path"/> parsed as a JSON object (the 0-based index is the line number − 1).</summary>
    public static List<JsonElement> ReadObjects(string path)
    {
        var lines = EvalFile.ReadLines(path);
        var objects = new List<JsonElement>(lines.Count);
        for (int i = 0; i < lines.Count; i++)
        {
            if (string.IsNullOrWhiteSpace(lines[i])) throw EvalFile.Error(path, i + 1, "blank line (expected one JSON object per line)");
            JsonElement element;
            try
            {
                using var document = JsonDocument.Parse(lines[i]);
                element = document.RootElement.Clone();
            }
            catch (JsonException e)
            {
                throw EvalFile.Error(path, i + 1, $"invalid JSON ({e.Message})");
            }
            if (element.ValueKind != JsonValueKind.Object) throw EvalFile.Error(path, i + 1, $"expected a JSON object, found {element.ValueKind}");
            objects.Add(element);
        }
        return objects;
    }

    /// <summary>The string field <paramref name="name"/> of the object on line <paramref name="line"/>.</summary>
    public static string String(JsonElement obj, string name, string path, int line)
    {
        if (!obj.TryGetProperty(name, out var value)) throw EvalFile.Error(path, line, $"missing field '{name}'");
        if (value.ValueKind != JsonValueKind.String) throw EvalFile.Error(path, line, $"field '{name}' must be a string, found {value.ValueKind}");
        return value.GetString()!;
    }

    /// <summary>
    /// The labels file: one integer from <paramref name="min"/> to <paramref name="max"/> per line, exactly
    /// <paramref name="count"/> of them (one per question in <paramref name="questionsPath"/>).
    /// </summary>
    public static int[] ReadLabels(string path, int min, int max, int count, string questionsPath)
    {
        var lines = EvalFile.ReadLines(path);
        if (lines.Count != count)
            throw EvalFile.Error(path, $"{lines.Count} labels for the {count} questions of {questionsPath} (the files must be aligned line by line)");
        var labels = new int[count];
        for (int i = 0; i < count; i++)
        {
            string text = lines[i].Trim();
            if (!int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out labels[i]) || labels[i] < min || labels[i] > max)
                throw EvalFile.Error(path, i + 1, $"the label must be an integer from {min} to {max}, found '{lines[i]}'");
        }
        return labels;
    }
}
