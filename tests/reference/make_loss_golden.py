#!/usr/bin/env python3
"""Golden fixtures for distill's loss terms (include/distill/loss/*.hpp, docs/losses.md).

Run from anywhere:  /usr/bin/python3 tests/reference/make_loss_golden.py

Writes (next to this script):
  fixtures/loss_golden.safetensors        one group of tensors per case, "<case>.<tensor>"
  fixtures/loss_model_golden.safetensors  a student and a teacher GPT (gpt.py), a batch, and the
                                          value and every gradient of a Sum of all the terms

Every reference is written independently of the C++ kernels: plain PyTorch expressions
(log_softmax, kl_div, logsumexp of a stacked mixture, cross_entropy, ...) differentiated by
autograd, in float64, from float32 inputs (so the stored F32 inputs are exactly what was used).
Outputs are the float64 results rounded to F32.

Conventions (the same as the C++ terms; see docs/losses.md):
  - logits (B,T,V), mask (B,T) int64 1 = the position counts; values are means over counted
    positions; "scale" is tau^2 when temperature_squared else 1;
  - soft_kl    = scale * mean KL(softmax(t/tau) || softmax(s/tau))
  - reverse_kl = scale * mean KL(softmax(s/tau) || softmax(t/tau))
  - jsd        = scale * mean [b KL(p||M) + (1-b) KL(q||M)] / (b (1-b)), M = b p + (1-b) q
  - topk       = scale * mean [sum_i P_i log(P_i/q_i) + P_rest log(P_rest/q_rest)] (k+1 outcomes)
  - hard_ce    = mean over counted positions with target >= 0 of cross_entropy
  - hidden_mse = mean over pairs of masked mean of ((h W^T + b) - g)^2 over channels (or 1 - cos)
  - attention_kl, attention_relation: see the functions below.

Cases whose vocabulary is 50 000 store no inputs: both sides regenerate them with `lcg_uniform`
(a 64-bit LCG whose top 24 bits are the uniform), so the fixture stays small.
"""

import math
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from gpt import GPT, GPTConfig, write_safetensors  # noqa: E402

torch.set_default_dtype(torch.float64)
f32 = lambda t: t.detach().to(torch.float32).contiguous()  # noqa: E731
exact = lambda t: t.to(torch.float32).to(torch.float64)  # noqa: E731  (F32-representable float64)

# ---------------------------------------------------------------------------------------------
# references (float64, autograd)
# ---------------------------------------------------------------------------------------------


def masked_mean(rows, mask):
    """rows (B,T), mask (B,T) -> sum over counted rows / count (0 when none count)."""
    m = mask.to(rows.dtype)
    n = m.sum()
    return (rows * m).sum() / n if n > 0 else rows.sum() * 0


def soft_kl(s, t, tau, mask, squared=True):
    ls, lt = F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1)
    rows = F.kl_div(ls, lt, log_target=True, reduction="none").sum(-1)  # sum p (log p - log q)
    return (tau * tau if squared else 1.0) * masked_mean(rows, mask)


def reverse_kl(s, t, tau, mask, squared=True):
    ls, lt = F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1)
    rows = F.kl_div(lt, ls, log_target=True, reduction="none").sum(-1)  # sum q (log q - log p)
    return (tau * tau if squared else 1.0) * masked_mean(rows, mask)


def jsd(s, t, beta, tau, mask, squared=True):
    if beta == 0:
        return soft_kl(s, t, tau, mask, squared)
    if beta == 1:
        return reverse_kl(s, t, tau, mask, squared)
    ls, lt = F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1)
    # the mixture of probabilities, in log space
    lm = torch.logsumexp(torch.stack([lt + math.log(beta), ls + math.log(1 - beta)]), 0)
    kl_pm = (lt.exp() * (lt - lm)).sum(-1)
    kl_qm = (ls.exp() * (ls - lm)).sum(-1)
    rows = (beta * kl_pm + (1 - beta) * kl_qm) / (beta * (1 - beta))
    return (tau * tau if squared else 1.0) * masked_mean(rows, mask)


