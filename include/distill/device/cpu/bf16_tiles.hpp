#pragma once
/// @file cpu/bf16_tiles.hpp
/// bf16 tile products for the fused attention's tiles under precision::bf16
/// (`cpu/flash_attention.hpp`): operands rounded to bf16, sums in fp32, as `torch.autocast` runs
/// attention. Two units run them, chosen at run time:
/// - Intel AMX (TDPBF16PS, 16 × 32 by 32 × 16, one every 16 cycles: 8 192 multiply-adds, 16 times
///   what both AVX-512 FMA ports do in that time), where the CPU has AMX-TILE and AMX-BF16 and Linux
///   gives this process the tile state (arch_prctl(ARCH_REQ_XCOMP_PERM), as oneDNN asks for it);
/// - else AVX512-BF16's dot product (VDPBF16PS: 32 multiply-adds of bf16 pairs per instruction).
///   Measured: on an AMD EPYC (Zen 4) it issues as often as an fp32 FMA, so twice its multiply-adds
///   (235 against 117 GFLOP/s, one core); on an Intel Xeon with AMX (where AMX runs instead) it
///   issued on one port where fp32 FMAs issue on two (316 against 324 GFLOP/s), level with them.
/// oneDNN chooses its own units for the GEMMs; the attention's tiles (64 × 64 × head size) are too
/// small for a oneDNN primitive call each.
///
/// The functions carry `target(...)` attributes, so any build compiles them; `available()` says
/// whether this CPU has either unit. Elsewhere (neither unit, another OS or compiler, nvcc's device
/// pass) it is false and nothing here runs.

#include <cstdint>

#include "distill/device/cpu/isa.hpp"

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__) && !defined(__CUDA_ARCH__) && \
    (defined(__clang__) || __GNUC__ >= 11)
#define DISTILL_BF16_TILES 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace distill::device::detail::bf16_tiles {

#if defined(DISTILL_BF16_TILES)

#define DISTILL_AMX_TARGET \
    gnu::target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,amx-tile,amx-bf16,avx2,fma,f16c,bmi2")

#define DISTILL_BF16_TARGET gnu::target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c,bmi2")

/// Whether this process may run AMX bf16 tile products (asked once).
inline bool on_amx() noexcept {
    static const bool ok = [] {
        unsigned a = 0, b = 0, c = 0, d = 0;
        if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
        const bool tile = d & (1u << 24), amx_bf16 = d & (1u << 22);
        if (!tile || !amx_bf16 || !__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a & (1u << 5)))  // AVX512-BF16
            return false;
        constexpr long req_xcomp_perm = 0x1023, xtiledata = 18;  // <asm/prctl.h>, the XTILEDATA state component
        return syscall(SYS_arch_prctl, req_xcomp_perm, xtiledata) == 0;
    }();
    return ok;
}

/// Whether this CPU runs bf16 tile products: on AMX, or on AVX512-BF16's dot products. The caller
/// checks that the OS enabled the AVX-512 registers (`row_kernel_isa() == cpu_isa::avx512`).
inline bool available() noexcept {
    static const bool ok = [] {
        unsigned a = 0, b = 0, c = 0, d = 0;
        return on_amx() || (__get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5)));
    }();
    return ok;
}

