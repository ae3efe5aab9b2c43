namespace DiffuSharp.Eval;

/// <summary>
/// One candidate to score: the token ids of start token + context + choice (as the task encodes them), and
/// which positions the scorer may mask or must predict (the choice tokens; never position 0). Example and
/// choice key its random draws, so a score does not depend on what else is in the batch.
/// </summary>
public sealed record ScoringSequence(int Example, int Choice, int[] Ids, bool[] Maskable)
{
    /// <summary>A context followed by a choice: the choice's tokens are the maskable part.</summary>
    public static ScoringSequence ContextAndChoice(int example, int choice, IReadOnlyList<int> context, IReadOnlyList<int> choiceTokens)
    {
        if (context.Count == 0) throw new ArgumentException("the context must hold at least the start token");
        var ids = new int[context.Count + choiceTokens.Count];
        var maskable = new bool[ids.Length];
        for (int i = 0; i < context.Count; i++) ids[i] = context[i];
        for (int i = 0; i < choiceTokens.Count; i++)
        {
            ids[context.Count + i] = choiceTokens[i];
            maskable[context.Count + i] = true;
        }
        return new ScoringSequence(example, choice, ids, maskable);
    }

    public int Length => Ids.Length;
}

/// <summary>Scores candidates; lower is better (the answer is the argmin over an example's choices).</summary>
public interface IChoiceScorer
{
    /// <summary>diffusion, elbo or ar: what results and predictions record.</summary>
    string Name { get; }

    /// <summary>One score per sequence, in order; <paramref name="progress"/> gets the number of sequences finished so far.</summary>
    double[] Score(IReadOnlyList<ScoringSequence> sequences, Action<int>? progress = null);
}
