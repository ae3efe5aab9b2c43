using System.Diagnostics;
using DiffuSharp.IO;

namespace DiffuSharp.Tests.IO;

/// <summary>
/// Named output files: only regular files are replaced (devices, FIFOs and folders are refused without being
/// opened), never an input of the same command (by inode, through symbolic and hard links), always through a
/// temporary file that is renamed when complete, and temporaries of dead processes are cleaned up.
/// </summary>
public sealed class OutputFileTests
{
    string dir = "";

    [SetUp]
    public void SetUp() => dir = Directory.CreateTempSubdirectory("diffu-out-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(dir, recursive: true);

    static void WriteText(string path, string text, IEnumerable<string>? inputs = null) =>
        OutputFile.Write(path, "--out", s => s.Write(System.Text.Encoding.UTF8.GetBytes(text)), inputs);

    /// <summary>Runs a program to completion (mkfifo, ln) and returns its process id.</summary>
    public static int RunTool(string file, params string[] args)
    {
        using var process = Process.Start(new ProcessStartInfo(file, args) { UseShellExecute = false })!;
        process.WaitForExit();
        Assert.That(process.ExitCode, Is.EqualTo(0), $"{file} {string.Join(' ', args)}");
        return process.Id;
    }

    public static string MakeFifo(string path)
    {
        RunTool("mkfifo", path);
        Assert.That(FileStatus.Kind(path), Is.EqualTo(FileKind.Fifo));
        return path;
    }

    [Test]
    public void KindsOfPathsAreToldApart()
    {
        Assert.That(FileStatus.Kind("/dev/null"), Is.EqualTo(FileKind.CharacterDevice));
        Assert.That(FileStatus.Kind(dir), Is.EqualTo(FileKind.Directory));
        Assert.That(FileStatus.Kind(Path.Combine(dir, "none")), Is.EqualTo(FileKind.Missing));
        Assert.That(FileStatus.Kind(Path.Combine(dir, "none", "deeper")), Is.EqualTo(FileKind.Missing));
        File.WriteAllText(Path.Combine(dir, "a.txt"), "a");
        Assert.That(FileStatus.Kind(Path.Combine(dir, "a.txt")), Is.EqualTo(FileKind.RegularFile));
    }

    [Test]
    public void ReplacesARegularFileAndLeavesNoTemporary()
    {
        string path = Path.Combine(dir, "out.txt");
        WriteText(path, "first");
        WriteText(path, "second");
        Assert.That(File.ReadAllText(path), Is.EqualTo("second"));
        Assert.That(Directory.GetFiles(dir), Is.EqualTo(new[] { path }));
    }

    [Test]
    public void AFailingWriteLeavesTheTargetAndNoTemporary()
    {
        string path = Path.Combine(dir, "out.txt");
        File.WriteAllText(path, "kept");
        Assert.Throws<InvalidOperationException>(() => OutputFile.Write(path, "--out", s =>
        {
            s.WriteByte(1);
            throw new InvalidOperationException("failed half-way");
        }));
        Assert.That(File.ReadAllText(path), Is.EqualTo("kept"));
        Assert.That(Directory.GetFiles(dir), Is.EqualTo(new[] { path }));
    }

    [TestCase("")]
    [TestCase("   ")]
    public void AnEmptyPathIsRefused(string path) =>
        Assert.That(() => OutputFile.Check(path, "--out"), Throws.InstanceOf<DiffuException>().With.Message.Contains("empty"));

    [Test]
    public void AMissingFolderIsRefused()
    {
        string path = Path.Combine(dir, "missing", "out.txt");
        Assert.That(() => WriteText(path, "x"), Throws.InstanceOf<DiffuException>().With.Message.Contains("does not exist"));
        Assert.That(Directory.Exists(Path.Combine(dir, "missing")), Is.False);
    }

    [Test]
    public void AFolderIsRefused()
    {
        string folder = Directory.CreateDirectory(Path.Combine(dir, "sub")).FullName;
        Assert.That(() => WriteText(folder, "x"), Throws.InstanceOf<DiffuException>().With.Message.Contains("a folder"));
        Assert.That(() => WriteText(folder + "/", "x"), Throws.InstanceOf<DiffuException>().With.Message.Contains("folder"));
        Assert.That(FileStatus.Kind(folder), Is.EqualTo(FileKind.Directory));
        Assert.That(Directory.GetFiles(dir), Is.Empty);
    }

    /// <summary>Renaming a temporary over a device node (as root) would replace the node with a file: refused, nothing written.</summary>
    [TestCase("/dev/null")]
    [TestCase("/dev/full")]
    public void DevicesAreRefusedAndKept(string device)
    {
        bool called = false;
        Assert.That(() => OutputFile.Write(device, "--out", _ => called = true),
            Throws.InstanceOf<DiffuException>().With.Message.Contains("character device"));
        Assert.That(called, Is.False, "refused before any data is produced");
        Assert.That(FileStatus.Kind(device), Is.EqualTo(FileKind.CharacterDevice));
        Assert.That(Directory.GetFiles("/dev", $".{Path.GetFileName(device)}.*.tmp"), Is.Empty);
    }

    [Test]
    public void AFifoIsRefusedWithoutOpeningIt()
    {
        string fifo = MakeFifo(Path.Combine(dir, "pipe"));
        var refused = Task.Run(() => Assert.Throws<DiffuException>(() => WriteText(fifo, "x")));
        Assert.That(refused.Wait(TimeSpan.FromSeconds(10)), Is.True, "opening a FIFO with no reader would block");
        Assert.That(refused.Result!.Message, Does.Contain("FIFO"));
        Assert.That(FileStatus.Kind(fifo), Is.EqualTo(FileKind.Fifo));
    }

    [Test]
    public void AnInputIsRefusedThroughTheSamePathASymlinkAndAHardLink()
    {
        string input = Path.Combine(dir, "input.txt");
        File.WriteAllText(input, "precious");
        string symlink = Path.Combine(dir, "symlink.txt");
        File.CreateSymbolicLink(symlink, input);
        string hardLink = Path.Combine(dir, "hardlink.txt");
        RunTool("ln", input, hardLink);
        foreach (var target in new[] { input, Path.Combine(dir, ".", "input.txt"), symlink, hardLink })
            Assert.That(() => WriteText(target, "clobbered", [input]),
                Throws.InstanceOf<DiffuException>().With.Message.Contains("same file as the input"), target);
        Assert.That(File.ReadAllText(input), Is.EqualTo("precious"));
        WriteText(Path.Combine(dir, "other.txt"), "fine", [input]);
    }

    [Test]
    public void ASymlinkIsWrittenThrough()
    {
        string real = Path.Combine(dir, "real.txt");
        File.WriteAllText(real, "old");
        string link = Path.Combine(dir, "link.txt");
        File.CreateSymbolicLink(link, real);
        WriteText(link, "new");
        Assert.That(File.ReadAllText(real), Is.EqualTo("new"));
        Assert.That(new FileInfo(link).LinkTarget, Is.EqualTo(real), "the link stays a link");
    }

    [Test]
    public void TemporariesOfDeadProcessesAreRemovedOnTheNextWrite()
    {
        string path = Path.Combine(dir, "out.txt");
        int dead = RunTool("true");
        string stale = Path.Combine(dir, $".out.txt.{dead}-0123456789abcdef.tmp");
        string live = Path.Combine(dir, $".out.txt.{Environment.ProcessId}-0123456789abcdef.tmp");
        string other = Path.Combine(dir, $".other.txt.{dead}-0123456789abcdef.tmp");
        foreach (var file in new[] { stale, live, other }) File.WriteAllText(file, "left by a killed run");
        WriteText(path, "data");
        Assert.That(File.Exists(stale), Is.False, "the dead process's temporary is removed");
        Assert.That(File.Exists(live), Is.True, "a running process's temporary is kept");
        Assert.That(File.Exists(other), Is.True, "another target's temporary is not this write's business");
        Assert.That(OutputFile.TemporaryPath(path), Does.StartWith(Path.Combine(dir, $".out.txt.{Environment.ProcessId}-")).And.EndWith(".tmp"));
    }
}
