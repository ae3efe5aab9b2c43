using DiffuSharp.IO;
using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>
/// Opens a model folder as the family its config.json names (<see cref="ModelFamily"/>). A training run's output
/// folder stands for its newest checkpoint (<see cref="RunLayout"/>).
/// </summary>
public static class ModelLoader
{
    /// <summary>The folder's config, read and checked, without touching the weights.</summary>
    public static IModelConfig LoadConfig(string directory)
    {
        directory = RunLayout.ModelFolder(directory);
        if (!Directory.Exists(directory)) throw new DiffuException($"{directory}: model folder not found");
        return ModelFamily.LoadConfigFile(Path.Combine(directory, "config.json"));
    }

    /// <summary>The model, after checking that its weights fit on the device.</summary>
    public static ITrainableModel Load(string directory, Device device)
    {
        directory = RunLayout.ModelFolder(directory);
        var config = LoadConfig(directory);
        RequireWeights(config, device, directory);
        return ModelFamily.Of(config).Load(directory, device);
    }

    /// <summary>Refuses a model whose float32 weights cannot fit in the device's free memory.</summary>
    public static void RequireWeights(IModelConfig config, Device device, string what) =>
        DeviceMemory.Require(device, ModelMemory.Weights(config), $"{what}: {config.ParameterCount:N0} parameters as float32");
}
