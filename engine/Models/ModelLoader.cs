using DiffuSharp.IO;
using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>
/// Opens a model folder as the family its config.json names (model_type gpt2 or llama). A training run's
/// output folder stands for its newest checkpoint (<see cref="RunLayout"/>).
/// </summary>
public static class ModelLoader
{
    /// <summary>The folder's config, read and checked, without touching the weights.</summary>
    public static IModelConfig LoadConfig(string directory)
    {
        directory = RunLayout.ModelFolder(directory);
        if (!Directory.Exists(directory)) throw new DiffuException($"{directory}: model folder not found");
        var configPath = Path.Combine(directory, "config.json");
        var type = JsonConfig.Load(configPath).String("model_type");
        return type switch
        {
            "llama" => LlamaConfig.Load(configPath),
            null or "gpt2" => Gpt2Config.Load(configPath),
            _ => throw new ConfigException(configPath, $"unsupported model_type \"{type}\" (supported: gpt2, llama)"),
        };
    }

    /// <summary>The model, after checking that its weights fit on the device.</summary>
    public static ITrainableModel Load(string directory, Device device)
    {
        directory = RunLayout.ModelFolder(directory);
        var config = LoadConfig(directory);
        RequireWeights(config, device, directory);
        return config is LlamaConfig ? LlamaModel.Load(directory, device) : Gpt2Model.Load(directory, device);
    }

    /// <summary>Refuses a model whose float32 weights cannot fit in the device's free memory.</summary>
    public static void RequireWeights(IModelConfig config, Device device, string what) =>
        DeviceMemory.Require(device, ModelMemory.Weights(config), $"{what}: {config.ParameterCount:N0} parameters as float32");
}
