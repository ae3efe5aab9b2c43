using System.CommandLine;
using System.CommandLine.Help;
using DiffuSharp.Tests.Models;

namespace DiffuSharp.Tests.CliTests;

/// <summary>
/// Every option and argument of every `diffu` command against hostile values, each run in-process on the tiny
/// fixture with otherwise valid arguments. A row says the outcome: bad input is exit 2 with exactly one line on
/// stderr and no stack trace; a legitimately valid value is exit 0; a training run that diverges is exit 3.
/// A new option joins the table, or <see cref="EveryOptionHasARow"/> fails.
/// </summary>
public sealed class HostileInputTests
{
    const string Empty = "", Negative = "-1", Zero = "0", IntMax = "2147483647", LongMax = "9223372036854775807",
        NaN = "NaN", Inf = "Infinity", NegInf = "-Infinity", Huge = "1e39", Garbage = "x\ny!";
    const string Missing = "{in}/nonexistent", Folder = "{in}/folder", AFile = "{in}/in.txt", Fifo = "{in}/fifo",
        DevNull = "/dev/null", DevZero = "/dev/zero", DevFull = "/dev/full", MissingFolder = "{out}/missing/o";

    /// <summary>Where the valid arguments of each row come from: the command's path and its arguments, by option or argument name.</summary>
    static readonly Dictionary<string, (string[] Path, (string Name, string Value)[] Valid)> Bases = new()
    {
        ["info"] = (["info"], [("path", "{fixture}")]),
        ["logits"] = (["logits"], [("--model", "{fixture}"), ("--ids", "1,2"), ("--out", "{out}/o.safetensors"), ("--device", "cpu")]),
        ["generate"] = (["generate"], [("--model", "{fixture}"), ("--tokenizer", "{gpt2}"), ("--device", "cpu"), ("--mask-token", "3"), ("--length", "4"), ("--steps", "2")]),
        ["generate --ar"] = (["generate"], [("--model", "{fixture}"), ("--tokenizer", "{gpt2}"), ("--device", "cpu"), ("--ar", "true"), ("--prompt", "Once"), ("--max-new", "2")]),
        ["bench"] = (["bench"], [("--quick", "true"), ("--suite", "norm"), ("--tokens", "16"), ("--repeat", "1"), ("--budget", "0.001"), ("--reference", "none"), ("--device", "cpu")]),
        ["tokenize"] = (["tokenize"], [("--tokenizer", "{gpt2}"), ("--out", "{out}/o.tok"), ("INPUT", AFile)]),
        ["convert llama2c"] = (["convert", "llama2c"], [("MODEL", "{stories}"), ("TOKENIZER", "{tok512}"), ("OUT_DIR", "{out}/converted")]),
        ["train"] = (["train"], [("--init", "{fixture}"), ("--tokenizer", "{gpt2}"), ("--data", "{shard}"), ("--mask-token", "3"), ("--steps", "1"),
            ("--batch", "2"), ("--seq-len", "16"), ("--eval-every", "1"), ("--eval-batches", "1"), ("--out", "{out}/new"), ("--device", "cpu")]),
        ["train --config"] = (["train"], [("--config", "{fixture}/config.json"), ("--tokenizer", "{gpt2}"), ("--data", "{shard}"), ("--mask-token", "3"),
            ("--steps", "1"), ("--batch", "2"), ("--seq-len", "16"), ("--eval-batches", "1"), ("--out", "{out}/run"), ("--device", "cpu")]),
        ["train --resume"] = (["train"], [("--resume", "{run}"), ("--device", "cpu")]),
        ["generate --sft-prompt"] = (["generate"], [("--model", "{fixture}"), ("--tokenizer", "{gpt2}"), ("--device", "cpu"), ("--mask-token", "3"),
            ("--sft-prompt", "What is 1 plus 2?"), ("--cutoff", "32"), ("--steps", "2")]),
        ["data gsm8k-symbolic"] = (["data", "gsm8k-symbolic"], [("INPUT", "{gsm8k}"), ("--out", "{out}/gsm.json")]),
        ["train --sft"] = (["train"], [("--init", "{fixture}"), ("--tokenizer", "{gpt2}"), ("--sft", "{sft}"), ("--cutoff", "24"), ("--mask-token", "3"),
            ("--steps", "1"), ("--batch", "2"), ("--eval-every", "1"), ("--eval-batches", "1"), ("--out", "{out}/sft"), ("--device", "cpu")]),
        ["train --lora"] = (["train"], [("--init", "{fixture}"), ("--tokenizer", "{gpt2}"), ("--sft", "{sft}"), ("--cutoff", "24"), ("--mask-token", "3"),
            ("--lora-rank", "2"), ("--steps", "1"), ("--batch", "2"), ("--eval-every", "1"), ("--eval-batches", "1"), ("--out", "{out}/lora"), ("--device", "cpu")]),
        ["merge"] = (["merge"], [("--model", "{fixture}"), ("--adapter", "{fixture}/lora"), ("--tokenizer", "{gpt2}"), ("--out", "{out}/merged"), ("--device", "cpu")]),
        ["eval"] = (["eval"], [("--model", "{fixture}"), ("--tokenizer", "{gpt2}"), ("--mask-token", "3"), ("--task", "piqa"), ("--limit", "1"),
            ("--steps", "2"), ("--eval-data", "{eval}"), ("--device", "cpu")]),
        ["eval unconditional"] = (["eval"], [("--model", "{fixture}"), ("--tokenizer", "{gpt2}"), ("--mask-token", "3"), ("--task", "unconditional"),
            ("--judge", "{fixture}"), ("--samples", "2"), ("--length", "4"), ("--steps", "2"), ("--device", "cpu")]),
    };

