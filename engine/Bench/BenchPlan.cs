using System.Text.Json.Nodes;
using DiffuSharp.Data;
using DiffuSharp.Diffusion;
using DiffuSharp.Eval;
using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;
using DiffuSharp.Text;
using DiffuSharp.Training;

namespace DiffuSharp.Bench;

/// <summary>What `diffu bench` measures; empty arrays and zero sizes mean the device's defaults.</summary>
public sealed record BenchOptions
{
    public IReadOnlyCollection<string> Suites { get; init; } = BenchPlan.SuiteNames;

    /// <summary>Smaller sizes and fewer of them: a smoke run of every suite in seconds.</summary>
    public bool Quick { get; init; }

    /// <summary>Sides of the square matmuls.</summary>
    public int[] Squares { get; init; } = [];

    /// <summary>Extra matmul shapes (M, K, N), each timed in both weight layouts.</summary>
    public (int M, int K, int N)[] MatMulShapes { get; init; } = [];

    /// <summary>Sequence lengths of the attention rows.</summary>
    public int[] AttentionLengths { get; init; } = [];

    /// <summary>Rows (tokens) of the model-layer matmuls and of the row-wise kernels.</summary>
    public int Tokens { get; init; }

    /// <summary>Training batch and length for the end-to-end training row.</summary>
    public int TrainBatch { get; init; }
    public int TrainLength { get; init; }

    /// <summary>Denoising length and steps T for the end-to-end sampling row.</summary>
    public int DenoiseLength { get; init; }
    public int DenoiseSteps { get; init; }

    /// <summary>HellaSwag examples of the end-to-end scoring row, and the rows one of its forward passes holds at most.</summary>
    public int EvalExamples { get; init; }
    public int EvalBatch { get; init; }

    /// <summary>The folders of the evaluation sets and of the GPT-2 BPE that the scoring row reads; null: the defaults of <see cref="EvalDataRoot"/> and <see cref="TokenizerFolder"/>.</summary>
    public string? EvalData { get; init; }
    public string? Tokenizer { get; init; }

    /// <summary>--eval-data, else $DIFFU_EVAL_DATA, else ../shared/data/eval: where `diffu eval` looks.</summary>
    public string EvalDataRoot => EvalData ?? Environment.GetEnvironmentVariable("DIFFU_EVAL_DATA") ?? Path.Combine("..", "shared", "data", "eval");

    /// <summary>--tokenizer, else $DIFFU_TOKENIZER, else ../shared/data/tokenizers/gpt2 (beside the eval data in the shared folder).</summary>
    public string TokenizerFolder => Tokenizer ?? Environment.GetEnvironmentVariable("DIFFU_TOKENIZER") ?? Path.Combine("..", "shared", "data", "tokenizers", "gpt2");

    /// <summary>The largest size any option may ask for, so that the plan's int arithmetic (tokens × 4 rows, ...) cannot overflow.</summary>
    public const int MaxSize = 1 << 20;

    public void Validate()
    {
        foreach (var s in Suites)
            if (!BenchPlan.SuiteNames.Contains(s))
                throw new DiffuException($"unknown bench suite '{s}': expected {string.Join(", ", BenchPlan.SuiteNames)}");
        foreach (int side in Squares) Size("--squares", side, 1);
        foreach (int length in AttentionLengths) Size("--lengths", length, 1);
        foreach (var (m, k, n) in MatMulShapes) { Size("--shapes", m, 1); Size("--shapes", k, 1); Size("--shapes", n, 1); }
        foreach (var (option, value, min) in new[] { ("--tokens", Tokens, 1), ("--train-batch", TrainBatch, 1), ("--train-length", TrainLength, 1),
                     ("--denoise-length", DenoiseLength, 2), ("--denoise-steps", DenoiseSteps, 1), ("--eval-examples", EvalExamples, 1), ("--eval-batch", EvalBatch, 1) })
            if (value != 0) Size(option, value, min);
        // Folders given by hand are checked now; the defaults, when absent, fail the scoring row alone.
        foreach (var (option, folder) in new[] { ("--eval-data", EvalData), ("--tokenizer", Tokenizer) })
        {
            if (folder is null) continue;
            var kind = FileStatus.Kind(folder);
            if (kind == FileKind.Missing) throw new DiffuException($"{option} {folder}: folder not found");
            if (kind != FileKind.Directory) throw new DiffuException($"{option} {folder} is {FileStatus.Describe(kind)}, not a folder");
        }
        // The full-size denoising rows make their models as long as the rows; the quick ones keep their tiny models' positions.
        int positions = BenchPlan.EndToEndModel(Quick).Positions;
        foreach (var (option, length, limit) in new[] { ("--train-length", TrainLength, positions), ("--denoise-length", DenoiseLength, Quick ? positions : MaxSize) })
            if (length > limit)
                throw new DiffuException($"{option} {length} exceeds the {limit} positions of the model the row runs{(Quick ? " with --quick" : "")}");
    }

    static void Size(string option, int value, int min)
    {
        if (value < min || value > MaxSize) throw new DiffuException($"{option}: {value} is out of range: must be from {min} to {MaxSize}");
    }
}

/// <summary>
/// The benchmark cases of `diffu bench`: kernels at the sizes the models use (GPT-2-small and LLaMA-7B
/// layer shapes, attention over L = 256..4096, the optimiser over GPT-2-small's parameters) and the three
/// end-to-end rows (a GPT-2-small diffusion training step, T denoising steps at L = 1024, HellaSwag scored
/// with the likelihood scorer at T = 32). Sizes scale down on the CPU, where the largest would take minutes per run.
/// </summary>
public static class BenchPlan
{
    public static readonly string[] SuiteNames = ["matmul", "attention", "norm", "rope", "softmax", "adamw", "sampling", "train", "decode", "denoise", "eval"];

