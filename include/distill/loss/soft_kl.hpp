#pragma once
/// @file soft_kl.hpp
/// `SoftKL` and `TopKSoftKL`: Hinton et al.'s soft-label loss, the forward KL from the teacher's
/// tempered distribution to the student's, times τ². Full-vocabulary (teacher logits, in-process
/// teachers) and sparse (the teacher's top-k log-probabilities, as API teachers and caches give).

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include <boost/hana/adapt_struct.hpp>
#include <boost/hana/set.hpp>

#include "distill/device.hpp"
#include "distill/loss.hpp"
#include "distill/loss/util.hpp"

namespace distill::loss {

/// Keys of the job's `loss.soft_kl` and `loss.topk_soft_kl` objects.
using SoftKLConfig = TemperatureConfig;

/// Forward KL from the teacher to the student at temperature τ, full vocabulary:
///
///   value = s · mean over counted positions of KL(p‖q),  p = softmax(t/τ), q = softmax(z/τ),
///   s = τ² (`temperature_squared`, the default) or 1;   ∂value/∂z = s/(τ·count) · (q − p).
///
/// The τ² factor keeps the gradient's size independent of τ (it shrinks as 1/τ² otherwise), so the
/// term's weight means the same at every temperature. Use it whenever the teacher's logits are
/// available; it is "mode covering": the student spreads mass over everything the teacher deems
/// plausible. Needs `logits`. Config: `temperature` (τ > 0, default 1), `temperature_squared`
/// (default true). The teacher's vocabulary must be the student's.
class SoftKL : public util::logits_divergence<SoftKL, SoftKLConfig> {
public:
    static constexpr char name[] = "soft_kl";
    static constexpr auto needs = boost::hana::make_set(signal::logits);
    static constexpr const char* vocab_note = "full-vocabulary KL needs the same tokenizer";

    /// Validates the config; the vocabularies must agree when both are known.
    using logits_divergence::logits_divergence;

    /// The kernel of the call (see util::logits_divergence): the forward KL rows.
    template <class T, class Device>
    void rows(const context<T, Device>& ctx, T* d, bool accumulate, const T* s, const T* t, std::int64_t N, int V,
              T inv_tau, T grad_scale) const {
        kl_forward_backward(ctx.device, d, accumulate, ctx.rows(), s, t, ctx.mask_data(), N, V, inv_tau, grad_scale);
    }

    DISTILL_LOSS_TERM_CHECKS(distill::loss::SoftKL)
};

/// Forward KL from a teacher known only by its top-k log-probabilities per position, over k+1
/// outcomes: the k tokens and one "rest" bucket.
///
///   P_i = exp(topk_logprobs_i),  P_rest = 1 − Σ_i P_i;   q = softmax(z/τ), q_rest = Σ_{j∉top-k} q_j;
///   value = s · mean over counted positions of [Σ_i P_i log(P_i/q_{id_i}) + P_rest log(P_rest/q_rest)];
///   ∂/∂z_j = s/(τ·count) · (q_j − P_i) for j = id_i, and q_j (1 − P_rest/q_rest) for every other j.
///
/// **Why the rest bucket.** Renormalizing the top-k (dropping the tail) tells the student that the
/// teacher gives the other tokens zero probability, which pushes their mass onto the top-k even
/// when the teacher's own tail holds 30 %. Matching the tail's *total* keeps that mass where the
/// teacher puts it, without inventing how it is spread; it is the exact KL between the two
/// distributions coarsened to k+1 outcomes, a lower bound of the full KL that is tight when the
/// teacher's tail is small. q_rest is summed directly over the tail (never 1 − Σ q_i), so it
/// keeps full precision when the student's top-k hold almost everything.
///
/// **Temperature.** Top-k log-probabilities cannot be re-tempered exactly (the normalizer needs the
/// whole distribution), so they are used as given: `teacher.topk_temperature` must equal τ
/// (API teachers and caches give temperature 1; an in-process teacher computes them at τ).
///
/// Needs `topk_logprobs` (`teacher.topk_ids` and `teacher.topk_logprobs`, (B,T,k); id −1 marks an
/// unused slot). Config as `SoftKL`. Ids must be in the vocabulary and distinct per position and
/// the probabilities must not sum above 1 (+1e-3 for rounding): violations throw `error` naming the
/// position.
class TopKSoftKL : public util::term_base<SoftKLConfig> {
public:
    static constexpr char name[] = "topk_soft_kl";
    static constexpr auto needs = boost::hana::make_set(signal::topk_logprobs);

