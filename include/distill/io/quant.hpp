#pragma once
/// @file quant.hpp
/// ggml's tensor types (the element types of a GGUF file) and their row quantizers, bit-exact with
/// llama.cpp: a row quantized here holds the same bytes as one quantized by `ggml_quantize_chunk`
/// without an importance matrix (the reference quantizers `quantize_row_*_ref` of ggml-quants.c,
/// which llama.cpp's converter and `llama-quantize` write), and dequantizes to the same floats.
///
/// **Block layouts** (little-endian; `d`, `dmin` are IEEE fp16; a row of n elements is n / QK blocks
/// back to back, nothing between rows):
/// - `F32`  — 4-byte floats; `F16` — IEEE binary16; `BF16` — the upper half of an fp32 (1 element each).
/// - `Q8_0` — 32 elements in 34 bytes: `d`, then 32 int8 `qs`;            x = d · qs[i].
/// - `Q4_0` — 32 elements in 18 bytes: `d`, then 16 bytes of nibbles: byte i holds element i in its
///            low nibble and element i + 16 in its high nibble;              x = d · (q − 8).
/// - `Q4_K` — 256 elements in 144 bytes: `d`, `dmin`, 12 bytes of 6-bit scales and mins for the 8
///            sub-blocks of 32, then 128 bytes of nibbles: 64-element group g (0..3) uses bytes
///            32g..32g+31, element 64g + i in the low nibble of byte 32g + i and 64g + 32 + i in its
///            high nibble;  x = d·sc[s] · q − dmin·m[s] for sub-block s. The 6-bit packing: for s < 4,
///            sc[s] = scales[s] & 63 and m[s] = scales[s+4] & 63; for s ≥ 4, the low 4 bits sit in
///            scales[s+4] (sc low nibble, m high nibble) and the top 2 bits in the top 2 bits of
///            scales[s−4] (sc) and scales[s] (m).
///
/// **Bit-exactness.** ggml's reference quantizers are C compiled for the baseline ISA, so every
/// product is rounded to fp32 before it is added. A C++ build with FMA hardware that contracts
/// (GCC's `-ffp-contract=fast`, its default in GNU modes; Clang's default `on`, within an
/// expression) would fuse some of those into FMAs and change rounding decisions: without the guard,
/// about 6% of the Q4_K super-blocks of random rows get other bytes (GCC 12, `-march=native`). So
/// `detail::product` keeps each such product rounded, and the tests compare with llama.cpp's bytes.

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "distill/error.hpp"

namespace distill::quant {

static_assert(std::endian::native == std::endian::little,
              "ggml's blocks are little-endian; big-endian hosts are not supported");

/// A ggml tensor type; the values are ggml's `ggml_type` ids (as stored in a GGUF tensor record).
enum class type : std::uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, Q4_K = 12, BF16 = 30 };

/// Elements per Q8_0 / Q4_0 block and per Q4_K super-block.
inline constexpr int qk8_0 = 32, qk4_0 = 32, qk_k = 256;

