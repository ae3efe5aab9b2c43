using System.Diagnostics;

namespace DiffuSharp.Training;

/// <summary>
/// Named instants inside checkpointing and logging where the crash-consistency tests kill the process.
/// With DIFFU_CRASH_AT=NAME (or NAME#K, the K-th time it is reached) the process sends itself SIGKILL
/// there: no finally block, flush or handler runs, exactly as when the machine's owner kills the run.
/// Without the variable, reaching a point costs one comparison.
/// </summary>
public static class CrashPoints
{
    public const string Variable = "DIFFU_CRASH_AT";

    static readonly (string Name, int Occurrence)? Target = Parse(Environment.GetEnvironmentVariable(Variable));
    static int reached;

    public static void Reach(string name)
    {
        if (Target is not { } target || target.Name != name) return;
        if (Interlocked.Increment(ref reached) == target.Occurrence) Process.GetCurrentProcess().Kill();
    }

    static (string, int)? Parse(string? value)
    {
        if (string.IsNullOrEmpty(value)) return null;
        int hash = value.IndexOf('#');
        return hash < 0 ? (value, 1) : (value[..hash], int.TryParse(value[(hash + 1)..], out int k) && k > 0 ? k : 1);
    }
}
