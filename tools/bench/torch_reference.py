#!/usr/bin/env python3
"""PyTorch reference timings for `diffu bench`.

Reads a JSON list of cases on stdin (each {"id": ..., "kind": ..., shape fields}), runs each with plain
PyTorch on the given device under the same timing policy as the C# side (warm-up, then up to `repeat`
runs, stopping early once `budget` seconds are spent and three runs are done; best and median), and
writes {"torch": version, "device": name, "threads": n, "results": {id: {...}}} to stdout. A case that
fails (out of memory, unsupported) gets {"error": message} and the others go on.
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F


def parse_args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: leave PyTorch's default)")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--budget", type=float, default=2.0, help="seconds after which a case stops at three runs")
    return p.parse_args()


class Timer:
    def __init__(self, device, repeat, budget):
        self.cuda = device.type == "cuda"
        self.repeat = repeat
        self.budget = budget

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def measure(self, run, warmup=1, min_runs=3):
        for _ in range(warmup):
            run()
        self.sync()
        times = []
        start = time.perf_counter()
        while len(times) < self.repeat:
            t0 = time.perf_counter()
            run()
            self.sync()
            times.append(time.perf_counter() - t0)
            if len(times) >= min_runs and time.perf_counter() - start > self.budget:
                break
        times.sort()
        return {"best": times[0], "median": times[len(times) // 2], "runs": len(times)}


def dtype_of(case):
    return {"f32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}[case.get("precision", "f32")]


def rand(*shape, device, dtype=torch.float32):
    return torch.rand(*shape, device=device, dtype=torch.float32).sub_(0.5).to(dtype)


# ---- kernels ---------------------------------------------------------------------------------------

def matmul(case, dev):
    m, k, n = case["m"], case["k"], case["n"]
    dt = dtype_of(case)
    x = rand(m, k, device=dev, dtype=dt)
    w = rand(k, n, device=dev, dtype=dt) if case["layout"] == "kn" else rand(n, k, device=dev, dtype=dt)
    out = torch.empty(m, n, device=dev, dtype=dt)
    if case["layout"] == "kn":
        return lambda: torch.mm(x, w, out=out)
    wt = w.t()
    return lambda: torch.mm(x, wt, out=out)


def matmul_backward(case, dev):
    # dX = dOut · wᵀ and dW = xᵀ · dOut for w [K, N] (Conv1D layout), as two GEMMs.
    m, k, n = case["m"], case["k"], case["n"]
    x, w, g = rand(m, k, device=dev), rand(k, n, device=dev), rand(m, n, device=dev)
    dx, dw = torch.empty(m, k, device=dev), torch.empty(k, n, device=dev)

    def run():
        torch.mm(g, w.t(), out=dx)
        torch.mm(x.t(), g, out=dw)
    return run


def attention_inputs(case, dev, grad=False):
    b, h, l, d = case["batch"], case["heads"], case["length"], case["head_dim"]
    q, k, v = (rand(b, h, l, d, device=dev).requires_grad_(grad) for _ in range(3))
    return q, k, v


def attention_forward_fn(case):
    causal = case["causal"]
    if hasattr(F, "scaled_dot_product_attention"):
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def manual(q, k, v):
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if causal:
            l = q.shape[-2]
            mask = torch.ones(l, l, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        return scores.softmax(-1) @ v
    return manual


def attention(case, dev):
    q, k, v = attention_inputs(case, dev)
    fn = attention_forward_fn(case)

    def run():
        with torch.no_grad():
            fn(q, k, v)
    return run


def attention_backward(case, dev):
    q, k, v = attention_inputs(case, dev, grad=True)
    fn = attention_forward_fn(case)
    out = fn(q, k, v)
    g = torch.rand_like(out)

    def run():
        torch.autograd.grad(out, (q, k, v), g, retain_graph=True)
    return run


def layernorm(case, dev):
    rows, c = case["rows"], case["channels"]
    x, w, b = rand(rows, c, device=dev), rand(c, device=dev), rand(c, device=dev)
    return lambda: F.layer_norm(x, (c,), w, b, 1e-5)


def rmsnorm(case, dev):
    rows, c = case["rows"], case["channels"]
    x, w = rand(rows, c, device=dev), rand(c, device=dev)
    if hasattr(F, "rms_norm"):
        return lambda: F.rms_norm(x, (c,), w, 1e-5)
    return lambda: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w


def rope(case, dev):
    rows, h, d = case["rows"], case["heads"], case["head_dim"]
    x = rand(rows, h, d, device=dev)
    pos = torch.arange(rows, device=dev, dtype=torch.float32)
    inv = 10000.0 ** (-torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d)
    angles = torch.outer(pos, inv)
    cos = torch.cat([angles.cos(), angles.cos()], -1)[:, None, :]
    sin = torch.cat([angles.sin(), angles.sin()], -1)[:, None, :]
    half = d // 2

    def run():
        rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
        x.copy_(x * cos + rotated * sin)
    return run


def residual_add(case, dev):
    a, b = rand(case["rows"], case["channels"], device=dev), rand(case["rows"], case["channels"], device=dev)
    out = torch.empty_like(a)
    return lambda: torch.add(a, b, out=out)


def gelu(case, dev):
    x = rand(case["rows"], case["channels"], device=dev)
    return lambda: F.gelu(x, approximate="tanh")


def swiglu(case, dev):
    gate, up = rand(case["rows"], case["channels"], device=dev), rand(case["rows"], case["channels"], device=dev)
    return lambda: F.silu(gate) * up


def softmax(case, dev):
    x = rand(case["rows"], case["columns"], device=dev)
    return lambda: torch.softmax(x, -1)


def cross_entropy(case, dev):
    rows, vocab = case["rows"], case["vocab"]
    logits = rand(rows, vocab, device=dev).mul_(4).requires_grad_(True)
    targets = torch.randint(0, vocab, (rows,), device=dev)
    weights = torch.rand(rows, device=dev)

    def run():
        loss = (F.cross_entropy(logits, targets, reduction="none") * weights).sum()
        torch.autograd.grad(loss, logits)
    return run


def adamw(case, dev):
    n = case["elements"]
    p = torch.nn.Parameter(rand(n, device=dev))
    p.grad = rand(n, device=dev)
    kwargs = {"foreach": False} if "foreach" in torch.optim.AdamW.__init__.__code__.co_varnames else {}
    if dev.type == "cuda" and "fused" in torch.optim.AdamW.__init__.__code__.co_varnames:
        kwargs = {"fused": True}
    opt = torch.optim.AdamW([p], lr=1e-4, weight_decay=0.01, **kwargs)
    return opt.step


def sampling(case, dev):
    rows, vocab, top_p = case["rows"], case["vocab"], case["top_p"]
    logits = rand(rows, vocab, device=dev).mul_(8)

    def run():
        probs = torch.softmax(logits / case["temperature"], -1)
        if top_p < 1:
            sorted_p, order = probs.sort(-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < top_p
            sorted_p = sorted_p * keep
            choice = torch.multinomial(sorted_p, 1)
            order.gather(-1, choice)
        else:
            torch.multinomial(probs, 1)
    return run


# ---- GPT-2 end to end ------------------------------------------------------------------------------

class Block(torch.nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = torch.nn.LayerNorm(c), torch.nn.LayerNorm(c)
        self.c_attn, self.c_proj = torch.nn.Linear(c, 3 * c), torch.nn.Linear(c, c)
        self.c_fc, self.mlp_proj = torch.nn.Linear(c, 4 * c), torch.nn.Linear(4 * c, c)

    def forward(self, x, attend):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, -1)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = attend(q, k, v).transpose(1, 2).reshape(b, t, c)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt2(torch.nn.Module):
    def __init__(self, vocab, positions, c, layers, heads):
        super().__init__()
        self.wte, self.wpe = torch.nn.Embedding(vocab, c), torch.nn.Embedding(positions, c)
        self.blocks = torch.nn.ModuleList(Block(c, heads) for _ in range(layers))
        self.ln_f = torch.nn.LayerNorm(c)
        for p in self.parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.02)

    def forward(self, ids):
        attend = attention_forward_fn({"causal": False})
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x, attend)
        return self.ln_f(x) @ self.wte.weight.t()


def gpt2(case, dev):
    cfg = case["config"]
    return Gpt2(cfg["vocab"], cfg["positions"], cfg["channels"], cfg["layers"], cfg["heads"]).to(dev)


def train_step(case, dev):
    # The diffusion objective's work: bidirectional forward over all positions, per-row weighted CE, backward,
    # global-norm clip and AdamW. The masking itself is negligible next to the model.
    model = gpt2(case, dev)
    b, l, vocab = case["batch"], case["length"], case["config"]["vocab"]
    ids = torch.randint(0, vocab, (b, l), device=dev)
    weights = (torch.rand(b * l, device=dev) < 0.5).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run():
        opt.zero_grad(set_to_none=False)
        logits = model(ids)
        loss = (F.cross_entropy(logits.view(-1, vocab), ids.view(-1), reduction="none") * weights).sum() / weights.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return run


def denoise(case, dev):
    # T denoising passes of the whole sequence: forward, sample every position, rank by confidence.
    model = gpt2(case, dev)
    l, steps, vocab = case["length"], case["steps"], case["config"]["vocab"]
    ids = torch.randint(0, vocab, (1, l), device=dev)
    with torch.no_grad():
        model(ids)

    def run():
        with torch.no_grad():
            for _ in range(steps):
                probs = torch.softmax(model(ids)[0], -1)
                tokens = torch.multinomial(probs, 1)
                confidence = probs.gather(-1, tokens).squeeze(-1)
                confidence.argsort(descending=True)
    return run


def eval_scoring(case, dev):
    # The paper's likelihood scorer (spec §9) the way its reference code runs it, one row per forward pass:
    # for each example, each choice and t = T..1, mask the choice's tokens with probability t/T, run that
    # single row with full attention, and average the cross-entropy of the masked tokens (0 when none is);
    # the choice's score is the mean over t, the answer the lowest. The masked positions themselves are
    # scored (the reference tests xt == MASK, the same unless the text holds the mask id), as ours does.
    model = gpt2(case, dev)
    steps, mask = case["steps"], case["mask_token"]
    examples = {}
    for s in case["sequences"]:
        ids = torch.tensor([s["ids"]], device=dev)
        maskable = torch.zeros_like(ids, dtype=torch.bool)
        maskable[:, s["scored_from"]:] = True
        examples.setdefault(s["example"], []).append((ids, maskable))
    with torch.no_grad():
        model(next(iter(examples.values()))[0][0])

    def score(ids, maskable):
        total = torch.zeros((), device=dev)
        for t in range(steps, 0, -1):
            masked = (torch.rand(ids.shape, device=dev) < t / steps) & maskable
            logits = model(ids.masked_fill(masked, mask))
            scored = masked[0, 1:].float()
            ce = F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none") * scored
            total += ce.sum() / scored.sum().clamp(min=1)
        return total / steps

    def run():
        with torch.no_grad():
            for choices in examples.values():
                torch.stack([score(ids, maskable) for ids, maskable in choices]).argmin().item()
    return run


KINDS = {
    "matmul": matmul, "matmul_backward": matmul_backward, "attention": attention,
    "attention_backward": attention_backward, "layernorm": layernorm, "rmsnorm": rmsnorm, "rope": rope,
    "residual_add": residual_add, "gelu": gelu, "swiglu": swiglu,
    "softmax": softmax, "cross_entropy": cross_entropy, "adamw": adamw, "sampling": sampling,
    "train_step": train_step, "denoise": denoise, "eval_scoring": eval_scoring,
}


def main():
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("torch: CUDA is not available")
        name = torch.cuda.get_device_name(dev)
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    timer = Timer(dev, args.repeat, args.budget)
    results = {}
    for case in json.load(sys.stdin):
        kind = KINDS.get(case["kind"])
        if kind is None:
            results[case["id"]] = {"error": f"no reference for kind {case['kind']}"}
            continue
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = case.get("precision") == "tf32"
            torch.backends.cudnn.allow_tf32 = case.get("precision") == "tf32"
        try:
            run = kind(case, dev)
            results[case["id"]] = timer.measure(run, warmup=case.get("warmup", 1), min_runs=case.get("min_runs", 3))
        except (RuntimeError, ValueError, TypeError) as e:
            results[case["id"]] = {"error": str(e).splitlines()[0][:300]}
        finally:
            run = None
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        print(f"torch {case['id']}: {results[case['id']]}", file=sys.stderr, flush=True)
    json.dump({"torch": torch.__version__, "device": name, "threads": torch.get_num_threads(), "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
