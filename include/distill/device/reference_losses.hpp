#pragma once
/// @file reference_losses.hpp
/// The loss kernels of `device::Reference`: each divergence of `docs/losses.md` as the plainest
/// loops that compute it, single-threaded, any scalar type (the gradient checks run them in
/// double). They are the oracle `cpu_losses.hpp` is tested against; each names the PyTorch
/// expression it mirrors.
///
/// Conventions shared by every row kernel here and in `cpu_losses.hpp`:
/// - rows are (N,V) row-major; `mask` (N) says which rows count (nullptr: all of them);
/// - `losses[n]` receives the row's divergence (0 for rows that do not count), not yet scaled;
/// - the gradient of row n goes to `d` (same shape as the student input): `d = g` when
///   `accumulate` is false (rows that do not count get zeros), `d += g` when it is true (rows that
///   do not count are left alone), with g = grad_scale · ∂losses[n]/∂student;
/// - logits are finite or −inf (a masked vocabulary entry); every row has a finite entry.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "distill/detail/macros.hpp"
#include "distill/device/reference.hpp"

namespace distill::math {

/// log(exp(a) + exp(b)), exact for infinite arguments.
template <class T>
DISTILL_HD inline T logaddexp(T a, T b) {
    const T mx = a > b ? a : b;
    if (mx == -std::numeric_limits<T>::infinity()) return mx;
    return mx + std::log1p(std::exp(-std::abs(a - b)));
}

/// log(1 - exp(x)) for x <= 0 (Mächler's log1mexp: accurate for x near 0 and for x << 0).
template <class T>
DISTILL_HD inline T log1mexp(T x) {
    return x > T(-0.6931471805599453) ? std::log(-std::expm1(x)) : std::log1p(-std::exp(x));
}

/// log(M/q) with M = β p + (1-β) q and r = log p - log q, 0 < β < 1: log1p(β expm1(r)) where
/// that is accurate (r < 1; the JSD's first-order terms cancel in the sum, so each must be exact
/// to relative rounding), log(β e^r + 1 - β) by log-add-exp where expm1 would overflow.
template <class T>
DISTILL_HD inline T jsd_log_m_over_q(T r, T beta) {
    return r < T(1) ? std::log1p(beta * std::expm1(r)) : logaddexp(r + std::log(beta), std::log1p(-beta));
}

/// log(M/p), the mirror image: log1p((1-β) expm1(-r)) for r > -1, else log((1-β) e^{-r} + β) by
/// log-add-exp (log(M/q) - r would lose log(M/p) to cancellation as β → 1).
template <class T>
DISTILL_HD inline T jsd_log_m_over_p(T r, T beta) {
    return r > T(-1) ? std::log1p((T(1) - beta) * std::expm1(-r)) : logaddexp(std::log1p(-beta) - r, std::log(beta));
}

}  // namespace distill::math