/// ggml's `block_q8_0`: 32 weights as int8 times one fp16 scale.
struct block_q8_0 {
    static constexpr int elements = qk8_0;
    std::uint16_t d;        ///< fp16 scale
    std::int8_t qs[qk8_0];  ///< quants
};
/// ggml's `block_q4_0`: 32 weights as 4-bit unsigned offsets from 8, times one fp16 scale.
struct block_q4_0 {
    static constexpr int elements = qk4_0;
    std::uint16_t d;             ///< fp16 scale
    std::uint8_t qs[qk4_0 / 2];  ///< nibbles: element i low, element i + 16 high
};
/// ggml's `block_q4_K`: 256 weights in 8 sub-blocks of 32, each with a 6-bit scale and min.
struct block_q4_K {
    static constexpr int elements = qk_k;
    std::uint16_t d;            ///< fp16 super-block scale of the sub-block scales
    std::uint16_t dmin;         ///< fp16 super-block scale of the sub-block mins
    std::uint8_t scales[12];    ///< 8 scales and 8 mins, 6 bits each (see the file comment)
    std::uint8_t qs[qk_k / 2];  ///< nibbles (see the file comment)
};
/// ggml's `block_q8_K`: 256 activations as int8 with an fp32 scale and the sum of each 16 quants
/// (what ggml's CPU backend multiplies K-quant weights with; never stored in a file).
struct block_q8_K {
    static constexpr int elements = qk_k;
    float d;                        ///< fp32 scale (negative when the largest magnitude is positive)
    std::int8_t qs[qk_k];           ///< quants
    std::int16_t bsums[qk_k / 16];  ///< sum of qs[16i..16i+15]
};
static_assert(sizeof(block_q8_0) == 34 && alignof(block_q8_0) == 2, "block_q8_0 must be ggml's 34 bytes");
static_assert(sizeof(block_q8_K) == 292, "block_q8_K must be ggml's 292 bytes");
static_assert(sizeof(block_q4_0) == 18 && alignof(block_q4_0) == 2, "block_q4_0 must be ggml's 18 bytes");
static_assert(sizeof(block_q4_K) == 144 && alignof(block_q4_K) == 2, "block_q4_K must be ggml's 144 bytes");

// ---- scalar conversions -------------------------------------------------------------------------

/// fp32 → IEEE fp16 bits, rounding to nearest even (overflow to ±inf, subnormals kept), NaN → the
/// quiet NaN 0x7e00 with the sign: ggml's `ggml_compute_fp32_to_fp16`, written with integers only so
/// that no compiler setting can change a bit.
inline std::uint16_t fp32_to_fp16(float f) noexcept {
    const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
    const std::uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;   // NaN
    if (a >= 0x47800000u) return sign | 0x7c00u;  // >= 2^16: ±inf (inf itself too)
    if (a >= 0x38800000u) {                       // a normal fp16 (>= 2^-14): rebias, round 13 bits away
        const std::uint32_t r = a - 0x38000000u;  // exponent 127 → 15 bias
        return static_cast<std::uint16_t>(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));  // may carry to inf
    }
    // A subnormal fp16: the value in units of 2^-24, rounded to nearest even.
    const int shift = 126 - static_cast<int>(a >> 23);  // >= 14
    if (shift > 24) return sign;                        // below half the smallest subnormal
    const std::uint32_t m = (a & 0x7fffffu) | 0x800000u;
    const std::uint32_t half = 1u << (shift - 1);
    return static_cast<std::uint16_t>(sign | ((m + half - 1u + ((m >> shift) & 1u)) >> shift));
}

/// IEEE fp16 bits → fp32 (exact).
inline float fp16_to_fp32(std::uint16_t h) noexcept {
    const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
    const std::uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (m << 13));  // inf, NaN
    if (e != 0) return std::bit_cast<float>(sign | ((e + 112u) << 23) | (m << 13));
    const float v = static_cast<float>(m) * 0x1p-24f;  // zero or subnormal: exact in fp32
    return sign ? -v : v;
}

/// fp32 → bf16 bits, rounding to nearest even; NaN → its upper half with the quiet bit set
/// (ggml's `ggml_compute_fp32_to_bf16`, which gguf-py mirrors).
inline std::uint16_t fp32_to_bf16(float f) noexcept {
    const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 64u);
    return static_cast<std::uint16_t>((x + (0x7fffu + ((x >> 16) & 1u))) >> 16);
}

/// bf16 bits → fp32 (exact).
inline float bf16_to_fp32(std::uint16_t b) noexcept {
    return std::bit_cast<float>(std::uint32_t(b) << 16);
}

// ---- sizes and names ----------------------------------------------------------------------------

/// What distill knows of one ggml type: its id, name and block geometry.
struct type_info {
    type id;
    std::string_view name;        ///< lower case, as in job keys and file names
    std::int64_t block_elements;  ///< elements per block
    std::size_t block_bytes;      ///< bytes per block
};

