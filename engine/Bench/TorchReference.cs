using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace DiffuSharp.Bench;

/// <summary>The PyTorch timings of a bench run, by case id; Error says why a case (or the whole reference) has none.</summary>
public sealed record TorchTimings(string? Version, string? DeviceName, IReadOnlyDictionary<string, Timed> Results,
    IReadOnlyDictionary<string, string> Errors, string? Error);

/// <summary>
/// Runs tools/bench/torch_reference.py in a Python that has PyTorch, after our own timings (never at the
/// same time: both would share the cores or the GPU). The script and this class share the case ids.
/// </summary>
public static class TorchReference
{
    /// <summary>The reference script next to the program (copied there at build), else in the source tree.</summary>
    public static string? FindScript()
    {
        foreach (var candidate in new[]
                 {
                     Environment.GetEnvironmentVariable("DIFFU_TORCH_SCRIPT"),
                     Path.Combine(AppContext.BaseDirectory, "bench", "torch_reference.py"),
                     Path.Combine(Directory.GetCurrentDirectory(), "tools", "bench", "torch_reference.py"),
                 })
            if (!string.IsNullOrEmpty(candidate) && File.Exists(candidate)) return candidate;
        return null;
    }

    /// <summary>A Python that imports torch: $DIFFU_PYTHON, then python3 on the PATH, then Debian's /usr/bin/python3.</summary>
    public static string? FindPython()
    {
        foreach (var candidate in new[] { Environment.GetEnvironmentVariable("DIFFU_PYTHON"), "python3", "/usr/bin/python3" })
        {
            if (string.IsNullOrEmpty(candidate)) continue;
            try
            {
                var (code, _, _) = RunProcess(candidate, ["-c", "import torch"], null, TimeSpan.FromSeconds(60));
                if (code == 0) return candidate;
            }
            catch (System.ComponentModel.Win32Exception)
            {
                // not installed under that name
            }
        }
        return null;
    }

    public static TorchTimings Run(IReadOnlyList<BenchCase> cases, string torchDevice, int threads, int repeat, double budget,
        string? python, Action<string>? log)
    {
        var wanted = cases.Where(c => c.Torch is not null).ToList();
        var none = new Dictionary<string, Timed>();
        var noErrors = new Dictionary<string, string>();
        if (wanted.Count == 0) return new TorchTimings(null, null, none, noErrors, "no case has a PyTorch reference");
        string? script = FindScript();
        if (script is null) return new TorchTimings(null, null, none, noErrors, "tools/bench/torch_reference.py not found");
        python ??= FindPython();
        if (python is null) return new TorchTimings(null, null, none, noErrors, "no Python with PyTorch (set DIFFU_PYTHON)");

        var input = new JsonArray(wanted.Select(c =>
        {
            var spec = (JsonObject)c.Torch!.DeepClone();
            spec["id"] = c.Id;
            return (JsonNode)spec;
        }).ToArray());
        string[] args = [script, "--device", torchDevice, "--threads", threads.ToString(), "--repeat", repeat.ToString(),
            "--budget", budget.ToString(System.Globalization.CultureInfo.InvariantCulture)];
        int code;
        string stdout, stderr;
        try
        {
            (code, stdout, stderr) = RunProcess(python, args, input.ToJsonString(), TimeSpan.FromHours(2), log);
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            // Ours are measured by now: a Python that cannot start costs the reference column, not the table.
            return new TorchTimings(null, null, none, noErrors, $"could not start {python}: {e.Message}");
        }
        if (code != 0)
            return new TorchTimings(null, null, none, noErrors, $"torch_reference.py exited with {code}: {LastLine(stderr)}");
        try
        {
            var doc = JsonNode.Parse(stdout)!.AsObject();
            var results = new Dictionary<string, Timed>();
            var errors = new Dictionary<string, string>();
            foreach (var (id, node) in doc["results"]!.AsObject())
            {
                var r = node!.AsObject();
                if (r["error"] is JsonNode e) errors[id] = e.GetValue<string>();
                else results[id] = new Timed(r["best"]!.GetValue<double>(), r["median"]!.GetValue<double>(), r["runs"]!.GetValue<int>());
            }
            return new TorchTimings(doc["torch"]?.GetValue<string>(), doc["device"]?.GetValue<string>(), results, errors, null);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or NullReferenceException or FormatException)
        {
            return new TorchTimings(null, null, none, noErrors, $"torch_reference.py wrote unreadable JSON: {e.Message}");
        }
    }

    static string LastLine(string text) => text.TrimEnd().Split('\n').LastOrDefault() ?? "";

    static (int Code, string Stdout, string Stderr) RunProcess(string file, string[] args, string? stdin, TimeSpan timeout, Action<string>? log = null)
    {
        var info = new ProcessStartInfo(file)
        {
            RedirectStandardInput = stdin is not null,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in args) info.ArgumentList.Add(a);
        if (OpenBlas.CoreType is string core) info.Environment["OPENBLAS_CORETYPE"] = core;
        using var process = Process.Start(info) ?? throw new InvalidOperationException($"could not start {file}");
        var stderr = new System.Text.StringBuilder();
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (stderr) stderr.AppendLine(e.Data);
            log?.Invoke(e.Data);
        };
        process.BeginErrorReadLine();
        var stdoutTask = process.StandardOutput.ReadToEndAsync();
        if (stdin is not null)
        {
            process.StandardInput.Write(stdin);
            process.StandardInput.Close();
        }
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            return (-1, "", "timed out");
        }
        process.WaitForExit();
        lock (stderr) return (process.ExitCode, stdoutTask.Result, stderr.ToString());
    }
}
