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
struct ReverseKLConfig {
    double temperature = 1.0;         ///< τ > 0
    bool temperature_squared = true;  ///< multiply the value (and gradient) by τ²
};

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
class ReverseKL {
public:
    using config = ReverseKLConfig;

    static constexpr char name[] = "reverse_kl";
    static constexpr auto needs = boost::hana::make_set(signal::logits);

    explicit ReverseKL(const config& c = {}, const dims& d = {}) : cfg_(c) {
        util::check_temperature("reverse_kl.temperature", c.temperature);
        if (d.student.vocab_size && d.teacher.vocab_size && d.student.vocab_size != d.teacher.vocab_size)
            throw config_error("reverse_kl", "the teacher's vocabulary (" + std::to_string(d.teacher.vocab_size) +
                                                 ") differs from the student's (" +
                                                 std::to_string(d.student.vocab_size) + ")");
    }

    const config& settings() const noexcept { return cfg_; }

    /// The value; adds its gradient (times `ctx.weight`) to the logits' sink.
    template <class T, class Device>
    T operator()(const context<T, Device>& ctx) {
        const auto& s = ctx.student->logits;
        const auto& t = ctx.teacher->logits;
        util::check_btx("reverse_kl", "the teacher's logits", t, s, s.size(2));
        const std::int64_t N = s.size(0) * s.size(1), count = ctx.count();
        const T tau = static_cast<T>(cfg_.temperature);
        const T factor = cfg_.temperature_squared ? tau * tau : T(1);
        const auto sink = ctx.d_logits();
        reverse_kl_forward_backward(ctx.device, sink.tensor.data(), sink.accumulate, ctx.rows(), s.data(), t.data(),
                                    ctx.mask_data(), N, static_cast<int>(s.size(2)), T(1) / tau,
                                    ctx.weight * factor / T(count ? count : 1));
        return factor * util::mean_rows(ctx.device, ctx.rows(), N, count);
    }

    DISTILL_LOSS_TERM_CHECKS(distill::loss::ReverseKL)

private:
    config cfg_;
};

}  // namespace distill::loss

BOOST_HANA_ADAPT_STRUCT(distill::loss::ReverseKLConfig, temperature, temperature_squared);
