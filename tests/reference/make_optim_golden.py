#!/usr/bin/env python3
"""Golden trajectories for distill's optimizers, schedules and gradient clipping.

Run from anywhere:  /usr/bin/python3 tests/reference/make_optim_golden.py

Writes fixtures/optim_golden.safetensors: 20-step trajectories of torch.optim.SGD (plain, momentum
with dampening, Nesterov), Adam (L2 weight decay) and AdamW (decoupled), each under every schedule
(constant, linear warmup, cosine, linear decay, warmup then cosine, warmup then linear decay, built
from torch.optim.lr_scheduler) and with and without torch.nn.utils.clip_grad_norm_.

The problem: four float32 parameters, one of each distill parameter_kind (weight, bias, norm,
embedding). The gradient at step t is  G_t + PULL * p  (G_t stored random noise of varying scale,
p the current parameter), so the gradients depend on the trajectory and clipping is active on some
steps and not on others. Weight decay applies to the parameter kinds the case's "decay" groups
select (always weights), as torch parameter groups with weight_decay 0 for the others.

Tensors (F32 unless noted):
  init.<p>             initial parameter
  noise.<p>            (STEPS, *shape) G_t
  <case>.lr            F64 (STEPS,) the learning rate torch used at each step (param_groups[0]["lr"])
  <case>.grad_norm     F64 (STEPS,) global gradient norm before clipping
  <case>.<p>           (STEPS, *shape) the parameter after each step
Metadata: "steps", "pull", "params" (JSON list of {name, kind}), "cases" (JSON list of
{name, optimizer: {kind, config}, schedule: {...}, clip}), where "config" uses distill's JSON keys.
"""

import json
import math
import os
import sys
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from gpt import read_safetensors, write_safetensors  # noqa: E402

STEPS = 20
PULL = 0.5
SEED = 20240611
PARAMS = [("weight", "weight", (4, 3)), ("bias", "bias", (4,)), ("norm", "norm", (3,)), ("embedding", "embedding", (5, 3))]

