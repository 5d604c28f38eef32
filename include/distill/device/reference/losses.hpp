#pragma once
/// @file reference/losses.hpp
/// The loss kernels of `device::Reference`: each divergence of `docs/losses.md` as the plainest
/// loops that compute it, single-threaded, any scalar type (the gradient checks run them in
/// double). They are the oracle `cpu/losses.hpp` is tested against; each names the PyTorch
/// expression it mirrors.
///
/// These are the building blocks of the loss terms (`loss/*.hpp`), not an entry point: code that
/// wants a divergence of flat (N,V) logits calls the term with a (1,N,V) batch. Conventions shared
/// by every row kernel here, in `cpu/losses.hpp` and in `cuda/losses.cuh`:
/// - rows are (N,V) row-major; `mask` (N) says which rows count (nullptr: all of them);
/// - `losses[n]` receives the row's divergence (0 for rows that do not count) — not multiplied by
///   τ², not averaged over rows: a term's value is s · Σ losses / count (s = τ² or 1);
/// - the gradient of row n goes to `d` (same shape as the student input): `d = g` when
///   `accumulate` is false (rows that do not count get zeros), `d += g` when it is true (rows that
///   do not count are left alone), with g = grad_scale · ∂losses[n]/∂student, the derivative with
///   respect to the *unscaled* student logits (the kernel applies inv_tau itself) and `grad_scale`
///   the caller's whole outer factor (a term passes weight · s / count);
/// - logits are finite or −inf (a masked vocabulary entry); every row has a finite entry; a
///   probability whose logit is −inf is exactly 0 and its terms vanish;
/// - log-probabilities are formed as (x − max)·inv_tau − log(sum) (`math::log_softmax_entry`).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "distill/detail/macros.hpp"
#include "distill/detail/math.hpp"
#include "distill/device/reference/layers.hpp"