/// Every supported type, in the order errors list them.
inline constexpr type_info supported_types[] = {
    {type::F32, "f32", 1, 4},
    {type::F16, "f16", 1, 2},
    {type::BF16, "bf16", 1, 2},
    {type::Q8_0, "q8_0", qk8_0, sizeof(block_q8_0)},
    {type::Q4_0, "q4_0", qk4_0, sizeof(block_q4_0)},
    {type::Q4_K, "q4_k", qk_k, sizeof(block_q4_K)},
};

/// The entry of `t` in `supported_types`; throws distill::error("quant: unsupported ggml type 7") for another id.
inline const type_info& info(type t) {
    for (const type_info& i : supported_types)
        if (i.id == t) return i;
    throw error("quant: unsupported ggml type " + std::to_string(static_cast<std::uint32_t>(t)));
}

/// Elements per block: 1 (F32, F16, BF16), 32 (Q8_0, Q4_0), 256 (Q4_K). Throws distill::error for
/// another ggml type.
inline std::int64_t block_elements(type t) {
    return info(t).block_elements;
}

/// Bytes per block: 4, 2, 18, 34, 144, 2 for F32, F16, Q4_0, Q8_0, Q4_K, BF16.
inline std::size_t block_bytes(type t) {
    return info(t).block_bytes;
}

/// The type's lower-case name: "f32", "f16", "q4_0", "q8_0", "q4_k", "bf16" (job keys, file names).
inline std::string_view name(type t) {
    return info(t).name;
}

/// Bytes of a row of `n` elements of type `t`. Throws distill::error naming the type and `n` when
/// `n` is negative or not a whole number of blocks.
inline std::size_t row_bytes(type t, std::int64_t n) {
    const std::int64_t qk = block_elements(t);
    if (n < 0 || n % qk != 0)
        throw error("quant: a " + std::string(name(t)) + " row of " + std::to_string(n) +
                    " elements is not a whole number of " + std::to_string(qk) + "-element blocks");
    return static_cast<std::size_t>(n / qk) * block_bytes(t);
}

/// The type a matrix with rows of `n` elements is stored as when `requested` is asked for: itself
/// when the rows are whole blocks; else q4_k falls back to q4_0 (llama.cpp's quantizer would pick
/// q5_0, which distill does not write) and every type to f16 (as llama.cpp's converter does).
inline type storable(type requested, std::int64_t n) {
    if (n % block_elements(requested) == 0) return requested;
    if (requested == type::Q4_K && n % block_elements(type::Q4_0) == 0) return type::Q4_0;
    return type::F16;
}

/// The type named `s`, case-insensitively ("Q4_K", "q8_0", ...). Throws config_error(field, ...)
/// listing the valid names for any other.
inline type parse(std::string_view s, const std::string& field = "export.gguf") {
    std::string lower(s);
    for (char& c : lower) c = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    for (const type_info& i : supported_types)
        if (lower == i.name) return i.id;
    throw config_error(
        field, "unknown tensor type \"" + std::string(s) + "\"; expected one of f32, f16, bf16, q8_0, q4_0, q4_k");
}

namespace detail {

/// `v`, rounded to fp32 here: the empty asm claims to change it, so the compiler cannot fuse the
/// multiply that produced it into a later add (see the file comment).
inline float rounded(float v) noexcept {
#if defined(__GNUC__) && defined(__SSE__)
    __asm__("" : "+x"(v));
#elif defined(__GNUC__) && defined(__aarch64__)
    __asm__("" : "+w"(v));
#else
    volatile float t = v;
    v = t;
#endif
    return v;
}

/// a · b rounded to fp32 (never part of an FMA).
inline float product(float a, float b) noexcept {
    return rounded(a * b);
}

/// ggml's `nearest_int`: round to nearest even by adding 1.5·2^23 and reading the mantissa; exact
/// for |v| < 2^22 and, like ggml's, garbage (but the same garbage) beyond.
inline int nearest_int(float v) noexcept {
    const float shifted = rounded(v) + 12582912.f;
    const auto bits = std::bit_cast<std::int32_t>(shifted);
    return (bits & 0x007fffff) - 0x00400000;
}

/// Throws when the row holds NaN or ±inf: ggml's quantizers would write meaningless blocks.
inline void check_finite(type t, const float* x, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i)
        if (!std::isfinite(x[i]))
            throw error("quant: cannot quantize a non-finite value (" + std::to_string(x[i]) + " at element " +
                        std::to_string(i) + ") to " + std::string(name(t)));
}

