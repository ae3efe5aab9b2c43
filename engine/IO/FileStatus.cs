using System.Runtime.InteropServices;

namespace DiffuSharp.IO;

/// <summary>What a path names, after following symbolic links.</summary>
public enum FileKind { Missing, RegularFile, Directory, CharacterDevice, BlockDevice, Fifo, Socket, Other }

/// <summary>
/// The type and identity of a path. .NET reports devices and FIFOs as ordinary files (FileAttributes.Normal),
/// and opening a FIFO or reading /dev/zero never returns, so on Linux the kind comes from the statx system
/// call; elsewhere only files and folders are told apart. The identity (device and inode) shows that two
/// paths, through symbolic or hard links, are the same file.
/// </summary>
public static partial class FileStatus
{
    public static FileKind Kind(string path) => Stat(path)?.Kind ?? FallbackKind(path);

    /// <summary>Whether two paths name the same existing file: by identity on Linux, by full path elsewhere.</summary>
    public static bool SameFile(string a, string b)
    {
        if (Stat(a) is { } x && Stat(b) is { } y) return x.Kind != FileKind.Missing && x.Device == y.Device && x.Inode == y.Inode;
        var comparison = OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;
        return string.Equals(Path.GetFullPath(a), Path.GetFullPath(b), comparison) && (File.Exists(a) || Directory.Exists(a));
    }

    /// <summary>"a FIFO", "a folder", ... for messages.</summary>
    public static string Describe(FileKind kind) => kind switch
    {
        FileKind.Missing => "missing",
        FileKind.RegularFile => "a regular file",
        FileKind.Directory => "a folder",
        FileKind.CharacterDevice => "a character device",
        FileKind.BlockDevice => "a block device",
        FileKind.Fifo => "a FIFO",
        FileKind.Socket => "a socket",
        _ => "not a regular file",
    };

    /// <summary>Refuses an input that is not an existing regular file, before anything opens it.</summary>
    public static void RequireRegularFile(string path, string what)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new DiffuException($"{what}: the path is empty");
        var kind = Kind(path);
        if (kind == FileKind.Missing) throw new DiffuException($"{path}: {what} not found");
        if (kind != FileKind.RegularFile) throw new DiffuException($"{path}: {what} is {Describe(kind)}, not a regular file");
    }

    static FileKind FallbackKind(string path) =>
        Directory.Exists(path) ? FileKind.Directory : File.Exists(path) ? FileKind.RegularFile : FileKind.Missing;

    readonly record struct Status(FileKind Kind, ulong Device, ulong Inode);

    const int AtFdCwd = -100, StatxBufferBytes = 256;
    const uint StatxType = 0x1, StatxIno = 0x100;
    const int ENOENT = 2, ENOTDIR = 20, ENAMETOOLONG = 36;
    static bool statxMissing;

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int StatX(int directory, string path, int flags, uint mask, byte* buffer);

    /// <summary>statx(2) of the path (links followed); null off Linux or where glibc lacks statx.</summary>
    static unsafe Status? Stat(string path)
    {
        if (!OperatingSystem.IsLinux() || statxMissing || path.Length == 0) return null;
        // struct statx is the same on every architecture: stx_mode u16 at 28, stx_ino u64 at 32, stx_dev_major/minor u32 at 136/140.
        byte* buffer = stackalloc byte[StatxBufferBytes];
        try
        {
            if (StatX(AtFdCwd, path, 0, StatxType | StatxIno, buffer) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                return errno is ENOENT or ENOTDIR or ENAMETOOLONG ? new Status(FileKind.Missing, 0, 0) : null;
            }
        }
        catch (EntryPointNotFoundException)
        {
            statxMissing = true;
            return null;
        }
        int mode = *(ushort*)(buffer + 28);
        ulong inode = *(ulong*)(buffer + 32);
        ulong device = (ulong)*(uint*)(buffer + 136) << 32 | *(uint*)(buffer + 140);
        var kind = (mode & 0xF000) switch
        {
            0x8000 => FileKind.RegularFile,
            0x4000 => FileKind.Directory,
            0x2000 => FileKind.CharacterDevice,
            0x6000 => FileKind.BlockDevice,
            0x1000 => FileKind.Fifo,
            0xC000 => FileKind.Socket,
            _ => FileKind.Other,
        };
        return new Status(kind, device, inode);
    }
}
