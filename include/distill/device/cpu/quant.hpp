#pragma once
/// @file cpu/quant.hpp
/// `device::Cpu`'s weight-only quantized matrix product for generation (batch-1 GEMV and small
/// batches). The weights stay in ggml blocks in memory (Q8_0 is 1.06 bytes per weight, Q4_0 and
/// Q4_K 0.56, against 4 for fp32), so decoding streams a quarter to a seventh of the bytes. Each type
/// has one decoder of 16 lanes (`format_*`), written with GCC/Clang vector extensions on 16-float
/// vectors — one AVX-512 register, two AVX ones, four SSE ones, or scalar code, as the build targets —
/// with the int8 → float widening by ISA (AVX-512, AVX2, else scalar). One activation row: the weights
/// are decoded in registers and multiplied as they are decoded (4 weight rows, 4 accumulators);
/// several rows: a tile of 4 weight rows is decoded once into a per-thread scratch that stays in
/// L1/L2, then multiplied with 2 activation rows at a time (8 accumulators). Threads split the
/// weight rows. Every output element is computed by the same instructions in the same order
/// whichever thread runs it, so the result is the same for every thread count.
///
/// For large m (a long prefill) dequantizing the whole matrix and calling `gemm` is faster; this
/// kernel is for the m ≤ a few rows of decoding.

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "distill/detail/parallel.hpp"
#include "distill/device/cpu/layers.hpp"
#include "distill/io/quant.hpp"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace distill::device {

namespace detail {

/// Weight rows multiplied together: 4 rows (× 2 activation rows) = 4 (8) independent accumulators,
/// which hides the FMA latency.
inline constexpr int quant_tile_rows = 4;
/// Activation rows per micro-kernel call.
inline constexpr int quant_tile_inputs = 2;
/// Below this many multiply-adds one thread does the product (waking a team costs more).
inline constexpr std::int64_t quant_min_parallel_work = std::int64_t(1) << 18;

// 16 lanes of bytes, halves and floats as GCC/Clang vector extensions: one AVX-512 register of
// floats, two AVX or four SSE ones (the compiler splits them), so the decoders below are written once.
// Vectors wider than 16 bytes are passed by reference, never by value: a by-value signature's ABI
// differs between ISAs, and GCC warns about it (-Wpsabi) on builds without AVX.
using u8x16 = std::uint8_t __attribute__((vector_size(16)));
using i8x16 = std::int8_t __attribute__((vector_size(16)));
using u16x16 = std::uint16_t __attribute__((vector_size(32)));
using u32x16 = std::uint32_t __attribute__((vector_size(64)));
using f32x16 = float __attribute__((vector_size(64)));

/// sizeof(V) bytes at p (unaligned) into v.
template <class V>
void load_vector(V& v, const void* p) noexcept {
    std::memcpy(&v, p, sizeof v);
}
/// 16 bytes at p as a vector.
template <class V>
V load_bytes(const void* p) noexcept {
    static_assert(sizeof(V) == 16);
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

/// 16 small integers as floats (int8 lanes; nibbles fit). By ISA, because GCC 12 lowers a widening
/// `__builtin_convertvector` to scalar code.
inline void to_float(i8x16 q, f32x16& f) noexcept {
#if defined(__AVX512F__)
    __m128i v;
    std::memcpy(&v, &q, 16);
    // the masked widening and a same-width vector conversion: GCC 12's plain intrinsics trip its
    // -Wmaybe-uninitialized false positive (PR 105593)
    const __m512i r = _mm512_maskz_cvtepi8_epi32(0xFFFF, v);
    using i32x16 = std::int32_t __attribute__((vector_size(64)));
    i32x16 i;
    std::memcpy(&i, &r, 64);
    f = __builtin_convertvector(i, f32x16);
#elif defined(__AVX2__)
    __m128i v;
    std::memcpy(&v, &q, 16);
    const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
    const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8)));
    std::memcpy(&f, &lo, 32);
    std::memcpy(reinterpret_cast<char*>(&f) + 32, &hi, 32);
#else
    for (int i = 0; i < 16; ++i) f[i] = static_cast<float>(q[i]);
#endif
}
inline void to_float(u8x16 q, f32x16& f) noexcept {
    to_float(reinterpret_cast<i8x16>(q), f);
}  // lanes < 128

