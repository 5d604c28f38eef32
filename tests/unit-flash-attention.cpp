// Fused causal attention (device/cpu/flash_attention.hpp): forward and backward against the (T,T)
// path of nn::attention_forward/backward on the plain-loop Reference device and on Cpu, on shapes
// that are not multiples of the tile, grouped-query heads and a batch; a finite-difference check in
// double; and bit-identical results across thread counts that take the same backward schedule.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "distill/device/cpu.hpp"
#include "distill/device/reference.hpp"
#include "distill/io/quant.hpp"
#include "distill/nn/attention.hpp"
#include "testing.hpp"

using namespace distill;
using distill::testing::check_close;
using distill::testing::check_gradient;
using distill::testing::random_vector;

static_assert(!device::fused_attention_device<device::Reference, float>);
// every build has the fused kernels (their tiles choose the ISA at run time)
static_assert(DISTILL_CPU_FUSED_ATTENTION == 1);
static_assert(device::fused_attention_device<device::Cpu, float>);
static_assert(device::fused_attention_device<device::Cpu, double>);

namespace {

struct Shape {
    int B, T, H, Hkv, hs;
};

// T = 1, T one past the tile, T across several tiles with 14/2 grouped-query heads, head sizes 64 and 32
// (the backward at 2 threads takes one pass from 8 (b, kv head) pairs: the first and the last two shapes)
constexpr Shape shapes[] = {{2, 1, 4, 4, 64},  {1, 65, 4, 2, 32}, {2, 130, 14, 2, 64},
                            {3, 77, 2, 1, 32}, {4, 70, 8, 4, 32}, {8, 130, 14, 2, 64}};

template <class T>
void unfused(const device::Reference& dev, std::vector<T>& out, std::vector<T>& dqkv, const std::vector<T>& qkv,
             const std::vector<T>& dout, const Shape& s) {
    std::vector<T> att(std::size_t(s.B) * s.H * s.T * s.T), datt(att.size());
    nn::attention_forward(dev, out.data(), att.data(), qkv.data(), s.B, s.T, s.H, s.Hkv, s.hs);
    nn::attention_backward(dev, dqkv.data(), datt.data(), dout.data(), qkv.data(), att.data(), static_cast<T*>(nullptr),
                           s.B, s.T, s.H, s.Hkv, s.hs);
}

}  // namespace

TEST_CASE("flash attention: forward and backward equal the unfused path (fp32, Reference and Cpu)") {
    device::Reference ref;
    device::Cpu cpu(2);
    for (const Shape& s : shapes) {
        CAPTURE(s.B);
        CAPTURE(s.T);
        CAPTURE(s.H);
        CAPTURE(s.Hkv);
        CAPTURE(s.hs);
        const int C = s.H * s.hs, W = (s.H + 2 * s.Hkv) * s.hs;
        const std::size_t rows = std::size_t(s.B) * s.T;
        // scores of a few units, as in a trained model's attention
        const auto qkv = random_vector<float>(rows * W, 7, 1.5);
        const auto dout = random_vector<float>(rows * C, 8);
        std::vector<float> o_ref(rows * C), g_ref(rows * W);
        unfused(ref, o_ref, g_ref, qkv, dout, s);
        // Cpu's unfused path too: the model's other mode
        std::vector<float> o_cpu(rows * C), att(std::size_t(s.B) * s.H * s.T * s.T);
        nn::attention_forward(cpu, o_cpu.data(), att.data(), qkv.data(), s.B, s.T, s.H, s.Hkv, s.hs);

        std::vector<float> out(rows * C), lse(std::size_t(s.B) * s.H * s.T), dqkv(rows * W, 1e9f);
        flash_attention_forward(cpu, out.data(), lse.data(), qkv.data(), s.B, s.T, s.H, s.Hkv, s.hs);
        check_close("flash out vs reference", out.data(), o_ref.data(), std::int64_t(out.size()), 1e-5, 1e-5);
        check_close("flash out vs cpu unfused", out.data(), o_cpu.data(), std::int64_t(out.size()), 1e-5, 1e-5);
        std::vector<float> no_lse(out.size());
        flash_attention_forward(cpu, no_lse.data(), static_cast<float*>(nullptr), qkv.data(), s.B, s.T, s.H, s.Hkv,
                                s.hs);
        CHECK(no_lse == out);  // inference (no lse) computes the same rows

        flash_attention_backward(cpu, dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T, s.H,
                                 s.Hkv, s.hs);
        check_close("flash dqkv vs reference", dqkv.data(), g_ref.data(), std::int64_t(dqkv.size()), 2e-5, 1e-4);
    }
}

