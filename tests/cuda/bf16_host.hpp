#pragma once
// A host device that computes as `device::Cpu(threads, precision::bf16)` without oneDNN: every
// `gemm` rounds both operands to bf16 (round to nearest even, quant::fp32_to_bf16) and multiplies the
// rounded values in fp32 with Cpu's fp32 GEMM; `gemm_bf16_weight` widens the stored bf16 weight and
// rounds the other operand; `round_bf16` rounds. Products of two bf16 values are exact in fp32, so it
// differs from oneDNN's bf16 GEMM (and cuBLAS's) only in the order of the fp32 sums.
//
// The reference of the CUDA bf16 parity tests (tests/cuda/parity.cu), where the GPU machine's test
// build has no oneDNN; tests/unit-bf16.cpp checks it against device::Cpu's bf16 path. Host C++ only.

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "distill/device/cpu.hpp"
#include "distill/io/quant.hpp"

namespace distill::testing {

struct Bf16Cpu : device::Cpu {
    Bf16Cpu() : Cpu(1) {}
    explicit Bf16Cpu(int threads) : Cpu(threads) {}
    // what the models and compute_precision_of see; Cpu's own `compute` stays fp32, so the GEMMs
    // below multiply the rounded operands in fp32
    device::precision compute_precision() const noexcept { return device::precision::bf16; }
    const device::Cpu& base() const noexcept { return *this; }
};

inline float bf16_round(float x) {
    return quant::bf16_to_fp32(quant::fp32_to_bf16(x));
}

// A (rows, cols) matrix with leading dimension ld, rounded and packed.
inline std::vector<float> rounded(const float* src, std::int64_t rows, std::int64_t cols, std::int64_t ld) {
    std::vector<float> out(std::size_t(rows * cols));
    for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c) out[std::size_t(r * cols + c)] = bf16_round(src[r * ld + c]);
    return out;
}

template <class T>
void gemm(const Bf16Cpu& dev, bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda, const T* B,
          int ldb, T beta, T* C, int ldc) {
    if constexpr (std::is_same_v<T, float>) {
        if (M > 0 && N > 0 && K > 0) {
            const int a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
            const int b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
            const auto a = rounded(A, a_rows, a_cols, lda), b = rounded(B, b_rows, b_cols, ldb);
            return device::gemm(dev.base(), trans_a, trans_b, M, N, K, alpha, a.data(), a_cols, b.data(), b_cols, beta,
                                C, ldc);
        }
    }
    device::gemm(dev.base(), trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

inline void gemm_bf16_weight(const Bf16Cpu& dev, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                             const float* A, int lda, const std::uint16_t* W, int ldw, float beta, float* C, int ldc) {
    const int w_rows = trans_b ? N : K;
    std::vector<float> w(std::size_t(w_rows) * std::size_t(ldw));
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = quant::bf16_to_fp32(W[i]);
    gemm(dev, trans_a, trans_b, M, N, K, alpha, A, lda, w.data(), ldw, beta, C, ldc);  // w rounds to itself
}

inline void round_bf16(const Bf16Cpu&, std::uint16_t* dst, const float* src, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) dst[i] = quant::fp32_to_bf16(src[i]);
}

}  // namespace distill::testing

namespace distill::testing {

/// ‖a - b‖₂ / ‖b‖₂ (0 when both are zero).
template <class A, class B>
double relative_l2(const A& a, const B& b) {
    double d = 0, n = 0;
    for (std::size_t i = 0; i < b.size(); ++i) {
        d += (double(a[i]) - double(b[i])) * (double(a[i]) - double(b[i]));
        n += double(b[i]) * double(b[i]);
    }
    return n > 0 ? std::sqrt(d / n) : std::sqrt(d);
}

}  // namespace distill::testing
