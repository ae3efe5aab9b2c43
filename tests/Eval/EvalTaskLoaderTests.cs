using System.Text.Json;
using System.Text.RegularExpressions;
using DiffuSharp.Eval;

namespace DiffuSharp.Tests.Eval;

/// <summary>
/// The task loaders on the real data files: the number of examples, and the text pieces against
/// tests/fixtures/eval/tasks_reference.json, which tests/reference/eval_tasks_reference.py wrote by reading
/// the raw files independently in Python (see its header for the command).
/// </summary>
public sealed class EvalTaskLoaderTests
{
    private static string DataRoot => Path.Combine(TestUtil.SharedData, "eval");

    private static readonly Lazy<JsonElement> Reference = new(() =>
        JsonDocument.Parse(File.ReadAllText(Path.Combine(TestUtil.Fixtures, "eval", "tasks_reference.json"))).RootElement);

    private static readonly Lazy<IReadOnlyList<MultipleChoiceExample>> HellaSwagTasks = new(() => HellaSwag.Load(DataRoot));

    private static int ReferenceCount(string task) => Reference.Value.GetProperty("counts").GetProperty(task).GetInt32();

    private static IEnumerable<JsonElement> ReferenceExamples(string task) => Reference.Value.GetProperty(task).EnumerateArray();

    [Test]
    public void EachTaskHasTheExpectedNumberOfExamples()
    {
        Assert.Multiple(() =>
        {
            Assert.That(Lambada.Load(DataRoot), Has.Count.EqualTo(5153).And.Count.EqualTo(ReferenceCount("lambada")));
            Assert.That(HellaSwagTasks.Value, Has.Count.EqualTo(10042).And.Count.EqualTo(ReferenceCount("hellaswag")));
            Assert.That(Piqa.Load(DataRoot), Has.Count.EqualTo(1838).And.Count.EqualTo(ReferenceCount("piqa")));
            Assert.That(Siqa.Load(DataRoot), Has.Count.EqualTo(1954).And.Count.EqualTo(ReferenceCount("siqa")));
            Assert.That(RocStories.Load(DataRoot), Has.Count.EqualTo(1000).And.Count.EqualTo(ReferenceCount("rocstories")));
            Assert.That(RocStories.LoadFile(Path.Combine(DataRoot, RocStories.FileName)), Has.Count.EqualTo(1871).And.Count.EqualTo(ReferenceCount("rocstories_rows")));
            Assert.That(Gsm8k.Load(DataRoot), Has.Count.EqualTo(1319).And.Count.EqualTo(ReferenceCount("gsm8k")));
        });
    }

    /// <summary>Every example of every task, through the digest the Python reference computed over all of them.</summary>
    [Test]
    public void EveryExampleMatchesTheReferenceDigest()
    {
        static string Choice(MultipleChoiceExample e) => string.Join('\u001D', e.Choices);
        var digests = Reference.Value.GetProperty("digests");
        Assert.Multiple(() =>
        {
            Assert.That(Digest(Lambada.Load(DataRoot), e => [e.Text, e.Prefix, e.Target]), Is.EqualTo(digests.GetProperty("lambada").GetString()));
            Assert.That(Digest(HellaSwagTasks.Value, e => [e.Context, Choice(e), $"{e.Gold}"]), Is.EqualTo(digests.GetProperty("hellaswag").GetString()));
            Assert.That(Digest(Piqa.Load(DataRoot), e => [e.Context, Choice(e), $"{e.Gold}"]), Is.EqualTo(digests.GetProperty("piqa").GetString()));
            Assert.That(Digest(Siqa.Load(DataRoot), e => [e.Context, Choice(e), $"{e.Gold}"]), Is.EqualTo(digests.GetProperty("siqa").GetString()));
            Assert.That(Digest(RocStories.Load(DataRoot), e => [e.Prefix, e.Middle, e.Suffix]), Is.EqualTo(digests.GetProperty("rocstories").GetString()));
            Assert.That(Digest(Gsm8k.Load(DataRoot), e => [e.Prompt, e.Answer]), Is.EqualTo(digests.GetProperty("gsm8k").GetString()));
        });
    }

