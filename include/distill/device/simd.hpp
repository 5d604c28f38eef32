#pragma once
/// @file simd.hpp
/// The vector shim of the host devices' element-wise kernels (the optimizer updates): load, store,
/// broadcast, +, ×, ÷ and a correctly rounded √ on the widest registers the build targets (AVX-512,
/// AVX, SSE2, else scalar). Why not Eigen's arrays: under its default EIGEN_FAST_MATH, Eigen's float
/// `sqrt` packet is an rsqrt approximation (not the correctly rounded root torch computes), and its
/// assignment loops peel unaligned heads into scalar code that the compiler contracts into FMAs
/// differently from the packet body — so an element's bits would depend on its address modulo 64.
/// The arithmetic is written once, with the GCC/Clang vector extensions the intrinsics are defined by
/// (`a + b` on `__m512` is `_mm512_add_ps`); only the square root is named per register width.

#include <cmath>
#include <cstring>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace distill::device::detail {

/// The operations on one register type `V` holding `sizeof(V) / sizeof(T)` elements of `T`;
/// `Sqrt` is the register's correctly rounded square root.
template <class T, class V, V (*Sqrt)(V)>
struct vector_ops {
    using type = V;
    static constexpr int width = static_cast<int>(sizeof(V) / sizeof(T));
    static type load(const T* p) noexcept {
        type v;
        std::memcpy(&v, p, sizeof v);  // an unaligned vector load
        return v;
    }
    static void store(T* p, type v) noexcept { std::memcpy(p, &v, sizeof v); }
    static type set1(T x) noexcept { return type{} + x; }  // broadcast
    static type add(type a, type b) noexcept { return a + b; }
    static type mul(type a, type b) noexcept { return a * b; }
    static type div(type a, type b) noexcept { return a / b; }
    static type sqrt(type a) noexcept { return Sqrt(a); }
};

/// The scalar fallback: one element per "register".
template <class T>
struct simd {
    using type = T;
    static constexpr int width = 1;
    static type load(const T* p) noexcept { return *p; }
    static void store(T* p, type v) noexcept { *p = v; }
    static type set1(T v) noexcept { return v; }
    static type add(type a, type b) noexcept { return a + b; }
    static type mul(type a, type b) noexcept { return a * b; }
    static type div(type a, type b) noexcept { return a / b; }
    static type sqrt(type a) noexcept { return std::sqrt(a); }
};

// Plain vector types (the intrinsics' own types carry attributes a template argument drops).
#define DISTILL_SIMD_WIDTH(bytes, sqrt_ps, sqrt_pd, reg_ps, reg_pd) \
    using vf = float __attribute__((vector_size(bytes)));           \
    using vd = double __attribute__((vector_size(bytes)));          \
    inline vf vsqrt(vf a) noexcept {                                \
        return (vf)sqrt_ps((reg_ps)a);                              \
    }                                                               \
    inline vd vsqrt(vd a) noexcept {                                \
        return (vd)sqrt_pd((reg_pd)a);                              \
    }                                                               \
    template <>                                                     \
    struct simd<float> : vector_ops<float, vf, vsqrt> {};           \
    template <>                                                     \
    struct simd<double> : vector_ops<double, vd, vsqrt> {};
#if defined(__AVX512F__)
DISTILL_SIMD_WIDTH(64, _mm512_sqrt_ps, _mm512_sqrt_pd, __m512, __m512d)
#elif defined(__AVX__)
DISTILL_SIMD_WIDTH(32, _mm256_sqrt_ps, _mm256_sqrt_pd, __m256, __m256d)
#elif defined(__SSE2__)
DISTILL_SIMD_WIDTH(16, _mm_sqrt_ps, _mm_sqrt_pd, __m128, __m128d)
#endif
#undef DISTILL_SIMD_WIDTH

}  // namespace distill::device::detail
