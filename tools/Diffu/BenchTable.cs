using DiffuSharp.Bench;
using Spectre.Console;

namespace DiffuSharp.Cli;

/// <summary>The bench report as a terminal table: our rate, its share of the device's ceiling, the references' rates and the ratio.</summary>
static class BenchTable
{
    public static void Write(BenchReport report, TextWriter stdout)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(stdout) });
        if (!ReferenceEquals(stdout, Console.Out) || !console.Profile.Capabilities.Interactive) console.Profile.Width = 200;
        var c = report.Ceilings;
        string library = report.Library ?? $"none ({report.LibraryAbsent})";
        string torch = report.TorchVersion is not null ? $"PyTorch {report.TorchVersion} on {report.TorchDevice}" : $"none ({report.TorchError})";
        var table = new Table()
            .Title(Markup.Escape($"diffu bench on {report.Device}"))
            .Caption(Markup.Escape($"ceilings: {c.PeakGflops:N0} GFLOP/s fp32, {c.BandwidthGBs:N0} GB/s ({c.Method}). library: {library}. reference: {torch}. "
                + "ratio: ours / library where there is one, else / PyTorch; % ceiling: FLOPs (model FLOPs utilisation for train/denoise/eval) or bytes."))
            .AddColumn("suite").AddColumn("op").AddColumn("shape")
            .AddColumn(new TableColumn("ours").RightAligned()).AddColumn(new TableColumn("% ceiling").RightAligned())
            .AddColumn(new TableColumn("library").RightAligned()).AddColumn(new TableColumn("PyTorch").RightAligned())
            .AddColumn(new TableColumn("ratio").RightAligned());
        foreach (var r in report.Rows)
        {
            table.AddRow(Markup.Escape(r.Suite), Markup.Escape(r.Label), Markup.Escape(r.Shape),
                Markup.Escape(r.Ours is Measured o ? $"{Rate(o.Rate)} {r.Unit}" : r.OursError is string failed ? Short(failed) : "-"),
                r.Ours is Measured s ? $"{100 * s.Share:F1}%" : "-",
                r.Library is Measured l ? Rate(l.Rate) : "-",
                Markup.Escape(r.Torch is Measured t ? Rate(t.Rate) : r.TorchError is string e ? Short(e) : "-"),
                r.Ratio is double ratio ? $"{ratio:F2}" : "-");
        }
        console.Write(table);
    }

    /// <summary>The same rows as a Markdown table with the machine, date, command and references above it (for BENCHMARKS.md).</summary>
    public static string Markdown(BenchReport report)
    {
        var c = report.Ceilings;
        var text = new System.Text.StringBuilder();
        text.AppendLine($"- device: {report.Device}; machine: {report.Machine}");
        text.AppendLine($"- date: {report.Date:yyyy-MM-dd HH:mm zzz}; command: `{report.Command}`");
        text.AppendLine($"- ceilings (measured in the run): {c.PeakGflops:N0} GFLOP/s fp32, {c.BandwidthGBs:N0} GB/s ({c.Method})");
        text.AppendLine($"- library: {report.Library ?? $"none ({report.LibraryAbsent})"}; PyTorch: "
            + (report.TorchVersion is not null ? $"{report.TorchVersion} on {report.TorchDevice}" : $"none ({report.TorchError})"));
        text.AppendLine();
        text.AppendLine("| suite | op | shape | ours | % ceiling | library | PyTorch | ratio |");
        text.AppendLine("|---|---|---|--:|--:|--:|--:|--:|");
        foreach (var r in report.Rows)
            text.AppendLine($"| {r.Suite} | {r.Label} | {r.Shape} | {(r.Ours is Measured o ? $"{Rate(o.Rate)} {r.Unit}" : r.OursError is string failed ? Short(failed) : "-")} | "
                + $"{(r.Ours is Measured s ? $"{100 * s.Share:F1}%" : "-")} | {(r.Library is Measured l ? Rate(l.Rate) : "-")} | "
                + $"{(r.Torch is Measured t ? Rate(t.Rate) : r.TorchError is string e ? Short(e) : "-")} | {(r.Ratio is double ratio ? $"{ratio:F2}" : "-")} |");
        return text.ToString();
    }

    static string Rate(double v) => v >= 1000 ? v.ToString("N0") : v >= 10 ? v.ToString("F1") : v.ToString("F3");

    static string Short(string text) => text.Length > 24 ? text[..24] + "…" : text;
}
