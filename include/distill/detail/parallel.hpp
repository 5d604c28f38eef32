#pragma once
/// @file parallel.hpp
/// The host devices' one way of splitting a loop over threads.
///
/// Why not `#pragma omp parallel for num_threads(n)` at every loop: libgomp caches a team for reuse
/// only when it has more than one thread, so every one-thread region (a 1-thread device, or an
/// `if` clause that turns the team off for small work) `malloc`s and frees a fresh team — hundreds
/// of allocations per training step. Here one thread runs the body directly.

#include <algorithm>
#include <cstdint>

#include "distill/detail/macros.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace distill::detail {

// One out-of-line copy of the body serves the serial and the threaded path, so both run the same
// machine code (two inlined copies could contract a*b+c into FMAs differently).
template <class Body>
[[gnu::noinline]] void run_range(Body& body, std::int64_t begin, std::int64_t end) {
    body(begin, end);
}

/// Runs body(begin, end) on contiguous ranges covering [0, n): one range on the calling thread when
/// `threads` <= 1 or `parallel` is false, else `threads` ranges (balanced, the same split every run)
/// on an OpenMP team.
template <class Body>
void parallel_ranges(int threads, std::int64_t n, Body&& body, bool parallel = true) {
    if (n <= 0) return;
    const int parts = parallel ? static_cast<int>(std::clamp<std::int64_t>(n, 1, std::max(threads, 1))) : 1;
    if (parts == 1) return run_range(body, 0, n);
#if defined(_OPENMP)
    DISTILL_OMP(parallel num_threads(parts)) {
        const int k = omp_get_thread_num(), p = omp_get_num_threads();
        const std::int64_t per = n / p, extra = n % p;
        const std::int64_t begin = k * per + std::min<std::int64_t>(k, extra);
        run_range(body, begin, begin + per + (k < extra ? 1 : 0));
    }
#else
    run_range(body, 0, n);
#endif
}

/// Runs f(i) for every i in [0, n), split as `parallel_ranges` does.
template <class F>
void parallel_for(int threads, std::int64_t n, F&& f, bool parallel = true) {
    parallel_ranges(
        threads, n,
        [&](std::int64_t begin, std::int64_t end) {
            for (std::int64_t i = begin; i < end; ++i) f(i);
        },
        parallel);
}

}  // namespace distill::detail