OPTIMIZERS = {
    "sgd": ("sgd", 0.05, {"momentum": 0.0, "weight_decay": 0.01}),
    "sgd_momentum": ("sgd", 0.05, {"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.02,
                                   "decay": {"biases": True, "norms": False, "embeddings": True}}),
    "sgd_nesterov": ("sgd", 0.05, {"momentum": 0.8, "nesterov": True, "weight_decay": 0.05}),
    "adam": ("adam", 0.01, {"beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.1}),
    "adamw": ("adamw", 0.01, {"beta1": 0.85, "beta2": 0.995, "eps": 1e-6, "weight_decay": 0.1,
                              "decay": {"biases": False, "norms": True, "embeddings": True}}),
}

SCHEDULES = {
    "constant": {"kind": "constant"},
    "warmup": {"kind": "warmup", "warmup": 5},
    "cosine": {"kind": "cosine", "steps": STEPS, "min_ratio": 0.1},
    "linear": {"kind": "linear", "steps": STEPS, "min_ratio": 0.05},
    "warmup_cosine": {"kind": "warmup_cosine", "warmup": 4, "steps": STEPS - 4, "min_ratio": 0.1},
    "warmup_linear": {"kind": "warmup_linear", "warmup": 3, "steps": STEPS - 3, "min_ratio": 0.0},
}

CLIPS = {"noclip": 0.0, "clip": 1.5}


def closed_form_lr(sched, base, step):
    """distill's formulas (optim/schedule.hpp), to check torch's schedulers against."""
    def cosine(s, n, r):
        s = min(max(s, 0), n)
        eta_min = r * base
        return eta_min + (base - eta_min) * (1 + math.cos(math.pi * s / n)) / 2

    def linear(s, n, r):
        s = min(max(s, 0), n)
        return base * (1 + (r - 1) * s / n)

    kind = sched["kind"]
    if kind == "constant":
        return base
    if kind == "cosine":
        return cosine(step, sched["steps"], sched["min_ratio"])
    if kind == "linear":
        return linear(step, sched["steps"], sched["min_ratio"])
    w = sched["warmup"]
    if step < w:
        return base * (step + 1) / w
    if kind == "warmup":
        return base
    if kind == "warmup_cosine":
        return cosine(step - w, sched["steps"], sched["min_ratio"])
    return linear(step - w, sched["steps"], sched["min_ratio"])


def make_scheduler(opt, sched, base):
    S = torch.optim.lr_scheduler
    kind = sched["kind"]
    if kind == "constant":
        return None
    if kind == "cosine":
        return S.CosineAnnealingLR(opt, T_max=sched["steps"], eta_min=sched["min_ratio"] * base)
    if kind == "linear":
        return S.LinearLR(opt, start_factor=1.0, end_factor=sched["min_ratio"], total_iters=sched["steps"])
    w = sched["warmup"]
    warm = S.LinearLR(opt, start_factor=1.0 / w, end_factor=1.0, total_iters=w - 1)
    if kind == "warmup":
        return warm
    if kind == "warmup_cosine":
        after = S.CosineAnnealingLR(opt, T_max=sched["steps"], eta_min=sched["min_ratio"] * base)
    else:
        after = S.LinearLR(opt, start_factor=1.0, end_factor=sched["min_ratio"], total_iters=sched["steps"])
    return S.SequentialLR(opt, [warm, after], milestones=[w])


def decayed(kind, groups):
    """distill's DecayGroups: weights always; biases, norms, embeddings when switched on."""
    return kind == "weight" or groups.get({"bias": "biases", "norm": "norms", "embedding": "embeddings"}[kind], False)


def make_optimizer(kind, base, cfg, params):
    groups = cfg.get("decay", {})
    wd = cfg.get("weight_decay", 0.0)
    decay = [p for (name, k, _), p in zip(PARAMS, params) if decayed(k, groups)]
    rest = [p for (name, k, _), p in zip(PARAMS, params) if not decayed(k, groups)]
    pg = [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]
    if kind == "sgd":
        return torch.optim.SGD(pg, lr=base, momentum=cfg.get("momentum", 0.0), dampening=cfg.get("dampening", 0.0),
                               nesterov=cfg.get("nesterov", False), foreach=False)
    betas = (cfg["beta1"], cfg["beta2"])
    if kind == "adam":
        return torch.optim.Adam(pg, lr=base, betas=betas, eps=cfg["eps"], foreach=False)
    return torch.optim.AdamW(pg, lr=base, betas=betas, eps=cfg["eps"], foreach=False)


def main():
    # SequentialLR calls scheduler.step(0) at its milestone, which torch 1.13 warns about; it is intended.
    warnings.filterwarnings("ignore", message="The epoch parameter")
    gen = torch.Generator().manual_seed(SEED)
    init = {name: torch.randn(shape, generator=gen, dtype=torch.float32) for name, _, shape in PARAMS}
    # Noise scale varies per step so that clipping at 1.5 is active on some steps only.
    scales = torch.tensor([0.05, 0.6, 0.1, 1.2, 0.08, 0.3, 2.0, 0.05, 0.15, 0.9] * 2)
    noise = {name: torch.randn((STEPS,) + shape, generator=gen, dtype=torch.float32) * scales.view(-1, *[1] * len(shape))
             for name, _, shape in PARAMS}

    tensors = {}
    for name, _, _ in PARAMS:
        tensors["init." + name] = init[name]
    for name, _, _ in PARAMS:
        tensors["noise." + name] = noise[name].contiguous()

    cases = []
    clipped_steps = 0
    for oname, (okind, base, cfg) in OPTIMIZERS.items():
        for sname, sched in SCHEDULES.items():
            for cname, clip in CLIPS.items():
                case = f"{oname}.{sname}.{cname}"
                params = [init[name].clone().requires_grad_(True) for name, _, _ in PARAMS]
                opt = make_optimizer(okind, base, cfg, params)
                scheduler = make_scheduler(opt, sched, base)
                lrs, norms = [], []
                traj = {name: [] for name, _, _ in PARAMS}
                for t in range(STEPS):
                    for (name, _, _), p in zip(PARAMS, params):
                        p.grad = noise[name][t] + PULL * p.detach()
                    norm = torch.norm(torch.stack([torch.norm(p.grad.detach(), 2.0) for p in params]), 2.0)
                    norms.append(float(norm))
                    if clip > 0:
                        returned = torch.nn.utils.clip_grad_norm_(params, clip)
                        assert float(returned) == float(norm)
                        clipped_steps += float(norm) > clip
                    lr = opt.param_groups[0]["lr"]
                    assert all(g["lr"] == lr for g in opt.param_groups)
                    expect = closed_form_lr(sched, base, t)
                    assert abs(lr - expect) <= 1e-12 * base, (case, t, lr, expect)
                    lrs.append(lr)
                    opt.step()
                    if scheduler is not None:
                        scheduler.step()
                    for (name, _, _), p in zip(PARAMS, params):
                        traj[name].append(p.detach().clone())
                tensors[case + ".lr"] = torch.tensor(lrs, dtype=torch.float64)
                tensors[case + ".grad_norm"] = torch.tensor(norms, dtype=torch.float64)
                for name, _, _ in PARAMS:
                    tensors[case + "." + name] = torch.stack(traj[name]).contiguous()
                schedule = dict(sched)
                schedule["base_lr"] = base
                cases.append({"name": case, "optimizer": {"kind": okind, "config": cfg}, "schedule": schedule, "clip": clip})

    metadata = {
        "steps": str(STEPS),
        "pull": str(PULL),
        "params": json.dumps([{"name": n, "kind": k} for n, k, _ in PARAMS]),
        "cases": json.dumps(cases),
        "torch": torch.__version__,
    }
    path = os.path.join(HERE, "fixtures", "optim_golden.safetensors")
    write_safetensors(path, tensors, metadata)
    back, meta = read_safetensors(path)
    assert set(back) == set(tensors) and meta["steps"] == str(STEPS)
    print(f"wrote {path}: {len(cases)} cases x {STEPS} steps, clipping active on {clipped_steps} case-steps, "
          f"{os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
