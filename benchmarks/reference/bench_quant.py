#!/usr/bin/env python3
"""PyTorch reference for bench_quant: batch-1 generation's matrix-vector products in fp32 —
torch.nn.functional.linear(x (1, k), W (n, k)) over --matrices distinct weight matrices, what a
token's pass over a model's layers does without quantization (PyTorch has no ggml block types).

Prints exactly one JSON line to stdout, e.g.
  {"impl":"pytorch","torch":"1.13.0","ms_per_pass":...,"gb_per_s":...,"threads":2}
where gb_per_s counts the fp32 weight bytes read per pass.

Example:
  /usr/bin/python3 benchmarks/reference/bench_quant.py --k 512 --n 2048 --matrices 16 --threads 2
"""

import argparse
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=512)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--matrices", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20, help="timed passes")
    ap.add_argument("--warmup", type=int, default=3, help="untimed passes before timing")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # its fastest setting: x86 arithmetic on denormals is slow
    torch.manual_seed(0)
    x = torch.randn(1, args.k)
    ws = [0.02 * torch.randn(args.n, args.k) for _ in range(args.matrices)]

    def one_pass():
        with torch.no_grad():
            return [torch.nn.functional.linear(x, w) for w in ws]

    for _ in range(args.warmup):
        one_pass()
    t0 = time.perf_counter()
    for _ in range(args.reps):
        one_pass()
    elapsed = (time.perf_counter() - t0) / max(args.reps, 1)

    print(json.dumps({
        "impl": "pytorch",
        "torch": torch.__version__,
        "ms_per_pass": round(1000.0 * elapsed, 4),
        "gb_per_s": round(4.0 * args.k * args.n * args.matrices / elapsed / 1e9, 2),
        "threads": args.threads,
    }))


if __name__ == "__main__":
    main()