    public enum Outcome { Exit2, Exit0, Exit3 }

    sealed record Row(string Base, string Name, Outcome Expected, params string[] Values);

    static Row Bad(string baseName, string name, params string[] values) => new(baseName, name, Outcome.Exit2, values);
    static Row Good(string baseName, string name, params string[] values) => new(baseName, name, Outcome.Exit0, values);
    static Row Diverges(string baseName, string name, params string[] values) => new(baseName, name, Outcome.Exit3, values);

    /// <summary>
    /// The table. Left out as valid but long-running: generate --steps 2147483647 (as many forward passes),
    /// bench --tokens/--squares/--lengths up to 2^20 (gigabytes, minutes), bench --quick false (full-size
    /// ceilings), bench --reference torch (starts Python), --device ilgpu-cpu (the ILGPU simulator) and cuda
    /// (exit 0 or 2 depending on the machine); train --steps, --grad-accum, --warmup and --eval-every at 2^31-1 and beyond
    /// (that many optimizer steps or micro-batches).
    /// </summary>
    static readonly Row[] Table =
    [
        Bad("info", "path", Empty, Missing, Folder, AFile, DevNull, DevZero, Fifo, Garbage),
        Good("info", "path", "{fixture}", "{fixture}/model.safetensors"),

        Bad("logits", "--model", Empty, Missing, Folder, AFile, DevNull, Fifo, Garbage),
        Bad("logits", "--ids", Empty, Negative, IntMax, LongMax, NaN, Inf, Huge, Garbage, "512", "1,-2", "{65 ids}"),
        Good("logits", "--ids", Zero, "511", "1,,2", "{64 ids}"),
        Bad("logits", "--bidirectional", Garbage, Empty),
        Good("logits", "--bidirectional", "true", "false"),
        Bad("logits", "--out", Empty, Folder, DevNull, DevFull, Fifo, MissingFolder, "{fixture}/model.safetensors", "{out}/"),
        Good("logits", "--out", "{out}/other.safetensors"),
        Bad("logits", "--device", Empty, Garbage, "tpu"),
        Good("logits", "--device", "cpu", "auto"),
        Bad("logits", "--precision", Empty, Garbage, "fp64", "tf32", "bf16"),
        Good("logits", "--precision", "f32"),
        Bad("logits", "--weights", Empty, Garbage, "BF16", "fp16"),
        Good("logits", "--weights", "auto", "f32", "bf16", "f16"),
        Bad("logits", "--adapter", Empty, Missing, Folder, AFile, DevNull, Fifo, "{fixture}"),
        Good("logits", "--adapter", "{fixture}/lora"),
        Bad("generate", "--adapter", Empty, Missing, Folder),
        Good("generate", "--adapter", "{fixture}/lora"),

        Bad("generate", "--model", Empty, Missing, Folder, AFile, DevNull, Fifo, Garbage),
        Bad("generate", "--prompt", "{70 words}"),
        Good("generate", "--prompt", Empty, Garbage, "Once upon a time", "<|endoftext|>"),
        Bad("generate", "--infill", Empty, Garbage, "a <mask:0> b", "a <mask:2147483648> b", "a <mask:100> b", "<mask:-1>"),
        Good("generate", "--infill", "a <mask:2> b", "<mask:3>"),
        Bad("generate", "--length", Empty, Negative, Zero, IntMax, LongMax, NaN, Inf, NegInf, Huge, Garbage, "64"),
        Good("generate", "--length", "1", "63"),
        Bad("generate", "--steps", Empty, Negative, Zero, LongMax, NaN, Inf, NegInf, Huge, Garbage),
        Good("generate", "--steps", "1", "3", "8"),
        Bad("generate", "--sampler", Empty, Garbage, "TOPK"),
        Good("generate", "--sampler", "topk", "random", "maxprob", "margin", "entropy"),
        Bad("generate", "--temperature", Empty, Negative, NaN, Inf, NegInf, Huge, Garbage),
        Good("generate", "--temperature", Zero, IntMax, LongMax, "1e-45", "0.7"),
        Bad("generate", "--top-p", Empty, Negative, Zero, IntMax, LongMax, NaN, Inf, NegInf, Huge, Garbage, "1.5"),
        Good("generate", "--top-p", "1", "0.5", "1e-45"),
        Bad("generate", "--top-k", Empty, Negative, LongMax, NaN, Inf, NegInf, Huge, Garbage),
        Good("generate", "--top-k", Zero, "1", IntMax),
        Bad("generate", "--block", Empty, Negative, LongMax, NaN, Inf, NegInf, Huge, Garbage),
        Good("generate", "--block", Zero, "2", "3", IntMax),
        Bad("generate", "--tokens-per-step", Empty, Negative, LongMax, NaN, Inf, NegInf, Huge, Garbage),
        Good("generate", "--tokens-per-step", Zero, "1", IntMax),
        Bad("generate", "--cache", Empty, Garbage, "DUAL"),
        Good("generate", "--cache", "none", "prefix", "dual"),
        Bad("generate", "--threshold", Empty, Negative, Zero, NaN, Inf, Huge, Garbage, "1.5"),
        Good("generate", "--threshold", "1", "0.9", "1e-45"),
        Bad("generate", "--batch", Empty, Negative, Zero, IntMax, LongMax, NaN, Inf, NegInf, Huge, Garbage, "100000000"),
        Good("generate", "--batch", "1", "3"),
        Bad("generate", "--seed", Empty, Negative, NaN, Inf, NegInf, Huge, Garbage, "18446744073709551616"),
        Good("generate", "--seed", Zero, IntMax, LongMax, "18446744073709551615"),
        Bad("generate", "--mask-token", Empty, Negative, IntMax, LongMax, NaN, Inf, NegInf, Huge, Garbage, "512"),
        Good("generate", "--mask-token", Zero, "511"),
        Bad("generate", "--show-steps", Garbage),
        Good("generate", "--show-steps", "true"),
        Bad("generate", "--ar", Garbage, "true"),
        Good("generate", "--ar", "false"),
        Good("generate --ar", "--ar", "true"),
        Bad("generate --ar", "--prompt", Empty, "{70 words}"),
        Good("generate --ar", "--prompt", Garbage, "<|endoftext|>"),
        Bad("generate --ar", "--max-new", Empty, Negative, IntMax, LongMax, NaN, Inf, NegInf, Huge, Garbage, "64"),
        Good("generate --ar", "--max-new", Zero, "8"),
        Bad("generate --ar", "--temperature", Negative, NaN, Inf, Huge),
        Good("generate --ar", "--temperature", Zero, "1e-45", LongMax),
        Bad("generate", "--stop-at-eos", Garbage),
        Good("generate", "--stop-at-eos", "true"),
        Good("generate --ar", "--stop-at-eos", "true"),
        Bad("generate", "--tokenizer", Empty, Missing, Folder, AFile, DevNull, DevZero, Fifo),
        Good("generate", "--tokenizer", "{gpt2}"),
        Bad("generate", "--device", Empty, Garbage),
        Good("generate", "--device", "cpu"),
        Bad("generate", "--precision", Empty, Garbage, "tf32"),
        Good("generate", "--precision", "f32"),
        Bad("generate", "--weights", Empty, Garbage, "half"),
        Good("generate", "--weights", "auto", "f32", "bf16", "f16"),
        Good("generate --ar", "--weights", "bf16"),

        Bad("bench", "--suite", Empty, Garbage, ",", "norm,frobnicate"),
        Good("bench", "--suite", "norm,rope", "softmax"),
        Bad("bench", "--quick", Garbage),
        Bad("bench", "--shapes", Empty, Garbage, ",", "0x1x1", "-1x2x2", "2147483647x1x1", "1x2", "NaNx1x1"),
        Good("bench", "--shapes", "8x8x8"),
        Bad("bench", "--squares", Empty, Negative, Zero, IntMax, LongMax, NaN, Huge, Garbage, ","),
        Good("bench", "--squares", "16"),
        Bad("bench", "--lengths", Empty, Negative, Zero, IntMax, LongMax, NaN, Huge, Garbage, "1,,x"),
        Good("bench", "--lengths", "16,32"),
        Bad("bench", "--tokens", Empty, Negative, Zero, IntMax, LongMax, NaN, Inf, NegInf, Huge, Garbage),
        Good("bench", "--tokens", "1"),
        Bad("bench", "--train-batch", Empty, Negative, Zero, IntMax, LongMax, NaN, Inf, Huge, Garbage),
        Good("bench", "--train-batch", "2"),
        Bad("bench", "--train-length", Empty, Negative, Zero, IntMax, LongMax, NaN, Inf, Huge, Garbage, "257"),
        Good("bench", "--train-length", "256"),
        Bad("bench", "--denoise-length", Empty, Negative, Zero, "1", IntMax, LongMax, NaN, Inf, Huge, Garbage, "257"),
        Good("bench", "--denoise-length", "2", "256"),
        Bad("bench", "--denoise-steps", Empty, Negative, Zero, IntMax, LongMax, NaN, Inf, Huge, Garbage),
        Good("bench", "--denoise-steps", "1"),
        Bad("bench", "--eval-examples", Empty, Negative, Zero, IntMax, LongMax, NaN, Inf, Huge, Garbage),
        Good("bench", "--eval-examples", "1"),
        Bad("bench", "--eval-batch", Empty, Negative, Zero, IntMax, LongMax, NaN, Inf, Huge, Garbage),
        Good("bench", "--eval-batch", "1"),
        Bad("bench", "--eval-data", Empty, Missing, AFile, DevNull, Fifo),
        Good("bench", "--eval-data", "{eval}"),
        Bad("bench", "--tokenizer", Empty, Missing, AFile, DevNull, Fifo),
        Good("bench", "--tokenizer", "{gpt2}"),
        Bad("bench", "--repeat", Empty, Negative, Zero, LongMax, NaN, Inf, Huge, Garbage),
        Good("bench", "--repeat", IntMax),
        Bad("bench", "--budget", Empty, Negative, Zero, NaN, Inf, NegInf, Garbage),
        Good("bench", "--budget", IntMax, LongMax, Huge, "1e-300"),
        Bad("bench", "--reference", Empty, Garbage),
        Good("bench", "--reference", "none"),
        Bad("bench", "--python", Empty, Missing, Folder, AFile, DevNull, DevZero, Fifo, "no-such-python-anywhere"),
        Good("bench", "--python", "true"),
        Bad("bench", "--json", Empty, Folder, DevNull, DevFull, Fifo, MissingFolder),
        Good("bench", "--json", "{out}/b.json"),
        Bad("bench", "--markdown", Empty, Folder, DevNull, DevFull, Fifo, MissingFolder),
        Good("bench", "--markdown", "{out}/b.md"),
        Bad("bench", "--plots", Empty, AFile, DevNull, Fifo),
        Good("bench", "--plots", "{out}/plots", MissingFolder),
        Bad("bench", "--device", Empty, Garbage),
        Bad("bench", "--precision", Empty, Garbage, "tf32"),
        Good("bench", "--precision", "f32"),

        Bad("tokenize", "--tokenizer", Empty, Missing, Folder, AFile, DevNull, DevZero, Fifo),
        Good("tokenize", "--tokenizer", "{tok512}"),
        Bad("tokenize", "--out", Empty, Folder, DevNull, DevFull, Fifo, MissingFolder, AFile, "{gpt2}/vocab.bpe"),
        Good("tokenize", "--out", "{out}/other.tok"),
        Bad("tokenize", "--vocab-limit", Empty, Negative, Zero, LongMax, NaN, Inf, Huge, Garbage, "100"),
        Good("tokenize", "--vocab-limit", "512", IntMax),
        Bad("tokenize", "--max-docs", Empty, Negative, Zero, "9223372036854775808", NaN, Inf, Huge, Garbage),
        Good("tokenize", "--max-docs", "1", IntMax, LongMax),
        Bad("tokenize", "INPUT", Empty, Missing, Folder, DevNull, DevZero, Fifo, "{binary}"),
        Good("tokenize", "INPUT", AFile),

        Bad("convert llama2c", "MODEL", Empty, Missing, Folder, AFile, DevNull, DevZero, Fifo),
        Bad("convert llama2c", "TOKENIZER", Empty, Missing, Folder, AFile, DevNull, DevZero, Fifo, "{llama-tokenizer}"),
        Bad("convert llama2c", "OUT_DIR", Empty, AFile, DevNull, Fifo),
        Good("convert llama2c", "OUT_DIR", "{out}/a/b"),
        Bad("convert llama2c", "--overwrite", Garbage),
        Good("convert llama2c", "--overwrite", "true"),

        Bad("train", "--init", Empty, Missing, Folder, AFile, DevNull, Fifo, Garbage, "{out}/new", "{out}"),
        Good("train", "--init", "{fixture}", "{run}"),
        Bad("train --config", "--config", Empty, Missing, Folder, AFile, DevNull, DevZero, Fifo, Garbage, "{huge config}", "{binary}"),
        Good("train --config", "--config", "{fixture}/config.json", "{fixture}"),
        Bad("train --resume", "--resume", Empty, Missing, Folder, AFile, DevNull, Fifo, "{fixture}", "{out}"),
        Good("train --resume", "--resume", "{run}"),
        Bad("train", "--objective", Empty, Garbage, "AR"),
        Good("train", "--objective", "ar", "diffusion"),
        Bad("train", "--data", Empty, Missing, Folder, AFile, DevNull, DevZero, Fifo, "{wide shard}"),
        Good("train", "--data", "{shard}"),
        Bad("train", "--steps", Empty, Negative, Zero, NaN, Inf, NegInf, Huge, Garbage, "9223372036854775808"),
        Good("train", "--steps", "1", "2"),
        Bad("train", "--batch", Empty, Negative, Zero, IntMax, LongMax, NaN, Inf, Huge, Garbage, "1073741824", "10000000"),
        Good("train", "--batch", "1", "3"),
        Bad("train", "--seq-len", Empty, Negative, Zero, "1", IntMax, LongMax, NaN, Garbage, "65"),
        Good("train", "--seq-len", "2", "64"),
        Bad("train", "--lr", Empty, Negative, Zero, NaN, Inf, NegInf, Huge, Garbage),
        Good("train", "--lr", "1e-3", "1e-45"),
        Diverges("train", "--lr", IntMax, LongMax),
        Bad("train", "--warmup", Empty, Negative, NaN, Inf, Garbage, "9223372036854775808"),
        Good("train", "--warmup", Zero, "5"),
        Bad("train", "--schedule", Empty, Garbage),
        Good("train", "--schedule", "cosine", "constant"),
        Bad("train", "--anneal-steps", Empty, Negative, NaN, Inf, Garbage, "9223372036854775808"),
        Good("train", "--anneal-steps", Zero, "3", LongMax),
        Bad("train", "--grad-accum", Empty, Negative, Zero, LongMax, NaN, Inf, Garbage),
        Good("train", "--grad-accum", "1", "2"),
        Bad("train", "--eval-every", Empty, Negative, Zero, NaN, Inf, Garbage, "9223372036854775808"),
        Good("train", "--eval-every", "1"),
        Bad("train", "--eval-batches", Empty, Negative, Zero, LongMax, NaN, Inf, Garbage),
        Good("train", "--eval-batches", "1", IntMax),
        Bad("train", "--seed", Empty, Negative, NaN, Inf, Garbage, "18446744073709551616"),
        Good("train", "--seed", Zero, "18446744073709551615"),
        Bad("train", "--mask-token", Empty, Negative, "512", IntMax, LongMax, NaN, Garbage),
        Good("train", "--mask-token", "3", "new"),
        Bad("train", "--weight-decay", Empty, Negative, NaN, Inf, Huge, Garbage, "5000"),
        Good("train", "--weight-decay", Zero, "0.1"),
        Bad("train", "--clip", Empty, Negative, NaN, Inf, Huge, Garbage),
        Good("train", "--clip", Zero, "1", IntMax),
        Bad("train", "--val-fraction", Empty, Negative, Zero, "1", IntMax, NaN, Inf, Garbage),
        Good("train", "--val-fraction", "0.05", "0.5"),
        Bad("train", "--recipe", Empty, Garbage),
        Good("train", "--recipe", "annealed", "no-anneal"),
        Bad("train", "--out", Empty, AFile, DevNull, Fifo, "{fixture}", "{run}"),
        Good("train", "--out", "{out}/a/b", "{out}"),
        Bad("train", "--overwrite", Garbage),
        Good("train", "--overwrite", "true"),
        Bad("train", "--keep", Empty, Negative, Zero, LongMax, NaN, Garbage),
        Good("train", "--keep", "1", IntMax),
        Bad("train", "--max-loss", Empty, Negative, Zero, NaN, Inf, Garbage),
        Good("train", "--max-loss", "1e5", IntMax, Huge),
        Diverges("train", "--max-loss", "1e-9"),
        Bad("train", "--tokenizer", Empty, Missing, Folder, AFile, DevNull, DevZero, Fifo),
        Good("train", "--tokenizer", "{gpt2}"),
        Bad("train", "--device", Empty, Garbage),
        Good("train", "--device", "cpu"),
        Bad("train", "--precision", Empty, Garbage, "tf32"),
        Good("train", "--precision", "f32"),
        Bad("train", "--weights", Empty, Garbage, "bf16", "f16"),
        Good("train", "--weights", "auto", "f32"),
        Good("train --lora", "--weights", "auto", "bf16", "f16"),
        Bad("train", "--save-dtype", Empty, Garbage, "auto"),
        Good("train", "--save-dtype", "f32", "bf16", "f16"),
        Bad("train --resume", "--weights", "f32"),
        Bad("train --resume", "--save-dtype", "bf16"),
        Bad("train --resume", "--steps", Zero, Negative, Garbage),
        Good("train --resume", "--steps", "1", "2"),
        Bad("train --resume", "--lr", "1e-3"),
        Bad("train --resume", "--out", "{out}/elsewhere"),
        Good("train --resume", "--keep", "2"),
        Good("train --resume", "--data", "{shard}"),
        Bad("generate --sft-prompt", "--sft-prompt", "{long text}"),
        Good("generate --sft-prompt", "--sft-prompt", Empty, "x", Garbage),
        Bad("generate --sft-prompt", "--cutoff", Empty, Negative, Zero, "3", "4", "11", NaN, Garbage),
        Good("generate --sft-prompt", "--cutoff", "12", "64", IntMax),
        Bad("generate --sft-prompt", "--sft-tokens", Empty, Garbage, "1,2,3", "0,1,2,512"),
        Good("generate --sft-prompt", "--sft-tokens", "0,1,2,3"),
        Bad("generate --sft-prompt", "--prompt", "x"),
        Bad("generate --sft-prompt", "--infill", "a <mask:2> b"),
        Bad("data gsm8k-symbolic", "INPUT", Empty, Missing, Folder, AFile, DevNull, DevZero, Fifo, "{binary}", "{shard}", "{in}/sft.jsonl"),
        Good("data gsm8k-symbolic", "INPUT", "{gsm8k}"),
        Bad("data gsm8k-symbolic", "--out", Empty, Folder, DevNull, DevFull, Fifo, MissingFolder, AFile, "{gsm8k}"),
        Good("data gsm8k-symbolic", "--out", "{out}/other.json"),
        Bad("data gsm8k-symbolic", "--overwrite", Garbage),
        Good("data gsm8k-symbolic", "--overwrite", "true"),
        Bad("train --sft", "--sft", Empty, Missing, Folder, AFile, DevNull, DevZero, Fifo, "{binary}", "{in}/sft-missing.jsonl", "{in}/sft-empty.json",
            "{in}/sft-number.jsonl", "{in}/sft-one.jsonl", "{shard}"),
        Good("train --sft", "--sft", "{sft}", "{in}/sft.jsonl"),
        Bad("train --sft", "--cutoff", Empty, Negative, Zero, "3", "65", IntMax, NaN, Garbage),
        Good("train --sft", "--cutoff", "4", "64"),
        Bad("train --sft", "--sft-tokens", Empty, Garbage, "1,2,3", "1,2,3,4,5", "1,2,3,512", "-1,2,3,4", "a,b,c,d"),
        Good("train --sft", "--sft-tokens", "0,1,2,3", "511,511,511,511"),
        Bad("train --lora", "--lora-rank", Empty, Negative, Zero, "65537", NaN, Garbage),
        Good("train --lora", "--lora-rank", "1", "8"),
        Bad("train --lora", "--lora-alpha", Empty, Negative, Zero, NaN, Inf, Huge, Garbage),
        Good("train --lora", "--lora-alpha", "0.5", "64"),
        Bad("train --lora", "--lora-targets", Empty, Garbage, "ATTN"),
        Good("train --lora", "--lora-targets", "attn", "mlp", "all"),
        Bad("train --lora", "--lora-train-embeddings", Garbage),
        Good("train --lora", "--lora-train-embeddings", "true"),
        Bad("train", "--lora-alpha", "4"),
        Bad("merge", "--model", Empty, Missing, AFile, DevNull, Fifo),
        Good("merge", "--model", "{fixture}"),
        Bad("merge", "--adapter", Empty, Missing, Folder, "{fixture}"),
        Good("merge", "--adapter", "{fixture}/lora"),
        Bad("merge", "--out", Empty, Folder, AFile, DevNull, MissingFolder),
        Good("merge", "--out", "{out}/other"),
        Bad("merge", "--tokenizer", Empty, Missing),
        Good("merge", "--tokenizer", "{gpt2}"),
        Bad("merge", "--device", Empty, Garbage),
        Good("merge", "--device", "cpu"),
        Bad("merge", "--save-dtype", Empty, Garbage, "auto"),
        Good("merge", "--save-dtype", "f32", "bf16", "f16"),
        Bad("train --sft", "--seq-len", "16"),
        Bad("train --sft", "--data", "{shard}"),

        Bad("eval", "--model", Empty, Missing, Folder, AFile, DevNull, Fifo, Garbage),
        Good("eval", "--model", "{fixture}"),
        Bad("eval", "--adapter", Empty, Missing),
        Good("eval", "--adapter", "{fixture}/lora"),
        Bad("eval", "--task", Empty, Garbage, ",", "winogrande", "triviaqa", "squad", "unconditional"),
        Good("eval", "--task", "piqa,siqa", "lambada", "hellaswag", "rocstories", "gsm8k", "PIQA"),
        Bad("eval", "--limit", Empty, Negative, Zero, LongMax, NaN, Inf, Garbage),
        Good("eval", "--limit", "1", IntMax),
        Bad("eval", "--steps", Empty, Negative, Zero, LongMax, NaN, Garbage, "2,4", "1,,2"),
        Good("eval", "--steps", "1", "3"),
        Bad("eval", "--scorer", Empty, Garbage, "AR"),
        Good("eval", "--scorer", "auto", "diffusion", "elbo", "ar"),
        Bad("eval", "--samples", Empty, Negative, Zero, IntMax, NaN, Garbage),
        Good("eval", "--samples", "1", "2"),
        Bad("eval", "--batch", Empty, Negative, Zero, IntMax, NaN, Garbage),
        Good("eval", "--batch", "1", "3"),
        Bad("eval", "--seed", Empty, Negative, NaN, Garbage, "18446744073709551616"),
        Good("eval", "--seed", Zero, LongMax),
        Bad("eval", "--out", Empty, AFile, DevNull, Fifo),
        Good("eval", "--out", "{out}/eval", "{out}/a/b"),
        Bad("eval", "--overwrite", Garbage),
        Good("eval", "--overwrite", "true"),
        Bad("eval", "--data", Empty, Missing, Folder, DevNull, DevZero, Fifo, "{binary}"),
        Bad("eval", "--eval-data", Empty, Missing, AFile, DevNull),
        Good("eval", "--eval-data", "{eval}"),
        Bad("eval", "--judge", Empty, Missing, Folder, AFile, DevNull, Fifo),
        Bad("eval", "--length", Empty, Negative, Zero, IntMax, NaN, Garbage),
        Good("eval", "--length", "1"),
        Bad("eval", "--mask-token", Empty, Negative, "512", IntMax, NaN, Garbage),
        Good("eval", "--mask-token", "3"),
        Bad("eval", "--cache", Empty, Garbage, "Prefix"),
        Good("eval", "--cache", "none", "prefix", "dual"),
        Bad("eval", "--threshold", Empty, Negative, Zero, NaN, Inf, Garbage, "2"),
        Good("eval", "--threshold", "0.9", "1"),
        Bad("eval", "--tokenizer", Empty, Missing, Folder, AFile, DevNull, DevZero, Fifo),
        Good("eval", "--tokenizer", "{gpt2}"),
        Bad("eval", "--device", Empty, Garbage),
        Good("eval", "--device", "cpu"),
        Bad("eval", "--precision", Empty, Garbage, "tf32"),
        Good("eval", "--precision", "f32"),
        Bad("eval", "--weights", Empty, Garbage),
        Good("eval", "--weights", "auto", "bf16"),
        Bad("eval unconditional", "--judge", Empty, Missing, Folder, AFile, DevNull, Fifo),
        Good("eval unconditional", "--judge", "{fixture}"),
        Bad("eval unconditional", "--steps", Zero, "2,0"),
        Good("eval unconditional", "--steps", "1,2", "3"),
        Bad("eval unconditional", "--length", Zero, "64", IntMax),
        Good("eval unconditional", "--length", "1", "63"),
        Bad("eval unconditional", "--scorer", "ar"),
        Good("eval unconditional", "--scorer", "diffusion", "elbo"),
    ];

