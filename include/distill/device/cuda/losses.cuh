#pragma once
/// @file losses.cuh
/// The fused loss kernels of `device::Cuda`: each divergence of `device/reference/losses.hpp` (read
/// it for the formulas and conventions: mask, losses, accumulate, grad_scale) with one block per
/// row: one streaming pass for the row's log-sum-exps (online max and sum, both distributions at
/// once), one pass for the value and the gradient. Nothing (B·T × V) is materialized. Sums run in
/// double through fixed-shape block reductions: deterministic, and as accurate as the oracle.
/// Log-probabilities are formed in double too, x·(1/τ) − lse with both in double (so the
/// log-sum-exp near a logit of 1e4 keeps ~1e-12 absolute, where one fp32 number would lose 5e-4;
/// see math::log_softmax_entry), and rounded to T only at the store. A logit of −inf gives a
/// probability of exactly 0, whose terms are skipped.
/// Masks, targets and top-k ids may be in host or device memory.

#include <cmath>
#include <cstdint>
#include <limits>

#include "distill/device.hpp"
#include "distill/device/cuda/common.cuh"
#include "distill/device/reference/losses.hpp"

namespace distill::device {

namespace detail {

inline constexpr int row_threads = 256;

template <class T>
__device__ inline void store_grad(T& d, T g, bool accumulate) {
    d = accumulate ? d + g : g;
}

// Rows that do not count: loss 0, gradient 0 (overwrite) or untouched (accumulate).
template <class T>
__device__ inline bool skip_row(const std::uint8_t* mask, std::int64_t n, T* losses, T* dr, int V, bool accumulate) {
    if (!mask || mask[n]) return false;
    if (threadIdx.x == 0) losses[n] = 0;
    if (!accumulate)
        for (int j = threadIdx.x; j < V; j += blockDim.x) dr[j] = 0;
    return true;
}

// Block argmax: the first index of the largest value.
__device__ inline int block_argmax(float v, int i, float* sv, int* si) {
    const int lane = threadIdx.x % warp, w = threadIdx.x / warp, warps = blockDim.x / warp;
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (ov > v || (ov == v && oi < i)) v = ov, i = oi;
    }
    __syncthreads();
    if (lane == 0) sv[w] = v, si[w] = i;
    __syncthreads();
    v = lane < warps ? sv[lane] : -INFINITY;
    i = lane < warps ? si[lane] : 0x7fffffff;
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (ov > v || (ov == v && oi < i)) v = ov, i = oi;
    }
    return i;
}

// Row blockIdx.x of a pair of (N,V) logits at scale c, for one block: the student's and the
// teacher's rows, the gradient's row, both log-sum-exps (in double) and, with `argmax`, the
// student's argmax m (the first index of its largest value; 0 without).
template <class T>
struct pair_row {
    const T* s;
    const T* t;
    T* d;
    double c, lse_s, lse_t;
    int m;
};

// Opens the block's row into r: false (after skip_row) for a row that does not count.
template <bool argmax, class T>
__device__ inline bool open_pair_row(pair_row<T>& r, T* d, bool accumulate, T* losses, const T* student,
                                     const T* teacher, const std::uint8_t* mask, int V, T inv_tau) {
    __shared__ Lse sl[32];
    __shared__ float sv[32];
    __shared__ int si[32];
    const std::int64_t n = blockIdx.x;
    r.s = student + n * V;
    r.t = teacher + n * V;
    r.d = d + n * V;
    if (skip_row(mask, n, losses, r.d, V, accumulate)) return false;
    r.c = double(inv_tau);
    Lse as = lse_init(), at = lse_init();
    float best = -INFINITY;
    int arg = 0x7fffffff;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        as = lse_push(as, double(r.s[j]) * r.c);
        at = lse_push(at, double(r.t[j]) * r.c);
        if constexpr (argmax)
            if (float(r.s[j]) > best) best = float(r.s[j]), arg = j;
    }
    r.lse_s = block_lse(as, sl);
    r.lse_t = block_lse(at, sl);
    r.m = 0;
    if constexpr (argmax) r.m = block_argmax(best, arg, sv, si);
    return true;
}

