#!/usr/bin/env python3
"""PyTorch reference benchmark for distill's KV-cache generation: greedy decoding of a batch of
prompts with the GPT of tests/reference/gpt.py, written the way one writes it in PyTorch without a
serving framework: a prefill over the prompts that fills per-layer key/value caches, then one
forward per new token that appends to the caches and attends over them.

Special tokens' embedding rows (ids 256..262 of the byte vocabulary) are zeroed as in
bench_generate.cpp, so the workload is the same: every sequence generates exactly --new tokens.

Validates before timing that the cached decoding picks the same tokens as full forwards.
Prints exactly one JSON line to stdout, e.g.
  {"impl":"pytorch","torch":"1.13.0","tokens_per_s":...,"ms_per_batch":...,"batch":16,"threads":2}

Example:
  /usr/bin/python3 benchmarks/reference/bench_generate.py --batch 16 --threads 2
"""

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "reference"))

from gpt import GPT, GPTConfig  # noqa: E402


@torch.inference_mode()
def generate(model, prompt, n_new):
    """Greedy decoding with a KV cache. prompt (B, P) int64 -> new tokens (B, n_new)."""
    cfg = model.cfg
    B, P = prompt.shape
    C, H = cfg.d_model, cfg.n_heads
    hs = C // H
    T = P + n_new
    keys = [torch.empty(B, H, T, hs) for _ in model.h]
    values = [torch.empty(B, H, T, hs) for _ in model.h]
    scale = 1.0 / math.sqrt(hs)

    # prefill: the prompts at once, causal attention, caches filled
    x = model.wte(prompt) + model.wpe(torch.arange(P))  # (B, P, C)
    mask = torch.triu(torch.ones(P, P, dtype=torch.bool), diagonal=1)
    for l, blk in enumerate(model.h):
        q, k, v = blk.attn.c_attn(blk.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, P, H, hs).transpose(1, 2) for t in (q, k, v))  # (B, H, P, hs)
        keys[l][:, :, :P] = k
        values[l][:, :, :P] = v
        att = F.softmax((q @ k.transpose(-2, -1) * scale).masked_fill(mask, float("-inf")), dim=-1)
        x = x + blk.attn.c_proj((att @ v).transpose(1, 2).reshape(B, P, C))
        x = x + blk.mlp(blk.ln_2(x))
    logits = model.ln_f(x[:, -1]) @ model.wte.weight.t()  # (B, V)
    tok = logits.argmax(-1)
    out = [tok]
    # decode: one token per step, attending over the cache
    for step in range(1, n_new):
        pos = P + step - 1
        x = model.wte(tok) + model.wpe.weight[pos]  # (B, C)
        for l, blk in enumerate(model.h):
            q, k, v = blk.attn.c_attn(blk.ln_1(x)).split(C, dim=1)
            q, k, v = (t.view(B, H, 1, hs) for t in (q, k, v))
            keys[l][:, :, pos : pos + 1] = k
            values[l][:, :, pos : pos + 1] = v
            att = F.softmax(q @ keys[l][:, :, : pos + 1].transpose(-2, -1) * scale, dim=-1)  # (B, H, 1, pos+1)
            y = (att @ values[l][:, :, : pos + 1]).reshape(B, C)
            x = x + blk.attn.c_proj(y)
            x = x + blk.mlp(blk.ln_2(x))
        tok = (model.ln_f(x) @ model.wte.weight.t()).argmax(-1)
        out.append(tok)
    return torch.stack(out, dim=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=263)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="timed runs; the best is reported")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # its fastest setting: x86 arithmetic on denormals is slow
    torch.manual_seed(args.seed)
    cfg = GPTConfig(args.vocab, args.context, args.d_model, args.layers, args.heads, args.d_ff)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
        model.wte.weight[256 : min(263, args.vocab)] = 0.0
    prompt = torch.randint(0, min(256, args.vocab), (args.batch, args.prompt))

    # validate: the cached decoding equals full forwards' argmax for the first 8 tokens
    new = generate(model, prompt[:1], 8)
    with torch.inference_mode():
        logits, _, _ = model(torch.cat([prompt[:1], new], dim=1))
    full = logits[0, args.prompt - 1 : args.prompt - 1 + 8].argmax(-1)
    if not torch.equal(full, new[0]):
        print(json.dumps({"error": "KV-cache decoding disagrees with the full forward"}))
        sys.exit(1)

    generate(model, prompt, args.new)  # warm-up
    best = float("inf")
    for _ in range(args.reps):
        t0 = time.perf_counter()
        out = generate(model, prompt, args.new)
        best = min(best, time.perf_counter() - t0)
    assert out.shape == (args.batch, args.new)
    print(
        json.dumps(
            {
                "impl": "pytorch",
                "torch": torch.__version__,
                "tokens_per_s": round(args.batch * args.new / best, 1),
                "ms_per_batch": round(1000.0 * best, 2),
                "batch": args.batch,
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