/// One Q8_0 block (ggml's quantize_row_q8_0_ref): d = max|x| / 127, q = round(x · (1/d)), halves
/// away from zero.
inline void quantize_block(const float* x, block_q8_0& b) noexcept {
    float amax = 0.0f;
    for (int j = 0; j < qk8_0; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b.d = fp32_to_fp16(d);
    for (int j = 0; j < qk8_0; ++j) b.qs[j] = static_cast<std::int8_t>(std::round(x[j] * id));
}

/// One Q4_0 block (ggml's quantize_row_q4_0_ref): d = (the signed value of largest magnitude) / −8,
/// q = min(15, trunc(x / d + 8.5)), so that extreme maps to 0 and the other end clips to 15.
inline void quantize_block(const float* x, block_q4_0& b) noexcept {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < qk4_0; ++j)
        if (amax < std::fabs(x[j])) {  // the first of equal magnitudes wins, as in ggml
            amax = std::fabs(x[j]);
            max = x[j];
        }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b.d = fp32_to_fp16(d);
    auto q = [&](float v) {  // v·id ∈ [−8, 8], so v·id + 8.5 ∈ [0.5, 16.5]: the cast truncates in range
        return static_cast<std::uint8_t>(std::min(15, static_cast<int>(product(v, id) + 8.5f)));
    };
    for (int j = 0; j < qk4_0 / 2; ++j) b.qs[j] = static_cast<std::uint8_t>(q(x[j]) | (q(x[j + qk4_0 / 2]) << 4));
}

