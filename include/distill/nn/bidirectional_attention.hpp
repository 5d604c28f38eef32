#pragma once
/// @file bidirectional_attention.hpp
/// The bidirectional (non-causal, key-padding-masked) multi-head attention core of an encoder, written
/// once against the device's kernels: its batched GEMM (`gemm_strided_batched`), `accumulate`, and the
/// encoder kernels `masked_softmax_forward/backward` (`device/<name>/encoder`), all found by
/// argument-dependent lookup.

#include <cmath>
#include <cstdint>

#include "distill/device.hpp"

namespace distill::nn {

/// Bidirectional multi-head attention core from separate q, k, v (N,C) each (head h in columns
/// [h·hs, (h+1)·hs), hs = C/H, N = B·T):
///   att(B,H,T,T) = masked_softmax(q_h k_h^T / √hs)   — kept for backward and transfer losses
///   out(B,T,C)   = att_h v_h, heads side by side.
template <class Device, class T>
void bidirectional_attention_forward(const Device& dev, T* out, T* att, const T* q, const T* k, const T* v,
                                     const T* mask, int B, int Tn, int C, int H) {
    const int hs = C / H;
    const std::int64_t tt = std::int64_t(Tn) * Tn, seq = std::int64_t(Tn) * C;
    for (int b = 0; b < B; ++b)  // scores_h (T,T) = q_h (T,hs) · k_h^T (hs,T)
        gemm_strided_batched(dev, false, true, Tn, Tn, hs, T(1), q + b * seq, C, hs, k + b * seq, C, hs, T(0),
                             att + b * H * tt, Tn, tt, H);
    masked_softmax_forward(dev, att, mask, B, H, Tn, T(1) / std::sqrt(T(hs)));
    for (int b = 0; b < B; ++b)  // out_h (T,hs) = att_h (T,T) · v_h (T,hs)
        gemm_strided_batched(dev, false, false, Tn, hs, Tn, T(1), att + b * H * tt, Tn, tt, v + b * seq, C, hs, T(0),
                             out + b * seq, C, hs, H);
}

/// Backward of `bidirectional_attention_forward`: dq, dk, dv (N,C) overwritten from dout(N,C), using
/// datt(B,H,T,T) as scratch. `extra_datt` (B,H,T,T, may be null) is a gradient on the attention
/// probabilities from a transfer loss, added before the softmax backward.
template <class Device, class T>
void bidirectional_attention_backward(const Device& dev, T* dq, T* dk, T* dv, T* datt, const T* dout, const T* q,
                                      const T* k, const T* v, const T* att, const T* mask, const T* extra_datt, int B,
                                      int Tn, int C, int H) {
    const int hs = C / H;
    const std::int64_t tt = std::int64_t(Tn) * Tn, seq = std::int64_t(Tn) * C;
    for (int b = 0; b < B; ++b) {
        // datt_h (T,T) = dout_h (T,hs) · v_h^T ;  dv_h (T,hs) = att_h^T · dout_h
        gemm_strided_batched(dev, false, true, Tn, Tn, hs, T(1), dout + b * seq, C, hs, v + b * seq, C, hs, T(0),
                             datt + b * H * tt, Tn, tt, H);
        gemm_strided_batched(dev, true, false, Tn, hs, Tn, T(1), att + b * H * tt, Tn, tt, dout + b * seq, C, hs, T(0),
                             dv + b * seq, C, hs, H);
    }
    if (extra_datt) accumulate(dev, datt, extra_datt, std::int64_t(B) * H * tt);
    masked_softmax_backward(dev, datt, att, datt, mask, B, H, Tn, T(1) / std::sqrt(T(hs)));
    for (int b = 0; b < B; ++b) {
        // dq_h = dscores_h (T,T) · k_h ;  dk_h = dscores_h^T · q_h
        gemm_strided_batched(dev, false, false, Tn, hs, Tn, T(1), datt + b * H * tt, Tn, tt, k + b * seq, C, hs, T(0),
                             dq + b * seq, C, hs, H);
        gemm_strided_batched(dev, true, false, Tn, hs, Tn, T(1), datt + b * H * tt, Tn, tt, q + b * seq, C, hs, T(0),
                             dk + b * seq, C, hs, H);
    }
}

}  // namespace distill::nn
