// Forward + backward of the GPT student (zero_grad, forward, cross-entropy, backward; no optimizer
// step), the same workload as benchmarks/reference/bench_student.py, which runs in the same
// invocation. Prints tokens/s, achieved GFLOP/s, the fraction of the measured FP32 FMA peak, and the
// ratio to PyTorch.
//
//   bench_student [--vocab 256] [--context 256] [--d-model 256] [--layers 4] [--heads 4] [--d-ff 1024]
//                 [--batch 8] [--threads 2] [--steps 10] [--no-reference]

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "common.hpp"
#include "distill/distill.hpp"

int main(int argc, char** argv) {
    using namespace distill;
    student::TransformerConfig cfg{
        .vocab_size = 256, .context_length = 256, .d_model = 256, .n_layers = 4, .n_heads = 4, .d_ff = 1024};
    int B = 8, threads = 2, steps = 10;
    bool reference = true;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&] {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "%s needs a value\n", a.c_str());
                std::exit(2);
            }
            return std::atoi(argv[++i]);
        };
        if (a == "--vocab")
            cfg.vocab_size = next();
        else if (a == "--context")
            cfg.context_length = next();
        else if (a == "--d-model")
            cfg.d_model = next();
        else if (a == "--layers")
            cfg.n_layers = next();
        else if (a == "--heads")
            cfg.n_heads = next();
        else if (a == "--d-ff")
            cfg.d_ff = next();
        else if (a == "--batch")
            B = next();
        else if (a == "--threads")
            threads = next();
        else if (a == "--steps")
            steps = next();
        else if (a == "--no-reference")
            reference = false;
        else {
            std::fprintf(stderr, "unknown argument %s\n", a.c_str());
            return 2;
        }
    }
    const int T = cfg.context_length, C = cfg.d_model, F = cfg.d_ff, V = cfg.vocab_size, L = cfg.n_layers;

    student::Transformer<float, device::Cpu> m(cfg, B, device::Cpu(threads));
    m.init(0);
    Rng rng(0);
    std::vector<std::int32_t> tokens(std::size_t(B) * T), targets(tokens.size());
    for (auto& t : tokens) t = std::int32_t(rng.below(std::uint64_t(V)));
    for (auto& t : targets) t = std::int32_t(rng.below(std::uint64_t(V)));
    auto step = [&] {
        m.zero_grad();
        m.forward(tokens.data(), B, T);
        const float loss = m.cross_entropy(targets.data());
        m.backward();
        return loss;
    };
    // Validate before timing: random targets give a loss near ln(V) at init, finite gradients.
    const float loss0 = step();
    if (!(std::abs(loss0 - std::log(float(V))) < 0.5f)) {
        std::fprintf(stderr, "validation failed: initial loss %f, expected about ln(V) = %f\n", loss0,
                     std::log(float(V)));
        return 1;
    }
    for (std::size_t i = 0; i < m.arena_size(); ++i)
        if (!std::isfinite(m.gradient_data()[i])) {
            std::fprintf(stderr, "validation failed: non-finite gradient\n");
            return 1;
        }
    step();

    const double t0 = bench::now();
    for (int s = 0; s < steps; ++s) step();
    const double dt = (bench::now() - t0) / steps;

    // FLOPs of the matrix products actually computed (full T x T attention), forward x 3 for
    // forward + backward; elementwise work is not counted.
    const double N = double(B) * T;
    const double fwd =
        2.0 * N * L * (3.0 * C * C + C * C + 2.0 * C * F) + 2.0 * N * C * V + 4.0 * B * L * double(T) * T * C;
    const double flops = 3.0 * fwd;
    const double tok_s = N / dt, gflops = flops / dt / 1e9;
    const double peak = bench::fp32_peak(threads);

    std::printf("workload: student fwd+bwd V=%d T=%d d=%d L=%d H=%d F=%d B=%d, %d threads\n", V, T, C, L, cfg.n_heads,
                F, B, threads);
    std::printf(
        "distill: %.1f ms/step, %.0f tokens/s, %.1f GFLOP/s = %.1f%% of the measured FP32 FMA peak (%.0f GFLOP/s)\n",
        dt * 1e3, tok_s, gflops, 100.0 * gflops / peak, peak);
    char workload[160];
    std::snprintf(workload, sizeof workload, "student fwd+bwd (CE, no optimizer): V=%d T=%d d=%d L=%d B=%d", V, T, C, L,
                  B);
    bench::Result r{.workload = workload,
                    .distill = tok_s,
                    .unit = "tokens/s",
                    .peak_fraction = gflops / peak,
                    .bound = "compute",
                    .threads = threads};
    if (reference) {
        char cmd[512];
        std::snprintf(cmd, sizeof cmd,
                      "bench_student.py --vocab %d --context %d --d-model %d --layers %d --heads %d --d-ff %d "
                      "--batch %d --threads %d --steps %d",
                      V, T, C, L, cfg.n_heads, F, B, threads, std::max(3, steps / 2));
        const auto ref = bench::run_reference(cmd, "tokens_per_s");
        if (ref.value > 0) {
            std::printf("ratio distill / PyTorch: %.2fx tokens/s\n", tok_s / ref.value);
            r.pytorch = ref.value;
            r.torch = ref.torch;
        }
    }
    bench::emit(r);
    return 0;
}
