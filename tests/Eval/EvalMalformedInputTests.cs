using DiffuSharp.Eval;

namespace DiffuSharp.Tests.Eval;

/// <summary>
/// Bad evaluation data: every loader reports a missing file, and a bad line or row, as a
/// <see cref="DiffuException"/> whose message names the file and the line (or the item, for the one-line
/// GSM8K JSON), so the CLI's one-line error points at the problem.
/// </summary>
public sealed class EvalMalformedInputTests
{
    private string _dir = "";

    [SetUp]
    public void SetUp()
    {
        _dir = Path.Combine(Path.GetTempPath(), "diffusharp-eval-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
    }

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private string Write(string name, string text)
    {
        string path = Path.Combine(_dir, name);
        File.WriteAllText(path, text);
        return path;
    }

    private static void Fails(TestDelegate load, string path, string where, string problem)
    {
        var e = Assert.Throws<DiffuException>(load)!;
        Assert.That(e.Message, Does.StartWith($"{path}: {where}").And.Contain(problem), e.Message);
    }

    [Test]
    public void MissingFilesAreNamed()
    {
        string missing = Path.Combine(_dir, "missing.txt");
        string labels = Write("labels.lst", "0\n");
        string questions = Write("q.jsonl", "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\"}\n");
        Fails(() => Lambada.LoadFile(missing), missing, "", "file not found");
        Fails(() => HellaSwag.LoadFile(missing), missing, "", "file not found");
        Fails(() => Piqa.LoadFiles(missing, labels), missing, "", "file not found");
        Fails(() => Piqa.LoadFiles(questions, missing), missing, "", "file not found");
        Fails(() => Siqa.LoadFiles(missing, labels), missing, "", "file not found");
        Fails(() => RocStories.LoadFile(missing), missing, "", "file not found");
        Fails(() => Gsm8k.LoadFile(missing), missing, "", "file not found");
        // Load(dataRoot) names the full path of the standard file it looked for.
        Fails(() => Siqa.Load(_dir), Path.Combine(_dir, Siqa.QuestionsFile), "", "file not found");
        Fails(() => Gsm8k.Load(_dir), Path.Combine(_dir, Gsm8k.FileName), "", "file not found");
        Fails(() => Lambada.LoadFile(_dir), _dir, "", "is a directory");
    }

    [Test]
    public void LambadaSkipsBlankLinesAndRefusesOneWordPassages()
    {
        string path = Write("passages.txt", "  the cat sat on the mat \n\n \t\nhello world\r\n");
        Assert.That(Lambada.LoadFile(path), Is.EqualTo(new[]
        {
            new LambadaExample("the cat sat on the mat", "the cat sat on the", "mat"),
            new LambadaExample("hello world", "hello", "world"),
        }));
        Fails(() => Lambada.LoadFile(Write("short.txt", "one two three\n\n  lonely  \nfour five\n")), Path.Combine(_dir, "short.txt"), "line 3: ", "'lonely'");
    }

    [Test]
    public void InvalidUtf8IsReportedAtItsLine()
    {
        string path = Path.Combine(_dir, "bad.txt");
        File.WriteAllBytes(path, [.. "good line here\nbad "u8, 0xC3, 0x28, .. " line\n"u8]);
        Fails(() => Lambada.LoadFile(path), path, "line 2: ", "not valid UTF-8");
    }

    [Test]
    public void HellaSwagBadRows()
    {
        const string task = "Label: A man runs. he\n1\nruns.\njumps.\nsits.\nfalls.\n";
        Fails(() => HellaSwag.LoadFile(Write("label.txt", task + task.Replace("\n1\n", "\n4\n"))), Path.Combine(_dir, "label.txt"), "line 8: ", "'4'");
        Fails(() => HellaSwag.LoadFile(Write("short.txt", task + "Label: more\n2\n")), Path.Combine(_dir, "short.txt"), "line 7: ", "cut short");
        Fails(() => HellaSwag.LoadFile(Write("blank.txt", task.Replace("sits.", ""))), Path.Combine(_dir, "blank.txt"), "line 5: ", "blank line");
        Assert.That(HellaSwag.LoadFile(Write("good.txt", task)).Single().Context, Is.EqualTo("Label: A man runs. He"));
    }

    [Test]
    public void PiqaBadRows()
    {
        string good = "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\"}\n";
        string labels = Write("labels.lst", "0\n1\n");
        string json = Write("json.jsonl", good + "{\"goal\": \"g\", \"sol1\": \"a\",\n");
        Fails(() => Piqa.LoadFiles(json, labels), json, "line 2: ", "invalid JSON");
        string field = Write("field.jsonl", good + "{\"goal\": \"g\", \"sol1\": \"a\"}\n");
        Fails(() => Piqa.LoadFiles(field, labels), field, "line 2: ", "missing field 'sol2'");
        string type = Write("type.jsonl", "{\"goal\": 3, \"sol1\": \"a\", \"sol2\": \"b\"}\n" + good);
        Fails(() => Piqa.LoadFiles(type, labels), type, "line 1: ", "'goal' must be a string");
        string questions = Write("q.jsonl", good + good);
        string badLabel = Write("bad.lst", "0\n2\n");
        Fails(() => Piqa.LoadFiles(questions, badLabel), badLabel, "line 2: ", "from 0 to 1");
        string fewer = Write("fewer.lst", "0\n");
        Fails(() => Piqa.LoadFiles(questions, fewer), fewer, "", "1 labels for the 2 questions");
        Assert.That(Piqa.LoadFiles(questions, labels).Select(e => e.Gold), Is.EqualTo(new[] { 0, 1 }));
    }

    [Test]
    public void SiqaRefusesLabelsThatDisagreeWithTheAnswers()
    {
        string questions = Write("dev.jsonl",
            "{\"context\": \"c\", \"question\": \"q?\", \"options\": [\"x\", \"y\", \"z\"], \"answer\": \"y\"}\n" +
            "{\"context\": \"c\", \"question\": \"q?\", \"options\": [\"x\", \"y\", \"z\"], \"answer\": \"z\"}\n");
        string agree = Write("agree.lst", "2\n3\n");
        Assert.That(Siqa.LoadFiles(questions, agree).Select(e => e.Gold), Is.EqualTo(new[] { 1, 2 }));
        string shifted = Write("shifted.lst", "2\n1\n");
        Fails(() => Siqa.LoadFiles(questions, shifted), shifted, "line 2: ", "label 1 picks \"x\" but line 2 of " + questions + " gives the answer \"z\"");
        string outOfRange = Write("range.lst", "2\n4\n");
        Fails(() => Siqa.LoadFiles(questions, outOfRange), outOfRange, "line 2: ", "from 1 to 3");
        string twoOptions = Write("two.jsonl", "{\"context\": \"c\", \"question\": \"q?\", \"options\": [\"x\", \"y\"], \"answer\": \"y\"}\n");
        Fails(() => Siqa.LoadFiles(twoOptions, Write("one.lst", "2\n")), twoOptions, "line 1: ", "'options' must be an array of 3 strings");
        string blank = Write("blank.jsonl", "\n");
        Fails(() => Siqa.LoadFiles(blank, Write("one2.lst", "1\n")), blank, "line 1: ", "blank line");
    }

    private const string RocHeader = "InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding\r\n";
    private const string RocRow = "id1,\"One, with a comma.\",Two.,Three.,Four.,Five a.,Five b.,2\r\n";

    [Test]
    public void RocStoriesBadRows()
    {
        string good = Write("good.csv", RocHeader + RocRow);
        Assert.That(RocStories.LoadFile(good).Single(), Is.EqualTo(new InfillExample("One, with a comma. Two.", "Three.", "Four. Five b.")));
        string fields = Write("fields.csv", RocHeader + RocRow + "id2,One.,Two.,Three.,Four.,Five a.,1\r\n");
        Fails(() => RocStories.LoadFile(fields), fields, "line 3: ", "malformed CSV");
        string ending = Write("ending.csv", RocHeader + RocRow + RocRow.Replace(",2\r\n", ",3\r\n"));
        Fails(() => RocStories.LoadFile(ending), ending, "line 3: ", "AnswerRightEnding must be 1 or 2, found '3'");
        string quote = Write("quote.csv", RocHeader + RocRow + "id3,\"One.\"x,Two.,Three.,Four.,Five a.,Five b.,1\r\n");
        Fails(() => RocStories.LoadFile(quote), quote, "line 3: ", "malformed CSV");
        string header = Write("header.csv", RocHeader.Replace("AnswerRightEnding", "Answer") + RocRow);
        Fails(() => RocStories.LoadFile(header), header, "line 1: ", "expected the header");
        string empty = Write("empty.csv", "");
        Fails(() => RocStories.LoadFile(empty), empty, "line 1: ", "expected the header");
    }

    [Test]
    public void Gsm8kBadItems()
    {
        string good = Write("good.json", "[{\"instruction\": \"q\", \"output\": \"<<1+1=2>> #### 2\"}]");
        Assert.That(Gsm8k.LoadFile(good).Single(), Is.EqualTo(new GsmExample("q", "<<1+1=2>> #### 2")));
        string notArray = Write("object.json", "{\"instruction\": \"q\"}");
        Fails(() => Gsm8k.LoadFile(notArray), notArray, "", "expected a JSON array");
        string missing = Write("missing.json", "[\n {\"instruction\": \"q\", \"output\": \"#### 1\"},\n {\"instruction\": \"q\"}\n]");
        Fails(() => Gsm8k.LoadFile(missing), missing, "item 2 (line 3): ", "field 'output' must be a string");
        string noAnswer = Write("noanswer.json", "[{\"instruction\": \"q\", \"output\": \"#### 1\"}, {\"instruction\": \"q\", \"output\": \"2\"}]");
        Fails(() => Gsm8k.LoadFile(noAnswer), noAnswer, "item 2 (line 1): ", "no final answer after '####'");
        string syntax = Write("syntax.json", "[\n {\"instruction\": \"q\", \"output\": \"#### 1\"},\n {\"instruction\": \"q\" \"output\": \"#### 2\"}\n]");
        Fails(() => Gsm8k.LoadFile(syntax), syntax, "line 3: ", "invalid JSON");
        string trailing = Write("trailing.json", "[{\"instruction\": \"q\", \"output\": \"#### 1\"}]\n]");
        Fails(() => Gsm8k.LoadFile(trailing), trailing, "line 2: ", "invalid JSON");
    }
}