/// 16 fp16 values at p as floats: F16C's conversion where the build has it, else ggml's exact rule.
inline void fp16x16_to_fp32(const std::byte* p, f32x16& f) noexcept {
#if defined(__AVX512F__)
    const __m512 v =
        _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));  // masked: see to_float
    std::memcpy(&f, &v, sizeof f);
#elif defined(__F16C__)
    const __m256 lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m256 hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)));
    std::memcpy(&f, &lo, 32);
    std::memcpy(reinterpret_cast<char*>(&f) + 32, &hi, 32);
#else
    for (int i = 0; i < 16; ++i) {
        std::uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        f[i] = quant::fp16_to_fp32(h);
    }
#endif
}

// ---- the formats: one 16-lane decoder per type ---------------------------------------------------
// Each has `qk` (elements per block; 16 for the 1-element types, whose rows may end in a partial
// block handled by `scalar`), a `block` view made once per block and row (scales decoded there), and
// `lanes(view, v, w)`: elements 16v..16v+15 of the block as floats into w. Unlike
// `quant::dequantize_row`, which keeps ggml's rounding bit for bit, Q4_K's d·q − m may become an FMA
// here: the product only needs fp32 accuracy.

struct format_q8_0 {
    static constexpr int qk = quant::qk8_0;
    struct block {
        const std::byte* qs;
        float d;
    };
    static block load(const std::byte* row, std::int64_t i) noexcept {
        const std::byte* p = row + i * std::int64_t(sizeof(quant::block_q8_0));
        std::uint16_t d;
        std::memcpy(&d, p, 2);
        return {p + 2, quant::fp16_to_fp32(d)};
    }
    static void lanes(const block& b, int v, f32x16& w) noexcept {
        to_float(load_bytes<i8x16>(b.qs + 16 * v), w);
        w *= b.d;
    }
};

struct format_q4_0 {
    static constexpr int qk = quant::qk4_0;
    struct block {
        u8x16 qs;
        float d;
    };
    static block load(const std::byte* row, std::int64_t i) noexcept {
        const std::byte* p = row + i * std::int64_t(sizeof(quant::block_q4_0));
        std::uint16_t d;
        std::memcpy(&d, p, 2);
        return {load_bytes<u8x16>(p + 2), quant::fp16_to_fp32(d)};
    }
    // elements 0..15 are the low nibbles, 16..31 the high ones
    static void lanes(const block& b, int v, f32x16& w) noexcept {
        to_float(v == 0 ? b.qs & 0xF : b.qs >> 4, w);
        w = (w - 8.0f) * b.d;
    }
};

struct format_q4_K {
    static constexpr int qk = quant::qk_k;
    struct block {
        const std::byte* qs;
        float scale[8], min[8];  // per sub-block: d·sc and dmin·m
    };
    static block load(const std::byte* row, std::int64_t i) noexcept {
        const std::byte* p = row + i * std::int64_t(sizeof(quant::block_q4_K));
        quant::block_q4_K h;
        std::memcpy(&h, p, offsetof(quant::block_q4_K, qs));  // d, dmin, scales
        block b{p + offsetof(quant::block_q4_K, qs), {}, {}};
        const float d = quant::fp16_to_fp32(h.d), dmin = quant::fp16_to_fp32(h.dmin);
        for (int s = 0; s < 8; ++s) {
            std::uint8_t sc, m;
            quant::detail::scale_min_k4(s, h.scales, sc, m);
            b.scale[s] = d * sc;
            b.min[s] = dmin * m;
        }
        return b;
    }
    // 16v..16v+15 lie in 64-element group g = v/4 (32 bytes): low nibbles of its bytes for v%4 < 2
    // (sub-block 2g), high nibbles otherwise (sub-block 2g+1); bytes 16·(v%2) on.
    static void lanes(const block& b, int v, f32x16& w) noexcept {
        const int g = v / 4, high = (v / 2) % 2, s = 2 * g + high;
        const auto q = load_bytes<u8x16>(b.qs + 32 * g + 16 * (v % 2));
        to_float(high ? q >> 4 : q & 0xF, w);
        w = w * b.scale[s] - b.min[s];
    }
};

