#!/usr/bin/env python3
"""distill's OpenAI teacher against llama.cpp's OpenAI-compatible server: the server's
log-probabilities, mapped by distill onto the student's ids, equal llama.cpp's own.

Run on request, not in CI (it builds llama.cpp through llama-cpp-python from PyPI):
    CMAKE_ARGS="-DGGML_NATIVE=ON" pip install 'llama-cpp-python[server]' numpy
    cmake --build build --target openai_logprobs       # needs distill::http and distill::text
    python tests/reference/check_openai_logprobs_llamacpp.py --helper build/tests/openai_logprobs

1. `openai_logprobs export` writes a GGUF student (Qwen2 blocks, the fixtures/gguf/qwen2
   byte-level BPE tokenizer with its ChatML tokens, random weights) with distill's GGUF exporter.
2. `python -m llama_cpp.server --model X.gguf --logits_all true --chat_format chatml` serves it on
   127.0.0.1 (the server no one here wrote).
3. `openai_logprobs query` runs teacher::OpenAI<data::HfTokenizer> (tokenizer = the fixture's
   tokenizer.json, the student's) against /v1/chat/completions: greedy answers (--temperature 0,
   the default; this random student answers newlines) with top_logprobs = K, mapped onto the
   student's ids. Sampled answers (--temperature 1) hold tokens that are part of a character, which
   llama-cpp-python names ""; where the reported tokens do not line up with the ids the tokenizer
   gives the answer's text, distill cannot recover them and fails those answers, counted.
4. Independently, llama_cpp.Llama(logits_all=True) evaluates each prompt's tokens (the ChatML
   prompt llama-cpp-python's formatter renders, tokenized by llama.cpp) followed by the answer's
   ids distill reports, and takes each position's log_softmax (float64) and top-K ids.
5. With --distill build/apps/distill, `distill generate` of a top-k job with the server as its
   teacher, and the same job with a student of another tokenizer, refused.

Checks, one PASS/FAIL line each: the prompt's token count equals the server's usage; the answer's
ids distill reports have, in llama.cpp, the log-probabilities the server reported for the sampled
tokens (within 1e-4; greedy: they are llama.cpp's argmax ids); an answer distill failed is one whose
sampled tokens neither map nor line up with its text (counted); at every position every top-k slot distill mapped holds
llama.cpp's id at that rank among the mapped ones with the same log-probability (within 1e-4),
i.e. distill's slots are llama.cpp's top-K with the unmapped entries left out (and, where the server's
collapsed entries left room, the sampled token it adds to each position); and every llama.cpp
top-K id distill left unmapped is one the server cannot name: llama-cpp-python names a token by
`detokenize([id])` (special tokens rendered as nothing) decoded with errors="ignore", with no
`bytes`, as the key of a dict, so a token whose bytes are not UTF-8 on their own and a special token
arrive as "", and a token whose text another token of the vocabulary also gets (" " for "Ġ" and for
"Ġâ", " \xE2") cannot be told from it; and distill counted each one. Exit status 1 on any FAIL.
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


def run_job(distill, work, port, k, temperature):
    """`distill generate` of a top-k job whose teacher is the server: the app picks the
    published-tokenizer teacher and the generate report counts how the tokens mapped; a student with
    another tokenizer is refused naming teacher.tokenizer. (The random student's greedy answers are
    newlines, which generate rejects as empty, so there is nothing to finetune on; the Distiller's
    finetune on mapped top-k data is tests/unit-openai-logprobs.cpp's.)"""
    (work / "train.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))

    def job(name, student_tokenizer):
        j = {"teacher": {"kind": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "model": "student",
                         "tokenizer": str(TOKENIZER), "concurrency": 1, "request_timeout_s": 300},
             "student": {"vocab_size": 1024, "context_length": 128, "d_model": 32, "n_layers": 1, "n_heads": 2,
                         "d_ff": 64},
             "tokenizer": str(student_tokenizer), "training_data": str(work / "train.jsonl"),
             "generation": {"temperature": temperature, "max_new_tokens": 16, "top_logprobs": k},
             "hyperparameters": {"batch_size": 4, "max_steps": 3},
             "loss": {"topk_soft_kl": {"weight": 1}, "hard_ce": {"weight": 1}},
             "baseline": {"enabled": False}, "output_dir": str(work / name)}
        path = work / (name + ".json")
        subprocess.run(["rm", "-rf", str(work / name)], check=True)
        path.write_text(json.dumps(j))
        return subprocess.run([distill, "generate", str(path)], capture_output=True, text=True)

    r = job("job", TOKENIZER.parent)
    check("distill generate with the server as teacher (top-k loss, published tokenizer)", r.returncode == 0,
          r.stderr[-800:])
    line = [x for x in r.stderr.splitlines() if "tokens mapped onto tokenizer" in x]
    print("distill generate:", line[0] if line else "(no mapping line)")
    report = work / "job" / "generate" / "synthetic.report.json"
    m = json.loads(report.read_text()).get("token_mapping", {}) if report.exists() else {}
    check("the generate report counts the mapping", m.get("top_entries", 0) > 0 and
          m["top_entries"] == m["tokens"] * k, json.dumps(m))
    other = HERE / "fixtures" / "gguf" / "gpt2"
    r = job("refused", other)
    check("a student with another tokenizer is refused, naming teacher.tokenizer",
          r.returncode == 2 and "teacher.tokenizer: names the endpoint's tokenizer" in r.stderr, r.stderr[-400:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--helper", default="build/tests/openai_logprobs")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=24)
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="the answers' sampling temperature (0, greedy: llama.cpp's argmax is checked too)")
    ap.add_argument("--work", default="")
    ap.add_argument("--distill", default="", help="the distill command (build/apps/distill): also run a job through it")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="openai-logprobs-"))
    work.mkdir(parents=True, exist_ok=True)
    gguf = work / "student.gguf"
    subprocess.run([a.helper, "export", str(gguf), "1"], check=True)

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
                            str(a.max_new), str(a.temperature)] + PROMPTS, check=True, capture_output=True, text=True)
        if a.distill:
            run_job(a.distill, work, port, a.k, a.temperature)
    finally:
        server.terminate()
        server.wait(timeout=30)
    lines = [json.loads(x) for x in q.stdout.splitlines() if x.strip()]
    answers, stats = lines[:-1], lines[-1]["stats"]
    (work / "distill.jsonl").write_text(q.stdout)
    print("distill's teacher:", json.dumps(stats))

    llm = Llama(model_path=str(gguf), n_ctx=256, logits_all=True, verbose=False)
    names = [llm.detokenize([i]).decode("utf-8", errors="ignore") for i in range(llm.n_vocab())]
    by_text = {}
    for i, t in enumerate(names):
        by_text.setdefault(t, []).append(i)
    k = a.k
    totals = dict(positions=0, slots=0, mapped=0, beyond_top_k=0, equal=0, unmapped_explained=0, max_abs_diff=0.0)
    unalignable = 0
    for ans in answers:
        name = repr(ans["prompt"])
        if not ans["ok"]:
            # an answer whose sampled tokens neither map nor line up with its text fails, counted
            ok = "cannot be recovered" in ans["error"]
            unalignable += ok
            check(f"{name}: answered, or failed as unalignable", ok, ans["error"])
            continue
        prompt = llama_chat_format.format_chatml(messages=[{"role": "user", "content": ans["prompt"]}]).prompt
        # as llama-cpp-python's completion tokenizes a prompt: BOS when the vocabulary asks for it
        ptoks = ([llm.token_bos()] if llm._model.add_bos_token() else []) + llm.tokenize(
            prompt.encode("utf-8"), add_bos=False, special=True)
        check(f"{name}: prompt tokens = the server's usage ({len(ptoks)})", len(ptoks) == ans["prompt_tokens"],
              f"{len(ptoks)} vs {ans['prompt_tokens']}")
        # llama.cpp's log-probabilities at every position of the answer distill reports
        n = len(ans["tokens"])
        llm.reset()
        llm.eval(ptoks + ans["tokens"])
        rows = [log_softmax(llm.scores[len(ptoks) + j - 1]) for j in range(n)]
        sampled = [rows[j][t] for j, t in enumerate(ans["tokens"])]
        d = max(abs(x - y) for x, y in zip(sampled, ans["token_logprobs"])) if n else 0.0
        check(f"{name}: the sampled ids' log-probabilities = llama.cpp's at those ids ({n} tokens)", d <= 1e-4,
              f"max |diff| {d}")
        if a.temperature == 0:
            ids = [int(np.argmax(r)) for r in rows]
            check(f"{name}: answer ids = llama.cpp's greedy ids", ids == ans["tokens"], f"{ids} vs {ans['tokens']}")
        bad = []
        for j, row in enumerate(rows):
            ref = [int(i) for i in np.argsort(-row, kind="stable")[:k]]
            got = list(zip(ans["top_ids"][j * k:(j + 1) * k], ans["top_logprobs"][j * k:(j + 1) * k]))
            mapped = [(i, lp) for i, lp in got if i >= 0]
            # The server ranks in float32, this script in float64: ids within 1e-4 of the k-th
            # log-probability may trade places at the boundary. llama-cpp-python also adds the sampled
            # token to each position's entries: outside the top-k it may fill a slot that collapsed
            # entries left. Neither is an error.
            edge = row[ref[-1]] - 1e-4
            extra = [i for i, _ in mapped if i not in ref and not (i == ans["tokens"][j] or row[i] >= edge)]
            totals["positions"] += 1
            totals["slots"] += k
            totals["mapped"] += len(mapped)
            totals["beyond_top_k"] += sum(1 for i, _ in mapped if i not in ref)
            order = [row[i] for i, _ in mapped]
            if extra or any(b > a + 1e-4 for a, b in zip(order, order[1:])):
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
            # detokenize([id]) without special tokens, decoded with errors="ignore": an empty text,
            # or one another token of the vocabulary also gets, names no token for sure)
            for i in ref:
                if i in {m for m, _ in mapped}:
                    continue
                text = names[i]
                if text == "" or len(by_text[text]) > 1 or row[i] <= row[ref[-1]] + 1e-4:
                    totals["unmapped_explained"] += 1
                else:
                    bad.append(f"position {j}: llama.cpp's top-{k} id {i} ({text!r}) was not mapped")
        check(f"{name}: mapped top-{k} entries = llama.cpp's (ids, order, log-probabilities)", not bad, bad[:3])
    m = stats["mapping"]
    check("every empty slot is counted by distill (top_entries - mapped = unmapped + ambiguous + duplicate + missing)",
          m["top_entries"] - totals["mapped"] == m["top_unmapped"] + m["top_ambiguous"] + m["top_duplicate"] +
          m["top_missing"], json.dumps(m))
    check("every llama.cpp top-k id distill left out is one the server cannot name",
          totals["slots"] - totals["mapped"] + totals["beyond_top_k"] == totals["unmapped_explained"],
          f"{totals['slots'] - totals['mapped'] + totals['beyond_top_k']} top-k ids not mapped, "
          f"{totals['unmapped_explained']} explained")
    totals["answers"] = len(answers)
    totals["unalignable_answers"] = unalignable
    totals["sampled_tokens_recovered"] = stats["mapping"]["tokens_unmapped"]
    print("figures:", json.dumps(totals))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
