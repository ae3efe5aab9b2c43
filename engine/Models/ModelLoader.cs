using DiffuSharp.IO;
using DiffuSharp.Lora;
using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>
/// Opens a model folder as the family its config.json names (<see cref="ModelFamily"/>). A training run's output
/// folder stands for its newest checkpoint (<see cref="RunLayout"/>). A LoRA adapter folder (PEFT's
/// adapter_config.json) stands for its base model with the adapters attached.
/// </summary>
public static class ModelLoader
{
    /// <summary>The folder's config (an adapter folder's base's), read and checked, without touching the weights.</summary>
    public static IModelConfig LoadConfig(string directory)
    {
        directory = RunLayout.ModelFolder(directory);
        if (!Directory.Exists(directory)) throw new DiffuException($"{directory}: model folder not found");
        if (PeftAdapter.IsAdapterFolder(directory)) return LoadConfig(PeftAdapter.BaseModelPath(directory));
        return ModelFamily.LoadConfigFile(Path.Combine(directory, RunLayout.ConfigFile));
    }

    /// <summary>
    /// The model, after checking that its weights fit on the device, stored as <paramref name="weightType"/> (null: as the
    /// checkpoint stores them); with <paramref name="adapter"/> (a PEFT LoRA folder or a LoRA run folder), that adapter
    /// attached to it.
    /// </summary>
    public static ITrainableModel Load(string directory, Device device, string? adapter = null, DType? weightType = null)
    {
        directory = RunLayout.ModelFolder(directory);
        if (PeftAdapter.IsAdapterFolder(directory))
        {
            if (adapter is not null) throw new DiffuException($"{directory} is itself a LoRA adapter: give its base model with --model and the adapter with --adapter");
            return Load(PeftAdapter.BaseModelPath(directory), device, directory, weightType);
        }
        var config = LoadConfig(directory);
        RequireWeights(config, device, directory, weightType ?? StoredType(directory));
        var model = ModelFamily.Of(config).Load(directory, device, weightType);
        if (adapter is null) return model;
        try
        {
            string adapterDir = RunLayout.ModelFolder(adapter);
            if (!Directory.Exists(adapterDir)) throw new DiffuException($"{adapter}: adapter folder not found");
            return PeftAdapter.Load(adapterDir, model, Path.GetFullPath(directory));
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>Refuses a model whose weights, stored as <paramref name="weightType"/>, cannot fit in the device's free memory.</summary>
    public static void RequireWeights(IModelConfig config, Device device, string what, DType weightType = DType.F32) =>
        DeviceMemory.Require(device, ModelMemory.Weights(config, weightType), $"{what}: {config.ParameterCount:N0} parameters as {WeightTypes.Name(weightType)}");

    /// <summary>
    /// The type a folder's weights load as by default (the family's <see cref="ModelFamily.StoredWeightType"/>, read from
    /// config.json and the safetensors headers alone).
    /// </summary>
    public static DType StoredType(string directory)
    {
        directory = RunLayout.ModelFolder(directory);
        if (PeftAdapter.IsAdapterFolder(directory)) return StoredType(PeftAdapter.BaseModelPath(directory));
        var config = LoadConfig(directory);
        using var checkpoint = SafeTensorsCheckpoint.Open(directory);
        return ModelFamily.Of(config).StoredWeightType(config, checkpoint);
    }
}
