namespace DiffuSharp.Kernels;

/// <summary>
/// The arithmetic of the matmuls (forward x·w and the backward accumulations) on a CUDA device.
/// Inputs and outputs stay float32 tensors in every case; only the products inside the matmul change.
/// </summary>
public enum MatMulPrecision
{
    /// <summary>Float32 products and sums (SIMT cores): relative error near 1e-7 per product, the reference.</summary>
    F32,

    /// <summary>
    /// Tensor cores: each input is rounded to TF32 (10 mantissa bits, float32's range; round to nearest,
    /// ties away from zero), products are exact and sums are float32. Relative error of a dot product is
    /// about 1e-3 (half a TF32 unit, 2^-11, per input, partly cancelling). Needs compute capability 8.0+.
    /// </summary>
    TF32,

    /// <summary>
    /// Tensor cores: each input is rounded to bfloat16 (7 mantissa bits, float32's range; round to nearest
    /// even), products are exact and sums are float32. Relative error of a dot product is about 1e-2
    /// (2^-8 per input). Needs compute capability 8.0+.
    /// </summary>
    BF16,
}
