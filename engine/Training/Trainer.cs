using System.Diagnostics;
using System.Text.Json;
using DiffuSharp.Data;
using DiffuSharp.Diffusion;
using DiffuSharp.IO;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Training;

/// <summary>Combines the gradients a step accumulated with those of other processes (data parallelism) before they are clipped and applied.</summary>
public interface IGradientReducer
{
    void Reduce(IParameterSet gradients);
}

/// <summary>A non-finite loss or gradient, or a loss above the guard: the step is abandoned and the last checkpoint kept.</summary>
public sealed class TrainingDivergedException(string message) : DiffuException(message);

/// <summary>
/// The training loop: micro-batches under the objective, gradient accumulation, global-norm clipping,
/// AdamW with a warm-up/decay schedule, validation, train_log.jsonl and checkpoints in the output folder.
/// </summary>
public sealed class Trainer : IDisposable
{
    public const string LogFile = RunLayout.LogFile;

    /// <summary>Validation noise uses its own seed so every evaluation scores the same masks.</summary>
    const ulong ValidationSeedSalt = 0x76616c6964617465;

    readonly ITrainableModel model;
    readonly ITokenBlocks data;
    readonly Objective objective, validationObjective;
    readonly LearningRateSchedule schedule;
    readonly IParameterSet grads, moment1, moment2;
    readonly ObjectiveBatch batch;
    readonly int[] ids;

    /// <summary>The source mask of the blocks in <see cref="ids"/>, or empty when the data has none.</summary>
    readonly byte[] source;
    readonly List<TrainLogRow> history = new();
    readonly bool ownsModel;

    /// <summary>A new run (or, with <paramref name="resumed"/> and its moments, a continued one).
    /// With <paramref name="ownsModel"/> the trainer disposes the model with itself.</summary>
    public Trainer(ITrainableModel model, ITokenBlocks data, TrainOptions options, TrainingState? resumed = null,
        (IParameterSet M, IParameterSet V)? moments = null, bool ownsModel = false)
    {
        options.Validate();
        if (data.BlockLength != options.SequenceLength)
            throw new DiffuException($"data blocks are {data.BlockLength} tokens, --seq-len is {options.SequenceLength}");
        if (options.SequenceLength > model.Positions)
            throw new DiffuException($"--seq-len {options.SequenceLength} exceeds the model's {model.Positions} positions");
        if (options.Objective == TrainingObjective.Diffusion && (uint)options.MaskTokenId >= (uint)model.VocabSize)
            throw new DiffuException($"mask token {options.MaskTokenId} is outside the vocabulary [0, {model.VocabSize}): pass --mask-token ID or --mask-token new");
        if (data.VocabSize > model.VocabSize)
            throw new DiffuException($"the data's vocabulary has {data.VocabSize} tokens, the model only {model.VocabSize}: tokenize with the model's tokenizer");
        foreach (var (name, tensor) in model.Parameters.Named())
            if (tensor.DType != DType.F32)
                throw new DiffuException($"parameter '{name}' is {WeightTypes.Name(tensor.DType)}: training updates float32 master weights, so a full run "
                    + "(or LoRA's trained embedding) needs the model loaded with --weights f32; a LoRA run trains float32 adapters over a 16-bit base");
        this.model = model;
        this.data = data;
        this.ownsModel = ownsModel;
        Options = options;
        objective = new Objective(options.Objective, options.MaskTokenId, options.Seed);
        validationObjective = new Objective(options.Objective, options.MaskTokenId, options.Seed ^ ValidationSeedSalt);
        schedule = new LearningRateSchedule(options.LearningRate, options.WarmupSteps, options.Steps, options.Decay);
        grads = model.ZeroParameterSet();
        (moment1, moment2) = moments ?? (model.ZeroParameterSet(), model.ZeroParameterSet());
        foreach (var set in new[] { grads, moment1, moment2 })
            if (!set.Storage.Select(b => b.Length).SequenceEqual(model.Parameters.Storage.Select(b => b.Length)))
                throw new ArgumentException("gradients and moments must share the parameters' buffer layout");
        batch = new ObjectiveBatch(options.Batch, options.SequenceLength);
        ids = new int[options.Batch * options.SequenceLength];
        source = data.HasSourceMask ? new byte[ids.Length] : [];
        if (resumed is not null)
        {
            Step = resumed.Step;
            data.State = resumed.DataState;
        }
    }

    public TrainOptions Options { get; }

    /// <summary>
    /// Runs between gradient accumulation and clipping, on the accumulated gradients: where a data-parallel
    /// run averages them across processes (one all-reduce per buffer of <see cref="IParameterSet.Storage"/>).
    /// </summary>
    public IGradientReducer? Reducer { get; set; }

    /// <summary>Optimizer steps completed.</summary>
    public long Step { get; private set; }

    public IReadOnlyList<TrainLogRow> History => history;

