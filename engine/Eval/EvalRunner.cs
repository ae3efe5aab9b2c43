using System.Globalization;
using DiffuSharp.Diffusion;
using DiffuSharp.Kernels;
using DiffuSharp.Models;
using DiffuSharp.Runtime;

namespace DiffuSharp.Eval;

/// <summary>Which scorer grades multiple choice, and whether generation tasks denoise or decode autoregressively.</summary>
public enum EvalScorer { Diffusion, Elbo, Ar }

/// <summary>How a run evaluates (method §9-§10 defaults).</summary>
public sealed record EvalSettings
{
    public EvalScorer Scorer { get; init; } = EvalScorer.Diffusion;

    /// <summary>T of the §9 scorer and of the ROCStories infill (the paper's diffusion_steps, 32).</summary>
    public int Steps { get; init; } = 32;

    /// <summary>T of GSM8K generation (64 in the paper).</summary>
    public int GsmSteps { get; init; } = 64;

    /// <summary>Monte-Carlo samples of the ELBO scorer.</summary>
    public int ElboSamples { get; init; } = 32;

    /// <summary>At most this many rows share a forward pass.</summary>
    public int Batch { get; init; } = 32;

    /// <summary>At most this many tokens share a forward pass (bounds the [rows, length, vocabulary] logits).</summary>
    public long MaxTokens { get; init; } = 8192;

    public ulong Seed { get; init; }

    /// <summary>
    /// <see cref="MaxTokens"/> for a model on a device: as many tokens as keep one pass's activations and logits
    /// within an eighth of the free memory (256 MiB at most: larger passes gain nothing), 256 to 16384.
    /// </summary>
    public static long TokensPerPass(IModelConfig config, Device device)
    {
        long perToken = Math.Max(1, ModelMemory.Forward(config, 1, 1));
        long budget = Math.Min(device.AvailableMemoryBytes / 8, 256L << 20);
        return Math.Clamp(budget / perToken, 256, 16384);
    }

    /// <summary>The SFT sequence length of GSM8K (method §5: 256), capped by the model's positions.</summary>
    public int GsmCutoff { get; init; } = 256;

    /// <summary>The fast denoising modes of the generation tasks (infilling, GSM8K, unconditional): a cache, parallel commits.</summary>
    public DenoisingCache Cache { get; init; }
    public float? Threshold { get; init; }

    /// <summary>The denoising settings of a generation task, with the fast modes applied.</summary>
    internal DenoiseSettings Denoise(int steps, DenoisingStrategy strategy, SamplingOptions sampling, ulong seed) => new()
    {
        Steps = steps, Strategy = strategy, Sampling = sampling, Seed = seed, Cache = Cache, Threshold = Threshold,
    };
}

/// <summary>
/// Runs the tasks of method §10 on one model: multiple choice with the §9 scorer (or the ELBO bound, or the AR
/// baselines' mean log-probability), LAMBADA, ROCStories infilling and GSM8K by denoising with the paper's
/// confidence top-k sampler (Variant B), or by greedy AR decoding for AR models. Every example's prediction
/// is kept. Contexts longer than the model's positions lose their first tokens (counted in the settings).
/// </summary>
public sealed class EvalRunner
{
    readonly EvalModel m;
    readonly EvalSettings settings;

    public EvalRunner(EvalModel model, EvalSettings settings)
    {
        if (settings.Batch < 1 || settings.MaxTokens < 1 || settings.Steps < 1 || settings.GsmSteps < 1 || settings.ElboSamples < 1)
            throw new DiffuException("evaluation settings must be positive (batch, steps, samples)");
        if (settings.Scorer != EvalScorer.Ar && model.MaskTokenId is null)
            throw new DiffuException("a diffusion scorer needs the model's mask token: the config has no mask_token_id, so pass --mask-token ID or use --scorer ar");
        m = model;
        this.settings = settings;
    }

    bool Diffusion => settings.Scorer != EvalScorer.Ar;

    int Positions => m.Model.Positions;

    // ---- multiple choice ----------------------------------------------------------------------

