#pragma once
// Shared by the benchmarks: this machine's measured FP32 FMA peak, timing, and running the PyTorch
// reference of the same workload in the same invocation.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <immintrin.h>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace bench {

inline double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Independent FMA chains (12 per thread, more than FMA latency x ports) in the widest vectors the
// build targets, so the loop runs at the FMA units' throughput. Returns flops done.
inline double fma_chains(long iters, float seed, float* sink) {
#if defined(__AVX512F__)
    using vec = __m512;
    constexpr int width = 16;
    auto set1 = [](float x) { return _mm512_set1_ps(x); };
    auto fma = [](vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); };
    auto hsum = [](vec a) { return _mm512_reduce_add_ps(a); };
#elif defined(__AVX2__) && defined(__FMA__)
    using vec = __m256;
    constexpr int width = 8;
    auto set1 = [](float x) { return _mm256_set1_ps(x); };
    auto fma = [](vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); };
    auto hsum = [](vec a) {
        float t[8];
        _mm256_storeu_ps(t, a);
        return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
    };
#else
    using vec = float;
    constexpr int width = 1;
    auto set1 = [](float x) { return x; };
    auto fma = [](vec a, vec b, vec c) { return std::fma(a, b, c); };
    auto hsum = [](vec a) { return a; };
#endif
    vec acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = set1(seed * float(i + 1));
    const vec a = set1(0.999999f), b = set1(1e-7f);
    for (long it = 0; it < iters; ++it)
        for (int i = 0; i < 12; ++i) acc[i] = fma(acc[i], a, b);
    float s = 0;
    for (int i = 0; i < 12; ++i) s += hsum(acc[i]);
    *sink += s;
    return 2.0 * width * 12 * double(iters);
}

/// FP32 FMA peak of `threads` threads in GFLOP/s: best of five ~0.4 s runs of independent FMA chains.
inline double measure_fp32_peak(int threads) {
    const long iters = 20'000'000;
    double best = 0;
    float sink = 0;
    for (int rep = 0; rep < 5; ++rep) {
        double flops = 0;
        const double t0 = now();
#pragma omp parallel num_threads(threads) reduction(+ : flops)
        {
            float local = 0;
            flops += fma_chains(iters, 1e-3f, &local);
#pragma omp critical
            sink += local;
        }
        best = std::max(best, flops / (now() - t0) / 1e9);
    }
    if (sink == 42.0f) std::printf(" ");  // keeps the chains observable
    return best;
}

/// Runs `command` (a PyTorch reference script that prints one JSON line) and returns the value of
/// `key` from it, or a negative number (with the reason printed) when PyTorch is not available.
inline double run_reference(const std::string& command, const std::string& key) {
    if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0) {
        std::printf(
            "PyTorch reference: skipped (no `import torch` for /usr/bin/python3; apt-get install python3-torch)\n");
        return -1;
    }
    FILE* p = popen(command.c_str(), "r");
    if (!p) return -1;
    std::string out;
    char buf[4096];
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    if (pclose(p) != 0) {
        std::printf("PyTorch reference failed: %s\n", out.c_str());
        return -1;
    }
    std::printf("PyTorch reference: %s", out.c_str());
    const auto pos = out.find("\"" + key + "\"");
    if (pos == std::string::npos) return -1;
    return std::atof(out.c_str() + out.find(':', pos) + 1);
}

}  // namespace bench
