#pragma once
/// @file cpu/isa.hpp
/// The instruction set of `device::Cpu`'s hot fp32 row kernels (LayerNorm, RMSNorm, GELU, SwiGLU,
/// the causal softmax, the bias add, one decoding step's attention) and of the fused attention's tile kernels
/// (`tile_gemm`, `transpose`, the tile softmax; `cpu/flash_attention.hpp`), chosen at run time, so a program built with
/// plain Release flags (no -march) still runs them on AVX2 or AVX-512 where the CPU has it (oneDNN's GEMMs already
/// choose theirs at run time).
///
/// One mechanism: a kernel is a struct with a `run<V>` template written once with GCC/Clang vector
/// extensions on `V`'s registers (16, 32 or 64 bytes of floats). `run_kernel<K>(isa, args...)`
/// calls it through a wrapper compiled with `__attribute__((target("avx2,fma")))` or
/// `target("avx512f,...")` and `flatten`, so the body is inlined and compiled for that ISA. Why not
/// Eigen's arrays: Eigen picks its packet width from the compile-time macros (__AVX2__), not from a
/// function's target attribute. Why not `target_clones`: it resolves each function through an ifunc
/// symbol, which inline and template functions of a header, emitted in every translation unit, make
/// fragile; a switch on a cached value per row costs nothing next to the row. The switch sits inside
/// the per-thread loop bodies, so each `parallel_for` body calls the ISA's wrapper.
///
/// A build that already targets AVX-512 (-march=native on such a host) has no dispatch: the kernels
/// are called directly at its width, the same source the AVX-512 wrapper runs in a plain build. The
/// two agree to rounding, not to the bit: the compiler contracts products into FMAs differently in a
/// target("...") wrapper than under -march (with -ffp-contract=off both give the same bits).
///
/// The choice: the best of SSE2 (128-bit), AVX2+FMA, AVX-512 (F, BW, DQ, VL) the CPU has
/// (`__builtin_cpu_supports`), capped by the environment variable DISTILL_CPU_ISA=sse2|avx2|avx512
/// (read once), or by `detail::force_cpu_isa` (tests).

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "distill/error.hpp"