// losses[n] = KL(p‖q), p = softmax(t·inv_tau), q = softmax(s·inv_tau); d = grad_scale inv_tau (q - p).
template <class T>
__global__ void kl_kernel(T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                          const std::uint8_t* mask, int V, T inv_tau, T grad_scale) {
    __shared__ double sd[32];
    pair_row<T> r;
    if (!open_pair_row<false>(r, d, accumulate, losses, student, teacher, mask, V, inv_tau)) return;
    double kl = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const double lp = double(r.t[j]) * r.c - r.lse_t, lq = double(r.s[j]) * r.c - r.lse_s;
        const double p = exp(lp), q = exp(lq);
        if (p > 0) kl += p * (lp - lq);
        store_grad(r.d[j], T(double(grad_scale) * r.c * (q - p)), accumulate);
    }
    kl = block_sum(kl, sd);
    if (threadIdx.x == 0) losses[blockIdx.x] = T(kl);
}

// losses[n] = KL(q‖p); gradient inv_tau q_j (e_j - Σ q e), e = log(q/p) shifted to 0 at argmax(s).
template <class T>
__global__ void reverse_kl_kernel(T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                                  const std::uint8_t* mask, int V, T inv_tau, T grad_scale) {
    __shared__ double sd[32];
    pair_row<T> r;
    if (!open_pair_row<true>(r, d, accumulate, losses, student, teacher, mask, V, inv_tau)) return;
    const double sm = double(r.s[r.m]), tm = double(r.t[r.m]);
    // e_j = log(q_j/p_j) - log(q_m/p_m), each logit against its own row's value at m
    auto e = [&](int j) { return ((double(r.s[j]) - sm) - (double(r.t[j]) - tm)) * r.c; };
    double kl = 0, ke = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const double lq = double(r.s[j]) * r.c - r.lse_s;
        const double q = exp(lq);
        if (q > 0) {
            kl += q * (lq - (double(r.t[j]) * r.c - r.lse_t));
            ke += q * e(j);
        }
    }
    kl = block_sum(kl, sd);
    ke = block_sum(ke, sd);
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const double q = exp(double(r.s[j]) * r.c - r.lse_s);
        const double g = q > 0 ? q * (e(j) - ke) : 0.0;
        store_grad(r.d[j], T(double(grad_scale) * r.c * g), accumulate);
    }
    if (threadIdx.x == 0) losses[blockIdx.x] = T(kl);
}

// Generalized JSD, 0 < beta < 1 (see jsd_forward_backward of the Reference): b = β, b1 = 1 − β and
// their logs, all formed in double on the host.
template <class T>
__global__ void jsd_kernel(T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                           const std::uint8_t* mask, int V, double b, double b1, double log_b, double log_b1, T inv_tau,
                           T grad_scale) {
    __shared__ double sd[32];
    pair_row<T> r;
    if (!open_pair_row<true>(r, d, accumulate, losses, student, teacher, mask, V, inv_tau)) return;
    auto log_m_over_q = [&](int j) {
        return math::log_mix((double(r.t[j]) * r.c - r.lse_t) - (double(r.s[j]) * r.c - r.lse_s), b, log_b, log_b1);
    };
    const double lmq_m = log_m_over_q(r.m);
    double kl_pm = 0, kl_qm = 0, kh = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const double lp = double(r.t[j]) * r.c - r.lse_t, lq = double(r.s[j]) * r.c - r.lse_s;
        const double p = exp(lp), q = exp(lq);
        // a zero probability on one side makes its own terms vanish, whatever the other side's log
        if (q > 0) {
            const double lmq = math::log_mix(lp - lq, b, log_b, log_b1);
            kl_qm -= q * lmq;
            kh += q * (lmq - lmq_m);
        }
        if (p > 0) kl_pm -= p * math::log_mix(lq - lp, b1, log_b1, log_b);
    }
    kl_pm = block_sum(kl_pm, sd);
    kl_qm = block_sum(kl_qm, sd);
    kh = block_sum(kh, sd);
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const double q = exp(double(r.s[j]) * r.c - r.lse_s);
        const double g = q > 0 ? -q * ((log_m_over_q(j) - lmq_m) - kh) / b : 0.0;
        store_grad(r.d[j], T(double(grad_scale) * r.c * g), accumulate);
    }
    if (threadIdx.x == 0) losses[blockIdx.x] = T(kl_pm / b1 + kl_qm / b);
}

