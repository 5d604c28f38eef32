#pragma once
/// @file cpu/optim.hpp
/// The optimizer kernels of `device::Cpu`: one flat sweep over every tensor of a `tensor_list` — its
/// chunks spread over the device's threads (fewer for small work), each chunk through one fused,
/// vectorized kernel that reads p, g, m, v once and writes p, m, v once (28 bytes per fp32 Adam
/// parameter, where a tensor-op implementation streams them once per op). The element kernels are
/// the Reference's (`reference/optim.hpp`): every element of every tensor goes through the same
/// instructions (see `detail::packetwise`), whatever its address or thread, so a resumed run, a
/// run on another thread count and a run on `device::Reference` give the same parameters.

#include <algorithm>
#include <cstdint>

#include "distill/detail/parallel.hpp"
#include "distill/device.hpp"
#include "distill/device/cpu/layers.hpp"
#include "distill/device/reference/optim.hpp"

namespace distill::device {

namespace detail {

/// Elements per thread below which more threads cost more (waking a team, a barrier) than they save.
inline constexpr std::int64_t min_elements_per_thread = 65536;

/// Runs `f(chunk_index)` for every chunk of `list` on up to the device's threads (fewer for small
/// work). The work is element-wise (or writes per-chunk partial results), so any assignment of
/// chunks to threads gives the same bits.
template <class T, class F>
void for_each_chunk(const Cpu& dev, const tensor_list<T>& list, F&& f) {
    const std::int64_t useful = std::max<std::int64_t>(1, list.total() / min_elements_per_thread);
    const int threads = static_cast<int>(std::min<std::int64_t>(std::max(1, dev.threads()), useful));
    const auto n = static_cast<std::int64_t>(list.chunks().size());
    // parallel_for runs one out-of-line copy of the loop on 1 and on N threads: two inlined copies of
    // `f` could contract a*b+c into FMAs differently, and one copy keeps them bit-identical.
    distill::detail::parallel_for(threads, n, [&](std::int64_t i) { f(static_cast<std::size_t>(i)); });
}

/// Runs an element kernel over every chunk of `list` through `detail::packetwise`: `decayed`
/// on the tensors whose flag is set, `plain` on the others, over arrays 0..arrays-1 of the chunk's
/// tensor (a null array, and every array from `arrays` on, passed as nullptr).
template <class T, class Kernel>
void packetwise_chunks(const Cpu& dev, const tensor_list<T>& list, const Kernel& decayed, const Kernel& plain,
                       int arrays) {
    for_each_chunk(dev, list, [&](std::size_t c) {
        const auto& ch = list.chunks()[c];
        const std::size_t t = ch.tensor;
        auto array = [&](int a) -> T* {
            T* x = a < arrays ? list.array(t, a) : nullptr;
            return x ? x + ch.offset : nullptr;
        };
        detail::packetwise<T>(list.flag(t) ? decayed : plain, ch.size, array(0), array(1), array(2), array(3));
    });
}

}  // namespace detail

/// One Adam/AdamW step over every tensor of `list` (arrays p, g, m, v; flag = decay): the
/// Reference's element kernel, threaded over the chunks.
template <class T>
void adam_update(const Cpu& dev, const tensor_list<T>& list, const adam_coefficients<T>& k) {
    detail::packetwise_chunks(dev, list, detail::adam_kernel<T>{k, true}, detail::adam_kernel<T>{k, false}, 4);
}

/// One SGD step over every tensor of `list` (arrays p, g, buf — null without momentum; flag = decay):
/// the Reference's element kernel, threaded over the chunks.
template <class T>
void sgd_update(const Cpu& dev, const tensor_list<T>& list, const sgd_coefficients<T>& k) {
    detail::packetwise_chunks(dev, list, detail::sgd_kernel<T>{k, true}, detail::sgd_kernel<T>{k, false}, 3);
}

/// Σ x² over array 0 of every tensor of `list`, in double: the chunk sums on the threads, added in
/// chunk order (the Reference's bits for any thread count).
template <class T>
double sum_of_squares(const Cpu& dev, const tensor_list<T>& list) {
    double* partial = list.partials();
    detail::for_each_chunk(dev, list, [&](std::size_t c) {
        const auto& ch = list.chunks()[c];
        partial[c] = detail::chunk_sum_of_squares(list.array(ch.tensor, 0) + ch.offset, ch.size);
    });
    double total = 0;
    for (std::size_t c = 0; c < list.chunks().size(); ++c) total += partial[c];
    return total;
}

/// x ← factor·x for array 0 of every tensor of `list`, threaded over the chunks.
template <class T>
void scale_in_place(const Cpu& dev, const tensor_list<T>& list, T factor) {
    detail::for_each_chunk(dev, list, [&](std::size_t c) {
        const auto& ch = list.chunks()[c];
        T* x = list.array(ch.tensor, 0) + ch.offset;
        for (std::int64_t i = 0; i < ch.size; ++i) x[i] *= factor;  // one rounding per element
    });
}

}  // namespace distill::device
