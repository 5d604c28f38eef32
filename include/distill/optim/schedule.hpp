#pragma once
/// @file schedule.hpp
/// Learning-rate schedules as pure functions of the step: `lr(step)` depends on nothing else, so a
/// resumed run needs only the step to continue the schedule exactly, and a schedule can be plotted,
/// tested and compared with PyTorch's without running an optimizer.
///
/// Step `s` is the number of optimizer updates already taken: `lr(0)` is the rate of the first
/// update (torch: the rate after `s` calls of `scheduler.step()`).
///
/// Composable pieces — `Constant`, `CosineDecay`, `LinearDecay`, and `WarmupThen<Decay>` in front of
/// any of them — and `Schedule`, the runtime composition a job file selects (`ScheduleConfig`).
/// PyTorch equivalents (tested in `tests/unit-training.cpp` against `torch.optim.lr_scheduler`):
///
/// | distill | torch.optim.lr_scheduler |
/// |---|---|
/// | `Constant{lr}` | none (constant lr) |
/// | `CosineDecay{lr, n, r}` | `CosineAnnealingLR(T_max=n, eta_min=r·lr)` for s ≤ n, then held at r·lr |
/// | `LinearDecay{lr, n, r}` | `LinearLR(start_factor=1, end_factor=r, total_iters=n)` |
/// | `WarmupThen<D>{W, d}` | `SequentialLR([LinearLR(start_factor=1/W, total_iters=W-1), D], milestones=[W])` |

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <string>

#include <boost/hana/adapt_struct.hpp>

#include "distill/error.hpp"

namespace distill::optim {

/// A learning-rate schedule: `s.lr(step)` for step >= 0, a pure function.
template <class S>
concept lr_schedule = requires(const S& s, std::int64_t step) {
    { s.lr(step) } -> std::convertible_to<double>;
};

/// The same rate at every step.
struct Constant {
    double base_lr = 1e-3;
    /// `base_lr`, whatever the step.
    double lr(std::int64_t) const noexcept { return base_lr; }
};

/// Half a cosine from `base_lr` at step 0 down to `min_ratio·base_lr` at step `steps`, held there
/// afterwards (torch's CosineAnnealingLR would climb back up; a run that is extended should not).
struct CosineDecay {
    double base_lr = 1e-3;
    std::int64_t steps = 1;  ///< length of the decay; <= 0 means no decay
    double min_ratio = 0.0;  ///< final rate as a fraction of base_lr

    /// The rate of update `step` (0-based).
    double lr(std::int64_t step) const noexcept {
        if (steps <= 0) return base_lr;
        const double progress =
            static_cast<double>(std::clamp<std::int64_t>(step, 0, steps)) / static_cast<double>(steps);
        const double eta_min = min_ratio * base_lr;
        return eta_min + (base_lr - eta_min) * (1.0 + std::cos(3.14159265358979323846 * progress)) / 2.0;
    }
};

/// A straight line from `base_lr` at step 0 to `min_ratio·base_lr` at step `steps`, held afterwards.
struct LinearDecay {
    double base_lr = 1e-3;
    std::int64_t steps = 1;
    double min_ratio = 0.0;

    /// The rate of update `step` (0-based).
    double lr(std::int64_t step) const noexcept {
        if (steps <= 0) return base_lr;
        const double progress =
            static_cast<double>(std::clamp<std::int64_t>(step, 0, steps)) / static_cast<double>(steps);
        return base_lr * (1.0 + (min_ratio - 1.0) * progress);
    }
};

/// `warmup_steps` steps rising linearly to `then.lr(0)`, then `then` (shifted by the warmup). Step s
/// of the warmup runs at (s+1)/W of the peak, so no update is wasted at rate 0 (as Hugging Face's
/// `get_linear_schedule_with_warmup` wastes its first) and the last warmup step reaches the peak.
/// @tparam Then the schedule after the warmup.
template <lr_schedule Then>
struct WarmupThen {
    std::int64_t warmup_steps = 0;
    Then then{};

