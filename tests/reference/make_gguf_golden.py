#!/usr/bin/env python3
"""GGUF export golden: what llama.cpp's own converter writes for five small random checkpoints.

For each fixture (gpt2, llama with Llama 3 rope scaling, qwen2, phi3: byte-level BPE tokenizers;
llama2: a Llama architecture with a SentencePiece-style tokenizer.json, byte fallback and Phi-3's
chat tokens, no tokenizer.model) this writes a random transformers checkpoint with its tokenizer
from fixtures/tokenizers/ into fixtures/gguf/<fixture>/, converts it with llama.cpp's
convert_hf_to_gguf.py at f32 and q8_0, and records
what llama.cpp's gguf-py reads back (every metadata key with its GGUF type and value; every tensor's
name, dimensions, ggml type and the sha256 of its bytes) in converter-<type>.json. The unit test
"gguf export: a student's file holds what llama.cpp's converter writes" exports the same checkpoint
with distill and compares.

The converter is the one in llama-cpp-python's source distribution on PyPI (vendor/llama.cpp), run
in-process with one patch: it recognizes a BPE pre-tokenizer by hashing the tokenization of a test
text, which these small tokenizers do not reproduce, so the pre-tokenizer name is given per
architecture (the name llama.cpp uses for the real tokenizer each small one was cut from).

The converter writes a SentencePiece-style tokenizer.json without tokenizer.model (LlamaHfVocab)
with the placeholder score -1000 for every token, with which llama.cpp's SPM tokenizer merges
left to right instead of in the BPE's order. distill writes scores from the merges instead, and the
golden records them, computed here by the rule docs/deployment.md states, under "replaced"; the
check that llama.cpp then tokenizes as the tokenizer.json does is check_gguf_llamacpp.py's. The
phi3 fixture keeps GPT-2's tokenizer: llama.cpp's Phi-3 converter reads a SentencePiece vocabulary
only from tokenizer.model, so the SentencePiece-style golden is a llama's (the tokenizer metadata does
not depend on the architecture).

Needs: torch, transformers, numpy, sentencepiece (the converter imports it before it looks for
tokenizer.model); the llama-cpp-python sdist (downloaded by pip if absent, into
$DISTILL_LLAMA_CPP_WORK if set). Fixtures named on the command line are regenerated, else all:
    python tests/reference/make_gguf_golden.py [llama2 ...]
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"

# fixture -> (tokenizer fixture, llama.cpp's pre-tokenizer name, transformers config)
COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=None,
              eos_token_id=None)
MODELS = {
    "gpt2": ("gpt2", "gpt-2", dict(model_type="gpt2", n_embd=32, n_inner=128, n_layer=2, n_head=4, n_positions=64,
                                   n_ctx=64, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                                   bos_token_id=None, eos_token_id=None)),
    "llama": ("llama3", "llama-bpe", dict(model_type="llama", num_key_value_heads=2, tie_word_embeddings=False,
                                          rope_scaling=dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0,
                                                            high_freq_factor=4.0,
                                                            original_max_position_embeddings=16), **COMMON)),
    "qwen2": ("qwen2", "qwen2", dict(model_type="qwen2", num_key_value_heads=2, tie_word_embeddings=True,
                                     use_sliding_window=False, **COMMON)),
    "phi3": ("gpt2", "gpt-2", dict(model_type="phi3", num_key_value_heads=4, tie_word_embeddings=False,
                                   original_max_position_embeddings=64, sliding_window=None, pad_token_id=None,
                                   **COMMON)),
    # the pre-tokenizer name is unused: a SentencePiece-style vocabulary has none ("default")
    "llama2": ("llama2", "default", dict(model_type="llama", num_key_value_heads=2, tie_word_embeddings=False,
                                         **COMMON)),
}
SEEDS = {"gpt2": 1, "llama": 2, "qwen2": 3, "phi3": 4, "llama2": 5}
# Phi-3's chat template (as published), for the SentencePiece-style fixture, which has Phi-3's chat tokens.
PHI3_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
                 "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
                 "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
                 "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
# Keys the converter derives from the directory or its own run, not from the model: not compared.
IGNORED = ["general.basename", "general.size_label", "general.finetune", "general.version",
           "general.quantized_by"]
# Keys distill writes that the converter does not (see io/gguf_export.hpp); allowed, not required.
EXTRA = ["tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_space_prefix"]


def llama_cpp_source(work: Path) -> Path:
    sdist = next(work.glob("llama_cpp_python-*.tar.gz"), None)
    if sdist is None:
        subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               LLAMA_CPP_PYTHON, "-d", str(work)])
        sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name and
                   ("convert_hf_to_gguf.py" in m.name or "/conversion/" in m.name or "/gguf-py/" in m.name)]
        tar.extractall(work, members)
    return next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))


def write_checkpoint(arch: str, out: Path) -> None:
    import torch
    import transformers
    tok_name, _, cfg = MODELS[arch]
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIXTURES / "tokenizers" / tok_name / name, out / name)
    tok = json.loads((out / "tokenizer.json").read_text())
    vocab = 1 + max([*tok["model"]["vocab"].values(), *(a["id"] for a in tok["added_tokens"])])
    tc = json.loads((out / "tokenizer_config.json").read_text())
    tc["tokenizer_class"] = "GPT2Tokenizer" if arch in ("gpt2", "phi3") else "PreTrainedTokenizerFast"
    if arch == "llama2":
        tc["chat_template"] = PHI3_TEMPLATE
    (out / "tokenizer_config.json").write_text(json.dumps(tc))
    config = transformers.AutoConfig.for_model(vocab_size=vocab, **cfg)
    torch.manual_seed(SEEDS[arch])
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # biases and norms away from their init, so that a misplaced one shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out, safe_serialization=True)


def convert(llama_cpp: Path, model_dir: Path, outtype: str, outfile: Path, pre: str) -> None:
    code = f"""
