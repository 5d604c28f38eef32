"""Writes the Hugging Face checkpoint fixtures of tests/unit-hf.cpp (committed; CI needs no Python).

Needs transformers (4.44 was used) with torch; on Debian:
    /usr/bin/python3 -m venv --system-site-packages /tmp/venv-ref
    /tmp/venv-ref/bin/pip install transformers==4.44.2
    /tmp/venv-ref/bin/python tests/reference/make_hf_golden.py

fixtures/hf/gpt2/            a tiny random GPT2LMHeadModel as save_pretrained writes it (F32)
fixtures/hf/gpt2-sharded/    the same model in shards with model.safetensors.index.json
fixtures/hf/gpt2-bf16/       the same model saved in bfloat16
fixtures/hf/gpt2_golden.safetensors
    tokens (B,T) I64; logits (B,T,V); hidden.{i} (B,T,C) for i = 0..L (transformers' hidden_states:
    the embeddings, each block's output, the last one after ln_f); attention.{l} (B,H,T,T); loss
    (transformers' shifted LM loss); grad.{name} for every parameter, under transformers' names
    and in its layouts (Conv1D weights (in, out)).
"""
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "hf")


def main():
    torch.manual_seed(20261128)
    cfg = GPT2Config(vocab_size=40, n_positions=12, n_embd=16, n_layer=2, n_head=2, n_inner=24,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=1, eos_token_id=2)
    model = GPT2LMHeadModel(cfg).eval()
    model.config._attn_implementation = "eager"  # attention probabilities are returned
    with torch.no_grad():  # larger than GPT-2's init, so that every path carries a visible gradient
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.3 if p.dim() > 1 else 0.1)
            if "ln_" in name and name.endswith("weight"):
                p.add_(1.0)

    for sub in ("gpt2", "gpt2-sharded", "gpt2-bf16"):
        shutil.rmtree(os.path.join(OUT, sub), ignore_errors=True)
    model.save_pretrained(os.path.join(OUT, "gpt2"), safe_serialization=True)
    model.save_pretrained(os.path.join(OUT, "gpt2-sharded"), safe_serialization=True, max_shard_size="10KB")
    GPT2LMHeadModel.from_pretrained(os.path.join(OUT, "gpt2")).to(torch.bfloat16).save_pretrained(
        os.path.join(OUT, "gpt2-bf16"), safe_serialization=True)
    for sub in ("gpt2", "gpt2-sharded", "gpt2-bf16"):
        gen = os.path.join(OUT, sub, "generation_config.json")
        if os.path.exists(gen):
            os.remove(gen)

    tokens = torch.randint(0, cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(7))
    out = model(tokens, labels=tokens, output_hidden_states=True, output_attentions=True)
    out.loss.backward()
    golden = {"tokens": tokens.to(torch.int64), "logits": out.logits.detach(), "loss": out.loss.detach().reshape(1)}
    for i, h in enumerate(out.hidden_states):
        golden[f"hidden.{i}"] = h.detach()
    for l, a in enumerate(out.attentions):
        golden[f"attention.{l}"] = a.detach()
    for name, p in model.named_parameters():
        golden[f"grad.{name}"] = p.grad.detach().clone()
    save_file({k: v.contiguous() for k, v in golden.items()}, os.path.join(OUT, "gpt2_golden.safetensors"),
              metadata={"format": "pt"})
    print("wrote", OUT, "loss", float(out.loss))


if __name__ == "__main__":
    main()
