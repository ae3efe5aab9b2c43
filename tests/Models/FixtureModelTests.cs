using DiffuSharp.IO;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Tests.Models;

/// <summary>
/// The set-up of the tests against a PyTorch fixture: one device per fixture (CUDA ignored without a GPU), the model of
/// <paramref name="modelDir"/> loaded on it and the reference file <paramref name="referenceFile"/> beside it, made once
/// before the fixture's first test.
/// </summary>
public abstract class FixtureModelTests(string modelDir, string referenceFile, string deviceName)
{
    protected Device device = null!;
    protected ITrainableModel model = null!;
    protected SafeTensorsFile expected = null!;

    [OneTimeSetUp]
    public void Open()
    {
        device = TestDevices.Create(deviceName);
        model = ModelLoader.Load(modelDir, device);
        expected = SafeTensorsFile.Open(Path.Combine(modelDir, referenceFile));
    }

    [OneTimeTearDown]
    public void Close()
    {
        expected?.Dispose();
        model?.Dispose();
        device?.Dispose();
    }
}
