using DiffuSharp.Training;
using Spectre.Console;

namespace DiffuSharp.Cli;

/// <summary>Shows a training run: a live progress bar on a terminal, a line every so often otherwise.</summary>
static class ProgressView
{
    public static void Run(Trainer trainer, RunFolder run, IReadOnlyList<(string Name, byte[] Bytes)> tokenizer, Action<IReadOnlyList<TrainLogRow>> plot, TextWriter stdout)
    {
        var o = trainer.Options;
        long first = trainer.Step, total = o.Steps;
        string Describe(TrainLogRow r) =>
            $"step {r.Step}/{total} loss {r.Loss ?? double.NaN:F4} ce {r.Ce ?? double.NaN:F3}{(r.ValLoss is double v ? $" val {v:F4} val-ce {r.ValCe:F3}" : "")} lr {r.Lr:0.###e0} {r.TokensPerSecond:N0} tok/s";

        bool interactive = AnsiConsole.Profile.Capabilities.Interactive && ReferenceEquals(stdout, Console.Out);
        if (!interactive)
        {
            long every = Math.Max(1, (total - first) / 20);
            trainer.Run(run, tokenizer, row =>
            {
                if (row.Step % every == 0 || row.ValLoss is not null || row.Step == total) stdout.WriteLine(Describe(row));
            }, plot);
            return;
        }
        AnsiConsole.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(),
                new ElapsedTimeColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .Start(context =>
            {
                var task = context.AddTask($"step {first}/{total}", maxValue: total);
                task.Value = first;
                trainer.Run(run, tokenizer, row =>
                {
                    task.Description = Markup.Escape(Describe(row));
                    task.Value = row.Step;
                }, plot);
            });
    }
}
