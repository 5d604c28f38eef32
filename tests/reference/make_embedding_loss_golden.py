#!/usr/bin/env python3
"""Golden fixture for distill's sentence-embedding loss terms and bidirectional AttentionKL
(include/distill/loss/cosine_embedding.hpp, embedding_mse.hpp, attention_kl.hpp; docs/losses.md).

Run from anywhere:  /usr/bin/python3 tests/reference/make_embedding_loss_golden.py

Writes fixtures/embedding_loss_golden.json (next to this script), one object per case; every
array is flat, row-major, and every input is a float32-representable number (the C++ test runs in
float and double on exactly these inputs). References are plain PyTorch expressions
differentiated by autograd in float64, written independently of the C++ kernels:

  cosine        {B, C, s, t, value, grad}: value = 1 - F.cosine_similarity(s, t, dim=-1).mean(),
                grad = d value / d s. Row 1 of s is all zeros, row 2 of t is all zeros.
  cosine_tiny   the same with row 0 of s of norm 4e-9 < eps = 1e-8, row 1 of norm 1e-3: the
                cosine is torch 2.x's ATen code written out (norms by linalg.vector_norm, cloned,
                clamped at eps in place without grad, then (s/|s|_eps)*(t/|t|_eps) summed), because
                the torch 1.13 this script runs on differentiates the clamped norm differently
                below eps (its gradient there is t/(n_s n_t) - cos s/n_s^2).
  mse           {B, C, s, t, value, grad}: value = F.mse_loss(s, t) (mean over B*C).
  attention_kl_bidirectional  {B, Hs, Ht, T, lengths, mask, s, t, value, grad}: one layer pair of
                a bidirectional encoder. Scores are random; every row, padded queries included, is
                a softmax over the valid keys j < lengths[b] (padded keys get probability 0), as
                an encoder's masked softmax gives. The teacher's heads are grouped onto the
                student's (mean of heads [h g, (h+1) g), g = Ht/Hs). value = mean over student
                heads and counted query rows (mask = t < lengths[b]) of KL(teacher || student) =
                sum over valid keys of abar (log abar - log a); grad = d value / d a (the student's
                probabilities), 0 on padded keys and padded query rows.
"""

import json
import os

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
torch.set_default_dtype(torch.float64)
EPS = 1e-8


def exact(t):
    """F32-representable float64."""
    return t.to(torch.float32).to(torch.float64)


def flat(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def cosine_torch2(s, t, eps=EPS):
    """torch 2.x's at::native::cosine_similarity (aten/src/ATen/native/Distance.cpp), dim = -1."""
    ns = torch.linalg.vector_norm(s, 2, dim=-1, keepdim=True).clone()
    nt = torch.linalg.vector_norm(t, 2, dim=-1, keepdim=True).clone()
    with torch.no_grad():
        ns.clamp_min_(eps)
        nt.clamp_min_(eps)
    return ((s / ns) * (t / nt)).sum(-1)


def embedding_case(s, t, value_fn):
    s = s.clone().requires_grad_()
    v = value_fn(s, t)
    v.backward()
    B, C = s.shape
    return {"B": B, "C": C, "s": flat(s), "t": flat(t), "value": float(v), "grad": flat(s.grad)}


def attention_case(gen):
    B, Hs, Ht, T = 2, 2, 4, 6
    lengths = [6, 4]
    valid_key = torch.zeros(B, 1, 1, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        valid_key[b, 0, 0, :n] = True
    mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(T)] for n in lengths])

    def probs(H):
        x = torch.randn(B, H, T, T, generator=gen) * 2
        x = x.masked_fill(~valid_key, float("-inf"))
        return exact(torch.softmax(x, dim=-1))

    a_s, a_t = probs(Hs), probs(Ht)
    a = a_s.clone().requires_grad_()
    tbar = a_t.reshape(B, Hs, Ht // Hs, T, T).mean(2)
    valid = valid_key.expand(B, Hs, T, T)
    a_safe = torch.where(valid, a, torch.ones_like(a))
    tbar_safe = torch.where(valid & (tbar > 0), tbar, torch.ones_like(tbar))
    terms = torch.where(valid & (tbar > 0), tbar * (tbar_safe.log() - a_safe.log()), torch.zeros_like(a))
    rows = terms.sum(-1).mean(1)  # (B,T): mean over student heads
    value = (rows * mask).sum() / mask.sum()
    value.backward()
    return {
        "B": B, "Hs": Hs, "Ht": Ht, "T": T, "lengths": lengths, "mask": [int(x) for x in flat(mask)],
        "s": flat(a_s), "t": flat(a_t), "value": float(value), "grad": flat(a.grad),
    }


def main():
    gen = torch.Generator().manual_seed(19)
    B, C = 4, 7
    s = exact(torch.randn(B, C, generator=gen))
    t = exact(torch.randn(B, C, generator=gen) * 3)
    s[1] = 0
    t[2] = 0
    out = {"torch": torch.__version__}
    out["cosine"] = embedding_case(s, t, lambda s, t: 1 - F.cosine_similarity(s, t, dim=-1).mean())
    tiny = exact(torch.randn(B, C, generator=gen))
    tiny[0] = exact(tiny[0] / tiny[0].norm() * 4e-9)
    tiny[1] = exact(tiny[1] / tiny[1].norm() * 1e-3)
    out["cosine_tiny"] = embedding_case(tiny, t, lambda s, t: 1 - cosine_torch2(s, t).mean())
    out["mse"] = embedding_case(s, t, lambda s, t: F.mse_loss(s, t))
    out["attention_kl_bidirectional"] = attention_case(gen)
    path = os.path.join(HERE, "fixtures", "embedding_loss_golden.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
