#pragma once
/// @file sgd.hpp
/// `optim::Sgd`: stochastic gradient descent with momentum, dampening, Nesterov momentum and L2
/// weight decay, with `torch.optim.SGD` semantics (including its first step, which copies the
/// gradient into the momentum buffer instead of decaying a zero buffer).

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <boost/hana/adapt_struct.hpp>

#include "distill/optim/common.hpp"

namespace distill::optim {

/// Hyperparameters of `Sgd` (JSON keys of the job's `optimizer` object); the rate comes from the schedule.
struct SgdConfig {
    double momentum = 0.0;      ///< μ in [0, 1); 0 keeps no state
    double dampening = 0.0;     ///< τ in [0, 1]: the new gradient enters the buffer with weight 1 − τ
    bool nesterov = false;      ///< use g + μ·buf instead of buf (needs momentum > 0 and dampening 0)
    double weight_decay = 0.0;  ///< L2 coefficient λ added to the gradient
    DecayGroups decay{};        ///< which parameter kinds are decayed besides weights

    /// Throws config_error naming the first invalid field under `path`.
    void validate(const std::string& path = "optimizer") const {
        detail::check_range(momentum, 0.0, 1.0, path + ".momentum", true);
        detail::check_range(dampening, 0.0, 1.0, path + ".dampening");
        detail::check_range(weight_decay, 0.0, 1e6, path + ".weight_decay");
        // torch raises the same: Nesterov momentum is defined for an undamped, non-zero momentum only.
        if (nesterov && (momentum <= 0 || dampening != 0))
            throw config_error(path + ".nesterov", "needs momentum > 0 and dampening = 0");
    }
};

/// SGD with momentum (torch.optim.SGD, `foreach=False`, `maximize=False`).
/// One step is one call of the device's `sgd_update` kernel over every parameter at once.
/// @tparam T scalar type. @tparam Device a `device_policy` with the optimizer kernels (`device::optimizer_device`).
template <class T, class Device>
class Sgd {
    static_assert(device::require_optimizer_kernels<Device, T>::value);  // one line per missing kernel

public:
    using scalar_type = T;
    using device_type = Device;
    using config_type = SgdConfig;

    /// Takes the parameters to update (see `gather`); allocates the momentum buffers when momentum > 0.
    /// With a `shard` (ZeRO-1) it keeps state for, and updates, only those elements (see `Shard`).
    Sgd(std::vector<Parameter<T>> params, const SgdConfig& config = {}, Device device = Device{}, Shard shard = {})
        : params_(std::move(params)), cfg_(config), dev_(device), shard_(shard) {
        cfg_.validate();
        detail::validate_parameters<T>(params_, "Sgd", Device::memory);
        const std::vector<Parameter<T>> part = detail::shard_slices(params_, shard_, "Sgd");
        static constexpr const char* slots[] = {"momentum_buffer"};
        if (cfg_.momentum != 0) state_ = detail::StateArena<T, Device>(dev_, part, slots);
        const std::size_t n = part.size();
        for (std::size_t i = 0; i < n; ++i)
            list_.add(part[i].value.numel(), part[i].value.data(), part[i].grad.data(),
                      cfg_.momentum != 0 ? state_.data(0, i, n) : nullptr, nullptr,
                      cfg_.decay.applies_to(part[i].kind) && cfg_.weight_decay != 0);
    }

    /// One step at learning rate `lr` (>= 0):
    ///   d ← g + λ·p;  buf ← d (first step) or μ·buf + (1−τ)·d;  d ← d + μ·buf (Nesterov) or buf;  p ← p − lr·d
    void step(double lr) {
        if (!(lr >= 0) || !std::isfinite(lr))
            throw numeric_error("Sgd step: learning rate " + std::to_string(lr) + " is not a finite number >= 0");
        const device::sgd_coefficients<T> k{static_cast<T>(-lr),
                                            static_cast<T>(cfg_.weight_decay),
                                            static_cast<T>(cfg_.momentum),
                                            static_cast<T>(1.0 - cfg_.dampening),
                                            cfg_.momentum != 0,
                                            steps_ == 0,
                                            cfg_.nesterov};
        ++steps_;
        sgd_update(dev_, list_, k);
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
        if (n < 0) throw error("Sgd::set_steps: negative step count " + std::to_string(n));
        steps_ = n;
    }
    /// The parameters it updates, in construction order.
    const std::vector<Parameter<T>>& parameters() const noexcept { return params_; }
    /// `momentum_buffer.<name>` for every parameter (empty without momentum).
    const std::vector<StateTensor<T>>& state() const noexcept { return state_.tensors(); }
    /// The hyperparameters, validated.
    const SgdConfig& config() const noexcept { return cfg_; }
    /// The device whose threads run the update.
    const Device& device() const noexcept { return dev_; }
    /// Bytes of optimizer state (0 without momentum).
    std::size_t state_bytes() const noexcept { return state_.bytes(); }
    /// The elements it updates (the default: all).
    const Shard& shard() const noexcept { return shard_; }

private:
    std::vector<Parameter<T>> params_;
    SgdConfig cfg_;
    Device dev_;
    Shard shard_;
    detail::StateArena<T, Device> state_;
    device::tensor_list<T> list_;  // per parameter: value, gradient, momentum buffer (or null); decayed or not
    std::int64_t steps_ = 0;
};

}  // namespace distill::optim

BOOST_HANA_ADAPT_STRUCT(distill::optim::SgdConfig, momentum, dampening, nesterov, weight_decay, decay);