namespace distill::device {

/// The row kernels' instruction sets, narrowest first.
enum class cpu_isa : int { sse2 = 0, avx2 = 1, avx512 = 2 };

inline const char* to_string(cpu_isa i) noexcept {
    switch (i) {
        case cpu_isa::avx512:
            return "avx512";
        case cpu_isa::avx2:
            return "avx2";
        default:
            return "sse2";
    }
}

namespace detail {

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define DISTILL_ISA_FIXED 1  // the widest the row kernels know: no run-time choice left
inline constexpr cpu_isa compiled_isa = cpu_isa::avx512;
#elif defined(__AVX2__) && defined(__FMA__)
inline constexpr cpu_isa compiled_isa = cpu_isa::avx2;
#else
inline constexpr cpu_isa compiled_isa = cpu_isa::sse2;
#endif

#if !defined(DISTILL_ISA_FIXED) && (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define DISTILL_ISA_DISPATCH 1
#endif

/// What the CPU runs (never less than the build's own ISA).
inline cpu_isa detected_cpu_isa() noexcept {
#if defined(DISTILL_ISA_DISPATCH)
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return cpu_isa::avx512;
    if (avx2) return cpu_isa::avx2;
#endif
    return compiled_isa;
}

/// DISTILL_CPU_ISA parsed: the cap, or the widest when unset.
inline cpu_isa env_cpu_isa_cap() {
    const char* env = std::getenv("DISTILL_CPU_ISA");
    if (!env || !*env) return cpu_isa::avx512;
    const std::string v = env;
    if (v == "sse2") return cpu_isa::sse2;
    if (v == "avx2") return cpu_isa::avx2;
    if (v == "avx512") return cpu_isa::avx512;
    throw config_error("DISTILL_CPU_ISA", "expected sse2, avx2 or avx512, got \"" + v + "\"");
}

inline std::atomic<int>& forced_cpu_isa() noexcept {
    static std::atomic<int> forced{-1};
    return forced;
}

/// Tests: run the row kernels on `isa` (capped at what the CPU has) until called again; -1 restores
/// the default. Ignored where the build has no run-time choice (`DISTILL_ISA_FIXED`).
inline void force_cpu_isa(int isa) noexcept {
    forced_cpu_isa().store(isa, std::memory_order_relaxed);
}

}  // namespace detail

/// The instruction set `device::Cpu`'s row kernels run on in this process.
inline cpu_isa row_kernel_isa() {
#if defined(DISTILL_ISA_FIXED)
    return detail::compiled_isa;
#else
    // between the build's own ISA (its floor: its baseline code is compiled for it) and the CPU's
    const auto clamp = [](cpu_isa want, cpu_isa have) {
        const int w = static_cast<int>(want), h = static_cast<int>(have), c = static_cast<int>(detail::compiled_isa);
        return static_cast<cpu_isa>(w > h ? h : w < c ? c : w);
    };
    static const cpu_isa detected = detail::detected_cpu_isa();
    const int forced = detail::forced_cpu_isa().load(std::memory_order_relaxed);
    if (forced >= 0) return clamp(static_cast<cpu_isa>(forced), detected);
    static const cpu_isa chosen = clamp(detail::env_cpu_isa_cap(), detected);
    return chosen;
#endif
}

namespace detail::rowk {

#if defined(__CUDA_ARCH__)
// nvcc's device pass parses host code it never compiles, and its front end (cicc, CUDA 12) crashes
// on the kernels below: it sees declarations only.
struct add_row;
struct gelu_forward;
struct gelu_backward;
struct softmax_forward;
struct softmax_backward;
struct layernorm_forward;
struct layernorm_backward;
struct rmsnorm_forward;
struct rmsnorm_backward;
struct swiglu_forward;
struct swiglu_backward;
struct tile_gemm;
struct transpose;
struct flash_softmax_tile;
struct flash_probabilities;
struct flash_scores_grad;
struct decode_attention;
template <class K, class... A>
void run_kernel(cpu_isa, A...);
#else

#define DISTILL_ROW_INLINE [[gnu::always_inline]] inline

/// The registers of one width: `f` floats and `i` int32s, `width` lanes (spelled per width: GCC
/// drops a vector_size that depends on a template parameter).
template <int Bytes>
struct vec;
#define DISTILL_ROW_VEC(bytes)                                      \
    template <>                                                     \
    struct vec<bytes> {                                             \
        using f = float __attribute__((vector_size(bytes)));        \
        using i = std::int32_t __attribute__((vector_size(bytes))); \
        static constexpr int width = bytes / 4;                     \
    };
DISTILL_ROW_VEC(16)
DISTILL_ROW_VEC(32)
DISTILL_ROW_VEC(64)
#undef DISTILL_ROW_VEC

#if defined(DISTILL_ISA_FIXED)
using native_vec = vec<64>;
#elif defined(__AVX2__) && defined(__FMA__)
using native_vec = vec<32>;
#else
using native_vec = vec<16>;
#endif

// Vectors travel by reference only: a vector wider than the baseline's passed or returned by value
// from a function compiled without AVX is an ABI change GCC warns about (-Wpsabi) at the end of every
// translation unit, even where the function is always inlined.

template <class V>
DISTILL_ROW_INLINE void load(typename V::f& v, const float* p) noexcept {
    __builtin_memcpy(&v, p, sizeof v);
}
/// The first n (< width) lanes from p, the others `fill`.
template <class V>
DISTILL_ROW_INLINE void load_n(typename V::f& v, const float* p, std::int64_t n, float fill) noexcept {
    float buf[V::width];
    for (int k = 0; k < V::width; ++k) buf[k] = fill;
    __builtin_memcpy(buf, p, sizeof(float) * std::size_t(n));
    __builtin_memcpy(&v, buf, sizeof v);
}
template <class V>
DISTILL_ROW_INLINE void store(float* p, const typename V::f& v) noexcept {
    __builtin_memcpy(p, &v, sizeof v);
}
template <class V>
DISTILL_ROW_INLINE void store_n(float* p, const typename V::f& v, std::int64_t n) noexcept {
    __builtin_memcpy(p, &v, sizeof(float) * std::size_t(n));
}
/// out = mask ? a : b, lane by lane (mask from a comparison: all ones or zero).
template <class V>
DISTILL_ROW_INLINE void select(typename V::f& out, const typename V::i& mask, const typename V::f& a,
                               const typename V::f& b) noexcept {
    using I = typename V::i;
    using F = typename V::f;
    out = (F)(((I)a & mask) | ((I)b & ~mask));
}
/// out lane k = (a | b) lane M_k: a's lanes are 0..width-1, b's width..2 width-1 (GCC's
/// __builtin_shuffle, which GCC has had since 4.7; Clang's __builtin_shufflevector).
template <class V, int... M>
DISTILL_ROW_INLINE void shuffle(typename V::f& out, const typename V::f& a, const typename V::f& b) noexcept {
#if defined(__clang__)
    out = __builtin_shufflevector(a, b, M...);
#else
    out = __builtin_shuffle(a, b, typename V::i{M...});
#endif
}
/// v's lanes moved down by w (lane k gets lane k + w; the upper w lanes are don't-cares).
template <class V, int w, int... I>
DISTILL_ROW_INLINE void shift_down(typename V::f& out, const typename V::f& v,
                                   std::integer_sequence<int, I...>) noexcept {
    shuffle<V, ((I + w) % V::width)...>(out, v, v);
}
/// The lanes' sum, pairwise in a fixed order: lane k += lane k + w for w = width/2, ..., 1.
template <class V, int w = V::width / 2>
DISTILL_ROW_INLINE float hsum(const typename V::f& v) noexcept {
    if constexpr (w == 0) {
        return v[0];
    } else {
        typename V::f hi;
        shift_down<V, w>(hi, v, std::make_integer_sequence<int, V::width>{});
        const typename V::f s = v + hi;
        return hsum<V, w / 2>(s);
    }
}
/// The lanes' maximum, in the same order as hsum.
template <class V, int w = V::width / 2>
DISTILL_ROW_INLINE float hmax(const typename V::f& v) noexcept {
    if constexpr (w == 0) {
        return v[0];
    } else {
        typename V::f hi, m;
        shift_down<V, w>(hi, v, std::make_integer_sequence<int, V::width>{});
        select<V>(m, hi > v, hi, v);
        return hmax<V, w / 2>(m);
    }
}

/// x = e^x (Cephes' expf, as Eigen's: x = m ln2 + r, |r| <= ln2/2, a degree-5 polynomial for e^r),
/// within 2 ulp for normal results; 0 below -104 (and for -inf), +inf above 88.72 (and for +inf).
template <class V>
DISTILL_ROW_INLINE void exp(typename V::f& x) noexcept {
    using F = typename V::f;
    using I = typename V::i;
    const float hi = 88.72283935546875f, lo = -104.0f;
    const I over = x > hi, under = x < lo;
    F xc = x;
    select<V>(xc, over, F{} + hi, xc);
    select<V>(xc, under, F{} + lo, xc);
    // m = round(x log2 e): adding and subtracting 1.5 * 2^23 rounds to an integer
    const float magic = 12582912.0f;
    const F m = (xc * 1.44269504088896341f + magic) - magic;
    F r = xc - m * 0.693359375f;  // ln 2 in two parts, the first exact in 9 bits
    r = r - m * -2.12194440e-4f;
    const F r2 = r * r;
    F y = F{} + 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * r2 + r + 1.0f;
    // y 2^m as two factors, each a normal power of two, so results down to the subnormals round once
    const I mi = __builtin_convertvector(m, I);
    const I m1 = mi >> 1, m2 = mi - m1;
    y = y * (F)((m1 + 127) << 23) * (F)((m2 + 127) << 23);
    select<V>(y, over, F{} + std::numeric_limits<float>::infinity(), y);
    select<V>(x, under, F{}, y);
}

// ---- the kernels: K::run<V>(args...) on one row or range -----------------------------------------

/// out = gelu_tanh(x) = x / (1 + e^(-2u)), u = k (x + 0.044715 x^3).
struct gelu_forward {
    template <class V>
    DISTILL_ROW_INLINE static void one(typename V::f& x) {
        typename V::f e = (x + x * x * x * 0.044715f) * (-2.0f * 0.7978845608028654f);
        exp<V>(e);
        x = x / (e + 1.0f);
    }
    template <class V>
    DISTILL_ROW_INLINE static void run(float* out, const float* in, std::int64_t n) {
        typename V::f x;
        std::int64_t i = 0;
        for (; i + V::width <= n; i += V::width) {
            load<V>(x, in + i);
            one<V>(x);
            store<V>(out + i, x);
        }
        if (i < n) {
            load_n<V>(x, in + i, n - i, 0.0f);
            one<V>(x);
            store_n<V>(out + i, x, n - i);
        }
    }
};

/// din = dout (s + 2 x u' s (1 - s)), s = sigmoid(2u), s (1 - s) = e / (1 + e)^2 with e = e^(-2|u|).
struct gelu_backward {
    template <class V>
    DISTILL_ROW_INLINE static void one(typename V::f& dy, const typename V::f& x) {
        using F = typename V::f;
        using I = typename V::i;
        constexpr float k = 0.7978845608028654f;
        const F u = (x + x * x * x * 0.044715f) * k;
        F e = (F)((I)u & 0x7fffffff) * -2.0f;  // -2|u|
        exp<V>(e);
        const F r = 1.0f / (e + 1.0f), er = e * r;  // one division (the slowest instruction here) for three
        F sig;
        select<V>(sig, u >= 0.0f, r, er);
        const F sig_1m = er * r;
        const F du = (x * x * (3 * 0.044715f) + 1.0f) * k;
        dy = dy * (sig + x * 2.0f * du * sig_1m);
    }
    template <class V>
    DISTILL_ROW_INLINE static void run(float* din, const float* in, const float* dout, std::int64_t n) {
        typename V::f x, dy;
        std::int64_t i = 0;
        for (; i + V::width <= n; i += V::width) {
            load<V>(x, in + i);
            load<V>(dy, dout + i);
            one<V>(dy, x);
            store<V>(din + i, dy);
        }
        if (i < n) {
            load_n<V>(x, in + i, n - i, 0.0f);
            load_n<V>(dy, dout + i, n - i, 0.0f);
            one<V>(dy, x);
            store_n<V>(din + i, dy, n - i);
        }
    }
};

/// row[0, n) = softmax((row - max) scale), in place.
struct softmax_forward {
    template <class V>
    DISTILL_ROW_INLINE static void run(float* row, std::int64_t n, float scale) {
        using F = typename V::f;
        const float ninf = -std::numeric_limits<float>::infinity();
        F mv = F{} + ninf, x;
        std::int64_t i = 0;
        for (; i + V::width <= n; i += V::width) {
            load<V>(x, row + i);
            select<V>(mv, x > mv, x, mv);
        }
        if (i < n) {
            load_n<V>(x, row + i, n - i, ninf);
            select<V>(mv, x > mv, x, mv);
        }
        const float mx = hmax<V>(mv);  // the raw maximum: (x - max)·scale keeps the low bits
        F sv{};
        for (i = 0; i + V::width <= n; i += V::width) {
            load<V>(x, row + i);
            x = (x - mx) * scale;
            exp<V>(x);
            store<V>(row + i, x);
            sv += x;
        }
        if (i < n) {
            load_n<V>(x, row + i, n - i, ninf);  // e^-inf = 0 past n
            x = (x - mx) * scale;
            exp<V>(x);
            store_n<V>(row + i, x, n - i);
            sv += x;
        }
        const float s = hsum<V>(sv);
        for (i = 0; i + V::width <= n; i += V::width) {
            load<V>(x, row + i);
            store<V>(row + i, x / s);
        }
        if (i < n) {
            load_n<V>(x, row + i, n - i, 0.0f);
            store_n<V>(row + i, x / s, n - i);
        }
    }
};

/// ds[0, n) = scale p (d - p·d); ds may alias d.
struct softmax_backward {
    template <class V>
    DISTILL_ROW_INLINE static void run(float* ds, const float* p, const float* d, std::int64_t n, float scale) {
        using F = typename V::f;
        F acc{}, pv, dv;
        std::int64_t i = 0;
        for (; i + V::width <= n; i += V::width) {
            load<V>(pv, p + i);
            load<V>(dv, d + i);
            acc += pv * dv;
        }
        if (i < n) {
            load_n<V>(pv, p + i, n - i, 0.0f);
            load_n<V>(dv, d + i, n - i, 0.0f);
            acc += pv * dv;
        }
        const float dot = hsum<V>(acc);
        for (i = 0; i + V::width <= n; i += V::width) {
            load<V>(pv, p + i);
            load<V>(dv, d + i);
            store<V>(ds + i, pv * scale * (dv - dot));
        }
        if (i < n) {
            load_n<V>(pv, p + i, n - i, 0.0f);
            load_n<V>(dv, d + i, n - i, 0.0f);
            store_n<V>(ds + i, pv * scale * (dv - dot), n - i);
        }
    }
};

/// out[0, n) += b[0, n).
struct add_row {
    template <class V>
    DISTILL_ROW_INLINE static void run(float* out, const float* b, std::int64_t n) {
        typename V::f x, y;
        std::int64_t i = 0;
        for (; i + V::width <= n; i += V::width) {
            load<V>(x, out + i);
            load<V>(y, b + i);
            store<V>(out + i, x + y);
        }
        for (; i < n; ++i) out[i] += b[i];
    }
};

/// The lanes of the vector at i of a row of n: width, or what is left.
template <class V>
DISTILL_ROW_INLINE std::int64_t lanes(std::int64_t n, std::int64_t i) noexcept {
    return n - i < V::width ? n - i : V::width;
}
/// Loads `n` lanes (a full vector when n == width) from p, zero past n.
template <class V>
DISTILL_ROW_INLINE void load_z(typename V::f& v, const float* p, std::int64_t n) noexcept {
    if (n == V::width)
        load<V>(v, p);
    else
        load_n<V>(v, p, n, 0.0f);
}
template <class V>
DISTILL_ROW_INLINE void store_z(float* p, const typename V::f& v, std::int64_t n) noexcept {
    if (n == V::width)
        store<V>(p, v);
    else
        store_n<V>(p, v, n);
}

/// LayerNorm of one row of C: out = (x - mean) rstd w + b, mean and rstd stored.
struct layernorm_forward {
    template <class V>
    DISTILL_ROW_INLINE static void run(float* out, float* mean, float* rstd, const float* x, const float* w,
                                       const float* b, std::int64_t C, float eps) {
        using F = typename V::f;
        F acc{}, v, wv, bv;
        for (std::int64_t i = 0; i < C; i += V::width) {
            load_z<V>(v, x + i, lanes<V>(C, i));
            acc += v;
        }
        const float m = hsum<V>(acc) / float(C);
        acc = F{};
        for (std::int64_t i = 0; i < C; i += V::width) {
            const std::int64_t n = lanes<V>(C, i);
            if (n == V::width)
                load<V>(v, x + i);
            else
                load_n<V>(v, x + i, n, m);  // (m - m)^2 = 0 past n
            v -= m;
            acc += v * v;
        }
        const float s = 1.0f / __builtin_sqrtf(hsum<V>(acc) / float(C) + eps);
        for (std::int64_t i = 0; i < C; i += V::width) {
            const std::int64_t n = lanes<V>(C, i);
            load_z<V>(v, x + i, n);
            load_z<V>(wv, w + i, n);
            load_z<V>(bv, b + i, n);
            store_z<V>(out + i, (v - m) * s * wv + bv, n);
        }
        *mean = m;
        *rstd = s;
    }
};

/// LayerNorm backward, one row: dx += rstd (g - mean(g) - xhat mean(g xhat)), g = dy w.
struct layernorm_backward {
    template <class V>
    DISTILL_ROW_INLINE static void run(float* dx, const float* x, const float* dy, const float* w, float mean,
                                       float rstd, std::int64_t C) {
        using F = typename V::f;
        F ga{}, gxa{}, d, wv, xv, o;
        for (std::int64_t i = 0; i < C; i += V::width) {
            const std::int64_t n = lanes<V>(C, i);
            load_z<V>(d, dy + i, n);
            load_z<V>(wv, w + i, n);
            load_z<V>(xv, x + i, n);
            ga += d * wv;
            gxa += d * wv * ((xv - mean) * rstd);
        }
        const float g_mean = hsum<V>(ga) / float(C), gx_mean = hsum<V>(gxa) / float(C);
        for (std::int64_t i = 0; i < C; i += V::width) {
            const std::int64_t n = lanes<V>(C, i);
            load_z<V>(d, dy + i, n);
            load_z<V>(wv, w + i, n);
            load_z<V>(xv, x + i, n);
            load_z<V>(o, dx + i, n);
            store_z<V>(dx + i, o + (d * wv - g_mean - (xv - mean) * rstd * gx_mean) * rstd, n);
        }
    }
};

/// RMSNorm of one row of C: out = x rstd w, rstd stored.
struct rmsnorm_forward {
    template <class V>
    DISTILL_ROW_INLINE static void run(float* out, float* rstd, const float* x, const float* w, std::int64_t C,
                                       float eps) {
        using F = typename V::f;
        F acc{}, v, wv;
        for (std::int64_t i = 0; i < C; i += V::width) {
            load_z<V>(v, x + i, lanes<V>(C, i));
            acc += v * v;
        }
        const float s = 1.0f / __builtin_sqrtf(hsum<V>(acc) / float(C) + eps);
        for (std::int64_t i = 0; i < C; i += V::width) {
            const std::int64_t n = lanes<V>(C, i);
            load_z<V>(v, x + i, n);
            load_z<V>(wv, w + i, n);
            store_z<V>(out + i, v * s * wv, n);
        }
        *rstd = s;
    }
};

/// RMSNorm backward, one row: dx += rstd (dy w - x rstd^2 mean(dy w x)).
struct rmsnorm_backward {
    template <class V>
    DISTILL_ROW_INLINE static void run(float* dx, const float* x, const float* dy, const float* w, float rstd,
                                       std::int64_t C) {
        using F = typename V::f;
        F acc{}, d, wv, xv, o;
        for (std::int64_t i = 0; i < C; i += V::width) {
            const std::int64_t n = lanes<V>(C, i);
            load_z<V>(d, dy + i, n);
            load_z<V>(wv, w + i, n);
            load_z<V>(xv, x + i, n);
            acc += d * wv * xv;
        }
        const float gx_mean = hsum<V>(acc) / float(C) * rstd;
        for (std::int64_t i = 0; i < C; i += V::width) {
            const std::int64_t n = lanes<V>(C, i);
            load_z<V>(d, dy + i, n);
            load_z<V>(wv, w + i, n);
            load_z<V>(xv, x + i, n);
            load_z<V>(o, dx + i, n);
            store_z<V>(dx + i, o + (d * wv - xv * (rstd * gx_mean)) * rstd, n);
        }
    }
};

/// SwiGLU, one row: out[0, F) = silu(g) u with g = in[0, F), u = in[F, 2F).
struct swiglu_forward {
    template <class V>
    DISTILL_ROW_INLINE static void run(float* out, const float* in, std::int64_t Fn) {
        using F = typename V::f;
        F g, u, e;
        for (std::int64_t i = 0; i < Fn; i += V::width) {
            const std::int64_t n = lanes<V>(Fn, i);
            load_z<V>(g, in + i, n);
            load_z<V>(u, in + Fn + i, n);
            e = -g;
            exp<V>(e);
            store_z<V>(out + i, g / (e + 1.0f) * u, n);
        }
    }
};

/// SwiGLU backward, one row: din = dout u silu'(g) | dout silu(g), silu'(g) = s (1 + g (1 - s)).
struct swiglu_backward {
    template <class V>
    DISTILL_ROW_INLINE static void run(float* din, const float* in, const float* dout, std::int64_t Fn) {
        using F = typename V::f;
        F g, u, d, e;
        for (std::int64_t i = 0; i < Fn; i += V::width) {
            const std::int64_t n = lanes<V>(Fn, i);
            load_z<V>(g, in + i, n);
            load_z<V>(u, in + Fn + i, n);
            load_z<V>(d, dout + i, n);
            e = -g;
            exp<V>(e);
            const F sig = 1.0f / (e + 1.0f);
            store_z<V>(din + i, d * u * sig * ((1.0f - sig) * g + 1.0f), n);
            store_z<V>(din + Fn + i, d * g * sig, n);
        }
    }
};

// ---- the fused attention's tile kernels (cpu/flash_attention.hpp) ------------------------------

/// C(M,N) = alpha A B, or C += alpha A B (`accumulate`): B and C row-major (ldb, ldc), A(i,k) at
/// a[i ai + k ak] (ai = lda, ak = 1 for A; ai = 1, ak = lda for a transposed A). Register-blocked
/// broadcast FMA: a block of `rows` rows × `vecs` vectors of C stays in registers over k, each step
/// loading a row of B (contiguous) and broadcasting one element of A per row. Columns past the last
/// whole vector run in scalar code (a head size that is not a multiple of the width; the attention
/// rounds its score tiles up to 16 columns, so they have none). No packing: the operands are tiles of
/// at most 64 × 128 that sit in L1/L2. Each element's sum runs over k in order, in one lane: the bits
/// do not depend on addresses or on the thread.
struct tile_gemm {
    template <class V>
    static constexpr int rows = V::width == 4 ? 4 : 6;  // 24, 12, 8 accumulators on 32, 16, 16 registers
    template <class V>
    static constexpr int vecs = V::width == 16 ? 4 : 2;