    explicit TopKSoftKL(const config& c = {}, const dims& = {}) : term_base(c) {
        util::check_temperature("topk_soft_kl.temperature", c.temperature);
    }

    /// The value; adds its gradient (times `ctx.weight`) to the logits' sink.
    template <class T, class Device>
    T operator()(const context<T, Device>& ctx) {
        const auto& s = ctx.student->logits;
        const auto& ids = ctx.teacher->topk_ids;
        const auto& lp = ctx.teacher->topk_logprobs;
        util::check_btx("topk_soft_kl", "the teacher's top-k ids", ids, s);
        util::check_btx("topk_soft_kl", "the teacher's top-k log-probabilities", lp, s, ids.size(2));
        const double tt = ctx.teacher->topk_temperature;
        if (std::abs(tt - cfg_.temperature) > 1e-6 * cfg_.temperature)
            throw config_error("topk_soft_kl.temperature",
                               "the teacher's top-k log-probabilities are at temperature " + std::to_string(tt) +
                                   " but the loss's temperature is " + std::to_string(cfg_.temperature) +
                                   "; sparse log-probabilities cannot be re-tempered exactly (see docs/losses.md)");
        const std::int64_t N = s.size(0) * s.size(1), count = ctx.count();
        const int V = static_cast<int>(s.size(2)), k = static_cast<int>(ids.size(2));
        if constexpr (Device::memory == memory_space::host) validate(ctx, ids.data(), lp.data(), N, V, k);
        const T tau = static_cast<T>(cfg_.temperature);
        const T factor = cfg_.temperature_squared ? tau * tau : T(1);
        const auto sink = ctx.d_logits();
        topk_kl_forward_backward(ctx.device, sink.tensor.data(), sink.accumulate, ctx.rows(), s.data(), ids.data(),
                                 lp.data(), ctx.mask_data(), N, V, k, T(1) / tau,
                                 ctx.weight * factor / T(count ? count : 1));
        return factor * util::mean_rows(ctx.device, ctx.rows(), N, count);
    }

    DISTILL_LOSS_TERM_CHECKS(distill::loss::TopKSoftKL)

private:
    template <class Ctx, class T>
    static void validate(const Ctx& ctx, const std::int32_t* ids, const T* lp, std::int64_t N, int V, int k) {
        const std::int64_t Tn = ctx.length();
        auto where = [&](std::int64_t n) {
            return "topk_soft_kl: position (b=" + std::to_string(n / Tn) + ", t=" + std::to_string(n % Tn) + "): ";
        };
        for (std::int64_t n = 0; n < N; ++n) {
            if (!ctx.counts(n)) continue;
            double mass = 0;
            for (int i = 0; i < k; ++i) {
                const std::int32_t id = ids[n * k + i];
                if (id < 0) continue;
                if (id >= V)
                    throw error(where(n) + "top-k id " + std::to_string(id) + " is outside the vocabulary [0, " +
                                std::to_string(V) + ")");
                for (int j = 0; j < i; ++j)
                    if (ids[n * k + j] == id)
                        throw error(where(n) + "top-k id " + std::to_string(id) + " appears twice");
                const T l = lp[n * k + i];
                if (std::isnan(l) || l > T(1e-3))
                    throw error(where(n) + "top-k log-probability " + std::to_string(double(l)) +
                                " is not a log-probability");
                mass += std::exp(static_cast<double>(l));
            }
            if (mass > 1.0 + 1e-3)
                throw error(where(n) + "top-k probabilities sum to " + std::to_string(mass) + " > 1");
        }
    }
};

}  // namespace distill::loss