    static string Fixture => Gpt2FixtureTests.FixtureDir;
    static string SharedData => TestUtil.SharedData;

    string input = null!, output = null!, shard = null!;

    [OneTimeSetUp]
    public void CreateInputs()
    {
        input = Directory.CreateTempSubdirectory("diffu-hostile-in-").FullName;
        File.WriteAllText(Path.Combine(input, "in.txt"), "Once upon a time.\n\nThe end.");
        File.WriteAllBytes(Path.Combine(input, "binary.txt"), [(byte)'a', 0xFF, 0xC3, 0x28]);
        Directory.CreateDirectory(Path.Combine(input, "folder"));
        IO.OutputFileTests.MakeFifo(Path.Combine(input, "fifo"));
        shard = CliRun.StoriesShard(input);
        var wide = CliRun.Run("tokenize", "--tokenizer", Path.Combine(SharedData, "tokenizers", "gpt2"), "--out", Path.Combine(input, "wide.tok"), Path.Combine(input, "stories.txt"));
        Assert.That(wide.Code, Is.EqualTo(0), wide.Err);
        File.WriteAllText(Path.Combine(input, "sft.json"), """[{"instruction": "1 + 2", "output": "<<1+2=3>> #### 3"}, {"instruction": "2 * 3", "output": "<<2*3=6>> #### 6"}]""");
        File.WriteAllText(Path.Combine(input, "sft.jsonl"), "{\"src\": \"a b\", \"tgt\": \"c\"}\n\n{\"src\": \"d\", \"tgt\": \"e f\"}\n");
        File.WriteAllText(Path.Combine(input, "sft-missing.jsonl"), "{\"src\": \"a\", \"tgt\": \"b\"}\n{\"src\": \"a\"}\n");
        File.WriteAllText(Path.Combine(input, "sft-empty.json"), """[{"instruction": "", "output": "x"}, {"instruction": "y", "output": "z"}]""");
        File.WriteAllText(Path.Combine(input, "sft-number.jsonl"), "{\"src\": \"a\", \"tgt\": 3}\n");
        File.WriteAllText(Path.Combine(input, "sft-one.jsonl"), "{\"src\": \"a\", \"tgt\": \"b\"}\n");
        File.WriteAllText(Path.Combine(input, "huge.json"), """{"model_type": "gpt2", "vocab_size": 512, "n_positions": 64, "n_embd": 64, "n_layer": 1000000000, "n_head": 4}""");
        var made = CliRun.Run([.. CommandLine("train", "--out", Path.Combine(input, "run-template"))]);
        Assert.That(made.Code, Is.EqualTo(0), made.Err);
    }

