#!/usr/bin/env python3
"""llama.cpp runs distill's GGUF exports: logits equal transformers' on the same checkpoint, and
llama.cpp tokenizes as the Hugging Face tokenizer.json the export was made from.

Run on request, not in CI (it builds llama.cpp through llama-cpp-python from PyPI):
    pip install llama-cpp-python torch transformers
    mkdir -p /tmp/gguf-exports
    DISTILL_KEEP_GGUF_EXPORT=/tmp/gguf-exports build/tests/distill_tests -tc='*converter*'
    python tests/reference/check_gguf_llamacpp.py /tmp/gguf-exports

For each fixture of fixtures/gguf/ (gpt2, llama with Llama 3 rope scaling, qwen2, phi3, and llama2: a
Llama with a SentencePiece-style tokenizer) it loads
distill's f32 and q8_0 exports in llama.cpp, evaluates a prompt, and compares every position's logits
with transformers' forward of the checkpoint the export was made from: f32 must agree within 1e-3 of
the logit range (llama.cpp keeps its KV cache in f16). q8_0 is reported only: its difference from the
fp32 checkpoint is the quantization error. That llama.cpp's quantized files compute what distill's
own quantized inference computes is check_gguf_generations.py's check.

Tokenization: for each fixture, llama.cpp's tokenizer on distill's f32 export (vocab only) must give
the ids Hugging Face `tokenizers` gives on the fixture's tokenizer.json, for every text of a sample:
make_tokenizer_golden.py's test strings (spaces, digits, scripts, emoji through byte fallback,
control characters), chat-formatted text with the special tokens, and 2000 seeded random strings
mixing vocabulary pieces, troublesome characters and special tokens; both without and with the
tokenizer's own special tokens (BOS). A directory of exports of other tokenizer.json files can be
checked too: --tokenizer TOKENIZER_JSON EXPORT_GGUF.
"""
import json
import random
import sys
import unicodedata
from pathlib import Path

import numpy as np
import torch
import transformers
from llama_cpp import Llama
from tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "gguf"
sys.path.insert(0, str(HERE))
from make_tokenizer_golden import POOL, TEST_STRINGS  # noqa: E402


def sample_texts(hf: Tokenizer, n_random: int = 2000) -> list:
    specials = [t.content for t in hf.get_added_tokens_decoder().values()]
    pieces = [t.replace("\u2581", " ").replace("\u0120", " ") for t in hf.get_vocab() if not t.startswith("<")]
    chat = "".join(f"{s}\nHello, 123 wörld 😀!{s}  \n" for s in specials)
    rng = random.Random(0)

    def random_text() -> str:
        parts = []
        for _ in range(rng.randint(1, 30)):
            r = rng.random()
            parts.append(rng.choice(pieces) if r < 0.5 else rng.choice(POOL) if r < 0.9 else rng.choice(specials))
        return "".join(parts)

    return list(TEST_STRINGS) + [chat, " " + chat, "<0x41> is text", "  x"] + [random_text() for _ in range(n_random)]


def check_tokenization(tokenizer_json: Path, export: Path) -> int:
    """Texts on which llama.cpp's ids differ from tokenizers' (printed with the first few)."""
    hf = Tokenizer.from_file(str(tokenizer_json))
    llm = Llama(model_path=str(export), vocab_only=True, verbose=False)
    texts = sample_texts(hf)
    # llama.cpp does not normalize Unicode: a tokenizer with an NFC normalizer (Qwen2's) agrees on
    # NFC text, which the caller has to give it (docs/deployment.md)
    nfc = json.loads(tokenizer_json.read_text()).get("normalizer") == {"type": "NFC"}
    if nfc:
        print(f"  {tokenizer_json.parent.name}: NFC normalizer; llama.cpp is given the NFC-normalized texts")
    failures = 0
    for add_special in (False, True):
        wrong = []
        for text in texts:
            expect = hf.encode(text, add_special_tokens=add_special).ids
            given = unicodedata.normalize("NFC", text) if nfc else text
            got = llm.tokenize(given.encode("utf-8"), add_bos=add_special, special=True)
            if got != expect:
                wrong.append((text, expect, got))
        for text, expect, got in wrong[:3]:
            print(f"    {text[:60]!r}: tokenizers {expect[:12]} llama.cpp {got[:12]}")
        print(f"  tokenization of {export.name} (special tokens added: {add_special}): "
              f"{len(texts) - len(wrong)}/{len(texts)} texts give the same ids  {'ok' if not wrong else 'FAIL'}")
        failures += len(wrong)
    return failures


def main(exports: Path) -> int:
    failures = 0
    rng = np.random.default_rng(0)
    for arch in ("gpt2", "llama", "qwen2", "phi3", "llama2"):
        model = transformers.AutoModelForCausalLM.from_pretrained(FIXTURES / arch, dtype=torch.float32).eval()
        vocab = model.config.vocab_size
        tokens = [int(t) for t in rng.integers(0, vocab, size=24)]
        with torch.no_grad():
            expect = model(torch.tensor([tokens])).logits[0].numpy()
        span = float(expect.max() - expect.min())
        for kind in ("f32", "q8_0"):
            llm = Llama(model_path=str(exports / f"{arch}-{kind}.gguf"), n_ctx=64, logits_all=True, verbose=False,
                        n_threads=1)
            llm.eval(tokens)
            got = np.array(llm.scores[: len(tokens)], dtype=np.float32)
            diff = float(np.abs(got - expect).max())
            agree = float((got.argmax(-1) == expect.argmax(-1)).mean())
            ok = diff <= 1e-3 * span if kind == "f32" else True
            failures += not ok
            print(f"{arch:6s} {kind:5s} max|Δlogit| {diff:.3e} (range {span:.2f})  greedy agreement {agree:.2f}  "
                  f"{('ok' if ok else 'FAIL') if kind == 'f32' else '(reported)'}")
        failures += check_tokenization(FIXTURES / arch / "tokenizer.json", exports / f"{arch}-f32.gguf") > 0
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--tokenizer":
        sys.exit(1 if check_tokenization(Path(sys.argv[2]), Path(sys.argv[3])) else 0)
    sys.exit(main(Path(sys.argv[1])))
