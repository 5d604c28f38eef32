#pragma once
/// @file linear.hpp
/// Linear layer (torch.nn.Linear): out = in W^T + b, with W stored (out_features, in_features).

#include "distill/device.hpp"

namespace distill::nn {

/// out(N,OC) = [out +] in(N,C) W(OC,C)^T + b(OC). `b` may be null. With `accumulate` the product is
/// added to what `out` holds (a residual connection without a temporary).
template <class Device, class T>
void linear_forward(const Device& dev, T* out, const T* in, const T* w, const T* b, int N, int C, int OC,
                    bool accumulate = false) {
    if constexpr (requires { gemm_bias(dev, false, true, N, OC, C, in, C, w, C, T(0), out, OC, b); })
        if (b) return gemm_bias(dev, false, true, N, OC, C, in, C, w, C, accumulate ? T(1) : T(0), out, OC, b);
    gemm(dev, false, true, N, OC, C, T(1), in, C, w, C, accumulate ? T(1) : T(0), out, OC);
    if (b) add_bias(dev, out, b, N, OC);
}

/// Linear backward. din(N,C) = dout(N,OC) W(OC,C) (overwritten; skipped when null);
/// dw(OC,C) += dout^T in; db(OC) += column sums of dout (each skipped when null: a frozen weight).
template <class Device, class T>
void linear_backward(const Device& dev, T* din, T* dw, T* db, const T* dout, const T* in, const T* w, int N, int C,
                     int OC) {
    if (din) gemm(dev, false, false, N, C, OC, T(1), dout, OC, w, C, T(0), din, C);
    if (dw) gemm(dev, true, false, OC, C, N, T(1), dout, OC, in, C, T(1), dw, C);
    if (db) bias_grad(dev, db, dout, N, OC);
}

}  // namespace distill::nn
