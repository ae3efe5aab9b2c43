using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Runtime;

namespace DiffuSharp.Models;

/// <summary>
/// A parameter tensor as a safetensors entry of a chosen type, produced when the writer reaches it (one tensor's host copy
/// at a time): 16-bit tensors saved in their own type are written bit for bit, float32 ones saved in 16 bits are rounded
/// to nearest (ties to even), and 16-bit ones saved as float32 are widened exactly.
/// </summary>
public static class ParameterEntries
{
    public static SafeTensorsEntry Entry(string name, Tensor tensor, DType type)
    {
        var device = tensor.Device;
        if (type == DType.F32) return SafeTensorsEntry.DeferredFloat32(name, tensor.Shape, () => device.ToArray(tensor));
        if (!Tensor.Is16Bit(type)) throw new ArgumentException($"{type} is not a weight type");
        var format = type == DType.BF16 ? WeightFormat.BF16 : WeightFormat.F16;
        return new SafeTensorsEntry(name, type == DType.BF16 ? SafeTensorsDType.BF16 : SafeTensorsDType.F16, tensor.Shape, stream =>
        {
            var bits = new ushort[tensor.Length];
            if (tensor.DType == type) device.Download(tensor, 0, bits);
            else SixteenBit.Narrow(device.ToArray(tensor), format, bits);
            stream.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(bits.AsSpan()));
        });
    }
}
