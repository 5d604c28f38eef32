#!/usr/bin/env python3
"""Drives apps/serve with the official `openai` Python client: what a user of the OpenAI API sees.

    python3 -m pip install openai        # once, into the python3 that runs this
    python3 tests/reference/check_serve_openai.py --serve build/h/apps/serve

It writes a small random byte-vocabulary GPT (standard library only: a safetensors file with the
config in its metadata, as io::save_weights writes one), starts `serve` on it on 127.0.0.1 with an
API key and --max-batch 4, and checks, printing one PASS/FAIL line each:

  chat (non-streamed), chat streamed (the deltas assemble into the greedy non-streamed text, the
  first delta carries the role, the last chunk a finish_reason, include_usage gives a usage chunk),
  streamed log-probabilities (equal to the non-streamed ones), text completions (string and list
  prompts, streamed and not, legacy logprobs), n=3 with temperature (3 distinct choices, usage
  counting all), greedy n=3 (equal choices), stop sequences streamed, and 400s naming the field.

The model is random, so its text is arbitrary bytes: many are not UTF-8 on their own, which is
what the streaming has to get right (a character only sent once complete). Exit status 1 on any
FAIL.
"""

import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

failures = 0


def check(name, ok, detail=""):
    global failures
    print(("PASS " if ok else "FAIL ") + name + ("" if ok or not detail else ": " + str(detail)[:400]))
    if not ok:
        failures += 1


def write_tiny_model(path, vocab=263, context=128, d=32, layers=2, heads=2, d_ff=64, seed=7):
    """A GPT-2 layout distill's Transformer loads (weight tying: no lm_head), random weights."""
    rng = random.Random(seed)
    shapes = [("wte.weight", [vocab, d]), ("wpe.weight", [context, d])]
    for i in range(layers):
        p = "h.%d." % i
        shapes += [(p + "ln_1.weight", [d]), (p + "ln_1.bias", [d]),
                   (p + "attn.c_attn.weight", [3 * d, d]), (p + "attn.c_attn.bias", [3 * d]),
                   (p + "attn.c_proj.weight", [d, d]), (p + "attn.c_proj.bias", [d]),
                   (p + "ln_2.weight", [d]), (p + "ln_2.bias", [d]),
                   (p + "mlp.c_fc.weight", [d_ff, d]), (p + "mlp.c_fc.bias", [d_ff]),
                   (p + "mlp.c_proj.weight", [d, d_ff]), (p + "mlp.c_proj.bias", [d])]
    shapes += [("ln_f.weight", [d]), ("ln_f.bias", [d])]
    config = {"vocab_size": vocab, "context_length": context, "d_model": d, "n_layers": layers, "n_heads": heads,
              "d_ff": d_ff}
    header = {"__metadata__": {"config": json.dumps(config)}}
    blobs, offset = [], 0
    for name, shape in shapes:
        n = 1
        for s in shape:
            n *= s
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            values = [1.0 + 0.1 * rng.gauss(0, 1) for _ in range(n)]
        else:
            values = [0.5 * rng.gauss(0, 1) for _ in range(n)]  # large: a peaky, decisive distribution
        blob = struct.pack("<%df" % n, *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", default="build/h/apps/serve", help="the serve binary")
    args = ap.parse_args()
    try:
        import openai
    except ImportError:
        print("FAIL the openai package is missing: python3 -m pip install openai")
        return 1
    print("openai %s" % openai.__version__)

    tmp = tempfile.mkdtemp(prefix="distill-serve-openai-")
    weights = os.path.join(tmp, "tiny.safetensors")
    write_tiny_model(weights)
    port_file = os.path.join(tmp, "port")
    env = dict(os.environ, DISTILL_SERVE_TEST_KEY="sk-reference-test")
    log = open(os.path.join(tmp, "serve.log"), "w")
    proc = subprocess.Popen([args.serve, "--weights", weights, "--port", "0", "--port-file", port_file,
                             "--model", "tiny", "--api-key-env", "DISTILL_SERVE_TEST_KEY", "--threads", "1",
                             "--max-batch", "4"], stdout=log, stderr=log, env=env)
    try:
        for _ in range(600):
            if os.path.exists(port_file) and open(port_file).read().strip():
                break
            time.sleep(0.05)
        port = int(open(port_file).read())
        client = openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % port, api_key="sk-reference-test",
                               max_retries=0, timeout=60)
        run_checks(client, openai)
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
        if failures == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("serve's log: %s" % os.path.join(tmp, "serve.log"))
    print("%d failure(s)" % failures)
    return 1 if failures else 0