namespace distill::device {

namespace reference_detail {

template <class T>
inline constexpr T neg_inf = -std::numeric_limits<T>::infinity();

// The oracle sums in at least double, so it stays the more accurate side of every comparison
// however long the row (a 50 000-term fp32 running sum drifts by ~1e-3 relative).
template <class T>
using acc_t = std::conditional_t<(sizeof(T) < sizeof(double)), double, T>;

// log Σ exp(x[j] · scale), j in [0, n).
template <class T>
T logsumexp(const T* x, std::int64_t n, T scale) {
    T mx = neg_inf<T>;
    for (std::int64_t j = 0; j < n; ++j) mx = std::max(mx, x[j] * scale);
    if (mx == neg_inf<T>) return mx;
    acc_t<T> sum = 0;
    for (std::int64_t j = 0; j < n; ++j) sum += std::exp(x[j] * scale - mx);
    return mx + static_cast<T>(std::log(sum));
}

// The first index of the largest element of x[0..n).
template <class T>
std::int64_t argmax(const T* x, std::int64_t n) {
    std::int64_t m = 0;
    for (std::int64_t j = 1; j < n; ++j)
        if (x[j] > x[m]) m = j;
    return m;
}

template <class T>
void store(T& d, T g, bool accumulate) {
    d = accumulate ? d + g : g;
}

}  // namespace reference_detail

/// Forward KL per row, fused with its gradient (torch: kl_div(log_softmax(s/τ), log_softmax(t/τ),
/// log_target=True) summed over the row).
/// losses[n] = KL(p‖q) = Σ_j p_j (log p_j - log q_j), p = softmax(teacher[n]·inv_tau),
/// q = softmax(student[n]·inv_tau);  ∂/∂student = inv_tau (q - p).
/// student, teacher, d: (N,V); losses, mask: (N).
template <class T>
void kl_forward_backward(const Reference&, T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                         const std::uint8_t* mask, std::int64_t N, int V, T inv_tau, T grad_scale) {
    using namespace reference_detail;
    for (std::int64_t n = 0; n < N; ++n) {
        const T* s = student + n * V;
        const T* t = teacher + n * V;
        T* dr = d + n * V;
        if (mask && !mask[n]) {
            losses[n] = 0;
            if (!accumulate) std::fill(dr, dr + V, T(0));
            continue;
        }
        const T lse_s = logsumexp(s, V, inv_tau), lse_t = logsumexp(t, V, inv_tau);
        acc_t<T> kl = 0;
        for (int j = 0; j < V; ++j) {
            const T p = std::exp(t[j] * inv_tau - lse_t), q = std::exp(s[j] * inv_tau - lse_s);
            // log p - log q from the logits: exact where p underflows; p = 0 terms vanish (0 log 0 = 0)
            if (p > 0) kl += p * ((t[j] * inv_tau - lse_t) - (s[j] * inv_tau - lse_s));
            store(dr[j], grad_scale * inv_tau * (q - p), accumulate);
        }
        losses[n] = static_cast<T>(kl);
    }
}

/// Reverse KL per row with its gradient (torch: kl_div(log_softmax(t/τ), log_softmax(s/τ),
/// log_target=True) summed over the row).
/// losses[n] = KL(q‖p) = Σ_j q_j (log q_j - log p_j);  ∂/∂student_j = inv_tau q_j (e_j - Σ_i q_i e_i),
/// e = log(q/p) - log(q_m/p_m), m the student's argmax: the same as q_j (log(q_j/p_j) - KL), but
/// without subtracting two numbers of the size of the KL where q_m ≈ 1.
/// Precondition: the teacher gives probability to every token the student does (−inf only where
/// the student has −inf too), or the divergence is infinite.
template <class T>
void reverse_kl_forward_backward(const Reference&, T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                                 const std::uint8_t* mask, std::int64_t N, int V, T inv_tau, T grad_scale) {
    using namespace reference_detail;
    for (std::int64_t n = 0; n < N; ++n) {
        const T* s = student + n * V;
        const T* t = teacher + n * V;
        T* dr = d + n * V;
        if (mask && !mask[n]) {
            losses[n] = 0;
            if (!accumulate) std::fill(dr, dr + V, T(0));
            continue;
        }
        const T lse_s = logsumexp(s, V, inv_tau), lse_t = logsumexp(t, V, inv_tau);
        const std::int64_t m = argmax(s, V);
        const T shift = (s[m] - t[m]) * inv_tau;
        acc_t<T> kl = 0, ke = 0;
        for (int j = 0; j < V; ++j) {
            const T q = std::exp(s[j] * inv_tau - lse_s);
            if (q > 0) {
                kl += q * ((s[j] * inv_tau - lse_s) - (t[j] * inv_tau - lse_t));
                ke += q * ((s[j] - t[j]) * inv_tau - shift);
            }
        }
        for (int j = 0; j < V; ++j) {
            const T q = std::exp(s[j] * inv_tau - lse_s);
            const T g = q > 0 ? q * (((s[j] - t[j]) * inv_tau - shift) - static_cast<T>(ke)) : T(0);
            store(dr[j], grad_scale * inv_tau * g, accumulate);
        }
        losses[n] = static_cast<T>(kl);
    }
}

/// Generalized Jensen–Shannon divergence per row with its gradient, normalized so that it is
/// continuous in β on [0, 1] (see docs/losses.md):
///   M = β p + (1-β) q,   J_β = [β KL(p‖M) + (1-β) KL(q‖M)] / (β (1-β)),
///   J_0 = KL(p‖q) (forward), J_1 = KL(q‖p) (reverse);
///   ∂J_β/∂z_j = -(1/β) q_j (log(M_j/q_j) + KL(q‖M)), z = student·inv_tau.
/// The mixture is built from probabilities, in log space: log(M/q) = log1p(β expm1(log p - log q)).
template <class T>
void jsd_forward_backward(const Reference& dev, T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                          const std::uint8_t* mask, std::int64_t N, int V, T beta, T inv_tau, T grad_scale) {
    using namespace reference_detail;
    if (beta <= T(0))
        return kl_forward_backward(dev, d, accumulate, losses, student, teacher, mask, N, V, inv_tau, grad_scale);
    if (beta >= T(1))
        return reverse_kl_forward_backward(dev, d, accumulate, losses, student, teacher, mask, N, V, inv_tau,
                                           grad_scale);
    for (std::int64_t n = 0; n < N; ++n) {
        const T* s = student + n * V;
        const T* t = teacher + n * V;
        T* dr = d + n * V;
        if (mask && !mask[n]) {
            losses[n] = 0;
            if (!accumulate) std::fill(dr, dr + V, T(0));
            continue;
        }
        const T lse_s = logsumexp(s, V, inv_tau), lse_t = logsumexp(t, V, inv_tau);
        // the gradient's log(M/q) is shifted to 0 at the student's argmax m (see reverse_kl_forward_backward)
        const std::int64_t m = argmax(s, V);
        const T lmq_m = math::jsd_log_m_over_q((t[m] * inv_tau - lse_t) - (s[m] * inv_tau - lse_s), beta);
        acc_t<T> kl_pm = 0, kl_qm = 0, kh = 0;  // KL(p‖M), KL(q‖M), Σ q (log(M/q) - log(M_m/q_m))
        for (int j = 0; j < V; ++j) {
            const T lp = t[j] * inv_tau - lse_t, lq = s[j] * inv_tau - lse_s;
            const T p = std::exp(lp), q = std::exp(lq);
            const T r = lp - lq;
            const T lmq = math::jsd_log_m_over_q(r, beta);
            if (q > 0) {
                kl_qm -= q * lmq;
                kh += q * (lmq - lmq_m);
            }
            if (p > 0) kl_pm -= p * math::jsd_log_m_over_p(r, beta);
        }
        for (int j = 0; j < V; ++j) {
            const T lp = t[j] * inv_tau - lse_t, lq = s[j] * inv_tau - lse_s;
            const T q = std::exp(lq);
            const T g =
                q > 0 ? -q * ((math::jsd_log_m_over_q(lp - lq, beta) - lmq_m) - static_cast<T>(kh)) / beta : T(0);
            store(dr[j], grad_scale * inv_tau * g, accumulate);
        }
        losses[n] = static_cast<T>((beta * kl_pm + (1 - beta) * kl_qm) / (beta * (1 - beta)));
    }
}

/// Sparse forward KL against a teacher known only by its top-k, over k+1 outcomes: the k tokens
/// and "the rest" (see docs/losses.md). With z = student·inv_tau, q = softmax(z), K the valid ids
/// of the row (id < 0 marks an unused slot), P_i = exp(logprobs_i), P_rest = 1 - Σ P_i (clamped
/// at 0), q_rest = Σ_{j∉K} q_j (summed directly, never 1 - Σ q_i):
///   losses[n] = Σ_i P_i (log P_i - log q_{id_i}) + P_rest (log P_rest - log q_rest)
///   ∂/∂z_j = q_j - P_i (j = id_i),   q_j (1 - P_rest / q_rest) = q_j - P_rest e^{z_j - lse_rest} (j ∉ K).
/// When q_rest is 0 (every other token masked) the rest term is dropped.
/// ids, logprobs: (N,k); ids valid and distinct (the term checks).
template <class T>
void topk_kl_forward_backward(const Reference&, T* d, bool accumulate, T* losses, const T* student,
                              const std::int32_t* ids, const T* logprobs, const std::uint8_t* mask, std::int64_t N,
                              int V, int k, T inv_tau, T grad_scale) {
    using namespace reference_detail;
    for (std::int64_t n = 0; n < N; ++n) {
        const T* s = student + n * V;
        const std::int32_t* id = ids + n * k;
        const T* lp = logprobs + n * k;
        T* dr = d + n * V;
        if (mask && !mask[n]) {
            losses[n] = 0;
            if (!accumulate) std::fill(dr, dr + V, T(0));
            continue;
        }
        auto in_topk = [&](int j) {
            for (int i = 0; i < k; ++i)
                if (id[i] == j) return true;
            return false;
        };
        const T lse = logsumexp(s, V, inv_tau);
        T tail_max = neg_inf<T>;
        for (int j = 0; j < V; ++j)
            if (!in_topk(j)) tail_max = std::max(tail_max, s[j] * inv_tau);
        acc_t<T> tail_sum = 0;
        if (tail_max > neg_inf<T>)
            for (int j = 0; j < V; ++j)
                if (!in_topk(j)) tail_sum += std::exp(s[j] * inv_tau - tail_max);
        const T lse_rest = tail_max > neg_inf<T> ? tail_max + static_cast<T>(std::log(tail_sum)) : neg_inf<T>;
        T lse_p = neg_inf<T>;
        for (int i = 0; i < k; ++i)
            if (id[i] >= 0) lse_p = math::logaddexp(lse_p, lp[i]);
        const bool has_rest = lse_p < T(0) && lse_rest > neg_inf<T>;
        const T log_p_rest = has_rest ? math::log1mexp(lse_p) : neg_inf<T>;
        const T p_rest = std::exp(log_p_rest);
        acc_t<T> kl = 0;
        for (int i = 0; i < k; ++i)
            if (id[i] >= 0 && lp[i] > neg_inf<T>) kl += std::exp(lp[i]) * (lp[i] - (s[id[i]] * inv_tau - lse));
        if (has_rest && p_rest > 0) kl += p_rest * (log_p_rest - (lse_rest - lse));
        for (int j = 0; j < V; ++j) {
            const T z = s[j] * inv_tau;
            T g = std::exp(z - lse);
            bool topk = false;
            for (int i = 0; i < k; ++i)
                if (id[i] == j) {
                    g -= std::exp(lp[i]);
                    topk = true;
                }
            if (!topk && has_rest) g -= p_rest * std::exp(z - lse_rest);
            store(dr[j], grad_scale * inv_tau * g, accumulate);
        }
        losses[n] = static_cast<T>(kl);
    }
}

/// Cross-entropy per row with its gradient (torch: cross_entropy(logits, targets, ignore_index=-1,
/// reduction='none')). A row counts when mask[n] (or no mask) and targets[n] >= 0.
/// losses[n] = logsumexp(logits[n]) - logits[n, target];  ∂/∂logits = softmax - onehot(target).
template <class T>
void masked_cross_entropy_forward_backward(const Reference&, T* d, bool accumulate, T* losses, const T* logits,
                                           const std::int32_t* targets, const std::uint8_t* mask, std::int64_t N, int V,
                                           T grad_scale) {
    using namespace reference_detail;
    for (std::int64_t n = 0; n < N; ++n) {
        const T* x = logits + n * V;
        T* dr = d + n * V;
        if ((mask && !mask[n]) || targets[n] < 0) {
            losses[n] = 0;
            if (!accumulate) std::fill(dr, dr + V, T(0));
            continue;
        }
        const T lse = logsumexp(x, V, T(1));
        losses[n] = lse - x[targets[n]];
        for (int j = 0; j < V; ++j)
            store(dr[j], grad_scale * (std::exp(x[j] - lse) - (j == targets[n] ? T(1) : T(0))), accumulate);
    }
}

/// Attention-map KL with grouped teacher heads, per query row, with the gradient on the student's
/// attention probabilities. Student head h is matched with the mean of teacher heads
/// [h·g, (h+1)·g), g = Ht/Hs. For a counted position (b,t):
///   losses[b·T+t] = Σ_h KL(ā_{h,t} ‖ a_{h,t}) over keys j ≤ t,
///   ∂/∂a_{h,t,j} = -ā_{h,t,j} / a_{h,t,j}  (keys j ≤ t; zero above the diagonal),
/// with a clamped below at the smallest normal number, so a probability that underflowed to 0
/// gives a large finite value and a gradient the softmax backward multiplies by 0.
/// student, d: (B,Hs,T,T); teacher: (B,Ht,T,T); mask, losses: (B,T).
template <class T>
void attention_kl_forward_backward(const Reference&, T* d, bool accumulate, T* losses, const T* student,
                                   const T* teacher, const std::uint8_t* mask, int B, int Hs, int Ht, int Tn,
                                   T grad_scale) {
    using namespace reference_detail;
    const int g = Ht / Hs;
    const T tiny = std::numeric_limits<T>::min();
    const std::int64_t tt = std::int64_t(Tn) * Tn;
    for (int b = 0; b < B; ++b)
        for (int t = 0; t < Tn; ++t) {
            const std::int64_t bt = std::int64_t(b) * Tn + t;
            const bool counts = !mask || mask[bt];
            acc_t<T> kl = 0;
            for (int h = 0; h < Hs; ++h) {
                const T* a = student + (std::int64_t(b) * Hs + h) * tt + std::int64_t(t) * Tn;
                T* dr = d + (std::int64_t(b) * Hs + h) * tt + std::int64_t(t) * Tn;
                if (!counts) {
                    if (!accumulate) std::fill(dr, dr + Tn, T(0));
                    continue;
                }
                for (int j = 0; j < Tn; ++j) {
                    T gr = 0;
                    if (j <= t) {
                        T at = 0;
                        for (int i = 0; i < g; ++i)
                            at += teacher[(std::int64_t(b) * Ht + h * g + i) * tt + std::int64_t(t) * Tn + j];
                        at /= T(g);
                        const T as = std::max(a[j], tiny);
                        if (at > 0) kl += at * (std::log(at) - std::log(as));
                        gr = -at / as;
                    }
                    reference_detail::store(dr[j], grad_scale * gr, accumulate);
                }
            }
            losses[bt] = counts ? static_cast<T>(kl) : T(0);
        }
}

/// Causal relation rows (MiniLMv2), for one sequence: R relation heads of raw products
/// student, teacher (R,T,T) (x·xᵀ). Row t of head r compares p = softmax(t_scale·teacher[r,t,0..t])
/// with q = softmax(s_scale·student[r,t,0..t]):
///   losses[t] = Σ_r KL(p‖q) for counted rows (mask[t]; nullptr: all), 0 otherwise;
///   d[r,t,j] = grad_scale · s_scale · (q_j - p_j) for j ≤ t of counted rows, else 0 (overwrites).
template <class T>
void relation_kl_forward_backward(const Reference&, T* d, T* losses, const T* student, const T* teacher,
                                  const std::uint8_t* mask, int R, int Tn, T s_scale, T t_scale, T grad_scale) {
    using namespace reference_detail;
    const std::int64_t tt = std::int64_t(Tn) * Tn;
    for (int t = 0; t < Tn; ++t) losses[t] = 0;
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < Tn; ++t) {
            const T* s = student + r * tt + std::int64_t(t) * Tn;
            const T* te = teacher + r * tt + std::int64_t(t) * Tn;
            T* dr = d + r * tt + std::int64_t(t) * Tn;
            std::fill(dr, dr + Tn, T(0));
            if (mask && !mask[t]) continue;
            const T lse_s = logsumexp(s, t + 1, s_scale), lse_t = logsumexp(te, t + 1, t_scale);
            acc_t<T> kl = 0;
            for (int j = 0; j <= t; ++j) {
                const T lp = te[j] * t_scale - lse_t, lq = s[j] * s_scale - lse_s;
                const T p = std::exp(lp);
                if (p > 0) kl += p * (lp - lq);
                dr[j] = grad_scale * s_scale * (std::exp(lq) - p);
            }
            losses[t] += static_cast<T>(kl);
        }
}

}  // namespace distill::device
