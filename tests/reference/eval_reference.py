#!/usr/bin/env python3
"""Writes tests/fixtures/eval/scorer_gpt2.safetensors and scorer_llama.safetensors: what the evaluation
scorers must compute on the GPT-2 and LLaMA fixture models, with the masks given (injected), so the C#
scorers are checked against an independent implementation of their definitions (spec/diffullama.md §9
and §10) rather than against themselves.

The models are the fixtures' own: gpt2_reference.py and llama_reference.py draw their weights first from
their seed, so calling their make_weights with that seed gives the stored weights again (checked below
byte for byte against the fixture's model.safetensors).

Per family, S sequences of different lengths, each [start, context..., choice...] with the choice tokens
maskable; no token equals the mask id. Tensors (sequences right-padded with 0 to the longest):
  ids I32 [S, L], lengths I32 [S], maskable U8 [S, L], mask_id I32 [1]
  Diffusion scorer (§9), T = 4 rates t/T for t = T..1; masks drawn here, position 0 and the context never:
    diffusion_masks U8 [S, T, L]   row k is rate (T-k)/T
    diffusion_ce F32 [S, T]        mean CE over the masked targets, unweighted (0 when none is masked):
                                   logits = Model(xt, full attention), xt = where(mask, mask_id, ids),
                                   CE(logits[p-1], ids[p]) for every masked p (the shift)
    diffusion_score F32 [S]        mean of diffusion_ce over the T rates
  ELBO scorer, K = 3 noise levels:
    elbo_t F32 [S, K], elbo_masks U8 [S, K, L]
    elbo_loss F32 [S, K]           sum over the masked p of CE(logits[p-1], ids[p]) / t
    elbo_score F32 [S]             mean of elbo_loss over K
  AR scorer:
    ar_score F32 [S]               minus the mean over the choice tokens p of log softmax(Model(ids, causal)[p-1])[ids[p]]

Run with Debian's torch (python3-torch):  /usr/bin/python3 tests/reference/eval_reference.py
The output is deterministic (fixed seed, float64 arithmetic).
"""
import os
import tempfile

import torch

import gpt2_reference
import llama_reference
from reference_common import causal, token_ce, write_safetensors

SEED = 20261206
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "eval")
LENGTHS = [(4, 5), (6, 9), (3, 2), (7, 9)]   # (context tokens incl. the start token, choice tokens) per sequence
STEPS, SAMPLES = 4, 3


def fixture_weights(module, fixture):
    """The fixture model's weights, regenerated from its script and checked against the stored file."""
    torch.manual_seed(module.SEED)
    gen = torch.Generator().manual_seed(module.SEED)
    stored, w = module.make_weights(gen)
    with tempfile.TemporaryDirectory() as tmp:
        again = os.path.join(tmp, "model.safetensors")
        write_safetensors(again, stored, {"source": "tests/reference/%s_reference.py" % fixture.split("-")[0], "seed": str(module.SEED), "format": "pt"})
        with open(again, "rb") as a, open(os.path.join(HERE, "..", "fixtures", fixture, "model.safetensors"), "rb") as b:
            assert a.read() == b.read(), "regenerated weights differ from the fixture's"
    return w


def family(module, fixture, mask_id, gen):
    w = fixture_weights(module, fixture)
    longest = max(c + n for c, n in LENGTHS)
    S = len(LENGTHS)
    ids = torch.zeros(S, longest, dtype=torch.long)
    maskable = torch.zeros(S, longest, dtype=torch.bool)
    diffusion_masks = torch.zeros(S, STEPS, longest, dtype=torch.bool)
    diffusion_ce = torch.zeros(S, STEPS, dtype=torch.float64)
    elbo_t = torch.zeros(S, SAMPLES, dtype=torch.float64)
    elbo_masks = torch.zeros(S, SAMPLES, longest, dtype=torch.bool)
    elbo_loss = torch.zeros(S, SAMPLES, dtype=torch.float64)
    ar_score = torch.zeros(S, dtype=torch.float64)
    for s, (context, choice) in enumerate(LENGTHS):
        n = context + choice
        seq = torch.randint(0, module.VOCAB - 1, (n,), generator=gen)
        seq = seq + (seq >= mask_id).long()                  # never the mask id
        ids[s, :n] = seq
        maskable[s, context:n] = True
        for k in range(STEPS):
            rate = (STEPS - k) / STEPS
            masked = maskable[s, :n] & (torch.rand(n, generator=gen, dtype=torch.float64) < rate)
            diffusion_masks[s, k, :n] = masked
            xt = torch.where(masked, torch.full_like(seq, mask_id), seq)
            logits = module.forward(w, xt.unsqueeze(0), None)[0]
            ce = token_ce(logits[:-1], seq[1:])
            m = masked[1:].to(torch.float64)
            diffusion_ce[s, k] = (ce * m).sum() / m.sum() if m.sum() > 0 else 0.0
        for k in range(SAMPLES):
            t = float(torch.rand(1, generator=gen, dtype=torch.float64).item()) * 0.999 + 0.001
            t = float(torch.tensor(t, dtype=torch.float32).item())   # the C# side holds t as float32
            masked = maskable[s, :n] & (torch.rand(n, generator=gen, dtype=torch.float64) < t)
            elbo_t[s, k] = t
            elbo_masks[s, k, :n] = masked
            xt = torch.where(masked, torch.full_like(seq, mask_id), seq)
            logits = module.forward(w, xt.unsqueeze(0), None)[0]
            ce = token_ce(logits[:-1], seq[1:])
            elbo_loss[s, k] = (ce * masked[1:].to(torch.float64)).sum() / t
        logits = module.forward(w, seq.unsqueeze(0), causal(n))[0]
        ce = token_ce(logits[:-1], seq[1:])
        ar_score[s] = (ce * maskable[s, 1:n].to(torch.float64)).sum() / choice
    assert diffusion_masks[:, 0].eq(maskable).all(), "rate 1 masks every maskable token"
    return [
        ("ids", ids.to(torch.int32)),
        ("lengths", torch.tensor([c + n for c, n in LENGTHS], dtype=torch.int32)),
        ("maskable", maskable.to(torch.uint8)),
        ("mask_id", torch.tensor([mask_id], dtype=torch.int32)),
        ("diffusion_masks", diffusion_masks.to(torch.uint8)),
        ("diffusion_ce", diffusion_ce.to(torch.float32)),
        ("diffusion_score", diffusion_ce.mean(dim=1).to(torch.float32)),
        ("elbo_t", elbo_t.to(torch.float32)),
        ("elbo_masks", elbo_masks.to(torch.uint8)),
        ("elbo_loss", elbo_loss.to(torch.float32)),
        ("elbo_score", elbo_loss.mean(dim=1).to(torch.float32)),
        ("ar_score", ar_score.to(torch.float32)),
    ]


def main():
    os.makedirs(OUT, exist_ok=True)
    gen = torch.Generator().manual_seed(SEED)
    for module, fixture, mask_id, name in [(gpt2_reference, "gpt2-tiny", 3, "scorer_gpt2"), (llama_reference, "llama-tiny", 5, "scorer_llama")]:
        tensors = family(module, fixture, mask_id, gen)
        write_safetensors(os.path.join(OUT, name + ".safetensors"), tensors,
                          {"source": "tests/reference/eval_reference.py", "seed": str(SEED), "fixture": fixture})
        print("wrote", name, {n: list(t.shape) for n, t in tensors})


if __name__ == "__main__":
    main()