    /// <summary>GPT-2 small (124 M): the shape of the end-to-end rows.</summary>
    public static readonly Gpt2Config Gpt2Small = new(50257, 1024, 768, 12, 12);

    /// <summary>llama2.c's 110M shape (stories110M: dim 768, 12 layers, 12 heads, hidden 2048, vocab 32000): the LLaMA of the decoding and denoising rows.</summary>
    public static readonly LlamaConfig Llama110M = new(32000, 2048, 768, 2048, 12, 12, 12);

    /// <summary>llama2.c's stories260K shape (dim 64, 5 layers, 8 heads, 4 KV heads, hidden 172, vocab 512): per-token overhead dominates its decoding.</summary>
    public static readonly LlamaConfig Llama260K = new(512, 512, 64, 172, 5, 8, 4);

    const int Llama7BChannels = 4096, Llama7BHidden = 11008, Llama7BVocab = 32000, Llama7BHeads = 32;

    public static List<BenchCase> Create(Device device, BenchOptions o, OpenBlas? openBlas, CuBlasReference? cuBlas)
    {
        o.Validate();
        bool gpu = device is IlgpuDevice;
        bool quick = o.Quick;
        int tokens = o.Tokens > 0 ? o.Tokens : quick ? 256 : gpu ? 8192 : 1024;
        var cases = new List<BenchCase>();
        var gemm = Library(openBlas, cuBlas);
        var devicePrecision = (device as IlgpuDevice)?.MatMulPrecision ?? MatMulPrecision.F32;

        if (o.Suites.Contains("matmul"))
        {
            if (o.MatMulShapes.Length > 0) AddMatMulShapes(cases, o.MatMulShapes, gemm, devicePrecision);
            else AddModelMatMuls(cases, o.Squares.Length > 0 ? o.Squares : quick ? [256, 512] : gpu ? [1024, 2048, 4096, 8192] : [1024, 2048, 4096],
                tokens, quick, gemm, TensorCorePrecisions(device), devicePrecision);
        }

        if (o.Suites.Contains("attention"))
        {
            int[] lengths = o.AttentionLengths.Length > 0 ? o.AttentionLengths : quick ? [128, 256] : gpu ? [256, 512, 1024, 2048, 4096] : [256, 512, 1024, 2048];
            int tokensPerBatch = gpu ? 16384 : 2048;
            foreach (int l in lengths)
                foreach (bool causal in new[] { false, true })
                {
                    int batch = Math.Max(1, tokensPerBatch / l);
                    cases.Add(Attention(batch, Gpt2Small.Heads, l, Gpt2Small.HeadDim, causal, backward: false));
                    cases.Add(Attention(batch, Gpt2Small.Heads, l, Gpt2Small.HeadDim, causal, backward: true));
                }
        }

        if (o.Suites.Contains("norm"))
        {
            cases.Add(LayerNorm(tokens * 4, Gpt2Small.Channels));
            cases.Add(RmsNorm(tokens, Llama7BChannels));
            cases.Add(Elementwise("residual_add", "residual add (GPT-2)", tokens * 4, Gpt2Small.Channels, inputs: 2, (d, x, o) => d.Add(x[0], x[1], o)));
            cases.Add(Elementwise("gelu", "GELU (GPT-2 MLP)", tokens, 4 * Gpt2Small.Channels, inputs: 1, (d, x, o) => d.Gelu(x[0], o)));
            cases.Add(Elementwise("swiglu", "SwiGLU (LLaMA-7B MLP)", tokens, Llama7BHidden, inputs: 2, (d, x, o) => d.SwiGlu(x[0], x[1], o)));
        }
        if (o.Suites.Contains("rope")) cases.Add(Rope(tokens, Llama7BHeads, Llama7BChannels / Llama7BHeads));
        if (o.Suites.Contains("softmax"))
        {
            int rows = quick ? 64 : gpu ? 4096 : 256;
            cases.Add(Softmax(rows, Gpt2Small.VocabSize));
            cases.Add(CrossEntropy(rows, Gpt2Small.VocabSize));
        }
        if (o.Suites.Contains("adamw")) cases.Add(AdamW(quick ? 1 << 22 : 124_439_808));
        if (o.Suites.Contains("sampling"))
        {
            int rows = quick ? 64 : gpu ? 1024 : 256;
            cases.Add(Sampling(rows, Gpt2Small.VocabSize, 1f));
            cases.Add(Sampling(rows, Gpt2Small.VocabSize, 0.9f));
        }
        if (o.Suites.Contains("train"))
        {
            var (batch, length) = TrainShape(device, o);
            cases.Add(TrainStep(EndToEndModel(quick), batch, length));
        }
        if (o.Suites.Contains("decode"))
            foreach (var (name, config) in quick ? [("gpt2-tiny", TinyGpt2), ("llama-260k", Llama260K)]
                         : new (string, IModelConfig)[] { ("llama-260k", Llama260K), ("llama-110m", Llama110M), ("gpt2-small", Gpt2Small) })
                foreach (var weightType in new[] { DType.F32, DType.BF16 })
                    cases.Add(Decode(name, config, quick ? 32 : 128, weightType));
        if (o.Suites.Contains("denoise"))
        {
            int[] lengths = o.DenoiseLength > 0 ? [o.DenoiseLength] : quick ? [64] : gpu ? [512, 1024, 2048] : [512];
            int[] steps = o.DenoiseSteps > 0 ? [o.DenoiseSteps] : quick ? [4] : gpu ? [64, 128, 256] : [64];
            int positions = Math.Max(Gpt2Small.Positions, lengths.Max());
            foreach (var (name, config) in quick ? [("gpt2-tiny", TinyGpt2), ("llama-260k", Llama260K)]
                         : new (string, IModelConfig)[] { ("gpt2-small", Gpt2Small with { Positions = positions }), ("llama-110m", Llama110M with { Positions = positions }) })
                foreach (int l in lengths)
                {
                    cases.Add(DecodeLength(name, config, l));
                    foreach (int t in steps)
                        foreach (var cache in Enum.GetValues<DenoisingCache>())
                            cases.Add(Denoise(name, config, l, t, cache));
                }
        }
        if (o.Suites.Contains("eval"))
            cases.Add(HellaSwagScoring(EndToEndModel(quick), o.EvalDataRoot, o.TokenizerFolder,
                o.EvalExamples > 0 ? o.EvalExamples : quick ? 2 : gpu ? 64 : 4, o.EvalBatch > 0 ? o.EvalBatch : EvalRowsPerPass));
        return cases;
    }

