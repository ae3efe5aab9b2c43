using DiffuSharp.Training;

namespace DiffuSharp.Cli;

/// <summary>The loss curve of a run as a PNG: training loss per step and validation loss at each evaluation.</summary>
static class LossPlot
{
    public const string FileName = "loss.png";

    public static void Write(string path, IReadOnlyList<TrainLogRow> rows, string title)
    {
        var plot = new ScottPlot.Plot();
        var train = rows.Where(r => r.Loss is double l && double.IsFinite(l)).ToArray();
        var validation = rows.Where(r => r.ValLoss is double v && double.IsFinite(v)).ToArray();
        if (train.Length > 0)
        {
            var line = plot.Add.Scatter(train.Select(r => (double)r.Step).ToArray(), train.Select(r => r.Loss!.Value).ToArray());
            line.LegendText = "train";
            line.MarkerSize = train.Length > 50 ? 0 : 4;
        }
        if (validation.Length > 0)
        {
            var points = plot.Add.Scatter(validation.Select(r => (double)r.Step).ToArray(), validation.Select(r => r.ValLoss!.Value).ToArray());
            points.LegendText = "validation";
            points.MarkerSize = 7;
        }
        plot.Title(title);
        plot.XLabel("optimizer step");
        plot.YLabel("loss");
        plot.ShowLegend();
        string temp = path + ".tmp.png";
        plot.SavePng(temp, 900, 560);
        File.Move(temp, path, overwrite: true);
    }
}