    public TaskResult MultipleChoice(EvalTaskInfo task, IReadOnlyList<MultipleChoiceExample> examples, Action<int, int>? progress = null)
    {
        var sequences = ChoiceSequences(m.Encode, Positions, task, examples, out int truncated, out int cutChoices);
        IChoiceScorer scorer = settings.Scorer switch
        {
            EvalScorer.Diffusion => new DiffusionScorer(m.Model, m.MaskTokenId!.Value, settings.Steps, settings.Seed, settings.Batch, settings.MaxTokens),
            EvalScorer.Elbo => new ElboScorer(m.Model, m.MaskTokenId!.Value, settings.ElboSamples, settings.Seed, settings.Batch, settings.MaxTokens),
            _ => new ArScorer(m.Model, settings.Batch, settings.MaxTokens),
        };
        int choices = Math.Max(1, task.Choices);
        var scores = scorer.Score(sequences, done => progress?.Invoke(done / choices, examples.Count));
        var predictions = new List<EvalPrediction>();
        int at = 0, correct = 0;
        for (int i = 0; i < examples.Count; i++)
        {
            var own = scores.AsSpan(at, examples[i].Choices.Count).ToArray();
            at += own.Length;
            int best = Array.IndexOf(own, own.Min());
            if (best == examples[i].Gold) correct++;
            predictions.Add(new EvalPrediction(task.Name, i, examples[i].Choices[examples[i].Gold], examples[i].Choices[best], best == examples[i].Gold, own));
        }
        var used = Settings(("scorer", scorer.Name), ("truncated_contexts", truncated), ("truncated_choices", cutChoices));
        if (settings.Scorer == EvalScorer.Diffusion) used["steps"] = Text(settings.Steps);
        if (settings.Scorer == EvalScorer.Elbo) used["samples"] = Text(settings.ElboSamples);
        return new TaskResult(task.Name, examples.Count, new Dictionary<string, double> { ["accuracy"] = Percent(correct, examples.Count) }, used, predictions);
    }

    /// <summary>
    /// What the scorer grades for multiple-choice examples, one sequence per choice in order: the context's ids
    /// then the choice's, each encoded by <paramref name="encode"/> as the task asks. Where a pair exceeds
    /// <paramref name="positions"/> the context loses its first tokens (<paramref name="truncated"/> counts them)
    /// and a choice that alone fills the positions keeps its first ones (<paramref name="cutChoices"/>).
    /// </summary>
    public static List<ScoringSequence> ChoiceSequences(Func<string, SpecialTokens, int[]> encode, int positions, EvalTaskInfo task,
        IReadOnlyList<MultipleChoiceExample> examples, out int truncated, out int cutChoices)
    {
        var sequences = new List<ScoringSequence>();
        truncated = 0;
        cutChoices = 0;
        for (int i = 0; i < examples.Count; i++)
        {
            var context = encode(examples[i].Context, task.ContextTokens);
            for (int c = 0; c < examples[i].Choices.Count; c++)
            {
                var choice = encode(examples[i].Choices[c], task.TargetTokens);
                if (choice.Length >= positions)
                {
                    // Only on models with very few positions: one context token stays, and the choice's first tokens are scored.
                    choice = choice[..(positions - 1)];
                    cutChoices++;
                }
                var kept = KeepLast(context, positions - choice.Length, ref truncated);
                sequences.Add(ScoringSequence.ContextAndChoice(i, c, kept, choice));
            }
        }
        return sequences;
    }

    // ---- LAMBADA ------------------------------------------------------------------------------

