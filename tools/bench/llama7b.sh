#!/usr/bin/env bash
# A LLaMA-2-7B-shaped model in BF16 on this machine's CPU: writes a random checkpoint with HF's names, config and
# sharding (three safetensors shards and model.safetensors.index.json, 13.5 GB), then runs `diffu generate --ar` and a
# diffusion `diffu generate` on it under /usr/bin/time -v (peak resident memory), and measures the memory bandwidth
# with `diffu bench` for the decoding bound (weight bytes per token / bandwidth). Needs about 14 GB of disk and 16 GiB
# of memory; takes about 10 minutes on 2 cores. Not part of the test suite.
# Usage: tools/bench/llama7b.sh [OUT]   (default out/llama7b; the checkpoint is kept there for reruns)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-out/llama7b}"
MODEL="$OUT/llama2-7b-bf16-random"
SHARED="${SHARED:-../shared/data}/llama2c"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
mkdir -p "$OUT"
dotnet build tools/Diffu/Diffu.csproj -c Release -o out/diffu -v quiet -nologo
diffu() { out/diffu/diffu "$@"; }

if [ ! -f "$MODEL/model.safetensors.index.json" ]; then
  mkdir -p "$MODEL"
  cp "$SHARED/tokenizer.model" "$MODEL/tokenizer.model"
  python3 - "$MODEL" <<'PY'
import array, json, os, random, struct, sys
folder = sys.argv[1]
dim, hidden, layers, heads, vocab = 4096, 11008, 32, 32, 32000
config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dim, "intermediate_size": hidden,
          "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads, "vocab_size": vocab,
          "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": False,
          "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2}
with open(os.path.join(folder, "config.json"), "w") as f: json.dump(config, f, indent=2)

tensors = [("model.embed_tokens.weight", [vocab, dim])]
for i in range(layers):
    p = f"model.layers.{i}."
    tensors += [(p + "input_layernorm.weight", [dim]), (p + "self_attn.q_proj.weight", [dim, dim]), (p + "self_attn.k_proj.weight", [dim, dim]),
                (p + "self_attn.v_proj.weight", [dim, dim]), (p + "self_attn.o_proj.weight", [dim, dim]),
                (p + "post_attention_layernorm.weight", [dim]), (p + "mlp.gate_proj.weight", [hidden, dim]),
                (p + "mlp.up_proj.weight", [hidden, dim]), (p + "mlp.down_proj.weight", [dim, hidden])]
tensors += [("model.norm.weight", [dim]), ("lm_head.weight", [vocab, dim])]

# A block of N(0, 0.02) values rounded to BF16 (nearest, ties to even), repeated from a rotating start: the values do
# not matter for memory or speed, and writing stays disk-bound.
rng = random.Random(0)
bits = array.array('H')
for _ in range(1 << 20):
    u = struct.unpack('<I', struct.pack('<f', rng.gauss(0.0, 0.02)))[0]
    bits.append(((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF)
block = bits.tobytes() * 2
ones = array.array('H', [0x3F80] * dim).tobytes()

def elements(shape):
    n = 1
    for d in shape: n *= d
    return n

shards, current, size, limit = [], [], 0, 5_000_000_000
for name, shape in tensors:
    nbytes = 2 * elements(shape)
    if current and size + nbytes > limit:
        shards.append(current); current, size = [], 0
    current.append((name, shape)); size += nbytes
shards.append(current)

weight_map, total = {}, 0
for s, members in enumerate(shards):
    file = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in members:
        n = 2 * elements(shape)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
        weight_map[name] = file
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(os.path.join(folder, file), "wb") as f:
        f.write(struct.pack("<Q", len(text))); f.write(text)
        for k, (name, shape) in enumerate(members):
            n = 2 * elements(shape)
            if name.endswith("norm.weight"):
                f.write(ones); continue
            start = (k * 7919 * 2) % (len(block) // 2) & ~1
            while n > 0:
                piece = block[start:start + min(n, len(block) // 2)]
                f.write(piece); n -= len(piece); start = 0
    total += offset
    print(f"wrote {file}: {offset / 1e9:.2f} GB", file=sys.stderr)
with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
PY
fi

measure() {  # name, then the diffu arguments
  local name="$1"; shift
  /usr/bin/time -v out/diffu/diffu "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  echo "== $name: diffu $*"
  cat "$OUT/$name.out"; echo
  grep -E "loaded|tokens in|tokens/s" "$OUT/$name.err" || true
  grep -E "Maximum resident set size|Elapsed \(wall clock\)" "$OUT/$name.err"
}

measure ar generate --model "$MODEL" --ar --prompt "Once upon a time" --max-new 16 --temperature 0 --device cpu
measure diffusion generate --model "$MODEL" --prompt "Once upon a time" --length 16 --steps 4 --temperature 0 --device cpu
diffu bench --quick --suite decode --reference none --device cpu > "$OUT/bandwidth.txt" 2>&1
grep -o "[0-9.]* GB/s (" "$OUT/bandwidth.txt" | head -1 | sed 's/ (//; s/^/== measured bandwidth: /'
echo "weights read per decoded token: $(python3 -c "import json;print(round(json.load(open('$MODEL/model.safetensors.index.json'))['metadata']['total_size']/1e9,2))") GB"
