#!/usr/bin/env python3
"""Golden fixtures for the numerically hard cases of distill's loss terms (docs/losses.md,
"Numerics"): the classes of defects an independent check found, each with PyTorch references.

Run from anywhere:  /usr/bin/python3 tests/reference/make_loss_edge_golden.py

Writes fixtures/loss_edge_golden.safetensors, one group of tensors per case, "<case>.<tensor>":
  <group>.s, .t       student / teacher logits (N,V) F32 of a group (big, inf.<side>, beta): the
                      inputs of its cases, exactly what was used
  <case>.ids, .lp     top-k ids (I64) and log-probabilities (F32) for the sparse term
  <case>.y            targets (I64) for the cross-entropy
  <case>.value        the value, F64: float64 autograd on the F32 inputs (the truth)
  <case>.grad         d value / d s, likewise, rounded to F32
  <case>.value_f32, .grad_f32   the same expressions evaluated by PyTorch in float32 on the same
                      inputs (what a PyTorch user gets)
Every position counts (no mask); values are means over the N rows. The references are written
independently of the C++ kernels: plain torch expressions (log_softmax, kl_div, logsumexp of the
stacked mixture, cross_entropy), differentiated by autograd.

Classes:
  big.*    logits at +-1e4 offsets with an ordinary spread (std 3), student and teacher offsets
           equal, opposite, or on one side only; SoftKL at tau 1 and 0.3, ReverseKL, JSD, TopKSoftKL,
           HardCE. V = 1100 crosses a 1024-element chunk of the streaming kernels.
  inf.*    a vocabulary mask (-inf logits) on the teacher only, the student only, and both, at
           V = 67 (several SIMD widths plus a tail): JSD at beta 0.1, 0.5, 0.9; SoftKL where only the
           teacher masks; ReverseKL where only the student masks (the other sides are infinite).
  beta.*   JSD at beta = 1e-6 and 1 - 1e-6 on ordinary logits (std 4), tau 1 and 2.
"""

import math
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from gpt import write_safetensors  # noqa: E402

NINF = float("-inf")


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def f64(t):
    return t.detach().to(torch.float64).contiguous()


# ---- references: any dtype, autograd; rows (N,V), mean over rows -----------------------------


def kl_rows(la, lb):
    """sum_j exp(la_j) (la_j - lb_j) per row, 0 log 0 = 0: where exp(la) is 0 (a masked entry) both
    logs are replaced by 0 before the product, so autograd never forms 0 * inf."""
    pa = la.exp()
    zero = torch.zeros_like(la)
    return (pa * (torch.where(pa > 0, la, zero) - torch.where(pa > 0, lb, zero))).sum(-1)


def soft_kl(s, t, tau):
    """tau^2 mean KL(softmax(t/tau) || softmax(s/tau)) (= kl_div(ls, lt, log_target=True).sum(-1)
    where no entry is masked)."""
    return tau * tau * kl_rows(F.log_softmax(t / tau, -1), F.log_softmax(s / tau, -1)).mean()


def reverse_kl(s, t, tau):
    """tau^2 mean KL(softmax(s/tau) || softmax(t/tau))."""
    return tau * tau * kl_rows(F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1)).mean()


def jsd(s, t, beta, tau):
    """[beta KL(p||M) + (1-beta) KL(q||M)] / (beta (1-beta)), M = beta p + (1-beta) q, the mixture
    in log space; terms of a zero probability are 0 (0 log 0), with -inf replaced before the
    product so that autograd never forms 0 * inf."""
    ls, lt = F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1)
    p, q = lt.exp(), ls.exp()
    # -inf (a masked entry) as -1e30 inside the mixture: the same M wherever the other side is
    # finite, and no NaN from logsumexp's backward where both are masked (those terms are 0 anyway)
    far = torch.full_like(lt, -1e30)
    lm = torch.logsumexp(
        torch.stack([torch.where(p > 0, lt, far) + math.log(beta), torch.where(q > 0, ls, far) + math.log1p(-beta)]), 0
    )
    zero = torch.zeros_like(lm)
    lt_, ls_ = torch.where(p > 0, lt, zero), torch.where(q > 0, ls, zero)
    lm_p, lm_q = torch.where(p > 0, lm, zero), torch.where(q > 0, lm, zero)
    kl_pm = (p * (lt_ - lm_p)).sum(-1)
    kl_qm = (q * (ls_ - lm_q)).sum(-1)
    rows = kl_pm / (1 - beta) + kl_qm / beta
    return tau * tau * rows.mean()


def topk_kl(s, ids, lp, tau):
    ls = F.log_softmax(s / tau, -1)
    lq = torch.gather(ls, -1, ids)
    P = lp.exp()
    head = (P * (lp - lq)).sum(-1)
    in_top = torch.zeros_like(ls, dtype=torch.bool).scatter(-1, ids, True)
    lq_rest = torch.logsumexp(ls.masked_fill(in_top, NINF), -1)
    p_rest = (1 - P.sum(-1)).clamp(min=0)
    tail = torch.where(p_rest > 0, p_rest * (p_rest.clamp(min=1e-300).log() - lq_rest), torch.zeros_like(p_rest))
    return tau * tau * (head + tail).mean()


def hard_ce(s, y):
    return F.cross_entropy(s, y, reduction="mean")


# ---- evaluation in float64 (the truth) and float32 (PyTorch's own fp32) ----------------------