    /// <summary>A GPT-2 shape small enough for --quick runs on the CPU.</summary>
    static readonly Gpt2Config TinyGpt2 = new(2048, 256, 128, 2, 4);

    /// <summary>The model of the end-to-end rows: GPT-2 small, or a tiny GPT-2 with --quick.</summary>
    public static Gpt2Config EndToEndModel(bool quick) => quick ? TinyGpt2 : Gpt2Small;

    static (int Batch, int Length) TrainShape(Device device, BenchOptions o)
    {
        bool gpu = device is IlgpuDevice;
        return (o.TrainBatch > 0 ? o.TrainBatch : o.Quick ? 1 : gpu ? 8 : 4, o.TrainLength > 0 ? o.TrainLength : o.Quick ? 64 : gpu ? 1024 : 256);
    }

    /// <summary>
    /// Refuses, before anything runs, end-to-end rows whose sizes were given and whose memory estimate exceeds
    /// what the device has. Rows at the default sizes are left to fail in their own row, like the kernels.
    /// </summary>
    public static void RequireMemory(Device device, BenchOptions o)
    {
        var config = EndToEndModel(o.Quick);
        long weights = ModelMemory.Weights(config);
        if (o.Suites.Contains("train") && (o.TrainBatch > 0 || o.TrainLength > 0))
        {
            var (batch, length) = TrainShape(device, o);
            DeviceMemory.Require(device, ModelMemory.Total(weights, ModelMemory.Training(config, batch, length)), $"the training row (batch {batch} x length {length})");
        }
        if (o.Suites.Contains("denoise") && o.DenoiseLength > 0)
            DeviceMemory.Require(device, ModelMemory.Total(ModelMemory.Weights(Llama110M), ModelMemory.Total(ModelMemory.Forward(Llama110M, 1, o.DenoiseLength),
                ModelMemory.Decoding(Llama110M, 1, o.DenoiseLength))), $"the denoising rows (length {o.DenoiseLength})");
    }

    // ---- matmul --------------------------------------------------------------------------------

    /// <summary>The precisions the square matmuls run in: float32 everywhere, and TF32 and BF16 where the device has tensor cores.</summary>
    static MatMulPrecision[] TensorCorePrecisions(Device device) =>
        device is IlgpuDevice gpu && gpu.SupportsTensorCores ? [MatMulPrecision.F32, MatMulPrecision.TF32, MatMulPrecision.BF16] : [MatMulPrecision.F32];

    /// <summary>Only the shapes asked for, in both weight layouts.</summary>
    static void AddMatMulShapes(List<BenchCase> cases, (int M, int K, int N)[] shapes, GemmIn gemm, MatMulPrecision precision)
    {
        foreach (var (m, k, n) in shapes)
            foreach (bool nk in new[] { false, true })
                cases.Add(MatMul($"matmul.{m}x{k}x{n}.{(nk ? "nk" : "kn")}", $"{m} x {k} x {n}", m, k, n, nk, gemm, precision));
    }

    /// <summary>Squares in both layouts, then the layer shapes of GPT-2 small (Conv1D [K, N] weights, backward too)
    /// and LLaMA-7B (nn.Linear [N, K] weights) over <paramref name="tokens"/> rows.</summary>
    static void AddModelMatMuls(List<BenchCase> cases, int[] squares, int tokens, bool quick, GemmIn gemm, MatMulPrecision[] precisions,
        MatMulPrecision devicePrecision)
    {
        foreach (var precision in precisions)
            foreach (int s in squares)
                foreach (bool nk in new[] { false, true })
                {
                    string tag = precision == MatMulPrecision.F32 ? "" : precision.ToString().ToLowerInvariant();
                    string id = $"matmul.square{s}.{(nk ? "nk" : "kn")}" + (tag.Length > 0 ? "." + tag : "");
                    string series = (nk ? "x·wᵀ" : "x·w") + (tag.Length > 0 ? " " + tag : "");
                    cases.Add(MatMul(id, $"square {s}" + (tag.Length > 0 ? " " + tag : ""), s, s, s, nk, gemm, precision) with { PlotX = s, Series = series });
                }
        int c = Gpt2Small.Channels;
        foreach (var (name, k, n, nk) in new (string, int, int, bool)[]
                 {
                     ("gpt2 attn.c_attn", c, 3 * c, false), ("gpt2 attn.c_proj", c, c, false), ("gpt2 mlp.c_fc", c, 4 * c, false),
                     ("gpt2 mlp.c_proj", 4 * c, c, false), ("gpt2 lm_head", c, Gpt2Small.VocabSize, true),
                     ("llama7b q/k/v/o_proj", Llama7BChannels, Llama7BChannels, true), ("llama7b gate/up_proj", Llama7BChannels, Llama7BHidden, true),
                     ("llama7b down_proj", Llama7BHidden, Llama7BChannels, true), ("llama7b lm_head", Llama7BChannels, Llama7BVocab, true),
                 })
        {
            if (quick && name.StartsWith("llama")) continue;
            string id = name.Replace(' ', '.').Replace('/', '-');
            cases.Add(MatMul($"matmul.{id}", name, tokens, k, n, nk, gemm, devicePrecision));
            if (name.StartsWith("gpt2") && !nk) cases.Add(MatMulBackward($"matmul_backward.{id}", name + " backward", tokens, k, n, gemm, devicePrecision));
        }
        // One projection with its weight stored as float32 and as BF16, for one row (decoding: bound by reading the weight)
        // and for a batch of rows (bound by the FMAs, the widening hidden in the packing).
        var (wName, wk, wn) = quick ? ("gpt2 mlp.c_fc", c, 4 * c) : ("llama7b gate/up_proj", Llama7BChannels, Llama7BHidden);
        foreach (int m in new[] { 1, tokens })
            foreach (var weightType in new[] { DType.F32, DType.BF16 })
            {
                string type = WeightTypes.Name(weightType);
                cases.Add(MatMul($"matmul.weights.{wName.Replace(' ', '.').Replace('/', '-')}.m{m}.{type}", $"{wName} {type} weights", m, wk, wn, true, gemm,
                    devicePrecision, weightType) with { Series = $"{type} weights" });
            }
    }

