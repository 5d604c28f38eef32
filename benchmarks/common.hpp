#pragma once
// Shared by the benchmarks: this machine's measured FP32 FMA peak, timing, and running the PyTorch
// reference of the same workload in the same invocation.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <immintrin.h>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace bench {

inline double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Median wall time in seconds of `reps` calls of f (reps >= 1).
template <class F>
double median_seconds(int reps, F&& f) {
    std::vector<double> times;
    for (int r = 0; r < reps; ++r) {
        const double t0 = now();
        f();
        times.push_back(now() - t0);
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

/// The command line's value after argv[i] (i moves onto it); a flag without one exits with status 2.
inline const char* next_arg(int argc, char** argv, int& i) {
    if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", argv[i]);
        std::exit(2);
    }
    return argv[++i];
}

// Independent FMA chains (12 per thread, more than FMA latency x ports) in the widest vectors this
// CPU has — chosen at run time, so that a benchmark built without -march still measures the
// machine's peak, not its build's. Returns flops done.
#define DISTILL_BENCH_FMA_CHAINS(name, isa, vec, width, set1, fma, hsum)                   \
    __attribute__((target(isa))) inline double name(long iters, float seed, float* sink) { \
        vec acc[12];                                                                       \
        for (int i = 0; i < 12; ++i) acc[i] = set1(seed * float(i + 1));                   \
        const vec a = set1(0.999999f), b = set1(1e-7f);                                    \
        for (long it = 0; it < iters; ++it)                                                \
            for (int i = 0; i < 12; ++i) acc[i] = fma(acc[i], a, b);                       \
        float s = 0;                                                                       \
        for (int i = 0; i < 12; ++i) s += hsum(acc[i]);                                    \
        *sink += s;                                                                        \
        return 2.0 * width * 12 * double(iters);                                           \
    }
__attribute__((target("avx2"))) inline float hsum256(__m256 a) {
    float t[8];
    _mm256_storeu_ps(t, a);
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
inline __m128 mul_add128(__m128 a, __m128 b, __m128 c) {
    return _mm_add_ps(_mm_mul_ps(a, b), c);
}  // no FMA
inline float hsum128(__m128 a) {
    float t[4];
    _mm_storeu_ps(t, a);
    return t[0] + t[1] + t[2] + t[3];
}
DISTILL_BENCH_FMA_CHAINS(fma_chains_avx512, "avx512f", __m512, 16, _mm512_set1_ps, _mm512_fmadd_ps,
                         _mm512_reduce_add_ps)
DISTILL_BENCH_FMA_CHAINS(fma_chains_avx2, "avx2,fma", __m256, 8, _mm256_set1_ps, _mm256_fmadd_ps, hsum256)
DISTILL_BENCH_FMA_CHAINS(fma_chains_sse, "sse2", __m128, 4, _mm_set1_ps, mul_add128, hsum128)
#undef DISTILL_BENCH_FMA_CHAINS

// DISTILL_BENCH_MAX_ISA=avx2 (benchmarks/run --isa avx2) measures an AVX2 host's peak on any CPU.
inline double fma_chains(long iters, float seed, float* sink) {
    const char* cap = std::getenv("DISTILL_BENCH_MAX_ISA");
    if (__builtin_cpu_supports("avx512f") && !(cap && std::string(cap) == "avx2"))
        return fma_chains_avx512(iters, seed, sink);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return fma_chains_avx2(iters, seed, sink);
    return fma_chains_sse(iters, seed, sink);
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

/// Peak or bandwidth for `threads` threads handed over by `benchmarks/run` in an environment variable
/// of the form "1:117.5,2:234.0" (measured once per invocation), or a negative number.
inline double from_environment(const char* name, int threads) {
    const char* env = std::getenv(name);
    if (!env) return -1;
    const std::string s = env;
    for (std::size_t at = 0; at < s.size();) {
        const std::size_t comma = std::min(s.find(',', at), s.size());
        const std::string item = s.substr(at, comma - at);
        const std::size_t colon = item.find(':');
        if (colon != std::string::npos && std::atoi(item.c_str()) == threads)
            return std::atof(item.c_str() + colon + 1);
        at = comma + 1;
    }
    return -1;
}

/// The FP32 FMA peak of `threads` threads: as `benchmarks/run` measured it, else measured here.
inline double fp32_peak(int threads) {
    const double env = from_environment("DISTILL_BENCH_PEAK_GFLOPS", threads);
    return env > 0 ? env : measure_fp32_peak(threads);
}

/// Memory bandwidth in GB/s of a STREAM triad a = b + s·c over three arrays of `n` floats each (far
/// larger than the caches), split statically over `threads` threads: best of five, counted as
/// STREAM counts it (three arrays of traffic).
inline double measure_bandwidth(int threads, std::int64_t n = std::int64_t(64) << 20) {
    auto alloc = [&] { return static_cast<float*>(std::aligned_alloc(64, std::size_t(n) * sizeof(float))); };
    float *a = alloc(), *b = alloc(), *c = alloc();
#pragma omp parallel for schedule(static) num_threads(threads)
    for (std::int64_t i = 0; i < n; ++i) {
        a[i] = 0.0f;
        b[i] = float(i % 1024) * 1e-3f;
        c[i] = float(i % 977) * 1e-3f;
    }
    double best = 0;
    for (int rep = 0; rep < 5; ++rep) {
        const double t0 = now();
#pragma omp parallel for schedule(static) num_threads(threads)
        for (std::int64_t i = 0; i < n; ++i) a[i] = b[i] + 0.5f * c[i];
        best = std::max(best, 3.0 * 4.0 * double(n) / (now() - t0) / 1e9);
    }
    if (a[n / 2] == 12345.0f) std::printf(" ");  // keeps the stores observable
    std::free(a);
    std::free(b);
    std::free(c);
    return best;
}

/// Read bandwidth in GB/s of `threads` threads summing a buffer of `bytes` (split statically), best of
/// 20 sweeps after one untimed: the rate at which data of that working-set size comes from whatever
/// level of the memory hierarchy holds it (a model of a few MB sits in L2 or L3, far above the
/// triad's DRAM figure).
inline double measure_read_bandwidth(int threads, double bytes) {
    const auto n = std::max<std::int64_t>(1024, static_cast<std::int64_t>(bytes / sizeof(float)) / 1024 * 1024);
    std::vector<float> a(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) a[std::size_t(i)] = float(i % 977) * 1e-3f;
    double best = 0;
    float sink = 0;
    for (int rep = 0; rep < 21; ++rep) {
        const double t0 = now();
        float total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
        {
#if defined(_OPENMP)
            const int k = omp_get_thread_num(), p = omp_get_num_threads();
#else
            const int k = 0, p = 1;
#endif
            // whole blocks of 64 floats (n is a multiple of 1024) into independent sums of one vector
            // register each, as wide as the build's: 64-byte vectors, split by an AVX2 build, read a
            // third of the bandwidth there
#if defined(__AVX512F__)
            constexpr int W = 16;
#elif defined(__AVX__)
            constexpr int W = 8;
#else
            constexpr int W = 4;
#endif
            using vec = float __attribute__((vector_size(4 * W)));
            const std::int64_t begin = n / 64 * k / p * 64, end = n / 64 * (k + 1) / p * 64;
            vec s[64 / W] = {};
            for (std::int64_t i = begin; i < end; i += 64)
                for (int j = 0; j < 64 / W; ++j) {
                    vec x;
                    std::memcpy(&x, &a[std::size_t(i + W * j)], sizeof x);
                    s[j] += x;
                }
            for (int j = 0; j < 64 / W; ++j)
                for (int l = 0; l < W; ++l) total += s[j][l];
        }
        sink += total;
        if (rep > 0) best = std::max(best, 4.0 * double(n) / (now() - t0) / 1e9);
    }
    if (sink == 42.0f) std::printf(" ");  // keeps the sums observable
    return best;
}

/// The triad bandwidth of `threads` threads: as `benchmarks/run` measured it, else measured here.
inline double bandwidth(int threads) {
    const double env = from_environment("DISTILL_BENCH_BANDWIDTH_GBS", threads);
    return env > 0 ? env : measure_bandwidth(threads);
}

/// Peak resident set of this process so far (VmHWM), in bytes; 0 when /proc is unreadable.
inline double peak_rss_bytes() {
    FILE* f = std::fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    double kb = 0;
    while (std::fgets(line, sizeof line, f))
        if (std::strncmp(line, "VmHWM:", 6) == 0) kb = std::atof(line + 6);
    std::fclose(f);
    return kb * 1024.0;
}

/// The Pythons that run the PyTorch references: $DISTILL_TORCH_PYTHON (comma-separated; set by
/// `benchmarks/run` to every interpreter with a distinct torch), else Debian's /usr/bin/python3.
inline std::vector<std::string> torch_pythons() {
    const char* env = std::getenv("DISTILL_TORCH_PYTHON");
    const std::string s = env && *env ? env : "/usr/bin/python3";
    std::vector<std::string> out;
    for (std::size_t at = 0; at <= s.size();) {
        const std::size_t comma = std::min(s.find(',', at), s.size());
        if (comma > at) out.push_back(s.substr(at, comma - at));
        at = comma + 1;
    }
    return out;
}

/// What a reference run printed: the value of the key asked for (negative when it did not run),
/// the torch version and the whole JSON line.
struct Reference {
    double value = -1;
    std::string torch;
    nlohmann::json line;
};

inline Reference run_reference(const std::string& script_and_args, const std::string& key, const std::string& python,
                               const std::string& modules);

/// Runs `python reference/script args` (a reference that prints one JSON line) after checking that
/// `python` can `import <modules>`, and returns `key` from that line. Without `python`, under every
/// interpreter of `torch_pythons()` and, when the arguments say `--threads N` with N > 1, at 1
/// thread as well (a BLAS can run slower on more threads), returning the best result (the smallest
/// for a key that starts with "ms", else the largest), whose `torch` names the setting. Prints each
/// line, or why it was skipped. `one_thread` false skips the 1-thread settings (for a workload where
/// a reference step takes minutes; the caller says so in its output).
inline Reference run_reference(const std::string& script_and_args, const std::string& key, bool one_thread = true) {
    std::vector<std::pair<std::string, int>> settings{{script_and_args, 0}};  // (arguments, threads if swept)
    const std::string flag = "--threads ";
    if (const auto at = script_and_args.find(flag); one_thread && at != std::string::npos) {
        const auto begin = at + flag.size(), end = script_and_args.find(' ', begin);
        const std::string n = script_and_args.substr(begin, end == std::string::npos ? end : end - begin);
        if (std::atoi(n.c_str()) > 1) {
            settings[0].second = std::atoi(n.c_str());
            settings.emplace_back(script_and_args.substr(0, begin) + "1" +
                                      (end == std::string::npos ? std::string() : script_and_args.substr(end)),
                                  1);
        }
    }
    Reference best;
    const bool lower = key.rfind("ms", 0) == 0;
    for (const auto& py : torch_pythons())
        for (const auto& [args, threads] : settings) {
            Reference r = run_reference(args, key, py, "torch");
            if (threads) r.torch += threads == 1 ? ", 1 thread" : ", " + std::to_string(threads) + " threads";
            if (r.value > 0 && (best.value <= 0 || (lower ? r.value < best.value : r.value > best.value))) best = r;
        }
    return best;
}

inline Reference run_reference(const std::string& script_and_args, const std::string& key, const std::string& py,
                               const std::string& modules) {
    Reference r;
    const std::string probe = py + " -c 'import " + modules + "' >/dev/null 2>&1";
    if (std::system(probe.c_str()) != 0) {
        std::printf("reference: skipped (%s cannot import %s)\n", py.c_str(), modules.c_str());
        return r;
    }
    // torch.set_num_threads sizes PyTorch's OpenMP pool only: Debian's OpenBLAS keeps a pthread pool of
    // its own, one thread per core, so a "1 thread" run of it used every core. Each BLAS's pool is
    // sized before the interpreter loads it.
    std::string pools;
    if (const auto at = script_and_args.find("--threads "); at != std::string::npos) {
        const std::string n = std::to_string(std::atoi(script_and_args.c_str() + at + 10));
        pools = "OMP_NUM_THREADS=" + n + " OPENBLAS_NUM_THREADS=" + n + " MKL_NUM_THREADS=" + n + " ";
    }
    const std::string command = pools + py + " " + std::string(DISTILL_BENCH_DIR) + "/reference/" + script_and_args;
    FILE* p = popen(command.c_str(), "r");
    if (!p) return r;
    std::string out;
    char buf[4096];
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    if (pclose(p) != 0) {
        std::printf("reference failed: %s\n", out.c_str());
        return r;
    }
    std::printf("reference: %s", out.c_str());
    const auto j = nlohmann::json::parse(out.substr(out.rfind('{')), nullptr, false);
    if (j.is_discarded() || !j.contains(key)) return r;
    r.value = j[key].get<double>();
    if (j.contains("torch")) r.torch = j["torch"].get<std::string>();
    r.line = j;
    return r;
}

/// One row of `benchmarks/run`'s table, printed as `RESULT {json}` for the script to collect.
/// `ratio` is always distill's speed-up over PyTorch (> 1: distill is faster), whichever way the
/// unit runs; `peak_fraction` the fraction of the machine's limit named by `bound`.
struct Result {
    std::string workload;
    double distill = -1;  ///< negative: not run (the row says why)
    double pytorch = -1;  ///< negative: not run
    std::string unit;     ///< "tokens/s", "ms", ...
    bool higher_is_better = true;
    double peak_fraction = -1;  ///< negative: not applicable
    std::string bound;          ///< "compute", "bandwidth", "latency" (what peak_fraction is of)
    int threads = 1;
    std::string torch;       ///< the reference's version
    nlohmann::json extra{};  ///< anything else worth keeping (memory, GFLOP/s)
};

inline void emit(const Result& r) {
    nlohmann::json j;
    j["workload"] = r.workload;
    j["distill"] = r.distill >= 0 ? nlohmann::json(r.distill) : nlohmann::json(nullptr);  // negative: not run
    j["pytorch"] = r.pytorch > 0 ? nlohmann::json(r.pytorch) : nlohmann::json(nullptr);
    j["unit"] = r.unit;
    if (r.pytorch > 0 && r.distill > 0)
        j["ratio"] = r.higher_is_better ? r.distill / r.pytorch : r.pytorch / r.distill;
    else
        j["ratio"] = nullptr;
    j["peak_fraction"] = r.peak_fraction >= 0 ? nlohmann::json(r.peak_fraction) : nlohmann::json(nullptr);
    j["bound"] = r.bound;
    j["threads"] = r.threads;
    j["torch"] = r.torch;
    if (!r.extra.is_null()) j["extra"] = r.extra;
    std::printf("RESULT %s\n", j.dump().c_str());
    std::fflush(stdout);
}

}  // namespace bench
