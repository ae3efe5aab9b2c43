using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Tests.Models;

/// <summary>Flat parameter buffers: aligned views in order, pairing between sets, bounds, and views of disposed tensors.</summary>
public sealed class ParameterBuffersTests
{
    [Test]
    public void ViewsAreAlignedInOrderAndWriteThroughToTheBuffer()
    {
        using var device = Devices.Create("cpu");
        (string, int[])[] shapes = [("a", [3, 5]), ("b", [7]), ("c", [2, 2, 2])];
        using var buffers = ParameterBuffers.Allocate(device, shapes);
        Assert.That(buffers.Buffers, Has.Count.EqualTo(1));
        var a = buffers.View("a", [3, 5]);
        var b = buffers.View("b", [7]);
        var c = buffers.View("c", [2, 2, 2]);
        Assert.That(new[] { a.Offset, b.Offset, c.Offset }, Is.EqualTo(new long[] { 0, ParameterBuffers.Alignment, 2 * ParameterBuffers.Alignment }));
        Assert.That(buffers.Buffers[0].Length, Is.EqualTo(2 * ParameterBuffers.Alignment + 8));
        device.Upload(b, 0, new float[] { 1, 2, 3, 4, 5, 6, 7 });
        device.Fill(c, 9);
        var all = device.ToArray(buffers.Buffers[0]);
        Assert.That(all.AsSpan(ParameterBuffers.Alignment, 7).ToArray(), Is.EqualTo(new float[] { 1, 2, 3, 4, 5, 6, 7 }));
        Assert.That(all.AsSpan(2 * ParameterBuffers.Alignment, 8).ToArray(), Is.All.EqualTo(9f));
        Assert.That(all.Where((_, i) => i is >= 15 and < 64 or >= 71 and < 128), Is.All.EqualTo(0f), "the gaps stay zero");
        Assert.That(device.SumOfSquares(buffers.Buffers[0]), Is.EqualTo(140 + 8 * 81).Within(1e-9), "a whole-buffer op sees every view");
    }

    [Test]
    public void TwoSetsOfOneModelPairBufferForBuffer()
    {
        using var device = Devices.Create("cpu");
        using var model = Gpt2Model.Load(Gpt2FixtureTests.FixtureDir, device);
        using var grads = model.ZeroParameterSet();
        Assert.That(grads.Storage.Select(s => s.Length), Is.EqualTo(model.Parameters.Storage.Select(s => s.Length)));
        Assert.That(grads.Named().Select(n => (n.Name, n.Tensor.Offset, n.Tensor.ShapeText)),
            Is.EqualTo(model.Parameters.Named().Select(n => (n.Name, n.Tensor.Offset, n.Tensor.ShapeText))));
        Assert.That(grads.Named().All(n => n.Tensor.IsView), Is.True);
    }

    [Test]
    public void ViewsOutsideTheTensorOrOfADisposedOneAreRefused()
    {
        using var device = Devices.Create("cpu");
        var t = device.Zeros(DType.F32, 10);
        Assert.Throws<ArgumentException>(() => t.View(8, 3));
        Assert.Throws<ArgumentException>(() => t.View(-1, 2));
        var v = t.View(2, 2, 4);
        Assert.That(v.Shape, Is.EqualTo(new[] { 2, 4 }));
        var inner = v.View(1, 3);
        Assert.That(inner.Offset, Is.EqualTo(3), "a view of a view is a view of the owner");
        t.Dispose();
        Assert.Throws<ObjectDisposedException>(() => _ = v.Storage);
        using var buffers = ParameterBuffers.Allocate(device, [("x", [4])]);
        Assert.Throws<ArgumentException>(() => buffers.View("x", [2, 2]));
        Assert.Throws<ArgumentException>(() => buffers.View("y", [4]));
    }
}