// Sparse forward KL against the teacher's top-k and a "rest" bucket (see the Reference).
template <class T>
__global__ void topk_kl_kernel(T* d, bool accumulate, T* losses, const T* student, const std::int32_t* ids,
                               const T* logprobs, const std::uint8_t* mask, int V, int k, T inv_tau, T grad_scale) {
    __shared__ Lse sl[32];
    __shared__ double sd[32];
    const std::int64_t n = blockIdx.x;
    const T* s = student + n * V;
    const std::int32_t* id = ids + n * k;
    const T* lp = logprobs + n * k;
    T* dr = d + n * V;
    if (skip_row(mask, n, losses, dr, V, accumulate)) return;
    auto in_topk = [&](int j) {
        for (int i = 0; i < k; ++i)
            if (id[i] == j) return true;
        return false;
    };
    const double c = double(inv_tau);
    Lse all = lse_init(), tail = lse_init();
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const double z = double(s[j]) * c;
        all = lse_push(all, z);
        if (!in_topk(j)) tail = lse_push(tail, z);
    }
    const double lse = block_lse(all, sl), lse_rest = block_lse(tail, sl);
    const double ninf = -INFINITY;
    double lse_p = ninf;
    for (int i = 0; i < k; ++i)
        if (id[i] >= 0) lse_p = math::logaddexp(lse_p, double(lp[i]));
    const bool has_rest = lse_p < 0 && lse_rest > ninf;
    const double log_p_rest = has_rest ? math::log1mexp(lse_p) : ninf;
    const double p_rest = exp(log_p_rest);
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const double z = double(s[j]) * c;
        double g = exp(z - lse);
        bool topk = false;
        for (int i = 0; i < k; ++i)
            if (id[i] == j) {
                g -= exp(double(lp[i]));
                topk = true;
            }
        if (!topk && has_rest) g -= p_rest * exp(z - lse_rest);
        store_grad(dr[j], T(double(grad_scale) * c * g), accumulate);
    }
    if (threadIdx.x == 0) {
        double kl = 0;
        for (int i = 0; i < k; ++i)
            if (id[i] >= 0 && double(lp[i]) > ninf)
                kl += exp(double(lp[i])) * (double(lp[i]) - (double(s[id[i]]) * c - lse));
        if (has_rest && p_rest > 0) kl += p_rest * (log_p_rest - (lse_rest - lse));
        losses[n] = T(kl);
    }
    (void)sd;
}

// Cross-entropy per row with mask and ignore_index -1.
template <class T>
__global__ void masked_ce_kernel(T* d, bool accumulate, T* losses, const T* logits, const std::int32_t* targets,
                                 const std::uint8_t* mask, int V, T grad_scale) {
    __shared__ Lse sl[32];
    const std::int64_t n = blockIdx.x;
    const T* x = logits + n * V;
    T* dr = d + n * V;
    const std::int32_t target = targets[n];
    if ((mask && !mask[n]) || target < 0) {
        if (threadIdx.x == 0) losses[n] = 0;
        if (!accumulate)
            for (int j = threadIdx.x; j < V; j += blockDim.x) dr[j] = 0;
        return;
    }
    Lse a = lse_init();
    for (int j = threadIdx.x; j < V; j += blockDim.x) a = lse_push(a, double(x[j]));
    const double lse = block_lse(a, sl);
    if (threadIdx.x == 0) losses[n] = T(lse - double(x[target]));
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        store_grad(dr[j], T(double(grad_scale) * (exp(double(x[j]) - lse) - (j == target ? 1.0 : 0.0))), accumulate);
}