    [OneTimeTearDown]
    public void DeleteInputs() => Directory.Delete(input, recursive: true);

    [SetUp]
    public void CreateOutputFolder() => output = Directory.CreateTempSubdirectory("diffu-hostile-out-").FullName;

    [TearDown]
    public void DeleteOutputFolder() => Directory.Delete(output, recursive: true);

    string Resolve(string value) => (value.Contains("{run}") ? value.Replace("{run}", CopyOfTemplateRun()) : value)
        .Replace("{in}", input).Replace("{out}", output).Replace("{fixture}", Fixture)
        .Replace("{gpt2}", Path.Combine(SharedData, "tokenizers", "gpt2"))
        .Replace("{stories}", Path.Combine(SharedData, "llama2c", "stories260K.bin"))
        .Replace("{tok512}", Path.Combine(SharedData, "llama2c", "tok512.bin"))
        .Replace("{llama-tokenizer}", Path.Combine(SharedData, "llama2c", "tokenizer.model"))
        .Replace("{binary}", Path.Combine(input, "binary.txt"))
        .Replace("{eval}", Path.Combine(SharedData, "eval"))
        .Replace("{shard}", shard).Replace("{wide shard}", Path.Combine(input, "wide.tok")).Replace("{sft}", Path.Combine(input, "sft.json"))
        .Replace("{long text}", string.Join(' ', Enumerable.Repeat("word", 60)))
        .Replace("{gsm8k}", Path.Combine(SharedData, "eval", "gsm8k", "test.jsonl"))
        .Replace("{huge config}", Path.Combine(input, "huge.json"))

