using System.Runtime.InteropServices;

namespace DiffuSharp.Bench;

/// <summary>
/// OpenBLAS's SGEMM called in place on our CPU tensors: the CPU matmul reference. Debian's
/// libopenblas0-pthread provides libopenblas.so.0; without it the reference is reported as absent.
/// Debian builds OpenBLAS with DYNAMIC_ARCH, whose CPUID probe takes the virtual AVX-512 cores of the
/// machines here for a Prescott (SSE3) and runs at a fifth of its speed; so unless OPENBLAS_CORETYPE is
/// set, it is set to the kernel family matching the instructions .NET sees (SkylakeX for AVX-512,
/// Haswell for AVX2) before the library loads, for this process and the PyTorch reference alike.
/// </summary>
public sealed unsafe class OpenBlas
{
    const int RowMajor = 101, NoTrans = 111, Trans = 112;

    readonly delegate* unmanaged<int, int, int, int, int, int, float, float*, int, float*, int, float, float*, int, void> sgemm;
    readonly delegate* unmanaged<int, void> setThreads;
    readonly delegate* unmanaged<byte*> config;

    OpenBlas(IntPtr library)
    {
        sgemm = (delegate* unmanaged<int, int, int, int, int, int, float, float*, int, float*, int, float, float*, int, void>)NativeLibrary.GetExport(library, "cblas_sgemm");
        setThreads = NativeLibrary.TryGetExport(library, "openblas_set_num_threads", out var st) ? (delegate* unmanaged<int, void>)st : null;
        config = NativeLibrary.TryGetExport(library, "openblas_get_config", out var cfg) ? (delegate* unmanaged<byte*>)cfg : null;
    }

    /// <summary>The OPENBLAS_CORETYPE a reference should run with: the one set, else the one matching the CPU's vector ISA.</summary>
    public static string? CoreType =>
        Environment.GetEnvironmentVariable("OPENBLAS_CORETYPE") is { Length: > 0 } set ? set
        : System.Runtime.Intrinsics.X86.Avx512F.IsSupported ? "SkylakeX"
        : System.Runtime.Intrinsics.X86.Avx2.IsSupported ? "Haswell"
        : null;

    [DllImport("libc", EntryPoint = "setenv")]
    static extern int SetNativeEnvironment([MarshalAs(UnmanagedType.LPUTF8Str)] string name, [MarshalAs(UnmanagedType.LPUTF8Str)] string value, int overwrite);

    /// <summary>The library if it loads here (from $DIFFU_OPENBLAS, else libopenblas.so.0 / libopenblas.so), else null.</summary>
    public static OpenBlas? TryLoad()
    {
        // OpenBLAS reads its core type with getenv when it loads; .NET's own environment does not reach getenv.
        if (OperatingSystem.IsLinux() && CoreType is string core) SetNativeEnvironment("OPENBLAS_CORETYPE", core, 0);
        var names = new[] { Environment.GetEnvironmentVariable("DIFFU_OPENBLAS"), "libopenblas.so.0", "libopenblas.so", "libopenblas" };
        foreach (var name in names)
            if (!string.IsNullOrEmpty(name) && NativeLibrary.TryLoad(name, out var handle) && NativeLibrary.TryGetExport(handle, "cblas_sgemm", out _))
                return new OpenBlas(handle);
        return null;
    }

    /// <summary>OpenBLAS's build description (version, kernel target, threading), e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH ... SkylakeX".</summary>
    public string Description => config is null ? "OpenBLAS" : Marshal.PtrToStringAnsi((IntPtr)config()) ?? "OpenBLAS";

    public void SetThreads(int threads)
    {
        if (setThreads is not null) setThreads(threads);
    }

    /// <summary>c[M, N] = beta c + a · b, row-major; a is [M, K] (or [K, M] with transA), b is [K, N] (or [N, K] with transB).</summary>
    public void Gemm(bool transA, bool transB, int m, int n, int k, float[] a, float[] b, float beta, float[] c)
    {
        if (a.LongLength < (long)m * k || b.LongLength < (long)k * n || c.LongLength < (long)m * n)
            throw new ArgumentException($"sgemm buffers too small for {m}x{k}x{n}");
        fixed (float* pa = a, pb = b, pc = c)
            sgemm(RowMajor, transA ? Trans : NoTrans, transB ? Trans : NoTrans, m, n, k, 1f, pa, transA ? m : k, pb, transB ? k : n, beta, pc, n);
    }
}
