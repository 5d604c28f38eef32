#pragma once
/// @file reverse_kl.hpp
/// `ReverseKL`: the KL from the student to the teacher, KL(q‖p) — "mode seeking".

#include <cstdint>
#include <string>

#include <boost/hana/adapt_struct.hpp>
#include <boost/hana/set.hpp>

#include "distill/device.hpp"
#include "distill/loss.hpp"
#include "distill/loss/util.hpp"

namespace distill::loss {

/// Keys of the job's `loss.reverse_kl` object.
using ReverseKLConfig = TemperatureConfig;

/// Reverse KL at temperature τ, full vocabulary:
///
///   value = s · mean over counted positions of KL(q‖p) = Σ_j q_j (log q_j − log p_j),
///   p = softmax(t/τ), q = softmax(z/τ), s = τ² or 1;
///   ∂value/∂z_j = s/(τ·count) · q_j (log q_j − log p_j − KL(q‖p)).
///
/// Mode seeking: the student is penalized for mass where the teacher has little, not for missing
/// some of the teacher's modes — the better choice when a small student cannot cover a broad
/// teacher (MiniLLM, Gu et al. 2024). Note the direction: this is *not* `SoftKL` with the arguments
/// swapped in a library that computes `kl_div(student, teacher)`; the expectation is under the
/// student. Needs `logits`. Config: `temperature` (default 1), `temperature_squared` (default true).
/// A token the teacher masks (−inf) must be masked by the student too, or the value is infinite.
class ReverseKL : public util::logits_divergence<ReverseKL, ReverseKLConfig> {
public:
    static constexpr char name[] = "reverse_kl";
    static constexpr auto needs = boost::hana::make_set(signal::logits);
    static constexpr const char* vocab_note = nullptr;

    using logits_divergence::logits_divergence;

    /// The kernel of the call (see util::logits_divergence): the reverse KL rows.
    template <class T, class Device>
    void rows(const context<T, Device>& ctx, T* d, bool accumulate, const T* s, const T* t, std::int64_t N, int V,
              T inv_tau, T grad_scale) const {
        reverse_kl_forward_backward(ctx.device, d, accumulate, ctx.rows(), s, t, ctx.mask_data(), N, V, inv_tau,
                                    grad_scale);
    }

    DISTILL_LOSS_TERM_CHECKS(distill::loss::ReverseKL)
};

}  // namespace distill::loss