def topk_kl(s, ids, lp, tau, mask, squared=True):
    """ids (B,T,k) int64 (-1 unused), lp (B,T,k) teacher log-probs at temperature tau."""
    ls = F.log_softmax(s / tau, -1)
    valid = ids >= 0
    safe = ids.clamp(min=0)
    lq = torch.gather(ls, -1, safe)
    P = torch.where(valid, lp.exp(), torch.zeros_like(lp))
    head = torch.where(valid & (P > 0), P * (lp - lq), torch.zeros_like(lp)).sum(-1)
    in_top = torch.zeros_like(ls, dtype=torch.int64).scatter_add(-1, safe, valid.long()) > 0
    lq_rest = torch.logsumexp(ls.masked_fill(in_top, float("-inf")), -1)
    p_rest = (1 - P.sum(-1)).clamp(min=0)
    tail = torch.where(p_rest > 0, p_rest * (p_rest.clamp(min=1e-300).log() - lq_rest), torch.zeros_like(p_rest))
    return (tau * tau if squared else 1.0) * masked_mean(head + tail, mask)


def hard_ce(s, y, mask):
    B, T, V = s.shape
    rows = F.cross_entropy(s.reshape(-1, V), y.reshape(-1), ignore_index=-1, reduction="none").reshape(B, T)
    counted = (mask > 0) & (y >= 0)
    n = counted.sum()
    return (rows * counted).sum() / n if n > 0 else rows.sum() * 0


def hidden_mse(pairs, hs, ht, mask, form="mse", W=None, b=None, eps=1e-8):
    """pairs [(i,j)], hs/ht lists of (B,T,C); W/b lists per pair (None: identity)."""
    total = 0
    for k, (i, j) in enumerate(pairs):
        y = hs[i] if W is None else hs[i] @ W[k].t() + b[k]
        g = ht[j]
        if form == "mse":
            rows = ((y - g) ** 2).mean(-1)
        else:
            ny = y.norm(dim=-1).clamp(min=eps)
            ng = g.norm(dim=-1).clamp(min=eps)
            rows = 1 - (y * g).sum(-1) / (ny * ng)
        total = total + masked_mean(rows, mask)
    return total / len(pairs)


def attention_kl(pairs, a_s, a_t, mask):
    """a_s: list of (B,Hs,T,T) student probabilities; a_t: list of (B,Ht,T,T)."""
    total = 0
    for ls_, lt_ in pairs:
        s, t = a_s[ls_], a_t[lt_]
        B, Hs, T, _ = s.shape
        g = t.shape[1] // Hs
        tbar = t.reshape(B, Hs, g, T, T).mean(2)  # group mean of adjacent teacher heads
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
        s_safe = torch.where(causal, s, torch.ones_like(s))  # no log(0) above the diagonal, even unselected
        terms = torch.where(causal & (tbar > 0), tbar * (tbar.clamp(min=1e-300).log() - s_safe.log()), torch.zeros_like(s))
        rows = terms.sum(-1).mean(1)  # (B,T): mean over student heads
        total = total + masked_mean(rows, mask)
    return total / len(pairs)


def relation_logits(x, R):
    """x (B,T,C) -> (B,R,T,T) = x_r x_r^T / sqrt(d), causal -inf."""
    B, T, C = x.shape
    d = C // R
    xr = x.reshape(B, T, R, d).transpose(1, 2)
    S = xr @ xr.transpose(-1, -2) / math.sqrt(d)
    causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    return S.masked_fill(causal, float("-inf"))


def attention_relation(pairs, qkv_s, qkv_t, R, relations, mask):
    total = 0
    for ls_, lt_ in pairs:
        xs, xt = qkv_s[ls_], qkv_t[lt_]
        Cs, Ct = xs.shape[-1] // 3, xt.shape[-1] // 3
        for which in relations:
            o = {"query": 0, "key": 1, "value": 2}[which]
            lq = F.log_softmax(relation_logits(xs[..., o * Cs:(o + 1) * Cs], R), -1)
            lp = F.log_softmax(relation_logits(xt[..., o * Ct:(o + 1) * Ct], R), -1)
            causal = torch.tril(torch.ones(lq.shape[-1], lq.shape[-1], dtype=torch.bool))
            terms = torch.where(causal, lp.exp() * (lp - lq), torch.zeros_like(lq))
            rows = terms.sum(-1).mean(1)  # (B,T), mean over relation heads
            total = total + masked_mean(rows, mask)
    return total / (len(pairs) * len(relations))


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------