namespace distill::device {

namespace detail {

template <class T>
inline constexpr T neg_inf = -std::numeric_limits<T>::infinity();

// The oracle works in at least double (sums, log-probabilities, the mixture logs), so it stays the
// more accurate side of every comparison however long the row or large the logits (a 50 000-term
// fp32 running sum drifts by ~1e-3 relative). Results are rounded to T once, at the store.
template <class T>
using acc_t = std::conditional_t<(sizeof(T) < sizeof(double)), double, T>;

// The log-softmax of a row x[0..n) at scale c, as the unscaled maximum and the log of the sum
// kept apart (math::log_softmax_entry): log softmax(c·x)_j = (x_j − max)·c − log_sum.
template <class T>
struct row_stats {
    acc_t<T> max = neg_inf<acc_t<T>>;
    acc_t<T> log_sum = 0;
    acc_t<T> scale = 1;
    acc_t<T> log_prob(T x) const { return math::log_softmax_entry(acc_t<T>(x), max, scale, log_sum); }
    bool empty() const { return max == neg_inf<acc_t<T>>; }
};

// row_stats of x[j]·scale over the j in [0, n) with keep(j).
template <class T, class Keep>
row_stats<T> log_softmax_stats(const T* x, std::int64_t n, T scale, Keep&& keep) {
    using A = acc_t<T>;
    row_stats<T> r;
    r.scale = A(scale);
    for (std::int64_t j = 0; j < n; ++j)
        if (keep(j)) r.max = std::max(r.max, A(x[j]));
    if (r.empty()) return r;
    A sum = 0;
    for (std::int64_t j = 0; j < n; ++j)
        if (keep(j)) sum += std::exp((A(x[j]) - r.max) * r.scale);
    r.log_sum = std::log(sum);
    return r;
}
template <class T>
row_stats<T> log_softmax_stats(const T* x, std::int64_t n, T scale) {
    return log_softmax_stats(x, n, scale, [](std::int64_t) { return true; });
}

// The first index of the largest element of x[0..n).
template <class T>
std::int64_t argmax(const T* x, std::int64_t n) {
    std::int64_t m = 0;
    for (std::int64_t j = 1; j < n; ++j)
        if (x[j] > x[m]) m = j;
    return m;
}

template <class T, class A>
void store(T& d, A g, bool accumulate) {
    d = accumulate ? static_cast<T>(A(d) + g) : static_cast<T>(g);
}

// A row that does not count: loss 0, its gradient dr[0..width) zeroed (overwrite) or left
// (accumulate). The Cpu kernels use it too.
template <class T>
void clear_row(T& loss, T* dr, std::int64_t width, bool accumulate) {
    loss = 0;
    if (!accumulate) std::fill(dr, dr + width, T(0));
}

// The row loop of the (N,V) divergences: losses[n] = row(n, d + n·V) for the rows that count
// (mask[n], or every row without a mask), clear_row for the others; rows in order.
template <class T, class Row>
void for_counted_rows(const std::uint8_t* mask, std::int64_t N, int V, T* d, T* losses, bool accumulate, Row&& row) {
    for (std::int64_t n = 0; n < N; ++n) {
        T* dr = d + n * V;
        if (mask && !mask[n])
            clear_row(losses[n], dr, V, accumulate);
        else
            losses[n] = row(n, dr);
    }
}

// for_counted_rows over a pair of (N,V) logits: losses[n] = row(s, t, dr, ls, lt) with s, t the
// student's and the teacher's row n and ls, lt their log_softmax_stats at scale inv_tau.
template <class T, class Row>
void for_counted_pair_rows(const std::uint8_t* mask, std::int64_t N, int V, T* d, T* losses, bool accumulate,
                           const T* student, const T* teacher, T inv_tau, Row&& row) {
    for_counted_rows(mask, N, V, d, losses, accumulate, [&](std::int64_t n, T* dr) {
        const T* s = student + n * V;
        const T* t = teacher + n * V;
        return row(s, t, dr, log_softmax_stats(s, V, inv_tau), log_softmax_stats(t, V, inv_tau));
    });
}

// The teacher's attention probability that student head h is matched with, at query t, key j:
// the mean of teacher heads [h·g, (h+1)·g) of sequence b, summed in order in T. teacher: (B,Ht,T,T).
// The Cuda kernel uses it too.
template <class T>
DISTILL_HD T grouped_teacher_prob(const T* teacher, int b, int h, int g, int Ht, int t, int Tn, int j) {
    const std::int64_t tt = std::int64_t(Tn) * Tn;
    T at = 0;
    for (int i = 0; i < g; ++i) at += teacher[(std::int64_t(b) * Ht + h * g + i) * tt + std::int64_t(t) * Tn + j];
    at /= T(g);
    return at;
}

// One row of `cosine_embedding_forward_backward` (see there): writes the row's gradient to d[0..C)
// and returns 1 − cos. Shared with device::Cpu, which runs rows in parallel.
template <class T>
T cosine_embedding_row(T* d, bool accumulate, const T* s, const T* t, int C, T grad_scale) {
    using A = acc_t<T>;
    const A eps = A(1e-8);
    A dot = 0, ss = 0, tt = 0;
    for (int c = 0; c < C; ++c) {
        dot += A(s[c]) * A(t[c]);
        ss += A(s[c]) * A(s[c]);
        tt += A(t[c]) * A(t[c]);
    }
    const A norm_s = std::sqrt(ss), ns = std::max(norm_s, eps), nt = std::max(std::sqrt(tt), eps);
    const A cos = dot / (ns * nt);
    const A k2 = norm_s > 0 ? cos / (ns * norm_s) : A(0);
    for (int c = 0; c < C; ++c) store(d[c], -A(grad_scale) * (A(t[c]) / (ns * nt) - k2 * A(s[c])), accumulate);
    return static_cast<T>(A(1) - cos);
}

// One row of `embedding_mse_forward_backward` (see there): writes the row's gradient to d[0..C)
// and returns Σ (s − t)² / C.
template <class T>
T embedding_mse_row(T* d, bool accumulate, const T* s, const T* t, int C, T grad_scale) {
    using A = acc_t<T>;
    A sq = 0;
    for (int c = 0; c < C; ++c) {
        const A r = A(s[c]) - A(t[c]);
        sq += r * r;
        store(d[c], A(grad_scale) * A(2) * r / A(C), accumulate);
    }
    return static_cast<T>(sq / A(C));
}

}  // namespace detail

/// Forward KL per row, fused with its gradient (torch: kl_div(log_softmax(s/τ), log_softmax(t/τ),
/// log_target=True) summed over the row).
/// losses[n] = KL(p‖q) = Σ_j p_j (log p_j - log q_j), p = softmax(teacher[n]·inv_tau),
/// q = softmax(student[n]·inv_tau);  ∂/∂student = inv_tau (q - p).
/// student, teacher, d: (N,V); losses, mask: (N).
template <class T>
void kl_forward_backward(const Reference&, T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                         const std::uint8_t* mask, std::int64_t N, int V, T inv_tau, T grad_scale) {
    using namespace detail;
    using A = acc_t<T>;
    auto row = [&](const T* s, const T* t, T* dr, const row_stats<T>& ls, const row_stats<T>& lt) {
        A kl = 0;
        for (int j = 0; j < V; ++j) {
            const A lp = lt.log_prob(t[j]), lq = ls.log_prob(s[j]);
            const A p = std::exp(lp), q = std::exp(lq);
            if (p > 0) kl += p * (lp - lq);  // p = 0 terms vanish (0 log 0 = 0)
            store(dr[j], A(grad_scale) * A(inv_tau) * (q - p), accumulate);
        }
        return static_cast<T>(kl);
    };
    for_counted_pair_rows(mask, N, V, d, losses, accumulate, student, teacher, inv_tau, row);
}

/// Reverse KL per row with its gradient (torch: kl_div(log_softmax(t/τ), log_softmax(s/τ),
/// log_target=True) summed over the row).
/// losses[n] = KL(q‖p) = Σ_j q_j (log q_j - log p_j);  ∂/∂student_j = inv_tau q_j (e_j - Σ_i q_i e_i),
/// e_j = log(q_j/p_j) - log(q_m/p_m) = ((s_j - s_m) - (t_j - t_m))·inv_tau, m the student's argmax:
/// the same as q_j (log(q_j/p_j) - KL), but without subtracting two numbers of the size of the KL
/// where q_m ≈ 1, and without the logits' offsets.
/// Precondition: the teacher gives probability to every token the student does (−inf only where
/// the student has −inf too), or the divergence is infinite.
template <class T>
void reverse_kl_forward_backward(const Reference&, T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                                 const std::uint8_t* mask, std::int64_t N, int V, T inv_tau, T grad_scale) {
    using namespace detail;
    using A = acc_t<T>;
    auto row = [&](const T* s, const T* t, T* dr, const row_stats<T>& ls, const row_stats<T>& lt) {
        const std::int64_t m = argmax(s, V);
        auto e = [&](int j) { return ((A(s[j]) - A(s[m])) - (A(t[j]) - A(t[m]))) * A(inv_tau); };
        A kl = 0, ke = 0;
        for (int j = 0; j < V; ++j) {
            const A lq = ls.log_prob(s[j]);
            const A q = std::exp(lq);
            if (q > 0) {
                kl += q * (lq - lt.log_prob(t[j]));
                ke += q * e(j);
            }
        }
        for (int j = 0; j < V; ++j) {
            const A q = std::exp(ls.log_prob(s[j]));
            const A g = q > 0 ? q * (e(j) - ke) : A(0);
            store(dr[j], A(grad_scale) * A(inv_tau) * g, accumulate);
        }
        return static_cast<T>(kl);
    };
    for_counted_pair_rows(mask, N, V, d, losses, accumulate, student, teacher, inv_tau, row);
}

/// Generalized Jensen–Shannon divergence per row with its gradient, normalized so that it is
/// continuous in β on [0, 1] (see docs/losses.md):
///   M = β p + (1-β) q,   J_β = [β KL(p‖M) + (1-β) KL(q‖M)] / (β (1-β)) = KL(p‖M)/(1-β) + KL(q‖M)/β,
///   J_0 = KL(p‖q) (forward), J_1 = KL(q‖p) (reverse): the ends are the loss term's to choose
///   (`loss::JSD` calls the KL kernels there); precondition 0 < β < 1;
///   ∂J_β/∂z_j = -(1/β) q_j (log(M_j/q_j) + KL(q‖M)), z = student·inv_tau.
/// `beta` is a double: β and 1 − β are both formed in double before rounding (in fp32, 1 − β of a
/// rounded β = 1 − 10⁻⁶ is 1.3 % off). The mixture is built from probabilities, in log space:
/// log(M/q) = math::log_mix(log p − log q, β, ...), log(M/p) = math::log_mix(log q − log p, 1−β, ...).
template <class T>
void jsd_forward_backward(const Reference&, T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                          const std::uint8_t* mask, std::int64_t N, int V, double beta, T inv_tau, T grad_scale) {
    using namespace detail;
    using A = acc_t<T>;
    const A b = A(beta), b1 = A(1 - beta), log_b = A(std::log(beta)), log_b1 = A(std::log1p(-beta));
    auto row = [&](const T* s, const T* t, T* dr, const row_stats<T>& ls, const row_stats<T>& lt) {
        auto log_m_over_q = [&](int j) {
            return math::log_mix(lt.log_prob(t[j]) - ls.log_prob(s[j]), b, log_b, log_b1);
        };
        // the gradient's log(M/q) is shifted to 0 at the student's argmax m (see
        // reverse_kl_forward_backward)
        const A lmq_m = log_m_over_q(int(argmax(s, V)));
        A kl_pm = 0, kl_qm = 0, kh = 0;  // KL(p‖M), KL(q‖M), Σ q (log(M/q) - log(M_m/q_m))
        for (int j = 0; j < V; ++j) {
            const A lp = lt.log_prob(t[j]), lq = ls.log_prob(s[j]);
            const A p = std::exp(lp), q = std::exp(lq);
            // a zero probability on one side makes its own terms vanish, whatever the other
            // side's log
            if (q > 0) {
                const A lmq = math::log_mix(lp - lq, b, log_b, log_b1);
                kl_qm -= q * lmq;
                kh += q * (lmq - lmq_m);
            }
            if (p > 0) kl_pm -= p * math::log_mix(lq - lp, b1, log_b1, log_b);
        }
        for (int j = 0; j < V; ++j) {
            const A q = std::exp(ls.log_prob(s[j]));
            const A g = q > 0 ? -q * ((log_m_over_q(j) - lmq_m) - kh) / b : A(0);
            store(dr[j], A(grad_scale) * A(inv_tau) * g, accumulate);
        }
        return static_cast<T>(kl_pm / b1 + kl_qm / b);
    };
    for_counted_pair_rows(mask, N, V, d, losses, accumulate, student, teacher, inv_tau, row);
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
    using namespace detail;
    using A = acc_t<T>;
    for_counted_rows(mask, N, V, d, losses, accumulate, [&](std::int64_t n, T* dr) {
        const T* s = student + n * V;
        const std::int32_t* id = ids + n * k;
        const T* lp = logprobs + n * k;
        auto in_topk = [&](std::int64_t j) {
            for (int i = 0; i < k; ++i)
                if (id[i] == j) return true;
            return false;
        };
        const auto all = log_softmax_stats(s, V, inv_tau);
        const auto tail = log_softmax_stats(s, V, inv_tau, [&](std::int64_t j) { return !in_topk(j); });
        // log q_rest = lse_rest - lse, from the two (max, log-sum) pairs
        const A log_q_rest =
            tail.empty() ? neg_inf<A> : (tail.max - all.max) * all.scale + (tail.log_sum - all.log_sum);
        A lse_p = neg_inf<A>;
        for (int i = 0; i < k; ++i)
            if (id[i] >= 0) lse_p = math::logaddexp(lse_p, A(lp[i]));
        const bool has_rest = lse_p < A(0) && !tail.empty();
        const A log_p_rest = has_rest ? math::log1mexp(lse_p) : neg_inf<A>;
        const A p_rest = std::exp(log_p_rest);
        A kl = 0;
        for (int i = 0; i < k; ++i)
            if (id[i] >= 0 && lp[i] > neg_inf<T>) kl += std::exp(A(lp[i])) * (A(lp[i]) - all.log_prob(s[id[i]]));
        if (has_rest && p_rest > 0) kl += p_rest * (log_p_rest - log_q_rest);
        for (int j = 0; j < V; ++j) {
            A g = std::exp(all.log_prob(s[j]));
            bool topk = false;
            for (int i = 0; i < k; ++i)
                if (id[i] == j) {
                    g -= std::exp(A(lp[i]));
                    topk = true;
                }
            if (!topk && has_rest) g -= p_rest * std::exp(tail.log_prob(s[j]));  // P_rest · q_j / q_rest
            store(dr[j], A(grad_scale) * A(inv_tau) * g, accumulate);
        }
        return static_cast<T>(kl);
    });
}

/// Cross-entropy per row with its gradient (torch: cross_entropy(logits, targets, ignore_index=-1,
/// reduction='none')). A row counts when mask[n] (or no mask) and targets[n] >= 0.
/// losses[n] = -log softmax(logits[n])_target;  ∂/∂logits = softmax - onehot(target).
template <class T>
void masked_cross_entropy_forward_backward(const Reference&, T* d, bool accumulate, T* losses, const T* logits,
                                           const std::int32_t* targets, const std::uint8_t* mask, std::int64_t N, int V,
                                           T grad_scale) {
    using namespace detail;
    using A = acc_t<T>;
    for (std::int64_t n = 0; n < N; ++n) {
        const T* x = logits + n * V;
        T* dr = d + n * V;
        if ((mask && !mask[n]) || targets[n] < 0) {
            clear_row(losses[n], dr, V, accumulate);
            continue;
        }
        const auto st = log_softmax_stats(x, V, T(1));
        losses[n] = static_cast<T>(-st.log_prob(x[targets[n]]));
        for (int j = 0; j < V; ++j)
            store(dr[j], A(grad_scale) * (std::exp(st.log_prob(x[j])) - (j == targets[n] ? A(1) : A(0))), accumulate);
    }
}

/// Attention-map KL with grouped teacher heads, per query row, with the gradient on the student's
/// attention probabilities. Student head h is matched with the mean of teacher heads
/// [h·g, (h+1)·g), g = Ht/Hs. The keys of query t are j ≤ t when `causal` (a decoder), every
/// j < T otherwise (a bidirectional encoder: a padded key has probability 0 in both maps, so it
/// adds 0 and gets gradient 0). For a counted position (b,t):
///   losses[b·T+t] = Σ_h KL(ā_{h,t} ‖ a_{h,t}) over its keys j,
///   ∂/∂a_{h,t,j} = -ā_{h,t,j} / a_{h,t,j}  (its keys; zero elsewhere, e.g. above the diagonal),
/// with a clamped below at the smallest normal number, so a probability that underflowed to 0
/// gives a large finite value and a gradient the softmax backward multiplies by 0.
/// student, d: (B,Hs,T,T); teacher: (B,Ht,T,T); mask, losses: (B,T).
template <class T>
void attention_kl_forward_backward(const Reference&, T* d, bool accumulate, T* losses, const T* student,
                                   const T* teacher, const std::uint8_t* mask, int B, int Hs, int Ht, int Tn,
                                   T grad_scale, bool causal) {
    using namespace detail;
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
                    if (!causal || j <= t) {
                        const T at = grouped_teacher_prob(teacher, b, h, g, Ht, t, Tn, j);
                        const T as = std::max(a[j], tiny);
                        if (at > 0) kl += at * (std::log(at) - std::log(as));
                        gr = -at / as;
                    }
                    detail::store(dr[j], grad_scale * gr, accumulate);
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
    using namespace detail;
    using A = acc_t<T>;
    const std::int64_t tt = std::int64_t(Tn) * Tn;
    for (int t = 0; t < Tn; ++t) losses[t] = 0;
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < Tn; ++t) {
            const T* s = student + r * tt + std::int64_t(t) * Tn;
            const T* te = teacher + r * tt + std::int64_t(t) * Tn;
            T* dr = d + r * tt + std::int64_t(t) * Tn;
            std::fill(dr, dr + Tn, T(0));
            if (mask && !mask[t]) continue;
            const auto ls = log_softmax_stats(s, t + 1, s_scale), lt = log_softmax_stats(te, t + 1, t_scale);
            A kl = 0;
            for (int j = 0; j <= t; ++j) {
                const A lp = lt.log_prob(te[j]), lq = ls.log_prob(s[j]);
                const A p = std::exp(lp);
                if (p > 0) kl += p * (lp - lq);
                dr[j] = static_cast<T>(A(grad_scale) * A(s_scale) * (std::exp(lq) - p));
            }
            losses[t] += static_cast<T>(kl);
        }
}

