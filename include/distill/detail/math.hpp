#pragma once
/// @file math.hpp
/// Scalar math shared by every device (host loops, SIMD loops and CUDA kernels): GELU, SiLU and
/// numerically stable softmax pieces. One definition, so the devices agree by construction.

#include <cmath>

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

}  // namespace distill::math
