using System.Globalization;

namespace DiffuSharp.Runtime;

/// <summary>
/// A request for more memory than the device has: refused up front by an estimate, or by the allocator.
/// It is bad input (too large a model, batch or length for this machine), so the CLI reports it in one line.
/// </summary>
public sealed class DeviceMemoryException(string message) : DiffuException(message);

/// <summary>Memory figures for up-front checks: what the machine can still give, and readable sizes.</summary>
public static class DeviceMemory
{
    /// <summary>
    /// Bytes this process can still allocate on the host: Linux's MemAvailable, capped by the cgroup's
    /// limit less its usage, plus what the process's own pools hold free. Elsewhere the runtime's view.
    /// </summary>
    public static long HostAvailableBytes()
    {
        long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (ReadMeminfo("MemAvailable") is long meminfo) available = Math.Min(available, meminfo);
        if (ReadNumber("/sys/fs/cgroup/memory.max") is long limit && ReadNumber("/sys/fs/cgroup/memory.current") is long used)
            available = Math.Min(available, Math.Max(0, limit - used));
        return available;
    }

    /// <summary>Refuses work whose estimated need exceeds what the device has, naming both.</summary>
    public static void Require(Device device, long bytes, string what)
    {
        long available = device.AvailableMemoryBytes;
        if (bytes > available)
            throw new DeviceMemoryException($"{what} needs about {Format(bytes)}, but {device.Name} has {Format(available)} available");
    }

    /// <summary>1536 -> "1.5 KiB", in binary units.</summary>
    public static string Format(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        double value = bytes;
        int unit = 0;
        while (Math.Abs(value) >= 1024 && unit < units.Length - 1) { value /= 1024; unit++; }
        return unit == 0 ? $"{bytes} B" : value.ToString(value < 10 ? "0.0" : "0", CultureInfo.InvariantCulture) + " " + units[unit];
    }

    static long? ReadMeminfo(string key)
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith(key + ":", StringComparison.Ordinal)
                    && long.TryParse(line[(key.Length + 1)..].Replace("kB", "").Trim(), CultureInfo.InvariantCulture, out long kib))
                    return kib * 1024;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        return null;
    }

    static long? ReadNumber(string path)
    {
        try
        {
            return File.Exists(path) && long.TryParse(File.ReadAllText(path).Trim(), CultureInfo.InvariantCulture, out long n) ? n : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }
}