    /// <summary>GEMM of the in-process reference library: (transA, transB, m, n, k, a, b, beta, c).</summary>
    delegate void Gemm(bool transA, bool transB, int m, int n, int k, Tensor a, Tensor b, float beta, Tensor c);

    /// <summary>The library's GEMM in a precision, or null where it has none (OpenBLAS: float32 only;
    /// cuBLAS through ILGPU.Algorithms: float32 and TF32, no BF16 entry point).</summary>
    delegate Gemm? GemmIn(MatMulPrecision precision);

    static GemmIn Library(OpenBlas? openBlas, CuBlasReference? cuBlas) => precision =>
    {
        if (cuBlas is not null && cuBlas.Supports(precision))
            return (ta, tb, m, n, k, a, b, beta, c) => cuBlas.Gemm(ta, tb, m, n, k, a, b, beta, c, precision);
        if (openBlas is not null && precision == MatMulPrecision.F32)
            return (ta, tb, m, n, k, a, b, beta, c) => openBlas.Gemm(ta, tb, m, n, k, Host(a), Host(b), beta, Host(c));
        return null;
    };

    static float[] Host(Tensor t) => (float[])((CpuStorage)t.Storage).Data;

    static Tensor Random(Device d, ulong stream, params int[] shape)
    {
        var t = d.Allocate(DType.F32, shape);
        d.Uniform(t, 0x5eed, stream);
        return t;
    }

    /// <summary><see cref="Random"/> stored as <paramref name="type"/> (rounded when 16-bit).</summary>
    static Tensor Random(Device d, ulong stream, DType type, params int[] shape)
    {
        var values = Random(d, stream, shape);
        if (type == DType.F32) return values;
        using (values)
        {
            var t = d.Allocate(type, shape);
            d.UploadRounded(t, 0, d.ToArray(values));
            return t;
        }
    }

    static JsonObject Spec(string kind, params (string Key, JsonNode? Value)[] fields)
    {
        var o = new JsonObject { ["kind"] = kind };
        foreach (var (k, v) in fields) o[k] = v;
        return o;
    }

    /// <summary>
    /// x[M, K] · w with w [K, N], or [N, K] when <paramref name="nk"/>, in <paramref name="precision"/>; w stored as
    /// <paramref name="weightType"/> (the library and PyTorch multiply float32 weights). A one-row product is rated by the
    /// weight bytes it reads.
    /// </summary>
    static BenchCase MatMul(string id, string label, int m, int k, int n, bool nk, GemmIn library, MatMulPrecision precision, DType weightType = DType.F32)
    {
        (Tensor X, Tensor W, Tensor O) Make(Device d, DType type) =>
            (Random(d, 1, m, k), nk ? Random(d, 2, type, n, k) : Random(d, 2, type, k, n), d.Allocate(DType.F32, m, n));
        var gemm = library(precision);
        return new BenchCase(id, "matmul", label, $"{m}x{k}x{n} {(nk ? "x·wᵀ" : "x·w")}")
        {
            Flops = m == 1 ? 0 : 2.0 * m * k * n,
            Bytes = m == 1 ? (double)k * n * Tensor.ElementSize(weightType) : 0,
            Prepare = d =>
            {
                var scope = PrecisionScope.Enter(d, precision);
                var (x, w, o) = Make(d, weightType);
                return new BenchRun(nk ? () => d.MatMulTransposed(x, w, null, o) : () => d.MatMul(x, w, null, o), x, w, o, scope);
            },
            PrepareLibrary = gemm is null ? null : d =>
            {
                var (x, w, o) = Make(d, DType.F32);
                return new BenchRun(() => gemm(false, nk, m, n, k, x, w, 0f, o), x, w, o);
            },
            Torch = Spec("matmul", ("m", m), ("k", k), ("n", n), ("layout", nk ? "nk" : "kn"),
                ("precision", precision.ToString().ToLowerInvariant())),
        };
    }

    /// <summary>Sets a device's matmul precision for one case and restores the previous one after it.</summary>
    sealed class PrecisionScope(IlgpuDevice device, MatMulPrecision previous) : IDisposable
    {
        public static PrecisionScope? Enter(Device device, MatMulPrecision precision)
        {
            if (device is not IlgpuDevice gpu || gpu.MatMulPrecision == precision) return null;
            var scope = new PrecisionScope(gpu, gpu.MatMulPrecision);
            gpu.MatMulPrecision = precision;
            return scope;
        }

        public void Dispose() => device.MatMulPrecision = previous;
    }

