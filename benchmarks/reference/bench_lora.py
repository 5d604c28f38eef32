#!/usr/bin/env python3
"""PyTorch + PEFT reference for `bench_train --size qwen2-0.5b --lora R`: one online distillation
train step of a Qwen2-0.5B-shaped student with LoRA on q_proj and v_proj (PEFT, alpha 2R, no
dropout, base frozen) from a teacher of the same shape,

    with torch.no_grad(): t = teacher(tokens).logits                # live teacher forward
    s = student(tokens).logits
    loss = F.kl_div(F.log_softmax(s / tau), F.log_softmax(t / tau), log_target=True,
                    reduction="batchmean") * tau**2                  # SoftKL over the counted positions
         + F.cross_entropy(s, targets, ignore_index=-1)              # HardCE on the teacher's tokens
    opt.zero_grad(set_to_none=True); loss.backward()
    clip_grad_norm_(trainable, 1.0); opt.step()                      # AdamW(foreach=True) on the adapters

Both models are transformers' Qwen2ForCausalLM in fp32, from the Hugging Face directory that
make_qwen2_0p5b.py writes (--hf; the same weights bench_train loads), else randomly initialized.
--checkpoint turns on the student's gradient checkpointing (non-reentrant). --bf16 (bench_train
--precision bf16) holds both models' weights in bf16, as a PEFT user loads a base with
dtype=torch.bfloat16 (PEFT keeps the adapters in fp32), and runs the forwards under
torch.autocast("cpu", bfloat16); the loss is computed on fp32 logits.

Prints exactly one JSON line to stdout, e.g.
  {"impl":"pytorch+peft","torch":"2.15.0","tokens_per_s":...,"ms_per_step":...,"peak_rss_mib":...,"threads":2}
"""

import argparse
import contextlib
import json
import resource
import time

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", default="", help="Hugging Face directory (make_qwen2_0p5b.py); empty: random weights")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=512, help="tokens per sequence of the measured step")
    ap.add_argument("--lora", type=int, default=16, help="LoRA rank on q_proj and v_proj (alpha = 2 rank)")
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="timed steps (the median is reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--checkpoint", action="store_true")
    ap.add_argument("--bf16", action="store_true",
                    help="both models' weights in bf16 (PEFT keeps the adapters fp32), forwards under "
                         "torch.autocast('cpu', bfloat16), the loss in fp32")
    args = ap.parse_args()

    import peft
    import transformers
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # its fastest setting: x86 arithmetic on denormals is slow
    torch.manual_seed(0)

    dtype = torch.bfloat16 if args.bf16 else torch.float32

    def load():
        if args.hf:
            return Qwen2ForCausalLM.from_pretrained(args.hf, dtype=dtype, attn_implementation="sdpa")
        cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                          num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=512,
                          rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
        return Qwen2ForCausalLM(cfg).to(dtype)

    teacher = load().eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    base = load()
    if args.checkpoint:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    student = peft.get_peft_model(base, peft.LoraConfig(r=args.lora, lora_alpha=2 * args.lora, lora_dropout=0.0,
                                                        target_modules=["q_proj", "v_proj"]))
    student.train()
    trainable = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.1, foreach=True)
    V, B, T, tau = teacher.config.vocab_size, args.batch, args.seq, args.temperature
    tokens = torch.randint(0, V, (B, T))
    targets = torch.cat([tokens[:, 1:], torch.full((B, 1), -1)], dim=1)
    counted = (targets >= 0).reshape(-1)

    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext

    def step():
        with torch.no_grad(), autocast():
            t_logits = teacher(input_ids=tokens, use_cache=False).logits.float()
        with autocast():
            s_logits = student(input_ids=tokens, use_cache=False).logits
        s_logits = s_logits.float()
        s = s_logits.reshape(-1, V)[counted]
        t = t_logits.reshape(-1, V)[counted]
        kl = F.kl_div(F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1), log_target=True,
                      reduction="batchmean") * tau * tau
        ce = F.cross_entropy(s_logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1)
        loss = kl + ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    dt = times[len(times) // 2]
    print(json.dumps({
        "impl": "pytorch+peft",
        "torch": f"{torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}",
        "tokens_per_s": round(B * T / dt, 2),
        "ms_per_step": round(1000.0 * dt, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "threads": args.threads,
    }))


if __name__ == "__main__":
    main()