def evaluate(fn, s, *args):
    out = {}
    for dtype, suffix in ((torch.float64, ""), (torch.float32, "_f32")):
        x = s.to(dtype).clone().requires_grad_(True)
        cast = [a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        v = fn(x, *cast)
        (g,) = torch.autograd.grad(v, x)
        out["value" + suffix] = f64(v.reshape(1))
        out["grad" + suffix] = f32(g)  # F32 keeps 6e-8 of the float64 result: far inside every tolerance
    return out


def main():
    torch.manual_seed(20250301)
    out = {}
    summary = []

    def add(name, inputs, results):
        for k, v in inputs.items():
            out[f"{name}.{k}"] = f32(v) if v.is_floating_point() else v.contiguous()
        if results is None:
            return
        for k, v in results.items():
            out[f"{name}.{k}"] = v
        g, g32 = results["grad"].double(), results["grad_f32"].double()
        err32 = ((g32 - g).abs().max() / g.abs().max()).item()
        summary.append(f"{name}: value={results['value'].item():.8g}  torch fp32 grad error {err32:.2e} of max|grad|")

    # ---- logits at +-1e4 -------------------------------------------------------------------------
    N, V = 4, 1100
    spread_s, spread_t = 3.0 * torch.randn(N, V), 3.0 * torch.randn(N, V)
    off_s = torch.tensor([1e4, -1e4, 0.0, 1e4]).reshape(N, 1)
    off_t = torch.tensor([1e4, -1e4, 1e4, -1e4]).reshape(N, 1)
    s = f32(off_s + spread_s).double()
    t = f32(off_t + spread_s + 0.7 * spread_t).double()  # the teacher close to the student
    add("big", {"s": s, "t": t}, None)
    for tau in (1.0, 0.3):
        add(f"big.soft_kl.tau{tau:g}", {}, evaluate(lambda x, tt: soft_kl(x, tt, tau), s, t))
    add("big.reverse_kl", {}, evaluate(lambda x, tt: reverse_kl(x, tt, 1.0), s, t))
    add("big.jsd", {}, evaluate(lambda x, tt: jsd(x, tt, 0.5, 1.0), s, t))
    k = 5
    lp, ids = F.log_softmax(t, -1).topk(k, -1)  # the teacher's top-k at tau 1, rounded to F32 below
    lp = f32(lp).double()
    add("big.topk", {"ids": ids, "lp": lp}, evaluate(lambda x, l: topk_kl(x, ids, l, 1.0), s, lp))
    y = torch.randint(0, V, (N,))
    add("big.hard_ce", {"y": y}, evaluate(lambda x: hard_ce(x, y), s))

    # ---- -inf on one side, the other, and both ---------------------------------------------------
    N, V = 3, 67
    s0 = f32(2.0 * torch.randn(N, V)).double()
    t0 = f32(s0 + 1.5 * torch.randn(N, V)).double()
    cols_t = torch.arange(V) % 5 == 1  # the teacher's mask
    cols_s = torch.arange(V) % 7 == 3  # the student's mask
    both = torch.arange(V) % 9 == 4
    masked = {
        "teacher": (s0, t0.masked_fill(cols_t, NINF)),
        "student": (s0.masked_fill(cols_s, NINF), t0),
        "both": (s0.masked_fill(both, NINF), t0.masked_fill(both, NINF)),
        # masks on both sides at different entries: only the JSD is finite
        "mixed": (s0.masked_fill(cols_s, NINF), t0.masked_fill(cols_t, NINF)),
    }
    for side, (si, ti) in masked.items():
        add(f"inf.{side}", {"s": si, "t": ti}, None)
        for beta in (0.1, 0.5, 0.9):
            r = evaluate(lambda x, tt: jsd(x, tt, beta, 2.0), si, ti)
            assert torch.isfinite(r["grad"]).all() and torch.isfinite(r["value"]).all(), (side, beta)
            add(f"inf.{side}.jsd.beta{beta:g}", {}, r)
        if side in ("teacher", "both"):
            add(f"inf.{side}.soft_kl", {}, evaluate(lambda x, tt: soft_kl(x, tt, 2.0), si, ti))
        if side in ("student", "both"):
            add(f"inf.{side}.reverse_kl", {}, evaluate(lambda x, tt: reverse_kl(x, tt, 2.0), si, ti))

    # ---- beta at 1e-6 and 1 - 1e-6 -----------------------------------------------------------------
    N, V = 4, 200
    s = f32(4.0 * torch.randn(N, V)).double()
    t = f32(4.0 * torch.randn(N, V)).double()
    add("beta", {"s": s, "t": t}, None)
    for beta, tag in ((1e-6, "1e-6"), (1 - 1e-6, "1-1e-6")):
        for tau in (1.0, 2.0):
            add(f"beta.{tag}.tau{tau:g}", {}, evaluate(lambda x, tt: jsd(x, tt, beta, tau), s, t))
    # how far J_beta is from its limit on these logits (docs/losses.md quotes it)
    for beta in (1e-6, 1e-4, 1e-2):
        j = jsd(s, t, beta, 1.0).item()
        kl = soft_kl(s, t, 1.0).item()
        summary.append(f"continuity: beta={beta:g} J={j:.6g} KL(p||q)={kl:.6g} ratio={j / kl:.4f}")

    out_dir = os.path.join(HERE, "fixtures")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "loss_edge_golden.safetensors")
    write_safetensors(path, out, metadata={"seed": "20250301"})
    print("\n".join(summary))
    print(f"wrote {os.path.relpath(path, os.getcwd())} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
