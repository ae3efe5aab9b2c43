#!/usr/bin/env bash
# The main job, end to end on the CPU (about 8 minutes on 2 cores):
#   1. build the `diffu` CLI;
#   2. tokenize the TinyStories text in ../shared/data with the GPT-2 BPE;
#   3. train a tiny GPT-2 (models/gpt2-tiny) autoregressively and sample from it;
#   4. adapt it into a DiffuGPT with the paper's objective (masking, 1/t, shift, attention annealing);
#   5. generate and infill with it by iterative denoising.
# Each training run leaves checkpoints/step-N/, train_log.jsonl and loss.png in its folder under out/demo
# (--overwrite: a rerun of the demo replaces the previous one).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v dotnet >/dev/null || { echo "the .NET 10 SDK is required (dotnet not on PATH)" >&2; exit 1; }
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DIFFU_DEVICE="${DIFFU_DEVICE:-cpu}"
SHARED="${SHARED:-../shared/data}"
OUT="${OUT:-out/demo}"
AR_STEPS="${AR_STEPS:-300}"
DIFFUSION_STEPS="${DIFFUSION_STEPS:-300}"
mkdir -p "$OUT"

dotnet build tools/Diffu/Diffu.csproj -c Release -o out/diffu -v quiet -nologo
diffu() { out/diffu/diffu "$@"; }
tokenizer="$SHARED/tokenizers/gpt2"

echo "== tokenize TinyStories"
diffu tokenize --tokenizer "$tokenizer" --out "$OUT/stories.tok" \
  "$SHARED/corpora/tinystories/train_v2_head.txt" "$SHARED/corpora/tinystories/train_data00_head.txt"

echo "== train a tiny GPT-2 (AR, causal attention)"
diffu train --config gpt2-tiny --objective ar --data "$OUT/stories.tok" --tokenizer "$tokenizer" \
  --steps "$AR_STEPS" --batch 16 --seq-len 128 --lr 2e-3 --warmup 30 --eval-every 50 --seed 1 --out "$OUT/gpt2-tiny-ar" --overwrite

echo "== sample from it (greedy, KV cache)"
diffu generate --model "$OUT/gpt2-tiny-ar" --prompt "Once upon a time" --ar --max-new 40 --temperature 0

echo "== adapt it into a DiffuGPT (diffusion objective, attention annealed over the first third)"
diffu train --init "$OUT/gpt2-tiny-ar" --objective diffusion --data "$OUT/stories.tok" \
  --steps "$DIFFUSION_STEPS" --batch 16 --seq-len 128 --lr 2e-3 --warmup 20 --anneal-steps $((DIFFUSION_STEPS / 3)) \
  --eval-every 50 --seed 2 --out "$OUT/diffugpt-tiny" --overwrite

echo "== denoise with it: prefix completion (48 steps, confidence top-k) and infilling"
diffu generate --model "$OUT/diffugpt-tiny" --prompt "Once upon a time" --length 48 --steps 48 --sampler topk \
  --temperature 0.9 --top-p 0.9 --seed 1
diffu generate --model "$OUT/diffugpt-tiny" --infill "Once upon a time, there was a little girl named Lily.<mask:12> She was very happy." \
  --steps 12 --temperature 0.8 --seed 3

echo "== loss curves: $OUT/gpt2-tiny-ar/loss.png and $OUT/diffugpt-tiny/loss.png"
