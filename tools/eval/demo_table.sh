#!/usr/bin/env bash
# The README's evaluation table, end to end on the CPU: the demo's models (a tiny GPT-2 trained here, AR, and
# its DiffuGPT adaptation; tools/demo.sh makes them when missing) and stories260K (llama2.c, AR) with its
# DiffuLLaMA adaptation (1500 steps, about 3 minutes), each evaluated on the paper's six tasks with --limit
# and on a held-out TinyStories last-word task (passages of TinyStories V1, which no demo run trains on).
# Results: $OUT/<model>/results.json and predictions.jsonl, and $OUT/<model>-tinystories/.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DIFFU_DEVICE="${DIFFU_DEVICE:-cpu}"
SHARED="${SHARED:-../shared/data}"
OUT="${OUT:-out/eval-demo}"
LIMIT="${LIMIT:-200}"
GSM_LIMIT="${GSM_LIMIT:-50}"
mkdir -p "$OUT"

[ -d out/demo/diffugpt-tiny/checkpoints ] || tools/demo.sh
dotnet build tools/Diffu/Diffu.csproj -c Release -o out/diffu -v quiet -nologo
diffu() { out/diffu/diffu "$@"; }

tools/eval/diffullama_260k.sh "$OUT"

# Held-out last word: each TinyStories V1 paragraph of 8 to 60 words, final punctuation removed, one per line.
awk 'NF >= 8 && NF <= 60 && $0 !~ /endoftext/ && kept < 500 { line = $0; sub(/[.!?,;:"'"'"' ]+$/, "", line); print line; kept++ }' \
  "$SHARED/corpora/tinystories/train_v1_head.txt" > "$OUT/tinystories_lastword.txt"

for model in gpt2-tiny-ar:out/demo/gpt2-tiny-ar diffugpt-tiny:out/demo/diffugpt-tiny \
             stories260K:"$OUT/stories260K" diffullama-260k:"$OUT/diffullama-260k"; do
  name="${model%%:*}"; dir="${model#*:}"
  echo "== $name"
  diffu eval --model "$dir" --eval-data "$SHARED/eval" --task lambada,hellaswag,piqa,siqa,rocstories --limit "$LIMIT" --out "$OUT/$name" --overwrite
  diffu eval --model "$dir" --eval-data "$SHARED/eval" --task gsm8k --limit "$GSM_LIMIT" --out "$OUT/$name-gsm8k" --overwrite
  diffu eval --model "$dir" --eval-data "$SHARED/eval" --task lambada --data "$OUT/tinystories_lastword.txt" --out "$OUT/$name-tinystories" --overwrite
done
