#pragma once
/// @file reference/encoder.hpp
/// The kernels only a bidirectional (BERT-layout) encoder adds to the layer kernels, on
/// `device::Reference`: word + position + token-type embeddings, the exact (erf) GELU, the non-causal
/// softmax with a key padding mask, mean and CLS pooling. Each is a loop over rows (or elements) of a
/// row function in `detail`; `device::Cpu` runs the same row functions on its threads
/// (`cpu/encoder.hpp`), so the two give the same bits. The attention core built from them and the
/// device's batched GEMM is `nn/bidirectional_attention.hpp`.
///
/// Masks are (B,T) arrays of T holding 1 (a token) or 0 (padding); a padded position is never
/// attended to (as transformers' additive `finfo.min` mask: its probability is exactly 0), but it
/// still gets a hidden state of its own, as in transformers.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "distill/device/reference/layers.hpp"

namespace distill::device {

namespace detail {

// Row n = b·T + t of bert_embedding_forward.
template <class T>
void bert_embedding_row(T* out, const std::int32_t* tokens, const std::int32_t* types, const T* word, const T* pos,
                        const T* type, std::int64_t n, int Tn, int C) {
    const T* w = word + std::int64_t(tokens[n]) * C;
    const T* p = pos + std::int64_t(n % Tn) * C;
    const T* y = type + std::int64_t(types ? types[n] : 0) * C;
    T* o = out + n * C;
    for (int c = 0; c < C; ++c) o[c] = w[c] + p[c] + y[c];
}

// Element i of gelu_erf_forward / gelu_erf_backward.
template <class T>
T gelu_erf(T x) {
    const T r = T(0.70710678118654752440);
    return T(0.5) * x * (T(1) + std::erf(x * r));
}
template <class T>
T gelu_erf_grad(T x, T dout) {
    const T r = T(0.70710678118654752440), inv_sqrt_2pi = T(0.39894228040143267794);
    const T cdf = T(0.5) * (T(1) + std::erf(x * r));
    return dout * (cdf + x * inv_sqrt_2pi * std::exp(T(-0.5) * x * x));
}

// Row r = (b,h,t) of masked_softmax_forward, in place; m is the row's (T) key mask.
template <class T>
void masked_softmax_row(T* row, const T* m, int Tn, T scale) {
    T mx = -std::numeric_limits<T>::infinity();  // the raw maximum: (x - max)·scale keeps the low bits
    for (int j = 0; j < Tn; ++j)
        if (m[j] != T(0)) mx = std::max(mx, row[j]);
    T sum = 0;
    for (int j = 0; j < Tn; ++j) {
        row[j] = m[j] != T(0) ? std::exp((row[j] - mx) * scale) : T(0);
        sum += row[j];
    }
    const T inv = T(1) / sum;
    for (int j = 0; j < Tn; ++j) row[j] *= inv;
}

// Row r of masked_softmax_backward.
template <class T>
void masked_softmax_backward_row(T* o, const T* p, const T* d, const T* m, int Tn, T scale) {
    T dot = 0;
    for (int j = 0; j < Tn; ++j)
        if (m[j] != T(0)) dot += p[j] * d[j];
    for (int j = 0; j < Tn; ++j) o[j] = m[j] != T(0) ? scale * p[j] * (d[j] - dot) : T(0);
}

// Sequence b of mean_pool_forward.
template <class T>
void mean_pool_row(T* out, const T* h, const T* mask, int b, int Tn, int C) {
    T* o = out + std::int64_t(b) * C;
    std::fill(o, o + C, T(0));
    T count = 0;
    for (int t = 0; t < Tn; ++t) {
        const T m = mask[std::int64_t(b) * Tn + t];
        if (m == T(0)) continue;
        count += m;
        const T* x = h + (std::int64_t(b) * Tn + t) * C;
        for (int c = 0; c < C; ++c) o[c] += m * x[c];
    }
    const T inv = T(1) / std::max(count, T(1e-9));
    for (int c = 0; c < C; ++c) o[c] *= inv;
}

// Sequence b of mean_pool_backward.
template <class T>
void mean_pool_backward_row(T* dh, const T* dout, const T* mask, int b, int Tn, int C) {
    T count = 0;
    for (int t = 0; t < Tn; ++t) count += mask[std::int64_t(b) * Tn + t];
    const T inv = T(1) / std::max(count, T(1e-9));
    const T* d = dout + std::int64_t(b) * C;
    for (int t = 0; t < Tn; ++t) {
        const T m = mask[std::int64_t(b) * Tn + t];
        if (m == T(0)) continue;
        T* x = dh + (std::int64_t(b) * Tn + t) * C;
        for (int c = 0; c < C; ++c) x[c] += m * inv * d[c];
    }
}

}  // namespace detail

/// out(B,T,C) = word[tokens[b,t]] + pos[t] + type[types[b,t]] (`BertEmbeddings` before its
/// LayerNorm; position ids 0..T-1). `types` may be null: every token has type 0.
template <class T>
void bert_embedding_forward(const Reference&, T* out, const std::int32_t* tokens, const std::int32_t* types,
                            const T* word, const T* pos, const T* type, int B, int Tn, int C) {
    for (std::int64_t n = 0; n < std::int64_t(B) * Tn; ++n)
        detail::bert_embedding_row(out, tokens, types, word, pos, type, n, Tn, C);
}

/// Accumulates dword(V,C), dpos(T,C) and dtype(TT,C) from dout(B,T,C), serially in token order: a
/// token id repeats, and a fixed order keeps the sums deterministic (it is O(B·T·C), next to GEMMs).
/// Every host device runs this one.
template <class T>
void bert_embedding_backward(const HostMemory&, T* dword, T* dpos, T* dtype, const T* dout, const std::int32_t* tokens,
                             const std::int32_t* types, int B, int Tn, int C) {
    const std::int64_t N = std::int64_t(B) * Tn;
    for (std::int64_t n = 0; n < N; ++n) {
        const T* d = dout + n * C;
        T* w = dword + std::int64_t(tokens[n]) * C;
        T* p = dpos + std::int64_t(n % Tn) * C;
        T* y = dtype + std::int64_t(types ? types[n] : 0) * C;
        for (int c = 0; c < C; ++c) {
            w[c] += d[c];
            p[c] += d[c];
            y[c] += d[c];
        }
    }
}

/// out = x Φ(x) = 0.5 x (1 + erf(x / √2)), n elements (torch.nn.functional.gelu, approximate='none';
/// BERT's `hidden_act: "gelu"`).
template <class T>
void gelu_erf_forward(const Reference&, T* out, const T* in, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) out[i] = detail::gelu_erf(in[i]);
}

