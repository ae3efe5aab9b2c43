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

    /// <summary>
    /// Lays out the tensors of <paramref name="shapes"/>; those <paramref name="allocate"/> rejects are absent
    /// (<see cref="Tensor.Absent"/>: no memory, left out of <see cref="Named"/> and <see cref="Storage"/>), as the
    /// gradients and moments of frozen parameters are.
    /// </summary>
    protected ParameterSet(Device device, IEnumerable<(string Name, int[] Shape)> shapes, Func<string, bool>? allocate = null, DType dtype = DType.F32)
    {
        var list = shapes.ToList();
        StorageType = dtype;
        buffers = ParameterBuffers.Allocate(device, list.Where(s => allocate?.Invoke(s.Name) ?? true), dtype);
        foreach (var (name, shape) in list)
        {
            bool present = allocate?.Invoke(name) ?? true;
            var view = present ? buffers.View(name, shape) : Tensor.Absent(device, shape);
            if (present) named.Add((name, view));
            byName.Add(name, view);
        }
    }

    /// <summary>The element type of every tensor of the set: F32, or BF16 / F16 for 16-bit weights.</summary>
    public DType StorageType { get; }

    /// <summary>The view of tensor <paramref name="name"/>.</summary>
    protected Tensor this[string name] => byName[name];

    /// <summary>The view of tensor <paramref name="name"/>, or null when the layout has none (an untied head).</summary>
    protected Tensor? Find(string name) => byName.GetValueOrDefault(name);

    public IEnumerable<(string Name, Tensor Tensor)> Named() => named;

    /// <summary>
    /// Fresh weights: each tensor, in order, is the constant its name's rule gives, or N(0, std²) when the rule gives a
    /// positive std, drawn from Philox stream k of <paramref name="seed"/> (k = 1, 2, ... counts the tensors); a 16-bit
    /// set holds the draws rounded to its type.
    /// </summary>
    public void Initialize(ulong seed, Func<string, (float Constant, float Std)> rule)
    {
        ulong stream = 0;
        foreach (var (name, view) in named)
        {
            var values = new float[view.Length];
            stream++;
            var (constant, std) = rule(name);
            if (std > 0) Gaussian.Fill(values, std, seed, stream);
            else if (constant != 0) Array.Fill(values, constant);
            view.Device.UploadRounded(view, 0, values);
        }
    }

    public IReadOnlyList<Tensor> Storage => buffers.Buffers;

    public void Dispose() => buffers.Dispose();
}
