#!/usr/bin/env python3
"""Writes tests/fixtures/llama-tiny: a tiny random-weight LLaMA in Hugging Face's LlamaForCausalLM layout,
and PyTorch's outputs for it, which the C# model must reproduce.

Plain torch only (no transformers, no safetensors package): the model is written out below with HF
LlamaForCausalLM's semantics (spec shared/spec/diffullama.md section 1.4), and the .safetensors bytes are
written by hand, so that this script is an implementation independent of the C# one.

Files written:
  config.json          HF LLaMA config (vocab 256, hidden 64, intermediate 96, 2 layers, 4 heads, 2 KV heads
                       (GQA, head_dim 16), 64 positions, rms_norm_eps 1e-5, rope_theta 10000, untied lm_head).
  model.safetensors    HF weight names, nn.Linear layout [out, in], no biases; embed_tokens stored as BF16,
                       self_attn.q_proj.weight as F16, the rest F32. Every tensor is rounded to its storage
                       type before the reference is computed, so the stored values are exactly the ones used.
  expected.safetensors ids I32 [2,12]; logits_causal, logits_bidirectional F32 [2,12,256] (computed in
                       float64); greedy_prompt I32 [4] and greedy_tokens I32 [10] (greedy causal
                       continuation, the full forward re-run for every new token, no cache).
  gradients.safetensors
                       Training losses and their gradients (torch autograd, float64, on the stored rounded
                       weights), drawn from a second generator (GRAD_SEED) so that the files above do not
                       depend on it. Spec: shared/spec/diffullama.md sections 2-4.
                       x0 I32 [2,12]: clean tokens, never the mask id; mask_id I32 [1] = 5;
                       t F32 [2]: one noise level per sequence, 1e-3 + (1-1e-3)*u, u ~ U[0,1), rounded to
                         float32 and that rounded value used in the float64 computation;
                       noise U8 [2,12]: 1 = token replaced by the mask (Bernoulli(t_b) per token, then at
                         least 3 masked target positions (1..11) per row forced, and position 0 of row 0
                         forced masked: it must never contribute, having no logit to its left);
                       xt I32 [2,12] = where(noise, mask_id, x0);
                       diffusion_loss F32 [1] = sum_b sum_j (1/t_b) ce[b,j] m[b,j] / sum m, with
                         logits = Model(xt) with full bidirectional attention (DiffuLLaMA: no annealing),
                         ce[b,j] = CE(logits[b,j], x0[b,j+1]) and m = noise[:,1:], j = 0..10 (the shift);
                       ar_loss F32 [1]: mean over all 2*11 positions of CE(logits[:,:-1], x0[:,1:]),
                         logits = Model(x0, causal);
                       diffusion_grad.<name>, ar_grad.<name> F32: d(loss)/d(weight) for every tensor of
                         model.safetensors, same names and shapes.
                       The script checks a few gradient entries against central finite differences, and
                       checks the forward and the losses against a second implementation built from
                       torch.nn.functional pieces with Meta's interleaved (complex) RoPE on un-permuted
                       q/k weights.

Run with Debian's torch (python3-torch):  /usr/bin/python3 tests/reference/llama_reference.py
The output is deterministic (fixed seed, float64 arithmetic).
"""
import json
import math
import os

import torch

from reference_common import (causal, draw_greedy_prompt, ensure_masked_targets, finite_difference_check, loss_and_grads,
                              token_ce, write_safetensors)
import torch.nn.functional as F

SEED = 20240917
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "llama-tiny")

VOCAB, HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, POSITIONS = 256, 64, 96, 2, 4, 2, 64
EPS, THETA = 1e-5, 10000.0
HEAD_DIM = HIDDEN // HEADS
BATCH, LENGTH, PROMPT, NEW_TOKENS = 2, 12, 4, 10
# The C# side works in float32; a greedy step whose two best logits are closer than this could flip.
GREEDY_MIN_MARGIN = 1e-3
# Random tiny models often fall into repeating one token; a continuation that does is a weak test.
GREEDY_MIN_DISTINCT = 5

