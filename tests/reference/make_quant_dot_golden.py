#!/usr/bin/env python3
"""Writes fixtures/quant_dot_golden.json: what ggml's CPU backend computes when it multiplies a row
of weights stored in Q8_0, Q4_0, Q4_K, F16 or BF16 with a row of fp32 activations, for
tests/unit-quant.cpp — the semantics `quant_matmul` reproduces (so a quantized student's numbers are
llama.cpp's).

ggml's CPU backend converts the activations to the weight type's `vec_dot_type` (Q8_0 blocks for
Q8_0 and Q4_0 weights, Q8_K for Q4_K, fp16 / bf16 for F16 / BF16) with that type's CPU `from_float`,
then calls the weight type's `vec_dot`. This script calls exactly those, from llama.cpp's own
libggml-cpu.so (shipped by `pip install llama-cpp-python`, which builds llama.cpp from source for
this machine: the x86 AVX2/AVX-512 kernels), through `ggml_get_type_traits_cpu`. The weights are
quantized with `ggml_quantize_chunk` (the reference quantizers, bit-exact with distill's).

Recorded per case: the activations and weights (fp32, hex of little-endian bytes), the activation
bytes `from_float` wrote, and each `vec_dot` result. The C++ test requires equal activation bytes
and results equal within fp32 summation noise (ggml adds in another order).

Usage: python3 tests/reference/make_quant_dot_golden.py [--lib-dir DIR containing libggml-cpu.so]
"""

import argparse
import ctypes
import glob
import importlib.metadata
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "quant_dot_golden.json")

# ggml_type ids
F32, F16, Q4_0, Q8_0, Q8_K, Q4_K, BF16 = 0, 1, 2, 8, 15, 12, 30
WEIGHT_TYPES = [("q8_0", Q8_0), ("q4_0", Q4_0), ("q4_k", Q4_K), ("f16", F16), ("bf16", BF16)]

FROM_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
VEC_DOT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.c_void_p,
                           ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


class TraitsCpu(ctypes.Structure):  # ggml-cpu.h: struct ggml_type_traits_cpu
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p), ("vec_dot_type", ctypes.c_int),
                ("nrows", ctypes.c_int64)]


def lib_dir(explicit):
    if explicit:
        return explicit
    import llama_cpp  # noqa: the package that ships the libraries

    hits = sorted(glob.glob(os.path.join(os.path.dirname(llama_cpp.__file__), "**", "libggml-cpu.so"),
                            recursive=True))
    if not hits:
        sys.exit("libggml-cpu.so not found in llama_cpp's package; pass --lib-dir")
    return os.path.dirname(hits[0])


class GgmlCpu:
    def __init__(self, directory):
        self.base = ctypes.CDLL(os.path.join(directory, "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
        self.cpu = ctypes.CDLL(os.path.join(directory, "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
        self.cpu.ggml_cpu_init()
        self.cpu.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
        self.cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(TraitsCpu)
        self.base.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                                  ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        self.base.ggml_quantize_chunk.restype = ctypes.c_size_t
        self.base.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        self.base.ggml_row_size.restype = ctypes.c_size_t
        self.cpu.ggml_cpu_has_avx512_vnni.restype = ctypes.c_int
        self.cpu.ggml_cpu_has_avx2.restype = ctypes.c_int

    def quantize(self, qtype, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        size = self.base.ggml_row_size(qtype, x.size)
        dst = ctypes.create_string_buffer(size)
        assert self.base.ggml_quantize_chunk(qtype, x.ctypes.data, dst, 0, 1, x.size, None) == size
        return dst.raw

    def activations(self, weight_type, x):
        """x converted to the weight type's vec_dot_type by the CPU backend's from_float."""
        t = self.cpu.ggml_get_type_traits_cpu(weight_type).contents
        dot_type = t.vec_dot_type
        x = np.ascontiguousarray(x, dtype=np.float32)
        size = self.base.ggml_row_size(dot_type, x.size)
        dst = ctypes.create_string_buffer(size)
        FROM_FLOAT(self.cpu.ggml_get_type_traits_cpu(dot_type).contents.from_float)(x.ctypes.data, dst, x.size)
        return dot_type, dst.raw

    def vec_dot(self, weight_type, w_bytes, a_bytes, n):
        t = self.cpu.ggml_get_type_traits_cpu(weight_type).contents
        s = ctypes.c_float(0)
        wb = ctypes.create_string_buffer(w_bytes, len(w_bytes))
        ab = ctypes.create_string_buffer(a_bytes, len(a_bytes))
        VEC_DOT(t.vec_dot)(n, ctypes.byref(s), 0, ctypes.addressof(wb), 0, ctypes.addressof(ab), 0, 1)
        return s.value


def cases():
    """(name, activations, weights): activation rows of several kinds against weight rows."""
    rng = np.random.default_rng(20261204)
    k = 512
    acts = [
        ("normal", rng.standard_normal(k)),
        ("outliers", np.where(rng.uniform(size=k) < 0.01, 40.0, 1.0) * rng.standard_normal(k)),  # LLM-like
        ("halves", (np.arange(k) % 64 - 31.5) / 31.5 * 127.0 / 127.0),  # many exact ties after scaling
        ("zero_block", np.concatenate([np.zeros(256), rng.standard_normal(256)])),
        ("mixed_scales", rng.standard_normal(k) * np.repeat(10.0 ** rng.uniform(-3, 2, 16), 32)),
        ("negative_max", -np.abs(rng.standard_normal(k)) * 3),
    ]
    weights = [("w_normal", 0.02 * rng.standard_normal(k)), ("w_skewed", 0.05 * rng.standard_normal(k) + 0.01),
               ("w_mixed", rng.standard_normal(k) * np.repeat(10.0 ** rng.uniform(-3, 0, 16), 32))]
    return [(a, np.asarray(x, np.float32)) for a, x in acts], [(w, np.asarray(x, np.float32)) for w, x in weights]


def hexf(a):
    return np.asarray(a, dtype="<f4").tobytes().hex()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lib-dir")
    args = parser.parse_args()
    ggml = GgmlCpu(lib_dir(args.lib_dir))
    acts, weights = cases()
    fixture = {
        "generator": "tests/reference/make_quant_dot_golden.py",
        "llama_cpp_python": importlib.metadata.version("llama-cpp-python"),
        "cpu": {"avx2": ggml.cpu.ggml_cpu_has_avx2(), "avx512_vnni": ggml.cpu.ggml_cpu_has_avx512_vnni()},
        "k": int(acts[0][1].size),
        "activations": {name: hexf(x) for name, x in acts},
        "weights": {name: hexf(x) for name, x in weights},
        "types": {},
    }
    for tname, t in WEIGHT_TYPES:
        entry = {"converted": {}, "dots": {}}
        wq = {wname: ggml.quantize(t, w) for wname, w in weights}
        for aname, x in acts:
            dot_type, a_bytes = ggml.activations(t, x)
            entry["vec_dot_type"] = dot_type
            entry["converted"][aname] = a_bytes.hex()
            for wname, _ in weights:
                entry["dots"][aname + "." + wname] = hexf([ggml.vec_dot(t, wq[wname], a_bytes, x.size)])
        fixture["types"][tname] = entry
    with open(OUT, "w") as fh:
        json.dump(fixture, fh, indent=1)
    print(f"wrote {OUT}: {len(WEIGHT_TYPES)} weight types x {len(acts)} activation rows x {len(weights)} weight rows")


if __name__ == "__main__":
    main()
