using DiffuSharp.Training;

namespace DiffuSharp.Cli;

/// <summary>
/// The loss curve of a run as a PNG: training loss per step and validation loss at each evaluation; for
/// diffusion also the mean cross-entropy of the masked tokens (the loss without the 1/t weight).
/// </summary>
static class LossPlot
{
    public static void Write(string path, IReadOnlyList<TrainLogRow> rows, string title, bool showCrossEntropy)
    {
        var plot = new ScottPlot.Plot();
        Series(plot, rows, r => r.Loss, "train loss", false);
        Series(plot, rows, r => r.ValLoss, "validation loss", true);
        if (showCrossEntropy)
        {
            Series(plot, rows, r => r.Ce, "train masked-token CE", false);
            Series(plot, rows, r => r.ValCe, "validation masked-token CE", true);
        }
        plot.Title(title);
        plot.XLabel("optimizer step");
        plot.YLabel("loss (nats)");
        plot.ShowLegend();
        File.WriteAllBytes(path, plot.GetImageBytes(900, 560, ScottPlot.ImageFormat.Png));
    }

    static void Series(ScottPlot.Plot plot, IReadOnlyList<TrainLogRow> rows, Func<TrainLogRow, double?> value, string label, bool markers)
    {
        var points = rows.Where(r => value(r) is double v && double.IsFinite(v)).ToArray();
        if (points.Length == 0) return;
        var line = plot.Add.Scatter(points.Select(r => (double)r.Step).ToArray(), points.Select(r => value(r)!.Value).ToArray());
        line.LegendText = label;
        line.MarkerSize = markers ? 7 : points.Length > 50 ? 0 : 4;
    }
}
