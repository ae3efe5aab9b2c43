#!/usr/bin/env bash
# The fast denoising modes against the exact sampler (issue 15's quality guard): for each cache and threshold setting,
# task scores, wall time and the outputs' agreement with the exact sampler's, on the stories-sized DiffuLLaMA
# (tools/eval/diffullama_260k.sh) and its GSM8K fine-tune (tools/eval/sft_demo.sh's, else a shorter one made here).
#   - ROCStories infilling (ROUGE; T = 32, temperature 1, one block: the cache keeps the story around the gap);
#   - GSM8K (accuracy; T = 64, argmax, one block: the cache keeps the question);
#   - completions of "Once upon a time" (128 tokens, T = 64, semi-AR blocks of 32, 16 samples at temperature 1).
# Agreement: the share of outputs identical to the exact sampler's, and of words equal position by position. The row
# "exact, another seed" is the exact sampler drawing afresh: what agreement two independent samples reach.
# Usage: tools/eval/fast_sampling.sh [OUT]  (default out/fast-sampling; writes OUT/summary.md and OUT/summary.json)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-out/fast-sampling}"
LIMIT="${LIMIT:-200}"
GSM_LIMIT="${GSM_LIMIT:-100}"
SHARED="${SHARED:-../shared/data}"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DIFFU_DEVICE="${DIFFU_DEVICE:-cpu}"
mkdir -p "$OUT"
tools/eval/diffullama_260k.sh out/eval-demo
dotnet build tools/Diffu/Diffu.csproj -c Release -o out/diffu -v quiet -nologo
diffu() { out/diffu/diffu "$@"; }
base=out/eval-demo/diffullama-260k
sft=out/sft-demo/diffullama-260k-full
if [ ! -d "$sft/checkpoints" ]; then
  sft="$OUT/diffullama-260k-gsm8k"
  [ -f "$OUT/gsm_train.json" ] || diffu data gsm8k-symbolic "$SHARED/eval/gsm8k/train.jsonl" --out "$OUT/gsm_train.json"
  [ -d "$sft/checkpoints" ] || diffu train --init "$base" --sft "$OUT/gsm_train.json" --cutoff 256 --recipe sft --warmup 60 --steps 300 \
    --batch 8 --lr 1e-3 --eval-every 100 --eval-batches 4 --out "$sft"
fi

seconds() { local start=$1; echo "$(date +%s.%N) - $start" | bc; }
# mode = cache:threshold (threshold "-" = off)
for mode in none:- reseed:- prefix:- dual:- none:0.9 prefix:0.9 dual:0.9 prefix:0.7 dual:0.7 prefix:0.5 dual:0.5; do
  cache="${mode%%:*}"; threshold="${mode#*:}"; tag="$cache-$threshold"
  # every mode draws with seed 1, the baseline with seed 7
  if [ "$cache" = reseed ]; then fast=(--cache none --seed 7); else fast=(--cache "$cache" --seed 1); fi
  [ "$threshold" = "-" ] || fast+=(--threshold "$threshold")
  echo "== $tag"
  if [ "$cache" != dual ]; then
    start=$(date +%s.%N)
    diffu eval --model "$base" --eval-data "$SHARED/eval" --task rocstories --limit "$LIMIT" "${fast[@]}" --out "$OUT/rocstories-$tag" --overwrite > /dev/null
    seconds "$start" > "$OUT/rocstories-$tag/seconds"
    start=$(date +%s.%N)
    diffu eval --model "$sft" --eval-data "$SHARED/eval" --task gsm8k --limit "$GSM_LIMIT" "${fast[@]}" --out "$OUT/gsm8k-$tag" --overwrite > /dev/null
    seconds "$start" > "$OUT/gsm8k-$tag/seconds"
  fi
  diffu generate --model "$base" --prompt "Once upon a time" --length 128 --block 32 --steps 64 --batch 16 "${fast[@]}" \
    > "$OUT/generate-$tag.txt" 2> "$OUT/generate-$tag.log"
done

python3 - "$OUT" <<'PY'
import json, os, re, sys
out = sys.argv[1]
def words_agree(a, b):
    a, b = a.split(), b.split()
    return sum(x == y for x, y in zip(a, b)) / max(len(a), len(b), 1)
def agreement(pairs):
    pairs = list(pairs)
    return 100 * sum(a == b for a, b in pairs) / len(pairs), 100 * sum(words_agree(a, b) for a, b in pairs) / len(pairs)
def predictions(folder):
    with open(os.path.join(out, folder, "predictions.jsonl")) as f:
        return [json.loads(line)["prediction"] for line in f]
def samples(tag):
    text = open(os.path.join(out, f"generate-{tag}.txt")).read()
    return [s.strip() for s in re.split(r"^--- sample \d+.*$", text, flags=re.M) if s.strip()]
rows, table = [], []
modes = ["none--", "reseed--", "prefix--", "dual--", "none-0.9", "prefix-0.9", "dual-0.9", "prefix-0.7", "dual-0.7", "prefix-0.5", "dual-0.5"]
names = {"none--": "exact", "reseed--": "exact, another seed"}
for tag in modes:
    row = {"mode": names.get(tag) or (tag.rstrip("-") + " cache" if tag.endswith("--") else tag.replace("none-", "no cache-").replace("-", ", threshold "))}
    for task, metric in (("rocstories", "rouge1"), ("gsm8k", "accuracy")):
        folder = f"{task}-{tag}"
        if not os.path.isdir(os.path.join(out, folder)): continue
        result = json.load(open(os.path.join(out, folder, "results.json")))["tasks"][task]["metrics"]
        same, words = agreement(zip(predictions(folder), predictions(f"{task}-none--")))
        row[task] = {metric: result.get(metric), "seconds": float(open(os.path.join(out, folder, "seconds")).read()), "same": same, "words": words}
    log = open(os.path.join(out, f"generate-{tag}.log")).read()
    steps = int(re.search(r": (\d+) steps of", log).group(1))
    rate = float(re.search(r"\(([\d.]+) tokens/s\)", log).group(1))
    same, words = agreement(zip(samples(tag), samples("none--")))
    row["generate"] = {"passes": steps, "tokens_per_second": rate, "same": same, "words": words}
    rows.append(row)
json.dump(rows, open(os.path.join(out, "summary.json"), "w"), indent=1)
def cell(row, task, key, fmt):
    return fmt.format(row[task][key]) if task in row and row[task].get(key) is not None else ""
lines = ["| mode | ROCStories ROUGE-1 | s | same / words % | GSM8K acc | s | same / words % | completion passes | tokens/s | same / words % |",
         "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
for r in rows:
    lines.append("| " + " | ".join([r["mode"],
        cell(r, "rocstories", "rouge1", "{:.2f}"), cell(r, "rocstories", "seconds", "{:.0f}"),
        (cell(r, "rocstories", "same", "{:.0f}") + " / " + cell(r, "rocstories", "words", "{:.0f}")) if "rocstories" in r else "",
        cell(r, "gsm8k", "accuracy", "{:.1f}"), cell(r, "gsm8k", "seconds", "{:.0f}"),
        (cell(r, "gsm8k", "same", "{:.0f}") + " / " + cell(r, "gsm8k", "words", "{:.0f}")) if "gsm8k" in r else "",
        str(r["generate"]["passes"]), "{:.0f}".format(r["generate"]["tokens_per_second"]),
        "{:.0f} / {:.0f}".format(r["generate"]["same"], r["generate"]["words"])]) + " |")
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
