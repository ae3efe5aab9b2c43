using DiffuSharp.Diffusion;

namespace DiffuSharp.Tests.Diffusion;

/// <summary>Rows from text: lengths checked against the model's positions before anything is allocated, and the pieces a finished row is shown in.</summary>
public sealed class DenoisingPromptsTests
{
    const int Start = 0, Eos = 9;

    static DiffuSharp.Text.Gpt2Tokenizer Tokenizer => DiffuSharp.Text.Gpt2Tokenizer.FromDirectory(Path.Combine(TestUtil.SharedData, "tokenizers", "gpt2"))!;

    /// <summary>The message counts the start token and says what fits; a length near int.MaxValue does not overflow.</summary>
    [Test]
    public void RowsLongerThanThePositionsAreRefusedWithTheNumbers()
    {
        Assert.That(DenoisingPrompts.Unconditional(Start, 63, 64).Tokens, Has.Length.EqualTo(64));
        Assert.That(() => DenoisingPrompts.Unconditional(Start, 64, 64), Throws.InstanceOf<DiffuException>().With.Message.EqualTo(
            "the start token (1) + --length 64 = 65 exceeds the model's 64 positions; at most --length 63 fits"));
        Assert.That(() => DenoisingPrompts.Unconditional(Start, int.MaxValue, 64), Throws.InstanceOf<DiffuException>().With.Message.Contains(
            $"--length {int.MaxValue} = {int.MaxValue + 1L} exceeds"));
        Assert.That(() => DenoisingPrompts.Completion(Start, [5, 6, 7], int.MaxValue, 256), Throws.InstanceOf<DiffuException>().With.Message.EqualTo(
            $"the start token (1) + prompt (3 tokens) + --length {int.MaxValue} = {int.MaxValue + 4L} exceeds the model's 256 positions; at most --length 252 fits"));
        Assert.That(() => DenoisingPrompts.Completion(Start, Enumerable.Range(0, 70).ToArray(), 1, 64), Throws.InstanceOf<DiffuException>().With.Message.EqualTo(
            "the start token (1) + prompt (70 tokens) + --length 1 = 72 exceeds the model's 64 positions; the prompt leaves no room: shorten it"));
        var infill = Assert.Throws<DiffuException>(() => DenoisingPrompts.Infill(Start, "a <mask:100000> b <mask:100000>", Tokenizer, 1024));
        Assert.That(infill!.Message, Does.StartWith("the start token (1) + the infill text (").And.Contain(" tokens) + its <mask:N> slots (200000) = 2000")
            .And.EndWith(" exceeds the model's 1024 positions"));
    }

    [Test]
    public void WithoutStoppingEveryEndOfTextSplitsTheRow()
    {
        int[] tokens = [Start, 1, 2, Eos, 3, Eos, Eos];
        byte[] fixedMask = [1, 1, 0, 0, 0, 0, 0];
        Assert.That(DenoisingPrompts.Pieces(tokens, fixedMask, Eos, stopAtEndOfText: false),
            Is.EqualTo(new[] { new[] { Start, 1, 2 }, [3], [], [] }));
        Assert.That(DenoisingPrompts.Pieces(tokens, fixedMask, null, stopAtEndOfText: true), Is.EqualTo(new[] { tokens }), "no end-of-text token, nothing to cut");
    }

    /// <summary>A completion ends at its first generated end-of-text; an infill's gap does too, but its suffix is kept.</summary>
    [Test]
    public void StoppingCutsEachGeneratedSpanButKeepsFixedText()
    {
        int[] completion = [Start, 1, 2, Eos, 3, 4];
        Assert.That(DenoisingPrompts.Pieces(completion, [1, 1, 0, 0, 0, 0], Eos, stopAtEndOfText: true), Is.EqualTo(new[] { new[] { Start, 1, 2 } }));
        int[] infill = [Start, 1, 5, Eos, 6, 7, 8, Eos, 3];
        byte[] fixedMask = [1, 1, 0, 0, 0, 1, 1, 1, 1];
        Assert.That(DenoisingPrompts.Pieces(infill, fixedMask, Eos, stopAtEndOfText: true), Is.EqualTo(new[] { new[] { Start, 1, 5, 7, 8 }, [3] }),
            "the gap ends at its end-of-text; the fixed suffix (with its own end-of-text) is kept");
        Assert.That(DenoisingPrompts.Pieces([Start, Eos, 1], [1, 1, 0], Eos, stopAtEndOfText: true), Is.EqualTo(new[] { new[] { Start }, [1] }),
            "an end-of-text in the prompt is not generated: it is shown, not cut");
    }
}
