#pragma once
/// @file util.hpp
/// Checks and reductions shared by the loss terms.

#include <cmath>
#include <cstdint>
#include <string>

#include "distill/device.hpp"
#include "distill/error.hpp"
#include "distill/tensor.hpp"

namespace distill::loss::util {

/// Throws config_error at `path` unless tau is a finite number > 0.
inline void check_temperature(const std::string& path, double tau) {
    if (!(tau > 0) || !std::isfinite(tau))
        throw config_error(path, "must be a finite number > 0, got " + std::to_string(tau));
}

/// Throws shape_error unless `t` is a non-empty (B,T,·) tensor matching `like` in its first two
/// dimensions and, when `last` >= 0, with `last` as its last dimension.
template <class A, class B>
void check_btx(const char* term, const char* what, const Tensor<A>& t, const Tensor<B>& like, std::int64_t last = -1) {
    if (t.empty())
        throw shape_error(std::string(term) + ": " + what + " is missing (the teacher source filled no such tensor)");
    if (t.rank() != 3 || t.size(0) != like.size(0) || t.size(1) != like.size(1) || (last >= 0 && t.size(2) != last) ||
        !t.contiguous())
        throw shape_error(std::string(term) + ": " + what + " has shape " + t.shape_string() + ", expected [" +
                          std::to_string(like.size(0)) + ", " + std::to_string(like.size(1)) + ", " +
                          (last >= 0 ? std::to_string(last) : std::string("·")) + "] (contiguous)");
}

/// Σ rows[0..n) / count, summed in order in double (deterministic, and exact enough that a
/// value made of many fp32 rows does not drift with n); 0 when count is 0.
template <class T>
T mean_rows(const T* rows, std::int64_t n, std::int64_t count) {
    if (count == 0) return T(0);
    double sum = 0;
    for (std::int64_t i = 0; i < n; ++i) sum += static_cast<double>(rows[i]);
    return static_cast<T>(sum / static_cast<double>(count));
}

/// `mean_rows` of per-row values in `dev`'s memory, read through `detail::read_on_host`: in place on
/// a host device, after one copy of the n values on a device with its own memory (same order, same
/// result).
template <class Device, class T>
T mean_rows(const Device& dev, const T* rows, std::int64_t n, std::int64_t count) {
    if (count == 0) return T(0);
    const auto host = ::distill::detail::read_on_host(dev, rows, static_cast<std::size_t>(n));
    return mean_rows(host.data(), n, count);
}

}  // namespace distill::loss::util