def lcg_uniform(seed, n):
    """n uniforms in [0,1) with 24 bits each: state = state*6364136223846793005 + 1442695040888963407."""
    out = torch.empty(n, dtype=torch.float64)
    s = seed & 0xFFFFFFFFFFFFFFFF
    mul, inc, mask = 6364136223846793005, 1442695040888963407, 0xFFFFFFFFFFFFFFFF
    vals = []
    for _ in range(n):
        s = (s * mul + inc) & mask
        vals.append((s >> 40) / 16777216.0)
    out[:] = torch.tensor(vals, dtype=torch.float64)
    return out


def lcg_logits(seed, rows, V):
    """Student and teacher logits for the large cases, spread like a language model's: s = 5(2u-1),
    every 997th entry times 3 (up to +-15); t = s + 2(2u'-1). Computed in float64 and rounded to
    float32, as the C++ test does."""
    u = lcg_uniform(seed, 2 * rows * V)
    s = 5.0 * (2 * u[: rows * V] - 1)
    big = torch.arange(rows * V) % 997 == 0
    s = torch.where(big, 3.0 * s, s)
    t = s + 2.0 * (2 * u[rows * V:] - 1)
    return exact(s).reshape(1, rows, V), exact(t).reshape(1, rows, V)


def random_logits(B, T, V):
    """Rows at several scales, including entries at +-100 (large logits)."""
    scales = torch.tensor([1.0, 4.0, 20.0])[torch.arange(B * T) % 3].reshape(B, T, 1)
    s = torch.randn(B, T, V) * scales
    t = s + torch.randn(B, T, V) * scales
    s[0, 1, 3], s[0, 1, 7], t[0, 1, 5] = 100.0, -100.0, 100.0
    t[1, 0, 2], s[1, 0, 2] = -100.0, 60.0
    return exact(s), exact(t)


def make_mask(B, T):
    m = torch.ones(B, T, dtype=torch.int64)
    m[0, 0] = 0  # prompt
    m[1, -2:] = 0  # padding
    return m


def topk_of(t, tau, k):
    lt = F.log_softmax(t / tau, -1)
    lp, ids = lt.topk(k, -1)
    return ids, exact(lp)


def grad_of(value, x):
    (g,) = torch.autograd.grad(value, x)
    return g


# ---------------------------------------------------------------------------------------------


