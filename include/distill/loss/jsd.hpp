#pragma once
/// @file jsd.hpp
/// `JSD`: the generalized Jensen–Shannon divergence, interpolating between forward (β = 0) and
/// reverse (β = 1) KL, continuous at both ends.

#include <cstdint>
#include <string>

#include <boost/hana/adapt_struct.hpp>
#include <boost/hana/set.hpp>

#include "distill/device.hpp"
#include "distill/loss.hpp"
#include "distill/loss/util.hpp"

namespace distill::loss {

/// Keys of the job's `loss.jsd` object.
struct JSDConfig {
    double beta = 0.5;                ///< the teacher's weight in the mixture; 0 forward KL, 1 reverse KL
    double temperature = 1.0;         ///< τ > 0
    bool temperature_squared = true;  ///< multiply the value (and gradient) by τ²
    /// Divide by β(1−β) for 0 < β < 1 (continuous at the KL ends); false: the GKD paper's and TRL's
    /// unnormalized β KL(p‖M) + (1−β) KL(q‖M), which goes to 0 at both ends.
    bool normalize = true;
};

/// Generalized JSD at temperature τ, full vocabulary, with p = softmax(t/τ), q = softmax(z/τ):
///
///   M = β p + (1−β) q                     (a mixture of *probabilities*, built in log space)
///   J_β = [β KL(p‖M) + (1−β) KL(q‖M)] / (β(1−β))   for 0 < β < 1,
///   J_0 = KL(p‖q) (forward, = SoftKL),   J_1 = KL(q‖p) (reverse, = ReverseKL);
///   value = s · mean over counted positions of J_β;  ∂J_β/∂z_j = −q_j (log(M_j/q_j) + KL(q‖M)) / (β τ).
///
/// The mixture weights and the KL weights follow the GKD paper (Agarwal et al. 2024) and TRL's
/// `generalized_jsd_loss` (β weights the teacher in M). Unnormalized, that divergence goes to 0 at
/// both ends, so a library that special-cases β = 0 as forward KL is discontinuous there; dividing
/// by β(1−β) makes J_β → KL(p‖q) as β → 0 and → KL(q‖p) as β → 1 (first order of log(M/q) in β),
/// and J_0.5 = 4·JSD, symmetric in p and q. The limit is pointwise, not uniform: where the teacher is
/// confident about a token the student neglects (p/q ~ 1e6), β = 1e-6 is not small for that token,
/// and J_β can be far from J_0 (docs/losses.md quotes 0.97·KL at β = 1e-6 and 0.83·KL at 1e-4 on
/// logits of spread 4); use β = 0 or 1 for the KLs themselves. β and 1 − β are formed in double,
/// and log(M/q), log(M/p) use `math::log_mix`, accurate on both sides of its branch, so fp32 stays
/// within 1e-5 of the float64 truth at β = 1e-6 and 1 − 1e-6.
/// `normalize: false` leaves out the division (value and gradient times β(1−β) for 0 < β < 1; the
/// ends are the KLs either way): TRL's `GKDTrainer.generalized_jsd_loss` exactly, for runs compared
/// with it (tests/reference/make_gkd_golden.py).
/// Needs `logits`. Config: `beta` ∈ [0, 1] (default 0.5), `temperature`, `temperature_squared`,
/// `normalize` (default true).
class JSD : public util::logits_divergence<JSD, JSDConfig> {
public:
    static constexpr char name[] = "jsd";
    static constexpr auto needs = boost::hana::make_set(signal::logits);
    static constexpr const char* vocab_note = nullptr;

    explicit JSD(const config& c = {}, const dims& d = {}) : logits_divergence(checked_beta(c), d) {}

    /// The value; adds its gradient (times `ctx.weight`) to the logits' sink. Unnormalized, the
    /// kernel's J_β and its gradient are both scaled by β(1−β).
    template <class T, class Device>
    T operator()(const context<T, Device>& ctx) {
        const bool inner = cfg_.beta > 0 && cfg_.beta < 1;
        const T scale = !cfg_.normalize && inner ? static_cast<T>(cfg_.beta * (1.0 - cfg_.beta)) : T(1);
        return scale * util::tempered_logits(
                           name, ctx, cfg_.temperature, cfg_.temperature_squared,
                           [&](T* d, bool accumulate, const T* s, const T* t, std::int64_t N, int V, T inv_tau,
                               T grad_scale) { rows(ctx, d, accumulate, s, t, N, V, inv_tau, grad_scale * scale); });
    }

    /// The kernel of the call (see util::logits_divergence): the ends are the KLs themselves
    /// (J_0 = KL(p‖q), J_1 = KL(q‖p)); the JSD kernel computes 0 < β < 1.
    template <class T, class Device>
    void rows(const context<T, Device>& ctx, T* d, bool accumulate, const T* s, const T* t, std::int64_t N, int V,
              T inv_tau, T grad_scale) const {
        if (cfg_.beta <= 0)
            kl_forward_backward(ctx.device, d, accumulate, ctx.rows(), s, t, ctx.mask_data(), N, V, inv_tau,
                                grad_scale);
        else if (cfg_.beta >= 1)
            reverse_kl_forward_backward(ctx.device, d, accumulate, ctx.rows(), s, t, ctx.mask_data(), N, V, inv_tau,
                                        grad_scale);
        else
            jsd_forward_backward(ctx.device, d, accumulate, ctx.rows(), s, t, ctx.mask_data(), N, V, cfg_.beta, inv_tau,
                                 grad_scale);
    }

    DISTILL_LOSS_TERM_CHECKS(distill::loss::JSD)

private:
    static const config& checked_beta(const config& c) {
        if (!(c.beta >= 0 && c.beta <= 1))
            throw config_error("jsd.beta", "must be in [0, 1], got " + std::to_string(c.beta));
        return c;
    }
};

}  // namespace distill::loss

BOOST_HANA_ADAPT_STRUCT(distill::loss::JSDConfig, beta, temperature, temperature_squared, normalize);
