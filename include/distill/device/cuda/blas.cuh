#pragma once
/// @file blas.cuh
/// GEMMs of `device::Cuda` through cuBLAS. Our matrices are row-major; cuBLAS's are column-major,
/// and a row-major (M,N) matrix is the column-major (N,M) matrix of its transpose, so
///   C = op(A) op(B)  (row-major)   ⇔   Cᵀ = op(B)ᵀ op(A)ᵀ  (column-major),
/// i.e. one cuBLAS call with the operands swapped and M, N exchanged. No copies, no transposes.

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

}  // namespace detail

/// C(M,N) = alpha op(A)(M,K) op(B)(K,N) + beta C, row-major (see the Reference kernel; torch.addmm).
/// beta == 0 overwrites C without reading it, as BLAS does. T is float or double.
template <class T>
void gemm(const Cuda& dev, bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda, const T* B,
          int ldb, T beta, T* C, int ldc) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "device::Cuda: GEMMs in float or double");
    if (M == 0 || N == 0) return;
    DISTILL_CUDA_CHECK(detail::gemm_call(dev.cublas(), detail::op(trans_b), detail::op(trans_a), N, M, K, &alpha, B,
                                         ldb, A, lda, &beta, C, ldc));
}

/// `batch` GEMMs at fixed strides (torch.baddbmm): matrix b of A, B, C at b·stride_{a,b,c}.
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