# gradients.safetensors: a second generator, so the draws above stay exactly as they were.
GRAD_SEED = SEED + 1
GRAD_BATCH, GRAD_LENGTH, MASK_ID = 2, 12, 5
T_EPS = 1e-3                # t = T_EPS + (1 - T_EPS) * u (spec 2.2 step 1)
MIN_MASKED_TARGETS = 3      # masked positions among 1..L-1 forced per row
FD_SEED, FD_ENTRIES = SEED + 2, 3
FD_PARAMS = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
             "model.layers.0.self_attn.k_proj.weight", "model.layers.1.self_attn.v_proj.weight",
             "model.layers.1.self_attn.o_proj.weight", "model.layers.0.mlp.gate_proj.weight",
             "model.layers.1.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight",
             "model.layers.0.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight",
             "model.norm.weight", "lm_head.weight"]

CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "intermediate_size": INTER,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "max_position_embeddings": POSITIONS,
    "rms_norm_eps": EPS,
    "rope_theta": THETA,
    "rope_scaling": None,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "pretraining_tp": 1,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}

def make_weights(gen):
    """HF LLaMA names and shapes (nn.Linear weights are [out, in]), each with the dtype it is stored in.
    Values are rounded to that dtype and returned as float64 for the reference computation."""
    C, I, KVD = HIDDEN, INTER, KV_HEADS * HEAD_DIM

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=gen, dtype=torch.float64) * std + mean

    spec = [("model.embed_tokens.weight", normal((VOCAB, C), 0.5), torch.bfloat16)]
    for i in range(LAYERS):
        p = "model.layers.%d." % i
        spec += [
            (p + "input_layernorm.weight", normal((C,), 0.1, 1.0), torch.float32),
            (p + "self_attn.q_proj.weight", normal((C, C), 0.15), torch.float16),
            (p + "self_attn.k_proj.weight", normal((KVD, C), 0.15), torch.float32),
            (p + "self_attn.v_proj.weight", normal((KVD, C), 0.15), torch.float32),
            (p + "self_attn.o_proj.weight", normal((C, C), 0.1), torch.float32),
            (p + "post_attention_layernorm.weight", normal((C,), 0.1, 1.0), torch.float32),
            (p + "mlp.gate_proj.weight", normal((I, C), 0.12), torch.float32),
            (p + "mlp.up_proj.weight", normal((I, C), 0.12), torch.float32),
            (p + "mlp.down_proj.weight", normal((C, I), 0.1), torch.float32),
        ]
    spec += [("model.norm.weight", normal((C,), 0.1, 1.0), torch.float32),
             ("lm_head.weight", normal((VOCAB, C), 0.2), torch.float32)]
    stored = [(name, value.to(dtype)) for name, value, dtype in spec]
    weights = {name: value.to(torch.float64) for name, value in stored}
    return stored, weights


