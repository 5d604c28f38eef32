#pragma once
/// @file cpu/quant.hpp
/// `device::Cpu`'s quantized matrix product for generation (batch-1 GEMV and small batches): what
/// `reference/quant.hpp` computes — ggml's CPU semantics, so a quantized student gives llama.cpp's
/// numbers — fast. The weights stay in ggml blocks in memory (Q8_0 is 1.06 bytes per weight, Q4_0
/// and Q4_K 0.56, against 4 for fp32), so decoding streams a quarter to a seventh of the bytes.
///
/// Each activation row is converted once per call to the weight type's `vec_dot_type`
/// (`quant::quantize_activations`). Block types are then multiplied in integers, 32 quants at a
/// time in 256-bit registers, as ggml's x86 kernels do: Q8_0 and Q4_0 weights against Q8_0
/// activations with VNNI's `vpdpbusd` (AVX512-VNNI or AVX-VNNI; else AVX2's `vpmaddubsw` pairs),
/// Q4_K against Q8_K with the sub-block scales folded in by `vpmaddwd`; each block's integer sum is
/// scaled and accumulated in fp32. F32, F16 and BF16 weights are decoded 16 lanes at a time
/// (`format_16`, GCC/Clang vector extensions) and multiplied in fp32. A tile of 4 weight rows is
/// multiplied with 1 or 2 activation rows at a time (4 or 8 independent accumulators); threads split
/// the weight rows. Every output element is computed by the same instructions in the same order
/// whichever thread runs it, so the result is the same for every thread count. Builds without AVX2
/// and FMA multiply the block types with `quant::vec_dot` (portable, slow).

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
using u16x16 = std::uint16_t __attribute__((vector_size(32)));
using u32x16 = std::uint32_t __attribute__((vector_size(64)));
using f32x16 = float __attribute__((vector_size(64)));

/// sizeof(V) bytes at p (unaligned) into v.
template <class V>
void load_vector(V& v, const void* p) noexcept {
    std::memcpy(&v, p, sizeof v);
}
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

// ---- fp32, fp16 and bf16 weights: a 16-lane decoder per type -----------------------------------
// Each has `qk` = 16 elements per "block" (rows may end in a partial block, handled by `scalar`), a
// `block` view of 16 elements and `lanes(view, v, w)`: those 16 elements as floats into w.

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

/// Calls f.template operator()<Format>() with the format of `t` (F32, F16 or BF16).
template <class F>
decltype(auto) with_float_format(quant::type t, F&& f) {
    if (t == quant::type::F16) return f.template operator()<format_16<quant::type::F16>>();
    if (t == quant::type::BF16) return f.template operator()<format_16<quant::type::BF16>>();
    return f.template operator()<format_16<quant::type::F32>>();
}

/// One weight row of k elements in format F into `out`, 16 lanes at a time.
template <class F>
void decode_row(const std::byte* row, std::int64_t k, float* out) noexcept {
    const std::int64_t vectors = k / 16;
    for (std::int64_t i = 0; i < vectors; ++i) {
        f32x16 w;
        F::lanes(F::load(row, i), 0, w);
        std::memcpy(out + 16 * i, &w, sizeof w);
    }
    for (std::int64_t c = 16 * vectors; c < k; ++c) out[c] = F::scalar(row, c);
}

/// The 16 lanes of `v` added in lane order.
inline float horizontal_sum(const f32x16& v) noexcept {
    float s = 0;
    for (int i = 0; i < 16; ++i) s += v[i];
    return s;
}

/// y(RW) = x(k) · w(RW, k)ᵀ for one activation row (decoding, m = 1), weight row b at `w[b]` in
/// format F, decoded in registers: per 16 lanes a decode and an FMA into that row's accumulator (RW
/// independent chains), no scratch.
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
        for (std::int64_t c = blocks * F::qk; c < k; ++c) s += x[c] * F::scalar(w[r], c);
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

#if defined(__AVX2__) && defined(__FMA__)
#define DISTILL_QUANT_INT_KERNELS 1

// ---- block types: integer dot products of weight and activation quants -------------------------

/// An fp16 scale as fp32 (exact either way): one F16C instruction where the build has it.
inline float fp16_scale(const std::byte* p) noexcept {
    std::uint16_t h;
    std::memcpy(&h, p, 2);
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return quant::fp16_to_fp32(h);
#endif
}

