using System.CommandLine;
using DiffuSharp.IO;
using DiffuSharp.Models;
using Spectre.Console;

namespace DiffuSharp.Cli;

/// <summary>`diffu info PATH`: config, tensor names, shapes, dtypes and the parameter count of a checkpoint.</summary>
static class InfoCommand
{
    public static Command Create(TextWriter stdout)
    {
        var path = Cli.NonEmpty(new Argument<string>("path") { Description = "a model folder or a .safetensors file" });
        var command = new Command("info", "print a checkpoint's config, tensors and parameter count") { path };
        command.SetAction(parse => Run(parse.GetValue(path)!, stdout));
        return command;
    }

    static int Run(string path, TextWriter stdout)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(stdout) });
        var kind = FileStatus.Kind(path);
        if (kind == FileKind.Missing) throw new DiffuException($"{path}: no such file or folder");
        if (kind == FileKind.Directory)
        {
            path = RunLayout.ModelFolder(path);
            ModelFolder.RequireRegularFiles(path, "model file");
        }
        else FileStatus.RequireRegularFile(path, "checkpoint");
        var configPath = Directory.Exists(path) ? Path.Combine(path, "config.json") : null;
        if (configPath is not null && File.Exists(configPath))
        {
            var grid = new Grid().AddColumn().AddColumn();
            foreach (var (label, value) in ModelFamily.ForConfigFile(configPath).Describe(ModelFamily.LoadConfigFile(configPath)))
                grid.AddRow(label, Markup.Escape(value));
            console.Write(new Panel(grid).Header(Markup.Escape(configPath)));
        }

        using var checkpoint = SafeTensorsCheckpoint.Open(path);
        var table = new Table().AddColumn("tensor").AddColumn("dtype").AddColumn("shape").AddColumn(new TableColumn("elements").RightAligned());
        long total = 0;
        foreach (var t in checkpoint.Tensors)
        {
            table.AddRow(Markup.Escape(t.Name), t.DType.ToString(), Markup.Escape("[" + string.Join(", ", t.Shape) + "]"), t.ElementCount.ToString("N0"));
            total += t.ElementCount;
        }
        console.Write(table);
        foreach (var (k, v) in checkpoint.Metadata) console.MarkupLine($"metadata [grey]{Markup.Escape(k)}[/] = {Markup.Escape(v)}");
        console.MarkupLine($"{checkpoint.Tensors.Count} tensors in {checkpoint.Files.Count} file(s), {total:N0} parameters stored");
        return Cli.Ok;
    }
}
