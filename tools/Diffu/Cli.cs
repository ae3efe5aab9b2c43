using System.CommandLine;
using System.CommandLine.Parsing;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Cli;

/// <summary>
/// The `diffu` command line. Exit codes: 0 success, 2 bad arguments or bad input (one-line message on
/// stderr), 3 a training run that diverged (stopped before writing; the last checkpoint is kept), 1 an internal error.
/// </summary>
public static class Cli
{
    public const int Ok = 0, InternalError = 1, BadInput = 2, Diverged = 3;

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var parsed = CreateRoot(stdout, stderr).Parse(args);
        if (parsed.Errors.Count > 0)
        {
            var problems = string.Join("; ", parsed.Errors.Select(e => e.Message.TrimEnd('.')).Distinct());
            stderr.WriteLine(OneLine($"error: {problems} (see '{CommandPath(parsed.CommandResult)} --help')"));
            return BadInput;
        }
        try
        {
            return parsed.Invoke(new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false });
        }
        catch (Training.TrainingDivergedException e)
        {
            stderr.WriteLine(OneLine($"error: {e.Message}"));
            return Diverged;
        }
        catch (Exception e) when (e is DiffuException or IOException or UnauthorizedAccessException)
        {
            stderr.WriteLine(OneLine($"error: {e.Message}"));
            return BadInput;
        }
        catch (Exception e)
        {
            stderr.WriteLine($"internal error: {e.GetType().Name}: {e.Message}");
            stderr.WriteLine(e.StackTrace);
            return InternalError;
        }
    }

    /// <summary>The command tree of `diffu`, with each command writing to the given streams.</summary>
    public static RootCommand CreateRoot(TextWriter stdout, TextWriter stderr) =>
        new("DiffuSharp: diffusion language models (DiffuGPT, DiffuLLaMA) in .NET")
        {
            InfoCommand.Create(stdout),
            LogitsCommand.Create(stdout),
            GenerateCommand.Create(stdout, stderr),
            BenchCommand.Create(stdout, stderr),
            TokenizeCommand.Create(stdout, stderr),
            TrainCommand.Create(stdout, stderr),
            ConvertCommand.Create(stdout),
            EvalCommand.Create(stdout, stderr),
            DataCommand.Create(stdout),
            MergeCommand.Create(stdout),
        };

    /// <summary>"diffu convert llama2c" for the command a parse stopped in.</summary>
    static string CommandPath(CommandResult result) =>
        result.Parent is CommandResult parent ? $"{CommandPath(parent)} {result.Command.Name}" : "diffu";

    /// <summary>A bad-input message stays one line even when it quotes a value or a path with line breaks in it.</summary>
    static string OneLine(string message) => message.ReplaceLineEndings(" ");

    /// <summary>--device, shared by the commands that run a model.</summary>
    public static Option<string?> DeviceOption() => NonEmpty(new Option<string?>("--device")
    {
        Description = $"where to run: {string.Join(", ", Devices.Names)} (default: $DIFFU_DEVICE, else auto = CUDA if present, else cpu)",
    });

    /// <summary>--precision, shared by the commands that run a model.</summary>
    /// <summary>--weights: the storage type of the model's weights (auto: as the checkpoint stores them).</summary>
    public static Option<string> WeightsOption()
    {
        var option = new Option<string>("--weights")
        {
            Description = "storage type of the weights: auto (as the checkpoint stores them), f32, bf16 or f16; activations, "
                + "norm statistics, softmax and accumulation stay float32",
            DefaultValueFactory = _ => "auto",
        };
        option.AcceptOnlyFromAmong([.. WeightTypes.Choices.Keys]);
        return option;
    }

    /// <summary>--save-dtype: the type saved weights are stored in.</summary>
    public static Option<string?> SaveDtypeOption(string fallback)
    {
        var option = new Option<string?>("--save-dtype") { Description = $"store the saved weights as f32, bf16 (half the size) or f16 (default: {fallback})" };
        option.AcceptOnlyFromAmong([.. WeightTypes.Concrete.Keys]);
        return option;
    }

    /// <summary>The weight type --weights asks for, resolved against the checkpoint for auto.</summary>
    public static DType WeightType(string? option, string model) => WeightTypes.Choices[option ?? "auto"] ?? ModelLoader.StoredType(model);

    /// <summary>Loads a model as <paramref name="weightType"/> and reports on <paramref name="log"/> how long it took and the process's resident memory after.</summary>
    public static ITrainableModel LoadModel(string model, Device device, string? adapter, DType weightType, TextWriter log)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var loaded = ModelLoader.Load(model, device, adapter, weightType);
        long resident = System.Diagnostics.Process.GetCurrentProcess().WorkingSet64;
        log.WriteLine($"loaded {loaded.Config.ParameterCount:N0} parameters as {WeightTypes.Name(weightType)} "
            + $"({DeviceMemory.Format(ModelMemory.Weights(loaded.Config, weightType))}) in {clock.Elapsed.TotalSeconds:F1} s; resident memory {DeviceMemory.Format(resident)}");
        return loaded;
    }

    public static Option<string?> PrecisionOption()
    {
        var option = new Option<string?>("--precision")
        {
            Description = "matmul arithmetic: f32, or tf32 / bf16 on CUDA tensor cores (compute capability 8.0+; float32 accumulation) "
                + "(default: $DIFFU_PRECISION, else f32)",
        };
        option.AcceptOnlyFromAmong("f32", "tf32", "bf16");
        return option;
    }

    /// <summary>The device named by --device (or its default) with its matmuls in --precision (or $DIFFU_PRECISION).</summary>
    public static Device CreateDevice(string? name, string? precision)
    {
        precision ??= Environment.GetEnvironmentVariable("DIFFU_PRECISION");
        var value = string.IsNullOrWhiteSpace(precision) ? MatMulPrecision.F32
            : Enum.TryParse<MatMulPrecision>(precision.Trim(), ignoreCase: true, out var parsed) && Enum.IsDefined(parsed) ? parsed
            : throw new DiffuException($"unknown precision '{precision}': expected f32, tf32 or bf16");
        return Devices.Create(name, value);
    }

    public static Option<string> ModelOption() => NonEmpty(new Option<string>("--model")
    {
        Description = "model folder (config.json + model.safetensors or a sharded index)",
        Required = true,
    });

    /// <summary>--adapter, shared by the commands that run a model.</summary>
    public static Option<string?> AdapterOption() => NonEmpty(new Option<string?>("--adapter")
    {
        Description = "a LoRA adapter for --model: a PEFT folder (adapter_model.safetensors + adapter_config.json) or a LoRA training run "
            + "(a LoRA run's folder also works alone as --model: its base is in adapter_config.json)",
    });

    /// <summary>
    /// Refuses an empty or blank value when the command line is parsed: for a path or a name, "" is never what
    /// was meant, and an empty --device would otherwise silently mean the default.
    /// </summary>
    public static Option<T> NonEmpty<T>(Option<T> option)
    {
        option.Validators.Add(result => RefuseEmpty(result, option.Name));
        return option;
    }

    /// <inheritdoc cref="NonEmpty{T}(Option{T})"/>
    public static Argument<T> NonEmpty<T>(Argument<T> argument)
    {
        argument.Validators.Add(result => RefuseEmpty(result, argument.Name));
        return argument;
    }

    static void RefuseEmpty(SymbolResult result, string name)
    {
        if (result.Tokens.Any(t => string.IsNullOrWhiteSpace(t.Value))) result.AddError($"{name} is empty");
    }
}
