#!/usr/bin/env python3
"""Golden fixtures for on-policy distillation (GKD) against TRL's GKDTrainer.

Run from anywhere:  python3 tests/reference/make_gkd_golden.py   (needs torch, transformers, trl)

A tiny GPT-2 student and a wider GPT-2 teacher (transformers' GPT2LMHeadModel, which distill loads
with io::hf) see one batch of two prompts. Per case:
  lambda = 0: the batch's dataset responses, labels as TRL's DataCollatorForChatML makes them
              (-100 on the prompt and on padding);
  lambda = 1: fixed "student samples" (sampling RNGs differ between libraries), turned into
              input_ids / attention_mask / labels by TRL's own GKDTrainer.generate_on_policy_outputs
              (a stand-in model whose generate() returns them: everything after the first EOS is
              masked, the EOS itself counts).
The loss is TRL's GKDTrainer.compute_loss (causal shift, GKDTrainer.generalized_jsd_loss with the
trainer's beta and its default temperature 1, batchmean over the response tokens). One optimizer
step follows as transformers' Trainer takes it: clip_grad_norm_(max_grad_norm = 1), torch AdamW
with weight decay on every parameter but biases and LayerNorm weights
(Trainer.get_decay_parameter_names), at the first step's learning rate.

Everything is computed in float64 from the float32 weights written to the fixtures, so the float32
weights are exactly the ones used.

Writes (under fixtures/):
  gkd/student/, gkd/teacher/          config.json + model.safetensors (float32)
  gkd/after_<case>.safetensors        the student's parameters after the step (transformers' names)
  gkd_golden.json                     the cases: tokens, prompt lengths, responses, loss, settings
"""

import json
import os
import shutil
import sys
from types import SimpleNamespace

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, Trainer
from trl.experimental.gkd import GKDTrainer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")
GKD = os.path.join(OUT, "gkd")

V, CTX, PAD, EOS = 24, 16, 0, 2
LR, BETAS, EPS, WD, MAX_GRAD_NORM = 1e-2, (0.9, 0.999), 1e-8, 0.01, 1.0

# Two prompts of the same length: TRL pads prompts on the left, distill on the right; with equal
# lengths neither pads them and the positions agree.
PROMPTS = [[1, 5, 9, 3], [1, 7, 4, 11]]
DATA_RESPONSES = [[6, 8, 13, 2], [10, 2]]  # the dataset's answers (end with EOS)
STUDENT_SAMPLES = [[14, 3, 3, 19, 7], [21, 17, 2]]  # row 0 reached max_new_tokens; row 1 ended at EOS
MAX_NEW_TOKENS = 5

CASES = [
    {"name": "lambda0_beta0.5", "lambda": 0, "beta": 0.5},
    {"name": "lambda1_beta0.5", "lambda": 1, "beta": 0.5},
    {"name": "lambda0_beta0", "lambda": 0, "beta": 0.0},
    {"name": "lambda1_beta1", "lambda": 1, "beta": 1.0},
]


def make_model(seed, n_embd, n_layer, n_head, n_inner):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=V, n_positions=CTX, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_inner=n_inner,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():  # larger than GPT-2's init: distributions far from uniform, visible gradients
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.3 if p.dim() > 1 else 0.1)
            if "ln_" in name and name.endswith("weight"):
                p.add_(1.0)
    return model


def dataset_inputs():
    """TRL's collator convention: prompt + response, right-padded; labels -100 on prompt and padding."""
    L = max(len(p) + len(r) for p, r in zip(PROMPTS, DATA_RESPONSES))
    ids, att, labels = [], [], []
    for p, r in zip(PROMPTS, DATA_RESPONSES):
        seq = p + r
        n = len(seq)
        ids.append(seq + [PAD] * (L - n))
        att.append([1] * n + [0] * (L - n))
        labels.append([-100] * len(p) + r + [-100] * (L - n))
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(att), "labels": torch.tensor(labels)}


