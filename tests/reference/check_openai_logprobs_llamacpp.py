#!/usr/bin/env python3
"""distill's OpenAI teacher against llama.cpp's OpenAI-compatible server: the server's
log-probabilities, mapped by distill onto the student's ids, equal llama.cpp's own.

Run on request, not in CI (it builds llama.cpp through llama-cpp-python from PyPI):
    CMAKE_ARGS="-DGGML_NATIVE=ON" pip install 'llama-cpp-python[server]' numpy
    cmake --build build --target openai_logprobs       # needs distill::http and distill::text
    python tests/reference/check_openai_logprobs_llamacpp.py --helper build/tests/openai_logprobs

1. `openai_logprobs export` writes a GGUF student (Qwen2 blocks, the fixtures/gguf/qwen2
   byte-level BPE tokenizer with its ChatML tokens, random weights whose logits spread over several
   units) with distill's GGUF exporter.
2. `python -m llama_cpp.server --model X.gguf --logits_all true --chat_format chatml` serves it on
   127.0.0.1 (the server no one here wrote).
3. `openai_logprobs query` runs teacher::OpenAI<data::HfTokenizer> (tokenizer = the fixture's
   tokenizer.json, the student's) against /v1/chat/completions: greedy answers with
   top_logprobs = K, mapped onto the student's ids.
4. Independently, llama_cpp.Llama(logits_all=True) evaluates each prompt's tokens (the ChatML
   prompt llama-cpp-python's formatter renders, tokenized by llama.cpp) followed by llama.cpp's own
   greedy continuation, and takes each position's log_softmax (float64) and top-K ids.

Checks, one PASS/FAIL line each: the prompt's token count equals the server's usage; distill's
answer ids equal llama.cpp's greedy ids; at every position every top-k slot distill mapped holds
llama.cpp's id at that rank among the mapped ones with the same log-probability (within 1e-4),
i.e. distill's slots are llama.cpp's top-K with the unmapped entries left out; and every llama.cpp
top-K id distill left unmapped is one the server cannot name: llama-cpp-python names a token by
`detokenize([id])` (special tokens rendered as nothing) decoded with errors="ignore", with no
`bytes`, as the key of a dict, so a token whose bytes are not UTF-8 on their own, a special token
and a token whose text another top-K token shares arrive empty or not at all; and distill counted
each one. Exit status 1 on any FAIL.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from llama_cpp import Llama
from llama_cpp import llama_chat_format

HERE = Path(__file__).resolve().parent
TOKENIZER = HERE / "fixtures" / "gguf" / "qwen2" / "tokenizer.json"
PROMPTS = ["Hello there!", "What is 2 + 2?", "Write a haiku about the sea.", "Übersetze: guten Morgen",
           "list three colours", "Tell me a story about a robot.", "ok", "¿Qué hora es?"]
failures = 0


def check(name, ok, detail=""):
    global failures
    print(("PASS " if ok else "FAIL ") + name + ("" if ok or not detail else ": " + str(detail)[:600]))
    if not ok:
        failures += 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--helper", default="build/tests/openai_logprobs")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=24)
    ap.add_argument("--work", default="")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="openai-logprobs-"))
    work.mkdir(parents=True, exist_ok=True)
    gguf = work / "student.gguf"
    subprocess.run([a.helper, "export", str(gguf)], check=True)

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
         "--logits_all", "true", "--chat_format", "chatml", "--n_ctx", "256", "--model_alias", "student"],
        stdout=open(work / "server.log", "w"), stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1).read()
                break
            except Exception:
                if server.poll() is not None:
                    sys.exit("llama_cpp.server exited; see " + str(work / "server.log"))
                time.sleep(0.5)
        q = subprocess.run([a.helper, "query", f"http://127.0.0.1:{port}/v1", str(TOKENIZER), str(a.k),
                            str(a.max_new)] + PROMPTS, check=True, capture_output=True, text=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    lines = [json.loads(x) for x in q.stdout.splitlines() if x.strip()]
    answers, stats = lines[:-1], lines[-1]["stats"]
    (work / "distill.jsonl").write_text(q.stdout)
    print("distill's teacher:", json.dumps(stats))

    llm = Llama(model_path=str(gguf), n_ctx=256, logits_all=True, verbose=False)
    k = a.k
    totals = dict(positions=0, slots=0, mapped=0, equal=0, unmapped_explained=0, max_abs_diff=0.0)
    for ans in answers:
        name = repr(ans["prompt"])
        if not ans["ok"]:
            check(f"{name}: answered", False, ans["error"])
            continue
        prompt = llama_chat_format.format_chatml(messages=[{"role": "user", "content": ans["prompt"]}]).prompt
        # as llama-cpp-python's completion tokenizes a prompt: BOS when the vocabulary asks for it
        ptoks = ([llm.token_bos()] if llm._model.add_bos_token() else []) + llm.tokenize(
            prompt.encode("utf-8"), add_bos=False, special=True)
        check(f"{name}: prompt tokens = the server's usage ({len(ptoks)})", len(ptoks) == ans["prompt_tokens"],
              f"{len(ptoks)} vs {ans['prompt_tokens']}")
        # llama.cpp's own greedy continuation and every position's log-probabilities
        n = len(ans["tokens"])
        llm.reset()
        llm.eval(ptoks)
        ids, rows = [], []
        for j in range(n):
            row = log_softmax(llm.scores[len(ptoks) + j - 1])
            rows.append(row)
            ids.append(int(np.argmax(row)))
            llm.eval([ids[-1]])
        check(f"{name}: answer ids = llama.cpp's greedy ids ({n} tokens)", ids == ans["tokens"],
              f"{ids} vs {ans['tokens']}")
        bad = []
        for j, row in enumerate(rows):
            ref = [int(i) for i in np.argsort(-row, kind="stable")[:k]]
            got = list(zip(ans["top_ids"][j * k:(j + 1) * k], ans["top_logprobs"][j * k:(j + 1) * k]))
            mapped = [(i, lp) for i, lp in got if i >= 0]
            ref_mapped = [i for i in ref if i in {m for m, _ in mapped}]
            totals["positions"] += 1
            totals["slots"] += k
            totals["mapped"] += len(mapped)
            if [i for i, _ in mapped] != ref_mapped or any(i not in ref for i, _ in mapped):
                bad.append(f"position {j}: ids {[i for i, _ in mapped]} vs llama.cpp's top-{k} {ref}")
                continue
            for i, lp in mapped:
                d = abs(lp - row[i])
                totals["max_abs_diff"] = max(totals["max_abs_diff"], d)
                if d > 1e-4:
                    bad.append(f"position {j}: id {i} log-probability {lp} vs llama.cpp's {row[i]}")
                else:
                    totals["equal"] += 1
            # the ids distill left out: those the server cannot name (it names a token by
            # detokenize([id]) without special tokens, decoded with errors="ignore", as a dict key)
            texts = {}
            for i in ref:
                texts.setdefault(llm.detokenize([i]).decode("utf-8", errors="ignore"), []).append(i)
            for i in ref:
                if i in {m for m, _ in mapped}:
                    continue
                raw = llm.detokenize([i])
                try:
                    raw.decode("utf-8")
                    unnameable = len(texts[raw.decode("utf-8")]) > 1 or raw == b""
                except UnicodeDecodeError:
                    unnameable = True
                if unnameable:
                    totals["unmapped_explained"] += 1
                else:
                    bad.append(f"position {j}: llama.cpp's top-{k} id {i} ({raw!r}) was not mapped")
        check(f"{name}: mapped top-{k} entries = llama.cpp's (ids, order, log-probabilities)", not bad, bad[:3])
    m = stats["mapping"]
    check("every empty slot is counted by distill (top_entries - mapped = unmapped + ambiguous + duplicate + missing)",
          m["top_entries"] - totals["mapped"] == m["top_unmapped"] + m["top_ambiguous"] + m["top_duplicate"] +
          m["top_missing"], json.dumps(m))
    check("every llama.cpp top-k id distill left out is one the server cannot name",
          totals["slots"] - totals["mapped"] == totals["unmapped_explained"],
          f"{totals['slots'] - totals['mapped']} empty slots, {totals['unmapped_explained']} explained")
    print("figures:", json.dumps(totals))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