    /// The rate of update `step` (0-based).
    double lr(std::int64_t step) const noexcept {
        if (step < warmup_steps) return then.lr(0) * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
        return then.lr(step - warmup_steps);
    }
};

/// Linear warmup to a constant rate.
using LinearWarmup = WarmupThen<Constant>;

/// The schedule a job file selects: optional linear warmup, then constant, cosine or linear decay
/// over the remaining steps. A job's `hyperparameters` section holds one (`Hyperparameters::schedule`,
/// pipeline/job.hpp) and sets its fields (`hyperparameters.warmup` is `warmup_steps`).
struct ScheduleConfig {
    double learning_rate = 3e-4;    ///< peak rate
    std::int64_t warmup_steps = 0;  ///< linear warmup length (0: none)
    std::string decay = "cosine";   ///< "constant", "cosine" or "linear"
    double min_lr_ratio = 0.1;      ///< final rate of a decay as a fraction of the peak, in [0, 1]

    /// Throws config_error naming the first invalid field under `path`.
    void validate(const std::string& path = "schedule") const {
        if (!(learning_rate > 0) || !std::isfinite(learning_rate))
            throw config_error(path + ".learning_rate",
                               "must be a finite number > 0, got " + std::to_string(learning_rate));
        if (warmup_steps < 0)
            throw config_error(path + ".warmup_steps", "must be >= 0, got " + std::to_string(warmup_steps));
        if (decay != "constant" && decay != "cosine" && decay != "linear")
            throw config_error(path + ".decay",
                               "must be \"constant\", \"cosine\" or \"linear\", got \"" + decay + "\"");
        if (!(min_lr_ratio >= 0 && min_lr_ratio <= 1))
            throw config_error(path + ".min_lr_ratio", "must be in [0, 1], got " + std::to_string(min_lr_ratio));
    }
};

/// `ScheduleConfig` over a run of `total_steps` updates (the decay spans total − warmup steps).
class Schedule {
public:
    /// Validates `config` (config_error naming the field) for a run of `total_steps` updates.
    Schedule(const ScheduleConfig& config, std::int64_t total_steps) : cfg_(config), total_(total_steps) {
        cfg_.validate();
        if (total_steps < 0)
            throw config_error("schedule", "total steps must be >= 0, got " + std::to_string(total_steps));
        const std::int64_t decay_steps = std::max<std::int64_t>(total_steps - cfg_.warmup_steps, 0);
        cosine_ = {.warmup_steps = cfg_.warmup_steps, .then = {cfg_.learning_rate, decay_steps, cfg_.min_lr_ratio}};
        linear_ = {.warmup_steps = cfg_.warmup_steps, .then = {cfg_.learning_rate, decay_steps, cfg_.min_lr_ratio}};
        constant_ = {.warmup_steps = cfg_.warmup_steps, .then = {cfg_.learning_rate}};
        kind_ = cfg_.decay == "cosine" ? kind::cosine : cfg_.decay == "linear" ? kind::linear : kind::constant;
    }

    /// The rate of update `step` (0-based).
    double lr(std::int64_t step) const noexcept {
        switch (kind_) {
            case kind::cosine:
                return cosine_.lr(step);
            case kind::linear:
                return linear_.lr(step);
            default:
                return constant_.lr(step);
        }
    }

    /// The validated configuration.
    const ScheduleConfig& config() const noexcept { return cfg_; }
    /// The run length the decay was laid out for.
    std::int64_t total_steps() const noexcept { return total_; }

private:
    enum class kind { constant, cosine, linear };
    kind kind_ = kind::constant;
    ScheduleConfig cfg_;
    std::int64_t total_;
    WarmupThen<CosineDecay> cosine_;
    WarmupThen<LinearDecay> linear_;
    LinearWarmup constant_;
};

}  // namespace distill::optim

BOOST_HANA_ADAPT_STRUCT(distill::optim::ScheduleConfig, learning_rate, warmup_steps, decay, min_lr_ratio);