    /// <summary>
    /// The last word of each passage (method §10): the passage's extra tokens over its prefix's are generated,
    /// T = their number, confidence top-k with sampling at temperature 1 (AR: greedy), and the decoded text
    /// must equal the last word.
    /// </summary>
    public TaskResult LastWord(EvalTaskInfo task, IReadOnlyList<LambadaExample> examples, Action<int, int>? progress = null)
    {
        var jobs = new List<GenerationJob>();
        int truncated = 0, skipped = 0;
        for (int i = 0; i < examples.Count; i++)
        {
            var prefix = m.Encode(examples[i].Prefix, task.ContextTokens);
            int n = m.Encode(examples[i].Text, task.ContextTokens).Length - prefix.Length;
            if (n <= 0) { skipped++; n = 1; }
            jobs.Add(new GenerationJob(i, KeepLast(prefix, Positions - n, ref truncated), n, [], n));
        }
        var generated = Generate(jobs, new SamplingOptions(1f), examples.Count, progress);
        var predictions = new List<EvalPrediction>();
        int correct = 0;
        for (int i = 0; i < examples.Count; i++)
        {
            string text = m.Decode(generated[i]);
            bool right = Lambada.IsExactMatch(text, examples[i].Target);
            if (right) correct++;
            predictions.Add(new EvalPrediction(task.Name, i, examples[i].Target, text, right));
        }
        return new TaskResult(task.Name, examples.Count, new Dictionary<string, double> { ["accuracy"] = Percent(correct, examples.Count) },
            Settings(("method", Diffusion ? "denoise: T = target tokens, topk, temperature 1" : "greedy AR decoding of the target's token count"),
                ("truncated_contexts", truncated), ("no_extra_tokens", skipped)), predictions);
    }

    // ---- ROCStories infilling -----------------------------------------------------------------

    /// <summary>The middle sentence between its prefix and suffix (oracle length), Variant B with T = steps (AR: greedy from the prefix alone); ROUGE ×100.</summary>
    public TaskResult Infill(EvalTaskInfo task, IReadOnlyList<InfillExample> examples, Action<int, int>? progress = null)
    {
        var jobs = new List<GenerationJob>();
        int truncated = 0;
        for (int i = 0; i < examples.Count; i++)
        {
            var prefix = m.Encode(examples[i].Prefix, task.ContextTokens);
            int n = Math.Max(1, m.Encode(examples[i].Middle, task.TargetTokens).Length);
            var suffix = Diffusion ? m.Encode(examples[i].Suffix, task.ContextTokens) : [];
            if (suffix.Length + n >= Positions) suffix = suffix[..Math.Max(0, Positions - n - 1)];
            jobs.Add(new GenerationJob(i, KeepLast(prefix, Positions - n - suffix.Length, ref truncated), n, suffix, settings.Steps));
        }
        var generated = Generate(jobs, new SamplingOptions(1f), examples.Count, progress);
        var texts = generated.Select(g => m.Decode(g)).ToArray();
        var scores = Rouge.CorpusPercent(texts, examples.Select(e => e.Middle).ToArray());
        var predictions = examples.Select((e, i) => new EvalPrediction(task.Name, i, e.Middle, texts[i], null)).ToList();
        return new TaskResult(task.Name, examples.Count,
            new Dictionary<string, double> { ["rouge1"] = scores.Rouge1, ["rouge2"] = scores.Rouge2, ["rougeL"] = scores.RougeL },
            Settings(("method", Diffusion ? $"denoise the oracle-length middle: T = {settings.Steps}, topk, temperature 1" : "greedy AR decoding from the prefix, cut at the oracle length"),
                ("truncated_contexts", truncated)), predictions);
    }

    // ---- GSM8K ----------------------------------------------------------------------------------

