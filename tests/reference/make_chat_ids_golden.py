#!/usr/bin/env python3
"""Golden ids for data::ChatTokenizer over published tokenizers (tests/unit-tokenizer.cpp): for the
committed fixture tokenizers with a model family's chat template, the prompt ids transformers'
apply_chat_template(add_generation_prompt=True, tokenize=True) gives, an answer's ids (its text
encoded without special tokens, then the token that ends the assistant turn) and the text those
answer ids decode to with skip_special_tokens=True. Reads fixtures/tokenizers/ (written by
make_tokenizer_golden.py), writes fixtures/tokenizers/chat_ids.json.
    pip install tokenizers transformers
    python3 tests/reference/make_chat_ids_golden.py
"""
import json
import os

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from make_tokenizer_golden import CHATML_TEMPLATE, CONVERSATIONS, LLAMA3_TEMPLATE, OUT, PHI3_TEMPLATE, QWEN2_TEMPLATE

ANSWERS = ["4", "Hello, wörld! 👋 Ça va?", "  two  spaces\nand a newline  ", "数字 1234 и кириллица"]

# (fixture tokenizer, template, bos, eos, the token that ends an assistant turn)
CASES = [
    ("qwen2", "chatml", CHATML_TEMPLATE, None, "<|im_end|>", "<|im_end|>"),
    ("qwen2", "qwen2", QWEN2_TEMPLATE, None, "<|im_end|>", "<|im_end|>"),
    ("llama3", "llama3", LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"),
    ("llama2", "phi3", PHI3_TEMPLATE, "<s>", "</s>", "<|end|>"),
]


def main():
    out = []
    for fixture, name, template, bos, eos, end in CASES:
        base = Tokenizer.from_file(os.path.join(OUT, fixture, "tokenizer.json"))
        fast = PreTrainedTokenizerFast(tokenizer_object=base, bos_token=bos, eos_token=eos)
        prompts = []
        for c in CONVERSATIONS:
            ids = fast.apply_chat_template(c, chat_template=template, tokenize=True, add_generation_prompt=True)
            prompts.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))  # transformers 5: a BatchEncoding
        end_id = fast.convert_tokens_to_ids(end)
        answers = [fast.encode(a, add_special_tokens=False) + [end_id] for a in ANSWERS]
        decoded = [fast.decode(ids, skip_special_tokens=True) for ids in answers]
        out.append({"tokenizer": fixture, "name": name, "chat_template": template, "bos_token": bos,
                    "eos_token": eos, "prompts": prompts, "answers": answers, "decoded": decoded})
        print(f"{fixture} + {name}: prompt lengths {[len(p) for p in prompts]}")
    with open(os.path.join(OUT, "chat_ids.json"), "w", encoding="utf-8") as f:
        json.dump({"conversations": CONVERSATIONS, "answers": ANSWERS, "cases": out}, f, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
