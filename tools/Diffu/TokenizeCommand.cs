using System.CommandLine;
using DiffuSharp.Data;
using DiffuSharp.IO;
using DiffuSharp.Text;
using Spectre.Console;

namespace DiffuSharp.Cli;

/// <summary>`diffu tokenize`: text files to one token shard (the training data format).</summary>
static class TokenizeCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var tokenizer = Cli.NonEmpty(new Option<string?>("--tokenizer")
        {
            Description = "folder with GPT-2 BPE files (vocab.json + merges.txt, or encoder.json + vocab.bpe), or a LLaMA tokenizer.model / llama2.c tokenizer.bin; default $DIFFU_TOKENIZER",
        });
        var output = Cli.NonEmpty(new Option<string>("--out") { Description = "the token shard to write (e.g. train.tok)", Required = true });
        var vocabLimit = TypedOptions.OptionalInteger("--vocab-limit", "keep only the first V GPT-2 tokens (for a model with vocab_size V < 50257)", min: 1);
        var maxDocs = TypedOptions.OptionalInteger("--max-docs", "stop after this many documents", min: 1L);
        var inputs = Cli.NonEmpty(new Argument<string[]>("INPUT")
        {
            Description = "UTF-8 text files; documents are separated by <|endoftext|> when a file contains it, else by blank lines",
            Arity = ArgumentArity.OneOrMore,
        });
        var command = new Command("tokenize", "tokenize text files into a token shard for training") { tokenizer, output, vocabLimit, maxDocs, inputs };
        command.SetAction(parse => Run(parse.GetValue(inputs)!, parse.GetValue(tokenizer), parse.GetValue(output)!, parse.GetValue(vocabLimit),
            parse.GetValue(maxDocs), stdout, stderr));
        return command;
    }

    static int Run(string[] inputs, string? tokenizerDir, string outPath, int? vocabLimit, long? maxDocs, TextWriter stdout, TextWriter stderr)
    {
        foreach (var input in inputs) FileStatus.RequireRegularFile(input, "input file");
        var (tokenizer, tokenizerFiles) = LoadTokenizer(tokenizerDir, vocabLimit);
        OutputFile.Check(outPath, "--out", [.. inputs, .. tokenizerFiles]);

        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(stderr) });
        TokenizeSummary summary;
        if (console.Profile.Capabilities.Interactive && console.Profile.Out.IsTerminal)
        {
            long total = inputs.Sum(f => new FileInfo(f).Length);
            summary = console.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new DownloadedColumn(),
                         new TransferSpeedColumn(), new RemainingTimeColumn())
                .Start(context =>
                {
                    var task = context.AddTask("tokenizing", maxValue: Math.Max(total, 1));
                    var result = CorpusTokenizer.Run(inputs, tokenizer, outPath, maxDocs, bytes => task.Value = bytes);
                    task.Value = task.MaxValue;
                    return result;
                });
        }
        else
        {
            summary = CorpusTokenizer.Run(inputs, tokenizer, outPath, maxDocs);
        }

        foreach (var file in summary.Files)
        {
            string separator = file.Separator == DocumentSeparator.EndOfText ? "<|endoftext|>" : "blank lines";
            stdout.WriteLine($"{file.Path}: {file.Documents:N0} documents, {file.Tokens:N0} tokens (documents separated by {separator})");
        }
        double seconds = Math.Max(summary.Elapsed.TotalSeconds, 1e-9);
        stdout.WriteLine($"{summary.Documents:N0} documents, {summary.Tokens:N0} tokens in {summary.Elapsed.TotalSeconds:F2} s " +
                         $"({summary.Tokens / seconds:N0} tokens/s, {summary.Bytes / seconds / 1e6:F1} MB/s)" +
                         (summary.StoppedEarly ? $"; stopped at --max-docs {maxDocs}" : ""));
        string eos = tokenizer.EndOfTextId is { } id ? $"EOS {id}" : "no EOS token";
        stdout.WriteLine($"wrote {outPath} ({tokenizer.Name}, vocabulary {tokenizer.VocabSize}, {eos})");
        return Cli.Ok;
    }

    /// <summary>The tokenizer and the files it was read from (which the output may not replace).</summary>
    static (TextTokenizer Tokenizer, string[] Files) LoadTokenizer(string? tokenizerDir, int? vocabLimit)
    {
        string? dir = string.IsNullOrWhiteSpace(tokenizerDir) ? Environment.GetEnvironmentVariable("DIFFU_TOKENIZER") : tokenizerDir;
        if (string.IsNullOrWhiteSpace(dir)) throw new DiffuException("no tokenizer: pass --tokenizer DIR or set DIFFU_TOKENIZER");
        var kind = FileStatus.Kind(dir);
        if (kind is not (FileKind.Directory or FileKind.Missing))
        {
            FileStatus.RequireRegularFile(dir, "tokenizer");
            if (vocabLimit is not null) throw new DiffuException("--vocab-limit applies to GPT-2 BPE tokenizers only");
            return (LlamaTokenizers.FromFile(dir), [dir]);
        }
        ModelFolder.RequireRegularFiles(dir, "tokenizer file");
        var tokenizer = Gpt2Tokenizer.FromDirectory(dir, vocabLimit)
                        ?? throw new DiffuException($"{dir}: no GPT-2 tokenizer files (vocab.json + merges.txt or encoder.json + vocab.bpe)");
        return (tokenizer, Directory.GetFiles(dir));
    }
}
