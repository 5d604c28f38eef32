// SoftKL forward + backward over (tokens × vocab) fp32 logits: the fused streaming kernel of
// device/cpu/losses.hpp through the loss::SoftKL term, against PyTorch's
// kl_div(log_softmax(s/τ), log_softmax(t/τ), log_target=True) · τ² + backward
// (benchmarks/reference/bench_losses.py, run in the same invocation on the same shape).
//
// Reports the time per call, the effective bandwidth (student and teacher logits read once, the
// gradient written once: 3 · tokens · vocab · 4 bytes), that bandwidth as a fraction of the
// machine's memory bandwidth measured here with a STREAM-style triad of the same access pattern
// (two arrays read, one written), and the ratio to PyTorch.
//
//   bench_losses [--tokens 4096] [--vocab 32000] [--temperature 2] [--threads 2] [--reps 10] [--no-reference]

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "common.hpp"
#include "distill/distill.hpp"

namespace {

// 64-byte aligned, never value-initialized (the benchmark writes every element itself).
struct buffer {
    explicit buffer(std::size_t n)
        : n(n), p(static_cast<float*>(distill::device::HostMemory{}.allocate(n * sizeof(float)))) {}
    ~buffer() { distill::device::HostMemory{}.deallocate(p, n * sizeof(float)); }
    buffer(const buffer&) = delete;
    buffer& operator=(const buffer&) = delete;
    std::size_t n;
    float* p;
};

// Fills x with a scale·(2u - 1) + offset, u from a 64-bit LCG per thread block (fast: the arrays
// are gigabytes).
void fill(float* x, std::int64_t n, std::uint64_t seed, float scale, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (std::int64_t block = 0; block < (n + 65535) / 65536; ++block) {
        std::uint64_t s = seed * 0x9e3779b97f4a7c15ULL + std::uint64_t(block) * 0xbf58476d1ce4e5b9ULL;
        const std::int64_t end = std::min(n, (block + 1) * 65536);
        for (std::int64_t i = block * 65536; i < end; ++i) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            x[i] = scale * (2.0f * float(s >> 40) / 16777216.0f - 1.0f);
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    using namespace distill;
    int N = 4096, V = 32000, threads = 2, reps = 10;
    double tau = 2.0;
    bool reference = true;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&] {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "%s needs a value\n", a.c_str());
                std::exit(2);
            }
            return std::string(argv[++i]);
        };
        if (a == "--tokens")
            N = std::stoi(next());
        else if (a == "--vocab")
            V = std::stoi(next());
        else if (a == "--temperature")
            tau = std::stod(next());
        else if (a == "--threads")
            threads = std::stoi(next());
        else if (a == "--reps")
            reps = std::stoi(next());
        else if (a == "--no-reference")
            reference = false;
        else {
            std::fprintf(stderr, "unknown argument %s\n", a.c_str());
            return 2;
        }
    }
    const std::int64_t n = std::int64_t(N) * V;
    const double bytes = 3.0 * 4.0 * double(n);
    double ms = 0;
    {
        buffer s{std::size_t(n)}, t{std::size_t(n)}, d{std::size_t(n)};
        fill(s.p, n, 11, 8.0f, threads);
        fill(t.p, n, 12, 8.0f, threads);
        for (std::int64_t i = 0; i < n; ++i) t.p[i] += 0.5f * s.p[i];  // a teacher related to the student

        // the SoftKL term over one "sequence" of N positions: what a training step calls
        device::Cpu cpu(threads);
        loss::SoftKL term({.temperature = tau});
        const loss::dims dims{{V, 0, 0, 0}, {V, 0, 0, 0}, 1, N};
        loss::Workspace<float, device::Cpu> ws(term, dims, cpu);
        loss::student_outputs<float> so;
        so.logits = Tensor<const float>(s.p, {1, N, V});
        loss::teacher_outputs<float> to;
        to.logits = Tensor<const float>(t.p, {1, N, V});
        auto call = [&] {
            auto ctx = ws.begin(so, Tensor<float>(d.p, {1, N, V}), to);
            const float v = term(ctx);
            ws.finish();
            return v;
        };

        // validate before timing: value and three gradient rows against the reference kernel in double
        const float value = call();
        double expect = 0;
        for (int row : {0, N / 2, N - 1}) {
            std::vector<double> sd(s.p + std::int64_t(row) * V, s.p + std::int64_t(row + 1) * V);
            std::vector<double> td(t.p + std::int64_t(row) * V, t.p + std::int64_t(row + 1) * V);
            std::vector<double> g(static_cast<std::size_t>(V));
            double kl = 0;
            kl_forward_backward(device::Reference{}, g.data(), false, &kl, sd.data(), td.data(), nullptr, 1, V,
                                1.0 / tau, tau * tau / N);
            expect += kl;
            // |a - b| <= 1e-4 |b| + 1e-5 max|b|: fp32 q - p cancels where the two nearly agree
            double scale = 0;
            for (int j = 0; j < V; ++j) scale = std::max(scale, std::abs(g[std::size_t(j)]));
            for (int j = 0; j < V; ++j) {
                const double a = d.p[std::int64_t(row) * V + j], b = g[std::size_t(j)];
                if (!(std::abs(a - b) <= 1e-4 * std::abs(b) + 1e-5 * scale)) {
                    std::fprintf(stderr, "validation failed: gradient [%d, %d] = %g, the reference gives %g\n", row, j,
                                 a, b);
                    return 1;
                }
            }
        }
        if (!std::isfinite(value) || !(value > 0)) {
            std::fprintf(stderr, "validation failed: value %f\n", value);
            return 1;
        }
        std::printf("validated: value %.6f (three reference rows: mean KL·τ² %.6f), gradient rows match in double\n",
                    value, tau * tau * expect / 3);

        ms = 1e3 * bench::median_seconds(reps, call);
    }
    const double gbps = bytes / (ms / 1e3) / 1e9;
    const double peak = bench::bandwidth(threads);
    std::printf("workload: SoftKL forward+backward, tokens=%d vocab=%d tau=%g, fp32, %d threads\n", N, V, tau, threads);
    std::printf(
        "distill: %.1f ms/call (median of %d), %.1f GB/s = %.0f%% of the measured memory bandwidth (%.1f GB/s, "
        "triad)\n",
        ms, reps, gbps, 100.0 * gbps / peak, peak);
    char workload[160];
    std::snprintf(workload, sizeof workload, "SoftKL fwd+bwd (fused): %d tokens x %d vocab, tau=%g", N, V, tau);
    bench::Result r{.workload = workload,
                    .distill = ms,
                    .unit = "ms",
                    .higher_is_better = false,
                    .peak_fraction = gbps / peak,
                    .bound = "bandwidth",
                    .threads = threads};
    if (reference) {
        char cmd[512];
        std::snprintf(cmd, sizeof cmd, "bench_losses.py --tokens %d --vocab %d --temperature %g --threads %d --reps %d",
                      N, V, tau, threads, std::max(3, reps / 2));
        const auto ref = bench::run_reference(cmd, "ms_per_call");
        if (ref.value > 0) {
            std::printf("ratio distill / PyTorch: %.2fx (PyTorch %.1f ms/call = %.1f GB/s effective)\n", ref.value / ms,
                        ref.value, bytes / (ref.value / 1e3) / 1e9);
            r.pytorch = ref.value;
            r.torch = ref.torch;
        }
    }
    bench::emit(r);
    return 0;
}
