using System.CommandLine;
using DiffuSharp.IO;
using DiffuSharp.Text;

namespace DiffuSharp.Cli;

/// <summary>`diffu convert llama2c MODEL.bin TOKENIZER OUT_DIR`: a llama2.c checkpoint to an HF LLaMA folder.</summary>
static class ConvertCommand
{
    public static Command Create(TextWriter stdout)
    {
        var model = Cli.NonEmpty(new Argument<string>("MODEL") { Description = "llama2.c checkpoint (legacy .bin format)" });
        var tokenizer = Cli.NonEmpty(new Argument<string>("TOKENIZER") { Description = "llama2.c vocabulary (.bin) or SentencePiece model (.model)" });
        var outDir = Cli.NonEmpty(new Argument<string>("OUT_DIR") { Description = "folder for model.safetensors, config.json and the tokenizer" });
        var overwrite = new Option<bool>("--overwrite") { Description = "replace the model files of an OUT_DIR that already holds a model" };
        var llama2c = new Command("llama2c", "convert a llama2.c checkpoint and its tokenizer to a Hugging Face LLaMA folder") { model, tokenizer, outDir, overwrite };
        llama2c.SetAction(parse => RunLlama2c(parse.GetValue(model)!, parse.GetValue(tokenizer)!, parse.GetValue(outDir)!, parse.GetValue(overwrite), stdout));
        return new Command("convert", "convert checkpoints from other formats") { llama2c };
    }

    /// <summary>The files of a model folder; one of them present means OUT_DIR holds a model.</summary>
    static readonly string[] ModelFiles = [SafeTensorsCheckpoint.SingleFileName, SafeTensorsCheckpoint.IndexFileName, "config.json", "tokenizer.bin", "tokenizer.model"];

    static int RunLlama2c(string modelPath, string tokenizerPath, string outDir, bool overwrite, TextWriter stdout)
    {
        // Everything is read and checked before the first file is written, so a refusal leaves OUT_DIR as it was.
        FileStatus.RequireRegularFile(modelPath, "model file");
        FileStatus.RequireRegularFile(tokenizerPath, "tokenizer file");
        var outKind = FileStatus.Kind(outDir);
        if (outKind is not (FileKind.Missing or FileKind.Directory))
            throw new DiffuException($"{outDir}: OUT_DIR is {FileStatus.Describe(outKind)}, not a folder");
        var tokenizer = LlamaTokenizers.FromFile(tokenizerPath);
        var checkpoint = Llama2cCheckpoint.Read(modelPath);
        if (tokenizer.VocabSize != checkpoint.VocabSize)
            throw new DiffuException($"{tokenizerPath}: has {tokenizer.VocabSize} tokens, but {modelPath} has vocab_size {checkpoint.VocabSize}");
        string tokenizerName = tokenizer is SentencePieceTokenizer ? "tokenizer.model" : "tokenizer.bin";
        string[] inputs = [modelPath, tokenizerPath];
        if (outKind == FileKind.Directory)
        {
            var present = ModelFiles.Where(name => FileStatus.Kind(Path.Combine(outDir, name)) != FileKind.Missing).ToList();
            if (present.Count > 0 && !overwrite)
                throw new DiffuException($"{outDir} already holds a model ({string.Join(", ", present)}); give --overwrite to replace it");
            foreach (var name in new[] { SafeTensorsCheckpoint.SingleFileName, "config.json", tokenizerName })
                OutputFile.Check(Path.Combine(outDir, name), "OUT_DIR", inputs);
        }

        checkpoint.WriteHuggingFace(outDir);
        OutputFile.Write(Path.Combine(outDir, tokenizerName), "OUT_DIR", stream =>
        {
            using var source = new FileStream(tokenizerPath, FileMode.Open, FileAccess.Read, FileShare.Read);
            source.CopyTo(stream);
        }, inputs);

        long parameters;
        using (var written = SafeTensorsFile.Open(Path.Combine(outDir, SafeTensorsCheckpoint.SingleFileName)))
            parameters = written.Tensors.Sum(t => t.ElementCount);
        stdout.WriteLine($"converted {modelPath} -> {outDir}");
        stdout.WriteLine($"  llama: dim {checkpoint.Dim}, hidden {checkpoint.HiddenDim}, layers {checkpoint.Layers}, heads {checkpoint.Heads} " +
                         $"(kv {checkpoint.KvHeads}, head size {checkpoint.HeadSize}), vocab {checkpoint.VocabSize}, seq_len {checkpoint.SeqLen}, " +
                         $"{(checkpoint.SharedClassifier ? "shared" : "separate")} classifier");
        stdout.WriteLine($"  {SafeTensorsCheckpoint.SingleFileName}: {parameters:N0} float32 values stored; config.json; {tokenizerName} ({tokenizer.Name})");
        return Cli.Ok;
    }
}