def main():
    torch.manual_seed(20240607)
    out = {}
    summary = []

    def add(name, tensors, value):
        for k, v in tensors.items():
            out[f"{name}.{k}"] = f32(v) if v.is_floating_point() else v.contiguous()
        out[f"{name}.value"] = f32(value.reshape(1))
        summary.append(f"{name}: value={value.item():.6g}")

    B, T, V = 2, 5, 37
    mask = make_mask(B, T)
    s, t = random_logits(B, T, V)

    # divergences over the temperature sweep
    for tau in (0.5, 1.0, 2.0, 5.0, 10.0):
        for name, fn in (("soft_kl", soft_kl), ("reverse_kl", reverse_kl)):
            x = s.clone().requires_grad_(True)
            v = fn(x, t, tau, mask)
            add(f"{name}.tau{tau:g}", {"s": s, "t": t, "mask": mask, "grad": grad_of(v, x)}, v)
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
        for tau in (1.0, 2.0):
            x = s.clone().requires_grad_(True)
            v = jsd(x, t, beta, tau, mask)
            add(f"jsd.beta{beta:g}.tau{tau:g}", {"s": s, "t": t, "mask": mask, "grad": grad_of(v, x)}, v)
    x = s.clone().requires_grad_(True)
    v = soft_kl(x, t, 2.0, mask, squared=False)
    add("soft_kl.tau2.plain", {"s": s, "t": t, "mask": mask, "grad": grad_of(v, x)}, v)

    # sparse top-k, k in {1, 5, 20}, on a vocabulary of 101; one slot unused in the k=5 case
    Vk = 101
    sk, tk = random_logits(B, T, Vk)
    for k in (1, 5, 20):
        for tau in (1.0, 2.0):
            ids, lp = topk_of(tk, tau, k)
            if k == 5:
                ids = ids.clone()
                ids[1, 1, 4] = -1
            x = sk.clone().requires_grad_(True)
            v = topk_kl(x, ids, lp, tau, mask)
            add(f"topk.k{k}.tau{tau:g}", {"s": sk, "ids": ids, "lp": lp, "mask": mask, "grad": grad_of(v, x)}, v)

    # hard cross-entropy with ignored targets
    y = torch.randint(0, V, (B, T))
    y[0, 3] = -1
    x = s.clone().requires_grad_(True)
    v = hard_ce(x, y, mask)
    add("hard_ce", {"s": s, "y": y, "mask": mask, "grad": grad_of(v, x)}, v)

    # hidden states: student (B,T,6) x3, teacher (B,T,10) x4, projections per pair
    Cs, Ct = 6, 10
    hs = [exact(torch.randn(B, T, Cs)) for _ in range(3)]
    ht = [exact(torch.randn(B, T, Ct)) for _ in range(4)]
    pairs = [(1, 2), (2, 3), (0, 0)]
    W0 = [exact(0.3 * torch.randn(Ct, Cs)) for _ in pairs]
    b0 = [exact(0.1 * torch.randn(Ct)) for _ in pairs]
    for form in ("mse", "cosine"):
        xs = [h.clone().requires_grad_(True) for h in hs]
        Ws = [w.clone().requires_grad_(True) for w in W0]
        bs = [bb.clone().requires_grad_(True) for bb in b0]
        v = hidden_mse(pairs, xs, ht, mask, form, Ws, bs)
        grads = torch.autograd.grad(v, xs + Ws + bs)
        tensors = {"mask": mask}
        for i, h in enumerate(hs):
            tensors[f"hs{i}"] = h
            tensors[f"grad_hs{i}"] = grads[i]
        for j, h in enumerate(ht):
            tensors[f"ht{j}"] = h
        for p in range(len(pairs)):
            tensors[f"W{p}"] = W0[p]
            tensors[f"b{p}"] = b0[p]
            tensors[f"grad_W{p}"] = grads[3 + p]
            tensors[f"grad_b{p}"] = grads[3 + len(pairs) + p]
        add(f"hidden_{form}", tensors, v)
    # same widths, no projection
    ht_same = [exact(torch.randn(B, T, Cs)) for _ in range(3)]
    xs = [h.clone().requires_grad_(True) for h in hs]
    v = hidden_mse([(1, 1), (2, 2)], xs, ht_same, mask, "mse")
    grads = [g if g is not None else torch.zeros_like(h) for g, h in zip(torch.autograd.grad(v, xs, allow_unused=True), hs)]
    tensors = {"mask": mask}
    for i in range(3):
        tensors[f"hs{i}"], tensors[f"ht{i}"], tensors[f"grad_hs{i}"] = hs[i], ht_same[i], grads[i]
    add("hidden_identity", tensors, v)

    # attention maps: student 2 heads, teacher 6 (groups of 3), 2 student layers, 3 teacher layers
    Ta = 6
    causal = torch.triu(torch.ones(Ta, Ta, dtype=torch.bool), diagonal=1)

    def att(H, scale):
        return exact(torch.softmax((scale * torch.randn(B, H, Ta, Ta)).masked_fill(causal, float("-inf")), -1))

    a_s = [att(2, 2.0) for _ in range(2)]
    a_t = [att(6, 3.0) for _ in range(3)]
    mask_a = make_mask(B, Ta)
    apairs = [(0, 1), (1, 2)]
    xs = [a.clone().requires_grad_(True) for a in a_s]
    v = attention_kl(apairs, xs, a_t, mask_a)
    grads = torch.autograd.grad(v, xs)
    tensors = {"mask": mask_a}
    for i in range(2):
        tensors[f"s{i}"], tensors[f"grad{i}"] = a_s[i], grads[i]
    for j in range(3):
        tensors[f"t{j}"] = a_t[j]
    add("attention_kl", tensors, v)

    # relations: student C=8, teacher C=12, R=4 relation heads (d = 2 and 3)
    qs = [exact(torch.randn(B, Ta, 24)) for _ in range(2)]
    qt = [exact(torch.randn(B, Ta, 36)) for _ in range(3)]
    for tag, rels in (("all", ["query", "key", "value"]), ("qk", ["query", "key"])):
        xs = [q.clone().requires_grad_(True) for q in qs]
        v = attention_relation([(1, 2), (0, 0)], xs, qt, 4, rels, mask_a)
        grads = torch.autograd.grad(v, xs)
        tensors = {"mask": mask_a}
        for i in range(2):
            tensors[f"s{i}"], tensors[f"grad{i}"] = qs[i], grads[i]
        for j in range(3):
            tensors[f"t{j}"] = qt[j]
        add(f"relation_{tag}", tensors, v)

    # vocabulary 50 000: inputs regenerated from lcg_logits(seed, rows, V); only outputs stored
    VL = 50000
    sL, tL = lcg_logits(7, 2, VL)
    mL = torch.ones(1, 2, dtype=torch.int64)
    x = sL.clone().requires_grad_(True)
    v = soft_kl(x, tL, 2.0, mL)
    add("large.soft_kl", {"grad": grad_of(v, x)}, v)
    s1, t1 = lcg_logits(8, 1, VL)
    m1 = torch.ones(1, 1, dtype=torch.int64)
    x = s1.clone().requires_grad_(True)
    v = reverse_kl(x, t1, 1.0, m1)
    add("large.reverse_kl", {"grad": grad_of(v, x)}, v)
    x = s1.clone().requires_grad_(True)
    v = jsd(x, t1, 0.3, 1.0, m1)
    add("large.jsd", {"grad": grad_of(v, x)}, v)
    for k in (1, 5, 20):
        ids, lp = topk_of(t1, 1.0, k)
        x = s1.clone().requires_grad_(True)
        v = topk_kl(x, ids, lp, 1.0, m1)
        add(f"large.topk{k}", {"ids": ids, "lp": lp, "grad": grad_of(v, x)}, v)
    yL = torch.tensor([[12345]])
    x = s1.clone().requires_grad_(True)
    v = hard_ce(x, yL, m1)
    add("large.hard_ce", {"grad": grad_of(v, x)}, v)

    out_dir = os.path.join(HERE, "fixtures")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "loss_golden.safetensors")
    write_safetensors(path, out, metadata={"seed": "20240607", "large_vocab": str(VL)})
    print("\n".join(summary))
    print(f"wrote {os.path.relpath(path, os.getcwd())} ({os.path.getsize(path)} bytes)")

    make_model_golden(out_dir)