    /// <summary>Backward of x[M, K] · w[K, N]: dX += dOut · wᵀ and dW += xᵀ · dOut (bias gradient off, as the
    /// libraries' two GEMMs have none).</summary>
    static BenchCase MatMulBackward(string id, string label, int m, int k, int n, GemmIn library, MatMulPrecision precision)
    {
        var gemm = library(precision);
        (Tensor X, Tensor W, Tensor G, Tensor DX, Tensor DW) Make(Device d) =>
            (Random(d, 1, m, k), Random(d, 2, k, n), Random(d, 3, m, n), d.Zeros(DType.F32, m, k), d.Zeros(DType.F32, k, n));
        return new BenchCase(id, "matmul", label, $"{m}x{k}x{n} dX+dW")
        {
            Flops = 4.0 * m * k * n,
            Prepare = d =>
            {
                var (x, w, g, dx, dw) = Make(d);
                return new BenchRun(() => d.MatMulBackward(g, x, w, dx, dw, null), x, w, g, dx, dw);
            },
            PrepareLibrary = gemm is null ? null : d =>
            {
                var (x, w, g, dx, dw) = Make(d);
                return new BenchRun(() =>
                {
                    gemm(false, true, m, k, n, g, w, 1f, dx);
                    gemm(true, false, k, n, m, x, g, 1f, dw);
                }, x, w, g, dx, dw);
            },
            Torch = Spec("matmul_backward", ("m", m), ("k", k), ("n", n), ("precision", precision.ToString().ToLowerInvariant())),
        };
    }

    // ---- attention -----------------------------------------------------------------------------

    static BenchCase Attention(int batch, int heads, int length, int headDim, bool causal, bool backward)
    {
        int c = heads * headDim;
        var shape = new AttentionShape(batch, heads, heads, headDim, length, length, 0, c, c, (long)length * c, (long)length * c, 1f / MathF.Sqrt(headDim));
        var mode = causal ? AttentionMaskMode.Causal : AttentionMaskMode.Bidirectional;
        double forwardFlops = 4.0 * batch * heads * length * (double)length * headDim * (causal ? 0.5 : 1);
        string kind = backward ? "attention_backward" : "attention";
        string maskName = causal ? "causal" : "bidirectional";
        return new BenchCase($"{kind}.{maskName}.L{length}", "attention", $"{(backward ? "backward" : "forward")} {maskName}",
            $"B{batch} H{heads} L{length} D{headDim}")
        {
            // Flash-style backward: recompute QKᵀ, then dV, dP, dQ, dK: five matmuls to the forward's two.
            Flops = backward ? 2.5 * forwardFlops : forwardFlops,
            PlotX = length,
            Series = $"{(backward ? "backward" : "forward")} {maskName}",
            Prepare = d =>
            {
                var q = Random(d, 1, batch, length, c);
                var k = Random(d, 2, batch, length, c);
                var v = Random(d, 3, batch, length, c);
                var o = d.Allocate(DType.F32, batch, length, c);
                var lse = d.Allocate(DType.F32, batch, heads, length);
                if (!backward) return new BenchRun(() => d.Attention(q, 0, k, 0, v, 0, o, lse, shape, mode, null), q, k, v, o, lse);
                d.Attention(q, 0, k, 0, v, 0, o, lse, shape, mode, null);
                var dOut = Random(d, 4, batch, length, c);
                var dq = d.Zeros(DType.F32, batch, length, c);
                var dk = d.Zeros(DType.F32, batch, length, c);
                var dv = d.Zeros(DType.F32, batch, length, c);
                return new BenchRun(() => d.AttentionBackward(q, 0, k, 0, v, 0, o, dOut, lse, dq, 0, dk, 0, dv, 0, shape, mode, null),
                    q, k, v, o, lse, dOut, dq, dk, dv);
            },
            Torch = Spec(kind, ("batch", batch), ("heads", heads), ("length", length), ("head_dim", headDim), ("causal", causal)),
        };
    }

    // ---- row-wise kernels ----------------------------------------------------------------------

    static BenchCase LayerNorm(int rows, int channels) => new("layernorm", "norm", "LayerNorm (GPT-2)", $"{rows}x{channels}")
    {
        Bytes = 4.0 * (2.0 * rows * channels + 2 * channels + 2 * rows),
        Prepare = d =>
        {
            var x = Random(d, 1, rows, channels);
            var w = Random(d, 2, channels);
            var b = Random(d, 3, channels);
            var o = d.Allocate(DType.F32, rows, channels);
            var mean = d.Allocate(DType.F32, rows);
            var rstd = d.Allocate(DType.F32, rows);
            return new BenchRun(() => d.LayerNorm(x, w, b, o, mean, rstd, 1e-5f), x, w, b, o, mean, rstd);
        },
        Torch = Spec("layernorm", ("rows", rows), ("channels", channels)),
    };

    static BenchCase RmsNorm(int rows, int channels) => new("rmsnorm", "norm", "RMSNorm (LLaMA-7B)", $"{rows}x{channels}")
    {
        Bytes = 4.0 * (2.0 * rows * channels + channels + rows),
        Prepare = d =>
        {
            var x = Random(d, 1, rows, channels);
            var w = Random(d, 2, channels);
            var o = d.Allocate(DType.F32, rows, channels);
            var rstd = d.Allocate(DType.F32, rows);
            return new BenchRun(() => d.RmsNorm(x, w, o, rstd, 1e-5f), x, w, o, rstd);
        },
        Torch = Spec("rmsnorm", ("rows", rows), ("channels", channels)),
    };

    /// <summary>An elementwise op over rows × channels: <paramref name="inputs"/> tensors read, one written.</summary>
    static BenchCase Elementwise(string kind, string label, int rows, int channels, int inputs, Action<Device, Tensor[], Tensor> op) =>
        new(kind.Replace('_', '-'), "norm", label, $"{rows}x{channels}")
        {
            Bytes = 4.0 * (inputs + 1) * rows * channels,
            Prepare = d =>
            {
                var x = Enumerable.Range(0, inputs).Select(i => Random(d, (ulong)i + 1, rows, channels)).ToArray();
                var o = d.Allocate(DType.F32, rows, channels);
                return new BenchRun(() => op(d, x, o), [.. x, o]);
            },
            Torch = Spec(kind, ("rows", rows), ("channels", channels)),
        };