        .Replace("{64 ids}", string.Join(",", Enumerable.Repeat(7, 64)))
        .Replace("{65 ids}", string.Join(",", Enumerable.Repeat(7, 65)))
        .Replace("{70 words}", string.Join(" ", Enumerable.Repeat("word", 70)));

    /// <summary>A fresh copy of the one-step run made at set-up, in this case's output folder (a case may continue it).</summary>
    string CopyOfTemplateRun()
    {
        var copy = Path.Combine(output, "run");
        if (Directory.Exists(copy)) return copy;
        var template = Path.Combine(input, "run-template");
        foreach (var file in Directory.EnumerateFiles(template, "*", SearchOption.AllDirectories))
        {
            var to = Path.Combine(copy, Path.GetRelativePath(template, file));
            Directory.CreateDirectory(Path.GetDirectoryName(to)!);
            File.Copy(file, to);
        }
        return copy;
    }

    /// <summary>The command line of a case: the base's valid arguments with the row's one replaced (or added), options before arguments.</summary>
    string[] CommandLine(string baseName, string name, string value)
    {
        var (path, valid) = Bases[baseName];
        var values = valid.ToList();
        int at = values.FindIndex(v => v.Name == name);
        if (at >= 0) values[at] = (name, value);
        else values.Add((name, value));
        var args = new List<string>(path);
        foreach (var (n, v) in values.Where(v => v.Name.StartsWith("--"))) args.AddRange([n, Resolve(v)]);
        args.AddRange(values.Where(v => !v.Name.StartsWith("--")).Select(v => Resolve(v.Value)));
        return [.. args];
    }