    /// <summary>
    /// Symbolic GSM8K (method §5, §8): [BOS] + question + [SEP], then the answer region up to the cutoff, all masked,
    /// denoised with Variant B in argmax mode, T = GSM steps (AR: greedy until EOS); the text before the first EOS
    /// is the prediction, right when its answer after "####" is the gold one.
    /// </summary>
    public TaskResult Generation(EvalTaskInfo task, IReadOnlyList<GsmExample> examples, Action<int, int>? progress = null)
    {
        int cutoff = Math.Min(settings.GsmCutoff, Positions);
        var jobs = new List<GenerationJob>();
        int truncated = 0;
        for (int i = 0; i < examples.Count; i++)
        {
            var source = m.Encode(examples[i].Prompt, task.ContextTokens);
            int target = Math.Min(m.Encode(examples[i].Answer, task.TargetTokens).Length, cutoff - 3);
            int keep = cutoff - 3 - target;
            if (source.Length > keep) { source = source[^keep..]; truncated++; }
            int[] context = [m.Sft.Bos, .. source, m.Sft.Sep];
            jobs.Add(new GenerationJob(i, context, cutoff - context.Length, [], settings.GsmSteps));
        }
        var generated = Generate(jobs, new SamplingOptions(0f), examples.Count, progress, m.Sft.Eos);
        var predictions = new List<EvalPrediction>();
        int correct = 0;
        for (int i = 0; i < examples.Count; i++)
        {
            var tokens = generated[i];
            int end = Array.IndexOf(tokens, m.Sft.Eos);
            string text = m.Decode(end < 0 ? tokens : tokens[..end]);
            bool right = Gsm8k.IsCorrect(text, examples[i].Answer);
            if (right) correct++;
            predictions.Add(new EvalPrediction(task.Name, i, examples[i].Answer, text, right));
        }
        return new TaskResult(task.Name, examples.Count, new Dictionary<string, double> { ["accuracy"] = Percent(correct, examples.Count) },
            Settings(("method", Diffusion ? $"denoise the answer region: T = {settings.GsmSteps}, topk, argmax" : "greedy AR decoding until EOS"),
                ("cutoff", cutoff), ("bos", m.Sft.Bos), ("sep", m.Sft.Sep), ("eos", m.Sft.Eos), ("truncated_questions", truncated)), predictions);
    }

    // ---- unconditional generation quality (the paper's Fig. 3) ---------------------------------

    /// <summary>Fig. 3's sampling for DiffuGPT-S: the ancestral sampler (Variant A) at temperature 1 with top-p 0.9.</summary>
    public static readonly SamplingOptions UnconditionalSampling = new(1f, 0, 0.9f);

    /// <summary>
    /// For each T in <paramref name="steps"/>: <paramref name="samples"/> unconditional samples of <paramref name="length"/>
    /// tokens, their generative perplexity under <paramref name="judge"/> (the text re-encoded with the judge's
    /// tokenizer), distinct-1/2/3 and mean token entropy (on the model's own tokens). Metrics are named per T,
    /// e.g. gen_ppl@T64; the predictions are the samples' texts.
    /// </summary>
    public TaskResult Unconditional(EvalModel judge, int samples, int length, IReadOnlyList<int> steps, Action<int, int>? progress = null)
    {
        if (!Diffusion) throw new DiffuException("the unconditional task measures a diffusion model's denoising steps: use --scorer diffusion (or auto on a diffusion model)");
        if (samples < 1 || length < 1 || steps.Count == 0 || steps.Any(t => t < 1))
            throw new DiffuException("unconditional generation needs --samples, --length and every --steps value positive");
        var denoiser = new Denoiser(m.Model, m.MaskTokenId!.Value);
        var metrics = new Dictionary<string, double>();
        var predictions = new List<EvalPrediction>();
        var perplexity = new GenerativePerplexity(judge.Model, judge.StartToken, settings.Batch, settings.MaxTokens);
        int done = 0, total = samples * steps.Count;
        foreach (int t in steps)
        {
            var tokens = new List<int[]>();
            for (int first = 0; first < samples; first += settings.Batch)
            {
                int rows = Math.Min(settings.Batch, samples - first);
                var problem = DenoisingPrompts.Stack([.. Enumerable.Range(0, rows).Select(_ => DenoisingPrompts.Unconditional(m.StartToken, length, Positions))]);
                var result = denoiser.Run(problem, settings.Denoise(t, DenoisingStrategy.Random, UnconditionalSampling, settings.Seed + (ulong)first));
                for (int r = 0; r < rows; r++) tokens.Add(result.Tokens.AsSpan(r * problem.Length + 1, problem.Length - 1).ToArray());
                done += rows;
                progress?.Invoke(done, total);
            }
            var texts = tokens.Select(x => m.Decode(x)).ToArray();
            var judged = texts.Select(x => judge.Encode(x, SpecialTokens.None)).Select(x => x.Length < judge.Model.Positions ? x : x[..(judge.Model.Positions - 1)]).ToArray();
            metrics[$"gen_ppl@T{t}"] = perplexity.Of(judged);
            for (int n = 1; n <= 3; n++) metrics[$"distinct{n}@T{t}"] = 100 * Diversity.DistinctN(tokens, n);
            metrics[$"entropy@T{t}"] = Diversity.MeanTokenEntropy(tokens);
            predictions.AddRange(texts.Select((x, i) => new EvalPrediction($"unconditional@T{t}", i, "", x, null)));
        }
        return new TaskResult("unconditional", samples, metrics,
            Settings(("samples", samples), ("length", length), ("steps", string.Join(",", steps)), ("sampler", "random (Variant A), temperature 1, top-p 0.9")),
            predictions);
    }

