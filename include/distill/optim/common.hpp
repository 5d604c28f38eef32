#pragma once
/// @file common.hpp
/// What every optimizer shares: gathering parameters from several owners, the weight-decay groups,
/// the state arena that mirrors the parameters, and the flat, chunked, multithreaded element-wise
/// sweep every update and gradient reduction runs on.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include <boost/hana/adapt_struct.hpp>

#include "distill/detail/arena.hpp"
#include "distill/detail/macros.hpp"
#include "distill/detail/parallel.hpp"
#include "distill/device.hpp"
#include "distill/error.hpp"
#include "distill/optimizer.hpp"
#include "distill/parameter.hpp"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace distill::optim {

/// The concatenation of several parameter lists (the student's, then each loss term's projections),
/// the argument every optimizer takes.
/// @tparam T scalar type; each list is anything iterable of `Parameter<T>`.
template <class T, class... Lists>
std::vector<Parameter<T>> gather(const std::vector<Parameter<T>>& first, const Lists&... rest) {
    std::vector<Parameter<T>> all(first.begin(), first.end());
    (all.insert(all.end(), std::begin(rest), std::end(rest)), ...);
    return all;
}

/// Which parameter kinds receive weight decay. Weights always do; biases, norm gains/shifts and
/// embeddings do not unless switched on, because decaying them pulls LayerNorm gains towards 0 and
/// rare-token embeddings towards the origin, which hurts more than it regularizes (GPT-2, BERT and
/// nanoGPT all exempt them).
struct DecayGroups {
    bool biases = false;
    bool norms = false;
    bool embeddings = false;

    /// Whether a parameter of `kind` is decayed.
    bool applies_to(parameter_kind kind) const noexcept {
        switch (kind) {
            case parameter_kind::weight:
                return true;
            case parameter_kind::bias:
                return biases;
            case parameter_kind::norm:
                return norms;
            case parameter_kind::embedding:
                return embeddings;
        }
        return true;
    }
};

/// The per-step coefficients of an Adam/AdamW update, as a device kernel (`adam_update`) takes them:
/// m ← b1 m + c1 g, v ← b2 v + c2 g², p ← p + neg_step_size m / (√v / bc2_sqrt + eps); with decay,
/// p ← shrink p first (decoupled) or g ← g + wd p (coupled).
template <class T>
struct adam_coefficients {
    T b1, c1, b2, c2, neg_step_size, bc2_sqrt, eps, wd, shrink;
    bool decoupled;
};

/// The per-step coefficients of an SGD update, as a device kernel (`sgd_update`) takes them.
template <class T>
struct sgd_coefficients {
    T neg_lr, wd, mu, keep;
    bool momentum, first, nesterov;
};