def rms_norm(x, weight):
    """HF LlamaRMSNorm: x * rsqrt(mean(x^2) + eps), then times the weight (all float64 here)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + EPS) * weight


def rope_cos_sin(length):
    """cos, sin [L, D]: HF builds them over the whole head dim by concatenating the freqs with themselves."""
    inv_freq = THETA ** (-torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
    freqs = torch.arange(length, dtype=torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def forward(w, ids, allow):
    """LlamaForCausalLM logits [B, L, V] in float64. allow: [L, L] bool (query row may attend to key
    column) or None for full attention. Masked scores get the float64 minimum, as HF does."""
    B, L = ids.shape
    H, KV, D = HEADS, KV_HEADS, HEAD_DIM
    cos, sin = rope_cos_sin(L)
    h = w["model.embed_tokens.weight"][ids]
    for i in range(LAYERS):
        p = "model.layers.%d." % i
        x = rms_norm(h, w[p + "input_layernorm.weight"])
        q = (x @ w[p + "self_attn.q_proj.weight"].T).reshape(B, L, H, D).transpose(1, 2)
        k = (x @ w[p + "self_attn.k_proj.weight"].T).reshape(B, L, KV, D).transpose(1, 2)
        v = (x @ w[p + "self_attn.v_proj.weight"].T).reshape(B, L, KV, D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # GQA (HF repeat_kv): KV head j serves query heads j*rep .. j*rep+rep-1.
        rep = H // KV
        k = k[:, :, None].expand(B, KV, rep, L, D).reshape(B, H, L, D)
        v = v[:, :, None].expand(B, KV, rep, L, D).reshape(B, H, L, D)
        scores = q @ k.transpose(-1, -2) / math.sqrt(D)
        if allow is not None:
            scores = torch.where(allow, scores, torch.tensor(torch.finfo(torch.float64).min, dtype=torch.float64))
        attn = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, L, H * D)
        h = h + attn @ w[p + "self_attn.o_proj.weight"].T
        x = rms_norm(h, w[p + "post_attention_layernorm.weight"])
        gate = x @ w[p + "mlp.gate_proj.weight"].T
        up = x @ w[p + "mlp.up_proj.weight"].T
        h = h + (gate * torch.sigmoid(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    h = rms_norm(h, w["model.norm.weight"])
    return h @ w["lm_head.weight"].T


def forward_crosscheck(w, ids, allow):
    """A second, independently written forward: torch.nn.functional building blocks (F.embedding, F.linear,
    F.silu, F.softmax), repeat_interleave for GQA, and Meta's interleaved RoPE done with complex numbers on
    q/k weights whose rows are un-permuted per head from HF's rotate-half layout back to Meta's layout
    (view(heads, 2, D/2, in) -> swap axes 1, 2). Scores are unchanged by that permutation because q and k
    get the same one."""
    B, L = ids.shape
    H, KV, D = HEADS, KV_HEADS, HEAD_DIM

    def unpermute(weight, heads):
        return weight.view(heads, 2, D // 2, HIDDEN).transpose(1, 2).reshape(heads * D, HIDDEN)

    def rms(x, weight):
        return x / torch.sqrt(torch.mean(x * x, -1, keepdim=True) + EPS) * weight

    freqs = 1.0 / (THETA ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    angles = torch.outer(torch.arange(L, dtype=torch.float64), freqs)
    rot = torch.polar(torch.ones_like(angles), angles)                       # [L, D/2] complex

    def rope_interleaved(x):                                                 # x [B, L, h, D]
        xc = torch.view_as_complex(x.reshape(*x.shape[:-1], D // 2, 2).contiguous())
        return torch.view_as_real(xc * rot[None, :, None, :]).reshape(x.shape)

    bias = torch.zeros(L, L, dtype=torch.float64)
    if allow is not None:
        bias = bias.masked_fill(~allow, float("-inf"))
    h = F.embedding(ids, w["model.embed_tokens.weight"])
    for i in range(LAYERS):
        p = "model.layers.%d." % i
        x = rms(h, w[p + "input_layernorm.weight"])
        q = F.linear(x, unpermute(w[p + "self_attn.q_proj.weight"], H)).view(B, L, H, D)
        k = F.linear(x, unpermute(w[p + "self_attn.k_proj.weight"], KV)).view(B, L, KV, D)
        v = F.linear(x, w[p + "self_attn.v_proj.weight"]).view(B, L, KV, D)
        q, k = rope_interleaved(q), rope_interleaved(k)
        k = k.repeat_interleave(H // KV, dim=2)
        v = v.repeat_interleave(H // KV, dim=2)
        scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(D) + bias
        out = torch.einsum("bhij,bjhd->bihd", F.softmax(scores, dim=-1), v).reshape(B, L, H * D)
        h = h + F.linear(out, w[p + "self_attn.o_proj.weight"])
        x = rms(h, w[p + "post_attention_layernorm.weight"])
        mlp = F.silu(F.linear(x, w[p + "mlp.gate_proj.weight"])) * F.linear(x, w[p + "mlp.up_proj.weight"])
        h = h + F.linear(mlp, w[p + "mlp.down_proj.weight"])
    return F.linear(rms(h, w["model.norm.weight"]), w["lm_head.weight"])


def diffusion_loss(w, x0, xt, noise, t, allow, fwd=forward):
    """Spec 2.2: the logit at j predicts token j+1; only targets whose input is masked count; each weighted
    by 1/t_b; divided by the number of masked targets in the whole batch."""
    logits = fwd(w, xt, allow)
    m = noise[:, 1:].to(torch.float64)
    ce = token_ce(logits[:, :-1], x0[:, 1:])
    return (ce * m / t[:, None]).sum() / m.sum()


def ar_loss(w, x0, fwd=forward):
    """Plain next-token loss with the causal mask: mean CE over all B*(L-1) positions."""
    logits = fwd(w, x0, causal(x0.shape[1]))
    return token_ce(logits[:, :-1], x0[:, 1:]).mean()


def main():
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    stored, w = make_weights(gen)

    ids = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=gen)
    logits_causal = forward(w, ids, causal(LENGTH))
    logits_bidirectional = forward(w, ids, None)

    # Independent cross-check of the forward (functional pieces, interleaved complex RoPE).
    cross_causal = (forward_crosscheck(w, ids, causal(LENGTH)) - logits_causal).abs().max().item()
    cross_bidir = (forward_crosscheck(w, ids, None) - logits_bidirectional).abs().max().item()
    assert cross_causal < 1e-10 and cross_bidir < 1e-10, (cross_causal, cross_bidir)
    # Causality: the causal logits of a prefix do not depend on later tokens.
    prefix = forward(w, ids[:, :LENGTH // 2], causal(LENGTH // 2))
    prefix_err = (prefix - logits_causal[:, :LENGTH // 2]).abs().max().item()
    assert prefix_err < 1e-10, prefix_err

    prompt, tokens, margin, attempts = draw_greedy_prompt(forward, w, gen, VOCAB, PROMPT, NEW_TOKENS, GREEDY_MIN_MARGIN, GREEDY_MIN_DISTINCT)

    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "config.json"), "w", encoding="utf-8") as f:
        json.dump(CONFIG, f, indent=2)
        f.write("\n")
    source = {"source": "tests/reference/llama_reference.py", "seed": str(SEED)}
    write_safetensors(os.path.join(OUT, "model.safetensors"), stored, dict(source, format="pt"))
    expected = [
        ("ids", ids.to(torch.int32)),
        ("logits_causal", logits_causal.to(torch.float32)),
        ("logits_bidirectional", logits_bidirectional.to(torch.float32)),
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
    noise[0, 0] = True                                    # masked but never a target
    ensure_masked_targets(noise, MIN_MASKED_TARGETS, g2)
    xt = torch.where(noise, torch.full_like(x0, MASK_ID), x0)
    assert not (x0 == MASK_ID).any() and torch.equal(xt == MASK_ID, noise)

    losses = {
        "diffusion": lambda w: diffusion_loss(w, x0, xt, noise, t, None),
        "ar": lambda w: ar_loss(w, x0),
    }
    results = {kind: loss_and_grads(w, fn) for kind, fn in losses.items()}

    # Cross-check of the losses: the functional forward and F.cross_entropy.
    with torch.no_grad():
        m = noise[:, 1:].to(torch.float64)
        z = forward_crosscheck(w, xt, None)[:, :-1]
        ce = F.cross_entropy(z.reshape(-1, VOCAB), x0[:, 1:].reshape(-1), reduction="none").view(B, L - 1)
        cross_diff = abs(((ce * m).sum(1) / t).sum().item() / m.sum().item() - results["diffusion"][0].item())
        z = forward_crosscheck(w, x0, causal(L))[:, :-1]
        cross_ar = abs(F.cross_entropy(z.reshape(-1, VOCAB), x0[:, 1:].reshape(-1)).item() - results["ar"][0].item())
    assert cross_diff < 1e-10 and cross_ar < 1e-10, (cross_diff, cross_ar)

    gradients = [
        ("x0", x0.to(torch.int32)),
        ("mask_id", torch.tensor([MASK_ID], dtype=torch.int32)),
        ("t", t.to(torch.float32)),
        ("noise", noise.to(torch.uint8)),
        ("xt", xt.to(torch.int32)),
    ]
    for kind, (loss, grads) in results.items():
        gradients.append(("%s_loss" % kind, loss.reshape(1).to(torch.float32)))
        gradients += [("%s_grad.%s" % (kind, name), grads[name].to(torch.float32)) for name, _ in stored]
    write_safetensors(os.path.join(OUT, "gradients.safetensors"), gradients,
                      dict(source, seed=str(GRAD_SEED), attention="diffusion: bidirectional; ar: causal"))

    # Sanity check of the autograd gradients: central differences on a few entries, plus the embedding
    # rows of the mask id and of an input token (which get gradient), with random entries elsewhere.
    g3 = torch.Generator().manual_seed(FD_SEED)
    picks = []
    for name in FD_PARAMS:
        picks += [(name, int(k)) for k in torch.randint(0, w[name].numel(), (FD_ENTRIES,), generator=g3)]
    col = int(torch.randint(0, HIDDEN, (1,), generator=g3))
    picks += [("model.embed_tokens.weight", MASK_ID * HIDDEN + col),
              ("model.embed_tokens.weight", int(x0[1, 2]) * HIDDEN + col)]
    fd_report = {kind: finite_difference_check(w, losses[kind], results[kind][1], picks) for kind in losses}
    for kind, (rel, ab) in fd_report.items():
        assert ab < 1e-6 or rel < 1e-5, (kind, rel, ab)

    print("wrote %s" % os.path.normpath(OUT))
    for name in ("config.json", "model.safetensors", "expected.safetensors", "gradients.safetensors"):
        print("  %-22s %8d bytes" % (name, os.path.getsize(os.path.join(OUT, name))))
    print("  weights: %d tensors, %d parameters (embed_tokens BF16, q_proj F16, rest F32)"
          % (len(stored), sum(t.numel() for _, t in stored)))
    print("  ids[0] = %s" % ids[0].tolist())
    print("  logits_causal[0,0,:4] = %s" % [round(v, 6) for v in logits_causal[0, 0, :4].tolist()])
    print("  |causal - bidirectional| max = %.4f; logits std %.3f" %
          ((logits_causal - logits_bidirectional).abs().max(), logits_causal.std()))
    print("  cross-check (functional forward, interleaved complex RoPE on un-permuted q/k): max |diff| "
          "causal %.1e, bidirectional %.1e; prefix causality %.1e" % (cross_causal, cross_bidir, prefix_err))
    print("  greedy: prompt %s (attempt %d) -> %s, smallest top-2 logit gap %.4f" % (prompt, attempts, tokens, margin))
    print("  gradients: t = %s, masked per row %s (targets %s)"
          % ([round(v, 6) for v in t.tolist()], noise.sum(1).tolist(), noise[:, 1:].sum(1).tolist()))
    print("  loss cross-check with F.cross_entropy: diffusion %.1e, ar %.1e" % (cross_diff, cross_ar))
    for kind, (loss, grads) in results.items():
        rel, ab = fd_report[kind]
        print("  %-9s loss %.9f  |grad| max %.3e  finite differences on %d entries: max rel err %.2e, max abs err %.2e"
              % (kind, loss.item(), max(g.abs().max().item() for g in grads.values()), len(picks), rel, ab))


if __name__ == "__main__":
    main()
