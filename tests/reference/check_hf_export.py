"""Checks that the models distill saved with io::hf::save (one per family: gpt2, llama, qwen2, phi3)
load in transformers with the logits of the original fixture models (the one step of that check CI
cannot run without Python):

    DISTILL_KEEP_HF_EXPORT=/tmp/hf-export build/tests/distill_tests -tc='hf: a saved student*'
    /tmp/venv-ref/bin/python tests/reference/check_hf_export.py /tmp/hf-export

Exits 1 unless transformers loads the export without missing or unexpected weights and its logits on
the golden tokens equal the golden logits exactly (the same weights, the same program).
"""
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))


def check(export, family):
    golden = load_file(os.path.join(HERE, "fixtures", "hf", f"{family}_golden.safetensors"))
    model, info = AutoModelForCausalLM.from_pretrained(export, output_loading_info=True, attn_implementation="eager")
    problems = {k: v for k, v in info.items() if v}
    with torch.no_grad():
        logits = model(golden["tokens"]).logits
    diff = float((logits - golden["logits"]).abs().max())
    print(f"{type(model).__name__} from {export}: loading problems {problems or 'none'}, max |logit diff| {diff:.3g}")
    return not problems and diff == 0.0


def main(root):
    ok = [check(os.path.join(root, f), f) for f in ("gpt2", "llama", "qwen2", "phi3")]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
