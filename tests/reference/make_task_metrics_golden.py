#!/usr/bin/env python3
"""Golden values for distill's SQuAD token F1 and macro-F1, from the definitions users compare against.

Writes tests/reference/fixtures/task_metrics_golden.json:
- `token_f1`: (prediction, reference, F1) per pair, computed by the official SQuAD v2.0 evaluation
  script's `compute_f1` (normalize_answer, Counter intersection), copied below verbatim in substance;
- `macro_f1`: label lists (with predictions outside the references' classes, and classes never
  predicted) and scikit-learn's `f1_score(y_true, y_pred, average="macro", labels=sorted(set(y_true)))`,
  labels normalized as SQuAD does first (distill compares normalized labels).

  pip install scikit-learn
  python3 tests/reference/make_task_metrics_golden.py
"""
import collections
import json
import os
import random
import re
import string

from sklearn.metrics import f1_score


# --- the official SQuAD v2.0 evaluation script (evaluate-v2.0.py) --------------------------------
def normalize_answer(s):
    def remove_articles(text):
        return re.sub(re.compile(r"\b(a|an|the)\b", re.UNICODE), " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def get_tokens(s):
    if not s:
        return []
    return normalize_answer(s).split()


def compute_f1(a_gold, a_pred):
    gold_toks = get_tokens(a_gold)
    pred_toks = get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)
# ---------------------------------------------------------------------------------------------------

F1_PAIRS = [
    ("Rome", "Rome"),
    ("rome.", "Rome"),
    ("in Rome", "Rome"),
    ("The Eiffel Tower", "Eiffel tower"),
    ("a b c", "a b d"),
    ("Paris Paris Paris", "Paris"),
    ("cat dog dog", "dog cat cat"),
    ("", ""),
    ("", "Oslo"),
    ("the", ""),
    ("an apple, a pear", "pear apple"),
    ("New   York\tCity", "new york city"),
    ("it's 42!", "its 42"),
    ("Ann lives in Oslo", "Oslo"),
    ("one two three four five", "two four six"),
]


def main():
    rng = random.Random(0)
    words = "Ann Bob Oslo Rome the a lives in who where is 42 cat dog , . !".split()
    pairs = list(F1_PAIRS)
    for _ in range(40):
        p = " ".join(rng.choice(words) for _ in range(rng.randint(0, 6)))
        r = " ".join(rng.choice(words) for _ in range(rng.randint(0, 6)))
        pairs.append((p, r))
    token_f1 = [{"prediction": p, "reference": r, "f1": compute_f1(r, p)} for p, r in pairs]

    labels = ["entailment", "neutral", "contradiction"]
    macro = []
    cases = [
        (["entailment", "neutral", "contradiction"], ["entailment", "neutral", "contradiction"]),
        (["entailment", "entailment", "neutral"], ["neutral", "entailment", "neutral"]),
        (["Entailment.", "neutral", "maybe"], ["entailment", "neutral", "contradiction"]),
        (["entailment"] * 4, ["entailment", "neutral", "contradiction", "neutral"]),
        (["garbage", "", "neutral"], ["neutral", "neutral", "neutral"]),
    ]
    for _ in range(6):
        n = rng.randint(5, 40)
        ref = [rng.choice(labels) for _ in range(n)]
        pred = [rng.choice(labels + ["unknown", ""]) if rng.random() < 0.4 else r for r in ref]
        cases.append((pred, ref))
    for pred, ref in cases:
        yp = [normalize_answer(x) for x in pred]
        yt = [normalize_answer(x) for x in ref]
        score = f1_score(yt, yp, average="macro", labels=sorted(set(yt)), zero_division=0)
        macro.append({"predictions": pred, "references": ref, "macro_f1": float(score)})

    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "task_metrics_golden.json")
    with open(out, "w") as f:
        json.dump({"token_f1": token_f1, "macro_f1": macro}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {out}: {len(token_f1)} F1 pairs, {len(macro)} macro-F1 cases")


if __name__ == "__main__":
    main()