TEST_CASE("flash attention: bit-identical across thread counts that take the same schedule") {
    // two passes at 2 and 3 threads (6 pairs); one pass at 1 and 3 (16 pairs)
    for (const Shape& s : {Shape{2, 100, 6, 3, 32}, Shape{4, 100, 8, 4, 32}}) {
        const int t0 = s.B * s.Hkv < 16 ? 2 : 1;
        const int C = s.H * s.hs, W = (s.H + 2 * s.Hkv) * s.hs;
        const std::size_t rows = std::size_t(s.B) * s.T;
        const auto qkv = random_vector<float>(rows * W, 21), dout = random_vector<float>(rows * C, 22);
        // the same buffers on both runs (an element's bits may depend on its address, as in every Eigen kernel)
        std::vector<float> out(rows * C), lse(std::size_t(s.B) * s.H * s.T), dqkv(rows * W);
        std::vector<float> first[3];
        for (int threads : {t0, 3}) {
            device::Cpu dev(threads);
            flash_attention_forward(dev, out.data(), lse.data(), qkv.data(), s.B, s.T, s.H, s.Hkv, s.hs);
            flash_attention_backward(dev, dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T, s.H,
                                     s.Hkv, s.hs);
            if (threads == t0) {
                first[0] = out;
                first[1] = lse;
                first[2] = dqkv;
            }
        }
        CHECK(first[0] == out);
        CHECK(first[1] == lse);
        CHECK(first[2] == dqkv);
    }
}

TEST_CASE("flash attention: double precision against Reference and a finite-difference gradient") {
    device::Reference ref;
    for (const Shape& s : {Shape{1, 1, 2, 1, 4}, Shape{2, 67, 2, 1, 4}, Shape{1, 70, 4, 2, 3}, Shape{8, 66, 4, 2, 3}})
        for (int threads : {1, 2}) {  // one pass at 1 thread; two at 2 but for the last shape
            const device::Cpu cpu(threads);
            CAPTURE(threads);
            CAPTURE(s.B);
            CAPTURE(s.T);
            CAPTURE(s.Hkv);
            const int C = s.H * s.hs, W = (s.H + 2 * s.Hkv) * s.hs;
            const std::size_t rows = std::size_t(s.B) * s.T;
            auto qkv = random_vector<double>(rows * W, 31, 2.0);
            const auto R = random_vector<double>(rows * C, 32);
            std::vector<double> o_ref(rows * C), g_ref(rows * W);
            unfused(ref, o_ref, g_ref, qkv, R, s);
            std::vector<double> out(rows * C), lse(std::size_t(s.B) * s.H * s.T), dqkv(rows * W);
            auto f = [&] {
                flash_attention_forward(cpu, out.data(), lse.data(), qkv.data(), s.B, s.T, s.H, s.Hkv, s.hs);
                return std::inner_product(out.begin(), out.end(), R.begin(), 0.0);
            };
            f();
            check_close("flash out (double)", out.data(), o_ref.data(), std::int64_t(out.size()), 1e-13, 1e-12);
            flash_attention_backward(cpu, dqkv.data(), R.data(), qkv.data(), out.data(), lse.data(), s.B, s.T, s.H,
                                     s.Hkv, s.hs);
            check_close("flash dqkv (double)", dqkv.data(), g_ref.data(), std::int64_t(dqkv.size()), 1e-12, 1e-10);
            if (rows * W <= 2500) check_gradient("flash d_qkv", qkv, f, dqkv);  // the last shape: Reference alone
        }
}

