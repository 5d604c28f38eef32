"""Writes the LoRA fixtures of tests/unit-lora.cpp (committed; CI needs no Python).

Needs torch, transformers and peft (transformers 5.25, peft 0.21.2 were used):
    ~/.cache/distill/torch-venv/bin/pip install peft transformers
    ~/.cache/distill/torch-venv/bin/python tests/reference/make_lora_golden.py

For the committed tiny checkpoints fixtures/hf/gpt2 and fixtures/hf/llama (make_hf_golden.py) it
applies PEFT's LoRA (r 4, lora_alpha 6: scaling 1.5, no dropout), draws every lora_B (PEFT starts
them at zero) and runs transformers' shifted LM loss forward and backward:

fixtures/lora/{gpt2,llama}_golden.safetensors
    tokens (B,T) I64; logits (B,T,V); loss; every adapter's value under PEFT's saved name
    (`base_model.model.<module>.lora_{A,B}.weight`, as adapter_model.safetensors holds it) and its
    gradient under `grad.<that name>`.
fixtures/lora/gpt2-byte/
    a tiny random GPT2LMHeadModel over distill's byte tokenizer (vocabulary 263, context 96), as
    save_pretrained writes it: the Hugging Face student of the LoRA job in tests/cli/run_cli_tests.sh.

gpt2 targets c_attn (q|k|v as one adapter: distill's "qkv"), c_proj (attention output "o" and MLP
"down"), c_fc ("up"); llama targets q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj and
the untied lm_head.
"""
import os

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
HF = os.path.join(HERE, "fixtures", "hf")
OUT = os.path.join(HERE, "fixtures", "lora")

TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"],
}


def golden(family, seed):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(os.path.join(HF, family), torch_dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    cfg = LoraConfig(r=4, lora_alpha=6, lora_dropout=0.0, target_modules=TARGETS[family], task_type="CAUSAL_LM",
                     fan_in_fan_out=family == "gpt2")
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():  # PEFT's B starts at zero; a drawn B makes every path carry a gradient
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    for name, p in peft_model.named_parameters():  # PEFT freezes the base
        assert p.requires_grad == ("lora_" in name), name
    vocab = model.config.vocab_size
    tokens = torch.randint(0, vocab, (2, 7), generator=torch.Generator().manual_seed(seed + 1))
    out = peft_model(input_ids=tokens, labels=tokens)
    out.loss.backward()
    result = {"tokens": tokens.to(torch.int64), "logits": out.logits.detach(), "loss": out.loss.detach().reshape(1)}
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            saved = name.replace(".default", "")
            result[saved] = p.detach().clone()
            result["grad." + saved] = p.grad.detach().clone()
    os.makedirs(OUT, exist_ok=True)
    save_file({k: v.contiguous() for k, v in result.items()}, os.path.join(OUT, f"{family}_golden.safetensors"),
              metadata={"format": "pt"})
    print(family, "loss", float(out.loss), "adapters", sum(1 for k in result if k.startswith("base_model")))


def byte_student():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(2026120403)
    cfg = GPT2Config(vocab_size=263, n_positions=96, n_embd=32, n_layer=2, n_head=4, n_inner=64,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=1, eos_token_id=2)
    out = os.path.join(OUT, "gpt2-byte")
    GPT2LMHeadModel(cfg).save_pretrained(out, safe_serialization=True)
    gen = os.path.join(out, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)


if __name__ == "__main__":
    byte_student()
    golden("gpt2", 2026120401)
    golden("llama", 2026120402)
