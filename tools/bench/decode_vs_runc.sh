#!/usr/bin/env bash
# Greedy decoding side by side with llama2.c's run.c: stories260K and a random 110M LLaMA (llama2.c's stories110M
# shape: dim 768, 12 layers, 12 heads, hidden 2048, vocab 32000), 250 new tokens after "Once upon a time", each
# engine three times, alternating. Both report tokens/s after the first token (run.c's "achieved tok/s").
# Usage: tools/bench/decode_vs_runc.sh RUN_C [OUT]
#   RUN_C: a run.c binary built from github.com/karpathy/llama2.c (gcc -Ofast -march=native -fopenmp run.c -lm -o run)
#   OUT:   working folder for the checkpoints (default out/decode-vs-runc)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNC="$(realpath "$1")"
OUT="${2:-out/decode-vs-runc}"
SHARED="${SHARED:-../shared/data}/llama2c"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
mkdir -p "$OUT"
dotnet build tools/Diffu/Diffu.csproj -c Release -o out/diffu -v quiet -nologo
diffu() { out/diffu/diffu "$@"; }

# The random 110M checkpoint in llama2.c's format: header, then the weights (a pseudo-random 1 Mi-float block,
# repeated: the values do not matter for timing), norms 1, no RoPE tables read.
[ -f "$OUT/llama110m.bin" ] || python3 - "$OUT/llama110m.bin" <<'PY'
import array, random, struct, sys
dim, hidden, layers, heads, kv, vocab, seq = 768, 2048, 12, 12, 12, 32000, 1024
rng = random.Random(0)
block = array.array('f', (rng.gauss(0, 0.02) for _ in range(1 << 20)))
def weights(f, n):
    while n > 0:
        k = min(n, len(block)); block[:k].tofile(f); n -= k
with open(sys.argv[1], 'wb') as f:
    f.write(struct.pack('7i', dim, hidden, layers, heads, kv, vocab, seq))
    weights(f, vocab * dim)
    array.array('f', [1.0] * (layers * dim)).tofile(f)
    weights(f, layers * 4 * dim * dim)
    array.array('f', [1.0] * (layers * dim)).tofile(f)
    weights(f, layers * 3 * dim * hidden)
    array.array('f', [1.0] * dim).tofile(f)
    array.array('f', [0.0] * (seq * dim // heads)).tofile(f)
PY
[ -f "$OUT/stories260K/config.json" ] || diffu convert llama2c "$SHARED/stories260K.bin" "$SHARED/tok512.bin" "$OUT/stories260K"
[ -f "$OUT/llama110m/config.json" ] || diffu convert llama2c "$OUT/llama110m.bin" "$SHARED/tokenizer.bin" "$OUT/llama110m"

lscpu | grep -E "Model name|^CPU\(s\)" | sed 's/  */ /g'
for model in stories260K llama110m; do
  case $model in
    stories260K) bin="$SHARED/stories260K.bin"; tok="$SHARED/tok512.bin" ;;
    llama110m) bin="$OUT/llama110m.bin"; tok="$SHARED/tokenizer.bin" ;;
  esac
  for run in 1 2 3; do
    runc=$("$RUNC" "$bin" -z "$tok" -t 0 -n 256 -i "Once upon a time" 2>&1 >/dev/null | grep -o "achieved tok/s: [0-9.]*" | grep -o "[0-9.]*$")
    ours=$(diffu generate --ar --model "$OUT/$model" --device cpu --prompt "Once upon a time" --max-new 250 --temperature 0 2>&1 >/dev/null \
      | grep -o "then [0-9.]* tokens/s" | grep -o "[0-9.]*")
    printf '%-12s run %d: run.c %8.1f tokens/s, diffu %8.1f tokens/s, ratio %.2f\n' "$model" "$run" "$runc" "$ours" "$(echo "$ours / $runc" | bc -l)"
  done
done