# ---------------------------------------------------------------------------------------------
# end to end: Sum of every term between two GPTs
# ---------------------------------------------------------------------------------------------

STUDENT = GPTConfig(vocab_size=53, context_length=8, d_model=16, n_layers=2, n_heads=2, d_ff=32)
TEACHER = GPTConfig(vocab_size=53, context_length=8, d_model=24, n_layers=3, n_heads=4, d_ff=48)
WEIGHTS = {"soft_kl": 1.0, "hard_ce": 0.5, "hidden_mse": 0.7, "attention_kl": 0.3, "attention_relation": 0.2}
SOFT_TAU = 2.0
RELATION_HEADS = 4


def init_params(model, std):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape))
            elif ".ln_" in name or name.startswith("ln_"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape))
            else:
                p.copy_(std * torch.randn(p.shape))
            p.copy_(exact(p))


def run_with_qkv(model, tokens):
    """GPT.forward plus each layer's c_attn output (q|k|v), captured by forward hooks."""
    qkv = []
    hooks = [blk.attn.c_attn.register_forward_hook(lambda m, i, o: qkv.append(o)) for blk in model.h]
    logits, hidden, attns = model(tokens)
    for h in hooks:
        h.remove()
    return logits, hidden, attns, qkv


def make_model_golden(out_dir):
    torch.manual_seed(99)
    student, teacher = GPT(STUDENT).double(), GPT(TEACHER).double()
    init_params(student, 0.3)
    init_params(teacher, 0.3)
    B, T = 2, 7
    tokens = torch.randint(0, STUDENT.vocab_size, (B, T))
    mask = torch.ones(B, T, dtype=torch.int64)
    mask[0, :2] = 0  # prompt
    mask[1, -1] = 0  # padding
    teacher_tokens = torch.randint(0, STUDENT.vocab_size, (B, T))
    teacher_tokens[1, 3] = -1
    # projections of HiddenMSE: uniform map of 2 student blocks onto 3 teacher blocks: (1,2), (2,3)
    hpairs = [(1, 2), (2, 3)]
    W = [exact(0.2 * torch.randn(TEACHER.d_model, STUDENT.d_model)).requires_grad_(True) for _ in hpairs]
    bvec = [exact(0.1 * torch.randn(TEACHER.d_model)).requires_grad_(True) for _ in hpairs]
    apairs = [(0, 1), (1, 2)]  # uniform attention map: round((l+1)*3/2)-1
    rpairs = [(1, 2)]  # "last"

    with torch.no_grad():
        t_logits, t_hidden, t_attn, t_qkv = run_with_qkv(teacher, tokens)
    s_logits, s_hidden, s_attn, s_qkv = run_with_qkv(student, tokens)
    terms = {
        "soft_kl": soft_kl(s_logits, t_logits, SOFT_TAU, mask),
        "hard_ce": hard_ce(s_logits, teacher_tokens, mask),
        "hidden_mse": hidden_mse(hpairs, s_hidden, t_hidden, mask, "mse", W, bvec),
        "attention_kl": attention_kl(apairs, s_attn, t_attn, mask),
        "attention_relation": attention_relation(rpairs, s_qkv, t_qkv, RELATION_HEADS, ["query", "key", "value"], mask),
    }
    total = sum(WEIGHTS[k] * v for k, v in terms.items())
    names = [n for n, _ in student.named_parameters()]
    params = [p for _, p in student.named_parameters()]
    grads = torch.autograd.grad(total, params + W + bvec)

    out = {"tokens": tokens, "mask": mask, "teacher_tokens": teacher_tokens, "total": f32(total.reshape(1))}
    for k, v in terms.items():
        out[f"value.{k}"] = f32(v.reshape(1))
    for n, p in student.named_parameters():
        out[f"student.{n}"] = f32(p)
    for n, p in teacher.named_parameters():
        out[f"teacher.{n}"] = f32(p)
    for i in range(len(hpairs)):
        out[f"proj.{i}.weight"] = f32(W[i])
        out[f"proj.{i}.bias"] = f32(bvec[i])
    for n, g in zip(names, grads):
        out[f"grad.{n}"] = f32(g)
    for i in range(len(hpairs)):
        out[f"grad.proj.{i}.weight"] = f32(grads[len(names) + i])
        out[f"grad.proj.{i}.bias"] = f32(grads[len(names) + len(hpairs) + i])
    meta = {f"student.{k}": v for k, v in STUDENT.metadata().items()}
    meta.update({f"teacher.{k}": v for k, v in TEACHER.metadata().items()})
    meta.update({"soft_kl.temperature": str(SOFT_TAU), "relation_heads": str(RELATION_HEADS)})
    meta.update({f"weight.{k}": str(v) for k, v in WEIGHTS.items()})
    path = os.path.join(out_dir, "loss_model_golden.safetensors")
    write_safetensors(path, out, metadata=meta)
    print("model: " + ", ".join(f"{k}={v.item():.6g}" for k, v in terms.items()) + f", total={total.item():.6g}")
    print(f"wrote {os.path.relpath(path, os.getcwd())} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
