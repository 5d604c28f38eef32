#!/usr/bin/env python3
"""Golden values for distill's BLEU and ROUGE-L, from the packages users compare against.

Writes tests/reference/fixtures/metrics_golden.json: pairs of (hypothesis, reference) covering
punctuation, numbers, dashes, HTML entities, Unicode whitespace, CJK, Cyrillic, emoji and empty
strings; sacrebleu.corpus_bleu over several sub-corpora; rouge_score ROUGE-L per pair.

  pip install sacrebleu rouge-score
  python3 tests/reference/make_metrics_golden.py
"""
import json
import os
import random

import sacrebleu
from rouge_score import rouge_scorer

PAIRS = [
    ("The cat sat on the mat.", "The cat is sitting on the mat."),
    ("It costs $1,234.50 -- cheap!", "It costs $1,234.50, which is cheap."),
    ("Range 10-20 items, e.g. apples.", "Range: 10 - 20 items (e.g., apples)."),
    ("A &amp; B &lt;tag&gt; &quot;quoted&quot;", "A & B <tag> \"quoted\""),
    ("non\u00a0breaking\u2003spaces\u3000here", "non breaking spaces here"),
    ("猫はマットの上に座った。", "猫がマットの上に座っている。"),
    ("Кошка сидела на коврике.", "Кошка сидит на коврике."),
    ("I love pizza 🍕🍕 so much!!!", "I really love pizza 🍕 a lot!"),
    ("", "An empty hypothesis."),
    ("Nothing matches here", ""),
    ("x=3.14, y=2,000, z=-5.", "x = 3.14 , y = 2000 , z = -5 ."),
    ("end-of-line hyph-\nenation and <skipped> tokens", "end-of-line hyphenation and tokens"),
    ("The answer is 42.", "The answer is 42."),
    ("İstanbul KELVIN K sign", "istanbul kelvin k sign"),
    ("trailing spaces   \t", "trailing spaces"),
    ("a b c d e f g", "a b c d e f g h"),
]


def main():
    rng = random.Random(0)
    words = "the a cat dog sat ran on under mat house quickly slowly , . ! ? 3.5 1,000 -2 e.g. don't".split()
    for _ in range(24):
        ref = " ".join(rng.choice(words) for _ in range(rng.randint(3, 14)))
        hyp = " ".join(w for w in ref.split() if rng.random() > 0.3) + " " + " ".join(rng.choice(words) for _ in range(rng.randint(0, 3)))
        PAIRS.append((hyp, ref))

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge = []
    for hyp, ref in PAIRS:
        s = scorer.score(ref, hyp)["rougeL"]
        rouge.append({"precision": s.precision, "recall": s.recall, "f1": s.fmeasure})

    corpora = [list(range(len(PAIRS))), list(range(0, 16)), list(range(16, len(PAIRS))), [0], [12], [8], [9], [2, 3, 10]]
    bleu = []
    for idx in corpora:
        b = sacrebleu.corpus_bleu([PAIRS[i][0] for i in idx], [[PAIRS[i][1] for i in idx]])
        bleu.append({"indices": idx, "score": b.score, "precisions": b.precisions, "bp": b.bp,
                     "sys_len": b.sys_len, "ref_len": b.ref_len})

    tok = sacrebleu.tokenizers.tokenizer_13a.Tokenizer13a()
    out = {
        "sacrebleu": sacrebleu.__version__,
        "pairs": [{"hypothesis": h, "reference": r} for h, r in PAIRS],
        "tokenized_13a": [tok(h.rstrip()) for h, _ in PAIRS],
        "rouge_l": rouge,
        "bleu": bleu,
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "metrics_golden.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
    print(f"wrote {path}: {len(PAIRS)} pairs, {len(bleu)} corpora, BLEU(all) = {bleu[0]['score']:.4f}")


if __name__ == "__main__":
    main()
