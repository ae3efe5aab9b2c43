using System.CommandLine;
using DiffuSharp.IO;
using DiffuSharp.Models;
using DiffuSharp.Text;

namespace DiffuSharp.Cli;

/// <summary>Finds what a command needs beside the weights of a model folder.</summary>
static class ModelFolder
{
    /// <summary>
    /// The tokenizer of a model: the model folder's own files, else --tokenizer, else $DIFFU_TOKENIZER.
    /// GPT-2 models read BPE files (a model with fewer than the 50257 GPT-2 tokens uses the first
    /// vocab_size tokens of the BPE); LLaMA models read a SentencePiece tokenizer.model or a llama2.c
    /// tokenizer.bin (a folder holding one, or the file itself).
    /// </summary>
    public static TextTokenizer Tokenizer(string modelDir, IModelConfig config, string? tokenizerOption)
    {
        var candidates = new[] { RunLayout.ModelFolder(modelDir), tokenizerOption, Environment.GetEnvironmentVariable("DIFFU_TOKENIZER") }
            .Where(c => !string.IsNullOrWhiteSpace(c)).Select(c => c!);
        foreach (var place in candidates)
        {
            var kind = FileStatus.Kind(place);
            if (kind == FileKind.Missing) throw new DiffuException($"{place}: tokenizer folder or file not found");
            if (kind == FileKind.Directory) RequireRegularFiles(place, "tokenizer file");
            else FileStatus.RequireRegularFile(place, "tokenizer");
            var tokenizer = config is LlamaConfig ? Llama(place) : Gpt2(place, config.VocabSize);
            if (tokenizer is null) continue;
            if (tokenizer.VocabSize > config.VocabSize)
                throw new DiffuException($"{place}: the tokenizer has {tokenizer.VocabSize} tokens, the model only {config.VocabSize}");
            return tokenizer;
        }
        throw new DiffuException(config is LlamaConfig
            ? $"{modelDir}: no tokenizer (tokenizer.model or tokenizer.bin); pass --tokenizer FILE or set DIFFU_TOKENIZER"
            : $"{modelDir}: no tokenizer (vocab.json + merges.txt or encoder.json + vocab.bpe); pass --tokenizer DIR or set DIFFU_TOKENIZER");
    }

    static TextTokenizer? Gpt2(string place, int vocabSize) =>
        Directory.Exists(place) ? Gpt2Tokenizer.FromDirectory(place, vocabSize < 50257 ? vocabSize : null) : null;

    static TextTokenizer? Llama(string place)
    {
        if (File.Exists(place)) return LlamaTokenizers.FromFile(place);
        foreach (var name in new[] { "tokenizer.model", "tokenizer.bin" })
            if (File.Exists(Path.Combine(place, name))) return LlamaTokenizers.FromFile(Path.Combine(place, name));
        return null;
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

    /// <summary>The fixed first token of a sequence: LLaMA's BOS, GPT-2's end-of-text (which also separates documents).</summary>
    public static int StartToken(IModelConfig config, TextTokenizer tokenizer) =>
        config is LlamaConfig ? LlamaTokenizers.BeginOfSentenceId : tokenizer.EndOfTextId ?? 0;

    /// <summary>The [MASK] id config.json names, if any.</summary>
    public static int? MaskTokenId(IModelConfig config) => config switch
    {
        Gpt2Config gpt2 => gpt2.MaskTokenId,
        LlamaConfig llama => llama.MaskTokenId,
        _ => null,
    };

    /// <summary>
    /// The text of a generated row [start, ...]: LLaMA tokenizers drop the BOS and, after it, the dummy-prefix
    /// space, so they decode the whole row; GPT-2 rows start with end-of-text, which is not part of the text.
    /// </summary>
    public static string DecodeRow(IModelConfig config, TextTokenizer tokenizer, ReadOnlySpan<int> row) =>
        tokenizer.Decode((config is LlamaConfig ? row : row[1..]).ToArray());

    public static Option<string?> TokenizerOption() => Cli.NonEmpty(new Option<string?>("--tokenizer")
    {
        Description = "tokenizer when the model folder has none: a folder with GPT-2 BPE files, or a LLaMA tokenizer.model / llama2.c tokenizer.bin",
    });
}
