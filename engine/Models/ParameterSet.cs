using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>
/// A parameter set laid out in one <see cref="ParameterBuffers"/> from a family's list of (HF name, shape): the
/// list is the one place a family names its tensors, in checkpoint order. Subclasses wire the views by name into
/// their layers.
/// </summary>
public abstract class ParameterSet : IParameterSet
{
    readonly ParameterBuffers buffers;
    readonly List<(string Name, Tensor Tensor)> named = new();
    readonly Dictionary<string, Tensor> byName = new(StringComparer.Ordinal);

    protected ParameterSet(Device device, IEnumerable<(string Name, int[] Shape)> shapes)
    {
        var list = shapes.ToList();
        buffers = ParameterBuffers.Allocate(device, list);
        foreach (var (name, shape) in list)
        {
            var view = buffers.View(name, shape);
            named.Add((name, view));
            byName.Add(name, view);
        }
    }

    /// <summary>The view of tensor <paramref name="name"/>.</summary>
    protected Tensor this[string name] => byName[name];

    /// <summary>The view of tensor <paramref name="name"/>, or null when the layout has none (an untied head).</summary>
    protected Tensor? Find(string name) => byName.GetValueOrDefault(name);

    public IEnumerable<(string Name, Tensor Tensor)> Named() => named;

    public IReadOnlyList<Tensor> Storage => buffers.Buffers;

    public void Dispose() => buffers.Dispose();
}
