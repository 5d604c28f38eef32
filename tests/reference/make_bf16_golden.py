"""Writes fixtures/bf16_golden.safetensors for tests/unit-bf16.cpp (committed; CI needs no Python):
the logits PyTorch gives the Hugging Face fixtures fixtures/hf/gpt2 and fixtures/hf/llama when their
GEMM matrices are stored in bf16 and every linear layer multiplies bf16-rounded operands with fp32
accumulation — what distill computes under precision::bf16 with bf16 weight storage. The
attention's own products (q·kᵀ, p·v), norms, softmax and activations stay fp32, as in distill.

    ~/.cache/distill/torch-venv/bin/python tests/reference/make_bf16_golden.py   (torch 2.x, transformers)

Keys, for m in gpt2, llama:
    {m}.tokens (B,T) I64
    {m}.logits_bf16 (B,T,V)  bf16 weights, bf16 operands, fp32 accumulation (the reference)
    {m}.logits_fp32 (B,T,V)  the same model in fp32 (how far bf16 moves the logits)
"""
import os

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "fixtures")


def bf16(t):
    # round to nearest even, as torch's .to(torch.bfloat16) and distill's storage do
    return t.to(torch.bfloat16).to(torch.float32)


def emulate_bf16_linears(model):
    """Rounds the stored matrices once and each linear layer's input per call (fp32 accumulation)."""
    matrices = ("wte", "embed_tokens", "c_attn", "c_proj", "c_fc", "q_proj", "k_proj", "v_proj", "o_proj",
                "gate_proj", "up_proj", "down_proj", "lm_head")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and any(m in name for m in matrices):
                p.copy_(bf16(p))
    for module in model.modules():
        kind = type(module).__name__
        if kind == "Linear":
            module.forward = (lambda m: lambda x: torch.nn.functional.linear(bf16(x), m.weight, m.bias))(module)
        elif kind == "Conv1D":  # GPT-2's (in, out) linear
            def conv(x, m=module):
                shape = x.size()[:-1] + (m.nf,)
                y = torch.mm(bf16(x).reshape(-1, x.size(-1)), m.weight) + m.bias
                return y.view(shape)
            module.forward = conv


def main():
    torch.set_num_threads(1)
    golden = {}
    for name, T in (("gpt2", 10), ("llama", 12)):
        path = os.path.join(FIX, "hf", name)
        ref = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="eager").eval()
        V = ref.config.vocab_size
        tokens = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(21))
        with torch.no_grad():
            fp32 = ref(tokens).logits
            emulate_bf16_linears(ref)
            lowp = ref(tokens).logits
        golden[f"{name}.tokens"] = tokens.to(torch.int64)
        golden[f"{name}.logits_bf16"] = lowp.contiguous()
        golden[f"{name}.logits_fp32"] = fp32.contiguous()
        print(name, "max |bf16 - fp32| =", float((lowp - fp32).abs().max()))
    save_file(golden, os.path.join(FIX, "bf16_golden.safetensors"), metadata={"format": "pt"})


if __name__ == "__main__":
    main()