/// Hidden-state matching rows (the device half of `loss::HiddenMSE`): y(N,C) is the (projected)
/// student state on entry and its gradient on exit, g(N,C) the teacher state, losses(N) per row:
///   mse:    losses[n] = Σ_c (y − g)² / C  (summed in double),   y ← scale · 2 (y − g) / C;
///   cosine: losses[n] = 1 − y·g / (max(|y|,ε) max(|g|,ε)), ε = 1e-8,
///           y ← −scale (g / (|y|_ε |g|_ε) − cos y / |y|_ε²), the second part 0 where |y| ≤ ε
///   (torch: F.mse_loss, 1 − F.cosine_similarity(eps=1e-8)). Rows that do not count get loss 0 and
/// gradient 0. Returns Σ_n of the row values in double (each row's value before its rounding to T),
/// summed in row order. `device::Cpu` runs this one (O(N·C), next to the projection's GEMMs).
template <class T>
double hidden_match_forward_backward(const Reference&, T* y, T* losses, const T* g, const std::uint8_t* mask,
                                     std::int64_t N, int C, T scale, bool cosine) {
    const T eps = T(1e-8);
    double value = 0;
    for (std::int64_t n = 0; n < N; ++n) {
        T* yr = y + n * C;
        const T* gr = g + n * C;
        if (mask && !mask[n]) {
            std::fill(yr, yr + C, T(0));
            losses[n] = T(0);
            continue;
        }
        double row = 0;
        if (!cosine) {
            double sq = 0;
            for (int c = 0; c < C; ++c) {
                const T r = yr[c] - gr[c];
                sq += double(r) * double(r);
                yr[c] = scale * T(2) * r / T(C);
            }
            row = sq / C;
        } else {
            T dot = 0, yy = 0, gg = 0;
            for (int c = 0; c < C; ++c) {
                dot += yr[c] * gr[c];
                yy += yr[c] * yr[c];
                gg += gr[c] * gr[c];
            }
            const T ny = std::max(std::sqrt(yy), eps), ng = std::max(std::sqrt(gg), eps);
            const T cos = dot / (ny * ng);
            row = 1.0 - double(cos);
            // d(1 - cos)/dy = -(g/(ny ng) - cos y/ny²); the second part vanishes where |y| is clamped
            const T c2 = std::sqrt(yy) > eps ? cos / (ny * ny) : T(0);
            for (int c = 0; c < C; ++c) yr[c] = -scale * (gr[c] / (ny * ng) - c2 * yr[c]);
        }
        losses[n] = static_cast<T>(row);
        value += row;
    }
    return value;
}