    // ---- shared generation ----------------------------------------------------------------------

    /// <summary>Generate <see cref="Count"/> tokens after <see cref="Prefix"/> and before <see cref="Suffix"/> (fixed), in <see cref="Steps"/> denoising passes.</summary>
    sealed record GenerationJob(int Index, int[] Prefix, int Count, int[] Suffix, int Steps)
    {
        public int Length => Prefix.Length + Count + Suffix.Length;
    }

    /// <summary>
    /// The generated tokens of every job, in job order. Diffusion: jobs of the same length and T denoise together,
    /// up to the batch size (a full-attention pass never mixes lengths). AR: each is decoded greedily from its prefix.
    /// </summary>
    int[][] Generate(List<GenerationJob> jobs, SamplingOptions sampling, int total, Action<int, int>? progress, int? stopToken = null)
    {
        var result = new int[jobs.Count][];
        int done = 0;
        if (!Diffusion)
        {
            var decoder = new ArDecoder(m.Model);
            foreach (var job in jobs)
            {
                result[job.Index] = decoder.Generate(job.Prefix, job.Count, 0f, settings.Seed, stopToken);
                progress?.Invoke(++done, total);
            }
            return result;
        }
        var denoiser = new Denoiser(m.Model, m.MaskTokenId!.Value);
        foreach (var group in jobs.GroupBy(j => (j.Length, j.Steps)))
            foreach (var chunk in group.Chunk(settings.Batch))
            {
                var problem = new DenoisingProblem(chunk.Length, group.Key.Length);
                for (int r = 0; r < chunk.Length; r++)
                {
                    var job = chunk[r];
                    var row = problem.Tokens.AsSpan(r * problem.Length, problem.Length);
                    var fixedRow = problem.Fixed.AsSpan(r * problem.Length, problem.Length);
                    job.Prefix.CopyTo(row);
                    job.Suffix.CopyTo(row[(job.Prefix.Length + job.Count)..]);
                    fixedRow[..job.Prefix.Length].Fill(1);
                    fixedRow[(job.Prefix.Length + job.Count)..].Fill(1);
                }
                var denoised = denoiser.Run(problem, settings.Denoise(group.Key.Steps, DenoisingStrategy.TopK, sampling, settings.Seed));
                for (int r = 0; r < chunk.Length; r++)
                    result[chunk[r].Index] = denoised.Tokens.AsSpan(r * problem.Length + chunk[r].Prefix.Length, chunk[r].Count).ToArray();
                done += chunk.Length;
                progress?.Invoke(done, total);
            }
        return result;
    }

    /// <summary>The last <paramref name="room"/> tokens of <paramref name="ids"/> (at least one), counting a cut.</summary>
    static int[] KeepLast(int[] ids, int room, ref int truncated)
    {
        if (ids.Length <= room) return ids;
        if (room < 1) throw new DiffuException("an example's answer alone needs all of the model's positions");
        truncated++;
        return ids[^room..];
    }

    static double Percent(int correct, int count) => count == 0 ? 0 : 100.0 * correct / count;

    static string Text(object value) => Convert.ToString(value, CultureInfo.InvariantCulture) ?? "";

    Dictionary<string, string> Settings(params (string Key, object Value)[] extra)
    {
        var all = new Dictionary<string, string> { ["scorer"] = settings.Scorer.ToString().ToLowerInvariant(), ["seed"] = Text(settings.Seed) };
        if (settings.Cache != DenoisingCache.None) all["cache"] = settings.Cache.ToString().ToLowerInvariant();
        if (settings.Threshold is float threshold) all["threshold"] = Text(threshold);
        foreach (var (key, value) in extra) all[key] = Text(value);
        return all;
    }
}
