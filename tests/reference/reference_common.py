"""Pieces shared by the PyTorch reference scripts: a hand-written safetensors writer (independent of the
C# one, which is the point), the causal mask, per-token cross-entropy, autograd gradients with a
finite-difference check, and greedy decoding."""
import json
import math
import struct

import torch

# Central-difference step: 1e-6 is limited by float64 roundoff (about 1e-5 relative), 1e-4 is not.
FD_STEP = 1e-4

STORAGE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32", torch.uint8: "U8"}


def causal(length):
    return torch.ones(length, length, dtype=torch.bool).tril()


def greedy(forward, w, prompt, new_tokens):
    """Greedy causal continuation, the full forward re-run for each token. Returns the new tokens and
    the smallest gap between the best and second-best logit over all steps."""
    seq = list(prompt)
    margin = math.inf
    for _ in range(new_tokens):
        logits = forward(w, torch.tensor([seq]), causal(len(seq)))[0, -1]
        top = torch.topk(logits, 2).values
        margin = min(margin, (top[0] - top[1]).item())
        seq.append(int(torch.argmax(logits)))
    return seq[len(prompt):], margin


def token_ce(logits, targets):
    """Per-token cross entropy -log softmax(logits)[target], no reduction."""
    return -torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def loss_and_grads(weights, loss_fn):
    """loss_fn(w) in float64 and d(loss)/d(w[name]) for every name, by autograd. A weight used twice (a
    tied embedding and output head) is one leaf, so its gradient is the sum of both uses."""
    leaves = {name: value.detach().clone().requires_grad_(True) for name, value in weights.items()}
    loss = loss_fn(leaves)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return loss.detach(), dict(zip(leaves.keys(), grads))


def finite_difference_check(weights, loss_fn, grads, picks):
    """Central differences (step FD_STEP) for the (name, flat index) entries in picks. Returns the largest
    relative error |fd - autograd| / max(|fd|, |autograd|) and the largest absolute error."""
    worst_rel = worst_abs = 0.0
    with torch.no_grad():
        for name, k in picks:
            w = dict(weights)
            w[name] = weights[name].clone()
            flat = w[name].view(-1)
            base = flat[k].item()
            flat[k] = base + FD_STEP
            up = loss_fn(w).item()
            flat[k] = base - FD_STEP
            down = loss_fn(w).item()
            fd = (up - down) / (2 * FD_STEP)
            g = grads[name].reshape(-1)[k].item()
            worst_abs = max(worst_abs, abs(fd - g))
            worst_rel = max(worst_rel, abs(fd - g) / max(abs(fd), abs(g), 1e-300))
    return worst_rel, worst_abs


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


def draw_greedy_prompt(forward, w, gen, vocab, length, new_tokens, min_margin, min_distinct):
    """Draws prompts until one's greedy continuation has no near-tie (the C# side works in float32, so a
    step whose two best logits are closer than min_margin could flip) and does not just repeat itself.
    Returns (prompt, tokens, smallest margin, attempts)."""
    for attempt in range(1, 1001):
        prompt = torch.randint(0, vocab, (length,), generator=gen).tolist()
        tokens, margin = greedy(forward, w, prompt, new_tokens)
        if margin >= min_margin and len(set(tokens)) >= min_distinct:
            return prompt, tokens, margin, attempt
    raise SystemExit("no prompt with a clear, varied greedy continuation")


def ensure_masked_targets(noise, minimum, gen):
    """Masks more random positions >= 1 of each row (noise [B, L] bool) until it has `minimum` targets."""
    for b in range(noise.shape[0]):
        need = minimum - int(noise[b, 1:].sum())
        if need > 0:
            free = (~noise[b, 1:]).nonzero().flatten() + 1
            noise[b, free[torch.randperm(len(free), generator=gen)[:need]]] = True