TEST_CASE("flash attention: bf16 forward and backward (AMX tiles where the CPU has them)") {
    if (!device::Cpu::bf16_supported()) {
        MESSAGE("bf16 is unsupported here: " << device::Cpu::bf16_unsupported_reason());
        return;
    }
    // x rounded to bf16, to nearest even (the inputs an AMX tile product sees)
    const auto bf16 = [](float x) { return double(quant::bf16_to_fp32(quant::fp32_to_bf16(x))); };
    const auto largest = [](const std::vector<double>& v) {
        double m = 0;
        for (double x : v) m = std::max(m, std::abs(x));
        return m;
    };
    device::Reference ref;
    for (const int threads : {1, 2}) {
        const device::Cpu fp32(threads), bf(threads, device::precision::bf16);
        for (const Shape& s : {shapes[0], shapes[1], shapes[2], shapes[3], shapes[4], shapes[5],
                               Shape{2, 256, 4, 4, 128}, Shape{1, 40, 3, 3, 48}, Shape{1, 70, 4, 1, 32}})
            for (const double spread : {1.5, 4.0}) {
                CAPTURE(threads);
                CAPTURE(s.T);
                CAPTURE(s.H);
                CAPTURE(s.hs);
                CAPTURE(spread);
                const bool bf16_tiles = device::detail::uses_bf16_attention(bf, device::row_kernel_isa(), s.hs),
                           bf16_trains =
                               device::detail::trains_on_bf16_tiles(bf, device::row_kernel_isa(), s.hs, s.B, s.Hkv);
                CAPTURE(bf16_tiles);
                CAPTURE(bf16_trains);
                const int C = s.H * s.hs, W = (s.H + 2 * s.Hkv) * s.hs;
                const std::size_t rows = std::size_t(s.B) * s.T;
                const auto qkv = random_vector<float>(rows * W, 41, spread), dout = random_vector<float>(rows * C, 42);
                std::vector<float> out(rows * C, std::nanf("")), exact(rows * C), infer(rows * C);
                std::vector<float> lse(std::size_t(s.B) * s.H * s.T), lse32(lse.size());
                std::vector<float> dqkv(rows * W, std::nanf("")), dqkv32(rows * W);
                flash_attention_forward(bf, out.data(), lse.data(), qkv.data(), s.B, s.T, s.H, s.Hkv, s.hs);
                flash_attention_forward(bf, infer.data(), static_cast<float*>(nullptr), qkv.data(), s.B, s.T, s.H,
                                        s.Hkv, s.hs);
                flash_attention_backward(bf, dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T,
                                         s.H, s.Hkv, s.hs);
                flash_attention_forward(fp32, exact.data(), lse32.data(), qkv.data(), s.B, s.T, s.H, s.Hkv, s.hs);
                flash_attention_backward(fp32, dqkv32.data(), dout.data(), qkv.data(), exact.data(), lse32.data(), s.B,
                                         s.T, s.H, s.Hkv, s.hs);
                if (bf16_trains) CHECK(infer == out);  // inference (no lse) computes the same rows
                if (!bf16_trains) {  // training on the fp32 tiles: fewer (b, kv head) pairs than threads
                    CHECK(out == exact);
                    CHECK(lse == lse32);
                    CHECK(dqkv == dqkv32);
                }
                if (!bf16_tiles) {  // no AMX or AVX512-BF16, a head size they do not take, or DISTILL_CPU_ISA capped:
                                    // the fp32 tiles
                    CHECK(infer == exact);
                    continue;
                }
                // against exact attention (double) of the rounded q, k, v and dout. The forward's output is
                // off by the probabilities' rounding before the product with v (half a unit in the last place,
                // 2^-9, each): less than 2^-8 of the largest |output|. The backward rounds P, dS and their
                // transposes too: within 2^-7 of the largest |gradient|.
                std::vector<double> rounded(qkv.size()), dy(dout.size()), o_ref(rows * C), g_ref(rows * W);
                std::transform(qkv.begin(), qkv.end(), rounded.begin(), bf16);
                std::transform(dout.begin(), dout.end(), dy.begin(), bf16);
                unfused(ref, o_ref, g_ref, rounded, dy, s);
                check_close("bf16 tiles: out vs rounded inputs", infer.data(), o_ref.data(), std::int64_t(out.size()),
                            largest(o_ref) / 256, 0);
                CHECK(infer != exact);  // not the fp32 tiles' result: the rounding shows
                if (bf16_trains) {
                    check_close("bf16 tiles: dqkv vs rounded inputs", dqkv.data(), g_ref.data(),
                                std::int64_t(dqkv.size()), largest(g_ref) / 128, 0);
                    CHECK(dqkv != dqkv32);
                }
            }
    }
}
