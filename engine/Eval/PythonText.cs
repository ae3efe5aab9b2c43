namespace DiffuSharp.Eval;

/// <summary>
/// Python's <c>str.strip()</c> and <c>str.split()</c> (no arguments), which the reference evaluation scripts use
/// to cut LAMBADA passages and compare answers. Python's whitespace is .NET's plus the four separator
/// controls U+001C to U+001F (file, group, record and unit separator), which Python counts as line breaks.
/// </summary>
public static class PythonText
{
    /// <summary>Python's <c>str.isspace()</c> for one character.</summary>
    public static bool IsSpace(char c) => char.IsWhiteSpace(c) || c is >= '\u001C' and <= '\u001F';

    /// <summary><c>text.strip()</c>: the text without leading and trailing whitespace.</summary>
    public static string Strip(string text)
    {
        int start = 0, end = text.Length;
        while (start < end && IsSpace(text[start])) start++;
        while (end > start && IsSpace(text[end - 1])) end--;
        return text[start..end];
    }

    /// <summary><c>text.split()</c>: the runs of non-whitespace characters, in order.</summary>
    public static List<string> Split(string text)
    {
        var words = new List<string>();
        int i = 0;
        while (i < text.Length)
        {
            while (i < text.Length && IsSpace(text[i])) i++;
            int start = i;
            while (i < text.Length && !IsSpace(text[i])) i++;
            if (i > start) words.Add(text[start..i]);
        }
        return words;
    }
}
