namespace DiffuSharp.Kernels;

/// <summary>
/// How one token is drawn from a row of logits z. Temperature 0 is greedy: the argmax (lowest id on ties),
/// with the statistics of softmax(z). Otherwise the distribution is softmax(z / Temperature), then:
/// TopK &gt; 0 keeps the tokens whose scaled logit is at least the K-th largest (ties at the K-th value are
/// all kept); TopP &lt; 1 then keeps the smallest set of most probable tokens whose probability reaches
/// TopP (the token that crosses TopP is kept: the kept set is every token with p ≥ θ for the largest θ
/// whose set reaches TopP); the kept tokens are renormalised. The token is drawn by inverse CDF in id order
/// with the uniform u = <see cref="Philox.Uniform"/>(seed, stream, row), so every device draws the same.
/// </summary>
public readonly record struct SamplingOptions(float Temperature = 1f, int TopK = 0, float TopP = 1f)
{
    /// <summary>Columns of the per-row statistics written beside each token.</summary>
    public const int StatCount = 4;

    /// <summary>Stat column: log p(token) under the final (filtered, renormalised) distribution.</summary>
    public const int LogProb = 0;
    /// <summary>Stat column: the largest probability.</summary>
    public const int MaxProb = 1;
    /// <summary>Stat column: largest minus second-largest probability (the top1-top2 margin; 1 with one token left).</summary>
    public const int Margin = 2;
    /// <summary>Stat column: Σ p log p, the negative entropy (0 for a one-hot distribution).</summary>
    public const int NegEntropy = 3;

    public bool Greedy => Temperature == 0;

    public void Validate()
    {
        if (!(Temperature >= 0) || !float.IsFinite(Temperature)) throw new ArgumentException($"temperature must be a finite number >= 0, got {Temperature}");
        if (TopK < 0) throw new ArgumentException($"top-k must be >= 0 (0 = off), got {TopK}");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentException($"top-p must be in (0, 1], got {TopP}");
    }
}

/// <summary>
/// The Philox counter each row of one sampling call draws at. Row r of the logits stands for position
/// Start + (r mod Width) of sequence r / Width, whose positions are Stride apart in the counter space, so a
/// window of a sequence draws the uniforms the whole sequence would. The default (all zero) is the identity:
/// row r draws at r.
/// </summary>
public readonly record struct SampleRows(int Width, int Stride, int Start)
{
    /// <summary>Rows [B, width] that stand for positions start .. start + width − 1 of B sequences of <paramref name="length"/> positions.</summary>
    public static SampleRows Window(int start, int width, int length)
    {
        if (width <= 0 || start < 0 || start + width > length)
            throw new ArgumentException($"a sampling window [{start}, {start + width}) must lie inside [0, {length})");
        return new SampleRows(width, length, start);
    }

    public ulong Key(int row) => Width == 0 ? (ulong)row : (ulong)((long)(row / Width) * Stride + Start + row % Width);
}
