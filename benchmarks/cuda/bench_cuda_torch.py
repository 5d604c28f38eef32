#!/usr/bin/env python3
"""PyTorch equivalent of benchmarks/cuda/bench_cuda.cu on the GPU: the same distillation step
(teacher forward under no_grad, student forward, SoftKL at tau=2 times tau^2 plus 0.1 x MSE between
the last hidden states through a learned projection, backward, AdamW) with the same GPT models
(tests/reference/gpt.py: explicit attention maps, as distill computes them), fp32, optionally tf32.
Prints one line like bench_cuda's and one JSON line.

  python3 benchmarks/cuda/bench_cuda_torch.py [--batch 8] [--context 1024] [--steps 10] [--tf32]
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "reference"))
from gpt import GPT, GPTConfig  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--gen-batch", type=int, default=32)  # accepted for the script's shared flags
    ap.add_argument("--gen-tokens", type=int, default=128)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    dev = torch.device("cuda")
    B, T = args.batch, args.context
    scfg = GPTConfig(50257, T, 768, 12, 12, 3072)
    tcfg = GPTConfig(50257, T, 1024, 24, 16, 4096)
    torch.manual_seed(0)
    student, teacher = GPT(scfg).to(dev), GPT(tcfg).to(dev)
    proj = torch.nn.Linear(768, 1024).to(dev)
    opt = torch.optim.AdamW(list(student.parameters()) + list(proj.parameters()), lr=1e-4, weight_decay=0.01)
    tokens = torch.randint(0, 50257, (B, T), device=dev)
    tau = 2.0

    def step():
        with torch.no_grad():
            tl, th, _ = teacher(tokens)
        sl, sh, _ = student(tokens)
        kl = F.kl_div(F.log_softmax(sl / tau, -1), F.log_softmax(tl / tau, -1), log_target=True,
                      reduction="none").sum(-1).mean() * tau * tau
        mse = F.mse_loss(proj(sh[-1]), th[-1])
        loss = kl + 0.1 * mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    torch.cuda.synchronize()
    s = (time.perf_counter() - t0) / args.steps
    print(f"pytorch {torch.__version__} train step B={B} T={T} ({'tf32' if args.tf32 else 'fp32'}): "
          f"{s * 1e3:.1f} ms/step, {B * T / s:.0f} tokens/s (loss {loss.item():.4f})")
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "gemm": "tf32" if args.tf32 else "fp32",
                      "ms_per_step": s * 1e3, "tokens_per_s": B * T / s}))


if __name__ == "__main__":
    main()
