#pragma once
/// @file encoder_kernels.hpp
/// The kernels only a bidirectional (BERT-layout) encoder needs: word + position + token-type
/// embeddings, the exact (erf) GELU, the non-causal softmax with a key padding mask, mean and CLS
/// pooling, and the attention core built from them and the device's batched GEMM.
///
/// **Host memory only.** These are written once as host loops (OpenMP over rows, with the device's
/// thread count) instead of one version per device: every function `static_assert`s that its device
/// keeps tensors in host memory (`device::Reference`, `device::Cpu`). The GEMMs and LayerNorms around
/// them are the device's own kernels, found by argument-dependent lookup. Every reduction runs in a
/// fixed order (rows are split among threads, never a row), so results are bit-identical run to run
/// at a fixed thread count.
///
/// Masks are (B,T) arrays of T holding 1 (a token) or 0 (padding); a padded position is never
/// attended to (as transformers' additive `finfo.min` mask: its probability is exactly 0), but it
/// still gets a hidden state of its own, as in transformers.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "distill/detail/macros.hpp"
#include "distill/device.hpp"

namespace distill::nn {

namespace encoder_detail {

template <class Device>
constexpr void require_host() {
    static_assert(Device::memory == memory_space::host,
                  "the encoder kernels (nn/encoder_kernels.hpp) are host code: run student::Encoder on a device "
                  "with host memory (device::Reference, device::Cpu)");
}

template <class Device>
int threads(const Device& dev) {
    return std::max(1, dev.threads());
}

}  // namespace encoder_detail

/// out(B,T,C) = word[tokens[b,t]] + pos[t] + type[types[b,t]] (`BertEmbeddings` before its
/// LayerNorm; position ids 0..T-1). `types` may be null: every token has type 0.
template <class Device, class T>
void bert_embedding_forward(const Device& dev, T* out, const std::int32_t* tokens, const std::int32_t* types,
                            const T* word, const T* pos, const T* type, int B, int Tn, int C) {
    encoder_detail::require_host<Device>();
    const std::int64_t N = std::int64_t(B) * Tn;
    DISTILL_OMP(parallel for schedule(static) num_threads(encoder_detail::threads(dev)))
    for (std::int64_t n = 0; n < N; ++n) {
        const T* w = word + std::int64_t(tokens[n]) * C;
        const T* p = pos + std::int64_t(n % Tn) * C;
        const T* y = type + std::int64_t(types ? types[n] : 0) * C;
        T* o = out + n * C;
        for (int c = 0; c < C; ++c) o[c] = w[c] + p[c] + y[c];
    }
}

/// Accumulates dword(V,C), dpos(T,C) and dtype(TT,C) from dout(B,T,C). Serial in token order: a
/// token id repeats, and a fixed order keeps the sums deterministic (it is O(B·T·C), next to GEMMs).
template <class Device, class T>
void bert_embedding_backward(const Device&, T* dword, T* dpos, T* dtype, const T* dout, const std::int32_t* tokens,
                             const std::int32_t* types, int B, int Tn, int C) {
    encoder_detail::require_host<Device>();
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
template <class Device, class T>
void gelu_erf_forward(const Device& dev, T* out, const T* in, std::int64_t n) {
    encoder_detail::require_host<Device>();
    const T r = T(0.70710678118654752440);
    DISTILL_OMP(parallel for schedule(static) num_threads(encoder_detail::threads(dev)))
    for (std::int64_t i = 0; i < n; ++i) out[i] = T(0.5) * in[i] * (T(1) + std::erf(in[i] * r));
}

/// din = dout · (Φ(x) + x φ(x)), φ the standard normal density; n elements, din may alias dout.
template <class Device, class T>
void gelu_erf_backward(const Device& dev, T* din, const T* in, const T* dout, std::int64_t n) {
    encoder_detail::require_host<Device>();
    const T r = T(0.70710678118654752440), inv_sqrt_2pi = T(0.39894228040143267794);
    DISTILL_OMP(parallel for schedule(static) num_threads(encoder_detail::threads(dev)))
    for (std::int64_t i = 0; i < n; ++i) {
        const T x = in[i];
        const T cdf = T(0.5) * (T(1) + std::erf(x * r));
        din[i] = dout[i] * (cdf + x * inv_sqrt_2pi * std::exp(T(-0.5) * x * x));
    }
}

/// In place on att(B,H,T,T): row (b,h,t) becomes softmax over the keys j with mask[b,j] = 1 of
/// scale·att[b,h,t,j], and 0 at the masked keys (torch.softmax(scores·scale + (1 − mask)·finfo.min),
/// whose masked probabilities underflow to exactly 0). Every sequence needs at least one key.
template <class Device, class T>
void masked_softmax_forward(const Device& dev, T* att, const T* mask, int B, int H, int Tn, T scale) {
    encoder_detail::require_host<Device>();
    const std::int64_t rows = std::int64_t(B) * H * Tn;
    DISTILL_OMP(parallel for schedule(static) num_threads(encoder_detail::threads(dev)))
    for (std::int64_t r = 0; r < rows; ++r) {
        const T* m = mask + (r / (std::int64_t(H) * Tn)) * Tn;
        T* row = att + r * Tn;
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
}

/// Backward of `masked_softmax_forward` from the probabilities att and their gradient datt:
/// dscores[j] = scale · p_j (datt_j − Σ_k p_k datt_k) at unmasked keys, 0 at masked ones (whatever
/// datt holds there). dscores may alias datt.
template <class Device, class T>
void masked_softmax_backward(const Device& dev, T* dscores, const T* att, const T* datt, const T* mask, int B, int H,
                             int Tn, T scale) {
    encoder_detail::require_host<Device>();
    const std::int64_t rows = std::int64_t(B) * H * Tn;
    DISTILL_OMP(parallel for schedule(static) num_threads(encoder_detail::threads(dev)))
    for (std::int64_t r = 0; r < rows; ++r) {
        const T* m = mask + (r / (std::int64_t(H) * Tn)) * Tn;
        const T* p = att + r * Tn;
        const T* d = datt + r * Tn;
        T* o = dscores + r * Tn;
        T dot = 0;
        for (int j = 0; j < Tn; ++j)
            if (m[j] != T(0)) dot += p[j] * d[j];
        for (int j = 0; j < Tn; ++j) o[j] = m[j] != T(0) ? scale * p[j] * (d[j] - dot) : T(0);
    }
}

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

/// Mean pooling over the valid tokens (sentence-transformers' `Pooling`, mean mode):
/// out(B,C)[b] = Σ_t mask[b,t] h[b,t] / max(Σ_t mask[b,t], 1e-9).
template <class Device, class T>
void mean_pool_forward(const Device& dev, T* out, const T* h, const T* mask, int B, int Tn, int C) {
    encoder_detail::require_host<Device>();
    DISTILL_OMP(parallel for schedule(static) num_threads(encoder_detail::threads(dev)))
    for (int b = 0; b < B; ++b) {
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
}

/// Backward of `mean_pool_forward`: dh(B,T,C) += mask[b,t] dout[b] / max(Σ_t mask[b,t], 1e-9).
template <class Device, class T>
void mean_pool_backward(const Device& dev, T* dh, const T* dout, const T* mask, int B, int Tn, int C) {
    encoder_detail::require_host<Device>();
    DISTILL_OMP(parallel for schedule(static) num_threads(encoder_detail::threads(dev)))
    for (int b = 0; b < B; ++b) {
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
}

/// CLS pooling: out(B,C)[b] = h[b,0].
template <class Device, class T>
void cls_pool_forward(const Device&, T* out, const T* h, int B, int Tn, int C) {
    encoder_detail::require_host<Device>();
    for (int b = 0; b < B; ++b) std::copy_n(h + std::int64_t(b) * Tn * C, C, out + std::int64_t(b) * C);
}

/// Backward of `cls_pool_forward`: dh[b,0] += dout[b].
template <class Device, class T>
void cls_pool_backward(const Device&, T* dh, const T* dout, int B, int Tn, int C) {
    encoder_detail::require_host<Device>();
    for (int b = 0; b < B; ++b)
        for (int c = 0; c < C; ++c) dh[std::int64_t(b) * Tn * C + c] += dout[std::int64_t(b) * C + c];
}

}  // namespace distill::nn
