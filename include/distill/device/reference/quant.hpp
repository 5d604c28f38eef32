#pragma once
/// @file reference/quant.hpp
/// `device::Reference`'s quantized matrix product (the contract's quantized-inference group): what
/// ggml's CPU backend computes for a weight stored in a ggml type — the activations converted to the
/// type's `vec_dot_type` (`quant::quantize_activations`), then per block an exact integer dot product
/// of the quants, scaled in fp32 (`quant::vec_dot`, plain loops): the oracle of the fast kernels in
/// `cpu/quant.hpp`.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "distill/device/reference/layers.hpp"
#include "distill/io/quant.hpp"

namespace distill::device {

/// y(m,n) = x(m,k) · W(n,k)ᵀ with W in ggml type `t`, as ggml's CPU backend (and so llama.cpp)
/// computes it: row j of W is the `quant::row_bytes(t, k)` bytes at w + j·row_bytes(t, k) — the data
/// of a GGUF tensor with ne = [k, n] (a Linear weight, out_features rows); each row of x is first
/// converted to the type's `vec_dot_type` (`quant::quantize_activations`: Q8_0 blocks for Q8_0 and
/// Q4_0 weights, Q8_K for Q4_K, fp16 / bf16 for F16 / BF16, fp32 for F32), then multiplied block by
/// block (`quant::vec_dot`). Throws distill::error when k is not a whole number of t's blocks.
inline void quant_matmul(const Reference&, const float* x, const std::byte* w, quant::type t, float* y, std::int64_t m,
                         std::int64_t k, std::int64_t n) {
    const std::size_t stride = quant::row_bytes(t, k), astride = quant::activation_row_bytes(t, k);
    std::vector<std::byte> a(astride);  // one activation row, converted
    for (std::int64_t i = 0; i < m; ++i) {
        quant::quantize_activations(t, x + i * k, k, a.data());
        for (std::int64_t j = 0; j < n; ++j)
            y[i * n + j] = quant::vec_dot(t, w + static_cast<std::size_t>(j) * stride, a.data(), k);
    }
}

}  // namespace distill::device
