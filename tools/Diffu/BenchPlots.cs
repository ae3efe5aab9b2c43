using DiffuSharp.Bench;
using DiffuSharp.IO;
using ScottPlot;

namespace DiffuSharp.Cli;

/// <summary>
/// Plots of a bench report: square-matmul and attention throughput against size (ours solid, references
/// dashed, the device's fp32 ceiling as a line), and every row's rate relative to its reference.
/// </summary>
static class BenchPlots
{
    /// <summary>Every file a report may be plotted to (which of them depends on the suites run).</summary>
    public static readonly string[] FileNames = ["matmul_squares.png", "attention.png", "vs_reference.png"];

    public static IEnumerable<string> Write(BenchReport report, string directory)
    {
        var written = new List<string>();
        var squares = report.Rows.Where(r => r.Suite == "matmul" && r.PlotX > 0).ToList();
        if (squares.Count > 0) written.Add(AgainstSize(report, squares, "matmul_squares.png", "square matmul, fp32", "side M = K = N", directory));
        var attention = report.Rows.Where(r => r.Suite == "attention" && r.PlotX > 0).ToList();
        if (attention.Count > 0) written.Add(AgainstSize(report, attention, "attention.png", "attention, B·L fixed, 12 heads of 64", "sequence length L", directory));
        var compared = report.Rows.Where(r => r.Ratio is not null).ToList();
        if (compared.Count > 0) written.Add(Ratios(report, compared, directory));
        return written;
    }

    static string AgainstSize(BenchReport report, List<BenchRow> rows, string file, string title, string xLabel, string directory)
    {
        var plot = new Plot();
        var palette = new ScottPlot.Palettes.Category10();
        int colour = 0;
        foreach (var series in rows.GroupBy(r => r.Series))
        {
            var color = palette.GetColor(colour++);
            var ordered = series.OrderBy(r => r.PlotX).ToList();
            AddLine(plot, ordered, r => r.Ours?.Rate, $"DiffuSharp {series.Key}", color, LinePattern.Solid);
            AddLine(plot, ordered, r => r.Library?.Rate, $"{LibraryName(report)} {series.Key}", color, LinePattern.Dotted);
            AddLine(plot, ordered, r => r.Torch?.Rate, $"PyTorch {series.Key}", color, LinePattern.Dashed);
        }
        var peak = plot.Add.HorizontalLine(report.Ceilings.PeakGflops);
        peak.LegendText = "measured fp32 FMA ceiling";
        peak.LinePattern = LinePattern.DenselyDashed;
        peak.Color = Colors.Gray;
        plot.Title($"{title} on {report.Device}");
        plot.XLabel(xLabel);
        plot.YLabel("GFLOP/s");
        plot.ShowLegend(Alignment.LowerRight);
        double top = rows.SelectMany(r => new[] { r.Ours?.Rate, r.Library?.Rate, r.Torch?.Rate }).Max(v => v ?? 0);
        plot.Axes.SetLimitsY(0, 1.1 * Math.Max(top, report.Ceilings.PeakGflops));
        return Save(plot, directory, file, 1000, 620);
    }

    /// <summary>"OpenBLAS 0.3.21 DYNAMIC_ARCH ..." as "OpenBLAS 0.3.21" for legends.</summary>
    static string LibraryName(BenchReport report) => string.Join(' ', (report.Library ?? "library").Split(' ').Take(2));

    static void AddLine(Plot plot, List<BenchRow> rows, Func<BenchRow, double?> value, string label, Color color, LinePattern pattern)
    {
        var points = rows.Where(r => value(r) is not null).ToList();
        if (points.Count == 0) return;
        var line = plot.Add.Scatter(points.Select(r => r.PlotX).ToArray(), points.Select(r => value(r)!.Value).ToArray());
        line.LegendText = label;
        line.Color = color;
        line.LinePattern = pattern;
        line.MarkerSize = 6;
    }

    static string Ratios(BenchReport report, List<BenchRow> rows, string directory)
    {
        var plot = new Plot();
        var bars = rows.Select((r, i) => new Bar
        {
            Position = rows.Count - i,
            Value = r.Ratio!.Value,
            FillColor = r.Ratio >= 1 ? Colors.SeaGreen : Colors.IndianRed,
        }).ToList();
        var barPlot = plot.Add.Bars(bars);
        barPlot.Horizontal = true;
        var one = plot.Add.VerticalLine(1);
        one.Color = Colors.Black;
        one.LinePattern = LinePattern.Dashed;
        plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            rows.Select((_, i) => (double)(rows.Count - i)).ToArray(),
            rows.Select(r => $"{r.Label} {r.Shape} ({(r.Library is not null ? "lib" : "torch")})").ToArray());
        plot.Axes.Margins(left: 0, right: 0.05);
        plot.Title($"DiffuSharp rate / reference rate on {report.Device} (>1: faster)");
        plot.XLabel("ratio");
        return Save(plot, directory, "vs_reference.png", 1100, 120 + 22 * rows.Count);
    }

    static string Save(Plot plot, string directory, string file, int width, int height)
    {
        string path = Path.Combine(directory, file);
        using var image = plot.GetImage(width, height);
        byte[] png = image.GetImageBytes(ImageFormat.Png);
        OutputFile.Write(path, "--plots", stream => stream.Write(png));
        return path;
    }
}
