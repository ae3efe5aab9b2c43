using System.Globalization;
using DiffuSharp.Eval;

namespace DiffuSharp.Cli;

/// <summary>The paper's Fig. 3 for one model: generative perplexity and distinct-2 against the number of denoising steps T.</summary>
static class UnconditionalPlot
{
    public static byte[] Png(TaskResult result)
    {
        var steps = result.Metrics.Keys.Where(k => k.StartsWith("gen_ppl@T", StringComparison.Ordinal))
            .Select(k => int.Parse(k["gen_ppl@T".Length..], CultureInfo.InvariantCulture)).Order().ToArray();
        var x = steps.Select(t => (double)t).ToArray();
        var plot = new ScottPlot.Plot();
        var ppl = plot.Add.Scatter(x, steps.Select(t => result.Metrics[$"gen_ppl@T{t}"]).ToArray());
        ppl.LegendText = "generative perplexity (left)";
        var distinct = plot.Add.Scatter(x, steps.Select(t => result.Metrics[$"distinct2@T{t}"]).ToArray());
        distinct.LegendText = "distinct-2, % (right)";
        distinct.Axes.YAxis = plot.Axes.Right;
        plot.Axes.Bottom.Label.Text = "denoising steps T";
        plot.Axes.Left.Label.Text = "generative perplexity";
        plot.Axes.Right.Label.Text = "distinct-2 (%)";
        plot.Title($"unconditional samples ({result.Count} per T)");
        plot.ShowLegend();
        return plot.GetImageBytes(900, 560, ScottPlot.ImageFormat.Png);
    }
}