    /// <summary>The reference's digest: fields joined by U+001F, examples by U+001E, SHA-256 of the UTF-8, in hex.</summary>
    private static string Digest<T>(IEnumerable<T> examples, Func<T, string[]> fields)
    {
        string text = string.Join('\u001E', examples.Select(e => string.Join('\u001F', fields(e))));
        return Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(text)));
    }

    [Test]
    public void LimitTakesTheFirstExamples()
    {
        var all = Lambada.Load(DataRoot);
        Assert.That(Lambada.Load(DataRoot, 3), Is.EqualTo(all.Take(3)));
        Assert.That(Lambada.Load(DataRoot, 0), Is.Empty);
        Assert.That(Gsm8k.Load(DataRoot, 10_000), Has.Count.EqualTo(1319));
        Assert.That(RocStories.Load(DataRoot, 5000), Has.Count.EqualTo(1000), "the task is the first 1000 stories whatever the limit");
        Assert.That(RocStories.Load(DataRoot, 7), Has.Count.EqualTo(7));
        Assert.Throws<ArgumentOutOfRangeException>(() => Piqa.Load(DataRoot, -1));
    }

    [Test]
    public void LambadaMatchesTheReference()
    {
        var examples = Lambada.Load(DataRoot);
        int i = 0;
        foreach (var expected in ReferenceExamples("lambada"))
        {
            Assert.That(examples[i], Is.EqualTo(new LambadaExample(
                expected.GetProperty("text").GetString()!, expected.GetProperty("prefix").GetString()!, expected.GetProperty("target").GetString()!)));
            i++;
        }
        Assert.That(i, Is.EqualTo(5));
        Assert.That(examples[0].Target, Is.EqualTo("signs"));
        Assert.That(examples.All(e => e.Text == e.Prefix + " " + e.Target), "the file has single spaces only, so passage = prefix + space + target");
    }

    [Test]
    public void HellaSwagMatchesTheReference()
    {
        var tasks = HellaSwagTasks.Value;
        int compared = 0;
        foreach (var expected in ReferenceExamples("hellaswag"))
        {
            int index = expected.GetProperty("index").GetInt32();
            AssertSame(tasks[index], expected, $"task {index}");
            compared++;
        }
        Assert.That(compared, Is.GreaterThan(40), "the first tasks, the first WikiHow tasks and every task with brackets or a double space");
    }

    [Test]
    public void HellaSwagKnownExamples()
    {
        var tasks = HellaSwagTasks.Value;
        Assert.Multiple(() =>
        {
            // ActivityNet: ctx_b "he" capitalised as the paper's ctx_b.capitalize() makes it; endings have no leading space.
            Assert.That(tasks[0].Context, Is.EqualTo("Roof shingle removal: A man is sitting on a roof. He"));
            Assert.That(tasks[0].Choices, Is.EqualTo(new[] { "is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.", "starts pulling up roofing on a roof." }));
            Assert.That(tasks[0].Gold, Is.EqualTo(3));
            Assert.That(tasks[1].Context, Does.EndWith("grabs the pole. The lady"));
            Assert.That(tasks[2].Context, Does.EndWith("in the background. The child and a different man"));
            // WikiHow: ends with "." (ctx_b is empty), left as the file has it.
            Assert.That(tasks[3243].Context, Does.StartWith("Personal Care and Style: How to become a fashion consultant. Obtain your high school diploma or ged.")
                .And.EndWith("take art, design, and sewing to familiarize yourself with foundational concepts in fashion."));
            // A bracket span the file kept is dropped, and the double space it leaves made single.
            var kiddio = tasks.Single(t => t.Context.Contains("Visit a site like", StringComparison.Ordinal));
            Assert.That(kiddio.Context, Does.Contain("to do.. Visit a site like to find loads of creative activities"));
            // The one double space in the file has no bracket span near it and is kept.
            Assert.That(tasks[4121].Choices[1], Does.Contain("going to bed.  Do not be embarrassed"));
        });
        var spans = new Regex(@"\[[^\]]*\]");
        Assert.That(tasks.SelectMany(t => t.Choices.Append(t.Context)).Where(s => spans.IsMatch(s)), Is.Empty, "no [...] span is left");
    }

    [Test]
    public void HellaSwagFileNeedsNoTrimOrTitleStep()
    {
        // Why the loader skips those two steps of the paper's preprocess: the file's writer already did them.
        var lines = File.ReadAllLines(Path.Combine(DataRoot, HellaSwag.FileName));
        Assert.That(lines.Where(l => l != l.Trim()), Is.Empty);
        Assert.That(lines.Where(l => l.Contains("[title]", StringComparison.Ordinal)), Is.Empty);
        Assert.That(lines.Where((l, i) => i % 6 == 0 && !l.EndsWith('.')).Count(), Is.EqualTo(3243), "the ActivityNet contexts, which end with ctx_b");
    }

    [TestCase("Label: A man runs. the man", "Label: A man runs. The man")]
    [TestCase("Label: A man runs. then HE", "Label: A man runs. Then he")]
    [TestCase("Label: he", "Label: He")]
    [TestCase("Label: How to do it. Step one.", "Label: How to do it. Step one.")]
    [TestCase("Label: A man runs. \" power dribble", "Label: A man runs. \" power dribble")]
    public void HellaSwagCapitalizesTheUnfinishedSentence(string context, string expected) =>
        Assert.That(HellaSwag.CapitalizeUnfinishedSentence(context), Is.EqualTo(expected));

    [TestCase("A [style a pixie cut | pixie cut] can help.", "A can help.")]
    [TestCase("go to view] character encoding] auto-detect.", "go to view] character encoding] auto-detect.")]
    [TestCase("a [x] [y] b", "a  b")]
    [TestCase("[ coli coli is a type", "[ coli coli is a type")]
    [TestCase("ends with [a span]", "ends with ")]
    [TestCase("keeps  double spaces without spans", "keeps  double spaces without spans")]
    public void HellaSwagRemovesBracketSpans(string text, string expected) =>
        Assert.That(HellaSwag.RemoveBracketArtifacts(text), Is.EqualTo(expected));

    [Test]
    public void PiqaAndSiqaMatchTheReference()
    {
        var piqa = Piqa.Load(DataRoot);
        var siqa = Siqa.Load(DataRoot);
        int i = 0;
        foreach (var expected in ReferenceExamples("piqa")) AssertSame(piqa[i], expected, $"piqa {i++}");
        i = 0;
        foreach (var expected in ReferenceExamples("siqa")) AssertSame(siqa[i], expected, $"siqa {i++}");
        Assert.That(piqa[0].Context, Is.EqualTo("Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer: "));
        Assert.That(piqa[0].Choices[0], Does.StartWith(" Provide the guinea pig"));
        Assert.That(piqa[1].Choices, Is.EqualTo(new[] { " replace drawer with bobby pin ", " finish, woodgrain with  bobby pin " }), "solutions are kept verbatim");
        Assert.That(siqa[0].Context, Is.EqualTo("Question: Tracy didn't go home that evening and resisted Riley's attacks. What does Tracy need to do before this?\nAnswer: "));
        Assert.That(siqa[0].Choices, Is.EqualTo(new[] { "make a new plan", "Go home and see Riley", "Find somewhere to go" }));
        Assert.That(siqa[0].Gold, Is.EqualTo(2), "label 3 is 1-based");
    }

    [Test]
    public void RocStoriesAndGsm8kMatchTheReference()
    {
        var stories = RocStories.Load(DataRoot);
        int i = 0;
        foreach (var expected in ReferenceExamples("rocstories"))
        {
            Assert.That(stories[i++], Is.EqualTo(new InfillExample(
                expected.GetProperty("prefix").GetString()!, expected.GetProperty("middle").GetString()!, expected.GetProperty("suffix").GetString()!)));
        }
        Assert.That(stories[0], Is.EqualTo(new InfillExample(
            "Rick grew up in a troubled household. He never found good support in family, and turned to gangs.",
            "It wasn't long before Rick got shot in a robbery.",
            "The incident caused him to turn a new leaf. He is happy now.")), "a quoted field with a comma; ending 1");
        Assert.That(stories[2].Suffix, Is.EqualTo("She didn't like how different everything was. Sarah decided that she preferred her home over Europe."),
            "AnswerRightEnding 2 picks the second ending");

        var problems = Gsm8k.Load(DataRoot);
        i = 0;
        foreach (var expected in ReferenceExamples("gsm8k"))
            Assert.That(problems[i++], Is.EqualTo(new GsmExample(expected.GetProperty("prompt").GetString()!, expected.GetProperty("answer").GetString()!)));
        Assert.That(problems[1].Answer, Is.EqualTo("<<2/2=1>> <<2+1=3>> #### 3"));
        Assert.That(problems.All(p => Gsm8k.FinalAnswer(p.Answer) is { Length: > 0 }));
    }

    [Test]
    public void PythonWhitespaceIsPythonsIsSpace()
    {
        var expected = Reference.Value.GetProperty("python_whitespace").EnumerateArray().Select(e => e.GetInt32()).ToHashSet();
        var actual = Enumerable.Range(0, 0x10000).Where(c => PythonText.IsSpace((char)c)).ToHashSet();
        Assert.That(actual, Is.EquivalentTo(expected));
        Assert.That(PythonText.Split("  a\u001Cb\u00A0c\u2003 d\u200Be "), Is.EqualTo(new[] { "a", "b", "c", "d\u200Be" }));
        Assert.That(PythonText.Strip("\u001F\u3000 x y \u0085"), Is.EqualTo("x y"));
    }

    [Test]
    public void TheRegistryDescribesEveryTask()
    {
        Assert.That(EvalTasks.Names, Is.EqualTo(new[] { "lambada", "hellaswag", "piqa", "siqa", "rocstories", "gsm8k" }));
        foreach (var task in EvalTasks.All)
            foreach (var file in task.Files)
                Assert.That(File.Exists(Path.Combine(DataRoot, file)), $"{task.Name}: {file}");
        var hellaswag = EvalTasks.Get("HellaSwag");
        Assert.That((hellaswag.Kind, hellaswag.Choices, hellaswag.ContextTokens, hellaswag.TargetTokens),
            Is.EqualTo((EvalTaskKind.MultipleChoice, 4, SpecialTokens.Default, SpecialTokens.Default)));
        Assert.That((EvalTasks.Get("piqa").Choices, EvalTasks.Get("piqa").TargetTokens), Is.EqualTo((2, SpecialTokens.Default)));
        Assert.That((EvalTasks.Get("siqa").Choices, EvalTasks.Get("siqa").TargetTokens), Is.EqualTo((3, SpecialTokens.None)));
        Assert.That(EvalTasks.Get("rocstories").Kind, Is.EqualTo(EvalTaskKind.Infill));
    }

    [TestCase("winogrande")]
    [TestCase("TriviaQA")]
    [TestCase("squad")]
    public void TasksWithoutOfflineDataAreRefusedClearly(string name)
    {
        var e = Assert.Throws<DiffuException>(() => EvalTasks.Get(name))!;
        Assert.That(e.Message, Does.StartWith(name.ToLowerInvariant() + ": ").And.Contain("not available offline"));
    }

    [Test]
    public void AnUnknownTaskListsTheKnownOnes()
    {
        var e = Assert.Throws<DiffuException>(() => EvalTasks.Get("mmlu"))!;
        Assert.That(e.Message, Does.Contain("'mmlu'").And.Contain("lambada, hellaswag, piqa, siqa, rocstories, gsm8k"));
    }

    private static void AssertSame(MultipleChoiceExample actual, JsonElement expected, string what)
    {
        Assert.That(actual.Context, Is.EqualTo(expected.GetProperty("context").GetString()), what);
        Assert.That(actual.Choices, Is.EqualTo(expected.GetProperty("choices").EnumerateArray().Select(c => c.GetString())), what);
        Assert.That(actual.Gold, Is.EqualTo(expected.GetProperty("gold").GetInt32()), what);
    }
}