    static BenchCase Rope(int rows, int heads, int headDim) => new("rope", "rope", "RoPE in place (LLaMA-7B q)", $"{rows}x{heads}x{headDim}")
    {
        Bytes = 4.0 * 2 * rows * heads * (double)headDim,
        Prepare = d =>
        {
            var x = Random(d, 1, rows, heads * headDim);
            return new BenchRun(() => d.Rope(x, 0, heads * headDim, 1, rows, heads, headDim, 0, 10000f, false), x);
        },
        Torch = Spec("rope", ("rows", rows), ("heads", heads), ("head_dim", headDim)),
    };

    static BenchCase Softmax(int rows, int vocab) => new("softmax", "softmax", "softmax over the vocabulary", $"{rows}x{vocab}")
    {
        Bytes = 4.0 * 2 * rows * (double)vocab,
        Prepare = d =>
        {
            var x = Random(d, 1, rows, vocab);
            var o = d.Allocate(DType.F32, rows, vocab);
            return new BenchRun(() => d.Softmax(x, o), x, o);
        },
        Torch = Spec("softmax", ("rows", rows), ("columns", vocab)),
    };

    static BenchCase CrossEntropy(int rows, int vocab) => new("cross_entropy", "softmax", "cross-entropy + gradient", $"{rows}x{vocab}")
    {
        Bytes = 4.0 * (2 * rows * (double)vocab + 3 * rows),
        Prepare = d =>
        {
            var logits = Random(d, 1, rows, vocab);
            var targets = d.FromArray(Enumerable.Range(0, rows).Select(i => i * 7919 % vocab).ToArray(), rows);
            var weights = Random(d, 2, rows);
            var losses = d.Allocate(DType.F32, rows);
            var dLogits = d.Allocate(DType.F32, rows, vocab);
            return new BenchRun(() => d.CrossEntropy(logits, targets, weights, losses, dLogits), logits, targets, weights, losses, dLogits);
        },
        Torch = Spec("cross_entropy", ("rows", rows), ("vocab", vocab)),
    };

    static BenchCase AdamW(int elements) => new("adamw", "adamw", "AdamW update", $"{elements:N0} parameters")
    {
        // Reads parameter, gradient and both moments; writes parameter and moments.
        Bytes = 4.0 * 7 * elements,
        Prepare = d =>
        {
            var p = Random(d, 1, elements);
            var g = Random(d, 2, elements);
            var m = d.Zeros(DType.F32, elements);
            var v = d.Zeros(DType.F32, elements);
            int step = 0;
            return new BenchRun(() => d.AdamW(p, g, m, v, new AdamWStep(1e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, ++step)), p, g, m, v);
        },
        Torch = Spec("adamw", ("elements", elements)),
    };

    static BenchCase Sampling(int rows, int vocab, float topP) =>
        new($"sampling.top_p{topP:0.##}", "sampling", topP < 1 ? $"sample, top-p {topP:0.##}" : "sample, full distribution", $"{rows}x{vocab}")
        {
            Bytes = 4.0 * rows * (double)vocab,
            Prepare = d =>
            {
                var logits = Random(d, 1, rows, vocab);
                var tokens = d.Allocate(DType.I32, rows);
                var stats = d.Allocate(DType.F32, rows, SamplingOptions.StatCount);
                ulong call = 0;
                var options = new SamplingOptions(1f, 0, topP);
                return new BenchRun(() => d.SampleTokens(logits, options, 7, ++call, tokens, stats), logits, tokens, stats);
            },
            Torch = Spec("sampling", ("rows", rows), ("vocab", vocab), ("top_p", topP), ("temperature", 1.0)),
        };

    // ---- end to end ----------------------------------------------------------------------------

    /// <summary>Forward FLOPs per token of a GPT-2 with bidirectional attention over <paramref name="length"/>
    /// positions: 2 per weight of every matmul (the tied head included) plus QKᵀ and PV.</summary>
    public static double Gpt2ForwardFlopsPerToken(Gpt2Config c, int length) =>
        2.0 * (c.Layers * 12.0 * c.Channels * c.Channels + (double)c.Channels * c.VocabSize) + 4.0 * c.Layers * length * (double)c.Channels;

    static JsonObject ConfigSpec(Gpt2Config c) => new()
    {
        ["vocab"] = c.VocabSize, ["positions"] = c.Positions, ["channels"] = c.Channels, ["layers"] = c.Layers, ["heads"] = c.Heads,
    };

    static string Describe(Gpt2Config c) => c == Gpt2Small ? "GPT-2 small" : $"GPT-2 {c.Layers}L {c.Channels}C";

    static BenchCase TrainStep(Gpt2Config config, int batch, int length)
    {
        double tokens = (double)batch * length;
        return new BenchCase("train.gpt2", "train", $"{Describe(config)} diffusion training step", $"B{batch} L{length}")
        {
            Tokens = tokens,
            Flops = 3 * Gpt2ForwardFlopsPerToken(config, length) * tokens,
            Prepare = d =>
            {
                var model = Gpt2Model.CreateRandom(config, d, 1);
                var options = new TrainOptions { Steps = long.MaxValue, Batch = batch, SequenceLength = length, EvalEvery = long.MaxValue, MaskTokenId = config.VocabSize - 1 };
                var trainer = new Trainer(model, new RandomBlocks(length, config.VocabSize), options, ownsModel: true);
                return new BenchRun(() => trainer.TrainStep(), trainer);
            },
            Torch = Spec("train_step", ("batch", batch), ("length", length), ("config", ConfigSpec(config))),
        };
    }

    static string Describe(IModelConfig c) => c switch
    {
        Gpt2Config g => Describe(g),
        LlamaConfig l when l with { Positions = Llama110M.Positions } == Llama110M => "LLaMA 110M",
        LlamaConfig l when l == Llama260K => "LLaMA 260K",
        LlamaConfig l => $"LLaMA {l.Layers}L {l.Channels}C",
        _ => c.GetType().Name,
    };

