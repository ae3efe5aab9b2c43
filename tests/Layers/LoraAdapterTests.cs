using DiffuSharp.Layers;
using DiffuSharp.Lora;
using DiffuSharp.Runtime;

namespace DiffuSharp.Tests.Layers;

/// <summary>
/// A LoRA adapter in a frozen Linear's slot, on every device: y, dX, dA and dB against float64 formulas, whose dA and
/// dB are in turn checked against central finite differences of the float64 forward.
/// </summary>
[TestFixture("cpu")]
[TestFixture("ilgpu-cpu")]
[TestFixture("cuda")]
public sealed class LoraAdapterTests(string deviceName)
{
    const int M = 13, In = 11, Out = 7, R = 3;
    const float Scale = 16f / R;
    Device device = null!;

    [OneTimeSetUp]
    public void SetUp() => device = TestDevices.Create(deviceName);

    [OneTimeTearDown]
    public void TearDown() => device?.Dispose();

    /// <summary>y = x · (W + s · B · A)ᵀ + b for W [Out, In], A [R, In], B [Out, R].</summary>
    static double[] Forward(double[] x, double[] w, double[] b, double[] a, double[] bb)
    {
        var y = new double[M * Out];
        for (int i = 0; i < M; i++)
            for (int o = 0; o < Out; o++)
            {
                double sum = b[o];
                for (int k = 0; k < In; k++)
                {
                    double low = 0;
                    for (int r = 0; r < R; r++) low += bb[o * R + r] * a[r * In + k];
                    sum += x[i * In + k] * (w[o * In + k] + Scale * low);
                }
                y[i * Out + o] = sum;
            }
        return y;
    }

    static double Loss(double[] y, double[] dy) => y.Zip(dy, (p, q) => p * q).Sum();

    [Test]
    public void ForwardAndBackwardMatchTheFormulasAndFiniteDifferences()
    {
        var rng = TestUtil.NewRandom();
        float[] x = TestUtil.RandomFloats(rng, M * In), w = TestUtil.RandomFloats(rng, Out * In), b = TestUtil.RandomFloats(rng, Out);
        float[] a = TestUtil.RandomFloats(rng, R * In), bb = TestUtil.RandomFloats(rng, Out * R), dy = TestUtil.RandomFloats(rng, M * Out);
        using var tw = device.FromArray(w, Out, In);
        using var tb = device.FromArray(b, Out);
        using var ta = device.FromArray(a, R, In);
        using var tbb = device.FromArray(bb, Out, R);
        using var ga = device.Zeros(DType.F32, R, In);
        using var gbb = device.Zeros(DType.F32, Out, R);
        var layer = new Linear(tw, tb, WeightLayout.OutputMajor) { Adapter = new LoraAdapter(ta, tbb, ga, gbb, Scale) };
        using var tx = device.FromArray(x, M, In);
        using var ty = device.Allocate(DType.F32, M, Out);
        using var tdy = device.FromArray(dy, M, Out);
        using var tdx = device.Zeros(DType.F32, M, In);
        layer.Forward(tx, ty);
        layer.Backward(tdy, tx, tdx, new Linear(Tensor.Absent(device, Out, In), Tensor.Absent(device, Out), WeightLayout.OutputMajor));

        double[] xd = TestUtil.ToDouble(x), wd = TestUtil.ToDouble(w), bd = TestUtil.ToDouble(b), ad = TestUtil.ToDouble(a), bbd = TestUtil.ToDouble(bb), dyd = TestUtil.ToDouble(dy);
        Assert.That(TestUtil.RelativeL2(device.ToArray(ty), Forward(xd, wd, bd, ad, bbd)), Is.LessThan(1e-5), "y");

        // dX = dY · W_eff; dA = s · Bᵀ · dYᵀ · x; dB = s · dYᵀ · x · Aᵀ.
        var dx = new double[M * In];
        var da = new double[R * In];
        var db = new double[Out * R];
        for (int i = 0; i < M; i++)
            for (int o = 0; o < Out; o++)
            {
                double g = dyd[i * Out + o];
                for (int k = 0; k < In; k++)
                {
                    double low = 0;
                    for (int r = 0; r < R; r++) low += bbd[o * R + r] * ad[r * In + k];
                    dx[i * In + k] += g * (wd[o * In + k] + Scale * low);
                    for (int r = 0; r < R; r++)
                    {
                        da[r * In + k] += Scale * g * bbd[o * R + r] * xd[i * In + k];
                        db[o * R + r] += Scale * g * xd[i * In + k] * ad[r * In + k];
                    }
                }
            }
        Assert.That(TestUtil.RelativeL2(device.ToArray(tdx), dx), Is.LessThan(1e-5), "dX");
        Assert.That(TestUtil.RelativeL2(device.ToArray(ga), da), Is.LessThan(1e-5), "dA");
        Assert.That(TestUtil.RelativeL2(device.ToArray(gbb), db), Is.LessThan(1e-5), "dB");

        const double h = 1e-6;
        foreach (var (name, parameter, analytic) in new[] { ("A", ad, da), ("B", bbd, db) })
            for (int j = 0; j < parameter.Length; j++)
            {
                double keep = parameter[j];
                parameter[j] = keep + h;
                double up = Loss(Forward(xd, wd, bd, ad, bbd), dyd);
                parameter[j] = keep - h;
                double down = Loss(Forward(xd, wd, bd, ad, bbd), dyd);
                parameter[j] = keep;
                Assert.That(analytic[j], Is.EqualTo((up - down) / (2 * h)).Within(1e-6 * (1 + Math.Abs(analytic[j]))), $"d{name}[{j}]");
            }
    }
}