inline __m256i load256(const std::byte* p) noexcept {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

/// 8 int32 lanes: lane l = Σ_{i<4} u[4l+i]·s[4l+i] (u unsigned, s signed bytes; u·s pairs must fit
/// in int16 without VNNI, which holds for |u| ≤ 128, |s| ≤ 127).
inline __m256i dot_u8_i8(__m256i u, __m256i s) noexcept {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

/// The 8 lanes of v added in a fixed order.
inline float hsum8(__m256 v) noexcept {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/// The 8 lanes of v added (int32).
inline int hsum8(__m256i v) noexcept {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

/// The largest lane of v.
inline float hmax8(__m256 v) noexcept {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/// Rounds the 32 floats at x · scale half to even into int8 quants at out (ggml's x86 sequence:
/// round, convert, two saturating packs, then a permutation that undoes the packs' lane order).
inline void round_to_quants(const float* x, __m256 scale, std::byte* out, __m256i (&ints)[4]) noexcept {
    for (int v = 0; v < 4; ++v)
        ints[v] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * v), scale),
                                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256i packed =
        _mm256_packs_epi16(_mm256_packs_epi32(ints[0], ints[1]), _mm256_packs_epi32(ints[2], ints[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                        _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

/// `quant::quantize_activations` for block weight types (Q8_0, Q4_0: Q8_0 blocks; Q4_K: Q8_K),
/// vectorized; the same bytes.
inline void quantize_activations(quant::type t, const float* x, std::int64_t k, std::byte* out) noexcept {
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256i ints[4];
    if (t != quant::type::Q4_K) {
        for (std::int64_t i = 0; i < k / quant::qk8_0; ++i, x += quant::qk8_0, out += sizeof(quant::block_q8_0)) {
            __m256 m = _mm256_setzero_ps();
            for (int v = 0; v < 4; ++v) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + 8 * v), magnitude));
            const float amax = hmax8(m);
            const std::uint16_t d = quant::fp32_to_fp16(amax / 127.0f);
            std::memcpy(out, &d, 2);
            round_to_quants(x, _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f), out + 2, ints);
        }
        return;
    }
    constexpr std::size_t qs = offsetof(quant::block_q8_K, qs), bsums = offsetof(quant::block_q8_K, bsums);
    for (std::int64_t i = 0; i < k / quant::qk_k; ++i, x += quant::qk_k, out += sizeof(quant::block_q8_K)) {
        __m256 m = _mm256_setzero_ps();
        for (int v = 0; v < 32; ++v) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + 8 * v), magnitude));
        const float amax = hmax8(m);
        if (amax == 0.0f) {
            std::memset(out, 0, sizeof(quant::block_q8_K));
            continue;
        }
        int first = 0;  // ggml's `max`: the first element of that magnitude, with its sign
        while (first < quant::qk_k - 1 && std::fabs(x[first]) != amax) ++first;  // (bounded for NaN)
        const float iscale = -127.0f / x[first], d = 1.0f / iscale;
        std::memcpy(out, &d, 4);
        for (int g = 0; g < 8; ++g) {  // |x · iscale| ≤ 127: no clamp, and the packs never saturate
            round_to_quants(x + 32 * g, _mm256_set1_ps(iscale), out + qs + 32 * g, ints);
            const std::int16_t sums[2] = {static_cast<std::int16_t>(hsum8(_mm256_add_epi32(ints[0], ints[1]))),
                                          static_cast<std::int16_t>(hsum8(_mm256_add_epi32(ints[2], ints[3])))};
            std::memcpy(out + bsums + 4 * g, sums, 4);
        }
    }
}

/// Q8_0 weight blocks: fp16 d, then the 32 quants as they are.
struct int_q8_0 {
    static constexpr std::int64_t bytes = sizeof(quant::block_q8_0);
    static __m256i quants(const std::byte* block) noexcept { return load256(block + 2); }
};
/// Q4_0 weight blocks: fp16 d, then 16 bytes of nibbles (elements 0..15 low, 16..31 high), minus 8.
struct int_q4_0 {
    static constexpr std::int64_t bytes = sizeof(quant::block_q4_0);
    static __m256i quants(const std::byte* block) noexcept {
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 2));
        const __m256i q = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
        return _mm256_sub_epi8(_mm256_and_si256(q, _mm256_set1_epi8(0xF)), _mm256_set1_epi8(8));
    }
};

