using System.Text;
using DiffuSharp.Data;

namespace DiffuSharp.Tests.Data;

/// <summary>How text files are cut into documents: blank lines, or &lt;|endoftext|&gt; when a file has it.</summary>
public sealed class TextDocumentsTests
{
    const string Eot = "<|endoftext|>";

    [Test]
    public void BlankLinesSeparateParagraphs()
    {
        string text = "\n\nFirst Citizen:\nBefore we proceed\n\n\nAll:\nSpeak, speak.\n \t\n  indented\nline  \n";
        Assert.That(TextDocuments.DetectSeparator(text), Is.EqualTo(DocumentSeparator.BlankLines));
        Assert.That(TextDocuments.Split(text), Is.EqualTo(new[] { "First Citizen:\nBefore we proceed", "All:\nSpeak, speak.", "indented\nline" }));
    }

    [Test]
    public void WindowsLineBreaksBecomeNewlines()
    {
        Assert.That(TextDocuments.Split("a\r\nb\r\n\r\nc\r\n"), Is.EqualTo(new[] { "a\nb", "c" }));
        Assert.That(TextDocuments.Split("one\r\ntwo\r\n" + Eot + "\r\nthree"), Is.EqualTo(new[] { "one\ntwo", "three" }));
    }

    [Test]
    public void EndOfTextIsTheOnlySeparatorWhenPresent()
    {
        string text = "Once upon a time.\n\nThe end.\n" + Eot + "\nSecond" + Eot + "Third, same line.\n" + Eot + "\n \n" + Eot + Eot + "\n";
        Assert.That(TextDocuments.DetectSeparator(text), Is.EqualTo(DocumentSeparator.EndOfText));
        Assert.That(TextDocuments.Split(text), Is.EqualTo(new[] { "Once upon a time.\n\nThe end.", "Second", "Third, same line." }),
            "blank lines stay inside a story; empty pieces between markers are dropped; the marker is never kept");
    }

    [Test]
    public void TextWithoutSeparatorsIsOneDocumentAndBlankTextIsNone()
    {
        Assert.That(TextDocuments.Split("just one line"), Is.EqualTo(new[] { "just one line" }));
        Assert.That(TextDocuments.Split(" \n\n\t\n"), Is.Empty);
        Assert.That(TextDocuments.Split(Eot + "\n" + Eot), Is.Empty);
        Assert.That(TextDocuments.Split(""), Is.Empty);
    }

    [TestCase(0)]
    [TestCase(1)]
    [TestCase(6)]
    [TestCase(12)]
    [TestCase(13)]
    public void FileScanFindsAMarkerAcrossReadBoundaries(int before)
    {
        // The scanner reads 1 MiB at a time: put the marker so it ends `before` bytes short of, or straddles, a boundary.
        int offset = (1 << 20) - Eot.Length + before;
        var bytes = new byte[offset + Eot.Length + 10];
        bytes.AsSpan().Fill((byte)'a');
        Encoding.ASCII.GetBytes(Eot).CopyTo(bytes, offset);
        Assert.That(TextDocuments.DetectSeparator(new MemoryStream(bytes)), Is.EqualTo(DocumentSeparator.EndOfText));
        bytes[offset + 5] = (byte)'x';
        Assert.That(TextDocuments.DetectSeparator(new MemoryStream(bytes)), Is.EqualTo(DocumentSeparator.BlankLines));
    }

    [Test]
    public void TinyShakespeareSplitsIntoSpeeches()
    {
        string path = Path.Combine(TestUtil.SharedData, "corpora", "tinyshakespeare_input.txt");
        using (var stream = File.OpenRead(path))
            Assert.That(TextDocuments.DetectSeparator(stream), Is.EqualTo(DocumentSeparator.BlankLines));
        var documents = TextDocuments.Split(File.ReadAllText(path));
        Assert.That(documents, Has.Count.EqualTo(7222));
        Assert.That(documents[0], Is.EqualTo("First Citizen:\nBefore we proceed any further, hear me speak."));
        Assert.That(documents[1], Is.EqualTo("All:\nSpeak, speak."));
    }

    [Test]
    public void TinyStoriesSplitsOnEndOfText()
    {
        string path = Path.Combine(TestUtil.SharedData, "corpora", "tinystories", "train_v2_head.txt");
        using (var stream = File.OpenRead(path))
            Assert.That(TextDocuments.DetectSeparator(stream), Is.EqualTo(DocumentSeparator.EndOfText));
        string text = File.ReadAllText(path);
        var documents = TextDocuments.Split(text);
        var pieces = text.Replace("\r\n", "\n").Split(Eot).Select(p => p.Trim()).Where(p => p.Length > 0).ToList();
        Assert.That(documents, Is.EqualTo(pieces));
        Assert.That(documents, Has.Count.EqualTo(1728));
        Assert.That(documents[0], Does.StartWith("Once upon a time there was a little boy named Ben."));
    }
}
