// The fp32 GEMMs of the medium train step alone (N = B·T = 2048 tokens): distill's `gemm` on
// device::Cpu (oneDNN's matmul where linked, else Eigen's kernel) against PyTorch's torch.mm on the
// same shapes and transposes (benchmarks/reference/bench_gemm.py, every PyTorch at every thread
// setting, the fastest kept), each as GFLOP/s and its fraction of this machine's measured FP32 FMA
// peak. It bounds the step: a train step cannot run nearer the peak than its GEMMs do.
//
//   bench_gemm [--threads 2] [--reps 10] [--no-reference]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common.hpp"
#include "distill/detail/rng.hpp"
#include "distill/device/cpu.hpp"

namespace {
struct Shape {
    const char* what;
    int M, N, K;
    bool trans_a, trans_b;
};
// C(M,N) = op(A) op(B), row-major, as the model calls them: forward in · Wᵀ, input gradient dout · W,
// weight gradient doutᵀ · in.
constexpr Shape shapes[] = {
    {"teacher fc1 forward", 2048, 2048, 512, false, true},
    {"teacher fc2 forward", 2048, 512, 2048, false, true},
    {"student qkv forward", 2048, 768, 256, false, true},
    {"student fc1 input gradient", 2048, 256, 1024, false, false},
    {"student fc1 weight gradient", 1024, 256, 2048, true, false},
    {"student fc2 weight gradient", 256, 1024, 2048, true, false},
};
}  // namespace

int main(int argc, char** argv) {
    using namespace distill;
    int threads = 2, reps = 10;
    bool reference = true;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--threads")
            threads = std::atoi(bench::next_arg(argc, argv, i));
        else if (a == "--reps")
            reps = std::atoi(bench::next_arg(argc, argv, i));
        else if (a == "--no-reference")
            reference = false;
        else {
            std::fprintf(stderr, "unknown argument %s\n", a.c_str());
            return 2;
        }
    }
    if (threads < 1 || reps < 1) {
        std::fprintf(stderr, "need --threads, --reps >= 1\n");
        return 2;
    }
    const device::Cpu dev(threads);
    const double peak = bench::fp32_peak(threads);
    std::printf("workload: the medium train step's fp32 GEMMs, %d threads; FP32 FMA peak %.1f GFLOP/s\n", threads,
                peak);
    Rng rng(1);
    for (const Shape& s : shapes) {
        const std::size_t a_size = std::size_t(s.M) * s.K, b_size = std::size_t(s.K) * s.N;
        const int lda = s.trans_a ? s.M : s.K, ldb = s.trans_b ? s.K : s.N;
        std::vector<float> A(a_size), B(b_size), C(std::size_t(s.M) * s.N);
        for (auto& v : A) v = static_cast<float>(rng.normal());
        for (auto& v : B) v = static_cast<float>(rng.normal());
        auto run = [&] {
            gemm(dev, s.trans_a, s.trans_b, s.M, s.N, s.K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, C.data(), s.N);
        };
        run();
        // Validate before timing: 64 entries against a sum in double.
        for (int t = 0; t < 64; ++t) {
            const int m = int(rng.below(std::uint64_t(s.M))), n = int(rng.below(std::uint64_t(s.N)));
            double want = 0, scale = 0;
            for (int k = 0; k < s.K; ++k) {
                const double a = s.trans_a ? A[std::size_t(k) * lda + m] : A[std::size_t(m) * lda + k];
                const double b = s.trans_b ? B[std::size_t(n) * ldb + k] : B[std::size_t(k) * ldb + n];
                want += a * b;
                scale += std::abs(a * b);
            }
            if (!(std::abs(C[std::size_t(m) * s.N + n] - want) <= 1e-5 * scale + 1e-6)) {
                std::fprintf(stderr, "validation failed: %s C(%d,%d) = %g, want %g\n", s.what, m, n,
                             double(C[std::size_t(m) * s.N + n]), want);
                return 1;
            }
        }
        const double flops = 2.0 * s.M * s.N * s.K, gflops = flops / bench::median_seconds(reps, run) / 1e9;
        bench::Reference ref;
        if (reference) {
            char cmd[200];
            std::snprintf(cmd, sizeof cmd, "bench_gemm.py --m %d --n %d --k %d --trans-a %d --trans-b %d --threads %d",
                          s.M, s.N, s.K, int(s.trans_a), int(s.trans_b), threads);
            ref = bench::run_reference(cmd, "gflops");
        }
        std::printf("%-28s %4d x %4d x %4d%s: %6.1f GFLOP/s = %3.0f%% of the FP32 peak", s.what, s.M, s.N, s.K,
                    s.trans_a   ? " (Aᵀ)"
                    : s.trans_b ? " (Bᵀ)"
                                : "",
                    gflops, 100 * gflops / peak);
        if (ref.value > 0) std::printf(", PyTorch %.1f (%s): %.2fx", ref.value, ref.torch.c_str(), gflops / ref.value);
        std::printf("\n");
        char workload[200];
        std::snprintf(workload, sizeof workload, "GEMM fp32 %s: %d x %d x %d%s", s.what, s.M, s.N, s.K,
                      s.trans_a   ? ", A transposed"
                      : s.trans_b ? ", B transposed"
                                  : "");
        bench::Result r{.workload = workload,
                        .distill = gflops,
                        .unit = "GFLOP/s",
                        .peak_fraction = gflops / peak,
                        .bound = "compute",
                        .threads = threads,
                        .torch = "",
                        .extra = {{"peak_gflops", peak}}};
        if (ref.value > 0) {
            r.pytorch = ref.value;
            r.torch = ref.torch;
            r.extra["pytorch_peak_fraction"] = ref.value / peak;
        }
        bench::emit(r);
    }
    return 0;
}
