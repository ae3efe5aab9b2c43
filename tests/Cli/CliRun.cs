using System.Diagnostics;

namespace DiffuSharp.Tests.CliTests;

/// <summary>Runs `diffu` in-process or as a child process, and makes the small token shard the training tests share.</summary>
static class CliRun
{
    public static string Gpt2Tokenizer => Path.Combine(TestUtil.SharedData, "tokenizers", "gpt2");

    /// <summary>The command in this process: exit code, stdout and stderr.</summary>
    public static (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = DiffuSharp.Cli.Cli.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    /// <summary>
    /// `diffu` as a child process (the diffu.dll built beside the tests, on the dotnet host running them), for
    /// what needs a real process: SIGKILL, concurrent writers. Output goes to <paramref name="log"/>.
    /// </summary>
    public static Process Start(string[] args, string log, IReadOnlyDictionary<string, string>? environment = null)
    {
        var host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h && File.Exists(h) ? h : "dotnet";
        var info = new ProcessStartInfo(host) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        info.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "diffu.dll"));
        foreach (var a in args) info.ArgumentList.Add(a);
        foreach (var (k, v) in environment ?? new Dictionary<string, string>()) info.Environment[k] = v;
        var process = Process.Start(info)!;
        var writer = new StreamWriter(log) { AutoFlush = true };
        var gate = new object();
        void Copy(object _, DataReceivedEventArgs e) { if (e.Data is not null) lock (gate) writer.WriteLine(e.Data); }
        process.OutputDataReceived += Copy;
        process.ErrorDataReceived += Copy;
        process.Exited += (_, _) => { process.WaitForExit(); lock (gate) writer.Dispose(); };
        process.EnableRaisingEvents = true;
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    /// <summary>
    /// The first 40 TinyStories documents as a GPT-2 token shard limited to the fixture's 512-token vocabulary, in
    /// <paramref name="directory"/>.
    /// </summary>
    public static string StoriesShard(string directory)
    {
        var text = Path.Combine(directory, "stories.txt");
        File.WriteAllText(text, string.Join("<|endoftext|>", File.ReadAllText(Path.Combine(TestUtil.SharedData, "corpora", "tinystories", "train_v2_head.txt"))
            .Split("<|endoftext|>").Take(40)));
        var shard = Path.Combine(directory, "stories.tok");
        var (code, _, err) = Run("tokenize", "--tokenizer", Gpt2Tokenizer, "--vocab-limit", "512", "--out", shard, text);
        Assert.That(code, Is.EqualTo(0), err);
        return shard;
    }
}
