// Batch-1 generation's matrix-vector products on quantized weights: `quant_matmul` with m = 1 over
// --matrices distinct weight matrices of (n, k) (default 16 of 2048 × 512, a d_model 512 model's
// MLP weights: more bytes than the caches hold, as a token's pass over a model's layers is), for
// each ggml type (F32, F16, BF16, Q8_0, Q4_0, Q4_K), beside distill's fp32 `gemm` with M = 1 and
// PyTorch's fp32 F.linear on the same shapes (benchmarks/reference/bench_quant.py, run in the same
// invocation). Prints per type the time of one pass, the weight bytes streamed per second and their
// fraction of this machine's measured bandwidth (the bound of a GEMV), and the ratio to PyTorch.
//
//   bench_quant [--k 512] [--n 2048] [--matrices 16] [--threads 2] [--reps 20] [--no-reference]

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common.hpp"
#include "distill/detail/rng.hpp"
#include "distill/device/cpu.hpp"
#include "distill/device/reference.hpp"

int main(int argc, char** argv) {
    using namespace distill;
    std::int64_t k = 512, n = 2048;
    int matrices = 16, threads = 2, reps = 20;
    bool reference = true;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&] {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "%s needs a value\n", a.c_str());
                std::exit(2);
            }
            return std::atoll(argv[++i]);
        };
        if (a == "--k")
            k = next();
        else if (a == "--n")
            n = next();
        else if (a == "--matrices")
            matrices = static_cast<int>(next());
        else if (a == "--threads")
            threads = static_cast<int>(next());
        else if (a == "--reps")
            reps = static_cast<int>(next());
        else if (a == "--no-reference")
            reference = false;
        else {
            std::fprintf(stderr, "unknown argument %s\n", a.c_str());
            return 2;
        }
    }
    if (k < 256 || k % 256 != 0 || n < 1 || matrices < 1 || threads < 1 || reps < 1) {
        std::fprintf(stderr, "need --k a multiple of 256, --n, --matrices, --threads, --reps >= 1\n");
        return 2;
    }

    device::Cpu dev(threads);
    Rng rng(1);
    std::vector<float> x(static_cast<std::size_t>(k)), w(static_cast<std::size_t>(matrices * n * k));
    for (auto& v : x) v = static_cast<float>(rng.normal());
    for (auto& v : w) v = static_cast<float>(0.02 * rng.normal());
    std::vector<float> y(static_cast<std::size_t>(matrices * n)), y_ref(static_cast<std::size_t>(n));

    // distill's fp32 GEMM with M = 1 (what generation runs without quantization), for comparison.
    auto fp32_pass = [&] {
        for (int l = 0; l < matrices; ++l)
            gemm(dev, false, true, 1, static_cast<int>(n), static_cast<int>(k), 1.0f, x.data(), static_cast<int>(k),
                 w.data() + std::size_t(l) * std::size_t(n * k), static_cast<int>(k), 0.0f,
                 y.data() + std::size_t(l) * std::size_t(n), static_cast<int>(n));
    };
    fp32_pass();
    double t0 = bench::now();
    for (int r = 0; r < reps; ++r) fp32_pass();
    const double gemm_ms = (bench::now() - t0) / reps * 1e3;

    const double bandwidth = bench::bandwidth(threads);
    bench::Reference torch_ref;
    if (reference) {
        char cmd[256];
        std::snprintf(cmd, sizeof cmd, "bench_quant.py --k %lld --n %lld --matrices %d --threads %d --reps %d",
                      static_cast<long long>(k), static_cast<long long>(n), matrices, threads, reps);
        torch_ref = bench::run_reference(cmd, "ms_per_pass");
    }
    std::printf(
        "workload: y = x W^T, x (1, %lld), %d matrices W (%lld, %lld), %d threads; machine bandwidth %.1f GB/s\n",
        static_cast<long long>(k), matrices, static_cast<long long>(n), static_cast<long long>(k), threads, bandwidth);
    std::printf("distill fp32 gemm (M = 1): %.3f ms per pass\n", gemm_ms);

    for (quant::type t : {quant::type::F32, quant::type::F16, quant::type::BF16, quant::type::Q8_0, quant::type::Q4_0,
                          quant::type::Q4_K}) {
        const std::size_t rb = quant::row_bytes(t, k);
        std::vector<std::byte> q(rb * std::size_t(n) * std::size_t(matrices));
        for (std::int64_t j = 0; j < n * matrices; ++j)
            quant::quantize_row(t, w.data() + j * k, k, q.data() + std::size_t(j) * rb);
        auto pass = [&] {
            for (int l = 0; l < matrices; ++l)
                quant_matmul(dev, x.data(), q.data() + std::size_t(l) * rb * std::size_t(n), t,
                             y.data() + std::size_t(l) * std::size_t(n), 1, k, n);
        };
        // Validate before timing: the last matrix against the Reference kernel.
        pass();
        quant_matmul(device::Reference{}, x.data(), q.data() + std::size_t(matrices - 1) * rb * std::size_t(n), t,
                     y_ref.data(), 1, k, n);
        double worst = 0, scale = 0;
        for (std::int64_t j = 0; j < n; ++j) {
            worst = std::max(worst, double(std::abs(y[std::size_t((matrices - 1) * n + j)] - y_ref[std::size_t(j)])));
            scale = std::max(scale, double(std::abs(y_ref[std::size_t(j)])));
        }
        if (!(worst <= 1e-4 * scale + 1e-6)) {
            std::fprintf(stderr, "validation failed: %s GEMV off the Reference by %.3g (scale %.3g)\n",
                         std::string(quant::name(t)).c_str(), worst, scale);
            return 1;
        }
        t0 = bench::now();
        for (int r = 0; r < reps; ++r) pass();
        const double ms = (bench::now() - t0) / reps * 1e3;
        const double bytes = double(q.size()), gbs = bytes / (ms * 1e-3) / 1e9;
        std::printf("%-5s %7.3f ms per pass, %6.1f GB/s of weights = %3.0f%% of bandwidth, %.2fx distill fp32 gemm",
                    std::string(quant::name(t)).c_str(), ms, gbs, 100 * gbs / bandwidth, gemm_ms / ms);
        if (torch_ref.value > 0) std::printf(", %.2fx PyTorch fp32", torch_ref.value / ms);
        std::printf("\n");
        char workload[200];
        std::snprintf(workload, sizeof workload, "quant GEMV %s: %d x (%lld x %lld), m = 1",
                      std::string(quant::name(t)).c_str(), matrices, static_cast<long long>(n),
                      static_cast<long long>(k));
        bench::Result r{.workload = workload,
                        .distill = ms,
                        .unit = "ms",
                        .higher_is_better = false,
                        .peak_fraction = gbs / bandwidth,
                        .bound = "bandwidth",
                        .threads = threads,
                        .torch = "",
                        .extra = {{"weight_bytes", bytes}, {"gb_per_s", gbs}, {"distill_fp32_gemm_ms", gemm_ms}}};
        if (torch_ref.value > 0) {
            r.pytorch = torch_ref.value;
            r.torch = torch_ref.torch;
        }
        bench::emit(r);
    }
    return 0;
}
