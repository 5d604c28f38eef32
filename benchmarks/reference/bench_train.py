#!/usr/bin/env python3
"""PyTorch reference for benchmarks/bench_train.cpp: one online distillation train step,

    with torch.no_grad(): t = teacher(tokens)                       # live teacher forward
    s = student(tokens)
    loss = F.kl_div(F.log_softmax(s / tau), F.log_softmax(t / tau), log_target=True,
                    reduction="batchmean") * tau**2                  # SoftKL over the counted positions
         + F.cross_entropy(s, targets, ignore_index=-1)              # HardCE on the teacher's tokens
    opt.zero_grad(set_to_none=True); loss.backward()
    clip_grad_norm_(student.parameters(), 1.0); opt.step()           # AdamW(foreach=True)

with the GPT of tests/reference/gpt.py for both models (--arch llama: tests/reference/llama.py). --bf16 runs both forwards and the loss under
torch.autocast("cpu", dtype=torch.bfloat16) (fp32 master weights, fp32 optimizer).

Prints exactly one JSON line to stdout, e.g.
  {"impl":"pytorch","torch":"1.13.0","tokens_per_s":...,"ms_per_step":...,"peak_rss_mib":...,"threads":2}

Example:
  /usr/bin/python3 benchmarks/reference/bench_train.py --threads 2 --steps 5
"""

import argparse
import contextlib
import functools
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "reference"))

from gpt import GPT, GPTConfig  # noqa: E402
from llama import Llama, LlamaConfig  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--context", type=int, default=256, help="T; sequences use the full context")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=1024)
    ap.add_argument("--teacher-d-model", type=int, default=512)
    ap.add_argument("--teacher-layers", type=int, default=8)
    ap.add_argument("--teacher-heads", type=int, default=8)
    ap.add_argument("--teacher-d-ff", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="forwards and loss under torch.autocast('cpu', bfloat16)")
    ap.add_argument("--checkpoint", action="store_true",
                    help="activation checkpointing of every student block (torch.utils.checkpoint, non-reentrant)")
    ap.add_argument("--arch", choices=["gpt", "llama"], default="gpt",
                    help="llama: tests/reference/llama.py (RMSNorm, RoPE, SwiGLU, GQA with heads/2 kv heads)")
    ap.add_argument("--sdpa", action="store_true",
                    help="attention through F.scaled_dot_product_attention (PyTorch 2's fused kernel, what "
                         "transformers uses by default) instead of explicit maps")
    args = ap.parse_args()
    if args.sdpa and not hasattr(F, "scaled_dot_product_attention"):
        sys.exit(f"--sdpa needs PyTorch 2 (F.scaled_dot_product_attention); this is {torch.__version__}")

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # its fastest setting: x86 arithmetic on denormals is slow
    torch.manual_seed(0)
    V, T, B, tau = args.vocab, args.context, args.batch, args.temperature
    if args.arch == "llama":
        student = Llama(LlamaConfig(V, T, args.d_model, args.layers, args.heads, max(1, args.heads // 2),
                                    args.d_ff, sdpa=args.sdpa)).train()
        teacher = Llama(LlamaConfig(V, T, args.teacher_d_model, args.teacher_layers, args.teacher_heads,
                                    max(1, args.teacher_heads // 2), args.teacher_d_ff, sdpa=args.sdpa)).eval()
    else:
        student = GPT(GPTConfig(V, T, args.d_model, args.layers, args.heads, args.d_ff, sdpa=args.sdpa)).train()
        teacher = GPT(GPTConfig(V, T, args.teacher_d_model, args.teacher_layers, args.teacher_heads,
                                args.teacher_d_ff, sdpa=args.sdpa)).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if args.checkpoint:
        import torch.utils.checkpoint as cp
        for block in student.layers if args.arch == "llama" else student.h:
            block.forward = functools.partial(cp.checkpoint, block.forward, use_reentrant=False)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.1, foreach=True)
    tokens = torch.randint(0, V, (B, T))
    targets = torch.cat([tokens[:, 1:], torch.full((B, 1), -1)], dim=1)  # the last position has no target
    counted = (targets >= 0).reshape(-1)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()

    def step():
        with torch.no_grad(), autocast():
            t_logits = teacher(tokens)[0]
        with autocast():
            s_logits = student(tokens)[0]
            s = s_logits.reshape(-1, V)[counted].float()
            t = t_logits.reshape(-1, V)[counted].float()
            kl = F.kl_div(F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1), log_target=True,
                          reduction="batchmean") * tau * tau
            ce = F.cross_entropy(s_logits.reshape(-1, V).float(), targets.reshape(-1), ignore_index=-1)
            loss = kl + ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    times = []
    cpu0 = time.process_time()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    cores_used = (time.process_time() - cpu0) / sum(times)  # above `threads`: a pool outside torch's count
    times.sort()
    dt = times[len(times) // 2]
    result = {
        "impl": "pytorch",
        "torch": torch.__version__ + (", sdpa" if args.sdpa else ""),
        "tokens_per_s": round(B * T / dt, 1),
        "ms_per_step": round(1000.0 * dt, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "threads": args.threads,
        "cores_used": round(cores_used, 2),
    }
    if args.bf16:
        result["dtype"] = "bf16-autocast"
    if args.checkpoint:
        result["checkpoint"] = "torch.utils.checkpoint per block"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
