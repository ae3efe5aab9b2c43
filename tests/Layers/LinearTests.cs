using DiffuSharp.Layers;
using DiffuSharp.Runtime;
using Ref = DiffuSharp.Kernels.Reference;

namespace DiffuSharp.Tests.Layers;

/// <summary>
/// The Linear layer on every device, in both weight layouts: forward and backward against the float64 reference, a
/// frozen weight (dX alone, its gradient untouched: the matmul backward without dW), and an adapter's path added in
/// both directions.
/// </summary>
[TestFixture("cpu")]
[TestFixture("ilgpu-cpu")]
[TestFixture("cuda")]
public sealed class LinearTests(string deviceName)
{
    const int M = 37, In = 29, Out = 19;
    Device device = null!;

    [OneTimeSetUp]
    public void SetUp() => device = TestDevices.Create(deviceName);

    [OneTimeTearDown]
    public void TearDown() => device?.Dispose();

    /// <summary>The reference weight [in, out] of a layer in either layout (OutputMajor stores its transpose).</summary>
    static double[] InputMajor(float[] w, WeightLayout layout)
    {
        var result = new double[In * Out];
        for (int i = 0; i < In; i++)
            for (int o = 0; o < Out; o++)
                result[i * Out + o] = layout == WeightLayout.InputMajor ? w[i * Out + o] : w[o * In + i];
        return result;
    }

    (Linear Layer, Linear Gradient, float[] W, float[] B) Make(WeightLayout layout, Random rng)
    {
        var w = TestUtil.RandomFloats(rng, In * Out);
        var b = TestUtil.RandomFloats(rng, Out);
        int[] shape = layout == WeightLayout.InputMajor ? [In, Out] : [Out, In];
        var layer = new Linear(device.FromArray(w, shape), device.FromArray(b, Out), layout);
        var gradient = new Linear(device.Zeros(DType.F32, shape), device.Zeros(DType.F32, Out), layout);
        return (layer, gradient, w, b);
    }

    static void Dispose(params Linear[] layers)
    {
        foreach (var l in layers)
        {
            l.Weight.Dispose();
            l.Bias?.Dispose();
        }
    }

    [TestCase(WeightLayout.InputMajor)]
    [TestCase(WeightLayout.OutputMajor)]
    public void ForwardAndBackwardMatchTheReference(WeightLayout layout)
    {
        var rng = TestUtil.NewRandom();
        var (layer, gradient, w, b) = Make(layout, rng);
        var x = TestUtil.RandomFloats(rng, M * In);
        var dy = TestUtil.RandomFloats(rng, M * Out);
        using var tx = device.FromArray(x, M, In);
        using var ty = device.Allocate(DType.F32, M, Out);
        using var tdy = device.FromArray(dy, M, Out);
        using var tdx = device.Zeros(DType.F32, M, In);
        layer.Forward(tx, ty);
        layer.Backward(tdy, tx, tdx, gradient);
        Assert.That(layer.InFeatures, Is.EqualTo(In));
        Assert.That(layer.OutFeatures, Is.EqualTo(Out));

        var wd = InputMajor(w, layout);
        var y = new double[M * Out];
        Ref.MatMul.Forward(TestUtil.ToDouble(x), wd, TestUtil.ToDouble(b), y, M, In, Out);
        var dx = new double[M * In];
        var dw = new double[In * Out];
        var db = new double[Out];
        Ref.MatMul.Backward(TestUtil.ToDouble(dy), TestUtil.ToDouble(x), wd, dx, dw, db, M, In, Out);
        Assert.That(TestUtil.RelativeL2(device.ToArray(ty), y), Is.LessThan(1e-5), "y");
        Assert.That(TestUtil.RelativeL2(device.ToArray(tdx), dx), Is.LessThan(1e-5), "dX");
        var got = device.ToArray(gradient.Weight);
        Assert.That(TestUtil.RelativeL2(Array.ConvertAll(InputMajor(got, layout), v => (float)v), dw), Is.LessThan(1e-5), "dW");
        Assert.That(TestUtil.RelativeL2(device.ToArray(gradient.Bias!), db), Is.LessThan(1e-5), "dBias");
        Dispose(layer, gradient);
    }

