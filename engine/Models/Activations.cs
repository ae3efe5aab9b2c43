using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>
/// The buffers of one transformer block's forward pass that both families have (pre-norm attention and MLP
/// branches around a residual stream), named the same in both; a family adds its projections' outputs.
/// </summary>
public abstract class BlockActivations : IDisposable
{
    readonly List<Tensor> owned = new();

    /// <param name="hidden">The MLP's inner width.</param>
    /// <param name="withMeans">Whether the norms keep a mean (LayerNorm) besides the rstd.</param>
    /// <param name="keepLse">Whether attention keeps its log-sum-exp for the backward pass.</param>
    protected BlockActivations(Device d, int b, int t, int c, int hidden, int heads, bool withMeans, bool keepLse)
    {
        Device = d;
        int rows = b * t;
        Norm1 = Own(d.Allocate(DType.F32, b, t, c));
        Norm1Mean = withMeans ? Own(d.Allocate(DType.F32, rows)) : null;
        Norm1Rstd = Own(d.Allocate(DType.F32, rows));
        Attention = Own(d.Allocate(DType.F32, b, t, c));
        Branch = Own(d.Allocate(DType.F32, b, t, c));
        AfterAttention = Own(d.Allocate(DType.F32, b, t, c));
        Norm2 = Own(d.Allocate(DType.F32, b, t, c));
        Norm2Mean = withMeans ? Own(d.Allocate(DType.F32, rows)) : null;
        Norm2Rstd = Own(d.Allocate(DType.F32, rows));
        Activated = Own(d.Allocate(DType.F32, b, t, hidden));
        Output = Own(d.Allocate(DType.F32, b, t, c));
        Lse = keepLse ? Own(d.Allocate(DType.F32, b, heads, t)) : null;
    }

    protected Device Device { get; }

    /// <summary>The normed input of the attention branch, and its statistics.</summary>
    public Tensor Norm1 { get; }
    public Tensor? Norm1Mean { get; }
    public Tensor Norm1Rstd { get; }

    /// <summary>The attention heads' output [B, T, C], before the output projection.</summary>
    public Tensor Attention { get; }

    /// <summary>A branch's output projection before it joins the residual stream (scratch: attention's, then the MLP's).</summary>
    public Tensor Branch { get; }

    /// <summary>The residual stream after the attention branch.</summary>
    public Tensor AfterAttention { get; }

    /// <summary>The normed input of the MLP branch, and its statistics.</summary>
    public Tensor Norm2 { get; }
    public Tensor? Norm2Mean { get; }
    public Tensor Norm2Rstd { get; }

    /// <summary>The MLP's activation [B, T, hidden] (GELU, or SwiGLU's gate · up), the input of its down projection.</summary>
    public Tensor Activated { get; }

    /// <summary>The block's output: the residual stream after the MLP branch.</summary>
    public Tensor Output { get; }

    /// <summary>Attention log-sum-exp [B, H, T], kept for the backward pass; null in inference.</summary>
    public Tensor? Lse { get; }

    protected Tensor Own(Tensor t)
    {
        owned.Add(t);
        return t;
    }

    public void Dispose()
    {
        foreach (var t in owned) t.Dispose();
    }
}

/// <summary>
/// The buffers of a forward pass for one (batch, length), from the device pool (making and disposing a set per
/// step allocates nothing after the first). Inference shares one block's buffers among all layers; training
/// keeps every layer's. A decoding set computes the logits of the last position only.
/// </summary>
public sealed class ModelActivations<TBlock> : IDisposable where TBlock : BlockActivations
{
    readonly TBlock[] blocks;

    internal ModelActivations(Device d, int batch, int length, int channels, int vocab, int layers, bool keepAllLayers, bool lastOnly,
        bool withMeans, Func<bool, TBlock> block)
    {
        if (batch <= 0 || length <= 0) throw new ArgumentException($"batch and length must be positive, got [{batch}, {length}]");
        Batch = batch; Length = length; KeepsAllLayers = keepAllLayers;
        blocks = new TBlock[keepAllLayers ? layers : 1];
        try
        {
            Ids = d.Allocate(DType.I32, batch, length);
            Embedded = d.Allocate(DType.F32, batch, length, channels);
            for (int i = 0; i < blocks.Length; i++) blocks[i] = block(keepAllLayers);
            FinalNorm = d.Allocate(DType.F32, batch, length, channels);
            FinalMean = withMeans ? d.Allocate(DType.F32, batch * length) : null;
            FinalRstd = d.Allocate(DType.F32, batch * length);
            if (lastOnly)
            {
                LastHidden = d.Allocate(DType.F32, batch, channels);
                LastLogits = d.Allocate(DType.F32, batch, vocab);
            }
            else Logits = d.Allocate(DType.F32, batch, length, vocab);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public int Batch { get; }
    public int Length { get; }
    public bool KeepsAllLayers { get; }
    public Tensor Ids { get; } = null!;

    /// <summary>The embedded input [B, T, C]: the first block's input.</summary>
    public Tensor Embedded { get; } = null!;

    /// <summary>The final norm's output and statistics.</summary>
    public Tensor FinalNorm { get; } = null!;
    public Tensor? FinalMean { get; }
    public Tensor FinalRstd { get; } = null!;

    /// <summary>Logits [B, T, V] of every position; null in a decoding set.</summary>
    public Tensor? Logits { get; }

    /// <summary>The last position's final hidden state [B, C] and logits [B, V], in a decoding set.</summary>
    public Tensor? LastHidden { get; }
    public Tensor? LastLogits { get; }

    public TBlock Block(int layer) => blocks[blocks.Length == 1 ? 0 : layer];

    /// <summary>The input of block <paramref name="layer"/>: the embedding, or the previous block's output.</summary>
    public Tensor BlockInput(int layer) => layer == 0 ? Embedded : Block(layer - 1).Output;

    public void Dispose()
    {
        Ids?.Dispose(); Embedded?.Dispose();
        foreach (var b in blocks) b?.Dispose();
        FinalNorm?.Dispose(); FinalMean?.Dispose(); FinalRstd?.Dispose();
        Logits?.Dispose(); LastHidden?.Dispose(); LastLogits?.Dispose();
    }
}
