#pragma once
/// \file
/// Decoding's products where oneDNN runs at AVX2: C(M,N) = A(M,K) · Wᵀ (+ bias) + beta C for at most
/// 16 rows, W(N,K) read from a copy in panels of 16 output features. oneDNN 2.6 has no packed layout
/// at AVX2 and copies W at every call; over these panels the products ran 1.3-2.0x as fast
/// (docs/performance.md, "A build for AVX2"). x86-64 GCC/Clang only (`DISTILL_PANEL_GEMM`), compiled for
/// AVX2 and FMA whatever the build's flags; the caller checks the CPU (oneDNN's ISA).

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "distill/detail/parallel.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define DISTILL_PANEL_GEMM 1
#include <immintrin.h>
#endif

namespace distill::device::detail {

inline constexpr int panel_width = 16;     // output features of a panel: two 8-lane vectors
inline constexpr int panel_max_rows = 16;  // the rows these products take (decoding's batches)

/// Floats of W(N,K)'s panels: ceil(N / 16) panels of K x 16.
inline std::size_t panel_floats(int N, int K) {
    return std::size_t((N + panel_width - 1) / panel_width) * panel_width * std::size_t(K);
}

/// P = W(N,K) (row stride ldw) in panels: P[p](K,16)[k][j] = W[16p + j][k], zeros past N. W is read
/// row by row (a panel, 16-64 KB here, takes the scattered writes in L1/L2).
inline void pack_panels(float* P, const float* W, int N, int K, int ldw) {
    const int columns = (N + panel_width - 1) / panel_width * panel_width;
    for (int n = 0; n < columns; ++n) {
        float* column = P + std::size_t(n / panel_width) * panel_width * K + n % panel_width;
        for (int k = 0; k < K; ++k) column[std::size_t(k) * panel_width] = n < N ? W[std::size_t(n) * ldw + k] : 0.0f;
    }
}

#if defined(DISTILL_PANEL_GEMM)
/// C(MR,ncols) (ldc) = A(MR,K) (lda) · panel(K,16)[:, :ncols] (+ bias) + beta C: MR x 16 accumulators
/// (two 8-lane vectors a row), each summed over k in order (one row: four partial sums, k mod 4, added
/// at the end), then the bias, then beta C.
template <int MR>
[[gnu::target("avx2,fma")]] inline void panel_tile(const float* A, int lda, const float* panel, int K,
                                                   const float* bias, float beta, float* C, int ldc, int ncols) {
    __m256 acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    int k = 0;
    if constexpr (MR == 1) {
        // one row: two accumulators would wait on each other's FMAs; four pairs take k, k+1, k+2, k+3
        // and are added in a fixed order at the end
        __m256 more[3][2] = {};
        for (; k + 4 <= K; k += 4) {
#pragma GCC unroll 4
            for (int i = 0; i < 4; ++i)
                _mm_prefetch(reinterpret_cast<const char*>(panel + std::size_t(k + 64 + i) * panel_width), _MM_HINT_T0);
            const float* p = panel + std::size_t(k) * panel_width;
            acc[0][0] = _mm256_fmadd_ps(_mm256_broadcast_ss(A + k), _mm256_loadu_ps(p), acc[0][0]);
            acc[0][1] = _mm256_fmadd_ps(_mm256_broadcast_ss(A + k), _mm256_loadu_ps(p + 8), acc[0][1]);
#pragma GCC unroll 3
            for (int i = 0; i < 3; ++i) {
                const __m256 a = _mm256_broadcast_ss(A + k + 1 + i);
                more[i][0] = _mm256_fmadd_ps(a, _mm256_loadu_ps(p + (i + 1) * panel_width), more[i][0]);
                more[i][1] = _mm256_fmadd_ps(a, _mm256_loadu_ps(p + (i + 1) * panel_width + 8), more[i][1]);
            }
        }
        for (int c = 0; c < 2; ++c)
            acc[0][c] = _mm256_add_ps(_mm256_add_ps(acc[0][c], more[0][c]), _mm256_add_ps(more[1][c], more[2][c]));
    }
    for (; k < K; ++k) {
        // the panel's rows 64 ahead on their way to L1: left to the hardware, the first tile of a
        // panel waited on memory (57-81 against 76-100 GFLOP/s in the probe)
        _mm_prefetch(reinterpret_cast<const char*>(panel + std::size_t(k + 64) * panel_width), _MM_HINT_T0);
        const __m256 b0 = _mm256_loadu_ps(panel + std::size_t(k) * panel_width),
                     b1 = _mm256_loadu_ps(panel + std::size_t(k) * panel_width + 8);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            const __m256 a = _mm256_broadcast_ss(A + std::size_t(r) * lda + k);
            acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
        }
    }
    // masked loads and stores for a last panel of fewer than 16 columns (storing the accumulators
    // through a temporary array instead made GCC keep them in memory throughout the k loop)
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(ncols), lane),
                  m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(ncols - 8), lane);
    const __m256 bias0 = bias ? _mm256_maskload_ps(bias, m0) : _mm256_setzero_ps(),
                 bias1 = bias ? _mm256_maskload_ps(bias + 8, m1) : _mm256_setzero_ps(), vbeta = _mm256_set1_ps(beta);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
        float* c = C + std::size_t(r) * ldc;
        __m256 y0 = _mm256_add_ps(acc[r][0], bias0), y1 = _mm256_add_ps(acc[r][1], bias1);
        if (beta != 0.0f) {
            y0 = _mm256_add_ps(y0, _mm256_mul_ps(vbeta, _mm256_maskload_ps(c, m0)));
            y1 = _mm256_add_ps(y1, _mm256_mul_ps(vbeta, _mm256_maskload_ps(c + 8, m1)));
        }
        _mm256_maskstore_ps(c, m0, y0);
        _mm256_maskstore_ps(c + 8, m1, y1);
    }
}

/// C(M,N) = A(M,K) · Wᵀ (+ bias(N)) + beta C, row-major (lda, ldc), 1 <= M <= 16, W given as its
/// panels P (`pack_panels`): the panels split over `threads`, each panel's rows in tiles of 6 (the
/// panel stays in L1/L2 between them). The bits do not depend on the threads.
inline void panel_gemm(int threads, int M, int N, int K, const float* A, int lda, const float* P, float beta, float* C,
                       int ldc, const float* bias) {
    const int panels = (N + panel_width - 1) / panel_width;
    distill::detail::parallel_for(threads, panels, [&](std::int64_t p) {
        const int n0 = static_cast<int>(p) * panel_width, ncols = std::min(panel_width, N - n0);
        const float* panel = P + std::size_t(n0) * K;
        const float* b = bias ? bias + n0 : nullptr;
        int m = 0;
        for (; m + 6 <= M; m += 6)
            panel_tile<6>(A + std::size_t(m) * lda, lda, panel, K, b, beta, C + std::size_t(m) * ldc + n0, ldc, ncols);
        // the last 1-5 rows
        using tile = void (*)(const float*, int, const float*, int, const float*, float, float*, int, int);
        static constexpr tile rest[] = {nullptr,       panel_tile<1>, panel_tile<2>,
                                        panel_tile<3>, panel_tile<4>, panel_tile<5>};
        if (m < M)
            rest[M - m](A + std::size_t(m) * lda, lda, panel, K, b, beta, C + std::size_t(m) * ldc + n0, ldc, ncols);
    });
}
#endif

}  // namespace distill::device::detail
