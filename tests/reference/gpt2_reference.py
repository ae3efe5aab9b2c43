#!/usr/bin/env python3
"""Writes tests/fixtures/gpt2-tiny: a tiny random-weight GPT-2 in Hugging Face's layout, and PyTorch's
outputs for it, which the C# model must reproduce.

Plain torch only (no transformers, no safetensors package): the model is written out below with HF
GPT2LMHeadModel's semantics, and the .safetensors bytes are written by hand, so that this script is an
implementation independent of the C# one.

Files written:
  config.json          HF GPT-2 config (vocab 512, 64 wide, 2 layers, 4 heads, 64 positions)
  model.safetensors    HF weight names; wte/wpe stored as BF16, attn.c_attn.weight as F16, the rest F32.
                       Every tensor is rounded to its storage type before the reference is computed, so
                       the stored values are exactly the ones used.
  expected.safetensors ids I32 [3,16]; logits_causal, logits_bidirectional, logits_explicit F32 [3,16,512]
                       (computed in float64); allow_mask U8 [16,16] (1 = may attend; used for
                       logits_explicit); greedy_prompt I32 [5] and greedy_tokens I32 [12] (greedy causal
                       continuation, the full forward re-run for every new token, no cache).

Run with Debian's torch (python3-torch):  /usr/bin/python3 tests/reference/gpt2_reference.py
The output is deterministic (fixed seed, float64 arithmetic).
"""
import json
import math
import os
import struct

import torch

SEED = 20240611
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "gpt2-tiny")

VOCAB, EMBD, LAYERS, HEADS, POSITIONS, EPS = 512, 64, 2, 4, 64, 1e-5
BATCH, LENGTH, PROMPT, NEW_TOKENS = 3, 16, 5, 12
# The C# side works in float32; a greedy step whose two best logits are closer than this could flip.
GREEDY_MIN_MARGIN = 1e-3
# Random tiny models often fall into repeating one token; a continuation that does is a weak test.
GREEDY_MIN_DISTINCT = 6

CONFIG = {
    "model_type": "gpt2",
    "architectures": ["GPT2LMHeadModel"],
    "vocab_size": VOCAB,
    "n_embd": EMBD,
    "n_layer": LAYERS,
    "n_head": HEADS,
    "n_positions": POSITIONS,
    "n_ctx": POSITIONS,
    "n_inner": None,
    "layer_norm_epsilon": EPS,
    "activation_function": "gelu_new",
    "tie_word_embeddings": True,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "resid_pdrop": 0.0,
}

STORAGE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32", torch.uint8: "U8"}


def make_weights(gen):
    """HF GPT-2 names and shapes (Conv1D weights are [in, out]), each with the dtype it is stored in.
    Values are rounded to that dtype and returned as float64 for the reference computation."""
    C = EMBD

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=gen, dtype=torch.float64) * std + mean

    spec = [("transformer.wte.weight", normal((VOCAB, C), 0.05), torch.bfloat16),
            ("transformer.wpe.weight", normal((POSITIONS, C), 0.05), torch.bfloat16)]
    for i in range(LAYERS):
        p = "transformer.h.%d." % i
        spec += [
            (p + "ln_1.weight", normal((C,), 0.1, 1.0), torch.float32),
            (p + "ln_1.bias", normal((C,), 0.05), torch.float32),
            (p + "attn.c_attn.weight", normal((C, 3 * C), 0.1), torch.float16),
            (p + "attn.c_attn.bias", normal((3 * C,), 0.05), torch.float32),
            (p + "attn.c_proj.weight", normal((C, C), 0.1), torch.float32),
            (p + "attn.c_proj.bias", normal((C,), 0.03), torch.float32),
            (p + "ln_2.weight", normal((C,), 0.1, 1.0), torch.float32),
            (p + "ln_2.bias", normal((C,), 0.05), torch.float32),
            (p + "mlp.c_fc.weight", normal((C, 4 * C), 0.1), torch.float32),
            (p + "mlp.c_fc.bias", normal((4 * C,), 0.05), torch.float32),
            (p + "mlp.c_proj.weight", normal((4 * C, C), 0.1), torch.float32),
            (p + "mlp.c_proj.bias", normal((C,), 0.03), torch.float32),
        ]
    spec += [("transformer.ln_f.weight", normal((C,), 0.1, 1.0), torch.float32),
             ("transformer.ln_f.bias", normal((C,), 0.05), torch.float32)]
    stored = [(name, value.to(dtype)) for name, value, dtype in spec]
    weights = {name: value.to(torch.float64) for name, value in stored}
    return stored, weights