namespace detail {

/// Threads a device asks for (1 for devices without a thread count, e.g. `device::Reference`).
template <class Device>
int thread_count(const Device& dev) {
    if constexpr (requires { dev.threads(); })
        return std::max(1, static_cast<int>(dev.threads()));
    else
        return 1;
}

/// Elements per work item of the flat sweep: large enough that scheduling costs nothing, small
/// enough that a 50M-parameter model gives thousands of items to balance over the threads.
inline constexpr std::int64_t chunk_elements = 16384;

/// One contiguous piece of one parameter: the unit of parallel work.
struct Chunk {
    std::uint32_t parameter;  ///< index into the parameter list
    std::int64_t offset;      ///< first element inside the parameter
    std::int64_t size;        ///< elements
};

/// Splits every parameter into chunks of at most `chunk_elements` (aligned to 16 elements so no two
/// threads write one cache line), in parameter order.
template <class T>
std::vector<Chunk> make_chunks(std::span<const Parameter<T>> params) {
    std::vector<Chunk> chunks;
    for (std::size_t i = 0; i < params.size(); ++i) {
        const std::int64_t n = params[i].value.numel();
        for (std::int64_t off = 0; off < n; off += chunk_elements)
            chunks.push_back({static_cast<std::uint32_t>(i), off, std::min(chunk_elements, n - off)});
    }
    return chunks;
}

/// Elements per thread below which more threads cost more (waking a team, a barrier) than they save.
inline constexpr std::int64_t min_elements_per_thread = 65536;

/// Elements in `chunks`.
inline std::int64_t total_elements(const std::vector<Chunk>& chunks) {
    std::int64_t n = 0;
    for (const auto& c : chunks) n += c.size;
    return n;
}

/// Runs `f(chunk_index)` for every chunk of `chunks` on up to the device's threads (fewer for small
/// work). The work is element-wise (or writes per-chunk partial results), so any assignment of
/// chunks to threads gives the same bits.
template <class Device, class F>
void for_each_chunk(const Device& dev, const std::vector<Chunk>& chunks, F&& f) {
    const std::int64_t useful = std::max<std::int64_t>(1, total_elements(chunks) / min_elements_per_thread);
    const int threads = static_cast<int>(std::min<std::int64_t>(thread_count(dev), useful));
    const auto n = static_cast<std::int64_t>(chunks.size());
    // parallel_for runs one out-of-line copy of the loop on 1 and on N threads: two inlined copies of
    // `f` could contract a*b+c into FMAs differently, and one copy keeps them bit-identical.
    distill::detail::parallel_for(threads, n, [&](std::int64_t i) { f(static_cast<std::size_t>(i)); });
}

/// The few vector operations the updates need, on the widest registers the build targets. Why not
/// Eigen's arrays: under its default EIGEN_FAST_MATH, Eigen's float `sqrt` packet is an rsqrt
/// approximation (not the correctly rounded root torch computes), and its assignment loops peel
/// unaligned heads into scalar code that the compiler contracts into FMAs differently from the
/// packet body — so an element's bits would depend on its address modulo 64. Every element here
/// goes through the same instructions (see `packetwise`), whatever its address or thread.
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

#if defined(__AVX512F__)
template <>
struct simd<float> {
    using type = __m512;
    static constexpr int width = 16;
    static type load(const float* p) noexcept { return _mm512_loadu_ps(p); }
    static void store(float* p, type v) noexcept { _mm512_storeu_ps(p, v); }
    static type set1(float v) noexcept { return _mm512_set1_ps(v); }
    static type add(type a, type b) noexcept { return _mm512_add_ps(a, b); }
    static type mul(type a, type b) noexcept { return _mm512_mul_ps(a, b); }
    static type div(type a, type b) noexcept { return _mm512_div_ps(a, b); }
    static type sqrt(type a) noexcept { return _mm512_sqrt_ps(a); }
};
template <>
struct simd<double> {
    using type = __m512d;
    static constexpr int width = 8;
    static type load(const double* p) noexcept { return _mm512_loadu_pd(p); }
    static void store(double* p, type v) noexcept { _mm512_storeu_pd(p, v); }
    static type set1(double v) noexcept { return _mm512_set1_pd(v); }
    static type add(type a, type b) noexcept { return _mm512_add_pd(a, b); }
    static type mul(type a, type b) noexcept { return _mm512_mul_pd(a, b); }
    static type div(type a, type b) noexcept { return _mm512_div_pd(a, b); }
    static type sqrt(type a) noexcept { return _mm512_sqrt_pd(a); }
};
#elif defined(__AVX__)
template <>
struct simd<float> {
    using type = __m256;
    static constexpr int width = 8;
    static type load(const float* p) noexcept { return _mm256_loadu_ps(p); }
    static void store(float* p, type v) noexcept { _mm256_storeu_ps(p, v); }
    static type set1(float v) noexcept { return _mm256_set1_ps(v); }
    static type add(type a, type b) noexcept { return _mm256_add_ps(a, b); }
    static type mul(type a, type b) noexcept { return _mm256_mul_ps(a, b); }
    static type div(type a, type b) noexcept { return _mm256_div_ps(a, b); }
    static type sqrt(type a) noexcept { return _mm256_sqrt_ps(a); }
};
template <>
struct simd<double> {
    using type = __m256d;
    static constexpr int width = 4;
    static type load(const double* p) noexcept { return _mm256_loadu_pd(p); }
    static void store(double* p, type v) noexcept { _mm256_storeu_pd(p, v); }
    static type set1(double v) noexcept { return _mm256_set1_pd(v); }
    static type add(type a, type b) noexcept { return _mm256_add_pd(a, b); }
    static type mul(type a, type b) noexcept { return _mm256_mul_pd(a, b); }
    static type div(type a, type b) noexcept { return _mm256_div_pd(a, b); }
    static type sqrt(type a) noexcept { return _mm256_sqrt_pd(a); }
};
#elif defined(__SSE2__)
template <>
struct simd<float> {
    using type = __m128;
    static constexpr int width = 4;
    static type load(const float* p) noexcept { return _mm_loadu_ps(p); }
    static void store(float* p, type v) noexcept { _mm_storeu_ps(p, v); }
    static type set1(float v) noexcept { return _mm_set1_ps(v); }
    static type add(type a, type b) noexcept { return _mm_add_ps(a, b); }
    static type mul(type a, type b) noexcept { return _mm_mul_ps(a, b); }
    static type div(type a, type b) noexcept { return _mm_div_ps(a, b); }
    static type sqrt(type a) noexcept { return _mm_sqrt_ps(a); }
};
template <>
struct simd<double> {
    using type = __m128d;
    static constexpr int width = 2;
    static type load(const double* p) noexcept { return _mm_loadu_pd(p); }
    static void store(double* p, type v) noexcept { _mm_storeu_pd(p, v); }
    static type set1(double v) noexcept { return _mm_set1_pd(v); }
    static type add(type a, type b) noexcept { return _mm_add_pd(a, b); }
    static type mul(type a, type b) noexcept { return _mm_mul_pd(a, b); }
    static type div(type a, type b) noexcept { return _mm_div_pd(a, b); }
    static type sqrt(type a) noexcept { return _mm_sqrt_pd(a); }
};
#endif

/// Runs `kernel(p, g, s0, s1, count)` over `n` elements, `count` always a multiple of the vector
/// width: the whole vectors in place, the remainder through zero-padded vector-sized copies. The
/// kernel is one out-of-line function, so every element of every parameter is computed by the same
/// instructions (state pointers may be null when an optimizer has fewer state arrays).
template <class T, class Kernel>
void packetwise(const Kernel& kernel, std::int64_t n, T* p, const T* g, T* s0, T* s1) {
    constexpr int W = simd<T>::width;
    const std::int64_t full = n / W * W;
    if (full > 0) kernel(p, g, s0, s1, full);
    if (full == n) return;
    const auto r = static_cast<std::size_t>(n - full);
    alignas(64) T bp[W] = {}, bg[W] = {}, b0[W] = {}, b1[W] = {};
    std::copy_n(p + full, r, bp);
    std::copy_n(g + full, r, bg);
    if (s0) std::copy_n(s0 + full, r, b0);
    if (s1) std::copy_n(s1 + full, r, b1);
    kernel(bp, bg, s0 ? b0 : nullptr, s1 ? b1 : nullptr, static_cast<std::int64_t>(W));
    std::copy_n(bp, r, p + full);
    if (s0) std::copy_n(b0, r, s0 + full);
    if (s1) std::copy_n(b1, r, s1 + full);
}

/// Checks what every optimizer requires of its parameters: host memory, value and gradient both
/// contiguous with equal sizes, unique non-empty names (state tensors and checkpoints are keyed by them).
template <class T>
void validate_parameters(std::span<const Parameter<T>> params, const std::string& who,
                         memory_space memory = memory_space::host) {
    std::set<std::string> names;
    for (std::size_t i = 0; i < params.size(); ++i) {
        const auto& p = params[i];
        const std::string where = who + ": parameter " + std::to_string(i) + " '" + p.name + "'";
        if (p.name.empty()) throw shape_error(who + ": parameter " + std::to_string(i) + " has an empty name");
        if (!names.insert(p.name).second)
            throw shape_error(where + " is listed twice (gather each owner's parameters once, with unique names)");
        if (p.value.empty() || p.grad.empty()) throw shape_error(where + " has no value or no gradient tensor");
        if (p.value.numel() != p.grad.numel())
            throw shape_error(where + ": value " + p.value.shape_string() + " and gradient " + p.grad.shape_string() +
                              " differ in size");
        if (!p.value.contiguous() || !p.grad.contiguous()) throw shape_error(where + " is not contiguous");
        if (p.value.space() != memory || p.grad.space() != memory)
            throw shape_error(where + (memory == memory_space::host
                                           ? " is not in host memory; this optimizer updates host tensors"
                                           : " is not in the optimizer device's memory"));
    }
}

/// The optimizer's own arena: `slots` state tensors per parameter, each shaped like its parameter,
/// named `<slot name>.<parameter name>`, zero-initialized. Slot s of parameter i is `state()[s * n + i]`.
template <class T, class Device>
class StateArena {
public:
    StateArena() = default;
    /// Lays out and zero-allocates `slot_names.size()` state tensors per parameter of `params`.
    StateArena(const Device& dev, std::span<const Parameter<T>> params, std::span<const char* const> slot_names) {
        distill::detail::ArenaLayout layout;
        std::vector<std::size_t> blocks;
        for (const char* slot : slot_names)
            for (const auto& p : params)
                blocks.push_back(layout.add<T>(std::string(slot) + "." + p.name, {p.value.numel()}));
        arena_ = distill::detail::Arena<T, Device>(dev, layout.size());
        std::size_t k = 0;
        for (const char* slot : slot_names)
            for (const auto& p : params) {
                // A view with the parameter's own shape over this block of the arena.
                Tensor<T> view = p.value;
                view.assign(arena_.data() + layout.blocks()[blocks[k]].offset, p.value.shape(), p.value.strides(),
                            p.value.rank(), Device::memory);
                tensors_.push_back({std::string(slot) + "." + p.name, view});
                ++k;
            }
    }

    /// Every state tensor: slot by slot, parameters in order within a slot.
    const std::vector<StateTensor<T>>& tensors() const noexcept { return tensors_; }
    /// Element data of slot `slot` of parameter `i` (n parameters).
    T* data(std::size_t slot, std::size_t i, std::size_t n) const noexcept {
        return tensors_[slot * n + i].value.data();
    }
    /// Bytes held.
    std::size_t bytes() const noexcept { return arena_.size() * sizeof(T); }

private:
    distill::detail::Arena<T, Device> arena_;
    std::vector<StateTensor<T>> tensors_{};
};

/// Throws config_error naming `path` unless `value` lies in [lo, hi] (or [lo, hi) with `open_hi`).
inline void check_range(double value, double lo, double hi, const std::string& path, bool open_hi = false) {
    const bool ok = std::isfinite(value) && value >= lo && (open_hi ? value < hi : value <= hi);
    if (!ok) {
        throw config_error(path, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                                     (open_hi ? ")" : "]") + ", got " + std::to_string(value));
    }
}

}  // namespace detail
}  // namespace distill::optim

BOOST_HANA_ADAPT_STRUCT(distill::optim::DecayGroups, biases, norms, embeddings);
