#pragma once
/// @file clip.hpp
/// The global gradient norm, clipping by it (`torch.nn.utils.clip_grad_norm_` semantics), and
/// locating a non-finite gradient for the training loop's guard.

#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "distill/optim/common.hpp"

namespace distill::optim {

/// Global-norm clipping (`torch.nn.utils.clip_grad_norm_` semantics) with its work list (a
/// `device::tensor_list` of the gradients: chunks and per-chunk partial sums) laid out once, so a
/// training step clips without allocating. The reduction and the scaling are the device's
/// `sum_of_squares` and `scale_in_place` kernels. The free functions below are one-shot uses of it.
/// @tparam T scalar type.
template <class T>
class GradClipper {
public:
    /// Clips the gradients of `params` (the views are kept; the tensors must outlive the clipper).
    explicit GradClipper(std::span<const Parameter<T>> params) {
        for (const auto& p : params) grads_.add(p.grad.numel(), p.grad.data());
    }

    /// The L2 norm of all gradients taken together, √(Σ‖gᵢ‖²), through the device's `sum_of_squares`
    /// (on host devices: per chunk in double, the partial sums added in chunk order, so the result is
    /// the same bits for any thread count). NaN or ±Inf when a gradient holds one.
    template <class Device>
    double norm(const Device& dev) {
        static_assert(device::require_optimizer_kernels<Device, T>::value);
        return std::sqrt(sum_of_squares(dev, grads_));
    }

    /// Scales every gradient by `max_norm / (norm + 1e-6)` when that is below 1, and returns the norm
    /// *before* clipping (what to log). `max_norm <= 0` only measures. A non-finite norm is returned
    /// without touching the gradients, so the caller's guard can report which one is bad (torch would
    /// spread the NaN).
    template <class Device>
    double operator()(double max_norm, const Device& dev) {
        const double n = norm(dev);
        if (!(max_norm > 0) || !std::isfinite(n)) return n;
        const double coef = max_norm / (n + 1e-6);
        if (coef >= 1.0) return n;  // torch multiplies by the clamped coefficient 1.0: a no-op
        scale(static_cast<T>(coef), dev);
        return n;
    }

    /// Multiplies every gradient by `factor` (clipping; averaging over accumulated micro-batches).
    template <class Device>
    void scale(T factor, const Device& dev) {
        static_assert(device::require_optimizer_kernels<Device, T>::value);
        scale_in_place(dev, grads_, factor);
    }

private:
    device::tensor_list<T> grads_;  // every parameter's gradient
};

/// The global L2 norm of the gradients of `params` (see `GradClipper::norm`).
template <class T, class Device>
double global_grad_norm(std::span<const Parameter<T>> params, const Device& dev) {
    return GradClipper<T>(params).norm(dev);
}

/// Clips the gradients of `params` to a global norm of `max_norm` and returns the norm before
/// clipping (see `GradClipper::operator()`).
template <class T, class Device>
double clip_grad_norm(std::span<const Parameter<T>> params, double max_norm, const Device& dev) {
    return GradClipper<T>(params)(max_norm, dev);
}

/// Multiplies every gradient by `factor` (averaging over accumulated micro-batches).
template <class T, class Device>
void scale_gradients(std::span<const Parameter<T>> params, T factor, const Device& dev) {
    GradClipper<T>(params).scale(factor, dev);
}

/// Where a non-finite value sits.
struct NonFinite {
    std::size_t parameter;  ///< index into the list
    std::int64_t element;   ///< flat index inside the parameter
    double value;           ///< the NaN or infinity found
};

/// The first NaN or infinity among the gradients (`values = false`) or values (`values = true`) of
/// `params` in `dev`'s memory, in list order; nullopt when all are finite. Serial, one parameter at a
/// time read on the host (`detail::read_on_host`: in place on a host device, copied from a device with
/// its own memory): it runs only after a check failed, to name the culprit.
template <class T, class Device>
std::optional<NonFinite> find_nonfinite(std::span<const Parameter<T>> params, const Device& dev, bool values = false) {
    for (std::size_t i = 0; i < params.size(); ++i) {
        const std::int64_t n = params[i].value.numel();
        const auto host = ::distill::detail::read_on_host(dev, values ? params[i].value.data() : params[i].grad.data(),
                                                          static_cast<std::size_t>(n));
        for (std::int64_t k = 0; k < n; ++k)
            if (!std::isfinite(host.data()[k])) return NonFinite{i, k, static_cast<double>(host.data()[k])};
    }
    return std::nullopt;
}

}  // namespace distill::optim