class FixedSamples:
    """Stands in for the student in GKDTrainer.generate_on_policy_outputs: generate() returns the
    prompts followed by the fixed samples, padded after them as transformers' generate pads."""

    def generate(self, input_ids, attention_mask, generation_config, return_dict_in_generate):
        P = input_ids.shape[1]
        rows = [list(map(int, p)) + s + [PAD] * (MAX_NEW_TOKENS - len(s)) for p, s in zip(input_ids, STUDENT_SAMPLES)]
        assert all(len(r) == P + MAX_NEW_TOKENS for r in rows)
        return SimpleNamespace(sequences=torch.tensor(rows))


def on_policy_inputs():
    prompts = torch.tensor(PROMPTS)
    inputs = {"prompts": prompts, "prompt_attention_mask": torch.ones_like(prompts)}
    gen = SimpleNamespace(eos_token_id=EOS)
    ids, att, labels = GKDTrainer.generate_on_policy_outputs(FixedSamples(), inputs, gen)
    return {"input_ids": ids, "attention_mask": att, "labels": labels}


def run_case(case, student32, teacher32):
    student = GPT2LMHeadModel(student32.config)
    student.load_state_dict(student32.state_dict())
    student = student.double().train()
    teacher = GPT2LMHeadModel(teacher32.config)
    teacher.load_state_dict(teacher32.state_dict())
    teacher = teacher.double()
    inputs = dataset_inputs() if case["lambda"] == 0 else on_policy_inputs()
    # what compute_loss reads of the trainer: the teacher, beta and TRL's own loss function
    trainer = SimpleNamespace(teacher_model=teacher, beta=case["beta"],
                              generalized_jsd_loss=GKDTrainer.generalized_jsd_loss)
    loss = GKDTrainer.compute_loss(trainer, student, inputs)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(student.parameters(), MAX_GRAD_NORM)
    decay = set(Trainer.get_decay_parameter_names(None, student))
    named = list(student.named_parameters())
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": WD},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS).step()
    # every name of the state dict (the tied head under both of its names), as float32
    after = {n: p.detach().float().clone() for n, p in student.state_dict().items()}
    save_file(after, os.path.join(GKD, f"after_{case['name']}.safetensors"))
    # the response tokens the loss counts, per row, as distill's batch lists them
    labels = inputs["labels"]
    responses = [[int(t) for t in row if t != -100] for row in labels]
    return {**case, "input_ids": inputs["input_ids"].tolist(), "responses": responses,
            "loss": float(loss), "grad_norm": float(norm),
            "decayed": sorted(decay), "counted_tokens": int((labels[:, 1:] != -100).sum())}


def main():
    shutil.rmtree(GKD, ignore_errors=True)
    os.makedirs(GKD)
    student = make_model(2412, n_embd=16, n_layer=2, n_head=2, n_inner=32)
    teacher = make_model(2413, n_embd=24, n_layer=2, n_head=3, n_inner=48)
    student.save_pretrained(os.path.join(GKD, "student"), safe_serialization=True)
    teacher.save_pretrained(os.path.join(GKD, "teacher"), safe_serialization=True)
    for d in ("student", "teacher"):  # only what distill reads
        for f in os.listdir(os.path.join(GKD, d)):
            if f not in ("config.json", "model.safetensors"):
                os.remove(os.path.join(GKD, d, f))
    cases = [run_case(c, student, teacher) for c in CASES]
    import trl
    import transformers
    golden = {
        "generator": "tests/reference/make_gkd_golden.py",
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        "prompts": PROMPTS, "pad": PAD, "eos": EOS, "max_new_tokens": MAX_NEW_TOKENS,
        "optimizer": {"lr": LR, "beta1": BETAS[0], "beta2": BETAS[1], "eps": EPS, "weight_decay": WD,
                      "max_grad_norm": MAX_GRAD_NORM},
        "cases": cases,
    }
    with open(os.path.join(OUT, "gkd_golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    for c in cases:
        print(f"{c['name']}: loss {c['loss']:.9g} grad_norm {c['grad_norm']:.6g} tokens {c['counted_tokens']}")


if __name__ == "__main__":
    sys.exit(main())
