using System.Text.RegularExpressions;

namespace DiffuSharp.Eval;

/// <summary>
/// HellaSwag validation (method §10) from the plain-text form in the data folder: 6 lines per task (context,
/// gold label 0-3, four endings). That file was written from the official jsonl with the context as
/// <c>activity_label + ": " + ctx</c> and its own markup clean-up already applied to every field: the WikiHow
/// tags <c>[header]</c>, <c>[step]</c> and <c>[substeps]</c> removed, <c>" [title]"</c> replaced by <c>". "</c>,
/// one pass of double spaces to single, the ends trimmed. What remains to do to reach the paper's
/// <c>preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())</c> and <c>preprocess(ending)</c>:
/// <list type="bullet">
/// <item><b>Capitalise ctx_b.</b> The file joins ctx_a and ctx_b as the official <c>ctx</c> does. The
/// ActivityNet tasks (the first 3243) end with ctx_b, an unfinished sentence after the last ". ", while every
/// WikiHow context ends with "." (its ctx_b is empty); so a context that does not end with "." gets the text
/// after its last ". " capitalised as Python's <c>str.capitalize()</c> does (first letter upper, the rest lower).
/// See <see cref="CapitalizeUnfinishedSentence"/>.</item>
/// <item><b>Drop the remaining bracket spans.</b> The paper removes every <c>[...]</c> (regex <c>\[.*?\]</c>),
/// the file only the four WikiHow tags, so spans such as "[www.kiddio.org]" or "[insert name]" are still in
/// it. They are removed, and then double spaces are made single once, as the paper's step after the regex
/// does. A text with no span is left alone: its double spaces already had that one pass, and a second would
/// change the one ending that still has a double space (task 4121; presumably three or more spaces in the
/// original, which the paper's single pass also left double). See <see cref="RemoveBracketArtifacts"/>.</item>
/// <item><b>Nothing else.</b> The trim and the " [title]" drop were done by the file's writer; no field has
/// surrounding whitespace or a "[title]" left. Endings are kept without a leading space, as the reference
/// appends their tokens straight after the context's.</item>
/// </list>
/// One case cannot be reproduced from this file: where the original had a "[" with no "]" of its own before
/// a WikiHow tag, the paper's regex removed everything up to the tag's "]", while here the tag is gone and
/// the "[" stays unmatched. Five lines of the file have an unmatched "[" (for example "[ coli coli ...");
/// whether a tag followed it in the original cannot be told from the file.
/// </summary>
public static partial class HellaSwag
{
    public const string FileName = "hellaswag/hellaswag_val_full.txt";
    public const int Choices = 4;
    private const int LinesPerTask = 2 + Choices;

    /// <summary>The 10042 validation tasks of <see cref="FileName"/> under the eval data folder.</summary>
    public static IReadOnlyList<MultipleChoiceExample> Load(string dataRoot, int? limit = null) =>
        LoadFile(Path.Combine(dataRoot, FileName), limit);

    public static IReadOnlyList<MultipleChoiceExample> LoadFile(string path, int? limit = null)
    {
        var lines = EvalFile.ReadLines(path);
        if (lines.Count % LinesPerTask != 0)
            throw EvalFile.Error(path, lines.Count - lines.Count % LinesPerTask + 1,
                $"the last task is cut short: {lines.Count} lines is not a multiple of {LinesPerTask} (context, label, {Choices} endings)");
        var examples = new List<MultipleChoiceExample>(lines.Count / LinesPerTask);
        for (int first = 0; first < lines.Count; first += LinesPerTask)
        {
            for (int i = first; i < first + LinesPerTask; i++)
                if (string.IsNullOrWhiteSpace(lines[i])) throw EvalFile.Error(path, i + 1, "blank line inside a task (context, label, 4 endings)");
            string label = lines[first + 1];
            if (label.Length != 1 || label[0] is < '0' or > '3')
                throw EvalFile.Error(path, first + 2, $"the gold label must be 0, 1, 2 or 3, found '{label}'");
            var endings = new string[Choices];
            for (int c = 0; c < Choices; c++) endings[c] = RemoveBracketArtifacts(lines[first + 2 + c]);
            string context = RemoveBracketArtifacts(CapitalizeUnfinishedSentence(lines[first]));
            examples.Add(new MultipleChoiceExample(context, endings, label[0] - '0'));
        }
        return EvalFile.Take(examples, limit);
    }

    /// <summary>
    /// The context with ctx_b capitalised as the paper's <c>ctx_b.capitalize()</c>: a context that does not end
    /// with "." ends with ctx_b, the text after its last ". " (after the activity label's ": " when there is
    /// no sentence before it); its first character is made upper case and the rest lower case.
    /// </summary>
    public static string CapitalizeUnfinishedSentence(string context)
    {
        if (context.Length == 0 || context.EndsWith('.')) return context;
        int sentence = context.LastIndexOf(". ", StringComparison.Ordinal);
        int start = sentence >= 0 ? sentence + 2 : context.IndexOf(": ", StringComparison.Ordinal) + 2;
        if (start < 2 || start >= context.Length) return context;
        return string.Concat(context.AsSpan(0, start), char.ToUpperInvariant(context[start]).ToString(), context[(start + 1)..].ToLowerInvariant());
    }

    /// <summary>
    /// The paper's bracket clean-up on text that already had one pass of double spaces: every <c>[...]</c>
    /// span (up to the first "]" after a "[") is removed, then, only if one was, "  " becomes " " once
    /// (left to right, as Python's <c>str.replace</c>).
    /// </summary>
    public static string RemoveBracketArtifacts(string text)
    {
        string removed = BracketSpan().Replace(text, "");
        return removed.Length == text.Length ? text : removed.Replace("  ", " ", StringComparison.Ordinal);
    }

    [GeneratedRegex(@"\[.*?\]", RegexOptions.CultureInvariant)]
    private static partial Regex BracketSpan();
}
