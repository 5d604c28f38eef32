"""Writes the Llama-family checkpoint fixtures of tests/unit-hf.cpp (committed; CI needs no Python).

Needs transformers (4.44 was used) with torch; see make_hf_golden.py for the venv. Run:
    /tmp/venv-ref/bin/python tests/reference/make_llama_golden.py

For each family a tiny random model as save_pretrained writes it (F32), and {family}_golden.safetensors:
    tokens (B,T) I64; logits (B,T,V); hidden.{i} (B,T,C), i = 0..L (the last after the final norm);
    attention.{l} (B,H,T,T); loss (transformers' shifted LM loss); grad.{name} for every parameter
    under transformers' names.
fixtures/hf/llama/   LlamaForCausalLM: grouped-query attention (4 heads, 2 kv heads), untied head,
                     llama3 rotary scaling, rms_norm_eps 1e-6
fixtures/hf/qwen2/   Qwen2ForCausalLM: q/k/v biases, tied head, theta 1e6
fixtures/hf/phi3/    Phi3ForCausalLM: fused qkv_proj and gate_up_proj, untied head
fixtures/hf/rope_inv_freq.safetensors
    inv_freq.{variant} (hs/2) for the rotary variants default/linear/dynamic/llama3 as transformers'
    ROPE_INIT_FUNCTIONS compute them for head size 16 (dynamic at seq_len 48 > original 16).
"""
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import (LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "hf")

COMMON = dict(vocab_size=48, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=32, bos_token_id=1, eos_token_id=2, attention_dropout=0.0)


def families():
    yield "llama", LlamaForCausalLM(LlamaConfig(
        **COMMON, num_key_value_heads=2, tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=10000.0,
        rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8}))
    yield "qwen2", Qwen2ForCausalLM(Qwen2Config(
        **COMMON, num_key_value_heads=2, tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=1000000.0,
        use_sliding_window=False))
    yield "phi3", Phi3ForCausalLM(Phi3Config(
        **COMMON, num_key_value_heads=4, tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=10000.0,
        original_max_position_embeddings=32, sliding_window=None, pad_token_id=0, resid_pdrop=0.0,
        embd_pdrop=0.0))


def golden(name, model):
    torch.manual_seed(20261128)
    model = model.eval()
    model.config._attn_implementation = "eager"  # attention probabilities are returned
    with torch.no_grad():  # larger than the default init, so that every path carries a visible gradient
        for pname, p in model.named_parameters():
            p.normal_(0.0, 0.3 if p.dim() > 1 else 0.1)
            if "norm" in pname:
                p.add_(1.0)
    shutil.rmtree(os.path.join(OUT, name), ignore_errors=True)
    model.save_pretrained(os.path.join(OUT, name), safe_serialization=True)
    gen = os.path.join(OUT, name, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    tokens = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(7))
    out = model(tokens, labels=tokens, output_hidden_states=True, output_attentions=True)
    out.loss.backward()
    g = {"tokens": tokens.to(torch.int64), "logits": out.logits.detach(), "loss": out.loss.detach().reshape(1)}
    for i, h in enumerate(out.hidden_states):
        g[f"hidden.{i}"] = h.detach()
    for l, a in enumerate(out.attentions):
        g[f"attention.{l}"] = a.detach()
    for pname, p in model.named_parameters():
        g[f"grad.{pname}"] = p.grad.detach().clone()
    save_file({k: v.contiguous() for k, v in g.items()}, os.path.join(OUT, f"{name}_golden.safetensors"),
              metadata={"format": "pt"})
    print("wrote", name, "loss", float(out.loss))


def inv_freqs():
    base = dict(hidden_size=64, num_attention_heads=4, max_position_embeddings=16, rope_theta=10000.0)
    variants = {
        "default": None,
        "linear": {"rope_type": "linear", "factor": 4.0},
        "dynamic": {"rope_type": "dynamic", "factor": 4.0},
        "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 4},
    }
    out = {}
    for v, scaling in variants.items():
        cfg = LlamaConfig(**base, rope_scaling=scaling)
        fn = ROPE_INIT_FUNCTIONS["default" if scaling is None else scaling["rope_type"]]
        inv, _ = fn(cfg, "cpu", seq_len=48) if v == "dynamic" else fn(cfg, "cpu")
        out[f"inv_freq.{v}"] = inv.to(torch.float64)
    save_file(out, os.path.join(OUT, "rope_inv_freq.safetensors"), metadata={"format": "pt"})


def main():
    for name, model in families():
        golden(name, model)
    inv_freqs()


if __name__ == "__main__":
    main()
