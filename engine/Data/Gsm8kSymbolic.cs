using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace DiffuSharp.Data;

/// <summary>What a conversion of GSM8K rows kept and why it dropped the others.</summary>
public sealed record Gsm8kSymbolicResult(IReadOnlyList<SftPair> Pairs, int Rows, int WithoutCalculations, int WithoutAnswer);

/// <summary>
/// GSM8K's worked answers in the paper's symbolic form (the format of gsm_test_diffullama.json): the calculator
/// annotations <c>&lt;&lt;a op b=c&gt;&gt;</c> in order, joined by spaces, then <c>" #### " + answer</c>; the question is kept as it is.
/// A worked answer without calculations becomes <c>" #### answer"</c>, as in the paper's file. Applied to GSM8K's test
/// split it reproduces all 1319 outputs of the paper's test file.
/// </summary>
public static partial class Gsm8kSymbolic
{
    [GeneratedRegex("<<[^<>]*>>")]
    private static partial Regex Calculation();

    /// <summary>The symbolic form of a worked answer, or null when it has no final answer after "####".</summary>
    public static string? Convert(string answer)
    {
        int marker = answer.LastIndexOf("####", StringComparison.Ordinal);
        string final = marker < 0 ? "" : answer[(marker + 4)..].Trim();
        if (final.Length == 0) return null;
        return string.Join(' ', Calculation().Matches(answer[..marker]).Select(m => m.Value)) + " #### " + final;
    }

    /// <summary>Whether a worked answer has at least one calculator annotation.</summary>
    public static bool HasCalculation(string answer) => Calculation().IsMatch(answer);

    /// <summary>
    /// Every row of a GSM8K JSON Lines file ({"question", "answer"}), converted; a row without a final answer is counted
    /// and left out, one without calculations is kept and counted, a malformed row is an error naming the file and line.
    /// </summary>
    public static Gsm8kSymbolicResult ConvertFile(string path)
    {
        var lines = File.ReadAllLines(path);
        var pairs = new List<SftPair>();
        int rows = 0, withoutCalculations = 0, withoutAnswer = 0;
        for (int i = 0; i < lines.Length; i++)
        {
            if (string.IsNullOrWhiteSpace(lines[i])) continue;
            rows++;
            var (question, answer) = Row(lines[i], path, i + 1);
            if (Convert(answer) is not string output)
            {
                withoutAnswer++;
                continue;
            }
            if (!HasCalculation(answer)) withoutCalculations++;
            pairs.Add(new SftPair(question, output, i + 1));
        }
        if (rows == 0) throw new DiffuException($"{path}: no rows");
        return new Gsm8kSymbolicResult(pairs, rows, withoutCalculations, withoutAnswer);
    }

    static (string Question, string Answer) Row(string line, string path, int number)
    {
        try
        {
            using var document = JsonDocument.Parse(line);
            var row = document.RootElement;
            if (row.ValueKind != JsonValueKind.Object) throw new DiffuException($"{path}: line {number}: expected an object, found {row.ValueKind}");
            string Field(string name) =>
                row.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String && value.GetString() is { Length: > 0 } text
                    ? text : throw new DiffuException($"{path}: line {number}: field '{name}' must be a non-empty string");
            return (Field("question"), Field("answer"));
        }
        catch (JsonException e)
        {
            throw new DiffuException($"{path}: line {number}: invalid JSON ({e.Message})");
        }
    }

    /// <summary>The pairs as the paper's SFT file: a JSON array of {"instruction", "output"} objects, UTF-8, indented.</summary>
    public static void Write(Stream stream, IEnumerable<SftPair> pairs)
    {
        using var writer = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
        writer.WriteStartArray();
        foreach (var pair in pairs)
        {
            writer.WriteStartObject();
            writer.WriteString("instruction", pair.Source);
            writer.WriteString("output", pair.Target);
            writer.WriteEndObject();
        }
        writer.WriteEndArray();
    }
}
