using System.CommandLine;
using DiffuSharp.Models;
using DiffuSharp.Text;

namespace DiffuSharp.Cli;

/// <summary>Finds what a command needs beside the weights of a model folder.</summary>
static class ModelFolder
{
    /// <summary>
    /// The tokenizer for a GPT-2 model: the model folder's own files, else --tokenizer, else $DIFFU_TOKENIZER.
    /// A model with fewer than the 50257 GPT-2 tokens uses the first vocab_size tokens of the BPE.
    /// </summary>
    public static TextTokenizer Tokenizer(string modelDir, Gpt2Config config, string? tokenizerDir)
    {
        int? limit = config.VocabSize < 50257 ? config.VocabSize : null;
        var candidates = new[] { modelDir, tokenizerDir, Environment.GetEnvironmentVariable("DIFFU_TOKENIZER") };
        foreach (var dir in candidates)
        {
            if (string.IsNullOrWhiteSpace(dir)) continue;
            if (!Directory.Exists(dir)) throw new DiffuException($"{dir}: tokenizer folder not found");
            var tok = Gpt2Tokenizer.FromDirectory(dir, limit);
            if (tok is not null) return tok;
        }
        throw new DiffuException($"{modelDir}: no tokenizer (vocab.json + merges.txt or encoder.json + vocab.bpe); pass --tokenizer DIR or set DIFFU_TOKENIZER");
    }

    public static Option<string?> TokenizerOption() => new("--tokenizer")
    {
        Description = "folder with GPT-2 BPE files (vocab.json + merges.txt, or encoder.json + vocab.bpe) when the model folder has none",
    };
}
