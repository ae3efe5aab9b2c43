using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using DiffuSharp.IO;

namespace DiffuSharp.Tests;

public class SafeTensorsTests
{
    private string _dir = "";

    [SetUp]
    public void SetUp()
    {
        _dir = Path.Combine(Path.GetTempPath(), "diffusharp-safetensors-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
    }

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    // ---- round trips -------------------------------------------------------------------------------

    [Test]
    public void Float32RoundTripKeepsValuesShapesAndMetadata()
    {
        var rng = TestUtil.NewRandom();
        var a = TestUtil.RandomFloats(rng, 15);
        var b = TestUtil.RandomFloats(rng, 8, 100f);
        string path = Path.Combine(_dir, "f32.safetensors");
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcode ✓" };
        SafeTensorsWriter.Write(path, [SafeTensorsEntry.FromFloat32("a", [3, 5], a), SafeTensorsEntry.FromFloat32("b.weight", [2, 2, 2], b)], metadata);

        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.FilePath, Is.EqualTo(path));
        Assert.That(file.Metadata, Is.EquivalentTo(metadata));
        Assert.That(file.Tensors.Select(t => t.Name), Is.EqualTo(new[] { "a", "b.weight" }));
        var info = file.Info("b.weight");
        Assert.That(info.DType, Is.EqualTo(SafeTensorsDType.F32));
        Assert.That(info.Shape, Is.EqualTo(new[] { 2, 2, 2 }));
        Assert.That(info.ElementCount, Is.EqualTo(8));
        Assert.That((info.Begin, info.End), Is.EqualTo((60L, 92L)));
        Assert.That(file.ReadFloat32("a"), Is.EqualTo(a));
        var dst = new float[8];
        file.ReadFloat32("b.weight", dst);
        Assert.That(dst, Is.EqualTo(b));
        Assert.That(file.Contains("a") && !file.Contains("c"));
    }

