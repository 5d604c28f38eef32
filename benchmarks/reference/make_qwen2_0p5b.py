#!/usr/bin/env python3
"""Writes a randomly initialized Qwen2-0.5B-shaped model as a Hugging Face directory (config.json +
model.safetensors, fp32), for benchmarks/bench_train.cpp --size qwen2-0.5b and
benchmarks/reference/bench_lora.py: d_model 896, 24 layers, 14 query / 2 key-value heads, d_ff 4864,
vocabulary 151936, context 512 (Qwen2-0.5B's shape with its context cut to 512), tied embeddings,
biases on q, k and v. Weights are transformers' own initialization (normal, std 0.02) under a fixed seed.
The directory is about 2 GB: write it under build/ or /tmp, never into the repository.

    ~/.cache/distill/torch-venv/bin/python benchmarks/reference/make_qwen2_0p5b.py build/qwen2-0.5b
"""

import argparse
import os
import sys

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="directory to write (created)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if os.path.exists(os.path.join(args.out, "model.safetensors")):
        print(f"{args.out}: already written", file=sys.stderr)
        return
    torch.manual_seed(args.seed)
    cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=512,
                      rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, torch_dtype="float32")
    model = Qwen2ForCausalLM(cfg).float().eval()
    model.save_pretrained(args.out, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.out}: {n} parameters", file=sys.stderr)


if __name__ == "__main__":
    main()
