using CsvHelper;

namespace DiffuSharp.Eval;

/// <summary>
/// An infilling example: the model sees <paramref name="Prefix"/> and <paramref name="Suffix"/> and generates
/// as many tokens as <paramref name="Middle"/> has (the oracle length), which is also the ROUGE reference.
/// The reference encodes the three pieces separately, without special tokens, and joins their tokens with
/// nothing between them: the middle has no leading space and the suffix none either.
/// </summary>
public sealed record InfillExample(string Prefix, string Middle, string Suffix);

/// <summary>
/// ROCStories cloze validation as an infilling task (method §10): each row holds four sentences and two
/// candidate fifth sentences, and AnswerRightEnding (1 or 2) says which is right. The five sentences of the
/// true story give prefix = s1 + " " + s2, middle = s3, suffix = s4 + " " + s5: one space joins the two
/// sentences of the prefix and of the suffix, and the fields are used as the CSV holds them (no trimming).
/// The task is the first <see cref="Stories"/> stories of the file.
/// </summary>
public static class RocStories
{
    public const string FileName = "cloze_test_val__spring2016.csv";
    public const int Stories = 1000;

    private static readonly string[] Header =
    [
        "InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
        "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding",
    ];

    /// <summary>The first 1000 stories (or fewer, with a limit) of <see cref="FileName"/> under the eval data folder.</summary>
    public static IReadOnlyList<InfillExample> Load(string dataRoot, int? limit = null) =>
        LoadFile(Path.Combine(dataRoot, FileName), Math.Min(limit ?? Stories, Stories));

    /// <summary>Every story of a cloze CSV with the header above (or the first <paramref name="limit"/>), the whole file checked.</summary>
    public static IReadOnlyList<InfillExample> LoadFile(string path, int? limit = null)
    {
        // Quoting follows RFC 4180 (fields with commas are quoted); anything else is refused rather than
        // guessed at, and so is a row whose field count differs from the header's.
        var options = CsvReaderOptions.Default with
        {
            Separator = ',',
            MalformedData = CsvMalformedDataHandling.Throw,
            FieldCountMismatch = CsvFieldCountHandling.Throw,
            SkipEmptyLines = false,
            TrackLineNumbers = true,
        };
        var examples = new List<InfillExample>();
        try
        {
            using var reader = CsvReader.Create(EvalFile.Open(path), options);
            if (!reader.Headers.SequenceEqual(Header))
                throw EvalFile.Error(path, 1, $"expected the header {string.Join(",", Header)}, found {string.Join(",", reader.Headers)}");
            while (reader.Read())
            {
                string ending = reader.GetString(7);
                if (ending is not ("1" or "2"))
                    throw EvalFile.Error(path, reader.LineNumber, $"AnswerRightEnding must be 1 or 2, found '{ending}'");
                string fifth = reader.GetString(ending == "1" ? 5 : 6);
                examples.Add(new InfillExample(
                    reader.GetString(1) + " " + reader.GetString(2), reader.GetString(3), reader.GetString(4) + " " + fifth));
            }
        }
        catch (CsvFormatException e)
        {
            throw e.LineNumber > 0 ? EvalFile.Error(path, e.LineNumber, $"malformed CSV ({e.Message})") : EvalFile.Error(path, $"malformed CSV ({e.Message})");
        }
        return EvalFile.Take(examples, limit);
    }
}
