using System.Runtime.InteropServices;

namespace DiffuSharp.Runtime;

/// <summary>
/// Asks Linux to back a large pinned array with transparent 2 MiB pages (madvise MADV_HUGEPAGE), before its pages are
/// first touched. Streaming gigabytes of weights through 4 KiB pages costs a page-table walk every 4 KiB whose entries no
/// longer fit in the caches; measured on the 7B LLaMA-shaped model, 2 MiB pages took decoding from 2.1 to 2.8 tokens/s and
/// loading from 66 to 26 s (BENCHMARKS.md). A hint only: where the kernel refuses it (THP off) nothing changes.
/// </summary>
static partial class HugePages
{
    /// <summary>Arrays from this size on are advised (smaller ones gain nothing and stay ordinary GC arrays).</summary>
    public const long Threshold = 32L << 20;

    const int MadvHugepage = 14;
    const long PageSize = 2L << 20;

    [LibraryImport("libc", EntryPoint = "madvise")]
    private static partial int Madvise(nint address, nuint length, int advice);

    /// <summary>Advises the whole 2 MiB pages inside <paramref name="pinned"/>, which must be a pinned array.</summary>
    public static void Advise(Array pinned)
    {
        if (!OperatingSystem.IsLinux()) return;
        nint start = Marshal.UnsafeAddrOfPinnedArrayElement(pinned, 0);
        long bytes = (long)pinned.Length * Marshal.SizeOf(pinned.GetType().GetElementType()!);
        long first = ((long)start + PageSize - 1) / PageSize * PageSize;
        long end = ((long)start + bytes) / PageSize * PageSize;
        if (end <= first) return;
        try
        {
            Madvise((nint)first, (nuint)(end - first), MadvHugepage);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            // No libc madvise here: ordinary pages.
        }
    }
}