    static IEnumerable<TestCaseData> Cases() =>
        Table.SelectMany(row => row.Values.Select(value =>
            new TestCaseData(row.Base, row.Name, value, row.Expected)
                .SetName($"{row.Base} {row.Name} {(value.Length == 0 ? "(empty)" : value.ReplaceLineEndings("⏎"))} -> {row.Expected}")));

    [TestCaseSource(nameof(Cases))]
    public void HostileValue(string baseName, string name, string value, Outcome expected)
    {
        var args = CommandLine(baseName, name, value);
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        // A command that opens a FIFO or reads /dev/zero never returns: that is a failure, not a hang.
        var run = Task.Run(() => DiffuSharp.Cli.Cli.Run(args, stdout, stderr));
        Assert.That(run.Wait(TimeSpan.FromSeconds(60)), Is.True, "the command did not return: it read a special file");
        string err = stderr.ToString();
        Assert.That(err, Does.Not.Contain("internal error").And.Not.Contain("   at "), "no stack trace");
        if (expected == Outcome.Exit0)
        {
            Assert.That(run.Result, Is.EqualTo(0), err);
            return;
        }
        var lines = err.TrimEnd('\n').Split('\n');
        if (expected == Outcome.Exit3)
        {
            Assert.That(run.Result, Is.EqualTo(3), err);
            Assert.That(lines[^1], Does.StartWith("error: ").And.Contain("the last checkpoint is kept"), "the run's banner, then one line");
            return;
        }
        Assert.That(run.Result, Is.EqualTo(2), err);
        Assert.That(lines, Has.Length.EqualTo(1), "exactly one line on stderr");
        Assert.That(err, Does.StartWith("error: "));
    }

    /// <summary>Every option and argument of the real command tree has a row, and every row names one.</summary>
    [Test]
    public void EveryOptionHasARow()
    {
        var root = DiffuSharp.Cli.Cli.CreateRoot(TextWriter.Null, TextWriter.Null);
        var symbols = new List<string>();
        void Walk(Command command, string path)
        {
            foreach (var option in command.Options.Where(o => o is not HelpOption and not VersionOption)) symbols.Add($"{path} {option.Name}");
            foreach (var argument in command.Arguments) symbols.Add($"{path} {argument.Name}");
            foreach (var sub in command.Subcommands) Walk(sub, $"{path} {sub.Name}".Trim());
        }
        Walk(root, "");
        var covered = Table.Select(r => $"{string.Join(' ', Bases[r.Base].Path)} {r.Name}").ToHashSet();
        Assert.That(symbols.Where(s => !covered.Contains(s)), Is.Empty, "options without a row in the table");
        Assert.That(covered.Where(c => !symbols.Contains(c)), Is.Empty, "rows that name no option");
        Assert.That(Table.Where(r => r.Values.Length == 0), Is.Empty);
    }
}
