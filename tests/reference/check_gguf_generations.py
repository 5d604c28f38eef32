#!/usr/bin/env python3
"""llama.cpp runs distill's GGUF exports of every tensor type as distill's own inference runs them.

Run on request, not in CI (it needs llama.cpp, built from source by llama-cpp-python from PyPI):
    pip install llama-cpp-python numpy
    cmake --build build --target gguf_generations
    build/tests/gguf_generations /tmp/gguf-generations
    python tests/reference/check_gguf_generations.py /tmp/gguf-generations

gguf_generations (tests/reference/gguf_generations.cpp) writes, for gpt2, llama, qwen2 and phi3
students of width 256, the GGUF export in f32, f16, q8_0, q4_0 and q4_k and beside each file distill's
inference of that type: greedy continuations of 50 prompts and the first prompt's logits. This script
loads each file in llama.cpp (KV cache in f32, so that only the matrix products differ) and requires:
- f32 and f16: logits within 1e-3 of the logit range of distill's;
- q8_0, q4_0, q4_k: the same greedy continuation on >= 95% of the prompts, and distill's quantization
  error (its quantized logits against its f32 ones) equal to llama.cpp's within fp32 noise: the two
  quantized logits within 1e-3 of the range, against a quantization error itself far larger.
"""
import json
import sys
from pathlib import Path

import numpy as np
from llama_cpp import Llama

GGML_TYPE_F32 = 0


def run(path: Path, prompts, steps: int):
    llm = Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2,
                type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    llm.reset()
    llm.eval(prompts[0])
    logits = np.array(llm.scores[: len(prompts[0])], dtype=np.float32)
    generations = []
    for p in prompts:
        llm.reset()
        llm.eval(p)
        out = []
        for s in range(steps):
            out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            if s + 1 < steps:
                llm.eval([out[-1]])
        generations.append(out)
    return logits, generations


def main(directory: Path) -> int:
    failures = 0
    print(f"{'arch':6s} {'type':5s} {'max|distill-llama|':>18s} {'range':>7s} {'quant err distill':>17s} "
          f"{'quant err llama':>15s} {'same continuations':>19s}")
    for arch in ("gpt2", "llama", "qwen2", "phi3"):
        f32 = None
        for kind in ("f32", "f16", "q8_0", "q4_0", "q4_k"):
            ours = json.loads((directory / f"{arch}-{kind}.json").read_text())
            prompts, generations = ours["prompts"], ours["generations"]
            distill_logits = np.array(ours["logits"], dtype=np.float32).reshape(len(prompts[0]), -1)
            llama_logits, llama_generations = run(directory / ours["gguf"], prompts, len(generations[0]))
            span = float(distill_logits.max() - distill_logits.min())
            diff = float(np.abs(distill_logits - llama_logits).max())
            same = float(np.mean([a == b for a, b in zip(generations, llama_generations)]))
            if kind == "f32":
                f32 = (distill_logits, llama_logits)
                err_distill = err_llama = 0.0
            else:
                err_distill = float(np.abs(distill_logits - f32[0]).max())
                err_llama = float(np.abs(llama_logits - f32[1]).max())
            ok = diff <= 1e-3 * span
            if kind in ("q8_0", "q4_0", "q4_k"):
                ok = ok and same >= 0.95
            failures += not ok
            print(f"{arch:6s} {kind:5s} {diff:18.3e} {span:7.2f} {err_distill:17.3e} {err_llama:15.3e} "
                  f"{same:19.2f}  {'ok' if ok else 'FAIL'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