/// Every tile 16 rows of 64 bytes: tmm0-3 a 32 × 32 block of fp32 C, tmm4-5 two 16 × 32 bf16 row
/// blocks of A, tmm6-7 two 16-pair × 16 column blocks of B.
struct alignas(64) tile_config {
    std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
    std::uint16_t bytes_per_row[16] = {64, 64, 64, 64, 64, 64, 64, 64};
    std::uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

/// Loads the tile layout on this thread where the products run on AMX (tile state is per thread,
/// and oneDNN's kernels load their own between our calls): call before `product`, and `release` after.
[[DISTILL_AMX_TARGET]] inline void configure() noexcept {
    static const tile_config config{};
    if (on_amx()) _tile_loadconfig(&config);
}
[[DISTILL_AMX_TARGET]] inline void release() noexcept {
    if (on_amx()) _tile_release();
}

// product on AMX: 32 × 32 blocks of C in tmm0-3, K in steps of 32
[[DISTILL_AMX_TARGET]] inline void product_amx(int M, int N, int K, const std::uint16_t* a, std::int64_t lda,
                                               const std::uint16_t* b, std::int64_t ldb, float* c, std::int64_t ldc,
                                               bool accumulate) noexcept {
    const std::int64_t sa = lda * 2, sb = ldb * 2, sc = ldc * 4;  // strides in bytes
    for (int i = 0; i < M; i += 32)
        for (int j = 0; j < N; j += 32) {
            float* c0 = c + i * ldc + j;
            float* c1 = c0 + 16 * ldc;
            if (accumulate) {
                _tile_loadd(0, c0, sc);
                _tile_loadd(1, c0 + 16, sc);
                _tile_loadd(2, c1, sc);
                _tile_loadd(3, c1 + 16, sc);
            } else {
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
            }
            for (int k = 0; k < K; k += 32) {
                const std::uint16_t* ak = a + i * lda + k;
                const std::uint16_t* bk = b + (k / 2) * ldb + 2 * j;
                _tile_loadd(4, ak, sa);
                _tile_loadd(5, ak + 16 * lda, sa);
                _tile_loadd(6, bk, sb);
                _tile_loadd(7, bk + 32, sb);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
            }
            _tile_stored(0, c0, sc);
            _tile_stored(1, c0 + 16, sc);
            _tile_stored(2, c1, sc);
            _tile_stored(3, c1 + 16, sc);
        }
}

// product on AVX512-BF16: 8 × 32 blocks of C in 16 registers; each step over a pair of k broadcasts
// a row's pair of A and multiplies it into two registers of B's pairs (16 columns each)
[[DISTILL_BF16_TARGET]] inline void product_dot(int M, int N, int K, const std::uint16_t* a, std::int64_t lda,
                                                const std::uint16_t* b, std::int64_t ldb, float* c, std::int64_t ldc,
                                                bool accumulate) noexcept {
    constexpr int mr = 8;
    for (int i = 0; i < M; i += mr)
        for (int j = 0; j < N; j += 32) {
            __m512 acc[mr][2];
            for (int r = 0; r < mr; ++r)
                for (int h = 0; h < 2; ++h)
                    acc[r][h] = accumulate ? _mm512_loadu_ps(c + (i + r) * ldc + j + 16 * h) : _mm512_setzero_ps();
            const std::uint16_t* ai = a + i * lda;
            for (int k = 0; k < K; k += 2) {
                const std::uint16_t* bk = b + (k / 2) * ldb + 2 * j;
                const __m512bh b0 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(bk));
                const __m512bh b1 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(bk + 32));
                for (int r = 0; r < mr; ++r) {
                    std::uint32_t pair;
                    __builtin_memcpy(&pair, ai + r * lda + k, sizeof pair);
                    const __m512bh ar = reinterpret_cast<__m512bh>(_mm512_set1_epi32(int(pair)));
                    acc[r][0] = _mm512_dpbf16_ps(acc[r][0], ar, b0);
                    acc[r][1] = _mm512_dpbf16_ps(acc[r][1], ar, b1);
                }
            }
            for (int r = 0; r < mr; ++r)
                for (int h = 0; h < 2; ++h) _mm512_storeu_ps(c + (i + r) * ldc + j + 16 * h, acc[r][h]);
        }
}

/// C(M,N) = A(M,K) · B(K,N), or C += (`accumulate`), on AMX or AVX512-BF16 (`available()`). A: bf16,
/// row-major, lda elements. B: bf16 in pairs along k ("VNNI"): B(k, n) at b[(k/2)·ldb + 2n + k%2],
/// ldb ≥ 2N elements. C: fp32, row-major, ldc. M, N and K multiples of 32; sums run in fp32 (each
/// unit adds a pair's products before the sum; subnormal operands and sums flushed to zero).
[[DISTILL_AMX_TARGET]] inline void product(int M, int N, int K, const std::uint16_t* a, std::int64_t lda,
                                           const std::uint16_t* b, std::int64_t ldb, float* c, std::int64_t ldc,
                                           bool accumulate) noexcept {
    if (on_amx())
        product_amx(M, N, K, a, lda, b, ldb, c, ldc, accumulate);
    else
        product_dot(M, N, K, a, lda, b, ldb, c, ldc, accumulate);
}

