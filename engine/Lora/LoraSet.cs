using System.Text.Json.Nodes;
using DiffuSharp.IO;
using DiffuSharp.Layers;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Lora;

/// <summary>Which projections get adapters: attention's, the MLP's, or both (PEFT's target_modules).</summary>
public enum LoraTargets { Attention, Mlp, All }

/// <summary>
/// The LoRA adapters of a model's projections as one parameter set under PEFT's names
/// (<c>base_model.model.{module}.lora_A.weight</c> [r, in] and <c>.lora_B.weight</c> [out, r]), with the rank, alpha and
/// targets of PEFT's adapter_config.json. <see cref="Attach"/> puts each adapter in its Linear's slot and freezes the
/// base weight; <see cref="Merge"/> folds them into the base (W += (alpha/r) B A, in the base's layout).
/// </summary>
public sealed class LoraSet : ParameterSet
{
    public const string WeightsFile = "adapter_model.safetensors", ConfigFile = "adapter_config.json";

    LoraSet(Device device, IReadOnlyList<(string Module, Linear Layer)> modules, int rank, float alpha, LoraTargets targets)
        : base(device, modules.SelectMany(m => Shapes(m.Module, m.Layer, rank)))
    {
        Modules = modules; Rank = rank; Alpha = alpha; Targets = targets;
    }

    public IReadOnlyList<(string Module, Linear Layer)> Modules { get; }
    public int Rank { get; }
    public float Alpha { get; }
    public LoraTargets Targets { get; }
    public float Scale => Alpha / Rank;

    static IEnumerable<(string, int[])> Shapes(string module, Linear layer, int rank)
    {
        yield return (Name(module, "A"), [rank, layer.InFeatures]);
        yield return (Name(module, "B"), [layer.OutFeatures, rank]);
    }

    static string Name(string module, string matrix) => $"base_model.model.{module}.lora_{matrix}.weight";

    public Tensor A(string module) => this[Name(module, "A")];
    public Tensor B(string module) => this[Name(module, "B")];

    /// <summary>The projections a target names, by HF module name: attention's hold "attn", the MLP's "mlp".</summary>
    public static IReadOnlyList<(string Module, Linear Layer)> Select(ITrainableModel model, LoraTargets targets) =>
        model.Projections().Where(p => targets == LoraTargets.All || p.Module.Contains(targets == LoraTargets.Attention ? "attn" : "mlp")).ToList();

    /// <summary>Zero adapters for <paramref name="model"/>'s targeted projections (rank r, alpha), or a same-layout set for their gradients.</summary>
    public static LoraSet Zeros(ITrainableModel model, int rank, float alpha, LoraTargets targets)
    {
        if (rank < 1) throw new DiffuException($"--lora-rank must be positive, got {rank}");
        if (!float.IsFinite(alpha) || alpha <= 0) throw new DiffuException($"--lora-alpha must be a positive number, got {alpha}");
        var modules = Select(model, targets);
        if (modules.Count == 0) throw new DiffuException($"the model has no {targets} projections to adapt");
        return new LoraSet(model.Device, modules, rank, alpha, targets);
    }

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
            model.Device.Upload(a, 0, values);
        }
        return set;
    }

    /// <summary>Puts an adapter (this set's A and B, <paramref name="gradients"/>' views for theirs) in each projection's slot and freezes its base weight.</summary>
    public void Attach(LoraSet gradients)
    {
        foreach (var (module, layer) in Modules)
        {
            layer.Adapter = new LoraAdapter(A(module), B(module), gradients.A(module), gradients.B(module), Scale);
            layer.Frozen = true;
        }
    }

    /// <summary>W += (alpha/r) · B · A in each base weight's own layout; the slots are emptied and the weights unfrozen.</summary>
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
            d.Upload(layer.Weight, 0, w);
            layer.Adapter = null;
            layer.Frozen = false;
        }
    }

    /// <summary>Writes PEFT's adapter_model.safetensors and adapter_config.json into <paramref name="directory"/>.</summary>
    public void Save(string directory, string baseModel)
    {
        var entries = Named().Select(n => SafeTensorsEntry.DeferredFloat32(n.Name, n.Tensor.Shape, () => n.Tensor.Device.ToArray(n.Tensor)));
        SafeTensorsWriter.Write(Path.Combine(directory, WeightsFile), entries);
        var config = new JsonObject
        {
            ["peft_type"] = "LORA", ["task_type"] = "CAUSAL_LM", ["base_model_name_or_path"] = baseModel,
            ["r"] = Rank, ["lora_alpha"] = Alpha, ["lora_dropout"] = 0.0, ["bias"] = "none",
            ["fan_in_fan_out"] = Modules[0].Layer.Layout == WeightLayout.InputMajor,
            ["target_modules"] = new JsonArray(Modules.Select(m => (JsonNode)m.Module[(m.Module.LastIndexOf('.') + 1)..]).Distinct().Select(n => n!.DeepClone()).ToArray()),
            ["diffusharp_targets"] = Targets.ToString().ToLowerInvariant(),
        };
        File.WriteAllText(Path.Combine(directory, ConfigFile), config.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }) + "\n");
    }

    /// <summary>Reads a PEFT adapter folder written by <see cref="Save"/> for <paramref name="model"/>, checking every tensor's shape.</summary>
    public static LoraSet Load(string directory, ITrainableModel model)
    {
        string configPath = Path.Combine(directory, ConfigFile);
        var json = JsonConfig.Load(configPath);
        int rank = json.RequireInt("r");
        float alpha = (float)json.Double("lora_alpha", double.NaN);
        var targets = json.String("diffusharp_targets") switch
        {
            "attention" => LoraTargets.Attention, "mlp" => LoraTargets.Mlp, "all" => LoraTargets.All,
            var other => throw new ConfigException(configPath, $"'diffusharp_targets' is {other ?? "missing"} (attention, mlp or all)"),
        };
        var set = Zeros(model, rank, alpha, targets);
        try
        {
            using var file = SafeTensorsFile.Open(Path.Combine(directory, WeightsFile));
            foreach (var (name, view) in set.Named())
            {
                var info = file.Info(name);
                if (!info.Shape.AsSpan().SequenceEqual(view.Shape))
                    throw new DiffuException($"{file.FilePath}: '{name}' has shape [{string.Join(", ", info.Shape)}], the model implies {view.ShapeText}");
                model.Device.Upload(view, 0, file.ReadFloat32(name));
            }
            return set;
        }
        catch
        {
            set.Dispose();
            throw;
        }
    }
}