/// din = dout · (Φ(x) + x φ(x)), φ the standard normal density; n elements, din may alias dout.
template <class T>
void gelu_erf_backward(const Reference&, T* din, const T* in, const T* dout, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) din[i] = detail::gelu_erf_grad(in[i], dout[i]);
}

/// In place on att(B,H,T,T): row (b,h,t) becomes softmax over the keys j with mask[b,j] = 1 of
/// scale·att[b,h,t,j], and 0 at the masked keys (torch.softmax(scores·scale + (1 − mask)·finfo.min),
/// whose masked probabilities underflow to exactly 0). Every sequence needs at least one key.
template <class T>
void masked_softmax_forward(const Reference&, T* att, const T* mask, int B, int H, int Tn, T scale) {
    for (std::int64_t r = 0; r < std::int64_t(B) * H * Tn; ++r)
        detail::masked_softmax_row(att + r * Tn, mask + (r / (std::int64_t(H) * Tn)) * Tn, Tn, scale);
}

/// Backward of `masked_softmax_forward` from the probabilities att(B,H,T,T) and their gradient datt:
/// dscores[j] = scale · p_j (datt_j − Σ_k p_k datt_k) at unmasked keys, 0 at masked ones (whatever
/// datt holds there). dscores may alias datt.
template <class T>
void masked_softmax_backward(const Reference&, T* dscores, const T* att, const T* datt, const T* mask, int B, int H,
                             int Tn, T scale) {
    for (std::int64_t r = 0; r < std::int64_t(B) * H * Tn; ++r)
        detail::masked_softmax_backward_row(dscores + r * Tn, att + r * Tn, datt + r * Tn,
                                            mask + (r / (std::int64_t(H) * Tn)) * Tn, Tn, scale);
}

/// Mean pooling over the valid tokens (sentence-transformers' `Pooling`, mean mode):
/// out(B,C)[b] = Σ_t mask[b,t] h[b,t] / max(Σ_t mask[b,t], 1e-9), h (B,T,C).
template <class T>
void mean_pool_forward(const Reference&, T* out, const T* h, const T* mask, int B, int Tn, int C) {
    for (int b = 0; b < B; ++b) detail::mean_pool_row(out, h, mask, b, Tn, C);
}

/// Backward of `mean_pool_forward`: dh(B,T,C) += mask[b,t] dout[b] / max(Σ_t mask[b,t], 1e-9).
template <class T>
void mean_pool_backward(const Reference&, T* dh, const T* dout, const T* mask, int B, int Tn, int C) {
    for (int b = 0; b < B; ++b) detail::mean_pool_backward_row(dh, dout, mask, b, Tn, C);
}

/// CLS pooling: out(B,C)[b] = h[b,0], h (B,T,C). Every host device runs this one (a copy per sequence).
template <class T>
void cls_pool_forward(const HostMemory&, T* out, const T* h, int B, int Tn, int C) {
    for (int b = 0; b < B; ++b) std::copy_n(h + std::int64_t(b) * Tn * C, C, out + std::int64_t(b) * C);
}

/// Backward of `cls_pool_forward`: dh[b,0] += dout[b]. Every host device runs this one.
template <class T>
void cls_pool_backward(const HostMemory&, T* dh, const T* dout, int B, int Tn, int C) {
    for (int b = 0; b < B; ++b)
        for (int c = 0; c < C; ++c) dh[std::int64_t(b) * Tn * C + c] += dout[std::int64_t(b) * C + c];
}

}  // namespace distill::device
