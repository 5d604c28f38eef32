#!/usr/bin/env python3
"""llama.cpp reference for bench_generate --quantize: greedy batch-1 generation from a GGUF file
distill exported (the same model and weights bench_generate measures), through llama-cpp-python.

The prompt is --prompt random lowercase byte tokens; the special tokens' embedding rows are zero in
the exported model, so greedy decoding generates exactly --new tokens, as in bench_generate.cpp.
Each new token is one eval() and one argmax in Python; that per-token overhead (tens of
microseconds) is part of the measured time, as it is for every user of llama-cpp-python.
Prints one JSON line: {"impl": "llama.cpp", "llama_cpp_python": ..., "tokens_per_s": ..., ...}

    python3 benchmarks/reference/bench_generate_llamacpp.py --gguf model.gguf --prompt 32 --new 128
"""
import argparse
import json
import random
import time

import llama_cpp
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    llm = llama_cpp.Llama(model_path=a.gguf, n_ctx=a.prompt + a.new, n_batch=a.prompt, n_threads=a.threads,
                          n_threads_batch=a.threads, logits_all=True, verbose=False)
    rng = random.Random(1)
    prompt = [256] + [ord("a") + rng.randrange(26) for _ in range(a.prompt - 1)]  # <|bos|> + letters

    def run() -> float:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        for _ in range(a.new):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([token])
        return time.perf_counter() - t0

    run()  # warm-up
    best = min(run() for _ in range(a.reps))
    print(json.dumps({"impl": "llama.cpp", "llama_cpp_python": llama_cpp.__version__,
                      "tokens_per_s": a.new / best, "ms_per_sequence": best * 1e3, "batch": 1,
                      "threads": a.threads}))


if __name__ == "__main__":
    main()
