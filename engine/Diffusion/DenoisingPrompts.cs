using System.Text.RegularExpressions;
using DiffuSharp.Models;
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

    /// <summary>[start] + N generated slots, at most <paramref name="positions"/> in all.</summary>
    public static DenoisingRow Unconditional(int startToken, int length, int positions)
    {
        if (length <= 0) throw new DiffuException($"--length must be positive, got {length}");
        long n = 1L + length;
        if (n > positions)
            throw new DiffuException($"the start token (1) + --length {length} = {n} exceeds the model's {positions} positions; {Fits(positions - 1L)}");
        var tokens = new int[n];
        var fixedMask = new byte[n];
        tokens[0] = startToken;
        fixedMask[0] = 1;
        return new DenoisingRow(tokens, fixedMask, [(1, (int)n)]);
    }

    /// <summary>[start] + prompt + N generated slots, at most <paramref name="positions"/> in all.</summary>
    public static DenoisingRow Completion(int startToken, IReadOnlyList<int> prompt, int length, int positions)
    {
        if (length <= 0) throw new DiffuException($"--length must be positive, got {length}");
        long n = 1L + prompt.Count + length;
        if (n > positions)
            throw new DiffuException($"the start token (1) + prompt ({prompt.Count} tokens) + --length {length} = {n} exceeds the model's {positions} positions; "
                + Fits(positions - 1L - prompt.Count));
        var tokens = new int[n];
        var fixedMask = new byte[n];
        tokens[0] = startToken;
        for (int i = 0; i <= prompt.Count; i++) fixedMask[i] = 1;
        for (int i = 0; i < prompt.Count; i++) tokens[1 + i] = prompt[i];
        return new DenoisingRow(tokens, fixedMask, [(1 + prompt.Count, (int)n)]);
    }

    /// <summary>
    /// A conditional row (method §5, §8): <c>[BOS] + query + [SEP]</c> fixed, then answer slots up to <paramref name="cutoff"/>
    /// positions (at most the model's), all generated. A query that leaves no slot is refused, not cut.
    /// </summary>
    public static DenoisingRow Conditional(SftTokens tokens, IReadOnlyList<int> query, int cutoff, int positions)
    {
        int n = Math.Min(cutoff, positions);
        int context = query.Count + 2;
        if (context >= n)
            throw new DiffuException($"BOS + the query ({query.Count} tokens) + SEP = {context} leave no answer slot in "
                + (cutoff > positions ? $"the model's {positions} positions: shorten the query" : $"--cutoff {cutoff}: shorten the query or raise --cutoff"));
        var ids = new int[n];
        var fixedMask = new byte[n];
        ids[0] = tokens.Bos;
        for (int i = 0; i < query.Count; i++) ids[1 + i] = query[i];
        ids[context - 1] = tokens.Sep;
        fixedMask.AsSpan(0, context).Fill(1);
        return new DenoisingRow(ids, fixedMask, [(context, n)]);
    }

    static string Fits(long length) => length > 0 ? $"at most --length {length} fits" : "the prompt leaves no room: shorten it";

    /// <summary>
    /// [start] + the text with each `&lt;mask:N&gt;` replaced by N generated slots; the text around the
    /// placeholders is encoded piece by piece and kept fixed. At most <paramref name="positions"/> in all,
    /// checked before the slots are allocated.
    /// </summary>
    public static DenoisingRow Infill(int startToken, string text, TextTokenizer tokenizer, int positions)
    {
        var matches = Placeholder().Matches(text);
        if (matches.Count == 0) throw new DiffuException("--infill text has no <mask:N> placeholder (e.g. \"The cat <mask:8> on the mat.\")");
        var pieces = new List<IReadOnlyList<int>>();
        var counts = new List<int>();
        int at = 0;
        foreach (Match m in matches)
        {
            pieces.Add(Encode(text[at..m.Index]));
            if (!int.TryParse(m.Groups[1].Value, out int count) || count <= 0 || count > 100_000)
                throw new DiffuException($"bad placeholder '{m.Value}': the count must be a positive number");
            counts.Add(count);
            at = m.Index + m.Length;
        }
        pieces.Add(Encode(text[at..]));
        long given = pieces.Sum(p => (long)p.Count), slots = counts.Sum(c => (long)c), n = 1 + given + slots;
        if (n > positions)
            throw new DiffuException($"the start token (1) + the infill text ({given} tokens) + its <mask:N> slots ({slots}) = {n} exceeds the model's {positions} positions");

        var tokens = new List<int> { startToken };
        var fixedMask = new List<byte> { 1 };
        var gaps = new List<(int, int)>();
        for (int p = 0; p < pieces.Count; p++)
        {
            foreach (int id in pieces[p]) { tokens.Add(id); fixedMask.Add(1); }
            if (p == counts.Count) break;
            gaps.Add((tokens.Count, tokens.Count + counts[p]));
            for (int i = 0; i < counts[p]; i++) { tokens.Add(0); fixedMask.Add(0); }
        }
        return new DenoisingRow(tokens.ToArray(), fixedMask.ToArray(), gaps);

        IReadOnlyList<int> Encode(string piece) => piece.Length == 0 ? [] : tokenizer.Encode(piece);
    }

    /// <summary>
    /// What to show of a finished row [start, ...]: its tokens split at each end-of-text token (the boundaries a
    /// caller marks), the start token kept at the head of the first piece. With <paramref name="stopAtEndOfText"/>
    /// every generated span ends at its first end-of-text token: that token and the rest of the span are dropped,
    /// while fixed text (a prompt, an infill's prefix and suffix) is always kept, so an infill keeps its suffix.
    /// </summary>
    public static List<int[]> Pieces(ReadOnlySpan<int> tokens, ReadOnlySpan<byte> fixedMask, int? endOfText, bool stopAtEndOfText)
    {
        var pieces = new List<int[]>();
        var piece = new List<int> { tokens[0] };
        bool stopped = false;
        for (int i = 1; i < tokens.Length; i++)
        {
            bool generated = fixedMask[i] == 0;
            if (!generated) stopped = false;
            if (stopped) continue;
            if (tokens[i] != endOfText)
            {
                piece.Add(tokens[i]);
                continue;
            }
            if (generated && stopAtEndOfText)
            {
                stopped = true;
                continue;
            }
            pieces.Add([.. piece]);
            piece.Clear();
        }
        pieces.Add([.. piece]);
        return pieces;
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
