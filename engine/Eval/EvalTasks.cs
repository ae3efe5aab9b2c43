namespace DiffuSharp.Eval;

/// <summary>What a task asks of the model, and so which scorer runs it (method §10).</summary>
public enum EvalTaskKind
{
    /// <summary>Generate the held-out last word of a passage (LAMBADA); exact match.</summary>
    LastWord,

    /// <summary>Score each choice with the §9 likelihood estimate, lowest wins; accuracy.</summary>
    MultipleChoice,

    /// <summary>Generate the middle between a prefix and a suffix (ROCStories); ROUGE-1/2/L.</summary>
    Infill,

    /// <summary>Generate an answer to a prompt (GSM8K); accuracy of the final answer.</summary>
    Generation,
}

/// <summary>How the reference scripts hand a piece of text to the tokenizer (a quirk of method §10 that changes the ids).</summary>
public enum SpecialTokens
{
    /// <summary><c>add_special_tokens=False</c>: the text's own tokens only.</summary>
    None,

    /// <summary>
    /// <c>tokenizer.encode(text)</c> with its defaults: the LLaMA tokenizer puts a BOS in front of the text (so a
    /// choice encoded this way carries a BOS in the middle of the sequence), the GPT-2 tokenizer adds nothing.
    /// </summary>
    Default,
}

/// <summary>
/// One evaluation task: its name on the command line, its kind, the files it reads (relative to the eval
/// data folder, shared/data/eval here) and what the scorer needs to know to encode it as the paper did.
/// </summary>
/// <param name="Choices">The number of choices of a multiple-choice task; 0 for the others.</param>
/// <param name="ContextTokens">
/// How the reference encodes the context: the multiple-choice query, LAMBADA's prefix (and its whole passage,
/// whose extra tokens are the target), the ROCStories prefix and suffix. GSM8K's prompt and answer are
/// framed by the SFT layout of method §5 (BOS, SEP, EOS), which adds its special tokens itself.
/// </param>
/// <param name="TargetTokens">How the reference encodes what is scored or generated: each choice, the ROCStories middle.</param>
public sealed record EvalTaskInfo(
    string Name,
    EvalTaskKind Kind,
    string Description,
    IReadOnlyList<string> Files,
    int Choices,
    SpecialTokens ContextTokens,
    SpecialTokens TargetTokens);

/// <summary>
/// The tasks of method §10 that can run offline, and a clear refusal for those whose data is not here.
/// Each task has its own typed loader (<see cref="Lambada"/>, <see cref="HellaSwag"/>, <see cref="Piqa"/>,
/// <see cref="Siqa"/>, <see cref="RocStories"/>, <see cref="Gsm8k"/>), each with
/// <c>Load(dataRoot, limit)</c> for the standard files under the eval data folder and a path-based variant.
/// </summary>
public static class EvalTasks
{
    public static IReadOnlyList<EvalTaskInfo> All { get; } =
    [
        new("lambada", EvalTaskKind.LastWord, "LAMBADA test: predict the last word of a passage (exact match)",
            [Lambada.FileName], 0, SpecialTokens.Default, SpecialTokens.Default),
        new("hellaswag", EvalTaskKind.MultipleChoice, "HellaSwag validation: pick the ending of an activity (4 choices)",
            [HellaSwag.FileName], HellaSwag.Choices, SpecialTokens.Default, SpecialTokens.Default),
        new("piqa", EvalTaskKind.MultipleChoice, "PIQA validation: pick the solution to a physical goal (2 choices)",
            [Piqa.QuestionsFile, Piqa.LabelsFile], Piqa.Choices, SpecialTokens.Default, SpecialTokens.Default),
        new("siqa", EvalTaskKind.MultipleChoice, "Social IQA validation: pick the answer about a social situation (3 choices)",
            [Siqa.QuestionsFile, Siqa.LabelsFile], Siqa.Choices, SpecialTokens.None, SpecialTokens.None),
        new("rocstories", EvalTaskKind.Infill, "ROCStories cloze validation, first 1000 stories: infill the third sentence (ROUGE)",
            [RocStories.FileName], 0, SpecialTokens.None, SpecialTokens.None),
        new("gsm8k", EvalTaskKind.Generation, "GSM8K test in the paper's symbolic SFT format (accuracy of the answer after ####)",
            [Gsm8k.FileName], 0, SpecialTokens.None, SpecialTokens.None),
    ];

    /// <summary>Tasks of the paper whose data sets are not available offline, with the message to show for each.</summary>
    public static IReadOnlyDictionary<string, string> NotAvailableOffline { get; } = new Dictionary<string, string>
    {
        ["winogrande"] = "winogrande: the data set (allenai/winogrande, winogrande_xl validation) is not available offline, so this task cannot run here",
        ["triviaqa"] = "triviaqa: the data set is not available offline, so this task cannot run here (the paper's diffusion script actually scores SQuAD validation, which is not available either)",
        ["squad"] = "squad: the data set (rajpurkar/squad validation, which the paper's TriviaQA column was scored on) is not available offline, so this task cannot run here",
    };

    public static IReadOnlyList<string> Names { get; } = [.. All.Select(t => t.Name)];

    /// <summary>The task called <paramref name="name"/> (any case); a task without offline data or an unknown name is a <see cref="DiffuException"/>.</summary>
    public static EvalTaskInfo Get(string name)
    {
        foreach (var task in All)
            if (string.Equals(task.Name, name, StringComparison.OrdinalIgnoreCase)) return task;
        if (NotAvailableOffline.TryGetValue(name.ToLowerInvariant(), out var message)) throw new DiffuException(message);
        throw new DiffuException($"unknown evaluation task '{name}': expected one of {string.Join(", ", Names)}");
    }
}