/// y(RX, RW) = a(RX, k) · w(RW, k)ᵀ for Q8_0 or Q4_0 weights (format F) and Q8_0 activation rows
/// `astride` bytes apart, k = 32·blocks, rows of y `ldy` apart: per block and pair, the signed
/// quants' dot product as |w| · sign(a, w) (vpdpbusd multiplies unsigned by signed), scaled by
/// d_w · d_a into an 8-lane fp32 accumulator.
template <class F, int RW, int RX>
void q8_0_tile(const std::byte* const* w, const std::byte* a, std::size_t astride, std::int64_t blocks, float* y,
               std::int64_t ldy) noexcept {
    constexpr std::int64_t ab = sizeof(quant::block_q8_0);
    __m256 acc[RX][RW];
    for (auto& row : acc)
        for (auto& v : row) v = _mm256_setzero_ps();
    for (std::int64_t i = 0; i < blocks; ++i) {
        __m256i aq[RX];
        float ad[RX];
        for (int r = 0; r < RX; ++r) {
            const std::byte* block = a + r * astride + i * ab;
            ad[r] = fp16_scale(block);
            aq[r] = load256(block + 2);
        }
        for (int b = 0; b < RW; ++b) {
            const std::byte* block = w[b] + i * F::bytes;
            const float wd = fp16_scale(block);
            const __m256i q = F::quants(block), magnitude = _mm256_sign_epi8(q, q);
            for (int r = 0; r < RX; ++r) {
                const __m256i sum = dot_u8_i8(magnitude, _mm256_sign_epi8(aq[r], q));
                acc[r][b] = _mm256_fmadd_ps(_mm256_set1_ps(wd * ad[r]), _mm256_cvtepi32_ps(sum), acc[r][b]);
            }
        }
    }
    for (int r = 0; r < RX; ++r)
        for (int b = 0; b < RW; ++b) y[r * ldy + b] = hsum8(acc[r][b]);
}

/// Q4_K's 12 bytes of 6-bit scales and mins (file comment of io/quant.hpp) as 8 scale bytes then 8
/// min bytes, with 32-bit shifts and masks (`quant::detail::scale_min_k4` for all 8 at once).
inline void unpack_scales_mins(const std::byte* packed, std::uint8_t out[16]) noexcept {
    std::uint32_t u[4];
    std::memcpy(u, packed, 12);
    constexpr std::uint32_t low6 = 0x3f3f3f3f, low4 = 0x0f0f0f0f, low2 = 0x03030303;
    u[3] = ((u[2] >> 4) & low4) | (((u[1] >> 6) & low2) << 4);  // mins 4..7
    const std::uint32_t mins_0_3 = u[1] & low6;
    u[1] = (u[2] & low4) | (((u[0] >> 6) & low2) << 4);  // scales 4..7
    u[2] = mins_0_3;
    u[0] &= low6;  // scales 0..3
    std::memcpy(out, u, 16);
}

