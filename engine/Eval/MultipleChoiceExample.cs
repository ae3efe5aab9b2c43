namespace DiffuSharp.Eval;

/// <summary>
/// A multiple-choice question as the scorer sees it: the context and each choice are encoded separately
/// (see <see cref="EvalTaskInfo.ContextTokens"/> and <see cref="EvalTaskInfo.TargetTokens"/>) and the choice's
/// tokens are appended to the context's, so the strings here keep the exact spacing the reference gives them.
/// <paramref name="Gold"/> is the 0-based index of the right choice.
/// </summary>
public sealed record MultipleChoiceExample(string Context, IReadOnlyList<string> Choices, int Gold);