/// dst (rows, n; ldd apart) = x (rows; ldx apart) rounded to bf16 (to nearest even), keeping the
/// first `valid_cols` columns of the first `valid_rows` rows and zero elsewhere; n a multiple of 16.
/// Rows past valid_rows are not read.
[[DISTILL_BF16_TARGET]] inline void round_rows(std::uint16_t* dst, std::int64_t ldd, const float* x, std::int64_t ldx,
                                               int rows, int valid_rows, int n, int valid_cols) noexcept {
    for (int r = 0; r < rows; ++r) {
        const int valid = r < valid_rows ? valid_cols : 0;
        const float* xr = r < valid_rows ? x + r * ldx : x;
        for (int i = 0; i < n; i += 16) {
            const int left = valid - i;
            const __mmask16 keep = left >= 16  ? __mmask16(0xffff)
                                   : left <= 0 ? __mmask16(0)
                                               : __mmask16((1u << left) - 1);
            const __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(keep, xr + i));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + r * ldd + i), reinterpret_cast<const __m256i&>(h));
        }
    }
}

/// Σ bf16(a_i) · b_i over n floats (n a multiple of 16), summed in fp32: a row's dot product with
/// the operand a tile product reads in its place.
[[DISTILL_BF16_TARGET]] inline float rounded_dot(const float* a, const float* b, int n) noexcept {
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(a + i));
        const __m512i wide = _mm512_slli_epi32(_mm512_cvtepu16_epi32(reinterpret_cast<const __m256i&>(h)), 16);
        acc = _mm512_fmadd_ps(_mm512_castsi512_ps(wide), _mm512_loadu_ps(b + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

/// 16 pairs (lo[j], hi[j]) rounded to bf16, lo in the low half of each 32-bit lane.
[[DISTILL_BF16_TARGET]] inline __m512i pairs(__m512 lo, __m512 hi) noexcept {
    const __m256bh l = _mm512_cvtneps_pbh(lo), h = _mm512_cvtneps_pbh(hi);
    return _mm512_or_si512(_mm512_cvtepu16_epi32(reinterpret_cast<const __m256i&>(l)),
                           _mm512_slli_epi32(_mm512_cvtepu16_epi32(reinterpret_cast<const __m256i&>(h)), 16));
}

/// x (n, hs) fp32, rows ld apart, as the B of A · xᵀ: xt(d, t) = x(t, d) in bf16 pairs along d,
/// pair d/2 of row t at xt[(d/2)·np + t] (32-bit units); rows n..np zero. hs a multiple of 32.
/// `rounded` is scratch of n·hs/2 pairs: x rounded row by row, then transposed as 32-bit words.
[[DISTILL_BF16_TARGET]] inline void pack_transposed(std::uint32_t* xt, std::int64_t np, const float* x, std::int64_t ld,
                                                    int n, int hs, std::uint32_t* rounded) noexcept {
    for (int t = 0; t < n; ++t)
        for (int d = 0; d < hs; d += 32) {
            const __m512bh p =
                _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + t * ld + d + 16), _mm512_loadu_ps(x + t * ld + d));
            _mm512_storeu_si512(rounded + t * (hs / 2) + d / 2, reinterpret_cast<const __m512i&>(p));
        }
    // the row kernels' 16 × 16 transpose moves bits only; it zeroes keys n.. of its last block
    rowk::transpose::run<rowk::vec<64> >(reinterpret_cast<float*>(xt), np, reinterpret_cast<const float*>(rounded),
                                         hs / 2, n, hs / 2);
    for (int d = 0; d < hs / 2; ++d)
        for (std::int64_t t = (n + 15) / 16 * 16; t < np; ++t) xt[d * np + t] = 0;
}

/// x (n, hs) fp32, rows ld apart, as the B of A · x: pairs of rows, x(t, d) at xv[(t/2)·hs + d]'s
/// half t%2 (32-bit units); rows n..np zero (np even). hs a multiple of 16.
[[DISTILL_BF16_TARGET]] inline void pack_pairs(std::uint32_t* xv, std::int64_t np, const float* x, std::int64_t ld,
                                               int n, int hs) noexcept {
    for (std::int64_t t = 0; t < np; t += 2)
        for (int d = 0; d < hs; d += 16) {
            const __m512 lo = t < n ? _mm512_loadu_ps(x + t * ld + d) : _mm512_setzero_ps();
            const __m512 hi = t + 1 < n ? _mm512_loadu_ps(x + (t + 1) * ld + d) : _mm512_setzero_ps();
            _mm512_storeu_si512(xv + (t / 2) * hs + d, pairs(lo, hi));
        }
}

#else

inline bool available() noexcept {
    return false;
}

#endif

}  // namespace distill::device::detail::bf16_tiles