/// ggml's `make_qkx2_quants` (weighted least squares of scale and min over levels 0..nmax, starting
/// from the range and trying nstep + 1 rescalings), as quantize_row_q4_K_ref calls it: use_mad false.
/// Writes the levels to L, the min (a positive offset to subtract) to the_min; returns the scale.
inline float make_qkx2_quants(int n, int nmax, const float* x, const float* weights, std::uint8_t* L, float* the_min,
                              std::uint8_t* Laux, float rmin, float rdelta, int nstep) noexcept {
    float min = x[0], max = x[0];
    float sum_w = weights[0];
    float sum_x = product(sum_w, x[0]);
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        const float w = weights[i];
        sum_w += w;
        sum_x += product(w, x[i]);
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = static_cast<float>(nmax) / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * (x[i] - min));
        L[i] = static_cast<std::uint8_t>(std::max(0, std::min(nmax, l)));
        const float diff = product(scale, float(L[i])) + min - x[i];
        best_error += product(weights[i], diff * diff);
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + product(rdelta, float(is)) + static_cast<float>(nmax)) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            const int l = std::max(0, std::min(nmax, nearest_int(iscale * (x[i] - min))));
            Laux[i] = static_cast<std::uint8_t>(l);
            const float w = weights[i], wl = product(w, float(l));
            sum_l += wl;
            sum_l2 += product(wl, float(l));
            sum_xl += product(wl, x[i]);
        }
        const float D = product(sum_w, sum_l2) - product(sum_l, sum_l);
        if (D > 0) {
            float this_scale = (product(sum_w, sum_xl) - product(sum_x, sum_l)) / D;
            float this_min = (product(sum_l2, sum_x) - product(sum_l, sum_xl)) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                const float diff = product(this_scale, float(Laux[i])) + this_min - x[i];
                cur_error += product(weights[i], diff * diff);
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/// Sub-block `j`'s 6-bit scale and min from a Q4_K block's 12 packed bytes (ggml's get_scale_min_k4).
inline void scale_min_k4(int j, const std::uint8_t* q, std::uint8_t& sc, std::uint8_t& m) noexcept {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = static_cast<std::uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        m = static_cast<std::uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/// One Q4_K super-block (ggml's quantize_row_q4_K_ref): per sub-block of 32 a weighted scale/min fit
/// (weights av|x| + |x|), the 8 scales and 8 mins quantized to 6 bits against their maxima (d, dmin
/// in fp16), then every element re-quantized against its sub-block's rounded scale and min.
inline void quantize_block(const float* x, block_q4_K& b) noexcept {
    std::uint8_t L[qk_k], Laux[32];
    float weights[32], mins[qk_k / 32], scales[qk_k / 32];
    float max_scale = 0, max_min = 0;  // scales are positive: the min is subtracted
    for (int j = 0; j < qk_k / 32; ++j) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += product(x[32 * j + l], x[32 * j + l]);
        const float av_x = std::sqrt(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
        scales[j] = make_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    std::memset(b.scales, 0, sizeof b.scales);
    for (int j = 0; j < qk_k / 32; ++j) {
        // ggml stores nearest_int's result in a uint8_t (modulo 256) before clamping to 63
        const auto ls = std::min<std::uint8_t>(63, static_cast<std::uint8_t>(nearest_int(inv_scale * scales[j])));
        const auto lm = std::min<std::uint8_t>(63, static_cast<std::uint8_t>(nearest_int(inv_min * mins[j])));
        if (j < 4) {
            b.scales[j] = ls;
            b.scales[j + 4] = lm;
        } else {
            b.scales[j + 4] = static_cast<std::uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
            b.scales[j - 4] |= static_cast<std::uint8_t>((ls >> 4) << 6);
            b.scales[j] |= static_cast<std::uint8_t>((lm >> 4) << 6);
        }
    }
    b.d = fp32_to_fp16(max_scale / 63.f);
    b.dmin = fp32_to_fp16(max_min / 63.f);
    for (int j = 0; j < qk_k / 32; ++j) {
        std::uint8_t sc, m;
        scale_min_k4(j, b.scales, sc, m);
        const float d = fp16_to_fp32(b.d) * sc;
        if (d == 0.0f) continue;  // keeps the levels of the fit, as ggml does
        const float dm = product(fp16_to_fp32(b.dmin), m);
        for (int i = 0; i < 32; ++i)
            L[32 * j + i] = static_cast<std::uint8_t>(std::max(0, std::min(15, nearest_int((x[32 * j + i] + dm) / d))));
    }
    for (int g = 0; g < qk_k / 64; ++g)
        for (int l = 0; l < 32; ++l)
            b.qs[32 * g + l] = static_cast<std::uint8_t>(L[64 * g + l] | (L[64 * g + 32 + l] << 4));
}

/// A Q8_0 block's 32 values: d · q.
inline void dequantize_block(const block_q8_0& b, float* y) noexcept {
    const float d = fp16_to_fp32(b.d);
    for (int j = 0; j < qk8_0; ++j) y[j] = static_cast<float>(b.qs[j]) * d;
}
/// A Q4_0 block's 32 values: d · (q − 8).
inline void dequantize_block(const block_q4_0& b, float* y) noexcept {
    const float d = fp16_to_fp32(b.d);
    for (int j = 0; j < qk4_0 / 2; ++j) {
        y[j] = static_cast<float>((b.qs[j] & 0xF) - 8) * d;
        y[j + qk4_0 / 2] = static_cast<float>((b.qs[j] >> 4) - 8) * d;
    }
}
/// A Q4_K super-block's 256 values: (d·sc) · q − (dmin·m) per sub-block, the product rounded first as
/// in ggml's dequantize_row_q4_K.
inline void dequantize_block(const block_q4_K& b, float* y) noexcept {
    const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
    for (int g = 0; g < qk_k / 64; ++g) {
        std::uint8_t sc, m;
        scale_min_k4(2 * g, b.scales, sc, m);
        const float d1 = d * sc, m1 = product(dmin, m);
        scale_min_k4(2 * g + 1, b.scales, sc, m);
        const float d2 = d * sc, m2 = product(dmin, m);
        const std::uint8_t* q = b.qs + 32 * g;
        for (int l = 0; l < 32; ++l) y[64 * g + l] = product(d1, float(q[l] & 0xF)) - m1;
        for (int l = 0; l < 32; ++l) y[64 * g + 32 + l] = product(d2, float(q[l] >> 4)) - m2;
    }
}

/// Calls f.template operator()<Block>() with the block struct of a block type (Q8_0, Q4_0, Q4_K).
template <class F>
void with_block(type t, F&& f) {
    switch (t) {
        case type::Q8_0:
            return f.template operator()<block_q8_0>();
        case type::Q4_0:
            return f.template operator()<block_q4_0>();
        case type::Q4_K:
            return f.template operator()<block_q4_K>();
        default:
            throw error("quant: " + std::string(name(t)) + " has no blocks");  // callers exclude it
    }
}

/// fp32 → F32 / F16 / BF16 elements (ggml's conversions; NaN and ±inf as ggml converts them).
inline void encode_elements(type t, const float* x, std::int64_t n, std::byte* out) noexcept {
    if (t == type::F32) return (void)std::memcpy(out, x, static_cast<std::size_t>(n) * sizeof(float));
    for (std::int64_t i = 0; i < n; ++i) {
        const std::uint16_t h = t == type::F16 ? fp32_to_fp16(x[i]) : fp32_to_bf16(x[i]);
        std::memcpy(out + 2 * i, &h, 2);
    }
}

/// F32 / F16 / BF16 elements → fp32 (exact).
inline void decode_elements(type t, const std::byte* in, std::int64_t n, float* y) noexcept {
    if (t == type::F32) return (void)std::memcpy(y, in, static_cast<std::size_t>(n) * sizeof(float));
    for (std::int64_t i = 0; i < n; ++i) {
        std::uint16_t h;
        std::memcpy(&h, in + 2 * i, 2);
        y[i] = t == type::F16 ? fp16_to_fp32(h) : bf16_to_fp32(h);
    }
}

/// v rounded to the nearest integer, halves to even, in any floating-point environment.
inline float round_half_even(float v) noexcept {
#if defined(__has_builtin)
#if __has_builtin(__builtin_roundevenf)
    return __builtin_roundevenf(v);
#endif
#endif
    return std::nearbyint(v);  // the default environment rounds halves to even
}

/// One Q8_0 block of activations as ggml's CPU backend quantizes them on x86 (`quantize_row_q8_0`
/// of ggml-cpu, AVX path), which differs from the weights' reference rule in two roundings:
/// q = round-half-even(x · (127 / max|x|)), and d = max|x| / 127 is stored as fp16 after, not before,
/// the quants are computed.
/// (The loops are written so that compilers vectorize them: activations are converted on every call.)
inline void quantize_activation_block(const float* x, block_q8_0& b) noexcept {
    float amax = 0.0f;
    for (int j = 0; j < qk8_0; ++j) amax = std::fabs(x[j]) > amax ? std::fabs(x[j]) : amax;
    b.d = fp32_to_fp16(amax / 127.0f);
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    float q[qk8_0];
    for (int j = 0; j < qk8_0; ++j) q[j] = round_half_even(x[j] * id);
    for (int j = 0; j < qk8_0; ++j) b.qs[j] = static_cast<std::int8_t>(q[j]);
}

/// One Q8_K block (ggml's quantize_row_q8_K_ref, which the CPU backend uses on x86): the element
/// of largest magnitude, `max`, maps to −127; q = min(127, round-half-even(x · (−127 / max))),
/// d = 1 / (−127 / max), and bsums the sums of 16 quants. An all-zero block is d = 0, quants 0.
inline void quantize_activation_block(const float* x, block_q8_K& b) noexcept {
    float amax = 0.0f;
    for (int j = 0; j < qk_k; ++j) amax = std::fabs(x[j]) > amax ? std::fabs(x[j]) : amax;
    b = block_q8_K{};
    if (amax == 0.0f) return;
    int first = 0;  // ggml's `max`: the first element of that magnitude, with its sign
    while (first < qk_k - 1 && std::fabs(x[first]) != amax) ++first;  // (bounded for NaN)
    const float iscale = -127.0f / x[first];
    float q[qk_k];
    for (int j = 0; j < qk_k; ++j) {
        const float r = round_half_even(x[j] * iscale);
        q[j] = r < 127.0f ? r : 127.0f;
    }
    for (int j = 0; j < qk_k; ++j) b.qs[j] = static_cast<std::int8_t>(q[j]);
    for (int j = 0; j < qk_k / 16; ++j) {
        int sum = 0;
        for (int i = 0; i < 16; ++i) sum += b.qs[16 * j + i];
        b.bsums[j] = static_cast<std::int16_t>(sum);
    }
    b.d = 1.0f / iscale;
}

}  // namespace detail

/// The row of activations ggml's CPU backend multiplies a row of weights of type `weight` with
/// (its `vec_dot_type`): the weight type itself for F32, F16 and BF16 (the activations rounded to
/// it), Q8_0 blocks for Q8_0 and Q4_0 weights, Q8_K blocks (`block_q8_K`) for Q4_K. `quant_matmul`
/// multiplies these, so that a quantized student computes what llama.cpp computes from its GGUF file.
/// Bytes of such a row of `n` activations; throws distill::error as `row_bytes(weight, n)` does.
inline std::size_t activation_row_bytes(type weight, std::int64_t n) {
    const std::size_t weight_bytes = row_bytes(weight, n);  // validates n against the weight's blocks
    switch (weight) {
        case type::Q8_0:
        case type::Q4_0:
            return static_cast<std::size_t>(n / qk8_0) * sizeof(block_q8_0);
        case type::Q4_K:
            return static_cast<std::size_t>(n / qk_k) * sizeof(block_q8_K);
        default:
            return weight_bytes;
    }
}

/// Converts `n` activations at `x` to the form `activation_row_bytes` describes, writing that many
/// bytes to `out` (any alignment): the bytes ggml's CPU backend (x86) writes. Non-finite activations
/// give meaningless blocks, as in ggml; callers check their inputs.
inline void quantize_activations(type weight, const float* x, std::int64_t n, std::byte* out) {
    (void)activation_row_bytes(weight, n);
    auto blocks = [&]<class Block>() {
        for (std::int64_t i = 0; i < n / Block::elements; ++i) {
            Block b;
            detail::quantize_activation_block(x + i * Block::elements, b);
            std::memcpy(out + i * std::int64_t(sizeof(Block)), &b, sizeof(Block));
        }
    };
    if (weight == type::Q8_0 || weight == type::Q4_0)
        blocks.template operator()<block_q8_0>();
    else if (weight == type::Q4_K)
        blocks.template operator()<block_q8_K>();
    else
        detail::encode_elements(weight, x, n, out);
}

namespace detail {
/// Quant of element `c` of a Q4_0 block, as an offset from 8 (file comment).
inline int q4_0_quant(const quant::block_q4_0& b, int c) noexcept {
    return (c < 16 ? b.qs[c] & 0xF : b.qs[c - 16] >> 4) - 8;
}

}  // namespace detail

/// Quantizes the `n` floats at `x` to type `t`, writing `row_bytes(t, n)` bytes to `out` (any
/// alignment): the bytes ggml's reference quantizer writes. Throws distill::error when `n` is not a
/// whole number of blocks, or, for Q8_0, Q4_0 and Q4_K, when the row holds NaN or ±inf (F16 and BF16
/// convert those as ggml does).
inline void quantize_row(type t, const float* x, std::int64_t n, std::byte* out) {
    if (row_bytes(t, n) == 0) return;  // validates t and n
    if (block_elements(t) == 1) return detail::encode_elements(t, x, n, out);
    detail::check_finite(t, x, n);
    detail::with_block(t, [&]<class Block>() {
        for (std::int64_t i = 0; i < n / Block::elements; ++i) {
            Block b{};  // through a local: `out` need not be aligned
            detail::quantize_block(x + i * Block::elements, b);
            std::memcpy(out + i * std::int64_t(sizeof(Block)), &b, sizeof(Block));
        }
    });
}

/// Dequantizes a row of `n` elements of type `t` at `in` (any alignment) into `y`: ggml's
/// `dequantize_row_*`. Throws distill::error when `n` is not a whole number of blocks.
inline void dequantize_row(type t, const std::byte* in, std::int64_t n, float* y) {
    if (row_bytes(t, n) == 0) return;
    if (block_elements(t) == 1) return detail::decode_elements(t, in, n, y);
    detail::with_block(t, [&]<class Block>() {
        for (std::int64_t i = 0; i < n / Block::elements; ++i) {
            Block b;
            std::memcpy(&b, in + i * std::int64_t(sizeof(Block)), sizeof(Block));
            detail::dequantize_block(b, y + i * Block::elements);
        }
    });
}

/// One weight row of k elements of type `t` (at `w`) times one activation row converted by
/// `quantize_activations(t, ...)` (at `a`), as ggml's CPU `vec_dot` computes it, in plain loops: Σ_blocks d_w · d_a · Σ
/// q_w · q_a, and for Q4_K Σ_super-blocks d_a · (d · Σ_s sc_s · Σ q_w · q_a − dmin · Σ_s m_s · Σ q_a).
inline float vec_dot(type t, const std::byte* w, const std::byte* a, std::int64_t k) {
    auto load = [](const std::byte* p, std::int64_t i, auto& block) {
        std::memcpy(&block, p + i * std::int64_t(sizeof block), sizeof block);
    };
    float sum = 0;
    if (t == type::Q8_0 || t == type::Q4_0) {
        for (std::int64_t i = 0; i < k / qk8_0; ++i) {
            block_q8_0 x;
            load(a, i, x);
            int isum = 0;
            float d;
            if (t == type::Q8_0) {
                block_q8_0 b;
                load(w, i, b);
                for (int c = 0; c < qk8_0; ++c) isum += b.qs[c] * x.qs[c];
                d = fp16_to_fp32(b.d);
            } else {
                block_q4_0 b;
                load(w, i, b);
                for (int c = 0; c < qk4_0; ++c) isum += detail::q4_0_quant(b, c) * x.qs[c];
                d = fp16_to_fp32(b.d);
            }
            sum += d * fp16_to_fp32(x.d) * static_cast<float>(isum);
        }
    } else if (t == type::Q4_K) {
        for (std::int64_t i = 0; i < k / qk_k; ++i) {
            block_q4_K b;
            block_q8_K x;
            load(w, i, b);
            load(a, i, x);
            int isum = 0, msum = 0;
            for (int s = 0; s < 8; ++s) {  // sub-block s: elements 32s..32s+31
                std::uint8_t sc, m;
                detail::scale_min_k4(s, b.scales, sc, m);
                int dot = 0;
                for (int c = 0; c < 32; ++c) {
                    const std::uint8_t byte = b.qs[32 * (s / 2) + c];
                    dot += (s % 2 ? byte >> 4 : byte & 0xF) * x.qs[32 * s + c];
                }
                isum += sc * dot;
                msum += m * (x.bsums[2 * s] + x.bsums[2 * s + 1]);
            }
            sum += x.d * fp16_to_fp32(b.d) * static_cast<float>(isum) -
                   x.d * fp16_to_fp32(b.dmin) * static_cast<float>(msum);
        }
    } else {  // F32, F16, BF16: both operands in the weight's type
        std::vector<float> wf(static_cast<std::size_t>(k)), af(wf.size());
        dequantize_row(t, w, k, wf.data());
        dequantize_row(t, a, k, af.data());
        for (std::int64_t c = 0; c < k; ++c) sum += wf[std::size_t(c)] * af[std::size_t(c)];
    }
    return sum;
}

}  // namespace distill::quant