    /// <summary>
    /// Autoregressive decoding of <paramref name="tokens"/> tokens after one, greedy, on random weights: tokens/s, and the
    /// weights' bytes read per token against the measured bandwidth (decoding reads every weight once per token).
    /// </summary>
    static BenchCase Decode(string name, IModelConfig config, int tokens, DType weightType = DType.F32) =>
        new($"decode.{name}" + (weightType == DType.F32 ? "" : "." + WeightTypes.Name(weightType)), "decode",
            $"{Describe(config)} AR decoding" + (weightType == DType.F32 ? "" : $", {WeightTypes.Name(weightType)} weights"), $"B1 {tokens} tokens")
        {
            Tokens = tokens,
            Bytes = (double)tokens * ModelMemory.Weights(config, weightType),
            NoTorch = NoTorchDecoding,
            Prepare = d =>
            {
                var model = ModelFamily.Of(config).CreateRandom(config, d, 1, weightType);
                var decoder = new ArDecoder(model);
                return new BenchRun(() => decoder.Generate([0], tokens, 0f, 0), model);
            },
        };

    /// <summary>The AR baseline of the denoising rows: the same L − 1 tokens decoded one at a time with the KV cache.</summary>
    static BenchCase DecodeLength(string name, IModelConfig config, int length) =>
        Decode(name, config, length - 1) with
        {
            Id = $"denoise.{name}.L{length}.ar", Suite = "denoise", Label = $"{Describe(config)} AR decoding", Shape = $"B1 L{length}",
            MinRuns = 1, Series = "AR", PlotX = length,
        };

    /// <summary>The reference script has the full-sequence denoising loop, but neither KV-cache decoding nor the denoising caches.</summary>
    const string NoTorchDecoding = "no KV-cache decoding in the script", NoTorchCache = "no denoising cache in the script";

    /// <summary>Generated positions per semi-AR block of the cached denoising rows (Fast-dLLM's default).</summary>
    const int DenoiseBlock = 32;

    /// <summary>
    /// T denoising steps generating L − 1 tokens on random weights: exact (no blocks, every pass over the whole sequence,
    /// the paper's setting), or with a cache over semi-AR blocks of about <see cref="DenoiseBlock"/> positions (each
    /// block's first pass runs the whole sequence, the others its window). Rated in generated tokens/s, like the AR row.
    /// Random weights are never confident, so the --threshold speed-up is measured on trained models instead.
    /// </summary>
    static BenchCase Denoise(string name, IModelConfig config, int length, int steps, DenoisingCache cache)
    {
        int generated = length - 1;
        int blocks = cache == DenoisingCache.None ? 1 : BlockCount(generated, steps);
        int blockLength = (generated + blocks - 1) / blocks;
        int perBlock = steps / blocks;
        // Model FLOPs done: every block's first pass over L positions, the others over the window (from the position
        // before the block to its end, or to the sequence's end with a prefix cache), all attending over L keys.
        double window = cache == DenoisingCache.Dual ? blockLength + 1 : (generated + 1) / 2.0 + 1;
        double positions = blocks * (length + (perBlock - 1) * window);
        string mode = cache == DenoisingCache.None ? "" : $".{cache.ToString().ToLowerInvariant()}";
        return new BenchCase($"denoise.{name}.L{length}.T{steps}{mode}", "denoise",
            $"{Describe(config)} denoising, T = {steps}" + (cache == DenoisingCache.None ? "" : $", {cache.ToString().ToLowerInvariant()} cache, blocks of {blockLength}"),
            $"B1 L{length} T{steps}")
        {
            Tokens = generated,
            Flops = positions * ForwardFlopsPerToken(config, length),
            Warmup = 0,
            MinRuns = 1,
            PlotX = length,
            Series = $"T{steps}" + (cache == DenoisingCache.None ? "" : " " + cache.ToString().ToLowerInvariant()),
            Prepare = d =>
            {
                var model = ModelFamily.Of(config).CreateRandom(config, d, 1);
                var denoiser = new Denoiser(model, config.VocabSize - 1);
                var problem = new DenoisingProblem(1, length);
                problem.Tokens[0] = 0;
                problem.Fixed[0] = 1;
                var settings = new DenoiseSettings { Steps = steps, Seed = 3, Cache = cache, BlockLength = cache == DenoisingCache.None ? 0 : blockLength };
                denoiser.Run(problem, settings with { Steps = blocks });
                return new BenchRun(() => denoiser.Run(problem, settings), model);
            },
            Torch = config is Gpt2Config g && cache == DenoisingCache.None
                ? Spec("denoise", ("length", length), ("steps", steps), ("config", ConfigSpec(g)), ("warmup", 0), ("min_runs", 1)) : null,
            NoTorch = cache != DenoisingCache.None ? NoTorchCache : config is Gpt2Config ? null : "the script's model is GPT-2",
        };
    }

    /// <summary>The most semi-AR blocks, at most one per <see cref="DenoiseBlock"/> generated positions, that divide T and that equal blocks of whole positions make.</summary>
    static int BlockCount(int generated, int steps)
    {
        for (int blocks = Math.Min(steps, (generated + DenoiseBlock - 1) / DenoiseBlock); blocks > 1; blocks--)
        {
            int blockLength = (generated + blocks - 1) / blocks;
            if (steps % blocks == 0 && (generated + blockLength - 1) / blockLength == blocks) return blocks;
        }
        return 1;
    }

    /// <summary>Forward FLOPs per token of either family with bidirectional attention over <paramref name="length"/> positions.</summary>
    static double ForwardFlopsPerToken(IModelConfig config, int length) => config switch
    {
        Gpt2Config g => Gpt2ForwardFlopsPerToken(g, length),
        LlamaConfig l => 2.0 * (l.Layers * (2.0 * l.Channels * l.Channels + 2.0 * l.Channels * l.KvWidth + 3.0 * l.Channels * l.Hidden)
            + (double)l.Channels * l.VocabSize) + 4.0 * l.Layers * length * (double)l.Channels,
        _ => throw new ArgumentException(config.GetType().Name),
    };

