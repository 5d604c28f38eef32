"""PyTorch reference for distill's GPT-style student model.

This file is used only to generate committed test fixtures and reference
benchmarks; it is never a runtime dependency of the C++ library.

Model (must match the C++ implementation exactly):
  x = wte[tok] + wpe[arange(T)]                      hidden[0] = x
  per layer l:
    a = ln_1(x); q, k, v = split(c_attn(a), C)       (q, k, v in that order)
    head h uses columns h*hs:(h+1)*hs of q, k and v
    att = softmax(q k^T / sqrt(hs) + causal(-inf))   attention map (B,H,T,T)
    x = x + c_proj(merge_heads(att @ v))
    x = x + mlp.c_proj(gelu_tanh(mlp.c_fc(ln_2(x))))
    hidden[l+1] = x                                  (l < L-1)
  xf = ln_f(x)                                       hidden[L] = xf
  logits = xf @ wte^T                                (LM head tied to wte)

LayerNorm eps is 1e-5; GELU is the tanh approximation.

Also provides a tiny dependency-free safetensors writer/reader (torch + stdlib).
"""

import ctypes
import json
import math
import struct
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-5


@dataclass
class GPTConfig:
    vocab_size: int
    context_length: int  # Tmax
    d_model: int  # C
    n_layers: int  # L
    n_heads: int  # H
    d_ff: int  # F
    # PyTorch 2's fused attention (F.scaled_dot_product_attention, is_causal): no (T,T) map is kept and
    # the blocks return None for it. For the benchmarks' strongest reference; the goldens keep the maps.
    sdpa: bool = False

    def metadata(self):
        """Config as safetensors metadata (all values are strings)."""
        return {
            "vocab_size": str(self.vocab_size),
            "context_length": str(self.context_length),
            "d_model": str(self.d_model),
            "n_layers": str(self.n_layers),
            "n_heads": str(self.n_heads),
            "d_ff": str(self.d_ff),
        }


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0
        self.n_heads = cfg.n_heads
        self.sdpa = cfg.sdpa
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # weight (3C, C)
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)  # weight (C, C)
        T = cfg.context_length
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        # Not persistent: state_dict() holds exactly the parameters.
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        H = self.n_heads
        hs = C // H
        qkv = self.c_attn(x)  # (B, T, 3C)
        q, k, v = qkv.split(C, dim=2)  # each (B, T, C)
        # (B, T, C) -> (B, H, T, hs): head h takes columns h*hs:(h+1)*hs
        q = q.view(B, T, H, hs).transpose(1, 2)
        k = k.view(B, T, H, hs).transpose(1, 2)
        v = v.view(B, T, H, hs).transpose(1, 2)
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hs)
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)), None
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, H, T, T)
        scores = scores.masked_fill(self.causal_mask[:T, :T], float("-inf"))
        att = F.softmax(scores, dim=-1)  # attention map (B, H, T, T)
        y = att @ v  # (B, H, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # merge heads in order
        return self.c_proj(y), att


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.d_ff)  # weight (F, C)
        self.c_proj = nn.Linear(cfg.d_ff, cfg.d_model)  # weight (C, F)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=LN_EPS)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=LN_EPS)
        self.mlp = MLP(cfg)

    def forward(self, x):
        a, att = self.attn(self.ln_1(x))
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, att


class GPT(nn.Module):
    """Parameter names: wte.weight, wpe.weight, h.{l}.*, ln_f.* (see module doc)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)  # (V, C)
        self.wpe = nn.Embedding(cfg.context_length, cfg.d_model)  # (Tmax, C)
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=LN_EPS)

    def forward(self, tokens):
        """tokens (B, T) int64, T <= Tmax.

        Returns (logits (B,T,V), hidden states [L+1 x (B,T,C)],
        attention maps [L x (B,H,T,T)]).
        """
        B, T = tokens.shape
        assert T <= self.cfg.context_length
        pos = torch.arange(T, device=tokens.device)
        x = self.wte(tokens) + self.wpe(pos)  # (B, T, C)
        hidden = [x]
        attns = []
        for l, block in enumerate(self.h):
            x, att = block(x)
            attns.append(att)
            if l < len(self.h) - 1:
                hidden.append(x)
        xf = self.ln_f(x)
        hidden.append(xf)  # Hugging Face convention: last state is post-ln_f
        logits = xf @ self.wte.weight.t()  # tied LM head, (B, T, V)
        return logits, hidden, attns


def lm_loss(logits, targets):
    """Mean cross-entropy over positions whose target is not -1."""
    V = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1)


# ---------------------------------------------------------------------------
# Minimal safetensors I/O (torch + stdlib only)
# ---------------------------------------------------------------------------

_DTYPE_TO_ST = {
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.bfloat16: "BF16",
}
_ST_TO_DTYPE = {v: k for k, v in _DTYPE_TO_ST.items()}


def _tensor_bytes(t):
    t = t.detach().cpu().contiguous()
    nbytes = t.numel() * t.element_size()
    if nbytes == 0:
        return b""
    return ctypes.string_at(t.data_ptr(), nbytes)


def write_safetensors(path, tensors, metadata=None):
    """Write {name: tensor} to `path` in safetensors format.

    Layout: u64 little-endian header length N, N bytes of JSON header (padded
    with spaces to a multiple of 8), then the raw little-endian tensor data in
    insertion order. Supported dtypes: F32, F64, I64, BF16.
    """
    if sys.byteorder != "little":
        raise RuntimeError("write_safetensors assumes a little-endian host")
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _DTYPE_TO_ST:
            raise TypeError(f"{name}: unsupported dtype {t.dtype}")
        data = _tensor_bytes(t)
        header[name] = {
            "dtype": _DTYPE_TO_ST[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * (-len(hjson) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for data in blobs:
            f.write(data)


def read_safetensors(path):
    """Read a safetensors file written by write_safetensors.

    Returns (dict name -> tensor, metadata dict or {}).
    """
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    base = 8 + n
    metadata = header.pop("__metadata__", {})
    out = {}
    for name, info in header.items():
        dtype = _ST_TO_DTYPE[info["dtype"]]
        b, e = info["data_offsets"]
        buf = bytearray(raw[base + b : base + e])
        if len(buf) == 0:
            t = torch.empty(info["shape"], dtype=dtype)
        else:
            t = torch.frombuffer(buf, dtype=dtype).reshape(info["shape"]).clone()
        out[name] = t
    return out, metadata
