#!/usr/bin/env python3
"""PyTorch reference benchmark for distill's GPT student: one training step
(zero_grad + forward + CE loss + backward, no optimizer step) on random data.

Prints exactly one JSON line to stdout, e.g.
  {"impl":"pytorch","torch":"1.13.0","tokens_per_s":...,"ms_per_step":...,"threads":2}

Example:
  /usr/bin/python3 benchmarks/reference/bench_student.py --steps 10 --threads 2
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "reference"))

from gpt import GPT, GPTConfig, lm_loss  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--context", type=int, default=256, help="Tmax; sequences use the full context")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    ap.add_argument("--bf16", action="store_true", help="forward/loss under torch.autocast('cpu', bfloat16)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # its fastest setting: x86 arithmetic on denormals is slow
    torch.manual_seed(args.seed)

    cfg = GPTConfig(
        vocab_size=args.vocab,
        context_length=args.context,
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
        d_ff=args.d_ff,
    )
    model = GPT(cfg)  # fp32 parameters
    model.train()
    B, T = args.batch, args.context
    tokens = torch.randint(0, cfg.vocab_size, (B, T))
    targets = torch.randint(0, cfg.vocab_size, (B, T))

    def step():
        model.zero_grad(set_to_none=True)
        if args.bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits, _, _ = model(tokens)
                loss = lm_loss(logits, targets)
        else:
            logits, _, _ = model(tokens)
            loss = lm_loss(logits, targets)
        loss.backward()
        return loss

    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = time.perf_counter() - t0

    steps = max(args.steps, 1)
    result = {
        "impl": "pytorch",
        "torch": torch.__version__,
        "tokens_per_s": round(B * T * args.steps / elapsed, 1) if elapsed > 0 else 0.0,
        "ms_per_step": round(1000.0 * elapsed / steps, 3),
        "threads": args.threads,
    }
    if args.bf16:
        result["dtype"] = "bf16-autocast"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
