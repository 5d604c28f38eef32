#pragma once
/// @file adam.hpp
/// `optim::Adam` (weight decay as an L2 term added to the gradient, as `torch.optim.Adam`) and
/// `optim::AdamW` (decoupled weight decay, as `torch.optim.AdamW`). One step is one call of the
/// device's `adam_update` kernel over every parameter at once (a `device::tensor_list` laid out at
/// construction); on `device::Cpu` that is a flat, chunked, multithreaded, fused sweep that reads each
/// element's p, g, m, v once and writes p, m, v once (see `device/cpu/optim.hpp`).

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <boost/hana/adapt_struct.hpp>

#include "distill/optim/common.hpp"

namespace distill::optim {

/// Hyperparameters of `Adam` and `AdamW` (JSON keys of the job's `optimizer` object). The learning
/// rate comes from the schedule.
struct AdamConfig {
    double beta1 = 0.9;         ///< first-moment decay, in [0, 1)
    double beta2 = 0.999;       ///< second-moment decay, in [0, 1)
    double eps = 1e-8;          ///< added to sqrt(v_hat), > 0
    double weight_decay = 0.0;  ///< Adam: L2 coefficient added to the gradient; AdamW: decoupled decay per unit lr
    DecayGroups decay{};        ///< which parameter kinds are decayed besides weights

    /// Throws config_error naming the first out-of-range field under `path`.
    void validate(const std::string& path = "optimizer") const {
        detail::check_range(beta1, 0.0, 1.0, path + ".beta1", true);
        detail::check_range(beta2, 0.0, 1.0, path + ".beta2", true);
        if (!(eps > 0) || !std::isfinite(eps))
            throw config_error(path + ".eps", "must be > 0, got " + std::to_string(eps));
        detail::check_range(weight_decay, 0.0, 1e6, path + ".weight_decay");
    }
};

namespace detail {

/// Adam's update with the weight decay coupled (L2, `Decoupled = false`) or decoupled (AdamW).
template <class T, class Device, bool Decoupled>
class AdamImpl {
    static_assert(device::require_optimizer_kernels<Device, T>::value);  // one line per missing kernel

public:
    using scalar_type = T;
    using device_type = Device;
    using config_type = AdamConfig;

    /// Takes the parameters to update (see `gather`), validated; allocates the zeroed state. With a
    /// `shard` (ZeRO-1) it keeps state for, and updates, only those elements: each overlapping
    /// parameter's part is a 1-D state tensor `exp_avg.<name>` of that length.
    AdamImpl(std::vector<Parameter<T>> params, const AdamConfig& config = default_config(), Device device = Device{},
             Shard shard = {})
        : params_(std::move(params)), cfg_(config), dev_(device), shard_(shard) {
        cfg_.validate();
        const char* who = Decoupled ? "AdamW" : "Adam";
        validate_parameters<T>(params_, who, Device::memory);
        const std::vector<Parameter<T>> part = shard_slices(params_, shard_, who);
        static constexpr const char* slots[] = {"exp_avg", "exp_avg_sq"};
        state_ = StateArena<T, Device>(dev_, part, slots);
        const std::size_t n = part.size();
        for (std::size_t i = 0; i < n; ++i)
            list_.add(part[i].value.numel(), part[i].value.data(), part[i].grad.data(), state_.data(0, i, n),
                      state_.data(1, i, n), cfg_.decay.applies_to(part[i].kind) && cfg_.weight_decay != 0);
    }

    /// torch's defaults: no decay for Adam, 0.01 for AdamW.
    static AdamConfig default_config() {
        AdamConfig c;
        c.weight_decay = Decoupled ? 0.01 : 0.0;
        return c;
    }