def run_checks(client, openai):
    msgs = [{"role": "user", "content": "What is 2 + 2?"}]

    # ---- chat, not streamed
    r = client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=24)
    greedy = r.choices[0].message.content
    check("chat: object, one choice, role, finish_reason",
          r.object == "chat.completion" and len(r.choices) == 1 and r.choices[0].message.role == "assistant"
          and r.choices[0].finish_reason in ("stop", "length"), r)
    check("chat: usage counts the answer", r.usage.completion_tokens >= 1 and
          r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage)
    print("     greedy answer: %r (%d tokens, %s)" % (greedy, r.usage.completion_tokens, r.choices[0].finish_reason))

    # ---- chat, streamed: deltas assemble into the greedy text
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=24,
                                                  stream=True, stream_options={"include_usage": True}))
    content = [c for c in chunks if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in content)
    check("chat stream: chunks are chat.completion.chunk", all(c.object == "chat.completion.chunk" for c in chunks))
    check("chat stream: first delta has the role", content and content[0].choices[0].delta.role == "assistant")
    check("chat stream: deltas assemble into the non-streamed greedy text", text == greedy, (text, greedy))
    check("chat stream: the last choice chunk has the finish_reason, earlier ones none",
          content[-1].choices[0].finish_reason == r.choices[0].finish_reason
          and all(c.choices[0].finish_reason is None for c in content[:-1]))
    check("chat stream: include_usage gives a final usage chunk equal to the non-streamed usage",
          not chunks[-1].choices and chunks[-1].usage is not None
          and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
          and chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens, chunks[-1])
    check("chat stream: more than one content chunk (sent as generated)",
          sum(1 for c in content if c.choices[0].delta.content) > 1)

    # ---- streamed log-probabilities equal the non-streamed ones
    r = client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=16, logprobs=True,
                                       top_logprobs=3)
    want = [(e.token, round(e.logprob, 5), [(t.token, round(t.logprob, 5)) for t in e.top_logprobs])
            for e in r.choices[0].logprobs.content]
    got = []
    for c in client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=16,
                                            logprobs=True, top_logprobs=3, stream=True):
        if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content:
            got += [(e.token, round(e.logprob, 5), [(t.token, round(t.logprob, 5)) for t in e.top_logprobs])
                    for e in c.choices[0].logprobs.content]
    check("chat logprobs: one entry per completion token, 3 alternatives each",
          len(want) == r.usage.completion_tokens and all(len(w[2]) == 3 for w in want), (len(want), r.usage))
    check("chat logprobs: the chosen token is the top alternative (greedy)",
          all(abs(w[1] - w[2][0][1]) < 1e-6 for w in want))
    check("chat stream logprobs: equal to the non-streamed ones", got == want, (got[:3], want[:3]))

    # ---- n = 3 with temperature: independent samples; usage counts them all
    r = client.chat.completions.create(model="tiny", messages=msgs, temperature=1.0, max_tokens=12, n=3, seed=5)
    texts = [c.message.content for c in r.choices]
    check("chat n=3: three choices with index 0..2", [c.index for c in r.choices] == [0, 1, 2], r)
    check("chat n=3 with temperature 1: the choices differ", len(set(texts)) == 3, texts)
    all_length = all(c.finish_reason == "length" for c in r.choices)
    check("chat n=3: usage counts all completion tokens",
          r.usage.completion_tokens == 36 if all_length else 3 <= r.usage.completion_tokens <= 36, r.usage)
    r2 = client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=12, n=3)
    check("chat n=3 greedy: the choices are equal", len({c.message.content for c in r2.choices}) == 1)
    streamed = ["", "", ""]
    for c in client.chat.completions.create(model="tiny", messages=msgs, temperature=1.0, max_tokens=12, n=3,
                                            seed=5, stream=True):
        for ch in c.choices:
            streamed[ch.index] += ch.delta.content or ""
    check("chat stream n=3: each choice's deltas assemble into its non-streamed text", streamed == texts,
          (streamed, texts))

    # ---- stop sequence, streamed and not
    stop = greedy[3:5] if len(greedy) >= 5 else None
    if stop:
        a = client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=24, stop=[stop])
        s = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="tiny", messages=msgs, temperature=0, max_tokens=24, stop=[stop], stream=True) if c.choices)
        check("chat stop sequence: the answer ends before it, streamed the same",
              a.choices[0].message.content == greedy[:greedy.find(stop)] and s == a.choices[0].message.content
              and a.choices[0].finish_reason == "stop", (a.choices[0].message.content, s, stop))

    # ---- text completions (no chat template)
    c = client.completions.create(model="tiny", prompt="The answer is", temperature=0, max_tokens=20)
    check("completions: object, text, finish_reason",
          c.object == "text_completion" and isinstance(c.choices[0].text, str)
          and c.choices[0].finish_reason in ("stop", "length"), c)
    check("completions: usage", c.usage.prompt_tokens == len("The answer is") and c.usage.completion_tokens >= 1,
          c.usage)
    s = list(client.completions.create(model="tiny", prompt="The answer is", temperature=0, max_tokens=20,
                                       stream=True))
    check("completions stream: text pieces assemble into the non-streamed text",
          "".join(x.choices[0].text for x in s if x.choices) == c.choices[0].text)
    check("completions stream: the last chunk has the finish_reason",
          s[-1].choices[0].finish_reason == c.choices[0].finish_reason)
    lp = client.completions.create(model="tiny", prompt="The answer is", temperature=0, max_tokens=10, logprobs=2)
    L = lp.choices[0].logprobs
    check("completions logprobs: tokens, token_logprobs, top_logprobs (2 each), text_offset",
          len(L.tokens) == len(L.token_logprobs) == len(L.top_logprobs) == len(L.text_offset) ==
          lp.usage.completion_tokens and all(len(t) == 2 for t in L.top_logprobs) and L.text_offset[0] == 0
          and L.text_offset == sorted(L.text_offset), L)
    check("completions logprobs: greedy token is the most likely alternative",
          all(abs(L.token_logprobs[i] - max(L.top_logprobs[i].values())) < 1e-6 for i in range(len(L.tokens))))
    streamed_lp = []
    for x in client.completions.create(model="tiny", prompt="The answer is", temperature=0, max_tokens=10,
                                       logprobs=2, stream=True):
        if x.choices and x.choices[0].logprobs:
            streamed_lp += x.choices[0].logprobs.token_logprobs
    check("completions stream logprobs: equal to the non-streamed ones",
          [round(v, 5) for v in streamed_lp] == [round(v, 5) for v in L.token_logprobs])
    m = client.completions.create(model="tiny", prompt=["one", "two"], temperature=0.8, max_tokens=8, n=2, seed=3)
    check("completions: 2 prompts x n=2 give 4 choices, index 0..3", [x.index for x in m.choices] == [0, 1, 2, 3], m)
    one = client.completions.create(model="tiny", prompt="two", temperature=0.8, max_tokens=8, n=2, seed=3)
    check("completions: prompt p's choices are at p*n .. p*n+n-1 (equal to asking for it alone)",
          [x.text for x in m.choices[2:]] == [x.text for x in one.choices])

    # ---- bad input: 400 naming the field
    def bad(field, **kw):
        try:
            if "prompt" in kw:
                client.completions.create(model="tiny", **kw)
            else:
                client.chat.completions.create(model="tiny", messages=msgs, **kw)
            check("400 naming %s" % field, False, "accepted")
        except openai.BadRequestError as e:
            check("400 naming %s" % field, field in str(e), e)

    bad("\"n\"", n=17)
    bad("\"n\"", n=0)
    bad("\"stream_options\"", stream_options={"include_usage": True})
    bad("\"echo\"", prompt="x", echo=True)
    bad("\"prompt\"", prompt="x" * 200)
    bad("\"logprobs\"", prompt="x", extra_body={"logprobs": True})
    bad("temperature", temperature=-1)


if __name__ == "__main__":
    sys.exit(main())
