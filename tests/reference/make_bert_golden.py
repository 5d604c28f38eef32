"""Writes the BERT checkpoint fixtures of tests/unit-encoder.cpp (committed; CI needs no Python).

Needs transformers (4.44 was used) with torch, e.g. the venv of make_hf_golden.py:
    /work/venv-ref/bin/python tests/reference/make_bert_golden.py

fixtures/hf/bert/            a tiny random BertModel (with its pooler) as save_pretrained writes it (F32)
fixtures/hf/bert_golden.safetensors
    tokens (B,T) I64, token_types (B,T) I64, attention_mask (B,T) I64 (right padding, lengths 8, 5, 3);
    hidden.{i} (B,T,C) for i = 0..L (transformers' hidden_states: the embeddings after their LayerNorm,
    then each layer's output); attention.{l} (B,H,T,T) (eager attention); pooled (B,C) the mean over
    the unmasked tokens of the last hidden state, as sentence-transformers' Pooling computes it;
    probe (B,C) and loss = sum(pooled * probe) + 0.5 sum(pooled^2); grad.{name} of that loss for every
    parameter that has one (the pooler has none), under transformers' names.
"""
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "hf")


def mean_pool(hidden, mask):  # sentence_transformers.models.Pooling, pooling_mode_mean_tokens
    m = mask.unsqueeze(-1).expand(hidden.size()).to(hidden.dtype)
    return (hidden * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)


def main():
    torch.manual_seed(20261129)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=24, max_position_embeddings=12, type_vocab_size=2, layer_norm_eps=1e-12,
                     hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
    cfg._attn_implementation = "eager"  # chosen when the layers are built; returns the probabilities
    model = BertModel(cfg).eval()
    with torch.no_grad():  # larger than BERT's init, so that every path carries a visible gradient
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.3 if p.dim() > 1 else 0.1)
            if "LayerNorm" in name and name.endswith("weight"):
                p.add_(1.0)

    shutil.rmtree(os.path.join(OUT, "bert"), ignore_errors=True)
    model.save_pretrained(os.path.join(OUT, "bert"), safe_serialization=True)
    gen = os.path.join(OUT, "bert", "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)

    B, T = 3, 8
    g = torch.Generator().manual_seed(11)
    tokens = torch.randint(1, cfg.vocab_size, (B, T), generator=g)
    lengths = [8, 5, 3]
    mask = torch.zeros(B, T, dtype=torch.int64)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        tokens[b, n:] = 0  # [PAD]
    types = torch.zeros(B, T, dtype=torch.int64)
    types[0, 4:] = 1
    types[1, 3:5] = 1
    out = model(input_ids=tokens, attention_mask=mask, token_type_ids=types, output_hidden_states=True,
                output_attentions=True)
    pooled = mean_pool(out.last_hidden_state, mask)
    probe = torch.randn(B, cfg.hidden_size, generator=g)
    loss = (pooled * probe).sum() + 0.5 * (pooled ** 2).sum()
    loss.backward()
    golden = {"tokens": tokens, "token_types": types, "attention_mask": mask, "pooled": pooled.detach(),
              "probe": probe, "loss": loss.detach().reshape(1)}
    for i, h in enumerate(out.hidden_states):
        golden[f"hidden.{i}"] = h.detach()
    for l, a in enumerate(out.attentions):
        golden[f"attention.{l}"] = a.detach()
    for name, p in model.named_parameters():
        if p.grad is not None:
            golden[f"grad.{name}"] = p.grad.detach().clone()
    save_file({k: v.contiguous() for k, v in golden.items()}, os.path.join(OUT, "bert_golden.safetensors"),
              metadata={"format": "pt"})
    print("wrote", OUT, "loss", float(loss))


if __name__ == "__main__":
    main()