template <quant::type T>
struct format_16 {  // F32, F16, BF16: 16 elements per "block"
    static constexpr int qk = 16;
    using block = const std::byte*;
    static constexpr std::int64_t element_bytes = T == quant::type::F32 ? 4 : 2;
    static block load(const std::byte* row, std::int64_t i) noexcept { return row + i * 16 * element_bytes; }
    static void lanes(block p, int, f32x16& w) noexcept {
        if constexpr (T == quant::type::F32) {
            load_vector(w, p);
        } else if constexpr (T == quant::type::F16) {
            fp16x16_to_fp32(p, w);
        } else {  // bf16 is the top half of an fp32
            u16x16 h;
            load_vector(h, p);
            const u32x16 bits = __builtin_convertvector(h, u32x16) << 16;
            std::memcpy(&w, &bits, sizeof w);
        }
    }
    static float scalar(const std::byte* row, std::int64_t c) noexcept {
        if constexpr (T == quant::type::F32) {
            float f;
            std::memcpy(&f, row + 4 * c, 4);
            return f;
        } else {
            std::uint16_t h;
            std::memcpy(&h, row + 2 * c, 2);
            return T == quant::type::F16 ? quant::fp16_to_fp32(h) : quant::bf16_to_fp32(h);
        }
    }
};

/// Elements [qk·(k/qk), k) of a row: only the 16-element formats have them.
template <class F>
float tail_element(const std::byte* row, std::int64_t c) noexcept {
    if constexpr (requires { F::scalar(row, c); })
        return F::scalar(row, c);
    else
        return 0.0f;  // unreachable: block formats have whole blocks
}

/// Calls f.template operator()<Format>() with the format of `t`.
template <class F>
decltype(auto) with_format(quant::type t, F&& f) {
    switch (t) {
        case quant::type::Q8_0:
            return f.template operator()<format_q8_0>();
        case quant::type::Q4_0:
            return f.template operator()<format_q4_0>();
        case quant::type::Q4_K:
            return f.template operator()<format_q4_K>();
        case quant::type::F16:
            return f.template operator()<format_16<quant::type::F16>>();
        case quant::type::BF16:
            return f.template operator()<format_16<quant::type::BF16>>();
        case quant::type::F32:
            break;
    }
    return f.template operator()<format_16<quant::type::F32>>();
}

/// The 16 lanes of `v` added in lane order.
inline float horizontal_sum(const f32x16& v) noexcept {
    float s = 0;
    for (int i = 0; i < 16; ++i) s += v[i];
    return s;
}

/// Dequantizes one weight row of k elements into `out`, 16 lanes at a time.
template <class F>
void dequantize_row_fast(const std::byte* row, std::int64_t k, float* out) noexcept {
    const std::int64_t blocks = k / F::qk;
    for (std::int64_t i = 0; i < blocks; ++i) {
        const typename F::block b = F::load(row, i);
        for (int v = 0; v < F::qk / 16; ++v) {
            f32x16 w;
            F::lanes(b, v, w);
            std::memcpy(out + i * F::qk + 16 * v, &w, sizeof w);
        }
    }
    for (std::int64_t c = blocks * F::qk; c < k; ++c) out[c] = tail_element<F>(row, c);
}

/// y(RW) = x(k) · w(RW, k)ᵀ for one activation row (decoding, m = 1), weight row b at `w[b]` in
/// format F, dequantized in registers: per block, each row's scales once, then per 16 lanes a
/// decode and an FMA into that row's accumulator (RW independent chains), no scratch.
template <class F, int RW>
void gemv_tile(const std::byte* const* w, const float* x, std::int64_t k, float* y) noexcept {
    f32x16 acc[RW] = {};
    const std::int64_t blocks = k / F::qk;
    for (std::int64_t i = 0; i < blocks; ++i) {
        typename F::block b[RW];
        for (int r = 0; r < RW; ++r) b[r] = F::load(w[r], i);
        for (int v = 0; v < F::qk / 16; ++v) {
            f32x16 xv, wv;
            load_vector(xv, x + i * F::qk + 16 * v);
            for (int r = 0; r < RW; ++r) {
                F::lanes(b[r], v, wv);
                acc[r] += xv * wv;
            }
        }
    }
    for (int r = 0; r < RW; ++r) {
        float s = horizontal_sum(acc[r]);
        for (std::int64_t c = blocks * F::qk; c < k; ++c) s += x[c] * tail_element<F>(w[r], c);
        y[r] = s;
    }
}

