#pragma once
/// @file math.hpp
/// Scalar math shared by every device (host loops, SIMD loops and CUDA kernels): GELU, SiLU and
/// numerically stable softmax pieces. One definition, so the devices agree by construction.

#include <cmath>
#include <limits>

#include "distill/detail/macros.hpp"

namespace distill::math {

/// sqrt(2/pi), the constant of GPT-2's tanh-approximated GELU.
template <class T>
inline constexpr T gelu_k = T(0.7978845608028654);

/// GELU, tanh form (PyTorch `gelu(x, approximate='tanh')`): 0.5 x (1 + tanh(u)),
/// u = k (x + 0.044715 x^3). Evaluated as x * sigmoid(2u), the same function, because
/// 1 + tanh(u) cancels catastrophically for x << 0.
template <class T>
DISTILL_HD inline T gelu(T x) {
    const T u = gelu_k<T> * (x + T(0.044715) * x * x * x);
    return x / (T(1) + std::exp(T(-2) * u));
}

/// d gelu(x) / dx = s + 2 x u' s (1 - s), s = sigmoid(2u); s (1 - s) = e / (1 + e)^2 with
/// e = exp(-2|u|), which neither overflows nor cancels.
template <class T>
DISTILL_HD inline T gelu_grad(T x) {
    const T u = gelu_k<T> * (x + T(0.044715) * x * x * x);
    const T e = std::exp(T(-2) * std::abs(u));
    const T s = u >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
    const T du = gelu_k<T> * (T(1) + T(3) * T(0.044715) * x * x);
    return s + T(2) * x * du * e / ((T(1) + e) * (T(1) + e));
}

/// SiLU (torch.nn.functional.silu): x sigmoid(x), evaluated without overflow for x << 0.
template <class T>
DISTILL_HD inline T sigmoid(T x) {
    const T e = std::exp(-std::abs(x));
    return x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}
template <class T>
DISTILL_HD inline T silu(T x) {
    return x * sigmoid(x);
}
/// d silu(x) / dx = s (1 + x (1 - s)), s = sigmoid(x).
template <class T>
DISTILL_HD inline T silu_grad(T x) {
    const T s = sigmoid(x);
    return s * (T(1) + x * (T(1) - s));
}

// ---- log-softmax pieces ----------------------------------------------------------------------------
//
// A row's log-softmax at scale c (c = 1/τ > 0) is formed from the row's *unscaled* maximum m and the
// log of the sum of the shifted exponentials, kept apart:
//
//   log softmax(c·x)_j = (x_j − m)·c − log s,   s = Σ_i exp((x_i − m)·c),   m = max_i x_i.
//
// Never as c·x_j − lse with lse = c·m + log s rounded to one number: near |c·m| = 1e4 that number
// carries an absolute error of ulp(1e4)/2 ≈ 5e-4 in fp32, which every log-probability inherits (a
// 5e-4 relative error in every probability and gradient). x_j − m is exact wherever it matters
// (Sterbenz: within a factor 2 of each other), so the log-probability keeps full relative
// precision whatever the offset of the logits. (This is also how torch.log_softmax evaluates it.)

/// (x − max)·scale − log_sum: one log-softmax entry (see above); −inf for x = −inf.
template <class T>
DISTILL_HD inline T log_softmax_entry(T x, T max, T scale, T log_sum) {
    return (x - max) * scale - log_sum;
}

/// log(exp(a) + exp(b)), exact for infinite arguments.
template <class T>
DISTILL_HD inline T logaddexp(T a, T b) {
    const T mx = a > b ? a : b;
    if (mx == -std::numeric_limits<T>::infinity()) return mx;
    return mx + std::log1p(std::exp(-std::abs(a - b)));
}

/// log(1 - exp(x)) for x <= 0 (Mächler's log1mexp: accurate for x near 0 and for x << 0).
template <class T>
DISTILL_HD inline T log1mexp(T x) {
    return x > T(-0.6931471805599453) ? std::log(-std::expm1(x)) : std::log1p(-std::exp(x));
}

/// Below this |y| the mixture log `log_mix` takes its log1p form.
template <class T>
inline constexpr T log_mix_switch = T(0.5);

/// log(a·e^x + b) for mixture weights a, b >= 0 with a + b = 1, each given to full precision
/// (with its log), as the JSD's log(M/q) (a = β, x = log p − log q) and log(M/p) (a = 1−β,
/// x = log q − log p) need it. Two forms, each accurate where it is used:
/// - y = a·expm1(x) with |y| < 1/2: log1p(y). Near a·e^x + b = 1 the result is small and must keep
///   *relative* precision (the JSD's first-order terms cancel in the sum, so each must be exact to
///   rounding); y is, and log1p is well conditioned on (−1/2, 1/2).
/// - otherwise: log-add-exp of log a + x and log b. Here 1 + y would cancel catastrophically (e.g.
///   a = 1 − 10⁻⁶, x = −20: 1 + y = 10⁻⁶ + e⁻²⁰ from two numbers of size 1), while the two positive
///   terms add without cancellation.
/// x = −inf gives log b, x = +inf gives +inf; NaN x gives NaN.
template <class T>
DISTILL_HD inline T log_mix(T x, T a, T log_a, T log_b) {
    const T y = a * std::expm1(x);
    return (y > -log_mix_switch<T> && y < log_mix_switch<T>) ? std::log1p(y) : logaddexp(x + log_a, log_b);
}

}  // namespace distill::math