/// y(RX, RW) = a(RX, k) · w(RW, k)ᵀ for Q4_K weights and Q8_K activation rows `astride` bytes apart,
/// k = 256·blocks: per super-block and pair, Σ_s sc_s · Σ q4 · q8 in int32 (nibbles times quants in
/// int16 pairs by vpmaddubsw, times the sub-block scale and paired by vpmaddwd), scaled by d · d_a
/// into an fp32 accumulator, and the mins' term d_a · dmin · Σ_s m_s · (sub-block s's quant sum,
/// from bsums) into a second one, subtracted at the end.
template <int RW, int RX>
void q4_K_tile(const std::byte* const* w, const std::byte* a, std::size_t astride, std::int64_t blocks, float* y,
               std::int64_t ldy) noexcept {
    constexpr std::int64_t wb = sizeof(quant::block_q4_K), ab = sizeof(quant::block_q8_K);
    constexpr std::size_t a_qs = offsetof(quant::block_q8_K, qs), a_bsums = offsetof(quant::block_q8_K, bsums);
    constexpr std::size_t w_scales = offsetof(quant::block_q4_K, scales), w_qs = offsetof(quant::block_q4_K, qs);
    const __m256i low = _mm256_set1_epi8(0xF);
    __m256 acc[RX][RW];
    __m128 mins[RX][RW];
    for (int r = 0; r < RX; ++r)
        for (int b = 0; b < RW; ++b) {
            acc[r][b] = _mm256_setzero_ps();
            mins[r][b] = _mm_setzero_ps();
        }
    for (std::int64_t i = 0; i < blocks; ++i) {
        const std::byte* aq[RX];
        float ad[RX];
        __m128i sub_sums[RX];  // 8 int16: Σ of sub-block s's 32 activation quants
        for (int r = 0; r < RX; ++r) {
            const std::byte* block = a + r * astride + i * ab;
            std::memcpy(&ad[r], block, 4);
            aq[r] = block + a_qs;
            const __m256i bsums = load256(block + a_bsums);
            sub_sums[r] = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256(bsums, 1));
        }
        for (int b = 0; b < RW; ++b) {
            const std::byte* block = w[b] + i * wb;
            const float d = fp16_scale(block), dmin = fp16_scale(block + 2);
            alignas(16) std::uint8_t sm[16];  // scales 0..7, mins 0..7
            unpack_scales_mins(block + w_scales, sm);
            const __m128i m16 = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sm + 8)));
            __m256i sum[RX];
            for (auto& v : sum) v = _mm256_setzero_si256();
            for (int g = 0; g < 4; ++g) {  // 64 elements: sub-blocks 2g (low nibbles), 2g + 1 (high)
                const __m256i q4 = load256(block + w_qs + 32 * g);
                const __m256i lo = _mm256_and_si256(q4, low), hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), low);
                const __m256i sc_lo = _mm256_set1_epi16(sm[2 * g]), sc_hi = _mm256_set1_epi16(sm[2 * g + 1]);
                for (int r = 0; r < RX; ++r) {
                    const __m256i p_lo = _mm256_madd_epi16(sc_lo, _mm256_maddubs_epi16(lo, load256(aq[r] + 64 * g)));
                    const __m256i p_hi =
                        _mm256_madd_epi16(sc_hi, _mm256_maddubs_epi16(hi, load256(aq[r] + 64 * g + 32)));
                    sum[r] = _mm256_add_epi32(sum[r], _mm256_add_epi32(p_lo, p_hi));
                }
            }
            for (int r = 0; r < RX; ++r) {
                acc[r][b] = _mm256_fmadd_ps(_mm256_set1_ps(ad[r] * d), _mm256_cvtepi32_ps(sum[r]), acc[r][b]);
                mins[r][b] = _mm_fmadd_ps(_mm_set1_ps(ad[r] * dmin), _mm_cvtepi32_ps(_mm_madd_epi16(m16, sub_sums[r])),
                                          mins[r][b]);
            }
        }
    }
    for (int r = 0; r < RX; ++r)
        for (int b = 0; b < RW; ++b) {
            __m128 m = _mm_add_ps(mins[r][b], _mm_movehl_ps(mins[r][b], mins[r][b]));
            m = _mm_add_ss(m, _mm_movehdup_ps(m));
            y[r * ldy + b] = hsum8(acc[r][b]) - _mm_cvtss_f32(m);
        }
}

/// y(RX, RW) = a(RX) · w(RW)ᵀ with the integer micro-kernel of block type t.
template <int RW, int RX>
void int_tile(quant::type t, const std::byte* const* w, const std::byte* a, std::size_t astride, std::int64_t k,
              float* y, std::int64_t ldy) noexcept {
    if (t == quant::type::Q8_0) return q8_0_tile<int_q8_0, RW, RX>(w, a, astride, k / quant::qk8_0, y, ldy);
    if (t == quant::type::Q4_0) return q8_0_tile<int_q4_0, RW, RX>(w, a, astride, k / quant::qk4_0, y, ldy);
    return q4_K_tile<RW, RX>(w, a, astride, k / quant::qk_k, y, ldy);
}
#endif

/// y(RX, RW) = a(RX) · w(RW)ᵀ for block type t: the integer micro-kernels, or `quant::vec_dot`
/// (the portable path) in builds without AVX2 and FMA.
template <int RW, int RX>
void block_tile(quant::type t, const std::byte* const* w, const std::byte* a, std::size_t astride, std::int64_t k,
                float* y, std::int64_t ldy) {
#if defined(DISTILL_QUANT_INT_KERNELS)
    int_tile<RW, RX>(t, w, a, astride, k, y, ldy);
#else
    for (int r = 0; r < RX; ++r)
        for (int b = 0; b < RW; ++b) y[r * ldy + b] = quant::vec_dot(t, w[b], a + r * astride, k);
#endif
}

/// `quant::quantize_activations` for a block weight type: vectorized where the build has AVX2.
inline void convert_activations(quant::type t, const float* x, std::int64_t k, std::byte* out) {
#if defined(DISTILL_QUANT_INT_KERNELS)
    device::detail::quantize_activations(t, x, k, out);
#else
    quant::quantize_activations(t, x, k, out);
#endif
}

}  // namespace detail

