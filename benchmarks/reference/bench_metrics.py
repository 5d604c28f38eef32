#!/usr/bin/env python3
"""Reference for benchmarks/bench_metrics.cpp: corpus BLEU with sacrebleu.corpus_bleu(hyps, [refs])
and mean ROUGE-L F1 with rouge_score.rouge_scorer.RougeScorer(["rougeL"]) over the pairs of a JSONL
file ({"h": hypothesis, "r": reference} per line), timed (median of --reps).

Prints exactly one JSON line to stdout, e.g.
  {"impl":"python","sacrebleu":"2.x","bleu":...,"bleu_ms":...,"rouge_l_f1":...,"rouge_ms":...}

  pip install sacrebleu rouge-score
  python3 benchmarks/reference/bench_metrics.py --input pairs.jsonl
"""

import argparse
import json
import time

import sacrebleu
from rouge_score import rouge_scorer


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    hyps, refs = [], []
    with open(args.input, encoding="utf-8") as f:
        for line in f:
            p = json.loads(line)
            hyps.append(p["h"])
            refs.append(p["r"])

    def timed(fn):
        fn()
        t = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            v = fn()
            t.append(time.perf_counter() - t0)
        t.sort()
        return v, 1000.0 * t[len(t) // 2]

    bleu, bleu_ms = timed(lambda: sacrebleu.corpus_bleu(hyps, [refs]).score)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge, rouge_ms = timed(lambda: sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)) / len(hyps))
    print(json.dumps({"impl": "python", "sacrebleu": sacrebleu.__version__, "bleu": bleu, "bleu_ms": round(bleu_ms, 3),
                      "rouge_l_f1": rouge, "rouge_ms": round(rouge_ms, 3), "threads": 1}))


if __name__ == "__main__":
    main()