    /// <summary>
    /// Continues a run from a checkpoint folder: weights, moments, step and data position; under the saved
    /// options, or under <paramref name="options"/> (the saved ones with, say, more steps). A full run's weights load as
    /// float32 masters even from a 16-bit checkpoint (--save-dtype); a LoRA run's base loads as stored.
    /// </summary>
    public static Trainer Resume(string checkpoint, Device device, ITokenBlocks data, TrainOptions? options = null)
    {
        var lora = (options ?? Checkpoint.LoadOptions(checkpoint)).Lora;
        var model = ModelLoader.Load(checkpoint, device, weightType: lora is null ? DType.F32 : null);
        try
        {
            var (state, m, v) = Checkpoint.LoadState(checkpoint, model);
            return new Trainer(model, data, options ?? state.Options, state, (m, v), ownsModel: true);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    public ITrainableModel Model => model;

    /// <summary>One optimizer step over Options.GradientAccumulation micro-batches. Throws <see cref="TrainingDivergedException"/> on a non-finite loss or gradient, before touching the weights.</summary>
    public TrainLogRow TrainStep()
    {
        var clock = Stopwatch.StartNew();
        var d = model.Device;
        foreach (var g in grads.Storage) d.Fill(g, 0);
        var (mode, allowBytes) = Attention(Step);
        using var allow = allowBytes is null ? null : d.FromArray(allowBytes, Options.SequenceLength, Options.SequenceLength);
        double loss = 0, crossEntropy = 0;
        int accumulation = Options.GradientAccumulation;
        for (int micro = 0; micro < accumulation; micro++)
        {
            data.NextTrainingBatch(Options.Batch, ids, source);
            objective.Prepare(ids, batch, (ulong)(Step * accumulation + micro), 1f / accumulation, source);
            var part = GradientStep.Run(model, batch, grads, mode, allow);
            loss += part.Loss;
            crossEntropy += part.MeanCrossEntropy / accumulation;
        }
        Reducer?.Reduce(grads);
        double norm = 0;
        foreach (var g in grads.Storage) norm += d.SumOfSquares(g);
        norm = Math.Sqrt(norm);
        if (!double.IsFinite(loss) || !double.IsFinite(norm))
            throw new TrainingDivergedException($"step {Step + 1}: loss {loss}, gradient norm {norm} are not finite; stopped before the update, the last checkpoint is kept");
        if (loss > Options.MaxLoss)
            throw new TrainingDivergedException($"step {Step + 1}: loss {loss:g4} is above --max-loss {Options.MaxLoss:g4}; stopped before the update, the last checkpoint is kept (lower --lr?)");
        if (Options.ClipNorm > 0 && norm > Options.ClipNorm)
            foreach (var g in grads.Storage) d.Scale(g, (float)(Options.ClipNorm / norm));
        double lr = schedule.At(Step);
        var update = new AdamWStep((float)lr, Options.Beta1, Options.Beta2, Options.Epsilon, Options.WeightDecay, (int)(Step + 1));
        var parameters = model.Parameters.Storage;
        for (int i = 0; i < parameters.Count; i++)
            d.AdamW(parameters[i], grads.Storage[i], moment1.Storage[i], moment2.Storage[i], update);
        d.Synchronize();
        Step++;
        double tokens = (double)Options.Batch * Options.SequenceLength * accumulation;
        var row = new TrainLogRow(Step, loss, crossEntropy, lr, norm, tokens / Math.Max(clock.Elapsed.TotalSeconds, 1e-9));
        history.Add(row);
        return row;
    }

    /// <summary>
    /// The attention of a step: causal for AR; for diffusion the annealing mask of method §4 while
    /// r &lt; 1, then full bidirectional attention.
    /// </summary>
    (AttentionMaskMode Mode, byte[]? Allow) Attention(long step)
    {
        if (Options.Objective == TrainingObjective.Autoregressive) return (AttentionMaskMode.Causal, null);
        var allow = objective.AnnealMask(Options.SequenceLength, step, Options.AnnealSteps);
        return allow is null ? (AttentionMaskMode.Bidirectional, null) : (AttentionMaskMode.Explicit, allow);
    }

    /// <summary>
    /// Mean loss over the first Options.EvalBatches batches of the validation split, with fixed noise (the
    /// same masks at every evaluation) and the attention the model is trained towards: causal for AR,
    /// bidirectional for diffusion.
    /// </summary>
    public BatchLoss ValidationLoss()
    {
        if (data.ValidationBlockCount == 0) throw new DiffuException("the data has no validation blocks");
        var mode = Options.Objective == TrainingObjective.Autoregressive ? AttentionMaskMode.Causal : AttentionMaskMode.Bidirectional;
        int batches = Math.Max(1, Math.Min(Options.EvalBatches, data.ValidationBlockCount / Options.Batch));
        double loss = 0, crossEntropy = 0;
        for (int i = 0; i < batches; i++)
        {
            data.ReadValidationBatch(i * Options.Batch, Options.Batch, ids, source);
            validationObjective.Prepare(ids, batch, (ulong)i, source: source);
            var part = GradientStep.Loss(model, batch, mode, null);
            loss += part.Loss;
            crossEntropy += part.MeanCrossEntropy;
        }
        return new BatchLoss(loss / batches, crossEntropy / batches);
    }

    /// <summary>
    /// Trains up to Options.Steps. Every EvalEvery steps and at the end: validation loss, a checkpoint in
    /// <paramref name="run"/> and the <paramref name="evaluated"/> callback (plots). Every step appends a row
    /// to train_log.jsonl and calls <paramref name="stepped"/> (progress display). The log keeps the rows up
    /// to the step the run resumed from, so it always describes one run.
    /// </summary>
    public void Run(RunFolder run, IReadOnlyList<(string Name, byte[] Bytes)>? tokenizer, Action<TrainLogRow>? stepped = null,
        Action<IReadOnlyList<TrainLogRow>>? evaluated = null, CancellationToken cancel = default)
    {
        run.Prune(Options.KeepCheckpoints);
        history.Clear();
        history.AddRange(ReadLog(run.LogPath, tornTail: true).Where(r => r.Step <= Step));
        run.ReplaceFile(LogFile, temp => File.WriteAllLines(temp, history.Select(r => JsonSerializer.Serialize(r, LogJson))));
        using var log = new StreamWriter(new FileStream(run.LogPath, FileMode.Append, FileAccess.Write, FileShare.Read));
        void Append(TrainLogRow row)
        {
            log.WriteLine(JsonSerializer.Serialize(row, LogJson));
            log.Flush();
            CrashPoints.Reach("log-appended");
        }
        if (Step == 0 && !history.Any(r => r.ValLoss is not null))
        {
            var validation = CheckedValidationLoss();
            var initial = new TrainLogRow(0, null, null, 0, 0, 0, validation.Loss, validation.MeanCrossEntropy);
            history.Add(initial);
            Append(initial);
        }
        while (Step < Options.Steps)
        {
            cancel.ThrowIfCancellationRequested();
            var row = TrainStep();
            bool evaluate = Step % Options.EvalEvery == 0 || Step == Options.Steps;
            if (evaluate)
            {
                var validation = CheckedValidationLoss();
                row = row with { ValLoss = validation.Loss, ValCe = validation.MeanCrossEntropy };
                history[^1] = row;
            }
            Append(row);
            stepped?.Invoke(row);
            if (evaluate)
            {
                run.SaveCheckpoint(Step, Options.KeepCheckpoints, folder => Checkpoint.Write(folder, model, moment1, moment2, new TrainingState(Step, Options, data.State),
                    tokenizer, Options.Objective == TrainingObjective.Diffusion ? Options.MaskTokenId : null, Options.SaveType));
                evaluated?.Invoke(history);
            }
        }
    }

    /// <summary>The validation loss, refused (before anything is written) when it is not finite or above the guard.</summary>
    BatchLoss CheckedValidationLoss()
    {
        var validation = ValidationLoss();
        if (!double.IsFinite(validation.Loss) || validation.Loss > Options.MaxLoss)
            throw new TrainingDivergedException($"step {Step}: validation loss {validation.Loss:g4} is {(double.IsFinite(validation.Loss) ? $"above --max-loss {Options.MaxLoss:g4}" : "not finite")}; "
                + "stopped before writing, the last checkpoint is kept (lower --lr?)");
        return validation;
    }

    static readonly JsonSerializerOptions LogJson = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    /// <summary>
    /// The rows of a train_log.jsonl (none if the file does not exist). With <paramref name="tornTail"/>, a last
    /// line without its newline (a process killed while appending it) is dropped instead of refused.
    /// </summary>
    public static List<TrainLogRow> ReadLog(string path, bool tornTail = false)
    {
        if (!File.Exists(path)) return [];
        var text = File.ReadAllText(path);
        var lines = text.Split('\n');
        if (tornTail) lines = lines[..^1];
        var rows = new List<TrainLogRow>();
        for (int i = 0; i < lines.Length; i++)
        {
            if (string.IsNullOrWhiteSpace(lines[i])) continue;
            try
            {
                rows.Add(JsonSerializer.Deserialize<TrainLogRow>(lines[i], LogJson) ?? throw new JsonException("null row"));
            }
            catch (JsonException e)
            {
                throw new DiffuException($"{path}: line {i + 1} is not a log row ({e.Message})");
            }
        }
        return rows;
    }

    public void Dispose()
    {
        grads.Dispose();
        moment1.Dispose();
        moment2.Dispose();
        if (ownsModel) model.Dispose();
    }
}