// Attention-map KL, one block per position (b, t), heads in order, threads over keys (j ≤ t when
// `causal`, all T otherwise).
template <class T>
__global__ void attention_kl_kernel(T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                                    const std::uint8_t* mask, int Hs, int Ht, int Tn, T grad_scale, bool causal) {
    __shared__ double sd[32];
    const std::int64_t bt = blockIdx.x;
    const int b = static_cast<int>(bt / Tn), t = static_cast<int>(bt % Tn), g = Ht / Hs;
    const bool counts = !mask || mask[bt];
    const T tiny = std::numeric_limits<T>::min();
    const std::int64_t tt = std::int64_t(Tn) * Tn;
    double kl = 0;
    for (int h = 0; h < Hs; ++h) {
        const T* a = student + (std::int64_t(b) * Hs + h) * tt + std::int64_t(t) * Tn;
        T* dr = d + (std::int64_t(b) * Hs + h) * tt + std::int64_t(t) * Tn;
        for (int j = threadIdx.x; j < Tn; j += blockDim.x) {
            if (!counts) {
                if (!accumulate) dr[j] = 0;
                continue;
            }
            T gr = 0;
            if (!causal || j <= t) {
                const T at = detail::grouped_teacher_prob(teacher, b, h, g, Ht, t, Tn, j);
                const T as = a[j] > tiny ? a[j] : tiny;
                if (at > 0) kl += double(at) * double(log(at) - log(as));
                gr = -at / as;
            }
            store_grad(dr[j], grad_scale * gr, accumulate);
        }
    }
    kl = block_sum(kl, sd);
    if (threadIdx.x == 0) losses[bt] = counts ? T(kl) : T(0);
}

// Relation rows (MiniLMv2), one block per query t, relation heads in order.
template <class T>
__global__ void relation_kl_kernel(T* d, T* losses, const T* student, const T* teacher, const std::uint8_t* mask, int R,
                                   int Tn, T s_scale, T t_scale, T grad_scale) {
    __shared__ Lse sl[32];
    __shared__ double sd[32];
    const int t = blockIdx.x;
    const std::int64_t tt = std::int64_t(Tn) * Tn;
    const bool counts = !mask || mask[t];
    double total = 0;
    for (int r = 0; r < R; ++r) {
        const T* s = student + r * tt + std::int64_t(t) * Tn;
        const T* te = teacher + r * tt + std::int64_t(t) * Tn;
        T* dr = d + r * tt + std::int64_t(t) * Tn;
        if (!counts) {
            for (int j = threadIdx.x; j < Tn; j += blockDim.x) dr[j] = 0;
            continue;
        }
        Lse as = lse_init(), at = lse_init();
        for (int j = threadIdx.x; j <= t; j += blockDim.x) {
            as = lse_push(as, double(s[j]) * double(s_scale));
            at = lse_push(at, double(te[j]) * double(t_scale));
        }
        const double lse_s = block_lse(as, sl), lse_t = block_lse(at, sl);
        double kl = 0;
        for (int j = threadIdx.x; j < Tn; j += blockDim.x) {
            if (j > t) {
                dr[j] = 0;
                continue;
            }
            const double lp = double(te[j]) * double(t_scale) - lse_t, lq = double(s[j]) * double(s_scale) - lse_s;
            const double p = exp(lp);
            if (p > 0) kl += p * (lp - lq);
            dr[j] = T(double(grad_scale) * double(s_scale) * (exp(lq) - p));
        }
        total += block_sum(kl, sd);
    }
    if (threadIdx.x == 0) losses[t] = T(total);
}

