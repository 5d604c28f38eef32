#!/usr/bin/env python3
"""Generate golden fixtures for the C++ GPT student.

Run from anywhere:  /usr/bin/python3 tests/reference/make_gpt_golden.py

Writes (next to this script):
  fixtures/gpt_weights.safetensors  all parameters (F32) + config metadata
  fixtures/gpt_golden.safetensors   tokens, targets, forward outputs, gradients

All reference math is done in float64 on parameters cast from their stored
float32 values, so the float32 weights in the fixture are exactly the ones used.
Outputs are stored as float32 (tokens/targets as int64).
"""

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from gpt import GPT, GPTConfig, lm_loss, read_safetensors, write_safetensors  # noqa: E402

CFG = GPTConfig(vocab_size=67, context_length=16, d_model=32, n_layers=2, n_heads=4, d_ff=80)
B, T = 3, 11  # T < Tmax on purpose
SEED = 1234
W_STD = 0.2  # embeddings and linear weights (larger than GPT-2's 0.02 on purpose)


def init_params(model):
    """Deterministic init, in named_parameters() order, from the global RNG."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape))
            elif ".ln_" in name or name.startswith("ln_"):  # LayerNorm weight
                p.copy_(1.0 + 0.1 * torch.randn(p.shape))
            else:  # embedding or linear weight
                p.copy_(W_STD * torch.randn(p.shape))


def main():
    torch.manual_seed(SEED)
    model = GPT(CFG)  # float32
    init_params(model)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}

    V = CFG.vocab_size
    tokens = torch.randint(0, V, (B, T), dtype=torch.int64)
    targets = torch.randint(0, V, (B, T), dtype=torch.int64)
    targets[torch.rand(B, T) < 0.25] = -1  # ~25% ignored
    targets[2, -2:] = -1  # padding at the end of row 2

    # Compute in float64 from the exact float32 values.
    model = model.double()
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]

    logits, hidden, attns = model(tokens)
    loss = lm_loss(logits, targets)
    grads = torch.autograd.grad(loss, params, retain_graph=True)

    # Extra cotangents on hidden states and attention maps.
    L, H, C = CFG.n_layers, CFG.n_heads, CFG.d_model
    # Rounded to float32 before use, so the stored F32 cotangents are exactly
    # the ones the float64 reference used.
    as_f32_exact = lambda t: t.to(torch.float32).to(torch.float64)  # noqa: E731
    d_hidden = [as_f32_exact(0.1 * torch.randn(B, T, C, dtype=torch.float64)) for _ in range(L + 1)]
    tril = torch.tril(torch.ones(T, T, dtype=torch.float64))
    d_attn = [as_f32_exact(0.1 * torch.randn(B, H, T, T, dtype=torch.float64)) * tril for _ in range(L)]
    loss_total = loss
    for h, dh in zip(hidden, d_hidden):
        loss_total = loss_total + (h * dh).sum()
    for a, da in zip(attns, d_attn):
        loss_total = loss_total + (a * da).sum()
    grads_total = torch.autograd.grad(loss_total, params)

    f32 = lambda t: t.detach().to(torch.float32).contiguous()  # noqa: E731
    golden = {
        "tokens": tokens,
        "targets": targets,
        "logits": f32(logits),
        "loss": f32(loss.reshape(1)),
    }
    for i, h in enumerate(hidden):
        golden[f"hidden.{i}"] = f32(h)
    for l, a in enumerate(attns):
        golden[f"attn.{l}"] = f32(a)
    for n, g in zip(names, grads):
        golden[f"grad.{n}"] = f32(g)
    for i, dh in enumerate(d_hidden):
        golden[f"d_hidden.{i}"] = f32(dh)
    for l, da in enumerate(d_attn):
        golden[f"d_attn.{l}"] = f32(da)
    golden["loss_total"] = f32(loss_total.reshape(1))
    for n, g in zip(names, grads_total):
        golden[f"grad_total.{n}"] = f32(g)

    out_dir = os.path.join(HERE, "fixtures")
    os.makedirs(out_dir, exist_ok=True)
    wpath = os.path.join(out_dir, "gpt_weights.safetensors")
    gpath = os.path.join(out_dir, "gpt_golden.safetensors")
    write_safetensors(wpath, weights, metadata=CFG.metadata())
    write_safetensors(gpath, golden, metadata={"B": str(B), "T": str(T), "seed": str(SEED)})

    # Round-trip check of the writer.
    for path, ref in ((wpath, weights), (gpath, golden)):
        back, _ = read_safetensors(path)
        assert list(back) == list(ref)
        for k in ref:
            assert back[k].dtype == ref[k].dtype and torch.equal(back[k], ref[k]), k

    n_valid = int((targets != -1).sum())
    print(f"config: {CFG}")
    print(f"B={B} T={T} valid targets={n_valid}/{B * T}")
    print(f"loss={loss.item():.10f} loss_total={loss_total.item():.10f}")
    print(f"logits absmax={logits.abs().max().item():.4f}  "
          f"attn.0 last-row mean max prob={attns[0][:, :, -1].max(-1).values.mean().item():.4f} "
          f"(uniform {1 / T:.4f})")
    print(f"grad wte absmax={grads[0].abs().max().item():.3e}  "
          f"grad_total wte absmax={grads_total[0].abs().max().item():.3e}")
    for path in (wpath, gpath):
        print(f"wrote {os.path.relpath(path, os.getcwd())} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
