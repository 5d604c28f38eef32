#pragma once
/// @file sampler.hpp
/// Choosing the next token from a row of logits, and the log-probabilities reported with it. Shared
/// by every in-process generator (teacher::Model, apps/serve), so they sample identically.
///
/// Sampling, for `temperature > 0`: scale the logits by 1/temperature; keep the `top_k` most likely
/// tokens (all when 0); keep the smallest prefix of those, most likely first, whose probability
/// reaches `top_p`; draw from what is left, renormalized, with one uniform number. Ties in
/// probability are broken by the lower token id, so the result never depends on sort internals.
/// `temperature == 0` is greedy: the most likely token (the lowest id among equals).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "distill/detail/rng.hpp"
#include "distill/teacher.hpp"

namespace distill::teacher {

/// Log-sum-exp of `logits[0..V)`, in double so that the log-probabilities of a large vocabulary
/// keep float precision.
template <class T>
double log_sum_exp(const T* logits, int V) noexcept {
    double mx = -std::numeric_limits<double>::infinity();
    for (int i = 0; i < V; ++i) mx = std::max(mx, double(logits[i]));
    if (!std::isfinite(mx)) return mx;
    double s = 0;
    for (int i = 0; i < V; ++i) s += std::exp(double(logits[i]) - mx);
    return mx + std::log(s);
}

/// Chooses tokens from logit rows; owns its scratch so steady-state sampling does not allocate.
class Sampler {
public:
    /// The token to emit after `logits[0..V)` under `s`, drawing from `rng` when `s.temperature > 0`.
    template <class T>
    std::int32_t sample(const T* logits, int V, const Sampling& s, Rng& rng) {
        if (s.temperature <= 0.0) return argmax(logits, V);
        const double inv_t = 1.0 / s.temperature;
        double mx = -std::numeric_limits<double>::infinity();
        for (int i = 0; i < V; ++i) mx = std::max(mx, double(logits[i]));
        prob_.resize(std::size_t(V));
        for (int i = 0; i < V; ++i) prob_[std::size_t(i)] = std::exp((double(logits[i]) - mx) * inv_t);
        const bool truncate = (s.top_k > 0 && s.top_k < V) || s.top_p < 1.0;
        if (!truncate) {
            // Plain sampling: walk the ids in order, no sort needed.
            const double total = std::accumulate(prob_.begin(), prob_.end(), 0.0);
            const double u = rng.uniform() * total;
            double c = 0;
            for (int i = 0; i < V; ++i) {
                c += prob_[std::size_t(i)];
                if (u < c) return i;
            }
            return last_positive(V);
        }
        // Candidates most likely first; only as many as top_k / top_p can keep are sorted, growing
        // the sorted prefix until its mass reaches top_p (a nucleus is usually a handful of tokens).
        order_.resize(std::size_t(V));
        std::iota(order_.begin(), order_.end(), 0);
        auto before = [&](std::int32_t a, std::int32_t b) {
            const double pa = prob_[std::size_t(a)], pb = prob_[std::size_t(b)];
            return pa > pb || (pa == pb && a < b);
        };
        // With top_k the normalizer of top_p is the top-k mass (top-k first, then the nucleus);
        // without it, the sorted prefix grows until its mass reaches top_p of the total.
        const int k_cap = s.top_k > 0 ? std::min(s.top_k, V) : V;
        int sorted = k_cap < V ? k_cap : std::min(V, 64);
        int keep = 0;
        double kept_mass = 0;
        for (;;) {
            std::partial_sort(order_.begin(), order_.begin() + sorted, order_.end(), before);
            double norm = 0;
            if (k_cap < V) {
                for (int i = 0; i < k_cap; ++i) norm += prob_[std::size_t(order_[std::size_t(i)])];
            } else {
                norm = std::accumulate(prob_.begin(), prob_.end(), 0.0);
            }
            keep = 0;
            kept_mass = 0;
            while (keep < sorted && !(kept_mass >= s.top_p * norm && keep > 0))
                kept_mass += prob_[std::size_t(order_[std::size_t(keep++)])];
            if (kept_mass >= s.top_p * norm || sorted == V || sorted == k_cap) break;
            sorted = std::min(V, sorted * 4);
        }
        const double u = rng.uniform() * kept_mass;
        double c = 0;
        for (int i = 0; i < keep; ++i) {
            c += prob_[std::size_t(order_[std::size_t(i)])];
            if (u < c) return order_[std::size_t(i)];
        }
        return order_[std::size_t(keep - 1)];
    }

    /// The `k` most likely ids of `logits[0..V)` (most likely first, lower id first among equals) and
    /// their log-probabilities `logit - lse`, into `ids[0..k)` and `logprobs[0..k)`. `lse` is
    /// `log_sum_exp(logits, V)`. Precondition: k <= V.
    template <class T>
    void top_logprobs(const T* logits, int V, int k, double lse, std::int32_t* ids, float* logprobs) {
        if (k <= 0) return;
        order_.resize(std::size_t(V));
        std::iota(order_.begin(), order_.end(), 0);
        std::partial_sort(order_.begin(), order_.begin() + k, order_.end(), [&](std::int32_t a, std::int32_t b) {
            return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
        });
        for (int j = 0; j < k; ++j) {
            ids[j] = order_[std::size_t(j)];
            logprobs[j] = static_cast<float>(double(logits[ids[j]]) - lse);
        }
    }

    /// The most likely id (the lowest among equals).
    template <class T>
    static std::int32_t argmax(const T* logits, int V) noexcept {
        int best = 0;
        for (int i = 1; i < V; ++i)
            if (logits[i] > logits[best]) best = i;
        return best;
    }

private:
    // Rounding can leave u == total after the walk; the last id with mass is the right answer then.
    int last_positive(int V) const noexcept {
        for (int i = V - 1; i > 0; --i)
            if (prob_[std::size_t(i)] > 0) return i;
        return 0;
    }

    std::vector<double> prob_;
    std::vector<std::int32_t> order_;
};

}  // namespace distill::teacher
