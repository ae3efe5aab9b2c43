using System.CommandLine;
using DiffuSharp.Data;
using DiffuSharp.IO;

namespace DiffuSharp.Cli;

/// <summary>`diffu data`: training data in the forms the paper's recipes use.</summary>
static class DataCommand
{
    public static Command Create(TextWriter stdout)
    {
        var input = Cli.NonEmpty(new Argument<string>("INPUT") { Description = "GSM8K JSON Lines with \"question\" and \"answer\" (e.g. ../shared/data/eval/gsm8k/train.jsonl)" });
        var output = Cli.NonEmpty(new Option<string>("--out") { Description = "the SFT file to write: a JSON array of {\"instruction\", \"output\"} for `diffu train --sft`", Required = true });
        var overwrite = new Option<bool>("--overwrite") { Description = "replace an existing --out file" };
        var gsm = new Command("gsm8k-symbolic", "GSM8K worked answers in the paper's symbolic form: the <<calculations>> joined by spaces, then #### answer")
        {
            input, output, overwrite,
        };
        gsm.SetAction(parse => RunGsm8k(parse.GetValue(input)!, parse.GetValue(output)!, parse.GetValue(overwrite), stdout));
        return new Command("data", "make training data") { gsm };
    }

    static int RunGsm8k(string input, string output, bool overwrite, TextWriter stdout)
    {
        FileStatus.RequireRegularFile(input, "input file");
        OutputFile.Check(output, "--out", [input]);
        if (!overwrite && FileStatus.Kind(output) != FileKind.Missing)
            throw new DiffuException($"--out {output} already exists: pass --overwrite to replace it");
        var result = Gsm8kSymbolic.ConvertFile(input);
        OutputFile.Write(output, "--out", stream => Gsm8kSymbolic.Write(stream, result.Pairs), [input]);
        stdout.WriteLine($"{input}: {result.Rows:N0} rows, converted {result.Pairs.Count:N0} ({100.0 * result.Pairs.Count / result.Rows:F1}%), "
            + $"{result.WithoutCalculations:N0} of them without a <<calculation>> (kept as \" #### answer\"); left out {result.WithoutAnswer:N0} without a final answer after ####");
        stdout.WriteLine($"wrote {output}");
        return Cli.Ok;
    }
}
