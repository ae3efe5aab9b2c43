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
  gradients.safetensors
                       Training losses and their gradients (torch autograd, float64, on the stored
                       rounded weights), drawn from a second generator (GRAD_SEED) so that the files above
                       do not depend on it. Spec: shared/spec/diffullama.md sections 2-4.
                       x0 I32 [2,16]: clean tokens, never the mask id; mask_id I32 [1] = 3;
                       t F32 [2]: one noise level per sequence, 1e-3 + (1-1e-3)*u, u ~ U[0,1), rounded to
                         float32 and that rounded value used in the float64 computation;
                       noise U8 [2,16]: 1 = token replaced by the mask (Bernoulli(t_b) per token, then at
                         least 3 masked target positions (1..15) per row forced, and position 0 of row 0
                         forced masked: it must never contribute, having no logit to its left);
                       xt I32 [2,16] = where(noise, mask_id, x0);
                       allow_mask U8 [16,16]: annealing mask for ratio r = 0.5, causal (j <= i) OR
                         Bernoulli(r) per entry, 1 = may attend, shared by the batch and the heads;
                       diffusion_loss F32 [1] = sum_b sum_j (1/t_b) ce[b,j] m[b,j] / sum m, with
                         logits = Model(xt, allow_mask), ce[b,j] = CE(logits[b,j], x0[b,j+1]) and
                         m = noise[:,1:] (= (xt == mask_id)[:,1:]), j = 0..14 (the shift: the logit at j
                         predicts token j+1, the last logit is dropped, position 0 is never a target);
                       ar_loss F32 [1]: mean over all 2*15 positions of CE(logits[:,:-1], x0[:,1:]),
                         logits = Model(x0, causal);
                       bidirectional_loss F32 [1]: diffusion_loss with full attention (r = 1), same xt, t;
                       diffusion_grad.<name>, ar_grad.<name>, bidirectional_grad.<name> F32: d(loss)/d(weight)
                         for every tensor of model.safetensors, same names and shapes (the tied wte gets
                         the sum of its embedding and output-head gradients).
                       The script checks a few gradient entries against central finite differences.

