#!/usr/bin/env python3
"""PyTorch reference for benchmarks/bench_losses.cpp: SoftKL forward + backward,

    loss = F.kl_div(F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1),
                    log_target=True, reduction="batchmean") * tau**2
    loss.backward()

over fp32 logits (tokens, vocab), the gradient freed between calls (as a training step would zero
it). Prints exactly one JSON line to stdout, e.g.
  {"impl":"pytorch","torch":"1.13.0","ms_per_call":...,"threads":2}

Example:
  /usr/bin/python3 benchmarks/reference/bench_losses.py --tokens 4096 --vocab 32000 --threads 2
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5, help="timed calls (the median is reported)")
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # its fastest setting: x86 arithmetic on denormals is slow
    torch.manual_seed(0)
    tau = args.temperature
    s = (8 * (2 * torch.rand(args.tokens, args.vocab) - 1)).requires_grad_(True)
    t = 8 * (2 * torch.rand(args.tokens, args.vocab) - 1) + 0.5 * s.detach()

    def call():
        s.grad = None
        loss = F.kl_div(F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1), log_target=True,
                        reduction="batchmean") * tau * tau
        loss.backward()
        return loss

    for _ in range(args.warmup):
        call()
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    times.sort()
    print(json.dumps({
        "impl": "pytorch",
        "torch": torch.__version__,
        "ms_per_call": round(1000.0 * times[len(times) // 2], 3),
        "threads": args.threads,
    }))


if __name__ == "__main__":
    main()
