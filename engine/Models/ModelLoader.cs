using DiffuSharp.IO;
using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>Opens a model folder as the family its config.json names (model_type gpt2 or llama).</summary>
public static class ModelLoader
{
    public static ITrainableModel Load(string directory, Device device)
    {
        if (!Directory.Exists(directory)) throw new DiffuException($"{directory}: model folder not found");
        var configPath = Path.Combine(directory, "config.json");
        var type = JsonConfig.Load(configPath).String("model_type");
        return type switch
        {
            "llama" => (ITrainableModel)LlamaModel.Load(directory, device),
            null or "gpt2" => Gpt2Model.Load(directory, device),
            _ => throw new ConfigException(configPath, $"unsupported model_type \"{type}\" (supported: gpt2, llama)"),
        };
    }
}
