#pragma once
/// @file attention.hpp
/// Causal multi-head self-attention core: from packed q,k,v to the attention probabilities and the
/// merged head outputs, and back. The projections around it are `nn::linear_*`.

#include <cmath>
#include <cstdint>

#include "distill/device.hpp"

namespace distill::nn {

/// Forward. qkv(B,T,3C) holds q | k | v, head h in columns [h*hs, (h+1)*hs) of each (hs = C/H).
/// att(B,H,T,T) = softmax(q k^T / sqrt(hs) + causal mask)   — the attention map, kept for backward
/// out(B,T,C)   = att v, heads side by side.
template <class Device, class T>
void attention_forward(const Device& dev, T* out, T* att, const T* qkv, int B, int Tn, int C, int H) {
    const int hs = C / H, C3 = 3 * C;
    const std::int64_t tt = std::int64_t(Tn) * Tn;
    for (int b = 0; b < B; ++b) {
        const T* q = qkv + std::int64_t(b) * Tn * C3;
        // scores(h) = q_h (T,hs) · k_h^T (hs,T)
        gemm_strided_batched(dev, false, true, Tn, Tn, hs, T(1), q, C3, hs, q + C, C3, hs, T(0), att + b * H * tt, Tn,
                             tt, H);
    }
    causal_softmax_forward(dev, att, B * H, Tn, T(1) / std::sqrt(T(hs)));
    for (int b = 0; b < B; ++b) {
        const T* v = qkv + std::int64_t(b) * Tn * C3 + 2 * C;
        // out_h (T,hs) = att_h (T,T) · v_h (T,hs)
        gemm_strided_batched(dev, false, false, Tn, hs, Tn, T(1), att + b * H * tt, Tn, tt, v, C3, hs, T(0),
                             out + std::int64_t(b) * Tn * C, C, hs, H);
    }
}

/// Backward. From dout(B,T,C) and the forward's qkv and att: dqkv(B,T,3C) (overwritten), using
/// datt(B,H,T,T) as scratch. `extra_datt` (B,H,T,T, may be null) is a gradient on the attention map
/// from a transfer loss, added before the softmax backward.
template <class Device, class T>
void attention_backward(const Device& dev, T* dqkv, T* datt, const T* dout, const T* qkv, const T* att,
                        const T* extra_datt, int B, int Tn, int C, int H) {
    const int hs = C / H, C3 = 3 * C;
    const std::int64_t tt = std::int64_t(Tn) * Tn;
    for (int b = 0; b < B; ++b) {
        const std::int64_t xo = std::int64_t(b) * Tn * C3, yo = std::int64_t(b) * Tn * C;
        // datt_h (T,T) = dout_h (T,hs) · v_h^T ;  dv_h (T,hs) = att_h^T · dout_h
        gemm_strided_batched(dev, false, true, Tn, Tn, hs, T(1), dout + yo, C, hs, qkv + xo + 2 * C, C3, hs, T(0),
                             datt + b * H * tt, Tn, tt, H);
        gemm_strided_batched(dev, true, false, Tn, hs, Tn, T(1), att + b * H * tt, Tn, tt, dout + yo, C, hs, T(0),
                             dqkv + xo + 2 * C, C3, hs, H);
    }
    if (extra_datt) accumulate(dev, datt, extra_datt, std::int64_t(B) * H * tt);
    causal_softmax_backward(dev, datt, att, datt, B * H, Tn, T(1) / std::sqrt(T(hs)));
    for (int b = 0; b < B; ++b) {
        const std::int64_t xo = std::int64_t(b) * Tn * C3;
        // dq_h = dscores_h (T,T) · k_h ;  dk_h = dscores_h^T · q_h
        gemm_strided_batched(dev, false, false, Tn, hs, Tn, T(1), datt + b * H * tt, Tn, tt, qkv + xo + C, C3, hs, T(0),
                             dqkv + xo, C3, hs, H);
        gemm_strided_batched(dev, true, false, Tn, hs, Tn, T(1), datt + b * H * tt, Tn, tt, qkv + xo, C3, hs, T(0),
                             dqkv + xo + C, C3, hs, H);
    }
}

}  // namespace distill::nn
