#pragma once
/// @file blas.cuh
/// GEMMs of `device::Cuda` through cuBLAS. Our matrices are row-major; cuBLAS's are column-major,
/// and a row-major (M,N) matrix is the column-major (N,M) matrix of its transpose, so
///   C = op(A) op(B)  (row-major)   ⇔   Cᵀ = op(B)ᵀ op(A)ᵀ  (column-major),
/// i.e. one cuBLAS call with the operands swapped and M, N exchanged. No copies, no transposes.
///
/// Under precision::bf16 (`Cuda(precision::bf16)`) `gemm` rounds both operands to packed bf16
/// copies (round to nearest even, bit for bit device::Cpu's `round_bf16`) in the context's scratch
/// and multiplies those with cublasGemmEx (CUDA_R_16BF operands, fp32 C, CUBLAS_COMPUTE_32F);
/// `gemm_bf16_weight` multiplies by a weight already stored in bf16 (student::storage::bf16 /
/// fp32_bf16), rounding the other operand alone. `gemm_strided_batched` stays fp32 in every
/// precision, as on Cpu.

#include <cstdint>
#include <type_traits>

#include "distill/device/cuda/context.cuh"

namespace distill::device {

namespace detail {

inline cublasStatus_t gemm_call(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                const float* alpha, const float* A, int lda, const float* B, int ldb, const float* beta,
                                float* C, int ldc) {
    return cublasSgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
inline cublasStatus_t gemm_call(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                const double* alpha, const double* A, int lda, const double* B, int ldb,
                                const double* beta, double* C, int ldc) {
    return cublasDgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
inline cublasStatus_t gemm_batched_call(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                        int k, const float* alpha, const float* A, int lda, long long sa,
                                        const float* B, int ldb, long long sb, const float* beta, float* C, int ldc,
                                        long long sc, int batch) {
    return cublasSgemmStridedBatched(h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
}
inline cublasStatus_t gemm_batched_call(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                        int k, const double* alpha, const double* A, int lda, long long sa,
                                        const double* B, int ldb, long long sb, const double* beta, double* C, int ldc,
                                        long long sc, int batch) {
    return cublasDgemmStridedBatched(h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
}
inline cublasOperation_t op(bool trans) {
    return trans ? CUBLAS_OP_T : CUBLAS_OP_N;
}

/// fp32 → bf16 bits, round to nearest even, a NaN kept quiet (the sign and top payload bits and
/// 0x40): exactly `quant::fp32_to_bf16` and device::Cpu's rounding.
__device__ inline std::uint16_t to_bf16(float f) {
    const std::uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
    return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/// bf16 bits → fp32 (exact).
__device__ inline float from_bf16(std::uint16_t h) {
    return __uint_as_float(std::uint32_t(h) << 16);
}

// dst(rows, cols) packed = src(rows, cols) with leading dimension ld, rounded to bf16.
// (A template, as every kernel of these headers: one definition however many units include it.)
template <class T>
__global__ void round_bf16_kernel(std::uint16_t* dst, const T* src, std::int64_t rows, std::int64_t cols,
                                  std::int64_t ld) {
    const std::int64_t n = rows * cols;
    for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x) {
        const std::int64_t r = i / cols, c = i - r * cols;
        dst[i] = to_bf16(float(src[r * ld + c]));
    }
}

inline void round_bf16_matrix(const Cuda& dev, std::uint16_t* dst, const float* src, std::int64_t rows,
                              std::int64_t cols, std::int64_t ld) {
    if (rows * cols == 0) return;
    DISTILL_CUDA_LAUNCH(round_bf16_kernel, blocks_for(rows * cols, 256), 256, dev.stream(), dst, src, rows, cols, ld);
}

// C = alpha op(A) op(B) + beta C (row-major) of packed-or-strided bf16 operands, fp32 C.
inline void gemm_bf16_call(const Cuda& dev, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                           const std::uint16_t* A, int lda, const std::uint16_t* B, int ldb, float beta, float* C,
                           int ldc) {
    DISTILL_CUDA_CHECK(cublasGemmEx(dev.cublas(), op(trans_b), op(trans_a), N, M, K, &alpha, B, CUDA_R_16BF, ldb, A,
                                    CUDA_R_16BF, lda, &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
}

// The elements of a bf16 copy rounded into the scratch, padded to 256 bytes so the next one starts
// as aligned as a cudaMalloc'd weight (cuBLAS picks its kernels by the operands' alignment).
inline std::size_t bf16_padded(std::int64_t elements) {
    return (std::size_t(elements) + 127) / 128 * 128;
}

}  // namespace detail

/// C(M,N) = alpha op(A)(M,K) op(B)(K,N) + beta C, row-major (see the Reference kernel; torch.addmm).
/// beta == 0 overwrites C without reading it, as BLAS does. T is float or double.
template <class T>
void gemm(const Cuda& dev, bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda, const T* B,
          int ldb, T beta, T* C, int ldc) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "device::Cuda: GEMMs in float or double");
    if (M == 0 || N == 0) return;
    if constexpr (std::is_same_v<T, float>) {
        if (dev.compute_precision() == precision::bf16 && K > 0) {
            // op(A) is (M,K): A stored (trans_a ? K : M) rows of (trans_a ? M : K); B likewise
            const std::int64_t a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
            const std::int64_t b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
            const std::size_t a_n = detail::bf16_padded(a_rows * a_cols);
            auto* a16 = static_cast<std::uint16_t*>(
                dev.bf16_scratch(sizeof(std::uint16_t) * (a_n + detail::bf16_padded(b_rows * b_cols))));
            std::uint16_t* b16 = a16 + a_n;
            detail::round_bf16_matrix(dev, a16, A, a_rows, a_cols, lda);
            detail::round_bf16_matrix(dev, b16, B, b_rows, b_cols, ldb);
            return detail::gemm_bf16_call(dev, trans_a, trans_b, M, N, K, alpha, a16, int(a_cols), b16, int(b_cols),
                                          beta, C, ldc);
        }
    }
    DISTILL_CUDA_CHECK(detail::gemm_call(dev.cublas(), detail::op(trans_b), detail::op(trans_a), N, M, K, &alpha, B,
                                         ldb, A, lda, &beta, C, ldc));
}

/// C(M,N) = alpha op(A) op(W) + beta C with W a stored bf16 matrix (device memory, packed rows, ldw
/// its width): A rounded to bf16, W read as it is, fp32 accumulation — the bf16 `gemm` of the fp32
/// matrix W was rounded from, without rounding W again (device::Cpu's `gemm_bf16_weight`).
inline void gemm_bf16_weight(const Cuda& dev, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                             const float* A, int lda, const std::uint16_t* W, int ldw, float beta, float* C, int ldc) {
    if (M == 0 || N == 0) return;
    if (K == 0)
        return gemm(dev, trans_a, trans_b, M, N, K, alpha, A, lda, static_cast<const float*>(nullptr), ldw, beta, C,
                    ldc);  // C = beta C, as cuBLAS does
    const std::int64_t a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
    auto* a16 = static_cast<std::uint16_t*>(dev.bf16_scratch(sizeof(std::uint16_t) * std::size_t(a_rows * a_cols)));
    detail::round_bf16_matrix(dev, a16, A, a_rows, a_cols, lda);
    detail::gemm_bf16_call(dev, trans_a, trans_b, M, N, K, alpha, a16, int(a_cols), W, ldw, beta, C, ldc);
}

/// dst(n) = src(n) rounded to bf16 (round to nearest even: the rounding of the bf16 GEMMs'
/// operands, bit for bit device::Cpu's); both in device memory.
inline void round_bf16(const Cuda& dev, std::uint16_t* dst, const float* src, std::int64_t n) {
    detail::round_bf16_matrix(dev, dst, src, 1, n, n);
}

/// `batch` GEMMs at fixed strides (torch.baddbmm): matrix b of A, B, C at b·stride_{a,b,c}. fp32
/// (or fp64) in every precision.
template <class T>
void gemm_strided_batched(const Cuda& dev, bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A,
                          int lda, std::int64_t stride_a, const T* B, int ldb, std::int64_t stride_b, T beta, T* C,
                          int ldc, std::int64_t stride_c, int batch) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "device::Cuda: GEMMs in float or double");
    if (M == 0 || N == 0 || batch == 0) return;
    DISTILL_CUDA_CHECK(detail::gemm_batched_call(dev.cublas(), detail::op(trans_b), detail::op(trans_a), N, M, K,
                                                 &alpha, B, ldb, stride_b, A, lda, stride_a, &beta, C, ldc, stride_c,
                                                 batch));
}

}  // namespace distill::device
