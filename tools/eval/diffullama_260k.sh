#!/usr/bin/env bash
# A stories-sized DiffuLLaMA: llama2.c's stories260K converted to an HF LLaMA folder and adapted into a diffusion
# model on TinyStories (a new [MASK] token, bidirectional from step 0, 1500 steps, about 3 minutes on 2 cores).
# Usage: tools/eval/diffullama_260k.sh OUT  (writes OUT/stories260K, OUT/stories512.tok, OUT/diffullama-260k; keeps what exists)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="$1"
SHARED="${SHARED:-../shared/data}"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DIFFU_DEVICE="${DIFFU_DEVICE:-cpu}"
mkdir -p "$OUT"
dotnet build tools/Diffu/Diffu.csproj -c Release -o out/diffu -v quiet -nologo
diffu() { out/diffu/diffu "$@"; }
llama2c="$SHARED/llama2c"
[ -f "$OUT/stories260K/config.json" ] || diffu convert llama2c "$llama2c/stories260K.bin" "$llama2c/tok512.bin" "$OUT/stories260K"
[ -f "$OUT/stories512.tok" ] || diffu tokenize --tokenizer "$llama2c/tok512.bin" --out "$OUT/stories512.tok" \
  "$SHARED/corpora/tinystories/train_v2_head.txt" "$SHARED/corpora/tinystories/train_data00_head.txt"
[ -d "$OUT/diffullama-260k/checkpoints" ] || diffu train --init "$OUT/stories260K" --objective diffusion --mask-token new \
  --data "$OUT/stories512.tok" --steps 1500 --batch 16 --seq-len 128 --lr 2e-3 --schedule constant --anneal-steps 0 --eval-every 250 \
  --out "$OUT/diffullama-260k" --overwrite