// Hidden-state matching per row: y(N,C) holds the prediction and receives the gradient.
template <class T>
__global__ void hidden_match_kernel(T* y, T* losses, const T* g, const std::uint8_t* mask, int C, T scale,
                                    bool cosine) {
    __shared__ double sd[32];
    const std::int64_t n = blockIdx.x;
    T* yr = y + n * C;
    const T* gr = g + n * C;
    if (mask && !mask[n]) {
        for (int c = threadIdx.x; c < C; c += blockDim.x) yr[c] = 0;
        if (threadIdx.x == 0) losses[n] = 0;
        return;
    }
    if (!cosine) {
        double sq = 0;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            const T r = yr[c] - gr[c];
            sq += double(r) * double(r);
            yr[c] = scale * T(2) * r / T(C);
        }
        sq = block_sum(sq, sd);
        if (threadIdx.x == 0) losses[n] = T(sq / C);
        return;
    }
    const T eps = T(1e-8);
    double dot = 0, yy = 0, gg = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        dot += double(yr[c]) * double(gr[c]);
        yy += double(yr[c]) * double(yr[c]);
        gg += double(gr[c]) * double(gr[c]);
    }
    dot = block_sum(dot, sd);
    yy = block_sum(yy, sd);
    gg = block_sum(gg, sd);
    const T ny = fmax(T(sqrt(yy)), eps), ng = fmax(T(sqrt(gg)), eps);
    const T cs = T(dot) / (ny * ng);
    const T c2 = T(sqrt(yy)) > eps ? cs / (ny * ny) : T(0);
    for (int c = threadIdx.x; c < C; c += blockDim.x) yr[c] = -scale * (gr[c] / (ny * ng) - c2 * yr[c]);
    if (threadIdx.x == 0) losses[n] = T(1) - cs;
}

// The pooled-embedding rows, one block per row b of student, teacher, d (B,C); losses (B). Cosine:
// the three sums (s·t, |s|², |t|²) in double through block reductions, then the gradient (see
// the Reference's cosine_embedding_row); else the MSE row, Σ (s − t)² in double.
template <bool Cosine, class T>
__global__ void embedding_kernel(T* d, bool accumulate, T* losses, const T* student, const T* teacher, int C,
                                 T grad_scale) {
    __shared__ double sd[32];
    const std::int64_t b = blockIdx.x;
    const T* s = student + b * C;
    const T* t = teacher + b * C;
    T* dr = d + b * C;
    double dot = 0, ss = 0, tt = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const double x = s[c], y = t[c];
        if constexpr (Cosine) {
            dot += x * y, ss += x * x, tt += y * y;
        } else {
            ss += (x - y) * (x - y);
            store_grad(dr[c], T(double(grad_scale) * 2.0 * (x - y) / double(C)), accumulate);
        }
    }
    ss = block_sum(ss, sd);
    if constexpr (!Cosine) {
        if (threadIdx.x == 0) losses[b] = T(ss / double(C));
    } else {
        dot = block_sum(dot, sd);
        tt = block_sum(tt, sd);
        const double eps = 1e-8, norm_s = sqrt(ss), ns = fmax(norm_s, eps), nt = fmax(sqrt(tt), eps);
        const double cs = dot / (ns * nt);
        const double k2 = norm_s > 0 ? cs / (ns * norm_s) : 0.0;
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            store_grad(dr[c], T(-double(grad_scale) * (double(t[c]) / (ns * nt) - k2 * double(s[c]))), accumulate);
        if (threadIdx.x == 0) losses[b] = T(1.0 - cs);
    }
}

}  // namespace detail

