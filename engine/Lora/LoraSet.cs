using DiffuSharp.Layers;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Lora;

/// <summary>Which projections get adapters: attention's, the MLP's, or both.</summary>
public enum LoraTargets { Attention, Mlp, All }

/// <summary>
/// The LoRA adapters of some of a model's projections as one parameter set under PEFT's names
/// (<c>base_model.model.{module}.lora_A.weight</c> [r, in] and <c>.lora_B.weight</c> [out, r]) with their rank and
/// alpha. <see cref="Attach"/> puts each adapter in its Linear's slot; <see cref="Merge"/> folds them into the base
/// (W += (alpha/r) B A, in the base's layout). <see cref="PeftAdapter"/> reads and writes the PEFT folder.
/// </summary>
public sealed class LoraSet : ParameterSet
{
    LoraSet(Device device, IReadOnlyList<(string Module, Linear Layer)> modules, int rank, float alpha, bool rankStabilized)
        : base(device, modules.SelectMany(m => Shapes(m.Module, m.Layer, rank)))
    {
        Modules = modules; Rank = rank; Alpha = alpha; RankStabilized = rankStabilized;
    }

    public IReadOnlyList<(string Module, Linear Layer)> Modules { get; }
    public int Rank { get; }
    public float Alpha { get; }

    /// <summary>PEFT's use_rslora: the scale is alpha / sqrt(r) instead of alpha / r.</summary>
    public bool RankStabilized { get; }

    public float Scale => RankStabilized ? Alpha / MathF.Sqrt(Rank) : Alpha / Rank;

    static IEnumerable<(string, int[])> Shapes(string module, Linear layer, int rank)
    {
        yield return (Name(module, "A"), [rank, layer.InFeatures]);
        yield return (Name(module, "B"), [layer.OutFeatures, rank]);
    }

    static string Name(string module, string matrix) => $"base_model.model.{module}.lora_{matrix}.weight";

    public Tensor A(string module) => this[Name(module, "A")];
    public Tensor B(string module) => this[Name(module, "B")];

    /// <summary>The number of adapter parameters.</summary>
    public long ParameterCount => Named().Sum(n => n.Tensor.Length);

    /// <summary>
    /// PEFT's target_modules for these modules: each name past its layer index ("attn.c_proj", "mlp.c_proj"), which
    /// PEFT matches as a suffix of the module name, so GPT-2's two c_proj stay apart.
    /// </summary>
    public IReadOnlyList<string> TargetModules =>
        Modules.Select(m => m.Module.Split('.')).Select(parts => string.Join('.', parts.SkipWhile(p => !int.TryParse(p, out _)).Skip(1))).Distinct().ToList();

    /// <summary>The projections a target names, by HF module name: attention's hold "attn", the MLP's "mlp".</summary>
    public static IReadOnlyList<(string Module, Linear Layer)> Select(ITrainableModel model, LoraTargets targets) =>
        model.Projections().Where(p => targets == LoraTargets.All || p.Module.Contains(targets == LoraTargets.Attention ? "attn" : "mlp")).ToList();

    /// <summary>Zero adapters (or a same-layout set for their gradients) of rank r and the given alpha on <paramref name="modules"/>.</summary>
    public static LoraSet Zeros(Device device, IReadOnlyList<(string Module, Linear Layer)> modules, int rank, float alpha, bool rankStabilized = false)
    {
        if (rank < 1) throw new DiffuException($"the LoRA rank must be positive, got {rank}");
        if (!float.IsFinite(alpha) || alpha <= 0) throw new DiffuException($"the LoRA alpha must be a positive number, got {alpha}");
        if (modules.Count == 0) throw new DiffuException("no projections to adapt");
        return new LoraSet(device, modules, rank, alpha, rankStabilized);
    }

    /// <summary>Zero adapters for <paramref name="model"/>'s <paramref name="targets"/>.</summary>
    public static LoraSet Zeros(ITrainableModel model, int rank, float alpha, LoraTargets targets) =>
        Zeros(model.Device, Select(model, targets), rank, alpha);

    /// <summary>A zero set of this one's modules, rank and alpha: gradients or AdamW moments.</summary>
    public LoraSet ZerosLike() => new(Storage[0].Device, Modules, Rank, Alpha, RankStabilized);

    /// <summary>PEFT's initialisation: A uniform in ±1/sqrt(in) (kaiming-uniform with a = sqrt 5), B zero, so training starts at the base model.</summary>
    public static LoraSet CreateRandom(ITrainableModel model, int rank, float alpha, LoraTargets targets, ulong seed)
    {
        var set = Zeros(model, rank, alpha, targets);
        ulong stream = 0;
        foreach (var (module, layer) in set.Modules)
        {
            var a = set.A(module);
            var values = new float[a.Length];
            float bound = 1f / MathF.Sqrt(layer.InFeatures);
            for (int i = 0; i < values.Length; i++) values[i] = (2 * Kernels.Philox.Uniform(seed, stream, (ulong)i) - 1) * bound;
            stream++;
            model.Device.UploadRounded(a, 0, values);
        }
        return set;
    }

    /// <summary>
    /// Puts an adapter (this set's A and B, and <paramref name="gradients"/>' views for theirs, or none for inference)
    /// in each projection's slot.
    /// </summary>
    public void Attach(LoraSet? gradients)
    {
        foreach (var (module, layer) in Modules)
            layer.Adapter = new LoraAdapter(A(module), B(module), gradients?.A(module), gradients?.B(module), Scale);
    }

    /// <summary>W += (alpha/r) · B · A in each base weight's own layout; the slots are emptied.</summary>
    public void Merge()
    {
        foreach (var (module, layer) in Modules)
        {
            var d = layer.Weight.Device;
            float[] a = d.ToArray(A(module)), b = d.ToArray(B(module)), w = d.ToArray(layer.Weight);
            int r = Rank, input = layer.InFeatures, output = layer.OutFeatures;
            bool inputMajor = layer.Layout == WeightLayout.InputMajor;
            for (int o = 0; o < output; o++)
                for (int i = 0; i < input; i++)
                {
                    double sum = 0;
                    for (int k = 0; k < r; k++) sum += (double)b[o * r + k] * a[k * input + i];
                    w[inputMajor ? i * output + o : o * input + i] += (float)(Scale * sum);
                }
            d.UploadRounded(layer.Weight, 0, w);
            layer.Adapter = null;
        }
    }
}
