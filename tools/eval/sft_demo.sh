#!/usr/bin/env bash
# Conditional fine-tuning (method §5) on the paper's GSM8K-symbolic data, end to end on the CPU: the demo's DiffuGPT
# (a tiny GPT-2 adapted by tools/demo.sh) and a stories-sized DiffuLLaMA (tools/eval/diffullama_260k.sh), each fine-tuned
# in full and with LoRA (rank 8 on every projection, the base frozen), and evaluated on GSM8K's test split
# (`diffu eval --task gsm8k`, --limit) before and after. Models this small reach no accuracy: the point is the pipeline
# and the curves. Results: $OUT/<model>-{full,lora}/ (runs, loss.png), $OUT/<model>-{base,full,lora}-gsm8k/ (results.json).
set -euo pipefail
cd "$(dirname "$0")/../.."
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DIFFU_DEVICE="${DIFFU_DEVICE:-cpu}"
SHARED="${SHARED:-../shared/data}"
OUT="${OUT:-out/sft-demo}"
STEPS="${STEPS:-600}"
GSM_LIMIT="${GSM_LIMIT:-100}"
mkdir -p "$OUT"

[ -d out/demo/diffugpt-tiny/checkpoints ] || tools/demo.sh
tools/eval/diffullama_260k.sh out/eval-demo
dotnet build tools/Diffu/Diffu.csproj -c Release -o out/diffu -v quiet -nologo
diffu() { out/diffu/diffu "$@"; }

diffu data gsm8k-symbolic "$SHARED/eval/gsm8k/train.jsonl" --out "$OUT/gsm_train.json" --overwrite
sft=(--sft "$OUT/gsm_train.json" --cutoff 256 --recipe sft --warmup 60 --steps "$STEPS" --batch 8 --eval-every 100 --eval-batches 4 --overwrite)
gsm() { diffu eval --model "$1" --eval-data "$SHARED/eval" --task gsm8k --limit "$GSM_LIMIT" --out "$2" --overwrite; }

for model in diffugpt-tiny:out/demo/diffugpt-tiny diffullama-260k:out/eval-demo/diffullama-260k; do
  name="${model%%:*}"; dir="${model#*:}"
  echo "== $name: GSM8K before fine-tuning"
  gsm "$dir" "$OUT/$name-base-gsm8k"
  echo "== $name: full fine-tuning"
  diffu train --init "$dir" "${sft[@]}" --lr 1e-3 --out "$OUT/$name-full"
  gsm "$OUT/$name-full" "$OUT/$name-full-gsm8k"
  echo "== $name: LoRA (rank 8, every projection)"
  diffu train --init "$dir" "${sft[@]}" --lr 3e-3 --lora-rank 8 --out "$OUT/$name-lora"
  gsm "$OUT/$name-lora" "$OUT/$name-lora-gsm8k"
done
echo "== loss curves: $OUT/*-full/loss.png and $OUT/*-lora/loss.png"