    [Test]
    public void Float64IsReadAsNearestFloat32()
    {
        double[] values = [Math.PI, -1e-300, 1e300, 0.1, -0.0, 65504.0, 1.0 / 3];
        string path = Write(SafeTensorsEntry.FromFloat64("d", [values.Length], values));
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.Info("d").DType, Is.EqualTo(SafeTensorsDType.F64));
        Assert.That(file.ReadFloat32("d"), Is.EqualTo(values.Select(v => (float)v).ToArray()));
    }

    [Test]
    public void Float16EncodingMatchesSystemHalf()
    {
        var values = SpecialFloats().Concat(TestUtil.RandomFloats(TestUtil.NewRandom(), 4000, 70000f))
                                    .Concat(TestUtil.RandomFloats(TestUtil.NewRandom(), 4000, 1e-4f)).ToArray();
        string path = Write(SafeTensorsEntry.FromFloat16("h", [values.Length], values));
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.Info("h").DType, Is.EqualTo(SafeTensorsDType.F16));
        var read = file.ReadFloat32("h");
        for (int i = 0; i < values.Length; i++)
        {
            float expected = (float)(Half)values[i];
            if (float.IsNaN(expected)) Assert.That(read[i], Is.NaN, $"value {values[i]}");
            else Assert.That(BitConverter.SingleToInt32Bits(read[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(expected)), $"value {values[i]:R}");
        }
    }

    [Test]
    public void Float16DecodingMatchesSystemHalfForAllBitPatterns()
    {
        var bytes = new byte[65536 * 2];
        for (int i = 0; i < 65536; i++) BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(2 * i), (ushort)i);
        string path = Write(new SafeTensorsEntry("all", SafeTensorsDType.F16, [65536], bytes));
        using var file = SafeTensorsFile.Open(path);
        var read = file.ReadFloat32("all");
        for (int i = 0; i < 65536; i++)
        {
            float expected = (float)BitConverter.UInt16BitsToHalf((ushort)i);
            if (float.IsNaN(expected)) Assert.That(read[i], Is.NaN, $"bits {i:X4}");
            else Assert.That(BitConverter.SingleToInt32Bits(read[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(expected)), $"bits {i:X4}");
        }
    }

    [Test]
    public void BFloat16EncodingRoundsToNearestEven()
    {
        var values = SpecialFloats().Concat(TestUtil.RandomFloats(TestUtil.NewRandom(), 4000, 1e6f))
                                    .Concat(TestUtil.RandomFloats(TestUtil.NewRandom(), 4000, 1e-30f)).ToArray();
        string path = Write(SafeTensorsEntry.FromBFloat16("b", [values.Length], values));
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.Info("b").DType, Is.EqualTo(SafeTensorsDType.BF16));
        var read = file.ReadFloat32("b");
        for (int i = 0; i < values.Length; i++)
        {
            if (float.IsNaN(values[i])) { Assert.That(read[i], Is.NaN); continue; }
            Assert.That(BitConverter.SingleToInt32Bits(read[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(NearestBFloat16(values[i]))), $"value {values[i]:R}");
        }
    }

    [Test]
    public void BFloat16DecodingIsTheHighHalfOfFloat32ForAllBitPatterns()
    {
        var bytes = new byte[65536 * 2];
        for (int i = 0; i < 65536; i++) BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(2 * i), (ushort)i);
        string path = Write(new SafeTensorsEntry("all", SafeTensorsDType.BF16, [256, 256], bytes));
        using var file = SafeTensorsFile.Open(path);
        var read = file.ReadFloat32("all");
        for (int i = 0; i < 65536; i++)
            Assert.That(BitConverter.SingleToInt32Bits(read[i]), Is.EqualTo(i << 16), $"bits {i:X4}");
    }

    [Test]
    public void IntegerDTypesRoundTrip()
    {
        int[] i32 = [0, 1, -1, int.MaxValue, int.MinValue, 50256];
        long[] i64 = [0, -5, 1L << 40, long.MinValue, long.MaxValue];
        byte[] u8 = [0, 1, 127, 128, 255];
        sbyte[] i8 = [0, -128, 127, -1];
        short[] i16 = [0, short.MinValue, short.MaxValue, -2];
        byte[] boolean = [1, 0, 0, 1];
        var i16Bytes = new byte[i16.Length * 2];
        for (int i = 0; i < i16.Length; i++) BinaryPrimitives.WriteInt16LittleEndian(i16Bytes.AsSpan(2 * i), i16[i]);
        string path = Write(
            SafeTensorsEntry.FromInt32("i32", [2, 3], i32),
            SafeTensorsEntry.FromInt64("i64", [5], i64),
            SafeTensorsEntry.FromUInt8("u8", [5], u8),
            new SafeTensorsEntry("i8", SafeTensorsDType.I8, [4], i8.Select(v => (byte)v).ToArray()),
            new SafeTensorsEntry("i16", SafeTensorsDType.I16, [2, 2], i16Bytes),
            new SafeTensorsEntry("mask", SafeTensorsDType.BOOL, [2, 2], boolean));

        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.Tensors.Select(t => t.DType), Is.EqualTo(new[]
        {
            SafeTensorsDType.I32, SafeTensorsDType.I64, SafeTensorsDType.U8, SafeTensorsDType.I8, SafeTensorsDType.I16, SafeTensorsDType.BOOL,
        }));
        Assert.That(file.ReadInt32("i32"), Is.EqualTo(i32));
        Assert.That(file.ReadInt64("i32"), Is.EqualTo(i32.Select(v => (long)v)));
        Assert.That(file.ReadInt64("i64"), Is.EqualTo(i64));
        Assert.That(file.ReadInt32("u8"), Is.EqualTo(u8.Select(v => (int)v)));
        Assert.That(file.ReadInt32("i8"), Is.EqualTo(i8.Select(v => (int)v)));
        Assert.That(file.ReadInt32("i16"), Is.EqualTo(i16.Select(v => (int)v)));
        Assert.That(file.ReadInt32("mask"), Is.EqualTo(new[] { 1, 0, 0, 1 }));
        Assert.That(file.ReadBytes("mask"), Is.EqualTo(boolean));
        Assert.That(file.ReadBytes("u8"), Is.EqualTo(u8));
        Assert.That(file.ReadBytes("i16"), Is.EqualTo(i16Bytes));

        var tooWide = Assert.Throws<DiffuException>(() => file.ReadInt32("i64"))!;
        Assert.That(tooWide.Message, Does.Contain("i64").And.Contain("int32").And.Contain(path));
        var notFloat = Assert.Throws<DiffuException>(() => file.ReadFloat32("i32"))!;
        Assert.That(notFloat.Message, Does.Contain("i32").And.Contain("not a float type"));
    }

    [Test]
    public void FloatTensorIsNotReadAsIntegers()
    {
        string path = Write(SafeTensorsEntry.FromFloat32("x", [1], [1f]));
        using var file = SafeTensorsFile.Open(path);
        var e = Assert.Throws<DiffuException>(() => file.ReadInt32("x"))!;
        Assert.That(e.Message, Does.Contain("'x'").And.Contain("not an integer type"));
    }

    [Test]
    public void ScalarsAndEmptyTensorsRoundTrip()
    {
        string path = Write(SafeTensorsEntry.FromFloat32("scalar", [], [2.5f]), SafeTensorsEntry.FromFloat32("empty", [0, 4], []),
                            SafeTensorsEntry.FromInt32("last", [1], [7]));
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.Info("scalar").ElementCount, Is.EqualTo(1));
        Assert.That(file.ReadFloat32("scalar"), Is.EqualTo(new[] { 2.5f }));
        Assert.That(file.ReadFloat32("empty"), Is.Empty);
        Assert.That(file.ReadInt32("last"), Is.EqualTo(new[] { 7 }));
    }

    [Test]
    public void EmptyFileWithoutTensorsRoundTrips()
    {
        string path = Write();
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.Tensors, Is.Empty);
        Assert.That(file.Metadata, Is.Empty);
    }

    [Test]
    public void TensorsAreListedInDataOrderWhateverTheHeaderOrder()
    {
        string path = RawFile("""{"late":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"early":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", 12);
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.Tensors.Select(t => t.Name), Is.EqualTo(new[] { "early", "late" }));
    }

    [Test]
    public void MissingTensorIsAnErrorNamingTensorAndFile()
    {
        string path = Write(SafeTensorsEntry.FromFloat32("x", [1], [1f]));
        using var file = SafeTensorsFile.Open(path);
        var e = Assert.Throws<DiffuException>(() => file.Info("nope"))!;
        Assert.That(e.Message, Does.Contain("'nope'").And.Contain(path));
        Assert.Throws<DiffuException>(() => file.ReadFloat32("nope"));
    }

    [Test]
    public void DestinationOfTheWrongSizeIsAnError()
    {
        string path = Write(SafeTensorsEntry.FromFloat32("x", [2, 3], new float[6]));
        using var file = SafeTensorsFile.Open(path);
        var e = Assert.Throws<DiffuException>(() => file.ReadFloat32("x", new float[5]))!;
        Assert.That(e.Message, Does.Contain("'x'").And.Contain("6 elements").And.Contain("[2, 3]").And.Contain("5"));
    }

    [Test]
    public void ReadingAfterDisposeThrows()
    {
        string path = Write(SafeTensorsEntry.FromFloat32("x", [1], [1f]));
        var file = SafeTensorsFile.Open(path);
        file.Dispose();
        Assert.Throws<ObjectDisposedException>(() => file.ReadFloat32("x"));
    }

    // ---- malformed files ---------------------------------------------------------------------------

    [Test]
    public void FileShorterThanEightBytes()
    {
        string path = Path.Combine(_dir, "short.safetensors");
        File.WriteAllBytes(path, [1, 2, 3, 4, 5]);
        ExpectFormatError(path, "5 bytes, too short");
    }

    [Test]
    public void MissingFile() => ExpectFormatError(Path.Combine(_dir, "absent.safetensors"), "not found");

    [Test]
    public void TruncatedDataSection()
    {
        string path = Write(SafeTensorsEntry.FromFloat32("a", [4], new float[4]), SafeTensorsEntry.FromFloat32("b", [4], new float[4]));
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^5]);
        ExpectFormatError(path, "data section is truncated: the header describes 32 bytes of tensor data, but only 27 bytes follow the header");
    }

    [Test]
    public void HeaderLengthLargerThanFile()
    {
        string path = Path.Combine(_dir, "big.safetensors");
        var bytes = new byte[40];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, 1000);
        File.WriteAllBytes(path, bytes);
        ExpectFormatError(path, "header length 1000 is larger than the file (32 bytes");
    }

    /// <summary>A text file used to be reported by the header length its first 8 bytes make.</summary>
    [TestCase("hello world, this is text\n", "not a safetensors file: it starts with \"hello wo\"")]
    [TestCase("{\n  \"vocab_size\": 512\n}\n", "not a safetensors file: it starts with \"{\\n  \\\"voc\"")]
    public void TextFileIsNotASafetensorsFile(string text, string problem)
    {
        string path = Path.Combine(_dir, "text.safetensors");
        File.WriteAllText(path, text);
        ExpectFormatError(path, problem);
    }

    [Test]
    public void BinaryStartIsNotShownAsText()
    {
        string path = Path.Combine(_dir, "big.safetensors");
        var bytes = new byte[40];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, 1000);
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Open(path))!;
        Assert.That(e.Message, Does.Contain("not a safetensors file: header length 1000").And.Not.Contain("starts with"));
    }

    [Test]
    public void HeaderLengthOverTheLimit()
    {
        string path = Path.Combine(_dir, "huge.safetensors");
        var bytes = new byte[40];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, 200_000_000);
        File.WriteAllBytes(path, bytes);
        ExpectFormatError(path, "header length 200000000 is larger than the 100000000-byte limit");
    }

    [TestCase("{\"a\": {\"dtype\": \"F32\",", "not valid JSON")]
    [TestCase("not json at all", "not a safetensors file: the header does not start with '{'")]
    [TestCase("", "not a safetensors file: the header does not start with '{'")]
    [TestCase(" {}", "not a safetensors file: the header does not start with '{'")]
    [TestCase("{} {}", "not valid JSON")]
    [TestCase("[1, 2]", "not a safetensors file: the header does not start with '{'")]
    [TestCase("\"text\"", "not a safetensors file: the header does not start with '{'")]
    [TestCase("{\"a\": 5}", "entry for tensor 'a' is not a JSON object")]
    [TestCase("{\"a\": [\"F32\"]}", "entry for tensor 'a' is not a JSON object")]
    public void InvalidHeaderJson(string header, string problem) => ExpectFormatError(RawFile(header, 0), problem);

    [Test]
    public void HeaderThatIsNotUtf8()
    {
        var header = Encoding.UTF8.GetBytes("{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}");
        header[3] = 0xFF;
        ExpectFormatError(RawFile(header, 4), "not valid");
    }

    [Test]
    public void UnknownDType() =>
        ExpectFormatError(RawFile("""{"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}""", 4), "tensor 'w' has unknown dtype 'F8_E4M3'");

    [Test]
    public void LowerCaseDTypeIsUnknown() =>
        ExpectFormatError(RawFile("""{"w":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}""", 4), "unknown dtype 'f32'");

    [TestCase("""{"w":{"dtype":"F32","data_offsets":[0,4]}}""", "tensor 'w' has no shape")]
    [TestCase("""{"w":{"dtype":"F32","shape":[1]}}""", "tensor 'w' has no data_offsets")]
    [TestCase("""{"w":{"shape":[1],"data_offsets":[0,4]}}""", "tensor 'w' has no dtype")]
    [TestCase("""{"w":{"dtype":7,"shape":[1],"data_offsets":[0,4]}}""", "tensor 'w' has a dtype that is not a string")]
    [TestCase("""{"w":{"dtype":"F32","shape":1,"data_offsets":[0,4]}}""", "tensor 'w' has a malformed shape: not an array")]
    [TestCase("""{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}""", "tensor 'w' has a malformed shape: dimension -1 is not")]
    [TestCase("""{"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}""", "tensor 'w' has a malformed shape: dimension 1.5 is not")]
    [TestCase("""{"w":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}}""", "tensor 'w' has a malformed shape: dimension \"1\" is not")]
    [TestCase("""{"w":{"dtype":"F32","shape":[[1]],"data_offsets":[0,4]}}""", "tensor 'w' has a malformed shape: dimension an array is not")]
    [TestCase("""{"w":{"dtype":"F32","shape":[4294967296],"data_offsets":[0,4]}}""", "tensor 'w' has a malformed shape: dimension 4294967296")]
    [TestCase("""{"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}""", "tensor 'w' has malformed data_offsets: -4 is not a non-negative integer")]
    [TestCase("""{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4.0]}}""", "tensor 'w' has malformed data_offsets: 4.0 is not")]
    [TestCase("""{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}""", "tensor 'w' has malformed data_offsets: 3 numbers")]
    [TestCase("""{"w":{"dtype":"F32","shape":[1],"data_offsets":[4]}}""", "tensor 'w' has malformed data_offsets: 1 numbers")]
    [TestCase("""{"w":{"dtype":"F32","shape":[1],"data_offsets":{"begin":0}}}""", "tensor 'w' has malformed data_offsets: not an array")]
    [TestCase("""{"w":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}""", "tensor 'w' has data_offsets [4, 0] with begin after end")]
    [TestCase("""{"w":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}""", "tensor 'w' names field 'dtype' twice")]
    [TestCase("""{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":1}}""", "tensor 'w' has unknown field 'extra'")]
    [TestCase("""{"":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", "tensor with an empty name")]
    public void MalformedShapeOrOffsets(string header, string problem) => ExpectFormatError(RawFile(header, 4), problem);

    [Test]
    public void ShapeDisagreesWithOffsets() =>
        ExpectFormatError(RawFile("""{"w":{"dtype":"F16","shape":[2,3],"data_offsets":[0,24]}}""", 24),
                          "tensor 'w' has shape [2, 3] and dtype F16 (12 bytes), but its data_offsets [0, 24] span 24 bytes");

    [Test]
    public void ShapeTooLargeToAddress() =>
        ExpectFormatError(RawFile("""{"w":{"dtype":"F64","shape":[2147483647,2147483647,2147483647],"data_offsets":[0,8]}}""", 8), "too large to address");

    [Test]
    public void OffsetsOutOfRange() =>
        ExpectFormatError(RawFile("""{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[32,48]}}""", 32),
                          "tensor 'b' has data_offsets [32, 48] out of range of the data section (32 bytes)");

    [Test]
    public void OverlappingTensors() =>
        ExpectFormatError(RawFile("""{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}""", 24),
                          "tensors 'a' and 'b' overlap");

    [Test]
    public void GapBetweenTensors() =>
        ExpectFormatError(RawFile("""{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[20,36]}}""", 36),
                          "gap in the data section: bytes [16, 20) between tensors 'a' and 'b'");

    [Test]
    public void DataNotStartingAtZero() =>
        ExpectFormatError(RawFile("""{"a":{"dtype":"F32","shape":[4],"data_offsets":[4,20]}}""", 20),
                          "the first tensor 'a' starts at byte 4, not 0");

    [Test]
    public void DataLeftOverAfterLastTensor() =>
        ExpectFormatError(RawFile("""{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", 20),
                          "4 bytes of data left over after the last tensor");

    [Test]
    public void DataWithoutAnyTensor() => ExpectFormatError(RawFile("{}", 8), "8 bytes of data left over");

    [Test]
    public void DuplicateTensorNames() =>
        ExpectFormatError(RawFile("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", 8),
                          "header names 'a' twice");

    [TestCase("""{"__metadata__":{"format":1}}""", "__metadata__ entry 'format' is not a string")]
    [TestCase("""{"__metadata__":{"format":{"a":"b"}}}""", "__metadata__ entry 'format' is not a string")]
    [TestCase("""{"__metadata__":["pt"]}""", "__metadata__ is not a JSON object of string values")]
    [TestCase("""{"__metadata__":"pt"}""", "__metadata__ is not a JSON object of string values")]
    [TestCase("""{"__metadata__":{"k":"a","k":"b"}}""", "__metadata__ names 'k' twice")]
    public void MetadataNotAStringMap(string header, string problem) => ExpectFormatError(RawFile(header, 0), problem);

    [Test]
    public void FolderIsNotAFile() => ExpectFormatError(_dir, "is a directory");

    /// <summary>/dev/zero reports length 0 and never ends: it must be refused, not read as an empty file or read forever.</summary>
    [Test]
    public void CharacterDeviceIsRefused()
    {
        Assume.That(File.Exists("/dev/zero"), "needs /dev/zero");
        string file = Path.Combine(_dir, "zero.safetensors");
        File.CreateSymbolicLink(file, "/dev/zero");
        ExpectFormatError(file, "not a regular file");
        string index = Path.Combine(_dir, SafeTensorsCheckpoint.IndexFileName);
        File.CreateSymbolicLink(index, "/dev/zero");
        ExpectCheckpointError(_dir, index, "not a regular file");
    }

    // ---- checkpoints -------------------------------------------------------------------------------

    [Test]
    public void SingleFileCheckpointFromFileOrFolder()
    {
        string path = Path.Combine(_dir, "model.safetensors");
        SafeTensorsWriter.Write(path, [SafeTensorsEntry.FromFloat32("x", [2], [1f, 2f])], new Dictionary<string, string> { ["k"] = "v" });
        foreach (string open in new[] { path, _dir })
        {
            using var ckpt = SafeTensorsCheckpoint.Open(open);
            Assert.That(ckpt.Files, Is.EqualTo(new[] { path }));
            Assert.That(ckpt.Metadata["k"], Is.EqualTo("v"));
            Assert.That(ckpt.Tensors.Select(t => t.Name), Is.EqualTo(new[] { "x" }));
            Assert.That(ckpt.ReadFloat32("x"), Is.EqualTo(new[] { 1f, 2f }));
        }
    }

    [Test]
    public void ShardedCheckpointRoundTrip()
    {
        var rng = TestUtil.NewRandom();
        var wte = TestUtil.RandomFloats(rng, 12);
        var w0 = TestUtil.RandomFloats(rng, 6);
        var w1 = TestUtil.RandomFloats(rng, 4);
        SafeTensorsWriter.Write(Path.Combine(_dir, "model-00001-of-00002.safetensors"),
                               [SafeTensorsEntry.FromBFloat16("wte", [3, 4], wte), SafeTensorsEntry.FromFloat32("h.0.w", [2, 3], w0)],
                               new Dictionary<string, string> { ["format"] = "pt" });
        SafeTensorsWriter.Write(Path.Combine(_dir, "model-00002-of-00002.safetensors"), [SafeTensorsEntry.FromFloat32("h.1.w", [4], w1)]);
        WriteIndex("""
            {"metadata": {"total_size": 48, "format": "sharded"},
             "weight_map": {"h.1.w": "model-00002-of-00002.safetensors", "wte": "model-00001-of-00002.safetensors",
                            "h.0.w": "model-00001-of-00002.safetensors"}}
            """);
        string index = Path.Combine(_dir, SafeTensorsCheckpoint.IndexFileName);
        foreach (string open in new[] { _dir, index })
        {
            using var ckpt = SafeTensorsCheckpoint.Open(open);
            Assert.That(ckpt.Files.Select(Path.GetFileName), Is.EqualTo(new[] { "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors" }));
            Assert.That(ckpt.Tensors.Select(t => t.Name), Is.EqualTo(new[] { "wte", "h.0.w", "h.1.w" }));
            Assert.That(ckpt.Metadata["total_size"], Is.EqualTo("48"));
            Assert.That(ckpt.Metadata["format"], Is.EqualTo("sharded"), "the index's metadata wins over a shard's");
            Assert.That(ckpt.Contains("h.1.w") && !ckpt.Contains("nope"));
            Assert.That(ckpt.Info("wte").DType, Is.EqualTo(SafeTensorsDType.BF16));
            Assert.That(ckpt.ReadFloat32("wte"), Is.EqualTo(wte.Select(NearestBFloat16).ToArray()));
            Assert.That(ckpt.ReadFloat32("h.0.w"), Is.EqualTo(w0));
            var dst = new float[4];
            ckpt.ReadFloat32("h.1.w", dst);
            Assert.That(dst, Is.EqualTo(w1));
            var e = Assert.Throws<DiffuException>(() => ckpt.Info("nope"))!;
            Assert.That(e.Message, Does.Contain("'nope'").And.Contain(open));
        }
    }

    [Test]
    public void CheckpointFolderWithoutWeights() =>
        ExpectCheckpointError(_dir, _dir, "neither model.safetensors nor model.safetensors.index.json");

    [Test]
    public void CheckpointPathThatDoesNotExist()
    {
        string path = Path.Combine(_dir, "nothing");
        ExpectCheckpointError(path, path, "no such file or folder");
    }

    [TestCase("{\"weight_map\": {", "index is not valid JSON")]
    [TestCase("[]", "index is not a JSON object")]
    [TestCase("{\"metadata\": {}}", "index has no weight_map")]
    [TestCase("{\"weight_map\": {}}", "weight_map lists no tensors")]
    [TestCase("{\"weight_map\": [\"a\"]}", "weight_map is not a JSON object")]
    [TestCase("{\"weight_map\": {\"a\": 3}}", "weight_map entry 'a' is 3, not a shard file name")]
    [TestCase("{\"weight_map\": {\"a\": \"s.safetensors\"}, \"weight_map\": {}}", "index names 'weight_map' twice")]
    public void InvalidIndex(string json, string problem) => ExpectCheckpointError(_dir, WriteIndex(json), problem);

    /// <summary>Shards are files beside the index; a NUL used to reach Path.GetFullPath and throw an ArgumentException.</summary>
    [TestCase("a\0b")]
    [TestCase("a\nb.safetensors")]
    [TestCase("")]
    [TestCase(".")]
    [TestCase("..")]
    [TestCase("../s.safetensors")]
    [TestCase("sub/s.safetensors")]
    [TestCase("sub\\s.safetensors")]
    [TestCase("/etc/passwd")]
    public void ShardNameMustBeAPlainFileName(string shard)
    {
        string quoted = JsonSerializer.Serialize(shard);
        string index = WriteIndex("{\"weight_map\": {\"x\": " + quoted + "}}");
        ExpectCheckpointError(_dir, index, $"shard {quoted} is not a plain file name in the checkpoint folder");
    }

    [Test]
    public void ShardFileMissing()
    {
        SafeTensorsWriter.Write(Path.Combine(_dir, "a.safetensors"), [SafeTensorsEntry.FromFloat32("x", [1], [1f])]);
        string index = WriteIndex("""{"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}""");
        ExpectCheckpointError(_dir, index, "shard file 'b.safetensors' is missing");
    }

    [Test]
    public void TensorListedInIndexButAbsentFromShard()
    {
        SafeTensorsWriter.Write(Path.Combine(_dir, "a.safetensors"), [SafeTensorsEntry.FromFloat32("x", [1], [1f])]);
        string index = WriteIndex("""{"weight_map": {"x": "a.safetensors", "y": "a.safetensors"}}""");
        ExpectCheckpointError(_dir, index, "tensor 'y' is listed for shard 'a.safetensors' but is absent from it");
    }

    [Test]
    public void SameTensorInTwoShards()
    {
        SafeTensorsWriter.Write(Path.Combine(_dir, "a.safetensors"), [SafeTensorsEntry.FromFloat32("x", [1], [1f])]);
        SafeTensorsWriter.Write(Path.Combine(_dir, "b.safetensors"), [SafeTensorsEntry.FromFloat32("x", [1], [2f]), SafeTensorsEntry.FromFloat32("y", [1], [3f])]);
        string index = WriteIndex("""{"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}""");
        ExpectCheckpointError(_dir, index, "tensor 'x' is in two shards: 'a.safetensors' and 'b.safetensors'");
    }

    [Test]
    public void SameTensorTwiceInWeightMap()
    {
        SafeTensorsWriter.Write(Path.Combine(_dir, "a.safetensors"), [SafeTensorsEntry.FromFloat32("x", [1], [1f])]);
        SafeTensorsWriter.Write(Path.Combine(_dir, "b.safetensors"), [SafeTensorsEntry.FromFloat32("x", [1], [2f])]);
        string index = WriteIndex("""{"weight_map": {"x": "a.safetensors", "x": "b.safetensors"}}""");
        ExpectCheckpointError(_dir, index, "weight_map lists tensor 'x' twice (in 'a.safetensors' and 'b.safetensors')");
    }

    [Test]
    public void TensorInShardButNotInIndex()
    {
        SafeTensorsWriter.Write(Path.Combine(_dir, "a.safetensors"), [SafeTensorsEntry.FromFloat32("x", [1], [1f]), SafeTensorsEntry.FromFloat32("extra", [1], [1f])]);
        string index = WriteIndex("""{"weight_map": {"x": "a.safetensors"}}""");
        ExpectCheckpointError(_dir, index, "tensor 'extra' in shard 'a.safetensors' is not listed in the index");
    }

    [Test]
    public void MalformedShardIsReportedWithTheShardPath()
    {
        string shard = Path.Combine(_dir, "a.safetensors");
        File.WriteAllBytes(shard, [1, 2, 3]);
        WriteIndex("""{"weight_map": {"x": "a.safetensors"}}""");
        ExpectCheckpointError(_dir, shard, "too short");
    }

    [Test]
    public void ReadsTheFixtureWrittenByThePythonReference()
    {
        string dir = Path.Combine(TestUtil.Fixtures, "gpt2-tiny");
        using (var model = SafeTensorsCheckpoint.Open(dir))
        {
            Assert.That(model.Files, Is.EqualTo(new[] { Path.Combine(dir, "model.safetensors") }));
            Assert.That(model.Metadata["source"], Is.EqualTo("tests/reference/gpt2_reference.py"));
            Assert.That(model.Tensors, Has.Count.EqualTo(2 + 2 * 12 + 2));
            var wte = model.Info("transformer.wte.weight");
            Assert.That((wte.DType, wte.Begin, wte.End), Is.EqualTo((SafeTensorsDType.BF16, 0L, 512L * 64 * 2)));
            Assert.That(wte.Shape, Is.EqualTo(new[] { 512, 64 }));
            Assert.That(model.Info("transformer.wpe.weight").DType, Is.EqualTo(SafeTensorsDType.BF16));
            Assert.That(model.Info("transformer.h.1.attn.c_attn.weight").DType, Is.EqualTo(SafeTensorsDType.F16));
            Assert.That(model.Info("transformer.h.1.attn.c_attn.weight").Shape, Is.EqualTo(new[] { 64, 192 }));
            Assert.That(model.Info("transformer.h.0.mlp.c_proj.weight").Shape, Is.EqualTo(new[] { 256, 64 }));
            Assert.That(model.Info("transformer.ln_f.bias").DType, Is.EqualTo(SafeTensorsDType.F32));
            var lnWeight = model.ReadFloat32("transformer.h.0.ln_1.weight");
            Assert.That(lnWeight.Average(), Is.EqualTo(1.0).Within(0.1), "LayerNorm weights sit around 1");
            Assert.That(model.ReadFloat32("transformer.wte.weight"), Has.All.Not.NaN);
        }
        using var expected = SafeTensorsFile.Open(Path.Combine(dir, "expected.safetensors"));
        Assert.That(expected.ReadInt32("ids"), Has.Length.EqualTo(48).And.All.InRange(0, 511));
        Assert.That(expected.Info("logits_explicit").Shape, Is.EqualTo(new[] { 3, 16, 512 }));
        var allow = expected.ReadInt32("allow_mask");
        for (int q = 0; q < 16; q++)
        {
            for (int k = 0; k <= q; k++) Assert.That(allow[q * 16 + k], Is.EqualTo(1), "the lower triangle may always attend");
        }
        Assert.That(expected.ReadInt32("greedy_prompt"), Has.Length.EqualTo(5));
        Assert.That(expected.ReadInt32("greedy_tokens"), Has.Length.EqualTo(12));
    }

    // ---- writer ------------------------------------------------------------------------------------

    [Test]
    public void RewritingGivesIdenticalBytes()
    {
        var rng = TestUtil.NewRandom();
        SafeTensorsEntry[] entries =
        [
            SafeTensorsEntry.FromFloat32("a", [7, 3], TestUtil.RandomFloats(rng, 21)),
            SafeTensorsEntry.FromFloat16("b", [5], TestUtil.RandomFloats(rng, 5)),
            SafeTensorsEntry.FromInt32("c", [1], [42]),
        ];
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["step"] = "12" };
        string path = Path.Combine(_dir, "w.safetensors");
        SafeTensorsWriter.Write(path, entries, metadata);
        string again = Path.Combine(_dir, "w2.safetensors");
        SafeTensorsWriter.Write(again, entries, metadata);
        Assert.That(File.ReadAllBytes(again), Is.EqualTo(File.ReadAllBytes(path)));

        string copy = Path.Combine(_dir, "copy.safetensors");
        using (var file = SafeTensorsFile.Open(path))
        {
            SafeTensorsWriter.Write(copy, [
                SafeTensorsEntry.FromFloat32("a", [7, 3], file.ReadFloat32("a")),
                SafeTensorsEntry.FromFloat16("b", [5], file.ReadFloat32("b")),
                SafeTensorsEntry.FromInt32("c", [1], file.ReadInt32("c")),
            ], file.Metadata);
        }
        Assert.That(File.ReadAllBytes(copy), Is.EqualTo(File.ReadAllBytes(path)), "read then written again");
    }

    [Test]
    public void HeaderIsPaddedWithSpacesToAMultipleOfEight()
    {
        for (int nameLength = 1; nameLength <= 9; nameLength++)
        {
            string path = Write(SafeTensorsEntry.FromFloat32(new string('n', nameLength), [1], [1f]));
            var bytes = File.ReadAllBytes(path);
            long n = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
            Assert.That(n % 8, Is.Zero);
            string header = Encoding.UTF8.GetString(bytes, 8, (int)n);
            Assert.That(header.TrimEnd(' '), Does.EndWith("}"));
            Assert.That(bytes.Length, Is.EqualTo(8 + n + 4));
        }
    }

    [Test]
    public void WriterMakesANewFileAndLeavesNothingWhenItFails()
    {
        string path = Path.Combine(_dir, "out.safetensors");
        SafeTensorsWriter.Write(path, [SafeTensorsEntry.FromFloat32("x", [2], [1f, 2f])]);
        Assert.Throws<IOException>(() => SafeTensorsWriter.Write(path, [SafeTensorsEntry.FromFloat32("x", [1], [3f])]), "an existing file is not replaced");
        using (var file = SafeTensorsFile.Open(path)) Assert.That(file.ReadFloat32("x"), Is.EqualTo(new[] { 1f, 2f }));

        string other = Path.Combine(_dir, "other.safetensors");
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(other, [SafeTensorsEntry.FromFloat32("x", [1], [1f]), SafeTensorsEntry.FromFloat32("x", [1], [1f])]));
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(other, [new SafeTensorsEntry("x", SafeTensorsDType.F32, [2], s => s.Write(new byte[4]))]),
            "a tensor that writes fewer bytes than its shape needs");
        Assert.Throws<DirectoryNotFoundException>(() => SafeTensorsWriter.Write(Path.Combine(_dir, "no", "such.safetensors"), [SafeTensorsEntry.FromFloat32("x", [1], [1f])]));
        Assert.That(Directory.GetFiles(_dir).Select(Path.GetFileName), Is.EqualTo(new[] { "out.safetensors" }), "failed writes leave nothing");
    }

    // ---- helpers -----------------------------------------------------------------------------------

    private string Write(params SafeTensorsEntry[] entries)
    {
        string path = Path.Combine(_dir, Guid.NewGuid().ToString("N") + ".safetensors");
        SafeTensorsWriter.Write(path, entries);
        return path;
    }

    private string RawFile(string header, int dataBytes) => RawFile(Encoding.UTF8.GetBytes(header), dataBytes);

    /// <summary>A file with the given header bytes (unpadded) followed by dataBytes bytes of data.</summary>
    private string RawFile(byte[] header, int dataBytes)
    {
        string path = Path.Combine(_dir, Guid.NewGuid().ToString("N") + ".safetensors");
        var bytes = new byte[8 + header.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)header.Length);
        header.CopyTo(bytes, 8);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private string WriteIndex(string json)
    {
        string path = Path.Combine(_dir, SafeTensorsCheckpoint.IndexFileName);
        File.WriteAllText(path, json);
        return path;
    }

    private static void ExpectFormatError(string path, string problem)
    {
        var e = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Open(path).Dispose())!;
        Assert.That(e.FilePath, Is.EqualTo(path));
        Assert.That(e.Message, Does.StartWith(path + ": ").And.Contain(problem));
        Assert.That(e, Is.InstanceOf<DiffuException>());
    }

    private static void ExpectCheckpointError(string open, string blamed, string problem)
    {
        var e = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsCheckpoint.Open(open).Dispose())!;
        Assert.That(e.FilePath, Is.EqualTo(blamed));
        Assert.That(e.Message, Does.StartWith(blamed + ": ").And.Contain(problem));
    }

    private static IEnumerable<float> SpecialFloats()
    {
        yield return 0f;
        yield return -0f;
        yield return float.PositiveInfinity;
        yield return float.NegativeInfinity;
        yield return float.NaN;
        yield return float.MaxValue;
        yield return float.Epsilon;
        yield return 65504f;         // largest half
        yield return 65519.99f;      // rounds down to 65504
        yield return 65520f;         // ties away to infinity in half
        yield return 6.1035156e-5f;  // smallest normal half
        yield return 5.9604645e-8f;  // smallest subnormal half
        yield return 2.9802322e-8f;  // exactly half of it: ties to even (zero)
        yield return 2.9802326e-8f;  // just above: rounds up
        yield return 1f + 1f / 2048; // halfway between two halves: ties to even
        yield return 1f + 3f / 2048;
        yield return 1f + 1f / 256;  // halfway between two bfloat16s
        yield return 1f + 3f / 256;
        yield return BitConverter.Int32BitsToSingle(0x7F7F8000); // rounds to bfloat16 infinity
        yield return BitConverter.Int32BitsToSingle(0x00018000); // float32 subnormal
    }

    /// <summary>The bfloat16 nearest to v (ties to even), found by comparing the two candidates in double precision.</summary>
    private static float NearestBFloat16(float v)
    {
        if (float.IsInfinity(v)) return v;
        int bits = BitConverter.SingleToInt32Bits(v);
        float down = BitConverter.Int32BitsToSingle(bits & unchecked((int)0xFFFF0000));
        float up = BitConverter.Int32BitsToSingle((bits & unchecked((int)0xFFFF0000)) + 0x10000);
        // Above the largest bfloat16 the next candidate is infinity, which sits where 2^128 would be.
        double upValue = float.IsInfinity(up) ? Math.CopySign(Math.Pow(2, 128), v) : up;
        double dDown = Math.Abs((double)v - down), dUp = Math.Abs(upValue - v);
        if (dDown < dUp) return down;
        if (dUp < dDown) return up;
        return (BitConverter.SingleToInt32Bits(down) & 0x10000) == 0 ? down : up;
    }
}
