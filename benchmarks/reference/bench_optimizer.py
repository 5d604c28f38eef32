#!/usr/bin/env python3
"""PyTorch reference benchmark for distill's optimizer: one torch.optim.AdamW step (foreach=True by
default) over --tensors fp32 tensors holding --params parameters in total, with fixed random
gradients.

Prints exactly one JSON line to stdout, e.g.
  {"impl":"pytorch","torch":"1.13.0","ms_per_step":...,"gb_per_s":...,"threads":2,"foreach":true}
where gb_per_s counts the same 28 bytes per parameter as bench_optimizer (p, g, m, v read once;
p, m, v written once), whatever torch actually moves.

Example:
  /usr/bin/python3 benchmarks/reference/bench_optimizer.py --params 50000000 --threads 2 --steps 5
"""

import argparse
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=int, default=50_000_000)
    ap.add_argument("--tensors", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    ap.add_argument("--no-foreach", action="store_true", help="the per-tensor loop instead of foreach")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # its fastest setting: x86 arithmetic on denormals is slow
    torch.manual_seed(0)
    per = args.params // args.tensors
    params = []
    for _ in range(args.tensors):
        p = torch.nn.Parameter(0.02 * torch.randn(per))
        p.grad = 1e-3 * torch.randn(per)
        params.append(p)
    foreach = not args.no_foreach
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, foreach=foreach)

    for _ in range(args.warmup):
        opt.step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        opt.step()
    elapsed = (time.perf_counter() - t0) / max(args.steps, 1)

    total = per * args.tensors
    print(json.dumps({
        "impl": "pytorch",
        "torch": torch.__version__,
        "ms_per_step": round(1000.0 * elapsed, 3),
        "gb_per_s": round(28.0 * total / elapsed / 1e9, 2),
        "threads": args.threads,
        "foreach": foreach,
    }))


if __name__ == "__main__":
    main()
