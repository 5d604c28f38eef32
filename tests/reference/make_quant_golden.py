#!/usr/bin/env python3
"""Writes fixtures/quant_golden.json: ggml's own bytes for rows quantized to F32, F16, BF16, Q8_0,
Q4_0 and Q4_K, and the floats ggml dequantizes them to, for tests/unit-quant.cpp.

Two independent sources, which must agree where both exist:
- gguf-py (`pip install gguf`, llama.cpp's Python package): `gguf.quants.quantize` for F16, BF16,
  Q8_0 and Q4_0, `gguf.quants.dequantize` for every type;
- llama.cpp's C library itself (`pip install llama-cpp-python` builds it from source and ships
  libggml-base.so): `ggml_quantize_chunk(type, src, dst, 0, 1, n, imatrix=NULL)` — what llama.cpp's
  quantizer writes without an importance matrix — and each type's `to_float` from
  `ggml_get_type_traits`. Q4_K has no numpy quantizer, so its bytes come from here only.
The fixture's bytes and floats are ggml's (C); the script asserts gguf-py gives the same.
It also records fp32 → fp16 / bf16 conversions of special values through `ggml_fp32_to_fp16` and
`ggml_fp32_to_bf16`, checked against numpy's float16 (round to nearest even).

Floats are stored as hex of their little-endian fp32 bytes, so the C++ test reads exact bits.

Usage: python3 tests/reference/make_quant_golden.py [--lib path/to/libggml-base.so]
"""

import argparse
import ctypes
import glob
import importlib.metadata
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "quant_golden.json")

TYPES = [("f32", Q.F32), ("f16", Q.F16), ("bf16", Q.BF16), ("q8_0", Q.Q8_0), ("q4_0", Q.Q4_0), ("q4_k", Q.Q4_K)]
NUMPY_QUANTIZERS = {Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0}  # gguf-py has these; Q4_K only dequantizes


def find_ggml_base(explicit):
    if explicit:
        return explicit
    import llama_cpp  # noqa: the package that ships the library

    root = os.path.dirname(llama_cpp.__file__)
    hits = sorted(glob.glob(os.path.join(root, "**", "libggml-base.so*"), recursive=True))
    if not hits:
        sys.exit(f"libggml-base.so not found under {root}; pass --lib")
    return hits[0]


