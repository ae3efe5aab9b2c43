using System.CommandLine;
using DiffuSharp.IO;
using DiffuSharp.Lora;
using DiffuSharp.Models;
using DiffuSharp.Text;

namespace DiffuSharp.Cli;

/// <summary>Finds what a command needs beside the weights of a model folder.</summary>
static class ModelFolder
{
    /// <summary>
    /// The tokenizer of a model: the model folder's own files (an adapter folder's, else its base's), else --tokenizer,
    /// else $DIFFU_TOKENIZER, each read as the model's family reads tokenizers (<see cref="ModelFamily.FindTokenizer"/>).
    /// </summary>
    public static TextTokenizer Tokenizer(string modelDir, IModelConfig config, string? tokenizerOption)
    {
        var family = ModelFamily.Of(config);
        string folder = RunLayout.ModelFolder(modelDir);
        string? baseFolder = PeftAdapter.IsAdapterFolder(folder) ? PeftAdapter.BaseModelPath(folder) : null;
        var candidates = new[] { folder, baseFolder, tokenizerOption, Environment.GetEnvironmentVariable("DIFFU_TOKENIZER") }
            .Where(c => !string.IsNullOrWhiteSpace(c)).Select(c => c!);
        foreach (var place in candidates)
        {
            var kind = FileStatus.Kind(place);
            if (kind == FileKind.Missing) throw new DiffuException($"{place}: tokenizer folder or file not found");
            if (kind == FileKind.Directory) RequireRegularFiles(place, "tokenizer file");
            else FileStatus.RequireRegularFile(place, "tokenizer");
            var tokenizer = family.FindTokenizer(place, config);
            if (tokenizer is null) continue;
            if (tokenizer.VocabSize > config.VocabSize)
                throw new DiffuException($"{place}: the tokenizer has {tokenizer.VocabSize} tokens, the model only {config.VocabSize}");
            return tokenizer;
        }
        throw new DiffuException($"{modelDir}: no tokenizer ({family.TokenizerHint})");
    }

    /// <summary>
    /// Refuses a folder that holds anything but regular files and folders, before any of it is read: a FIFO named
    /// config.json or vocab.json would block its reader forever. A path that is not a folder is the loader's to report.
    /// </summary>
    public static void RequireRegularFiles(string folder, string what)
    {
        if (FileStatus.Kind(folder) != FileKind.Directory) return;
        foreach (var file in Directory.GetFiles(folder)) FileStatus.RequireRegularFile(file, what);
    }

    /// <summary>The files of a model folder (weights, config, tokenizer): inputs that no output of the command may replace.</summary>
    public static string[] Files(string modelDir) => Directory.Exists(modelDir) ? Directory.GetFiles(modelDir) : [];


    /// <summary>--sft-tokens BOS,SEP,EOS,PAD, each a token id of the model.</summary>
    public static SftTokens? ParseSftTokens(string? text, int vocab)
    {
        if (text is null) return null;
        var parts = text.Split(',');
        var ids = new int[parts.Length];
        if (parts.Length != 4 || parts.Where((p, i) => !int.TryParse(p.Trim(), out ids[i]) || ids[i] < 0 || ids[i] >= vocab).Any())
            throw new DiffuException($"--sft-tokens '{text}': expected four token ids BOS,SEP,EOS,PAD below the model's vocabulary of {vocab}");
        return new SftTokens(ids[0], ids[1], ids[2], ids[3]);
    }

    public static Option<string?> SftTokensOption() => Cli.NonEmpty(new Option<string?>("--sft-tokens")
    {
        Description = "with --sft / --sft-prompt: the BOS,SEP,EOS,PAD ids (default: the family's; GPT-2 end-of-text for all four, LLaMA 1,2,2,2)",
    });

    public static Option<string?> TokenizerOption() => Cli.NonEmpty(new Option<string?>("--tokenizer")
    {
        Description = "tokenizer when the model folder has none: a folder with GPT-2 BPE files, or a LLaMA tokenizer.model / llama2.c tokenizer.bin",
    });
}
