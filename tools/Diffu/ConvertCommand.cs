using System.CommandLine;
using DiffuSharp.IO;
using DiffuSharp.Text;

namespace DiffuSharp.Cli;

/// <summary>`diffu convert llama2c MODEL.bin TOKENIZER OUT_DIR`: a llama2.c checkpoint to an HF LLaMA folder.</summary>
static class ConvertCommand
{
    public static Command Create(TextWriter stdout)
    {
        var model = new Argument<string>("MODEL") { Description = "llama2.c checkpoint (legacy .bin format)" };
        var tokenizer = new Argument<string>("TOKENIZER") { Description = "llama2.c vocabulary (.bin) or SentencePiece model (.model)" };
        var outDir = new Argument<string>("OUT_DIR") { Description = "folder for model.safetensors, config.json and the tokenizer" };
        var llama2c = new Command("llama2c", "convert a llama2.c checkpoint and its tokenizer to a Hugging Face LLaMA folder") { model, tokenizer, outDir };
        llama2c.SetAction(parse => RunLlama2c(parse.GetValue(model)!, parse.GetValue(tokenizer)!, parse.GetValue(outDir)!, stdout));
        return new Command("convert", "convert checkpoints from other formats") { llama2c };
    }

    static int RunLlama2c(string modelPath, string tokenizerPath, string outDir, TextWriter stdout)
    {
        if (!File.Exists(modelPath)) throw new DiffuException($"{modelPath}: model file not found");
        if (!File.Exists(tokenizerPath)) throw new DiffuException($"{tokenizerPath}: tokenizer file not found");
        if (File.Exists(outDir)) throw new DiffuException($"{outDir}: exists and is a file, not a folder");
        var tokenizer = LlamaTokenizers.FromFile(tokenizerPath);
        var checkpoint = Llama2cCheckpoint.Read(modelPath);
        if (tokenizer.VocabSize != checkpoint.VocabSize)
            throw new DiffuException($"{tokenizerPath}: has {tokenizer.VocabSize} tokens, but {modelPath} has vocab_size {checkpoint.VocabSize}");

        checkpoint.WriteHuggingFace(outDir);
        string tokenizerName = tokenizer is SentencePieceTokenizer ? "tokenizer.model" : "tokenizer.bin";
        Llama2cCheckpoint.WriteAtomically(Path.Combine(outDir, tokenizerName), temp => File.Copy(tokenizerPath, temp));

        long parameters;
        using (var written = SafeTensorFile.Open(Path.Combine(outDir, SafeTensorCheckpoint.SingleFileName)))
            parameters = written.Tensors.Sum(t => t.ElementCount);
        stdout.WriteLine($"converted {modelPath} -> {outDir}");
        stdout.WriteLine($"  llama: dim {checkpoint.Dim}, hidden {checkpoint.HiddenDim}, layers {checkpoint.Layers}, heads {checkpoint.Heads} " +
                         $"(kv {checkpoint.KvHeads}, head size {checkpoint.HeadSize}), vocab {checkpoint.VocabSize}, seq_len {checkpoint.SeqLen}, " +
                         $"{(checkpoint.SharedClassifier ? "shared" : "separate")} classifier");
        stdout.WriteLine($"  {SafeTensorCheckpoint.SingleFileName}: {parameters:N0} float32 values stored; config.json; {tokenizerName} ({tokenizer.Name})");
        return Cli.Ok;
    }
}
