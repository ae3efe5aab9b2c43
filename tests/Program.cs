using System.Security;
using System.Text.RegularExpressions;
using NUnit;
using NUnit.Framework.Api;
using NUnit.Framework.Interfaces;
using NUnit.Framework.Internal;

namespace DiffuSharp.Tests;

/// <summary>
/// Runs this assembly's tests as a plain program, for machines with the .NET runtime but no SDK (the GPU
/// bundle, tools/gpu): <c>dotnet DiffuSharp.Tests.dll [--where REGEX] [--list] [--seed N] [--verbose]</c>.
/// <c>dotnet test</c> never calls this Main: vstest loads the assembly into its own host.
/// Exit code: 0 when at least one test ran and none failed, 1 otherwise, 2 for bad arguments.
/// </summary>
public static class Program
{
    const string Usage = "usage: DiffuSharp.Tests [--where REGEX] [--list] [--seed N] [--verbose]\n" +
        "  --where REGEX  only tests whose full name matches the .NET regex, e.g. '(?i)cuda'\n" +
        "  --list         print the selected tests' full names instead of running them\n" +
        "  --seed N       seed of TestContext.Random (each run draws one and prints it, so a failure can be replayed)\n" +
        "  --verbose      one line for every finished test, not only failed and skipped ones";

    public static int Main(string[] args)
    {
        string? where = null;
        bool list = false, verbose = false;
        int seed = Random.Shared.Next();
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--where" when i + 1 < args.Length && IsRegex(args[i + 1]):
                    where = args[++i];
                    break;
                case "--seed" when i + 1 < args.Length && int.TryParse(args[i + 1], out seed):
                    i++;
                    break;
                case "--list":
                    list = true;
                    break;
                case "--verbose":
                    verbose = true;
                    break;
                case "-h" or "--help":
                    Console.WriteLine(Usage);
                    return 0;
                default:
                    Console.Error.WriteLine($"bad argument '{args[i]}' (or a missing or invalid value after it)\n{Usage}");
                    return 2;
            }
        }

        // A full-name filter as NUnit's own XML filter language spells it; no filter runs everything.
        var filter = where is null
            ? TestFilter.Empty
            : TestFilter.FromXml($"<filter><test re=\"1\">{SecurityElement.Escape(where)}</test></filter>");
        var runner = new NUnitTestAssemblyRunner(new DefaultTestAssemblyBuilder());
        runner.Load(typeof(Program).Assembly, new Dictionary<string, object> { [FrameworkPackageSettings.RandomSeed] = seed });

        if (list)
        {
            int count = 0;
            foreach (var test in Leaves(runner.ExploreTests(filter)))
            {
                Console.WriteLine(test.FullName);
                count++;
            }
            Console.WriteLine($"{count} tests");
            return 0;
        }

        // NUnit redirects Console.Out into each test's captured output while tests run, so report
        // through a writer of our own on the real standard output.
        using var output = new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true };
        output.WriteLine($"DiffuSharp.Tests: random seed {seed}" + (where is null ? "" : $", tests matching /{where}/"));
        var reporter = new TestReporter(output, verbose);
        runner.Run(reporter, filter);
        output.WriteLine($"{reporter.Passed} passed, {reporter.Failed} failed, {reporter.Skipped} skipped");
        return reporter.Failed == 0 && reporter.Passed > 0 ? 0 : 1;
    }

    static bool IsRegex(string pattern)
    {
        try
        {
            _ = new Regex(pattern);
            return true;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }

    static IEnumerable<ITest> Leaves(ITest test) =>
        test.IsSuite ? test.Tests.SelectMany(Leaves) : [test];
}

/// <summary>Counts finished test cases and prints the ones that need a look: failures in full, skips in one line.</summary>
sealed class TestReporter(TextWriter output, bool verbose) : ITestListener
{
    readonly Lock gate = new();

    public int Passed { get; private set; }
    public int Failed { get; private set; }
    public int Skipped { get; private set; }

    public void TestStarted(ITest test) { }

    public void TestFinished(ITestResult result)
    {
        var state = result.ResultState;
        lock (gate)
        {
            if (result.Test.IsSuite)
            {
                // A fixture's own failure (its one-time set-up already fails each of its tests) shows
                // only as the suite's result when it comes from the one-time tear-down.
                if (state.Status == TestStatus.Failed && state.Site == FailureSite.TearDown)
                    Fail(result);
                return;
            }
            switch (state.Status)
            {
                case TestStatus.Passed:
                    Passed++;
                    if (verbose) output.WriteLine($"passed   {result.FullName} ({result.Duration:F2} s)");
                    break;
                case TestStatus.Failed:
                    Fail(result);
                    break;
                default:
                    // Ignored, explicit, inconclusive and warning results: counted as skipped, as the
                    // vstest adapter counts them, so both runners report the same numbers.
                    Skipped++;
                    output.WriteLine($"skipped  {result.FullName}: {Label(state)}: {OneLine(result.Message)}");
                    break;
            }
        }
    }

    void Fail(ITestResult result)
    {
        Failed++;
        output.WriteLine($"FAILED   {result.FullName} ({Label(result.ResultState)}, {result.Duration:F2} s)");
        output.WriteLine(Indent(result.Message));
        if (!string.IsNullOrWhiteSpace(result.StackTrace)) output.WriteLine(Indent(result.StackTrace));
    }

    static string Label(ResultState state) => string.IsNullOrEmpty(state.Label) ? state.Status.ToString() : state.Label;

    static string OneLine(string? text) => string.Join(" ", (text ?? "").Split('\n', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries));

    static string Indent(string? text) =>
        string.Join("\n", (text ?? "").TrimEnd().Split('\n').Select(line => "    " + line.TrimEnd('\r')));

    public void TestOutput(TestOutput output) { }

    public void SendMessage(TestMessage message) { }
}