Run with Debian's torch (python3-torch):  /usr/bin/python3 tests/reference/gpt2_reference.py
The output is deterministic (fixed seed, float64 arithmetic).
"""
import json
import math
import os

import torch

from reference_common import (causal, draw_greedy_prompt, ensure_masked_targets, finite_difference_check, loss_and_grads,
                              token_ce, write_safetensors)

SEED = 20240611
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "gpt2-tiny")

VOCAB, EMBD, LAYERS, HEADS, POSITIONS, EPS = 512, 64, 2, 4, 64, 1e-5
BATCH, LENGTH, PROMPT, NEW_TOKENS = 3, 16, 5, 12
# The C# side works in float32; a greedy step whose two best logits are closer than this could flip.
GREEDY_MIN_MARGIN = 1e-3
# Random tiny models often fall into repeating one token; a continuation that does is a weak test.
GREEDY_MIN_DISTINCT = 6

# gradients.safetensors: a second generator, so the draws above stay exactly as they were.
GRAD_SEED = SEED + 1
GRAD_BATCH, GRAD_LENGTH, MASK_ID = 2, 16, 3
T_EPS = 1e-3                # t = T_EPS + (1 - T_EPS) * u (spec 2.2 step 1)
ANNEAL_RATIO = 0.5          # r of the annealing mask (spec 4)
MIN_MASKED_TARGETS = 3      # masked positions among 1..L-1 forced per row
FD_SEED, FD_ENTRIES = SEED + 2, 4
FD_PARAMS = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight",
             "transformer.h.1.mlp.c_fc.bias", "transformer.h.0.ln_1.weight", "transformer.ln_f.bias"]

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


def diffusion_loss(w, x0, xt, noise, t, allow):
    """Spec 2.2: the logit at j predicts token j+1; only targets whose input is masked count; each weighted
    by 1/t_b; divided by the number of masked targets in the whole batch."""
    logits = forward(w, xt, allow)
    m = noise[:, 1:].to(torch.float64)
    ce = token_ce(logits[:, :-1], x0[:, 1:])
    return (ce * m / t[:, None]).sum() / m.sum()


def ar_loss(w, x0):
    """Plain next-token loss with the causal mask: mean CE over all B*(L-1) positions."""
    logits = forward(w, x0, causal(x0.shape[1]))
    return token_ce(logits[:, :-1], x0[:, 1:]).mean()


def main():
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    stored, w = make_weights(gen)

    ids = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=gen)
    allow = (torch.rand(LENGTH, LENGTH, generator=gen) < 0.5).triu(1) | causal(LENGTH)
    logits_causal = forward(w, ids, causal(LENGTH))
    logits_bidirectional = forward(w, ids, None)
    logits_explicit = forward(w, ids, allow)

    prompt, tokens, margin, attempts = draw_greedy_prompt(forward, w, gen, VOCAB, PROMPT, NEW_TOKENS, GREEDY_MIN_MARGIN, GREEDY_MIN_DISTINCT)

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

    # gradients.safetensors. Every draw comes from its own generator, after all the draws above.
    g2 = torch.Generator().manual_seed(GRAD_SEED)
    B, L = GRAD_BATCH, GRAD_LENGTH
    x0 = torch.randint(0, VOCAB - 1, (B, L), generator=g2)
    x0 = x0 + (x0 >= MASK_ID).long()                      # uniform over the vocab without the mask id
    u = torch.rand(B, generator=g2, dtype=torch.float64)
    t = (T_EPS + (1 - T_EPS) * u).to(torch.float32).to(torch.float64)
    noise = torch.rand(B, L, generator=g2, dtype=torch.float64) < t[:, None]
    anneal = (torch.rand(L, L, generator=g2, dtype=torch.float64) < ANNEAL_RATIO) | causal(L)
    noise[0, 0] = True                                    # masked but never a target
    ensure_masked_targets(noise, MIN_MASKED_TARGETS, g2)
    xt = torch.where(noise, torch.full_like(x0, MASK_ID), x0)
    assert not (x0 == MASK_ID).any() and torch.equal(xt == MASK_ID, noise)

    losses = {
        "diffusion": lambda w: diffusion_loss(w, x0, xt, noise, t, anneal),
        "ar": lambda w: ar_loss(w, x0),
        "bidirectional": lambda w: diffusion_loss(w, x0, xt, noise, t, None),
    }
    results = {kind: loss_and_grads(w, fn) for kind, fn in losses.items()}

    gradients = [
        ("x0", x0.to(torch.int32)),
        ("mask_id", torch.tensor([MASK_ID], dtype=torch.int32)),
        ("t", t.to(torch.float32)),
        ("noise", noise.to(torch.uint8)),
        ("xt", xt.to(torch.int32)),
        ("allow_mask", anneal.to(torch.uint8)),
    ]
    for kind, (loss, grads) in results.items():
        gradients.append(("%s_loss" % kind, loss.reshape(1).to(torch.float32)))
        gradients += [("%s_grad.%s" % (kind, name), grads[name].to(torch.float32)) for name, _ in stored]
    write_safetensors(os.path.join(OUT, "gradients.safetensors"), gradients,
                      dict(source, seed=str(GRAD_SEED), anneal_ratio=str(ANNEAL_RATIO)))

    # Sanity check of the autograd gradients: central differences on a few entries. For the tied wte, the
    # rows of the mask id and of an input token (embedding + head gradient) plus random rows (head only).
    g3 = torch.Generator().manual_seed(FD_SEED)
    picks = []
    for name in FD_PARAMS:
        n = w[name].numel() if name != "transformer.wpe.weight" else L * EMBD   # rows >= L get no gradient
        picks += [(name, int(k)) for k in torch.randint(0, n, (FD_ENTRIES,), generator=g3)]
    col = int(torch.randint(0, EMBD, (1,), generator=g3))
    picks += [("transformer.wte.weight", MASK_ID * EMBD + col), ("transformer.wte.weight", int(x0[1, 2]) * EMBD + col)]
    fd_report = {kind: finite_difference_check(w, losses[kind], results[kind][1], picks) for kind in losses}

    print("wrote %s" % os.path.normpath(OUT))
    for name in ("config.json", "model.safetensors", "expected.safetensors", "gradients.safetensors"):
        print("  %-22s %8d bytes" % (name, os.path.getsize(os.path.join(OUT, name))))
    print("  weights: %d tensors, %d parameters (wte/wpe BF16, c_attn.weight F16, rest F32)"
          % (len(stored), sum(t.numel() for _, t in stored)))
    print("  ids[0] = %s" % ids[0].tolist())
    print("  logits_causal[0,0,:4] = %s" % [round(v, 6) for v in logits_causal[0, 0, :4].tolist()])
    print("  |causal - bidirectional| max = %.4f, |causal - explicit| max = %.4f"
          % ((logits_causal - logits_bidirectional).abs().max(), (logits_causal - logits_explicit).abs().max()))
    print("  greedy: prompt %s (attempt %d) -> %s, smallest top-2 logit gap %.4f" % (prompt, attempts, tokens, margin))
    print("  gradients: t = %s, masked per row %s (targets %s), allow_mask opens %d of %d future entries"
          % ([round(v, 6) for v in t.tolist()], noise.sum(1).tolist(), noise[:, 1:].sum(1).tolist(),
             int(anneal.triu(1).sum()), L * (L - 1) // 2))
    for kind, (loss, grads) in results.items():
        rel, ab = fd_report[kind]
        print("  %-13s loss %.9f  |grad| max %.3e  finite differences on %d entries: max rel err %.2e, max abs err %.2e"
              % (kind, loss.item(), max(g.abs().max().item() for g in grads.values()), len(picks), rel, ab))


if __name__ == "__main__":
    main()
