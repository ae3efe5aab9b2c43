using System.Text.RegularExpressions;
using DiffuSharp.Text;

namespace DiffuSharp.Diffusion;

/// <summary>A row to denoise, built from text: where it starts and which spans are generated.</summary>
public sealed record DenoisingRow(int[] Tokens, byte[] Fixed, IReadOnlyList<(int Start, int End)> Gaps);

/// <summary>
/// Builds denoising rows for the three modes: unconditional generation, prefix completion and infilling
/// with `&lt;mask:N&gt;` placeholders (prefix and suffix fixed, no re-ordering). Every row starts with a
/// fixed start token (slot 0, which the shift keeps and the output drops).
/// </summary>
public static partial class DenoisingPrompts
{
    [GeneratedRegex(@"<mask:(\d+)>")]
    private static partial Regex Placeholder();

    /// <summary>[start] + N generated slots.</summary>
    public static DenoisingRow Unconditional(int startToken, int length)
    {
        if (length <= 0) throw new DiffuException($"--length must be positive, got {length}");
        var tokens = new int[length + 1];
        var fixedMask = new byte[length + 1];
        tokens[0] = startToken;
        fixedMask[0] = 1;
        return new DenoisingRow(tokens, fixedMask, [(1, length + 1)]);
    }

    /// <summary>[start] + prompt + N generated slots.</summary>
    public static DenoisingRow Completion(int startToken, IReadOnlyList<int> prompt, int length)
    {
        if (length <= 0) throw new DiffuException($"--length must be positive, got {length}");
        int n = 1 + prompt.Count + length;
        var tokens = new int[n];
        var fixedMask = new byte[n];
        tokens[0] = startToken;
        for (int i = 0; i <= prompt.Count; i++) fixedMask[i] = 1;
        for (int i = 0; i < prompt.Count; i++) tokens[1 + i] = prompt[i];
        return new DenoisingRow(tokens, fixedMask, [(1 + prompt.Count, n)]);
    }

    /// <summary>
    /// [start] + the text with each `&lt;mask:N&gt;` replaced by N generated slots; the text around the
    /// placeholders is encoded piece by piece and kept fixed.
    /// </summary>
    public static DenoisingRow Infill(int startToken, string text, TextTokenizer tokenizer)
    {
        var matches = Placeholder().Matches(text);
        if (matches.Count == 0) throw new DiffuException("--infill text has no <mask:N> placeholder (e.g. \"The cat <mask:8> on the mat.\")");
        var tokens = new List<int> { startToken };
        var fixedMask = new List<byte> { 1 };
        var gaps = new List<(int, int)>();
        int at = 0;
        foreach (Match m in matches)
        {
            Append(text[at..m.Index]);
            if (!int.TryParse(m.Groups[1].Value, out int count) || count <= 0 || count > 100_000)
                throw new DiffuException($"bad placeholder '{m.Value}': the count must be a positive number");
            gaps.Add((tokens.Count, tokens.Count + count));
            for (int i = 0; i < count; i++) { tokens.Add(0); fixedMask.Add(0); }
            at = m.Index + m.Length;
        }
        Append(text[at..]);
        return new DenoisingRow(tokens.ToArray(), fixedMask.ToArray(), gaps);

        void Append(string piece)
        {
            if (piece.Length == 0) return;
            foreach (int id in tokenizer.Encode(piece)) { tokens.Add(id); fixedMask.Add(1); }
        }
    }

    /// <summary>
    /// Stacks rows into one problem. Rows shorter than the longest get extra generated slots at the end,
    /// so every row has the same length (a shorter prompt generates more tokens).
    /// </summary>
    public static DenoisingProblem Stack(IReadOnlyList<DenoisingRow> rows)
    {
        if (rows.Count == 0) throw new DiffuException("nothing to generate");
        int n = rows.Max(r => r.Tokens.Length);
        var problem = new DenoisingProblem(rows.Count, n);
        for (int r = 0; r < rows.Count; r++)
        {
            rows[r].Tokens.CopyTo(problem.Tokens, r * n);
            rows[r].Fixed.CopyTo(problem.Fixed, r * n);
        }
        return problem;
    }
}
