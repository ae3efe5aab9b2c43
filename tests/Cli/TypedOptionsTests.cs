using System.CommandLine;
using DiffuSharp.Cli;
using DiffuSharp.Tests.Models;

namespace DiffuSharp.Tests.CliTests;

/// <summary>Numeric options say in words what is wrong with a value, on one line, and refuse NaN, infinities and out-of-range values.</summary>
public sealed class TypedOptionsTests
{
    static readonly Option<int> Steps = TypedOptions.Integer("--steps", "steps", 64, min: 1);
    static readonly Option<int> Block = TypedOptions.Integer("--block", "block", 0, min: 0, max: 1024);
    static readonly Option<long?> Docs = TypedOptions.OptionalInteger<long>("--docs", "documents", min: 1);
    static readonly Option<ulong> Seed = TypedOptions.Integer("--seed", "seed", 0UL, min: 0UL);
    static readonly Option<double> Budget = TypedOptions.Double("--budget", "seconds", 2.0, min: 0, minExclusive: true);
    static readonly Option<float> TopP = TypedOptions.Float("--top-p", "mass", 1f, min: 0, max: 1, minExclusive: true);
    static readonly Option<float> Temperature = TypedOptions.Float("--temperature", "temperature", 1f, min: 0);

    static ParseResult Parse(params string[] args) => new RootCommand { Steps, Block, Docs, Seed, Budget, TopP, Temperature }.Parse(args);

    [Test]
    public void DefaultsAndGoodValues()
    {
        var parsed = Parse();
        Assert.That(parsed.Errors, Is.Empty);
        Assert.That((parsed.GetValue(Steps), parsed.GetValue(Block), parsed.GetValue(Docs), parsed.GetValue(Seed)), Is.EqualTo((64, 0, (long?)null, 0UL)));
        Assert.That((parsed.GetValue(Budget), parsed.GetValue(TopP), parsed.GetValue(Temperature)), Is.EqualTo((2.0, 1f, 1f)));
        parsed = Parse("--steps", "3", "--block", "1024", "--docs", "9223372036854775807", "--seed", "18446744073709551615",
            "--budget", "1e-3", "--top-p", "0.5", "--temperature", "0");
        Assert.That(parsed.Errors, Is.Empty);
        Assert.That((parsed.GetValue(Steps), parsed.GetValue(Block), parsed.GetValue(Docs), parsed.GetValue(Seed)),
            Is.EqualTo((3, 1024, (long?)long.MaxValue, ulong.MaxValue)));
        Assert.That((parsed.GetValue(Budget), parsed.GetValue(TopP), parsed.GetValue(Temperature)), Is.EqualTo((1e-3, 0.5f, 0f)));
    }

    [TestCase("--steps", "abc", "--steps: 'abc' is not an integer")]
    [TestCase("--steps", "", "--steps: an empty value is not an integer")]
    [TestCase("--steps", "2.5", "--steps: '2.5' is not an integer")]
    [TestCase("--steps", "1e39", "--steps: '1e39' is not an integer")]
    [TestCase("--steps", "0", "--steps: 0 is out of range: must be at least 1")]
    [TestCase("--steps", "-1", "--steps: -1 is out of range: must be at least 1")]
    [TestCase("--steps", "2147483648", "--steps: 2147483648 is out of range: must be at least 1")]
    [TestCase("--block", "1025", "--block: 1025 is out of range: must be from 0 to 1024")]
    [TestCase("--docs", "9223372036854775808", "--docs: 9223372036854775808 is out of range: must be at least 1")]
    [TestCase("--seed", "-1", "--seed: -1 is out of range: must be at least 0")]
    [TestCase("--budget", "NaN", "--budget: 'NaN' is not a number")]
    [TestCase("--budget", "fast", "--budget: 'fast' is not a number")]
    [TestCase("--budget", "0", "--budget: 0 is out of range: must be greater than 0 and at most 1.8e308")]
    [TestCase("--budget", "Infinity", "--budget: Infinity is out of range: must be greater than 0 and at most 1.8e308")]
    [TestCase("--budget", "-Infinity", "--budget: -Infinity is out of range: must be greater than 0 and at most 1.8e308")]
    [TestCase("--top-p", "0", "--top-p: 0 is out of range: must be greater than 0 and at most 1")]
    [TestCase("--top-p", "1.5", "--top-p: 1.5 is out of range: must be greater than 0 and at most 1")]
    [TestCase("--temperature", "1e39", "--temperature: 1e39 is out of range: must be at least 0 and at most 3.4e38")]
    [TestCase("--temperature", "-0.5", "--temperature: -0.5 is out of range: must be at least 0 and at most 3.4e38")]
    public void BadValuesAreExplainedInWords(string option, string value, string message)
    {
        var parsed = Parse(option, value);
        Assert.That(parsed.Errors.Select(e => e.Message), Is.EqualTo(new[] { message }));
    }

    static (int Code, string Out, string Err) Run(params string[] args) => CliRun.Run(args);

    /// <summary>The commands use them: one line on stderr, the option and the problem in words, no CLR type names.</summary>
    [TestCase("--steps: 'abc' is not an integer", "generate", "--model", "{model}", "--steps", "abc")]
    [TestCase("--temperature: 1e39 is out of range", "generate", "--model", "{model}", "--temperature", "1e39")]
    [TestCase("--top-p: 'NaN' is not a number", "generate", "--model", "{model}", "--top-p", "NaN")]
    [TestCase("--seed: -1 is out of range", "generate", "--model", "{model}", "--seed", "-1")]
    [TestCase("--budget: Infinity is out of range", "bench", "--quick", "--suite", "norm", "--reference", "none", "--device", "cpu", "--budget", "Infinity")]
    [TestCase("--repeat: 'many' is not an integer", "bench", "--quick", "--suite", "norm", "--reference", "none", "--device", "cpu", "--repeat", "many")]
    [TestCase("--max-docs: 9223372036854775808 is out of range", "tokenize", "--out", "o.tok", "--max-docs", "9223372036854775808", "in.txt")]
    public void CommandsReportBadNumbersOnOneLine(string message, params string[] args)
    {
        var (code, output, err) = Run(args.Select(a => a.Replace("{model}", Gpt2FixtureTests.FixtureDir)).ToArray());
        Assert.That(code, Is.EqualTo(2), err);
        Assert.That(output, Is.Empty);
        Assert.That(err.TrimEnd().Split('\n'), Has.Length.EqualTo(1), err);
        Assert.That(err, Does.StartWith("error: ").And.Contain(message).And.Not.Contain("System."));
    }
}
