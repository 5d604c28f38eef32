#pragma once
/// @file hard_ce.hpp
/// `HardCE`: cross-entropy on hard targets — the teacher's generated tokens (sequence-level
/// distillation, Kim & Rush 2016) or the ground-truth labels (the baseline, and the α-mixed hard
/// term of Hinton et al.).

#include <cstdint>
#include <string>

#include <boost/hana/adapt_struct.hpp>
#include <boost/hana/set.hpp>

#include "distill/device.hpp"
#include "distill/loss.hpp"
#include "distill/loss/util.hpp"

namespace distill::loss {

/// Keys of the job's `loss.hard_ce` object.
struct HardCEConfig {
    std::string targets = "teacher";  ///< "teacher" (teacher.tokens) or "labels" (ground truth)
};

/// Cross-entropy of the student's logits against hard targets y (B,T), at temperature 1:
///
///   value = mean over positions that count and have a target (y ≥ 0) of −log softmax(z)_y,
///   ∂value/∂z = (softmax(z) − onehot(y)) / count.
///
/// `targets`: "teacher" reads `teacher.tokens` (the token the teacher produced after each position;
/// −1 where none), "labels" reads the context's ground-truth `labels`. Needs `tokens` (every
/// teacher provides them; with "labels" they are not read). Config: `targets` (default "teacher").
class HardCE : public util::term_base<HardCEConfig> {
public:
    static constexpr char name[] = "hard_ce";
    static constexpr auto needs = boost::hana::make_set(signal::tokens);

    explicit HardCE(const config& c = {}, const dims& = {}) : term_base(c) {
        if (c.targets != "teacher" && c.targets != "labels")
            throw config_error("hard_ce.targets", "expected \"teacher\" or \"labels\", got \"" + c.targets + "\"");
    }

    /// The value; adds its gradient (times `ctx.weight`) to the logits' sink.
    template <class T, class Device>
    T operator()(const context<T, Device>& ctx) {
        const auto& s = ctx.student->logits;
        const bool teacher = cfg_.targets == "teacher";
        const Tensor<const std::int32_t>& y = teacher ? ctx.teacher->tokens : ctx.labels;
        const char* what = teacher ? "the teacher's tokens" : "the labels";
        if (y.empty()) throw shape_error(std::string("hard_ce: ") + what + " are missing");
        if (y.rank() != 2 || y.size(0) != s.size(0) || y.size(1) != s.size(1))
            throw shape_error(std::string("hard_ce: ") + what + " have shape " + y.shape_string() + ", expected [" +
                              std::to_string(s.size(0)) + ", " + std::to_string(s.size(1)) + "]");
        const std::int64_t N = s.size(0) * s.size(1);
        const int V = static_cast<int>(s.size(2));
        std::int64_t count = 0;
        for (std::int64_t n = 0; n < N; ++n) {
            const std::int32_t v = y.data()[n];
            if (v < -1 || v >= V)
                throw shape_error(std::string("hard_ce: ") + what + ": target " + std::to_string(v) + " at position " +
                                  std::to_string(n) + " is outside [-1, " + std::to_string(V) + ")");
            count += ctx.counts(n) && v >= 0;
        }
        const auto sink = ctx.d_logits();
        masked_cross_entropy_forward_backward(ctx.device, sink.tensor.data(), sink.accumulate, ctx.rows(), s.data(),
                                              y.data(), ctx.mask_data(), N, V, ctx.weight / T(count ? count : 1));
        return util::mean_rows(ctx.device, ctx.rows(), N, count);
    }

    DISTILL_LOSS_TERM_CHECKS(distill::loss::HardCE)
};

}  // namespace distill::loss

BOOST_HANA_ADAPT_STRUCT(distill::loss::HardCEConfig, targets);
