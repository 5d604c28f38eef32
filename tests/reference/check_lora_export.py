"""Checks distill's two LoRA exports of the fixture models (gpt2, llama) against distill's own logits
(the step of tests/unit-lora.cpp's export test that CI cannot run without Python):

    DISTILL_KEEP_LORA_EXPORT=/tmp/lora-export /tmp/lora-test -tc='lora: the merged export*'
    ~/.cache/distill/torch-venv/bin/python tests/reference/check_lora_export.py /tmp/lora-export

For each family: the adapter (adapter/: adapter_model.safetensors, adapter_config.json) loads with
PeftModel.from_pretrained on the base fixture (fixtures/hf/<family>), and the merged weights (merged/)
load with AutoModelForCausalLM, both without missing or unexpected weights; each model's logits on the
golden tokens must equal distill's (distill_logits.safetensors) to max |diff| <= 1e-4. Exits 1 otherwise.
"""
import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))


def check(root, family):
    ours = load_file(os.path.join(root, family, "distill_logits.safetensors"))["logits"]
    tokens = load_file(os.path.join(HERE, "fixtures", "lora", f"{family}_golden.safetensors"))["tokens"]
    base = AutoModelForCausalLM.from_pretrained(os.path.join(HERE, "fixtures", "hf", family),
                                                attn_implementation="eager").eval()
    adapted = PeftModel.from_pretrained(base, os.path.join(root, family, "adapter")).eval()
    merged, info = AutoModelForCausalLM.from_pretrained(os.path.join(root, family, "merged"), output_loading_info=True,
                                                        attn_implementation="eager")
    problems = {k: v for k, v in info.items() if v}
    with torch.no_grad():
        peft_diff = float((adapted(input_ids=tokens).logits - ours).abs().max())
        merged_diff = float((merged.eval()(input_ids=tokens).logits - ours).abs().max())
    print(f"{family}: PEFT adapter max |logit diff| {peft_diff:.3g}; merged {type(merged).__name__} "
          f"max |logit diff| {merged_diff:.3g}, loading problems {problems or 'none'}")
    return not problems and peft_diff <= 1e-4 and merged_diff <= 1e-4


def main(root):
    ok = [check(root, f) for f in ("gpt2", "llama")]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