/// y(RX, RW) = x(RX, k) · w(RW, k)ᵀ on dequantized fp32 rows (several activation rows), rows of x
/// `k` apart, rows of y `ldy` apart, weight row b at `w[b]`: RW·RX vector accumulators over the
/// whole of k, then a scalar tail for k % 16.
template <int RW, int RX>
void dot_tile(const float* const* w, const float* x, std::int64_t k, float* y, std::int64_t ldy) noexcept {
    f32x16 acc[RX][RW] = {};
    const std::int64_t kv = k / 16 * 16;
    for (std::int64_t c = 0; c < kv; c += 16) {
        f32x16 xv[RX];
        for (int r = 0; r < RX; ++r) load_vector(xv[r], x + r * k + c);
        for (int b = 0; b < RW; ++b) {
            f32x16 wv;
            load_vector(wv, w[b] + c);
            for (int r = 0; r < RX; ++r) acc[r][b] += xv[r] * wv;
        }
    }
    for (int r = 0; r < RX; ++r)
        for (int b = 0; b < RW; ++b) {
            float s = horizontal_sum(acc[r][b]);
            for (std::int64_t c = kv; c < k; ++c) s += x[r * k + c] * w[b][c];
            y[r * ldy + b] = s;
        }
}

/// Calls f.template operator()<R>() for the runtime r in 1..4.
template <class F>
void with_rows(int r, F&& f) {
    switch (r) {
        case 4:
            return f.template operator()<4>();
        case 3:
            return f.template operator()<3>();
        case 2:
            return f.template operator()<2>();
        default:
            return f.template operator()<1>();
    }
}

}  // namespace detail

/// The Reference's `quant_matmul` (y(m,n) = x(m,k) · W(n,k)ᵀ, W in ggml blocks, see
/// `reference/quant.hpp`), fast. Threads split the weight rows in tiles of 4. For one activation row
/// (decoding) each tile is dequantized in registers and multiplied as it is decoded; for several,
/// each tile is dequantized once into a per-thread scratch (kept across calls) and multiplied with 2
/// activation rows at a time. Bit-identical for every thread count. F32 weights must be 4-byte aligned.
inline void quant_matmul(const Cpu& dev, const float* x, const std::byte* w, quant::type t, float* y, std::int64_t m,
                         std::int64_t k, std::int64_t n) {
    const std::size_t stride = quant::row_bytes(t, k);
    if (m <= 0 || n <= 0) return;
    constexpr int RW = detail::quant_tile_rows, RX = detail::quant_tile_inputs;
    const std::int64_t tiles = (n + RW - 1) / RW;
    const bool parallel = m * n * k >= detail::quant_min_parallel_work;
    detail::with_format(t, [&]<class F>() {
        distill::detail::parallel_for(
            dev.threads(), tiles,
            [&](std::int64_t tile) {
                const std::int64_t j0 = tile * RW;
                const int rw = static_cast<int>(std::min<std::int64_t>(RW, n - j0));
                const std::byte* rows[RW] = {};
                for (int b = 0; b < rw; ++b) rows[b] = w + static_cast<std::size_t>(j0 + b) * stride;
                if (m == 1) return detail::with_rows(rw, [&]<int R>() { detail::gemv_tile<F, R>(rows, x, k, y + j0); });
                thread_local std::vector<float> scratch;  // (RW, k) dequantized rows; grows once, then reused
                const float* dense[RW] = {};
                if (t == quant::type::F32) {
                    for (int b = 0; b < rw; ++b) dense[b] = reinterpret_cast<const float*>(rows[b]);
                } else {
                    if (scratch.size() < static_cast<std::size_t>(RW * k))
                        scratch.resize(static_cast<std::size_t>(RW * k));
                    for (int b = 0; b < rw; ++b) {
                        detail::dequantize_row_fast<F>(rows[b], k, scratch.data() + b * k);
                        dense[b] = scratch.data() + b * k;
                    }
                }
                for (std::int64_t i = 0; i < m; i += RX)
                    detail::with_rows(rw, [&]<int R>() {
                        if (m - i >= 2)
                            detail::dot_tile<R, 2>(dense, x + i * k, k, y + i * n + j0, n);
                        else
                            detail::dot_tile<R, 1>(dense, x + i * k, k, y + i * n + j0, n);
                    });
            },
            parallel);
    });
}

}  // namespace distill::device