class TypeTraits(ctypes.Structure):  # ggml.h: struct ggml_type_traits
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class Ggml:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                                 ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        self.lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        self.lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        self.lib.ggml_row_size.restype = ctypes.c_size_t
        self.lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
        self.lib.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
        self.lib.ggml_fp32_to_fp16.argtypes = [ctypes.c_float]
        self.lib.ggml_fp32_to_fp16.restype = ctypes.c_uint16
        self.lib.ggml_fp32_to_bf16.argtypes = [ctypes.c_float]
        self.lib.ggml_fp32_to_bf16.restype = ctypes.c_uint16  # struct { uint16_t bits; }, returned in a register

    def quantize(self, qtype, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        size = self.lib.ggml_row_size(int(qtype), x.size)
        dst = ctypes.create_string_buffer(size)
        written = self.lib.ggml_quantize_chunk(int(qtype), x.ctypes.data, dst, 0, 1, x.size, None)
        assert written == size, (qtype, written, size)
        return dst.raw

    def dequantize(self, qtype, data, n):
        if qtype == Q.F32:  # ggml has no to_float for its own float type: the bytes are the floats
            return np.frombuffer(data, dtype="<f4").copy()
        traits = self.lib.ggml_get_type_traits(int(qtype)).contents
        assert traits.to_float, qtype
        src = ctypes.create_string_buffer(data, len(data))
        y = np.zeros(n, dtype=np.float32)
        TO_FLOAT(traits.to_float)(ctypes.addressof(src), y.ctypes.data, n)
        return y


def rows():
    """The test rows: (name, float32 array)."""
    rng = np.random.default_rng(20260422)
    out = []
    out.append(("normal_256", rng.standard_normal(256)))
    out.append(("weights_512", 0.02 * rng.standard_normal(512)))  # a typical Linear weight row, 2 super-blocks
    outl = 0.05 * rng.standard_normal(512)
    outl[[3, 77, 300, 301, 511]] = [8.0, -6.5, 12.0, -12.0, 3.0]  # a few outliers, one a ±tie for Q4_0's max
    out.append(("outliers_512", outl))
    out.append(("zeros_256", np.zeros(256)))
    out.append(("constant_256", np.full(256, 0.37)))
    out.append(("negative_256", -np.abs(rng.standard_normal(256)) - 0.1))
    out.append(("tiny_256", 1e-30 * rng.standard_normal(256)))  # scales underflow fp16 to 0
    out.append(("large_256", 1e5 * rng.standard_normal(256)))  # beyond fp16's range: F16 overflows to inf
    halves = (np.arange(256) % 255 - 127 + 0.5).astype(np.float64)  # Q8_0 with d = 1: exact halves, round away
    halves[::32] = 127.0
    out.append(("halves_256", halves))
    blocks = rng.standard_normal(512) * np.repeat(10.0 ** rng.uniform(-4, 2, 16), 32)  # every block its own scale
    out.append(("mixed_scales_512", blocks))
    return [(name, np.asarray(x, dtype=np.float32)) for name, x in out]


def fit_rows():
    """Extra Q4_K rows (Q4_K only) of 8 super-blocks each: Q4_K's least-squares fit makes many
    rounding decisions, and a quantizer that lets the compiler fuse a product into an add (an FMA)
    writes other bytes than ggml for about 6% of super-blocks; 64 of them pin that."""
    rng = np.random.default_rng(99)
    out = []
    for i in range(8):
        kind = i % 4
        if kind == 0:
            x = rng.standard_normal(2048) * 10.0 ** rng.uniform(-4, 2)
        elif kind == 1:
            x = rng.uniform(-1, 1, 2048) * np.repeat(10.0 ** rng.uniform(-3, 1, 64), 32)
        elif kind == 2:
            x = np.round(rng.standard_normal(2048) * 8) / 8  # many exact ties
        else:
            x = np.abs(rng.standard_normal(2048)) + np.repeat(rng.uniform(-1, 1, 8), 256)
        out.append((f"fit_{i}", np.asarray(x, dtype=np.float32)))
    return out


def special_values():
    v = [0.0, -0.0, 1.0, -1.0, 0.1, 65504.0, 65519.996, 65520.0, -65520.0, 1e5, float("inf"), -float("inf"),
         6.103515625e-05, 6.1035e-05, 5.960464477539063e-08, 2.9802322387695312e-08, 2.98023259e-08,
         8.940696716308594e-08, 1e-8, 1e-30, 1.401298464324817e-45, 3.4028234663852886e+38,
         1.00048828125, 1.00146484375, 1.0009765625 + 2 ** -24, 0.333333343, 2.5e-05, -7.62939453125e-06]
    rng = np.random.default_rng(7)
    v += list(rng.standard_normal(40) * 10.0 ** rng.uniform(-9, 5, 40))
    bits = [np.float32(x).view(np.uint32).item() for x in v]
    bits += [0x7FC00000, 0xFFC00001, 0x7F800001, 0x7FFFFFFF, 0x3F807FFF, 0x3F808000, 0x3F818000, 0x477FEFFF]
    return bits


def hexf(a):
    return np.asarray(a, dtype="<f4").tobytes().hex()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", help="libggml-base.so (default: the one llama-cpp-python ships)")
    args = ap.parse_args()
    lib_path = find_ggml_base(args.lib)
    g = Ggml(lib_path)

    fixture = {"generator": "tests/reference/make_quant_golden.py", "gguf_py": importlib.metadata.version("gguf"),
               "ggml_library": os.path.basename(lib_path), "rows": [], "scalars": []}
    try:
        fixture["llama_cpp_python"] = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        pass

    for name, x in rows() + fit_rows():
        entry = {"name": name, "n": int(x.size), "x": hexf(x), "types": {}}
        for tname, qt in TYPES if not name.startswith("fit_") else [("q4_k", Q.Q4_K)]:
            data = g.quantize(qt, x)
            if qt in NUMPY_QUANTIZERS:
                with np.errstate(over="ignore"):  # large_256 overflows fp16 on purpose
                    py = gguf.quants.quantize(x.reshape(1, -1), qt).tobytes()
                assert py == data, f"{name} {tname}: gguf-py and ggml_quantize_chunk disagree"
            deq = g.dequantize(qt, data, x.size)
            py_deq = gguf.quants.dequantize(np.frombuffer(data, dtype=np.uint8).reshape(1, -1), qt).reshape(-1)
            assert np.array_equal(deq.view(np.uint32), py_deq.astype(np.float32).view(np.uint32)), \
                f"{name} {tname}: gguf-py and ggml dequantize differently"
            entry["types"][tname] = {"bytes": data.hex()}
            if not name.startswith("fit_"):  # their floats would add 130 kB and test nothing new
                entry["types"][tname]["dequantized"] = hexf(deq)
        fixture["rows"].append(entry)

    for b in special_values():
        f = np.array([b], dtype=np.uint32).view(np.float32)[0]
        h = g.lib.ggml_fp32_to_fp16(ctypes.c_float(f))
        bf = g.lib.ggml_fp32_to_bf16(ctypes.c_float(f))
        if not np.isnan(f):
            with np.errstate(over="ignore"):
                assert h == np.float32(f).astype(np.float16).view(np.uint16).item(), hex(b)
        fixture["scalars"].append({"f32": f"{b:08x}", "f16": f"{h:04x}", "bf16": f"{bf:04x}"})

    with open(OUT, "w") as fh:
        json.dump(fixture, fh, indent=1)
        fh.write("\n")
    print(f"wrote {OUT}: {len(fixture['rows'])} rows, {len(fixture['scalars'])} scalars "
          f"(ggml: {lib_path})")


if __name__ == "__main__":
    main()