/// The Reference's `quant_matmul` (y(m,n) = x(m,k) · W(n,k)ᵀ as ggml's CPU backend computes it, W
/// in ggml blocks, see `reference/quant.hpp`), fast (file comment). Threads split the weight rows in
/// tiles of 4, each multiplied with 1 or 2 activation rows at a time. Equal to the Reference up to
/// the order of fp32 additions; bit-identical for every thread count. F32 weights must be 4-byte aligned.
inline void quant_matmul(const Cpu& dev, const float* x, const std::byte* w, quant::type t, float* y, std::int64_t m,
                         std::int64_t k, std::int64_t n) {
    const std::size_t stride = quant::row_bytes(t, k), astride = quant::activation_row_bytes(t, k);
    if (m <= 0 || n <= 0) return;
    constexpr int RW = detail::quant_tile_rows, RX = detail::quant_tile_inputs;
    const std::int64_t tiles = (n + RW - 1) / RW;
    const bool parallel = m * n * k >= detail::quant_min_parallel_work;
    const bool blocks = quant::block_elements(t) > 1;
    // the activations in the weight type's vec_dot type: blocks, or floats rounded to f16 / bf16
    thread_local std::vector<std::byte> converted;  // grows once, then reused; read by the team below
    const std::size_t a_bytes = blocks ? static_cast<std::size_t>(m) * astride : static_cast<std::size_t>(m * k) * 4;
    if (t != quant::type::F32 && converted.size() < a_bytes) converted.resize(a_bytes);
    const float* xf = x;
    if (blocks) {
        for (std::int64_t i = 0; i < m; ++i)
            detail::convert_activations(t, x + i * k, k, converted.data() + static_cast<std::size_t>(i) * astride);
    } else if (t != quant::type::F32) {
        float* rounded = reinterpret_cast<float*>(converted.data());
        for (std::int64_t c = 0; c < m * k; ++c)
            rounded[c] = t == quant::type::F16 ? quant::fp16_to_fp32(quant::fp32_to_fp16(x[c]))
                                               : quant::bf16_to_fp32(quant::fp32_to_bf16(x[c]));
        xf = rounded;
    }
    const std::byte* a = converted.data();
    distill::detail::parallel_for(
        dev.threads(), tiles,
        [&](std::int64_t tile) {
            const std::int64_t j0 = tile * RW;
            const int rw = static_cast<int>(std::min<std::int64_t>(RW, n - j0));
            const std::byte* rows[RW] = {};
            for (int b = 0; b < rw; ++b) rows[b] = w + static_cast<std::size_t>(j0 + b) * stride;
            if (blocks) {
                for (std::int64_t i = 0; i < m; i += RX)
                    detail::with_rows(rw, [&]<int R>() {
                        const std::byte* ai = a + static_cast<std::size_t>(i) * astride;
                        if (m - i >= 2)
                            detail::block_tile<R, 2>(t, rows, ai, astride, k, y + i * n + j0, n);
                        else
                            detail::block_tile<R, 1>(t, rows, ai, astride, k, y + i * n + j0, n);
                    });
                return;
            }
            detail::with_float_format(t, [&]<class F>() {
                if (m == 1)
                    return detail::with_rows(rw, [&]<int R>() { detail::gemv_tile<F, R>(rows, xf, k, y + j0); });
                thread_local std::vector<float> scratch;  // (RW, k) decoded rows; grows once, then reused
                const float* dense[RW] = {};
                if (t == quant::type::F32) {
                    for (int b = 0; b < rw; ++b) dense[b] = reinterpret_cast<const float*>(rows[b]);
                } else {
                    if (scratch.size() < static_cast<std::size_t>(RW * k))
                        scratch.resize(static_cast<std::size_t>(RW * k));
                    for (int b = 0; b < rw; ++b) {
                        detail::decode_row<F>(rows[b], k, scratch.data() + b * k);
                        dense[b] = scratch.data() + b * k;
                    }
                }
                for (std::int64_t i = 0; i < m; i += RX)
                    detail::with_rows(rw, [&]<int R>() {
                        if (m - i >= 2)
                            detail::dot_tile<R, 2>(dense, xf + i * k, k, y + i * n + j0, n);
                        else
                            detail::dot_tile<R, 1>(dense, xf + i * k, k, y + i * n + j0, n);
                    });
            });
        },
        parallel);
}

}  // namespace distill::device
