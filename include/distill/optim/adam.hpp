#pragma once
/// @file adam.hpp
/// `optim::Adam` (weight decay as an L2 term added to the gradient, as `torch.optim.Adam`) and
/// `optim::AdamW` (decoupled weight decay, as `torch.optim.AdamW`). One flat update over every
/// parameter: chunked, multithreaded, fused — each element's p, g, m, v are read once and p, m, v
/// written once (28 bytes per fp32 parameter), where a tensor-op implementation streams them once
/// per op.

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
public:
    using scalar_type = T;
    using device_type = Device;
    using config_type = AdamConfig;

    /// Takes the parameters to update (see `gather`), validated; allocates the zeroed state.
    AdamImpl(std::vector<Parameter<T>> params, const AdamConfig& config = default_config(), Device device = Device{})
        : params_(std::move(params)), cfg_(config), dev_(device) {
        cfg_.validate();
        validate_parameters<T>(params_, Decoupled ? "AdamW" : "Adam", Device::memory);
        static constexpr const char* slots[] = {"exp_avg", "exp_avg_sq"};
        state_ = StateArena<T, Device>(dev_, params_, slots);
        chunks_ = make_chunks<T>(params_);
        for (const auto& p : params_) decays_.push_back(cfg_.decay.applies_to(p.kind) && cfg_.weight_decay != 0);
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
        Kernel k;
        k.b1 = static_cast<T>(cfg_.beta1);
        k.c1 = static_cast<T>(1.0 - cfg_.beta1);
        k.b2 = static_cast<T>(cfg_.beta2);
        k.c2 = static_cast<T>(1.0 - cfg_.beta2);
        k.neg_step_size = static_cast<T>(-(lr / bc1));
        k.bc2_sqrt = static_cast<T>(std::sqrt(bc2));
        k.eps = static_cast<T>(cfg_.eps);
        k.wd = static_cast<T>(cfg_.weight_decay);
        k.shrink = static_cast<T>(1.0 - lr * cfg_.weight_decay);
        Kernel plain = k;
        plain.decay = false;
        k.decay = true;
        const std::size_t n = params_.size();
        if constexpr (Device::memory != memory_space::host) {
            // a device with its own memory: one update kernel per parameter, the same expressions
            const adam_coefficients<T> ck{k.b1,       k.c1,  k.b2, k.c2,     k.neg_step_size,
                                          k.bc2_sqrt, k.eps, k.wd, k.shrink, Decoupled};
            for (std::size_t i = 0; i < n; ++i)
                adam_update(dev_, params_[i].value.data(), params_[i].grad.data(), state_.data(0, i, n),
                            state_.data(1, i, n), params_[i].value.numel(), ck, bool(decays_[i]));
            return;
        }
        for_each_chunk(dev_, chunks_, [&](std::size_t c) {
            const Chunk& ch = chunks_[c];
            const auto& prm = params_[ch.parameter];
            packetwise<T>(decays_[ch.parameter] ? k : plain, ch.size, prm.value.data() + ch.offset,
                          prm.grad.data() + ch.offset, state_.data(0, ch.parameter, n) + ch.offset,
                          state_.data(1, ch.parameter, n) + ch.offset);
        });
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

private:
    /// The update of `n` elements (a multiple of the vector width); out of line so that every element
    /// runs the same instructions (see `packetwise`).
    struct Kernel {
        T b1, c1, b2, c2, neg_step_size, bc2_sqrt, eps, wd, shrink;
        bool decay;
        [[gnu::noinline]] void operator()(T* p, const T* g, T* m, T* v, std::int64_t n) const {
            using V = simd<T>;
            const auto vb1 = V::set1(b1), vc1 = V::set1(c1), vb2 = V::set1(b2), vc2 = V::set1(c2);
            const auto vstep = V::set1(neg_step_size), vbc2 = V::set1(bc2_sqrt), veps = V::set1(eps);
            const auto vwd = V::set1(wd), vshrink = V::set1(shrink);
            for (std::int64_t i = 0; i < n; i += V::width) {
                auto pp = V::load(p + i), gg = V::load(g + i);
                if (decay) {
                    if constexpr (Decoupled)
                        pp = V::mul(pp, vshrink);  // torch: param.mul_(1 - lr * weight_decay)
                    else
                        gg = V::add(gg, V::mul(vwd, pp));  // torch: grad = grad.add(param, alpha=weight_decay)
                }
                // exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                const auto mm = V::add(V::mul(V::load(m + i), vb1), V::mul(vc1, gg));
                // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                const auto vv = V::add(V::mul(V::load(v + i), vb2), V::mul(V::mul(vc2, gg), gg));
                // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps); param.addcdiv_(exp_avg, denom,
                // value=-step_size)
                const auto denom = V::add(V::div(V::sqrt(vv), vbc2), veps);
                V::store(p + i, V::add(pp, V::div(V::mul(vstep, mm), denom)));
                V::store(m + i, mm);
                V::store(v + i, vv);
            }
        }
    };

    std::vector<Parameter<T>> params_;
    AdamConfig cfg_;
    Device dev_;
    StateArena<T, Device> state_;
    std::vector<Chunk> chunks_;
    std::vector<bool> decays_;
    std::int64_t steps_ = 0;
};

}  // namespace detail

/// Adam (Kingma & Ba) with `torch.optim.Adam` semantics: `weight_decay` is an L2 penalty added to the
/// gradient before the moments (so it is rescaled by the adaptive denominator).
/// @tparam T scalar type. @tparam Device a `device_policy`: host memory (threads from `threads()`), or its own memory
/// with `adam_update` kernels (`device::Cuda`).
template <class T, class Device>
class Adam : public detail::AdamImpl<T, Device, false> {
public:
    using detail::AdamImpl<T, Device, false>::AdamImpl;
};

/// AdamW (Loshchilov & Hutter) with `torch.optim.AdamW` semantics: decoupled decay
/// `p ← p·(1 − lr·weight_decay)` before the Adam update; default weight_decay 0.01.
/// @tparam T scalar type. @tparam Device a `device_policy` (host memory, or its own with update kernels).
template <class T, class Device>
class AdamW : public detail::AdamImpl<T, Device, true> {
public:
    using detail::AdamImpl<T, Device, true>::AdamImpl;
};

}  // namespace distill::optim

BOOST_HANA_ADAPT_STRUCT(distill::optim::AdamConfig, beta1, beta2, eps, weight_decay, decay);
