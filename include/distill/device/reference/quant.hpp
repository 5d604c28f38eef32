#pragma once
/// @file reference/quant.hpp
/// `device::Reference`'s weight-only quantized matrix product (the contract's quantized-inference
/// group): each weight row dequantized with ggml's own dequantizer (`quant::dequantize_row`), then a
/// plain dot product — the oracle of the fast kernels in `cpu/quant.hpp`.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "distill/device/reference/layers.hpp"
#include "distill/io/quant.hpp"

namespace distill::device {

/// y(m,n) = x(m,k) · W(n,k)ᵀ with W in ggml type `t`: row j of W is the `quant::row_bytes(t, k)`
/// bytes at w + j·row_bytes(t, k) — the data of a GGUF tensor with ne = [k, n] (a Linear weight,
/// out_features rows). fp32 activations and accumulation; mirrors torch.nn.functional.linear on the
/// dequantized weight (what llama.cpp computes up to its activation rounding). Throws distill::error
/// when k is not a whole number of t's blocks.
inline void quant_matmul(const Reference&, const float* x, const std::byte* w, quant::type t, float* y, std::int64_t m,
                         std::int64_t k, std::int64_t n) {
    const std::size_t stride = quant::row_bytes(t, k);
    std::vector<float> row(static_cast<std::size_t>(k));  // one dequantized weight row (k)
    for (std::int64_t j = 0; j < n; ++j) {
        quant::dequantize_row(t, w + static_cast<std::size_t>(j) * stride, k, row.data());
        for (std::int64_t i = 0; i < m; ++i) {
            float acc = 0;
            for (std::int64_t c = 0; c < k; ++c) acc += x[i * k + c] * row[static_cast<std::size_t>(c)];
            y[i * n + j] = acc;
        }
    }
}

}  // namespace distill::device