    /// <summary>A gradient twin whose weight and bias are absent: the layer's gradient set when it is frozen.</summary>
    Linear FrozenTwin(Linear gradient) =>
        new(Tensor.Absent(device, gradient.Weight.Shape), Tensor.Absent(device, gradient.Bias!.Shape), gradient.Layout);

    [TestCase(WeightLayout.InputMajor)]
    [TestCase(WeightLayout.OutputMajor)]
    public void AnAbsentGradientTwinGivesTheSameDxAndNoWeightGradient(WeightLayout layout)
    {
        var rng = TestUtil.NewRandom();
        var (layer, gradient, _, _) = Make(layout, rng);
        using var x = device.FromArray(TestUtil.RandomFloats(rng, M * In), M, In);
        using var dy = device.FromArray(TestUtil.RandomFloats(rng, M * Out), M, Out);
        using var dxTrained = device.Zeros(DType.F32, M, In);
        using var dxFrozen = device.Zeros(DType.F32, M, In);
        layer.Backward(dy, x, dxTrained, gradient);
        var frozen = FrozenTwin(gradient);
        layer.Backward(dy, x, dxFrozen, frozen);
        Assert.That(device.ToArray(dxFrozen), Is.EqualTo(device.ToArray(dxTrained)).Within(1e-5f), "dX does not depend on freezing");
        Assert.Throws<InvalidOperationException>(() => device.ToArray(frozen.Weight), "an absent tensor has no storage to write to");
        Dispose(layer, gradient);
    }

    /// <summary>An adapter y += x · A (A [in, out]) that records its gradient dA = xᵀ · dY.</summary>
    sealed class DenseAdapter(Device device, float[] a) : ILinearAdapter, IDisposable
    {
        public readonly Tensor A = device.FromArray(a, In, Out);
        public readonly Tensor GradA = device.Zeros(DType.F32, In, Out);

        public void Forward(Tensor x, Tensor y)
        {
            using var extra = device.Allocate(DType.F32, M, Out);
            device.MatMul(x, A, null, extra);
            device.Add(y, extra, y);
        }

        public void Backward(Tensor dY, Tensor x, Tensor dX) => device.MatMulBackward(dY, x, A, dX, GradA, null);

        public void Dispose()
        {
            A.Dispose();
            GradA.Dispose();
        }
    }

    [Test]
    public void AnAdapterAddsItsPathInBothDirections()
    {
        var rng = TestUtil.NewRandom();
        var (layer, gradient, w, b) = Make(WeightLayout.OutputMajor, rng);
        var a = TestUtil.RandomFloats(rng, In * Out);
        using var adapter = new DenseAdapter(device, a);
        layer.Adapter = adapter;
        var x = TestUtil.RandomFloats(rng, M * In);
        var dy = TestUtil.RandomFloats(rng, M * Out);
        using var tx = device.FromArray(x, M, In);
        using var ty = device.Allocate(DType.F32, M, Out);
        using var tdy = device.FromArray(dy, M, Out);
        using var tdx = device.Zeros(DType.F32, M, In);
        layer.Forward(tx, ty);
        var frozen = FrozenTwin(gradient);
        layer.Backward(tdy, tx, tdx, frozen);

        // The layer with an adapter is the layer with weight W + A.
        var wd = InputMajor(w, WeightLayout.OutputMajor);
        for (int i = 0; i < wd.Length; i++) wd[i] += a[i];
        var y = new double[M * Out];
        Ref.MatMul.Forward(TestUtil.ToDouble(x), wd, TestUtil.ToDouble(b), y, M, In, Out);
        var dx = new double[M * In];
        var da = new double[In * Out];
        Ref.MatMul.Backward(TestUtil.ToDouble(dy), TestUtil.ToDouble(x), wd, dx, da, new double[Out], M, In, Out);
        Assert.That(TestUtil.RelativeL2(device.ToArray(ty), y), Is.LessThan(1e-5), "y");
        Assert.That(TestUtil.RelativeL2(device.ToArray(tdx), dx), Is.LessThan(1e-5), "dX");
        Assert.That(TestUtil.RelativeL2(device.ToArray(adapter.GradA), da), Is.LessThan(1e-5), "the adapter's gradient");
        Dispose(layer, gradient);
    }
}
