// The causal attention core alone on device::Cpu: the unfused path (nn::attention_forward/backward:
// a (B,H,T,T) score GEMM, the softmax, the value GEMM) against the fused kernels
// (flash_attention_forward/backward: key tiles through an online softmax, no (T,T) buffer). Prints
// the best of --reps runs of each in ms, wall time and process CPU time, and the instruction set the
// fused tiles ran on (the run-time choice of device/cpu/isa.hpp; DISTILL_CPU_ISA=sse2|avx2|avx512
// caps it). Defaults: the medium train step's teacher (B 8, T 256, 8 heads of 64).
//
// With oneDNN's bf16 (`distill::dnnl`) it also times an inference forward, and a training forward
// and backward, under precision::bf16, whose tiles run on AMX where the CPU has it.
//
//   bench_attention [--batch 8] [--seq 256] [--heads 8] [--kv-heads 8] [--head-size 64] [--threads 1]
//                   [--reps 7]

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <vector>

#include "distill/device/cpu.hpp"
#include "distill/nn/attention.hpp"

using namespace distill;

int main(int argc, char** argv) {
    int B = 8, T = 256, H = 8, Hkv = 0, hs = 64, threads = 1, reps = 7;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (i + 1 >= argc) {
            std::fprintf(stderr, "%s needs a value\n", a.c_str());
            return 2;
        }
        const int v = std::atoi(argv[++i]);
        if (a == "--batch")
            B = v;
        else if (a == "--seq")
            T = v;
        else if (a == "--heads")
            H = v;
        else if (a == "--kv-heads")
            Hkv = v;
        else if (a == "--head-size")
            hs = v;
        else if (a == "--threads")
            threads = v;
        else if (a == "--reps")
            reps = v;
        else {
            std::fprintf(stderr, "unknown argument %s\n", a.c_str());
            return 2;
        }
    }
    if (Hkv == 0) Hkv = H;
    if (B < 1 || T < 1 || H < 1 || Hkv < 1 || H % Hkv || hs < 1 || threads < 1 || reps < 1) {
        std::fprintf(stderr, "every size must be >= 1 and --kv-heads must divide --heads\n");
        return 2;
    }
    const int C = H * hs, W = (H + 2 * Hkv) * hs;
    device::Cpu dev(threads);
    std::vector<float> qkv(std::size_t(B) * T * W), out(std::size_t(B) * T * C), dout(out.size());
    std::vector<float> att(std::size_t(B) * H * T * T), datt(att.size()), lse(std::size_t(B) * H * T), dqkv(qkv.size());
    for (std::size_t i = 0; i < qkv.size(); ++i) qkv[i] = float((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    for (std::size_t i = 0; i < dout.size(); ++i) dout[i] = float((i * 40503u) % 1000) / 1000.0f - 0.5f;
    // the best wall time and the best process CPU time (steadier on a loaded machine) of --reps runs
    struct Best {
        double wall = 1e30, cpu = 1e30;
    };
    auto cpu_ms = [] {
        timespec ts{};
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
        return double(ts.tv_sec) * 1e3 + double(ts.tv_nsec) * 1e-6;
    };
    auto best = [&](auto&& f) {
        Best b;
        for (int r = 0; r < reps; ++r) {
            const auto t0 = std::chrono::steady_clock::now();
            const double c0 = cpu_ms();
            f();
            b.cpu = std::min(b.cpu, cpu_ms() - c0);
            b.wall = std::min(b.wall,
                              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
        }
        return b;
    };
    const float* none = nullptr;
    float* none_out = nullptr;
    const Best uf = best([&] { nn::attention_forward(dev, out.data(), att.data(), qkv.data(), B, T, H, Hkv, hs); });
    const Best ub = best([&] {
        nn::attention_backward(dev, dqkv.data(), datt.data(), dout.data(), qkv.data(), att.data(), none, B, T, H, Hkv,
                               hs);
    });
    const Best ff = best([&] { flash_attention_forward(dev, out.data(), lse.data(), qkv.data(), B, T, H, Hkv, hs); });
    const Best fb = best([&] {
        flash_attention_backward(dev, dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T, H, Hkv, hs);
    });
    // an inference forward (no log-sum-exp kept): fp32 tiles, and under precision::bf16 the bf16 tiles (AMX or
    // AVX512-BF16) where the CPU has them (cpu/bf16_tiles.hpp)
    const Best fi = best([&] { flash_attention_forward(dev, out.data(), none_out, qkv.data(), B, T, H, Hkv, hs); });
    std::printf("attention B=%d T=%d H=%d Hkv=%d hs=%d, %d threads, tiles on %s (best of %d, ms)\n", B, T, H, Hkv, hs,
                threads, device::to_string(device::row_kernel_isa()), reps);
    std::printf("forward:  unfused %.2f  fused %.2f  (%.2fx)   cpu: unfused %.2f  fused %.2f  (%.2fx)\n", uf.wall,
                ff.wall, uf.wall / ff.wall, uf.cpu, ff.cpu, uf.cpu / ff.cpu);
    std::printf("backward: unfused %.2f  fused %.2f  (%.2fx)   cpu: unfused %.2f  fused %.2f  (%.2fx)\n", ub.wall,
                fb.wall, ub.wall / fb.wall, ub.cpu, fb.cpu, ub.cpu / fb.cpu);
    std::printf("inference forward (no lse): fp32 tiles %.2f", fi.wall);
    if (device::Cpu::bf16_supported()) {
        const device::Cpu bf(threads, device::precision::bf16);
        const Best bi = best([&] { flash_attention_forward(bf, out.data(), none_out, qkv.data(), B, T, H, Hkv, hs); });
        const bool tiles = device::detail::uses_bf16_attention(bf, device::row_kernel_isa(), hs);
        std::printf("  bf16 %s %.2f  (%.2fx)\n", tiles ? "tiles" : "(fp32 tiles: no AMX or AVX512-BF16 here)", bi.wall,
                    fi.wall / bi.wall);
        // training under bf16: forward with lse and backward, on bf16 tiles with a (b, kv head) pair per thread
        const Best bf_f =
            best([&] { flash_attention_forward(bf, out.data(), lse.data(), qkv.data(), B, T, H, Hkv, hs); });
        const Best bf_b = best([&] {
            flash_attention_backward(bf, dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T, H, Hkv,
                                     hs);
        });
        std::printf("bf16 training (%s): forward %.2f  (%.2fx fused fp32)  backward %.2f  (%.2fx fused fp32)",
                    device::detail::trains_on_bf16_tiles(bf, device::row_kernel_isa(), hs, B, Hkv) ? "bf16 tiles"
                                                                                                   : "fp32 tiles",
                    bf_f.wall, ff.wall / bf_f.wall, bf_b.wall, fb.wall / bf_b.wall);
    } else {
        std::printf("  bf16 unsupported: %s", device::Cpu::bf16_unsupported_reason().c_str());
    }
    std::printf("\n");
}