/// Forward KL per row fused with its gradient (see the Reference): student, teacher, d (N,V);
/// losses, mask (N). One block per row.
template <class T>
void kl_forward_backward(const Cuda& dev, T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                         const std::uint8_t* mask, std::int64_t N, int V, T inv_tau, T grad_scale) {
    if (N <= 0) return;
    const std::uint8_t* m = dev.on_device(mask, std::size_t(N), detail::slot_mask);
    DISTILL_CUDA_LAUNCH(detail::kl_kernel, static_cast<unsigned>(N), detail::row_threads, dev.stream(), d, accumulate,
                        losses, student, teacher, m, V, inv_tau, grad_scale);
}

/// Reverse KL per row fused with its gradient (see the Reference).
template <class T>
void reverse_kl_forward_backward(const Cuda& dev, T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                                 const std::uint8_t* mask, std::int64_t N, int V, T inv_tau, T grad_scale) {
    if (N <= 0) return;
    const std::uint8_t* m = dev.on_device(mask, std::size_t(N), detail::slot_mask);
    DISTILL_CUDA_LAUNCH(detail::reverse_kl_kernel, static_cast<unsigned>(N), detail::row_threads, dev.stream(), d,
                        accumulate, losses, student, teacher, m, V, inv_tau, grad_scale);
}

/// Generalized Jensen–Shannon divergence per row with its gradient (see the Reference); precondition
/// 0 < β < 1 (`loss::JSD` runs the KL kernels at the ends). β and 1 − β are formed in double.
template <class T>
void jsd_forward_backward(const Cuda& dev, T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                          const std::uint8_t* mask, std::int64_t N, int V, double beta, T inv_tau, T grad_scale) {
    if (N <= 0) return;
    const std::uint8_t* m = dev.on_device(mask, std::size_t(N), detail::slot_mask);
    DISTILL_CUDA_LAUNCH(detail::jsd_kernel, static_cast<unsigned>(N), detail::row_threads, dev.stream(), d, accumulate,
                        losses, student, teacher, m, V, beta, 1 - beta, std::log(beta), std::log1p(-beta), inv_tau,
                        grad_scale);
}

/// Sparse forward KL against the teacher's top-k (see the Reference): ids, logprobs (N,k) in host
/// or device memory.
template <class T>
void topk_kl_forward_backward(const Cuda& dev, T* d, bool accumulate, T* losses, const T* student,
                              const std::int32_t* ids, const T* logprobs, const std::uint8_t* mask, std::int64_t N,
                              int V, int k, T inv_tau, T grad_scale) {
    if (N <= 0) return;
    const std::uint8_t* m = dev.on_device(mask, std::size_t(N), detail::slot_mask);
    const std::int32_t* di = dev.on_device(ids, std::size_t(N) * k, detail::slot_index);
    const T* dl = dev.on_device(logprobs, std::size_t(N) * k, detail::slot_values);
    DISTILL_CUDA_LAUNCH(detail::topk_kl_kernel, static_cast<unsigned>(N), detail::row_threads, dev.stream(), d,
                        accumulate, losses, student, di, dl, m, V, k, inv_tau, grad_scale);
}

/// Cross-entropy per row with mask and ignore_index -1, with its gradient (see the Reference).
template <class T>
void masked_cross_entropy_forward_backward(const Cuda& dev, T* d, bool accumulate, T* losses, const T* logits,
                                           const std::int32_t* targets, const std::uint8_t* mask, std::int64_t N, int V,
                                           T grad_scale) {
    if (N <= 0) return;
    const std::uint8_t* m = dev.on_device(mask, std::size_t(N), detail::slot_mask);
    const std::int32_t* tg = dev.on_device(targets, std::size_t(N), detail::slot_index);
    DISTILL_CUDA_LAUNCH(detail::masked_ce_kernel, static_cast<unsigned>(N), detail::row_threads, dev.stream(), d,
                        accumulate, losses, logits, tg, m, V, grad_scale);
}

