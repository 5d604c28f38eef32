#pragma once
/// @file attention.hpp
/// Causal self-attention core, multi-head or grouped-query: from packed q,k,v to the attention
/// probabilities and the merged head outputs, and back. The projections around it are `nn::linear_*`.
///
/// A q|k|v row is (H + 2 Hkv) hs wide: H query heads, then Hkv key heads, then Hkv value heads, each
/// hs wide. Query head h attends with key/value head h / G, G = H / Hkv (G = 1: multi-head).

#include <cmath>
#include <cstdint>

#include "distill/device.hpp"

namespace distill::nn {

namespace detail {

// Calls f(h0, j, count, kv_stride) for each run of query heads [h0, h0 + count) that one batched GEMM
// covers: all H at once with key/value stride hs (multi-head), or the G heads of kv head j with
// stride 0 (grouped-query: they share it).
template <class F>
void for_head_groups(int H, int Hkv, int hs, F&& f) {
    if (H == Hkv) return f(0, 0, H, std::int64_t(hs));
    for (int j = 0; j < Hkv; ++j) f(j * (H / Hkv), j, H / Hkv, std::int64_t(0));
}

}  // namespace detail

/// Forward. qkv(B,T,(H+2Hkv)hs) as in the file comment.
/// att(B,H,T,T) = softmax(q k^T / sqrt(hs) + causal mask)   — the attention map, kept for backward
/// out(B,T,H*hs) = att v, heads side by side.
template <class Device, class T>
void attention_forward(const Device& dev, T* out, T* att, const T* qkv, int B, int Tn, int H, int Hkv, int hs) {
    const int C = H * hs, row = (H + 2 * Hkv) * hs, kof = C, vof = C + Hkv * hs;
    const std::int64_t tt = std::int64_t(Tn) * Tn;
    for (int b = 0; b < B; ++b) {
        const T* x = qkv + std::int64_t(b) * Tn * row;
        detail::for_head_groups(H, Hkv, hs, [&](int h0, int j, int count, std::int64_t kv_stride) {
            // scores(h) = q_h (T,hs) · k_j^T (hs,T)
            gemm_strided_batched(dev, false, true, Tn, Tn, hs, T(1), x + h0 * hs, row, hs, x + kof + j * hs, row,
                                 kv_stride, T(0), att + (std::int64_t(b) * H + h0) * tt, Tn, tt, count);
        });
    }
    causal_softmax_forward(dev, att, B * H, Tn, T(1) / std::sqrt(T(hs)));
    for (int b = 0; b < B; ++b) {
        const T* x = qkv + std::int64_t(b) * Tn * row;
        detail::for_head_groups(H, Hkv, hs, [&](int h0, int j, int count, std::int64_t kv_stride) {
            // out_h (T,hs) = att_h (T,T) · v_j (T,hs)
            gemm_strided_batched(dev, false, false, Tn, hs, Tn, T(1), att + (std::int64_t(b) * H + h0) * tt, Tn, tt,
                                 x + vof + j * hs, row, kv_stride, T(0), out + std::int64_t(b) * Tn * C + h0 * hs, C,
                                 hs, count);
        });
    }
}

/// Backward. From dout(B,T,H*hs) and the forward's qkv and att: dqkv(B,T,(H+2Hkv)hs) (overwritten),
/// using datt(B,H,T,T) as scratch. `extra_datt` (B,H,T,T, may be null) is a gradient on the
/// attention map from a transfer loss, added before the softmax backward. A shared key/value head's
/// gradient is the sum over its query heads.
template <class Device, class T>
void attention_backward(const Device& dev, T* dqkv, T* datt, const T* dout, const T* qkv, const T* att,
                        const T* extra_datt, int B, int Tn, int H, int Hkv, int hs) {
    const int C = H * hs, row = (H + 2 * Hkv) * hs, kof = C, vof = C + Hkv * hs, G = H / Hkv;
    const std::int64_t tt = std::int64_t(Tn) * Tn;
    // dkv_j (T,hs) = Σ_{h of group j} op(M_h)^T (T,T) · X_h (T,hs): one batched GEMM when every group
    // has one head, else G accumulating GEMMs per kv head
    auto sum_over_group = [&](const T* M, const T* X, int xld, T* D) {
        if (G == 1)
            return gemm_strided_batched(dev, true, false, Tn, hs, Tn, T(1), M, Tn, tt, X, xld, hs, T(0), D, row, hs, H);
        for (int j = 0; j < Hkv; ++j)
            for (int i = 0; i < G; ++i) {
                const int h = j * G + i;
                gemm(dev, true, false, Tn, hs, Tn, T(1), M + h * tt, Tn, X + h * hs, xld, i ? T(1) : T(0), D + j * hs,
                     row);
            }
    };
    for (int b = 0; b < B; ++b) {
        const std::int64_t xo = std::int64_t(b) * Tn * row, yo = std::int64_t(b) * Tn * C;
        detail::for_head_groups(H, Hkv, hs, [&](int h0, int j, int count, std::int64_t kv_stride) {
            // datt_h (T,T) = dout_h (T,hs) · v_j^T
            gemm_strided_batched(dev, false, true, Tn, Tn, hs, T(1), dout + yo + h0 * hs, C, hs,
                                 qkv + xo + vof + j * hs, row, kv_stride, T(0), datt + (std::int64_t(b) * H + h0) * tt,
                                 Tn, tt, count);
        });
        // dv_j = Σ_h att_h^T · dout_h
        sum_over_group(att + std::int64_t(b) * H * tt, dout + yo, C, dqkv + xo + vof);
    }
    if (extra_datt) accumulate(dev, datt, extra_datt, std::int64_t(B) * H * tt);
    causal_softmax_backward(dev, datt, att, datt, B * H, Tn, T(1) / std::sqrt(T(hs)));
    for (int b = 0; b < B; ++b) {
        const std::int64_t xo = std::int64_t(b) * Tn * row;
        detail::for_head_groups(H, Hkv, hs, [&](int h0, int j, int count, std::int64_t kv_stride) {
            // dq_h = dscores_h (T,T) · k_j
            gemm_strided_batched(dev, false, false, Tn, hs, Tn, T(1), datt + (std::int64_t(b) * H + h0) * tt, Tn, tt,
                                 qkv + xo + kof + j * hs, row, kv_stride, T(0), dqkv + xo + h0 * hs, row, hs, count);
        });
        // dk_j = Σ_h dscores_h^T · q_h
        sum_over_group(datt + std::int64_t(b) * H * tt, qkv + xo, row, dqkv + xo + kof);
    }
}

}  // namespace distill::nn