/// Cosine embedding rows (the kernel of `loss::CosineEmbedding`): student, teacher, d (B,C) —
/// one embedding per sequence — and losses (B). Every row counts. With ε = 1e-8,
/// n_s = max(|s|, ε), n_t = max(|t|, ε) and cos = s·t / (n_s n_t):
///   losses[b] = 1 − cos,
///   d[b] = (or +=) −grad_scale (t / (n_s n_t) − cos s / (n_s |s|)), the second part 0 where |s| = 0
/// — torch 2.x's `1 − F.cosine_similarity(s, t, dim=-1)` and its autograd (the norms are clamped
/// without a gradient through the clamp, so below ε the derivative of |s| is still s/|s|). Sums in
/// at least double.
template <class T>
void cosine_embedding_forward_backward(const Reference&, T* d, bool accumulate, T* losses, const T* student,
                                       const T* teacher, int B, int C, T grad_scale) {
    for (int b = 0; b < B; ++b)
        losses[b] = detail::cosine_embedding_row(d + std::int64_t(b) * C, accumulate, student + std::int64_t(b) * C,
                                                 teacher + std::int64_t(b) * C, C, grad_scale);
}

/// Embedding MSE rows (the kernel of `loss::EmbeddingMSE`): student, teacher, d (B,C), losses (B).
/// Every row counts:
///   losses[b] = Σ_c (s − t)² / C  (summed in at least double),
///   d[b] = (or +=) grad_scale · 2 (s − t) / C
/// — a term's value Σ_b losses / B is torch's `F.mse_loss(s, t)` (the mean over B·C).
template <class T>
void embedding_mse_forward_backward(const Reference&, T* d, bool accumulate, T* losses, const T* student,
                                    const T* teacher, int B, int C, T grad_scale) {
    for (int b = 0; b < B; ++b)
        losses[b] = detail::embedding_mse_row(d + std::int64_t(b) * C, accumulate, student + std::int64_t(b) * C,
                                              teacher + std::int64_t(b) * C, C, grad_scale);
}

}  // namespace distill::device
