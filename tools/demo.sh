#!/usr/bin/env bash
# The main job, end to end on the CPU: build the `diffu` CLI, inspect the PyTorch-written GPT-2 fixture,
# write the logits of one forward pass, and decode from it autoregressively with a KV cache.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v dotnet >/dev/null || { echo "the .NET 10 SDK is required (dotnet not on PATH)" >&2; exit 1; }
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DIFFU_DEVICE="${DIFFU_DEVICE:-cpu}"
SHARED="${SHARED:-../shared/data}"
OUT="${OUT:-out/demo}"
mkdir -p "$OUT"

dotnet build tools/Diffu/Diffu.csproj -c Release -o out/diffu -v quiet -nologo
diffu() { out/diffu/diffu "$@"; }
model=tests/fixtures/gpt2-tiny

echo "== diffu info $model"
diffu info "$model"

echo "== diffu logits (causal and bidirectional)"
ids=15,42,7,300,511,2
diffu logits --model "$model" --ids "$ids" --out "$OUT/logits_causal.safetensors"
diffu logits --model "$model" --ids "$ids" --bidirectional --out "$OUT/logits_bidirectional.safetensors"

echo "== diffu generate --ar (greedy, KV cache)"
diffu generate --model "$model" --tokenizer "$SHARED/tokenizers/gpt2" --prompt "Once upon a time" --ar --max-new 24 --temperature 0
