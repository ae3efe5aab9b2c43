using System.Collections.Concurrent;
using System.Reflection;
using System.Runtime.InteropServices;

namespace DiffuSharp.Runtime;

/// <summary>
/// Maps the native library names an assembly imports onto the names installed here (e.g. ILGPU's "cuda"
/// onto libcuda.so.1, ILGPU.Algorithms' libcublas.so.12 onto libcublas.so.13): the first candidate that
/// loads wins, and names the mapping does not cover keep .NET's default probing.
/// </summary>
static class NativeAliases
{
    static readonly ConcurrentDictionary<Assembly, bool> Registered = new();

    /// <summary>Installs the mapping for <paramref name="assembly"/> once; candidates may contain nulls (unset variables).</summary>
    public static void Register(Assembly assembly, Func<string, IEnumerable<string?>?> candidates)
    {
        if (!Registered.TryAdd(assembly, true)) return;
        try
        {
            NativeLibrary.SetDllImportResolver(assembly, (name, asm, searchPath) =>
            {
                foreach (var candidate in candidates(name) ?? [])
                    if (!string.IsNullOrEmpty(candidate) && NativeLibrary.TryLoad(candidate, asm, searchPath, out var handle)) return handle;
                return IntPtr.Zero;
            });
        }
        catch (InvalidOperationException)
        {
            // The host program set its own resolver for this assembly first; its mapping stands.
        }
    }
}