    /// <summary>T of the likelihood scorer in the paper's evaluation scripts (method §9), and diffu eval's default --batch.</summary>
    public const int ScoringSteps = 32, EvalRowsPerPass = 32;

    /// <summary>
    /// HellaSwag multiple choice with the paper's likelihood scorer (method §9) as `diffu eval` runs it: the
    /// T rows of every choice of the first <paramref name="count"/> examples through <see cref="DiffusionScorer"/>,
    /// which packs rows of every length into right-padded passes of at most <paramref name="rowsPerPass"/> rows.
    /// The examples are read and tokenized here, once: the timed runs only score, and PyTorch gets the same ids.
    /// Data or a tokenizer that cannot be read fails this row alone, with the reason.
    /// </summary>
    static BenchCase HellaSwagScoring(Gpt2Config config, string dataRoot, string tokenizerFolder, int count, int rowsPerPass)
    {
        const string id = "eval.hellaswag.gpt2", suite = "eval";
        string label = $"{Describe(config)} HellaSwag scoring, T = {ScoringSteps}";
        List<ScoringSequence> sequences;
        try
        {
            sequences = HellaSwagSequences(config, dataRoot, tokenizerFolder, count);
        }
        catch (DiffuException e)
        {
            string why = $"{e.Message} (the eval row reads HellaSwag from --eval-data, $DIFFU_EVAL_DATA or ../shared/data/eval "
                + "and the GPT-2 BPE from --tokenizer, $DIFFU_TOKENIZER or ../shared/data/tokenizers/gpt2)";
            return new BenchCase(id, suite, label, $"N{count} T{ScoringSteps}") { Examples = count, Prepare = _ => throw new DiffuException(why) };
        }
        int examples = sequences.Count / HellaSwag.Choices;
        int mask = config.VocabSize - 1;
        return new BenchCase(id, suite, label, $"N{examples} T{ScoringSteps} L{sequences.Min(s => s.Length)}-{sequences.Max(s => s.Length)}")
        {
            Examples = examples,
            // Model FLOPs of the real tokens: the padding of shared passes is our cost, not work done.
            Flops = ScoringSteps * sequences.Sum(s => Gpt2ForwardFlopsPerToken(config, s.Length) * s.Length),
            Warmup = 0,
            MinRuns = 1,
            Prepare = d =>
            {
                var model = Gpt2Model.CreateRandom(config, d, 1);
                var scorer = new DiffusionScorer(model, mask, ScoringSteps, 0, rowsPerPass, EvalSettings.TokensPerPass(config, d));
                // One choice's rows first, untimed: kernel compilation and the buffer pool's first allocations.
                scorer.Score([sequences[0]]);
                return new BenchRun(() => scorer.Score(sequences), model);
            },
            Torch = Spec("eval_scoring", ("steps", ScoringSteps), ("mask_token", mask), ("config", ConfigSpec(config)),
                ("sequences", SequencesSpec(sequences)), ("warmup", 0), ("min_runs", 1)),
        };
    }

    /// <summary>The scorer's sequences of the first <paramref name="count"/> HellaSwag examples, encoded as `diffu eval` encodes them for a GPT-2 model.</summary>
    static List<ScoringSequence> HellaSwagSequences(Gpt2Config config, string dataRoot, string tokenizerFolder, int count)
    {
        // A model with fewer tokens than GPT-2 (--quick's) reads the first VocabSize tokens of the BPE, as diffu eval does.
        var tokenizer = Gpt2Tokenizer.FromDirectory(tokenizerFolder, config.VocabSize < Gpt2Small.VocabSize ? config.VocabSize : null)
            ?? throw new DiffuException($"{tokenizerFolder}: no GPT-2 BPE files (vocab.json + merges.txt, or encoder.json + vocab.bpe)");
        var examples = HellaSwag.Load(dataRoot, count);
        if (examples.Count == 0) throw new DiffuException($"{Path.Combine(dataRoot, HellaSwag.FileName)} holds no example");
        // GPT-2's encode adds no BOS, so both SpecialTokens modes give the text's own ids (EvalModel.Encode without a default BOS).
        return EvalRunner.ChoiceSequences((text, _) => [.. tokenizer.Encode(text)], config.Positions, EvalTasks.Get("hellaswag"), examples, out _, out _);
    }

    /// <summary>The sequences for the PyTorch script: each one's example, ids and first scored position (the choice follows its context).</summary>
    static JsonArray SequencesSpec(List<ScoringSequence> sequences) => new(sequences.Select(s => (JsonNode)new JsonObject
    {
        ["example"] = s.Example,
        ["ids"] = new JsonArray(s.Ids.Select(i => (JsonNode)i).ToArray()),
        ["scored_from"] = Array.IndexOf(s.Maskable, true) is int first and >= 0 ? first : s.Length,
    }).ToArray());

    /// <summary>Uniformly random token blocks: the training row measures speed, not learning.</summary>
    sealed class RandomBlocks(int length, int vocab) : ITokenBlocks
    {
        ulong draw;

        public int BlockLength => length;
        public int VocabSize => vocab;
        public int ValidationBlockCount => 0;

        public void NextTrainingBatch(int batch, Span<int> destination, Span<byte> sourceMask)
        {
            for (int i = 0; i < destination.Length; i++) destination[i] = (int)(Philox.Uniform(11, draw, (ulong)i) * vocab) % vocab;
            draw++;
        }

        public void ReadValidationBatch(int first, int batch, Span<int> destination, Span<byte> sourceMask) => throw new NotSupportedException("no validation data in a benchmark");

        public long[] State { get => [(long)draw]; set => draw = (ulong)value[0]; }
    }
}