/// Attention-map KL with grouped teacher heads (see the Reference; keys j ≤ t when `causal`, all
/// otherwise): student, d (B,Hs,T,T); teacher (B,Ht,T,T); mask, losses (B,T). One block per position.
template <class T>
void attention_kl_forward_backward(const Cuda& dev, T* d, bool accumulate, T* losses, const T* student,
                                   const T* teacher, const std::uint8_t* mask, int B, int Hs, int Ht, int Tn,
                                   T grad_scale, bool causal) {
    if (B * Tn <= 0) return;
    const std::uint8_t* m = dev.on_device(mask, std::size_t(B) * Tn, detail::slot_mask);
    DISTILL_CUDA_LAUNCH(detail::attention_kl_kernel, B * Tn, 128, dev.stream(), d, accumulate, losses, student, teacher,
                        m, Hs, Ht, Tn, grad_scale, causal);
}

/// Causal relation rows of one sequence (MiniLMv2; see the Reference): student, teacher, d
/// (R,T,T); mask, losses (T). One block per query row.
template <class T>
void relation_kl_forward_backward(const Cuda& dev, T* d, T* losses, const T* student, const T* teacher,
                                  const std::uint8_t* mask, int R, int Tn, T s_scale, T t_scale, T grad_scale) {
    if (Tn <= 0) return;
    const std::uint8_t* m = dev.on_device(mask, std::size_t(Tn), detail::slot_mask);
    DISTILL_CUDA_LAUNCH(detail::relation_kl_kernel, Tn, 128, dev.stream(), d, losses, student, teacher, m, R, Tn,
                        s_scale, t_scale, grad_scale);
}

/// Hidden-state matching rows (the device half of `loss::HiddenMSE`): y(N,C) is the (projected)
/// student state on entry and its gradient on exit; g(N,C) the teacher state; losses(N) per row.
///   mse:    losses[n] = Σ_c (y - g)² / C,              y ← scale · 2 (y - g) / C;
///   cosine: losses[n] = 1 - y·g / (max(|y|,ε) max(|g|,ε)), y ← -scale (g/(|y||g|) - cos y/|y|²).
/// Rows that do not count get loss 0 and gradient 0. Returns Σ_n losses[n] in double, summed in row
/// order on the host after one copy of the N values (see the Reference).
template <class T>
double hidden_match_forward_backward(const Cuda& dev, T* y, T* losses, const T* g, const std::uint8_t* mask,
                                     std::int64_t N, int C, T scale, bool cosine) {
    if (N <= 0) return 0.0;
    const std::uint8_t* m = dev.on_device(mask, std::size_t(N), detail::slot_mask);
    DISTILL_CUDA_LAUNCH(detail::hidden_match_kernel, static_cast<unsigned>(N), 128, dev.stream(), y, losses, g, m, C,
                        scale, cosine);
    const auto rows = ::distill::detail::read_on_host(dev, losses, std::size_t(N));
    double value = 0;
    for (std::int64_t n = 0; n < N; ++n) value += double(rows[n]);
    return value;
}

/// Cosine embedding rows (see the Reference): student, teacher, d (B,C) in device memory; losses
/// (B). One block of 128 threads per row.
template <class T>
void cosine_embedding_forward_backward(const Cuda& dev, T* d, bool accumulate, T* losses, const T* student,
                                       const T* teacher, int B, int C, T grad_scale) {
    if (B > 0)
        DISTILL_CUDA_LAUNCH(detail::embedding_kernel<true>, static_cast<unsigned>(B), 128, dev.stream(), d, accumulate,
                            losses, student, teacher, C, grad_scale);
}

/// Embedding MSE rows (see the Reference): as `cosine_embedding_forward_backward`.
template <class T>
void embedding_mse_forward_backward(const Cuda& dev, T* d, bool accumulate, T* losses, const T* student,
                                    const T* teacher, int B, int C, T grad_scale) {
    if (B > 0)
        DISTILL_CUDA_LAUNCH(detail::embedding_kernel<false>, static_cast<unsigned>(B), 128, dev.stream(), d, accumulate,
                            losses, student, teacher, C, grad_scale);
}

}  // namespace distill::device