    template <class V, int MR, int NV>
    DISTILL_ROW_INLINE static void block(int K, float alpha, const float* a, std::int64_t ai, std::int64_t ak,
                                         const float* b, std::int64_t ldb, float* c, std::int64_t ldc,
                                         bool accumulate) {
        using F = typename V::f;
        F acc[MR][NV], bk[NV];
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
            for (int j = 0; j < NV; ++j) acc[i][j] = F{};
        for (int k = 0; k < K; ++k) {
            const float* bp = b + std::int64_t(k) * ldb;
#pragma GCC unroll 8
            for (int j = 0; j < NV; ++j) load<V>(bk[j], bp + j * V::width);
            const float* ap = a + std::int64_t(k) * ak;
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i) {
                const float x = ap[i * ai];
#pragma GCC unroll 8
                for (int j = 0; j < NV; ++j) acc[i][j] += x * bk[j];
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
            for (int j = 0; j < NV; ++j) {
                float* cp = c + i * ldc + j * V::width;
                F out = acc[i][j] * alpha;
                if (accumulate) {
                    F old;
                    load<V>(old, cp);
                    out += old;
                }
                store<V>(cp, out);
            }
    }
    // rows [0, M) of one column block of NV vectors: blocks of `rows`, then one block of what is left
    template <class V, int NV, int MR>
    DISTILL_ROW_INLINE static void tail(int left, int K, float alpha, const float* a, std::int64_t ai, std::int64_t ak,
                                        const float* b, std::int64_t ldb, float* c, std::int64_t ldc, bool accumulate) {
        if constexpr (MR > 0) {
            if (left == MR) return block<V, MR, NV>(K, alpha, a, ai, ak, b, ldb, c, ldc, accumulate);
            tail<V, NV, MR - 1>(left, K, alpha, a, ai, ak, b, ldb, c, ldc, accumulate);
        }
    }
    template <class V, int NV>
    DISTILL_ROW_INLINE static void panel(int M, int K, float alpha, const float* a, std::int64_t ai, std::int64_t ak,
                                         const float* b, std::int64_t ldb, float* c, std::int64_t ldc,
                                         bool accumulate) {
        constexpr int MR = rows<V>;
        int i = 0;
        for (; i + MR <= M; i += MR)
            block<V, MR, NV>(K, alpha, a + i * ai, ai, ak, b, ldb, c + i * ldc, ldc, accumulate);
        if (i < M) tail<V, NV, MR - 1>(M - i, K, alpha, a + i * ai, ai, ak, b, ldb, c + i * ldc, ldc, accumulate);
    }
    // the last column block: NV (< vecs) whole vectors
    template <class V, int NV>
    DISTILL_ROW_INLINE static void last_panel(int nv, int M, int K, float alpha, const float* a, std::int64_t ai,
                                              std::int64_t ak, const float* b, std::int64_t ldb, float* c,
                                              std::int64_t ldc, bool accumulate) {
        if constexpr (NV > 0) {
            if (nv == NV) return panel<V, NV>(M, K, alpha, a, ai, ak, b, ldb, c, ldc, accumulate);
            last_panel<V, NV - 1>(nv, M, K, alpha, a, ai, ak, b, ldb, c, ldc, accumulate);
        }
    }
    template <class V>
    DISTILL_ROW_INLINE static void run(int M, int N, int K, float alpha, const float* a, std::int64_t ai,
                                       std::int64_t ak, const float* b, std::int64_t ldb, float* c, std::int64_t ldc,
                                       bool accumulate) {
        constexpr int NV = vecs<V>, W = V::width;
        int j = 0;
        for (; j + NV * W <= N; j += NV * W) panel<V, NV>(M, K, alpha, a, ai, ak, b + j, ldb, c + j, ldc, accumulate);
        if (const int nv = (N - j) / W; nv > 0) {
            last_panel<V, NV - 1>(nv, M, K, alpha, a, ai, ak, b + j, ldb, c + j, ldc, accumulate);
            j += nv * W;
        }
        for (int i = 0; i < M && j < N; ++i)
            for (int jj = j; jj < N; ++jj) {
                float s = 0;
                for (int k = 0; k < K; ++k) s += a[i * ai + k * ak] * b[std::int64_t(k) * ldb + jj];
                float& out = c[i * ldc + jj];
                out = accumulate ? out + alpha * s : alpha * s;
            }
    }
};

/// y[d ldy + t] = x[t ldx + d] for t < n, d < hs, and 0 for t from n up to a multiple of the width
/// (k or v of one sequence and kv head, transposed for the score products): blocks of width × width
/// loaded as rows, transposed in registers (log2(width) rounds of two-source shuffles), stored as rows.
struct transpose {
    // rows a, b: of each pair of h-wide blocks, a keeps its first and b's first, b gets a's second
    // and keeps its second
    template <class V, int h, int... I>
    DISTILL_ROW_INLINE static void exchange(typename V::f& a, typename V::f& b, std::integer_sequence<int, I...>) {
        constexpr int W = V::width;
        typename V::f lo, hi;
        shuffle<V, ((I & h) ? W + I - h : I)...>(lo, a, b);
        shuffle<V, ((I & h) ? W + I : I + h)...>(hi, a, b);
        a = lo;
        b = hi;
    }
    template <class V, int h>
    DISTILL_ROW_INLINE static void rounds(typename V::f* r) {
        if constexpr (h > 0) {
#pragma GCC unroll 16
            for (int i = 0; i < V::width; ++i)
                if (!(i & h)) exchange<V, h>(r[i], r[i + h], std::make_integer_sequence<int, V::width>{});
            rounds<V, h / 2>(r);
        }
    }
    template <class V>
    DISTILL_ROW_INLINE static void run(float* y, std::int64_t ldy, const float* x, std::int64_t ldx, int n, int hs) {
        constexpr int W = V::width;
        typename V::f r[W];
        for (int t0 = 0; t0 < n; t0 += W)
            for (int d0 = 0; d0 < hs; d0 += W) {
                if (t0 + W <= n && d0 + W <= hs) {
#pragma GCC unroll 16
                    for (int i = 0; i < W; ++i) load<V>(r[i], x + (t0 + i) * ldx + d0);
                    rounds<V, W / 2>(r);
#pragma GCC unroll 16
                    for (int i = 0; i < W; ++i) store<V>(y + (d0 + i) * ldy + t0, r[i]);
                } else {  // the last keys or a head size that is not a multiple of the width
                    for (int d = d0; d < hs && d < d0 + W; ++d)
                        for (int t = t0; t < t0 + W; ++t) y[d * ldy + t] = t < n ? x[t * ldx + d] : 0.0f;
                }
            }
    }
};

/// The number of keys of a score tile row that a causal query sees: query i0 + r against keys k0.. of
/// a tile of `cols`.
DISTILL_ROW_INLINE int causal_keys(int i0, int r, int k0, int cols) noexcept {
    const int n = i0 + r + 1 - k0;
    return n < 0 ? 0 : n > cols ? cols : n;
}

/// x's lanes from `left` on (all of them when left <= 0) replaced by `fill`.
template <class V>
DISTILL_ROW_INLINE void keep_first(typename V::f& x, int left, float fill) noexcept {
    typename V::i lane;
    for (int k = 0; k < V::width; ++k) lane[k] = k;
    select<V>(x, lane < left, x, typename V::f{} + fill);
}

/// The forward's online softmax on one score tile S (rows, cols; leading dimension ld) of queries
/// i0.. against keys k0..: per row, the running raw maximum m and sum l of exp((s - m) scale) are
/// updated (set when `first`), the row becomes exp((s - m) scale) on and below the diagonal and 0
/// above it, and the output accumulator's row O (hs) is rescaled when the maximum grew. Rows are
/// read and written in whole vectors: each must have room up to cols rounded up to the width (what
/// lies past cols is ignored and overwritten with zeros).
struct flash_softmax_tile {
    template <class V>
    DISTILL_ROW_INLINE static void run(float* S, int ld, int rows, int cols, int i0, int k0, float* m, float* l,
                                       float* O, int hs, float scale, bool first) {
        using F = typename V::f;
        constexpr int W = V::width;
        const float ninf = -std::numeric_limits<float>::infinity();
        F x, acc;
        for (int r = 0; r < rows; ++r) {
            float* s = S + std::int64_t(r) * ld;
            const int n = causal_keys(i0, r, k0, cols);
            int i = 0;
            if (n > 0) {
                acc = F{} + ninf;
                for (i = 0; i < n; i += W) {
                    load<V>(x, s + i);
                    if (n - i < W) keep_first<V>(x, n - i, ninf);
                    select<V>(acc, x > acc, x, acc);
                }
                float mx = hmax<V>(acc);
                if (!first && m[r] > mx) mx = m[r];
                acc = F{};
                for (i = 0; i < n; i += W) {
                    load<V>(x, s + i);
                    x = (x - mx) * scale;
                    exp<V>(x);
                    if (n - i < W) keep_first<V>(x, n - i, 0.0f);
                    store<V>(s + i, x);
                    acc += x;
                }
                const float sum = hsum<V>(acc);
                if (first) {
                    l[r] = sum;
                } else {
                    F alpha = F{} + (m[r] - mx) * scale;  // rescales what earlier tiles summed
                    exp<V>(alpha);
                    const float a = alpha[0];
                    l[r] = l[r] * a + sum;
                    if (a != 1.0f) {
                        float* o = O + std::int64_t(r) * hs;
                        for (int d = 0; d < hs; d += W) {
                            const std::int64_t w = lanes<V>(hs, d);
                            load_z<V>(x, o + d, w);
                            store_z<V>(o + d, x * a, w);
                        }
                    }
                }
                m[r] = mx;
            }
            for (; i < cols; i += W) store<V>(s + i, F{});
        }
    }
};

/// The backward's probabilities of one score tile in place: p = exp((s - lse_t) scale) on and below
/// the diagonal, 0 above it (lse indexed by query row). Rows as in flash_softmax_tile.
struct flash_probabilities {
    template <class V>
    DISTILL_ROW_INLINE static void run(float* S, int ld, int rows, int cols, int i0, int k0, const float* lse,
                                       float scale) {
        using F = typename V::f;
        constexpr int W = V::width;
        F x;
        for (int r = 0; r < rows; ++r) {
            float* s = S + std::int64_t(r) * ld;
            const int n = causal_keys(i0, r, k0, cols);
            const float m = lse[i0 + r];
            int i = 0;
            for (; i < n; i += W) {
                load<V>(x, s + i);
                x = (x - m) * scale;
                exp<V>(x);
                if (n - i < W) keep_first<V>(x, n - i, 0.0f);
                store<V>(s + i, x);
            }
            for (; i < cols; i += W) store<V>(s + i, F{});
        }
    }
};

/// dS = P ∘ (dP − D) in place of dP, rows × cols (leading dimension ld, P's too), D per row.
struct flash_scores_grad {
    template <class V>
    DISTILL_ROW_INLINE static void run(float* dS, const float* P, int ld, const float* D, int rows, int cols) {
        typename V::f d, p;
        for (int r = 0; r < rows; ++r) {
            float* ds = dS + std::int64_t(r) * ld;
            const float* pr = P + std::int64_t(r) * ld;
            for (int i = 0; i < cols; i += V::width) {
                const std::int64_t w = lanes<V>(cols, i);
                load_z<V>(d, ds + i, w);
                load_z<V>(p, pr + i, w);
                store_z<V>(ds + i, p * (d - D[r]), w);
            }
        }
    }
};

// ---- decoding ------------------------------------------------------------------------------------

/// One query head against its cached keys and values, for one new token: p[j] = softmax_j(q·K_j
/// scale) over the n cached positions, then out(hs) = Σ_j p_j V_j. K and V are the kv head's cache
/// rows (n × hs, contiguous); p holds n floats. Scores: four keys at a time, each key's products
/// summed lanewise over hs and then across lanes (hsum). Output: up to four vectors of out stay in
/// registers over all keys, even and odd keys in separate accumulators (two chains of FMAs per
/// vector instead of one), added at the end. Each sum runs in a fixed order: the bits do not depend
/// on addresses or on the thread.
struct decode_attention {
    template <class V>
    DISTILL_ROW_INLINE static void scores(float* p, const float* q, const float* K, std::int64_t hs, std::int64_t j,
                                          int keys) {
        using F = typename V::f;
        F acc[4] = {}, qv, k;
        for (std::int64_t d = 0; d < hs; d += V::width) {
            const std::int64_t w = lanes<V>(hs, d);
            load_z<V>(qv, q + d, w);
#pragma GCC unroll 4
            for (int i = 0; i < 4; ++i)
                if (i < keys) {
                    load_z<V>(k, K + (j + i) * hs + d, w);
                    acc[i] += qv * k;
                }
        }
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i)
            if (i < keys) p[j + i] = hsum<V>(acc[i]);
    }
    // out[d0, d0 + NV·width) (the last vector may be partial: `w` lanes) = Σ_j p_j V_j there
    template <class V, int NV>
    DISTILL_ROW_INLINE static void weighted_sum(float* out, const float* p, const float* Vc, std::int64_t n,
                                                std::int64_t hs, std::int64_t d0, std::int64_t w) {
        using F = typename V::f;
        F even[NV] = {}, odd[NV] = {}, v;
        std::int64_t j = 0;
        for (; j + 2 <= n; j += 2) {
            const float pe = p[j], po = p[j + 1];
#pragma GCC unroll 4
            for (int c = 0; c < NV; ++c) {
                load_z<V>(v, Vc + j * hs + d0 + c * V::width, c + 1 < NV ? V::width : w);
                even[c] += pe * v;
                load_z<V>(v, Vc + (j + 1) * hs + d0 + c * V::width, c + 1 < NV ? V::width : w);
                odd[c] += po * v;
            }
        }
        if (j < n)
#pragma GCC unroll 4
            for (int c = 0; c < NV; ++c) {
                load_z<V>(v, Vc + j * hs + d0 + c * V::width, c + 1 < NV ? V::width : w);
                even[c] += p[j] * v;
            }
#pragma GCC unroll 4
        for (int c = 0; c < NV; ++c) store_z<V>(out + d0 + c * V::width, even[c] + odd[c], c + 1 < NV ? V::width : w);
    }
    template <class V>
    DISTILL_ROW_INLINE static void run(float* out, float* p, const float* q, const float* K, const float* Vc,
                                       std::int64_t n, std::int64_t hs, float scale) {
        std::int64_t j = 0;
        for (; j + 4 <= n; j += 4) {
            // The keys 16 rows ahead on their way to L1, and these rows' values (read after the softmax)
            // to L2: left to the hardware prefetcher, the scores waited on memory (generation at batch
            // 16: 7% faster at 1 thread, 11% at 2; docs/performance.md).
            const float *ahead = K + std::min(j + 16, n - 4) * hs, *values = Vc + j * hs;  // rows < n
            for (std::int64_t b = 0; b < 4 * hs; b += 16) {
                __builtin_prefetch(ahead + b, 0, 3);
                __builtin_prefetch(values + b, 0, 2);
            }
            scores<V>(p, q, K, hs, j, 4);
        }
        if (j < n) scores<V>(p, q, K, hs, j, int(n - j));
        softmax_forward::run<V>(p, n, scale);
        constexpr int W = V::width;
        std::int64_t d = 0;
        for (; d + 4 * W <= hs; d += 4 * W) weighted_sum<V, 4>(out, p, Vc, n, hs, d, W);
        for (; d < hs; d += W) weighted_sum<V, 1>(out, p, Vc, n, hs, d, lanes<V>(hs, d));
    }
};

// ---- the dispatch -------------------------------------------------------------------------------

#if defined(DISTILL_ISA_DISPATCH)
template <class K, class... A>
[[gnu::target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma"), gnu::flatten]] void run_avx512(A... a) {
    K::template run<vec<64> >(a...);
}
template <class K, class... A>
[[gnu::target("avx2,fma"), gnu::flatten]] void run_avx2(A... a) {
    K::template run<vec<32> >(a...);
}
#endif

/// K::run on the registers of `isa` (row_kernel_isa()); a build targeting AVX-512 runs its own.
template <class K, class... A>
DISTILL_ROW_INLINE void run_kernel([[maybe_unused]] cpu_isa isa, A... a) {
#if defined(DISTILL_ISA_DISPATCH)
    if (isa == cpu_isa::avx512) return run_avx512<K>(a...);
#if !(defined(__AVX2__) && defined(__FMA__))
    if (isa == cpu_isa::avx2) return run_avx2<K>(a...);
#endif
#endif
    K::template run<native_vec>(a...);
}

#undef DISTILL_ROW_INLINE

#endif  // __CUDA_ARCH__

}  // namespace detail::rowk

}  // namespace distill::device