    /// One Adam(W) step at learning rate `lr` (>= 0), exactly torch's `_single_tensor_adam(w)`:
    ///   [AdamW] p ← p·(1 − lr·λ)          [Adam] g ← g + λ·p
    ///   m ← β₁m + (1−β₁)g,   v ← β₂v + (1−β₂)g²
    ///   p ← p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)
    /// with the bias corrections and step size in double, as Python computes them, then cast to T.
    void step(double lr) {
        if (!(lr >= 0) || !std::isfinite(lr))
            throw numeric_error("Adam step: learning rate " + std::to_string(lr) + " is not a finite number >= 0");
        ++steps_;
        const double t = static_cast<double>(steps_);
        const double bc1 = 1.0 - std::pow(cfg_.beta1, t);
        const double bc2 = 1.0 - std::pow(cfg_.beta2, t);
        device::adam_coefficients<T> k;
        k.b1 = static_cast<T>(cfg_.beta1);
        k.c1 = static_cast<T>(1.0 - cfg_.beta1);
        k.b2 = static_cast<T>(cfg_.beta2);
        k.c2 = static_cast<T>(1.0 - cfg_.beta2);
        k.neg_step_size = static_cast<T>(-(lr / bc1));
        k.bc2_sqrt = static_cast<T>(std::sqrt(bc2));
        k.eps = static_cast<T>(cfg_.eps);
        k.wd = static_cast<T>(cfg_.weight_decay);
        k.shrink = static_cast<T>(1.0 - lr * cfg_.weight_decay);
        k.decoupled = Decoupled;
        adam_update(dev_, list_, k);
    }

    /// Zeroes the gradient of every parameter (of every owner).
    void zero_grad() {
        for (const auto& p : params_)
            dev_.fill_zero(p.grad.data(), sizeof(T) * static_cast<std::size_t>(p.grad.numel()));
    }

    /// Updates taken so far.
    std::int64_t steps() const noexcept { return steps_; }
    /// Sets the update count (checkpoint restore). Precondition: n >= 0.
    void set_steps(std::int64_t n) {
        if (n < 0) throw error("Adam::set_steps: negative step count " + std::to_string(n));
        steps_ = n;
    }
    /// The parameters it updates, in construction order.
    const std::vector<Parameter<T>>& parameters() const noexcept { return params_; }
    /// `exp_avg.<name>` for every parameter, then `exp_avg_sq.<name>`.
    const std::vector<StateTensor<T>>& state() const noexcept { return state_.tensors(); }
    /// The hyperparameters, validated.
    const AdamConfig& config() const noexcept { return cfg_; }
    /// The device whose threads run the update.
    const Device& device() const noexcept { return dev_; }
    /// Bytes of optimizer state.
    std::size_t state_bytes() const noexcept { return state_.bytes(); }
    /// The elements it updates (the default: all).
    const Shard& shard() const noexcept { return shard_; }

private:
    std::vector<Parameter<T>> params_;
    AdamConfig cfg_;
    Device dev_;
    Shard shard_;
    StateArena<T, Device> state_;
    device::tensor_list<T> list_;  // per parameter: value, gradient, exp_avg, exp_avg_sq; decayed or not
    std::int64_t steps_ = 0;
};

}  // namespace detail

/// Adam (Kingma & Ba) with `torch.optim.Adam` semantics: `weight_decay` is an L2 penalty added to the
/// gradient before the moments (so it is rescaled by the adaptive denominator).
/// @tparam T scalar type. @tparam Device a `device_policy` with the optimizer kernels
/// (`device::optimizer_device`; its `adam_update` runs the step).
template <class T, class Device>
class Adam : public detail::AdamImpl<T, Device, false> {
public:
    using detail::AdamImpl<T, Device, false>::AdamImpl;
};

/// AdamW (Loshchilov & Hutter) with `torch.optim.AdamW` semantics: decoupled decay
/// `p ← p·(1 − lr·weight_decay)` before the Adam update; default weight_decay 0.01.
/// @tparam T scalar type. @tparam Device a `device_policy` with the optimizer kernels (`device::optimizer_device`).
template <class T, class Device>
class AdamW : public detail::AdamImpl<T, Device, true> {
public:
    using detail::AdamImpl<T, Device, true>::AdamImpl;
};

}  // namespace distill::optim

BOOST_HANA_ADAPT_STRUCT(distill::optim::AdamConfig, beta1, beta2, eps, weight_decay, decay);
