using System.Text.Json.Nodes;
using DiffuSharp.IO;
using DiffuSharp.Models;
using DiffuSharp.Tests.Models;

namespace DiffuSharp.Tests.CliTests;

/// <summary>
/// `diffu generate`: sizes checked against the model's positions and memory before anything large is
/// allocated, arguments checked before anything is printed, end-of-text shown or cut, batch rows labelled.
/// </summary>
public sealed class GenerateCommandTests
{
    string temp = null!;

    [SetUp]
    public void SetUp() => temp = Directory.CreateTempSubdirectory("diffu-generate-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(temp, recursive: true);

    static string Fixture => Gpt2FixtureTests.FixtureDir;
    static string Gpt2Tokenizer => Path.Combine(TestUtil.SharedData, "tokenizers", "gpt2");

    static (int Code, string Out, string Err) Run(params string[] args) => CliRun.Run(args);

    static readonly string[] Diffusion = ["generate", "--model", Fixture, "--tokenizer", Gpt2Tokenizer, "--device", "cpu", "--mask-token", "3", "--steps", "2"];
    static readonly string[] Ar = ["generate", "--model", Fixture, "--tokenizer", Gpt2Tokenizer, "--device", "cpu", "--ar", "--prompt", "Once upon"];

    static void AssertRefused((int Code, string Out, string Err) run, params string[] expected)
    {
        Assert.That(run.Code, Is.EqualTo(2), run.Err);
        Assert.That(run.Out, Is.Empty, "nothing is printed before the arguments are checked");
        Assert.That(run.Err.TrimEnd().Split('\n'), Has.Length.EqualTo(1), run.Err);
        foreach (var text in expected) Assert.That(run.Err, Does.Contain(text));
    }

    /// <summary>The fixture has 64 positions: the start token is counted, and the message says so and what fits.</summary>
    [Test]
    public void LengthsPastThePositionsNameTheStartTokenAndWhatFits()
    {
        AssertRefused(Run([.. Diffusion, "--length", "64"]), "the start token (1) + --length 64 = 65 exceeds the model's 64 positions", "at most --length 63 fits");
        AssertRefused(Run([.. Diffusion, "--length", "2147483647"]), "--length 2147483647 = 2147483648 exceeds");
        var fits = Run([.. Diffusion, "--length", "63"]);
        Assert.That(fits.Code, Is.EqualTo(0), fits.Err);
        int prompt = DiffuSharp.Text.Gpt2Tokenizer.FromDirectory(Gpt2Tokenizer, 512)!.Encode("Once upon").Count;
        AssertRefused(Run([.. Diffusion, "--prompt", "Once upon", "--length", "63"]), $"the start token (1) + prompt ({prompt} tokens) + --length 63",
            $"at most --length {63 - prompt} fits");
    }

    /// <summary>A batch that cannot fit is refused by the memory estimate, before any row is built.</summary>
    [TestCase("2147483647")]
    [TestCase("100000000")]
    public void HugeBatchesAreRefusedBeforeAllocating(string batch) =>
        AssertRefused(Run([.. Diffusion, "--prompt", "a", "--prompt", "b", "--length", "8", "--batch", batch]), "needs about", "available");

    [Test]
    public void ArChecksEverythingBeforePrintingThePrompt()
    {
        int prompt = DiffuSharp.Text.Gpt2Tokenizer.FromDirectory(Gpt2Tokenizer, 512)!.Encode("Once upon").Count;
        AssertRefused(Run([.. Ar, "--max-new", "2147483647"]), $"prompt ({prompt} tokens) + --max-new 2147483647 = {2147483647L + prompt} exceeds the model's 64 positions",
            $"at most --max-new {64 - prompt} fits");
        AssertRefused(Run([.. Ar, "--max-new", "100"]), "exceeds the model's 64 positions");
        AssertRefused(Run([.. Ar, "--prompt", "two prompts"]), "--ar decodes one --prompt");
        AssertRefused(Run("generate", "--model", Fixture, "--tokenizer", Gpt2Tokenizer, "--device", "cpu", "--ar", "--prompt", ""), "empty");
        var fits = Run([.. Ar, "--max-new", (64 - prompt).ToString(), "--temperature", "0"]);
        Assert.That(fits.Code, Is.EqualTo(0), fits.Err);
    }

    /// <summary>The fixture names no mask token and 10541 is past its 512 tokens: the message says what to do.</summary>
    [Test]
    public void AModelWithoutAMaskTokenSuggestsTheOption() =>
        AssertRefused(Run("generate", "--model", Fixture, "--tokenizer", Gpt2Tokenizer, "--device", "cpu", "--length", "4"),
            "10541", "512", "--mask-token ID");

    [Test]
    public void BatchedSamplesSayWhichPromptTheyContinue()
    {
        var (code, output, err) = Run([.. Diffusion, "--prompt", "Once upon", "--prompt", "The little dog ran away", "--length", "3", "--batch", "2"]);
        Assert.That(code, Is.EqualTo(0), err);
        var labels = output.Split('\n').Where(l => l.StartsWith("--- ")).ToArray();
        Assert.That(labels, Is.EqualTo(new[]
        {
            "--- sample 1 (prompt 1, \"Once upon\")", "--- sample 2 (prompt 2, \"The little dog ran a…\")",
            "--- sample 3 (prompt 1, \"Once upon\")", "--- sample 4 (prompt 2, \"The little dog ran a…\")",
        }));
    }

    /// <summary>
    /// A GPT-2 with the full vocabulary whose every prediction is end-of-text: the blocks are zero, ln_f maps
    /// every position to e0, and only the end-of-text embedding has a component along e0.
    /// </summary>
    string EndOfTextModel()
    {
        const int eos = 50256, channels = 8;
        var config = new Gpt2Config(50257, 32, channels, 1, 2);
        string dir = Directory.CreateDirectory(Path.Combine(temp, "eos-model")).FullName;
        var tensors = Gpt2Weights.Shapes(config).Select(t =>
        {
            var values = new float[t.Shape.Aggregate(1, (a, b) => a * b)];
            if (t.Name == "transformer.wte.weight") values[eos * channels] = 1;
            if (t.Name == "transformer.ln_f.bias") values[0] = 1;
            return SafeTensorsEntry.FromFloat32(t.Name, t.Shape, values);
        });
        SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"), tensors);
        File.WriteAllText(Path.Combine(dir, "config.json"), new JsonObject
        {
            ["model_type"] = "gpt2", ["vocab_size"] = 50257, ["n_positions"] = 32, ["n_embd"] = channels, ["n_layer"] = 1, ["n_head"] = 2,
        }.ToJsonString());
        return dir;
    }

    const string Marker = "⏎ <|endoftext|>";

    [Test]
    public void EndOfTextIsMarkedOrCutWithStopAtEos()
    {
        string model = EndOfTextModel();
        string[] common = ["generate", "--model", model, "--tokenizer", Gpt2Tokenizer, "--device", "cpu", "--mask-token", "0", "--temperature", "0", "--steps", "2"];

        var (code, output, err) = Run([.. common, "--prompt", "Hello", "--length", "3"]);
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(output.TrimEnd('\n'), Is.EqualTo($"Hello\n{Marker}\n{Marker}\n{Marker}"));
        (code, output, err) = Run([.. common, "--prompt", "Hello", "--length", "3", "--stop-at-eos"]);
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(output, Is.EqualTo("Hello\n"));

        (code, output, err) = Run([.. common, "--infill", "Hello<mask:2> world", "--stop-at-eos"]);
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(output, Is.EqualTo("Hello world\n"), "the gap ends at its end-of-text, the suffix is kept");
        (code, output, _) = Run([.. common, "--infill", "Hello<mask:2> world"]);
        Assert.That(output, Is.EqualTo($"Hello\n{Marker}\n{Marker}\n world\n"));

        (code, output, err) = Run("generate", "--model", model, "--tokenizer", Gpt2Tokenizer, "--device", "cpu", "--ar", "--prompt", "Hello", "--max-new", "4", "--temperature", "0");
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(output, Is.EqualTo($"Hello\n{Marker}\n"), "AR decoding stops at end-of-text and shows it");
        (code, output, _) = Run("generate", "--model", model, "--tokenizer", Gpt2Tokenizer, "--device", "cpu", "--ar", "--prompt", "Hello", "--max-new", "4", "--temperature", "0", "--stop-at-eos");
        Assert.That(output, Is.EqualTo("Hello\n"));
    }

    /// <summary>The end-of-text model commits end-of-text everywhere: with --block and --stop-at-eos the later blocks are skipped.</summary>
    [Test]
    public void StopAtEosSkipsTheBlocksAfterAnEndOfTextAndTheFastModesAgree()
    {
        string model = EndOfTextModel();
        string[] common = ["generate", "--model", model, "--tokenizer", Gpt2Tokenizer, "--device", "cpu", "--mask-token", "0", "--temperature", "0",
            "--prompt", "Hello", "--length", "8", "--block", "2", "--steps", "8"];
        var (code, output, err) = Run(common);
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(err, Does.Contain(": 8 steps of"));
        (code, output, err) = Run([.. common, "--stop-at-eos"]);
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(output, Is.EqualTo("Hello\n"));
        Assert.That(err, Does.Contain(": 2 steps of"), "the first block's two steps, no more");
        foreach (string cache in new[] { "prefix", "dual" })
        {
            (code, output, err) = Run([.. common, "--cache", cache, "--threshold", "0.5"]);
            Assert.That(code, Is.EqualTo(0), err);
            Assert.That(output.TrimEnd('\n'), Is.EqualTo("Hello" + string.Concat(Enumerable.Repeat($"\n{Marker}", 8))), cache);
            Assert.That(err, Does.Contain(": 4 steps of"), $"{cache}: one pass per block, every slot above the threshold");
        }
    }
}
