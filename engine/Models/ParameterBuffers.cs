using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>
/// The storage of a parameter set (a model's weights, or their gradients or AdamW moments) as a few large
/// contiguous buffers, each tensor a view into one of them (llm.c's one malloc for all parameters): the
/// global norm, clipping, the optimizer update and, later, an all-reduce are one op per buffer instead of
/// one per tensor. Tensors are laid out in the set's checkpoint order, each starting at a multiple of
/// <see cref="Alignment"/> elements (the gaps stay zero, so they add nothing to a norm and AdamW keeps them
/// zero); a buffer holds at most <see cref="MaxBufferElements"/> elements (a CPU buffer is one array).
/// Two sets laid out from the same shapes have the same buffers, so they pair buffer for buffer.
/// </summary>
public sealed class ParameterBuffers : IDisposable
{
    /// <summary>Elements between tensor starts: 256 bytes, enough for every vector load of every kernel.</summary>
    public const int Alignment = 64;

    public const long MaxBufferElements = 1L << 30;

    readonly Dictionary<string, (int Buffer, long Offset, int[] Shape)> places = new(StringComparer.Ordinal);
    readonly List<Tensor> buffers = new();

    ParameterBuffers() { }

    /// <summary>Zero-filled buffers of <paramref name="dtype"/> for tensors of these names and shapes, in this order.</summary>
    public static ParameterBuffers Allocate(Device device, IEnumerable<(string Name, int[] Shape)> shapes, DType dtype = DType.F32)
    {
        var result = new ParameterBuffers();
        var lengths = new List<long> { 0 };
        foreach (var (name, shape) in shapes)
        {
            long n = Tensor.Product(shape);
            if (n > MaxBufferElements) throw new DiffuException($"tensor '{name}' [{string.Join(", ", shape)}] holds more than the {MaxBufferElements:N0} elements of one parameter buffer");
            long start = (lengths[^1] + Alignment - 1) / Alignment * Alignment;
            if (start + n > MaxBufferElements)
            {
                lengths.Add(0);
                start = 0;
            }
            result.places.Add(name, (lengths.Count - 1, start, shape));
            lengths[^1] = start + n;
        }
        try
        {
            foreach (long length in lengths.Where(l => l > 0)) result.buffers.Add(device.Zeros(dtype, checked((int)length)));
        }
        catch
        {
            result.Dispose();
            throw;
        }
        return result;
    }

    /// <summary>The buffers, in layout order.</summary>
    public IReadOnlyList<Tensor> Buffers => buffers;

    /// <summary>The view that holds tensor <paramref name="name"/>, of the shape it was laid out with.</summary>
    public Tensor View(string name, int[] shape)
    {
        if (!places.TryGetValue(name, out var place)) throw new ArgumentException($"no tensor '{name}' in this layout");
        if (!place.Shape.AsSpan().SequenceEqual(shape))
            throw new ArgumentException($"tensor '{name}' was laid out as [{string.Join(", ", place.Shape)}], asked as [{string.Join(", ", shape)}]");
        return buffers[place.Buffer].View(place.Offset, shape);
    }

    public void Dispose()
    {
        foreach (var b in buffers) b.Dispose();
    }
}
