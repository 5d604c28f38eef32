#pragma once
/// @file cpu/encoder.hpp
/// The bidirectional encoder's kernels on `device::Cpu`: the Reference's row functions
/// (`reference/encoder.hpp`: formulas, shapes, masks) spread over the device's threads (OpenMP,
/// static schedule over rows; a row is never split, so every reduction runs in a fixed order and the
/// bits equal the Reference's at any thread count). `bert_embedding_backward` and the CLS pooling
/// are the host devices' shared serial kernels of `reference/encoder.hpp`.

#include <algorithm>
#include <cstdint>

#include "distill/detail/macros.hpp"
#include "distill/device/cpu/layers.hpp"
#include "distill/device/reference/encoder.hpp"

namespace distill::device {

/// out(B,T,C) = word[tokens] + pos[t] + type[types] (see the Reference), threaded over the B·T rows.
template <class T>
void bert_embedding_forward(const Cpu& dev, T* out, const std::int32_t* tokens, const std::int32_t* types,
                            const T* word, const T* pos, const T* type, int B, int Tn, int C) {
    const std::int64_t N = std::int64_t(B) * Tn;
    DISTILL_OMP(parallel for schedule(static) num_threads(std::max(1, dev.threads())))
    for (std::int64_t n = 0; n < N; ++n) detail::bert_embedding_row(out, tokens, types, word, pos, type, n, Tn, C);
}

/// out = x Φ(x), n elements (see the Reference), threaded.
template <class T>
void gelu_erf_forward(const Cpu& dev, T* out, const T* in, std::int64_t n) {
    DISTILL_OMP(parallel for schedule(static) num_threads(std::max(1, dev.threads())))
    for (std::int64_t i = 0; i < n; ++i) out[i] = detail::gelu_erf(in[i]);
}

/// din = dout · (Φ(x) + x φ(x)), n elements (see the Reference), threaded; din may alias dout.
template <class T>
void gelu_erf_backward(const Cpu& dev, T* din, const T* in, const T* dout, std::int64_t n) {
    DISTILL_OMP(parallel for schedule(static) num_threads(std::max(1, dev.threads())))
    for (std::int64_t i = 0; i < n; ++i) din[i] = detail::gelu_erf_grad(in[i], dout[i]);
}

/// Masked softmax in place on att(B,H,T,T) (see the Reference), threaded over the B·H·T rows.
template <class T>
void masked_softmax_forward(const Cpu& dev, T* att, const T* mask, int B, int H, int Tn, T scale) {
    const std::int64_t rows = std::int64_t(B) * H * Tn;
    DISTILL_OMP(parallel for schedule(static) num_threads(std::max(1, dev.threads())))
    for (std::int64_t r = 0; r < rows; ++r)
        detail::masked_softmax_row(att + r * Tn, mask + (r / (std::int64_t(H) * Tn)) * Tn, Tn, scale);
}

/// Backward of `masked_softmax_forward` (see the Reference), threaded over rows; dscores may alias datt.
template <class T>
void masked_softmax_backward(const Cpu& dev, T* dscores, const T* att, const T* datt, const T* mask, int B, int H,
                             int Tn, T scale) {
    const std::int64_t rows = std::int64_t(B) * H * Tn;
    DISTILL_OMP(parallel for schedule(static) num_threads(std::max(1, dev.threads())))
    for (std::int64_t r = 0; r < rows; ++r)
        detail::masked_softmax_backward_row(dscores + r * Tn, att + r * Tn, datt + r * Tn,
                                            mask + (r / (std::int64_t(H) * Tn)) * Tn, Tn, scale);
}

/// Mean pooling out(B,C) over the valid tokens of h(B,T,C) (see the Reference), threaded over sequences.
template <class T>
void mean_pool_forward(const Cpu& dev, T* out, const T* h, const T* mask, int B, int Tn, int C) {
    DISTILL_OMP(parallel for schedule(static) num_threads(std::max(1, dev.threads())))
    for (int b = 0; b < B; ++b) detail::mean_pool_row(out, h, mask, b, Tn, C);
}

/// Backward of `mean_pool_forward` (see the Reference), threaded over sequences.
template <class T>
void mean_pool_backward(const Cpu& dev, T* dh, const T* dout, const T* mask, int B, int Tn, int C) {
    DISTILL_OMP(parallel for schedule(static) num_threads(std::max(1, dev.threads())))
    for (int b = 0; b < B; ++b) detail::mean_pool_backward_row(dh, dout, mask, b, Tn, C);
}

}  // namespace distill::device
