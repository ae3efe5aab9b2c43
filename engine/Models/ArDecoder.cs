using DiffuSharp.Kernels;
using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>
/// Autoregressive decoding with a KV cache: the prompt is run once (prefill), then each new token costs
/// one single-position forward pass. This is the baseline the diffusion samplers are compared against.
/// </summary>
public sealed class ArDecoder
{
    readonly ILanguageModel model;

    public ArDecoder(ILanguageModel model) => this.model = model;

    /// <summary>
    /// Continues <paramref name="prompt"/> by up to <paramref name="maxNew"/> tokens. Temperature 0 is greedy
    /// (argmax, lowest id on ties); otherwise tokens are drawn from softmax(logits / temperature) with the
    /// seeded Philox stream, so a seed gives the same text on every device. Stops early at
    /// <paramref name="stopToken"/> (which is included in the result).
    /// </summary>
    public int[] Generate(IReadOnlyList<int> prompt, int maxNew, float temperature, ulong seed, int? stopToken = null, Action<int>? onToken = null)
    {
        if (prompt.Count == 0) throw new DiffuException("the prompt is empty: AR decoding needs at least one token");
        if (maxNew < 0) throw new DiffuException($"--max-new must be non-negative, got {maxNew}");
        if (temperature < 0 || !float.IsFinite(temperature)) throw new DiffuException($"temperature must be a finite number >= 0, got {temperature}");
        long capacity = (long)prompt.Count + maxNew;
        if (capacity > model.Positions)
            throw new DiffuException($"prompt ({prompt.Count}) + new tokens ({maxNew}) = {capacity} exceed the model's {model.Positions} positions");

        // No room reserved for maxNew tokens: decoding may stop at the first end-of-text.
        var output = new List<int>();
        if (maxNew == 0) return [];
        var logits = new float[model.VocabSize];
        using var cache = model.CreateKvCache(1, (int)capacity);
        int[] step = prompt.ToArray();
        for (int i = 0; i < maxNew; i++)
        {
            model.Decode(step, 1, cache, logits);
            int next = TokenSampler.Sample(logits, temperature, Philox.Uniform(seed, 0, (ulong)i));
            output.Add(next);
            onToken?.Invoke(next);
            if (next == stopToken) break;
            step = [next];
        }
        return output.ToArray();
    }
}

/// <summary>Picks a token from one row of logits on the host.</summary>
public static class TokenSampler
{
    /// <summary>Argmax for temperature 0, else inverse-CDF sampling of softmax(logits / temperature) at u in [0, 1).</summary>
    public static int Sample(ReadOnlySpan<float> logits, float temperature, float u)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++)
            if (logits[i] > logits[best]) best = i;
        if (temperature == 0) return best;
        double max = logits[best], total = 0;
        for (int i = 0; i < logits.Length; i++) total += Math.Exp((logits[i] - max) / temperature);
        double target = u * total, cumulative = 0;
        for (int i = 0; i < logits.Length; i++)
        {
            cumulative += Math.Exp((logits[i] - max) / temperature);
            if (cumulative > target) return i;
        }
        return best;
    }
}
