"""PyTorch reference of distill's Llama-family blocks, for reference benchmarks (benchmarks/reference/
bench_train.py --arch llama). The same math as transformers' LlamaForCausalLM (eager attention):

  x = embed[tok]                                           hidden[0] = x
  per layer: a = rmsnorm_1(x); q, k, v = q_proj(a), k_proj(a), v_proj(a)
             q, k rotated by RoPE (rotate-half pairing, base theta)
             k, v repeated H/Hkv times (grouped-query attention)
             x = x + o_proj(merge(softmax(q k^T / sqrt(hs) + causal) v))
             x = x + down_proj(silu(gate_proj(b)) * up_proj(b)),  b = rmsnorm_2(x)
  logits = norm(x) @ lm_head^T                             (untied head, no biases)

The golden comparison against transformers itself is tests/reference/make_llama_golden.py; this
module exists so that the benchmark's reference needs only torch (Debian's python3-torch).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class LlamaConfig:
    vocab_size: int
    context_length: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    rope_theta: float = 10000.0
    eps: float = 1e-6
    sdpa: bool = False  # F.scaled_dot_product_attention (no map kept), as in gpt.py


class RMSNorm(nn.Module):
    def __init__(self, c, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, H, Hkv, F_ = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_ff
        self.H, self.Hkv, self.hs = H, Hkv, C // H
        self.sdpa = cfg.sdpa
        self.input_layernorm = RMSNorm(C, cfg.eps)
        self.q_proj = nn.Linear(C, H * self.hs, bias=False)
        self.k_proj = nn.Linear(C, Hkv * self.hs, bias=False)
        self.v_proj = nn.Linear(C, Hkv * self.hs, bias=False)
        self.o_proj = nn.Linear(C, C, bias=False)
        self.post_attention_layernorm = RMSNorm(C, cfg.eps)
        self.gate_proj = nn.Linear(C, F_, bias=False)
        self.up_proj = nn.Linear(C, F_, bias=False)
        self.down_proj = nn.Linear(F_, C, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, C = x.shape
        a = self.input_layernorm(x)
        q = self.q_proj(a).view(B, T, self.H, self.hs).transpose(1, 2)
        k = self.k_proj(a).view(B, T, self.Hkv, self.hs).transpose(1, 2)
        v = self.v_proj(a).view(B, T, self.Hkv, self.hs).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        g = self.H // self.Hkv
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.hs) + mask
            y = F.softmax(scores, dim=-1) @ v
        x = x + self.o_proj(y.transpose(1, 2).reshape(B, T, C))
        b = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(b)) * self.up_proj(b))


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        hs = cfg.d_model // cfg.n_heads
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hs, 2).float() / hs))
        ang = torch.outer(torch.arange(cfg.context_length).float(), inv)
        emb = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        T = cfg.context_length
        self.register_buffer("mask", torch.full((T, T), float("-inf")).triu(1), persistent=False)

    def forward(self, tokens):
        T = tokens.shape[1]
        x = self.embed_tokens(tokens)
        cos, sin, mask = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype), self.mask[:T, :T]
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return (self.lm_head(self.norm(x)),)