def layer_norm(x, weight, bias):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + EPS) * weight + bias


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def forward(w, ids, allow):
    """GPT2LMHeadModel logits [B, L, V] in float64. allow: [L, L] bool (query row may attend to key
    column) or None for full attention. Masked scores get the float64 minimum, as HF does."""
    B, L = ids.shape
    C, H = EMBD, HEADS
    D = C // H
    h = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][:L]
    for i in range(LAYERS):
        p = "transformer.h.%d." % i
        x = layer_norm(h, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        qkv = x @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = (t.reshape(B, L, H, D).transpose(1, 2) for t in qkv.split(C, dim=-1))
        scores = q @ k.transpose(-1, -2) / math.sqrt(D)
        if allow is not None:
            scores = torch.where(allow, scores, torch.tensor(torch.finfo(torch.float64).min, dtype=torch.float64))
        attn = torch.softmax(scores, dim=-1) @ v
        attn = attn.transpose(1, 2).reshape(B, L, C)
        h = h + attn @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        x = layer_norm(h, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        m = gelu_new(x @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
        h = h + m @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    h = layer_norm(h, w["transformer.ln_f.weight"], w["transformer.ln_f.bias"])
    return h @ w["transformer.wte.weight"].T


def causal(length):
    return torch.ones(length, length, dtype=torch.bool).tril()


def greedy(w, prompt):
    """Greedy causal continuation, the full forward re-run for each token. Returns the new tokens and
    the smallest gap between the best and second-best logit over all steps."""
    seq = list(prompt)
    margin = math.inf
    for _ in range(NEW_TOKENS):
        logits = forward(w, torch.tensor([seq]), causal(len(seq)))[0, -1]
        top = torch.topk(logits, 2).values
        margin = min(margin, (top[0] - top[1]).item())
        seq.append(int(torch.argmax(logits)))
    return seq[len(prompt):], margin


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, tensor). Data in list order; header padded with spaces to 8 bytes."""
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    blobs = []
    offset = 0
    for name, t in tensors:
        t = t.contiguous()
        if t.dtype in (torch.float16, torch.bfloat16):
            blob = t.view(torch.int16).numpy().astype("<i2").tobytes()
        else:
            blob = t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": STORAGE[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def main():
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    stored, w = make_weights(gen)

    ids = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=gen)
    allow = (torch.rand(LENGTH, LENGTH, generator=gen) < 0.5).triu(1) | causal(LENGTH)
    logits_causal = forward(w, ids, causal(LENGTH))
    logits_bidirectional = forward(w, ids, None)
    logits_explicit = forward(w, ids, allow)

    # Draw prompts until one's greedy continuation has no near-tie and does not just repeat itself.
    for attempt in range(1000):
        prompt = torch.randint(0, VOCAB, (PROMPT,), generator=gen).tolist()
        tokens, margin = greedy(w, prompt)
        if margin >= GREEDY_MIN_MARGIN and len(set(tokens)) >= GREEDY_MIN_DISTINCT:
            break
    else:
        raise SystemExit("no prompt with a clear, varied greedy continuation")

    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "config.json"), "w", encoding="utf-8") as f:
        json.dump(CONFIG, f, indent=2)
        f.write("\n")
    source = {"source": "tests/reference/gpt2_reference.py", "seed": str(SEED)}
    write_safetensors(os.path.join(OUT, "model.safetensors"), stored, dict(source, format="pt"))
    expected = [
        ("ids", ids.to(torch.int32)),
        ("logits_causal", logits_causal.to(torch.float32)),
        ("logits_bidirectional", logits_bidirectional.to(torch.float32)),
        ("allow_mask", allow.to(torch.uint8)),
        ("logits_explicit", logits_explicit.to(torch.float32)),
        ("greedy_prompt", torch.tensor(prompt, dtype=torch.int32)),
        ("greedy_tokens", torch.tensor(tokens, dtype=torch.int32)),
    ]
    write_safetensors(os.path.join(OUT, "expected.safetensors"), expected, source)

    print("wrote %s" % os.path.normpath(OUT))
    for name in ("config.json", "model.safetensors", "expected.safetensors"):
        print("  %-22s %8d bytes" % (name, os.path.getsize(os.path.join(OUT, name))))
    print("  weights: %d tensors, %d parameters (wte/wpe BF16, c_attn.weight F16, rest F32)"
          % (len(stored), sum(t.numel() for _, t in stored)))
    print("  ids[0] = %s" % ids[0].tolist())
    print("  logits_causal[0,0,:4] = %s" % [round(v, 6) for v in logits_causal[0, 0, :4].tolist()])
    print("  |causal - bidirectional| max = %.4f, |causal - explicit| max = %.4f"
          % ((logits_causal - logits_bidirectional).abs().max(), (logits_causal - logits_explicit).abs().max()))
    print("  greedy: prompt %s (attempt %d) -> %s, smallest top-2 logit gap %.4f" % (prompt, attempt + 1, tokens, margin))


if __name__ == "__main__":
    main()
