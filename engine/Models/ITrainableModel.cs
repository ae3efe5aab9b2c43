using System.Text.Json.Nodes;
using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>A full set of a model's tensors under their HF names: its parameters, or same-shaped gradients or optimizer moments.</summary>
public interface IParameterSet : IDisposable
{
    IEnumerable<(string Name, Tensor Tensor)> Named();
}

/// <summary>What the trainer needs from a model family beyond inference.</summary>
public interface ITrainableModel : ILanguageModel
{
    IParameterSet Parameters { get; }
    long ParameterCount { get; }

    /// <summary>A same-shaped set built tensor by tensor from (HF name, shape).</summary>
    IParameterSet CreateParameterSet(Func<string, int[], Tensor> make);

    /// <summary>The model's HF config.json, with mask_token_id when given.</summary>
    JsonObject ConfigJson(int? maskTokenId);

    /// <summary>Appends a token (a new [MASK]) whose embedding, and untied head row, is the mean of the others; returns its id.</summary>
    int AppendToken();
}

public static class TrainableModelExtensions
{
    public static IParameterSet ZeroParameterSet(this ITrainableModel model) =>
        model.CreateParameterSet((_, shape) => model.Device.Zeros(DType.F32, shape));

    /// <summary>A copy of a [V, C] table with one more row, the mean of the others; the old table is disposed.</summary>
    internal static Tensor AppendMeanRow(Device device, Tensor table)
    {
        int v = table.Shape[0], c = table.Shape[1];
        var rows = device.ToArray(table);
        var grown = new float[(long)(v + 1) * c];
        rows.CopyTo(grown, 0);
        for (int j = 0; j < c; j++)
        {
            double sum = 0;
            for (int i = 0; i < v; i++) sum += rows[(long)i * c + j];
            grown[(long)v * c + j] = (float)(sum / v);
        }
        var result = device.FromArray(grown, v + 1, c);
        table.Dispose();
        return result;
    }
}