import sys
sys.argv = ["convert_hf_to_gguf.py", {str(model_dir)!r}, "--outtype", {outtype!r}, "--outfile", {str(outfile)!r}]
sys.path.insert(0, {str(llama_cpp)!r})
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: {pre!r}
import runpy
runpy.run_path({str(llama_cpp / "convert_hf_to_gguf.py")!r}, run_name="__main__")
"""
    subprocess.check_call([sys.executable, "-c", code])


def spm_scores(model_dir: Path, tokens: list) -> list:
    """distill's scores for a SentencePiece-style vocabulary (docs/deployment.md): a token some merge
    yields scores -(1 + the rank of the first such merge), every other token -(1 + the merge count)."""
    merges = json.loads((model_dir / "tokenizer.json").read_text())["model"]["merges"]
    rank = {}
    for r, m in enumerate(merges):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, r)
    return [float(-(1 + rank.get(t, len(merges)))) for t in tokens]


def read_back(llama_cpp: Path, path: Path, model_dir: Path) -> dict:
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    import gguf
    reader = gguf.GGUFReader(path)
    metadata = {}
    for field in reader.fields.values():
        if field.name.startswith("GGUF."):
            continue
        entry = {"type": int(field.types[0])}
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            entry["element"] = int(field.types[1])
        value = field.contents()
        entry["value"] = value
        metadata[field.name] = entry
    tensors = [{"name": t.name, "ne": [int(d) for d in t.shape], "type": int(t.tensor_type),
                "sha256": hashlib.sha256(t.data.tobytes()).hexdigest()} for t in reader.tensors]
    golden = {"metadata": metadata, "tensors": tensors, "ignored": IGNORED, "extra": EXTRA, "replaced": {}}
    if metadata["tokenizer.ggml.model"]["value"] == "llama":
        scores = metadata["tokenizer.ggml.scores"]
        assert set(scores["value"]) == {-1000.0}, "the converter's scores are no longer its placeholder"
        golden["replaced"]["tokenizer.ggml.scores"] = dict(
            scores, value=spm_scores(model_dir, metadata["tokenizer.ggml.tokens"]["value"]))
    return golden


def main() -> None:
    work = Path(os.environ.get("DISTILL_LLAMA_CPP_WORK", tempfile.mkdtemp(prefix="distill-gguf-golden-")))
    llama_cpp = llama_cpp_source(work)
    for arch, (_, pre, _) in MODELS.items():
        if len(sys.argv) > 1 and arch not in sys.argv[1:]:
            continue
        out = FIXTURES / "gguf" / arch
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        write_checkpoint(arch, out)
        for outtype in ("f32", "q8_0"):
            gguf_file = work / f"{arch}-{outtype}.gguf"
            convert(llama_cpp, out, outtype, gguf_file, pre)
            golden = read_back(llama_cpp, gguf_file, out)
            (out / f"converter-{outtype}.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
        for junk in ("generation_config.json",):
            (out / junk).unlink(missing_ok=True)
        print(f"{arch}: {out}")


if __name__ == "__main__":
    main()
