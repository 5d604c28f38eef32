#!/usr/bin/env python3
"""PyTorch reference for bench_gemm: one fp32 GEMM, C (m, n) = op(A) op(B) with torch.mm, A given
transposed (a (k, m) tensor's .t()) with --trans-a 1 and B with --trans-b 1 (a (n, k) tensor's .t(),
as F.linear reads its weight), as distill's row-major gemm takes them.

Prints exactly one JSON line to stdout, e.g.
  {"impl":"pytorch","torch":"2.15.0","gflops":...,"ms_per_call":...,"threads":2}

Example:
  /usr/bin/python3 benchmarks/reference/bench_gemm.py --m 2048 --n 2048 --k 512 --trans-b 1 --threads 2
"""

import argparse
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--trans-a", type=int, default=0)
    ap.add_argument("--trans-b", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10, help="timed calls (the median is reported)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # its fastest setting: x86 arithmetic on denormals is slow
    torch.manual_seed(0)
    m, n, k = args.m, args.n, args.k
    a = torch.randn(k, m).t() if args.trans_a else torch.randn(m, k)
    b = torch.randn(n, k).t() if args.trans_b else torch.randn(k, n)
    c = torch.empty(m, n)
    for _ in range(3):
        torch.mm(a, b, out=c)
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        times.append(time.perf_counter() - t0)
    times.sort()
    dt = times[len(times) // 2]
    print(json.dumps({
        "impl": "pytorch",
        "torch": torch.__version__,
        "gflops": round(2.0 * m * n * k / dt / 1e9, 2),
        "ms_per_call": round(1000.0 * dt, 4),
        "threads": args.threads,
    }))


if __name__ == "__main__":
    main()
