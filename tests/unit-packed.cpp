// Packed weights (device::pack_weight / gemm_packed: oneDNN's blocked layout, or panel_gemm's panels
// where oneDNN runs at AVX2) and the model's use of them: KvCache decoding and
// Transformer::pack_matrices, bit for bit against the plain products. In the oneDNN-linked test binary
// (distill_bf16_tests), where the packed path exists.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "distill/device/cpu.hpp"
#include "distill/device/reference.hpp"
#include "distill/student/transformer.hpp"
#include "distill/student/transformer_memory.hpp"
#include "testing.hpp"

using namespace distill;
using distill::testing::check_close;
using distill::testing::random_vector;

namespace {
// The Llama family's blocks (as unit-student.cpp's): RMSNorm, rotary positions, SwiGLU, grouped-query
// attention, q/k/v biases only, an untied head.
student::TransformerConfig llama_like(student::TransformerConfig c) {
    c.norm = "rmsnorm";
    c.norm_eps = 1e-6;
    c.positions = "rope";
    c.rope_theta = 500;
    c.mlp = "swiglu";
    c.n_kv_heads = c.n_heads / 2;
    c.proj_bias = c.mlp_bias = c.tie_embeddings = false;
    return c;
}
}  // namespace

#if defined(DISTILL_PANEL_GEMM)
TEST_CASE("panel_gemm: 1 to 16 rows against W's panels match the plain loops, on any AVX2 CPU") {
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
        MESSAGE("skipped: this CPU has no AVX2 and FMA");
        return;
    }
    device::Reference ref;
    // N: one panel, a ragged last panel, fewer columns than a vector; K: a long one, an odd one, one
    for (const auto& [N, K] : {std::pair{16, 300}, std::pair{263, 70}, std::pair{5, 1}}) {
        const auto W = random_vector<float>(std::size_t(N) * (K + 3), 21);  // row stride K + 3
        const auto bias = random_vector<float>(std::size_t(N), 22);
        std::vector<float> P(device::detail::panel_floats(N, K));
        device::detail::pack_panels(P.data(), W.data(), N, K, K + 3);
        for (int M = 1; M <= device::detail::panel_max_rows; ++M)
            for (const float beta : {0.0f, 1.0f})
                for (const bool with_bias : {false, true})
                    for (const int threads : {1, 2}) {
                        const int lda = K + 1, ldc = N + 2;
                        const auto A = random_vector<float>(std::size_t(M) * lda, 23);
                        auto C = random_vector<float>(std::size_t(M) * ldc, 24), expect = C;
                        const float* b = with_bias ? bias.data() : nullptr;
                        device::detail::panel_gemm(threads, M, N, K, A.data(), lda, P.data(), beta, C.data(), ldc, b);
                        gemm(ref, false, true, M, N, K, 1.0f, A.data(), lda, W.data(), K + 3, beta, expect.data(), ldc);
                        for (int m = 0; m < M; ++m)
                            if (with_bias) add_bias(ref, expect.data() + std::int64_t(m) * ldc, b, 1, N);
                        INFO("M=" << M << " N=" << N << " K=" << K << " beta=" << beta << " bias=" << with_bias
                                  << " threads=" << threads);
                        check_close("panel_gemm", C.data(), expect.data(), std::int64_t(C.size()), 1e-5, 1e-5);
                        for (int m = 0; m < M; ++m)  // the columns past N untouched
                            for (int n = N; n < ldc; ++n)
                                CHECK(C[std::size_t(m) * ldc + n] == expect[std::size_t(m) * ldc + n]);
                    }
    }
}
#endif

TEST_CASE("gemm_packed: a packed weight gives the bits of the plain weight's product") {
    device::Reference ref;
    for (const int threads : {1, 2}) {
        const device::Cpu cpu(threads);
        // N, K: a multiple of every block, a ragged one, one below a block
        for (const auto& [N, K] : {std::pair{256, 128}, std::pair{263, 70}, std::pair{5, 3}}) {
            const auto W = random_vector<float>(std::size_t(N) * K, 7);
            const auto bias = random_vector<float>(std::size_t(N), 8);
            const device::packed_weight packed = pack_weight(cpu, W.data(), N, K);
            // oneDNN's blocked layout wherever it has one for this CPU (AVX-512: brgemm's); AVX2 reads W as it is
            if (packed) CHECK(packed.bytes() >= sizeof(float) * std::size_t(N) * K);
            MESSAGE("threads " << threads << ", W " << N << " x " << K << ": "
                               << std::string(packed ? "packed" : "not packed (oneDNN reads W as it is)"));
            for (const int M : {1, 4, 37})
                for (const float beta : {0.0f, 1.0f})
                    for (const bool with_bias : {false, true})
                        for (const bool gelu : {false, true})
                            for (const int pad : {0, 2}) {  // contiguous A and C (as the model's), or strided
                                const int lda = K + pad, ldc = N + pad;
                                const auto A = random_vector<float>(std::size_t(M) * lda, 9);
                                auto C0 = random_vector<float>(std::size_t(M) * ldc, 10), C1 = C0, C2 = C0;
                                const float* b = with_bias ? bias.data() : nullptr;
                                if (with_bias || gelu)
                                    gemm_bias(cpu, false, true, M, N, K, A.data(), lda, W.data(), K, beta, C0.data(),
                                              ldc, b, gelu);
                                else
                                    gemm(cpu, false, true, M, N, K, 1.0f, A.data(), lda, W.data(), K, beta, C0.data(),
                                         ldc);
                                gemm_packed(cpu, M, N, K, A.data(), lda, W.data(), packed, beta, C1.data(), ldc, b,
                                            gelu);
                                INFO("threads=" << threads << " M=" << M << " N=" << N << " K=" << K << " beta=" << beta
                                                << " bias=" << with_bias << " gelu=" << gelu << " pad=" << pad);
                                CHECK(C1 == C0);  // bit for bit, the padding columns of C untouched
                                // and the product itself, against the plain loops
                                gemm(ref, false, true, M, N, K, 1.0f, A.data(), lda, W.data(), K, beta, C2.data(), ldc);
                                for (int m = 0; m < M; ++m) {
                                    float* row = C2.data() + std::int64_t(m) * ldc;
                                    if (with_bias) add_bias(ref, row, b, 1, N);
                                    if (gelu) gelu_forward(ref, row, row, N);
                                }
                                check_close("gemm_packed", C1.data(), C2.data(), std::int64_t(C2.size()), 1e-5, 1e-5);
                            }
        }
        // a stored bf16 weight: packed, the bits of gemm_bf16_weight
        if (device::Cpu::bf16_supported()) {
            const int N = 263, K = 70;
            const auto W = random_vector<float>(std::size_t(N) * K, 13);
            std::vector<std::uint16_t> W16(W.size());
            round_bf16(cpu, W16.data(), W.data(), std::int64_t(W.size()));
            const device::packed_weight packed = pack_weight(cpu, W16.data(), N, K);
            CHECK(packed.bf16());
            const auto bias = random_vector<float>(std::size_t(N), 14);
            for (const int M : {1, 16, 37})
                for (const bool gelu : {false, true}) {
                    const auto A = random_vector<float>(std::size_t(M) * K, 15);
                    auto C0 = random_vector<float>(std::size_t(M) * N, 16), C1 = C0;
                    gemm_bf16_weight(cpu, false, true, M, N, K, 1.0f, A.data(), K, W16.data(), K, 1.0f, C0.data(), N,
                                     bias.data(), gelu);
                    gemm_packed(cpu, M, N, K, A.data(), K, W16.data(), packed, 1.0f, C1.data(), N, bias.data(), gelu);
                    INFO("bf16, threads=" << threads << " M=" << M << " gelu=" << gelu);
                    CHECK(C1 == C0);
                }
        }
        // the inference GELU MLP with bf16 hidden rows: the bits of its two products with fp32 rows
        if (device::Cpu::bf16_supported()) {
            const int C = 96, F = 200;
            auto round = [&](std::vector<float> w) {
                std::vector<std::uint16_t> w16(w.size());
                round_bf16(cpu, w16.data(), w.data(), std::int64_t(w.size()));
                return w16;
            };
            const auto W1 = round(random_vector<float>(std::size_t(F) * C, 17)),
                       W2 = round(random_vector<float>(std::size_t(C) * F, 18));
            const auto b1 = random_vector<float>(std::size_t(F), 19), b2 = random_vector<float>(std::size_t(C), 20);
            for (const bool packs : {false, true}) {
                const device::packed_weight p1 = packs ? pack_weight(cpu, W1.data(), F, C) : device::packed_weight(),
                                            p2 = packs ? pack_weight(cpu, W2.data(), C, F) : device::packed_weight();
                for (const int M : {1, 64, 77}) {
                    const auto x = random_vector<float>(std::size_t(M) * C, 21);
                    auto out0 = random_vector<float>(std::size_t(M) * C, 22), out1 = out0;
                    std::vector<float> h0(std::size_t(M) * F), h1(h0.size());
                    gemm_bf16_weight(cpu, false, true, M, F, C, 1.0f, x.data(), C, W1.data(), C, 0.0f, h0.data(), F,
                                     b1.data(), true);
                    gemm_bf16_weight(cpu, false, true, M, C, F, 1.0f, h0.data(), F, W2.data(), F, 1.0f, out0.data(), C,
                                     b2.data());
                    mlp_bf16(cpu, M, C, F, x.data(), W1.data(), p1, b1.data(), W2.data(), p2, b2.data(), h1.data(),
                             out1.data());
                    INFO("mlp_bf16, threads=" << threads << " packed=" << packs << " M=" << M);
                    CHECK(out1 == out0);
                    // the hidden rows, rounded: the first half of `hidden` in bf16
                    std::vector<std::uint16_t> h16(h0.size()), got(h0.size());
                    round_bf16(cpu, h16.data(), h0.data(), std::int64_t(h0.size()));
                    std::memcpy(got.data(), h1.data(), got.size() * 2);
                    CHECK(got == h16);
                }
            }
        }
        // a linear's backward with a stored bf16 weight, dout rounded once: the bits of its two products
        for (const auto precision : {device::precision::fp32, device::precision::bf16}) {
            if (!device::Cpu::bf16_supported()) break;
            const device::Cpu dev(threads, precision);
            const int N = 70, C = 48, OC = 130;
            const auto W = random_vector<float>(std::size_t(OC) * C, 23);
            std::vector<std::uint16_t> W16(W.size());
            round_bf16(dev, W16.data(), W.data(), std::int64_t(W.size()));
            const auto dout = random_vector<float>(std::size_t(N) * OC, 24),
                       in = random_vector<float>(std::size_t(N) * C, 25);
            std::vector<float> din0(std::size_t(N) * C), din1(din0.size());
            auto dW0 = random_vector<float>(W.size(), 26), dW1 = dW0;
            gemm_bf16_weight(dev, false, false, N, C, OC, 1.0f, dout.data(), OC, W16.data(), C, 0.0f, din0.data(), C);
            gemm(dev, true, false, OC, C, N, 1.0f, dout.data(), OC, in.data(), C, 1.0f, dW0.data(), C);
            linear_backward_bf16(dev, din1.data(), dW1.data(), dout.data(), in.data(), W16.data(), N, C, OC);
            INFO("linear_backward_bf16, threads=" << threads
                                                  << " bf16 products=" << (precision == device::precision::bf16));
            CHECK(din1 == din0);
            CHECK(dW1 == dW0);
            // the products differ from fp32 ones under bf16: the test sees the rounding
            if (precision == device::precision::bf16) {
                std::vector<float> dW2 = random_vector<float>(W.size(), 26);
                gemm(device::Cpu(threads), true, false, OC, C, N, 1.0f, dout.data(), OC, in.data(), C, 1.0f, dW2.data(),
                     C);
                CHECK(dW2 != dW1);
            }
        }
        // a copy packed for other threads, or another shape, is not read: the plain weight is
        const auto W = random_vector<float>(std::size_t(64) * 32, 11);
        const device::packed_weight other = pack_weight(device::Cpu(threads == 1 ? 2 : 1), W.data(), 64, 32);
        const auto A = random_vector<float>(std::size_t(8) * 32, 12);
        std::vector<float> C0(std::size_t(8) * 64), C1(C0.size());
        gemm(cpu, false, true, 8, 64, 32, 1.0f, A.data(), 32, W.data(), 32, 0.0f, C0.data(), 64);
        gemm_packed(cpu, 8, 64, 32, A.data(), 32, W.data(), other, 0.0f, C1.data(), 64);
        CHECK(C1 == C0);
    }
}

TEST_CASE("KV-cache decoding on device::Cpu: packed matrices give the plain ones' bits, each prefill packs anew") {
    student::TransformerConfig cfg{
        .vocab_size = 40, .context_length = 12, .d_model = 64, .n_layers = 2, .n_heads = 4, .d_ff = 128};
    SUBCASE("GPT-2 blocks") {}
    SUBCASE("Llama blocks") {
        cfg = llama_like(cfg);
    }
    const int B = 3, Tn = 5;
    const device::Cpu dev(2);
    using Model = student::Transformer<float, device::Cpu>;
    Model m(cfg, B, dev, student::activations::inference), other(cfg, B, dev, student::activations::inference);
    m.init(5);
    other.init(6);
    const int lengths[B] = {4, 5, 2};
    std::vector<std::int32_t> prompt(B * Tn);
    for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = std::int32_t(3 * i % 37 + 1);
    // prefill, then four greedy steps: every step's next-token logits
    auto generate = [&](Model& model, student::KvCache<float, device::Cpu>& cache) {
        model.prefill(cache, prompt.data(), lengths, B, Tn);
        std::vector<float> all;
        for (int step = 0; step < 4; ++step) {
            const auto next = model.next_logits();
            all.insert(all.end(), next.data(), next.data() + next.numel());
            std::vector<std::int32_t> chosen(B);
            for (int b = 0; b < B; ++b) {
                const float* row = next.data() + b * cfg.vocab_size;
                chosen[b] = std::int32_t(std::max_element(row, row + cfg.vocab_size) - row);
            }
            model.decode(cache, chosen.data(), B);
        }
        return all;
    };
    auto packed = m.make_cache(B), plain = m.make_cache(B);
    plain.pack_weights(false);
    CHECK(packed.packs_weights());
    const auto with_packs = generate(m, packed), without = generate(m, plain);
    CHECK(with_packs == without);
    CHECK(plain.packed_bytes() == 0);
    // every matrix packed, as the memory plan counts them (oneDNN's blocked layout: at least W's size)
    CHECK(packed.packed_bytes() == student::kv_cache_packed_bytes<float>(cfg, dev));
    if (packed.packed_bytes() > 0)
        CHECK(packed.packed_bytes() >= sizeof(float) * std::size_t(cfg.n_layers) * 4 * cfg.d_model * cfg.d_model);
    else
        MESSAGE("this CPU's oneDNN reads weights as they are (or no oneDNN): nothing packed");
    // weights written after a prefill (here through the arena): the next prefill packs them
    m.init(7);
    const auto rewritten = generate(m, packed), rewritten_plain = generate(m, plain);
    CHECK(rewritten == rewritten_plain);
    CHECK(rewritten != with_packs);
    // a cache prefilled by another model: decode reads its own weights, not that model's copies
    auto decode_once = [&](student::KvCache<float, device::Cpu>& cache) {
        other.prefill(cache, prompt.data(), lengths, B, Tn);
        const std::vector<std::int32_t> next = {1, 2, 3};
        m.decode(cache, next.data(), B);
        const auto logits = m.next_logits();
        return std::vector<float>(logits.data(), logits.data() + logits.numel());
    };
    CHECK(decode_once(packed) == decode_once(plain));
    packed.release_packed();
    CHECK(packed.packed_bytes() == 0);
}

TEST_CASE("Transformer::pack_matrices: forwards, prefill and decode read packed copies with the plain bits") {
    const student::TransformerConfig cfg{
        .vocab_size = 40, .context_length = 12, .d_model = 64, .n_layers = 2, .n_heads = 4, .d_ff = 128};
    const int B = 3, Tn = 5;
    std::vector<std::int32_t> tokens(B * Tn);
    for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = std::int32_t(5 * i % 39 + 1);
    const int lengths[B] = {5, 3, 4};
    for (const auto p : {device::precision::fp32, device::precision::bf16}) {
        if (p == device::precision::bf16 && !device::Cpu::bf16_supported()) {
            MESSAGE("bf16 skipped: " << device::Cpu::bf16_unsupported_reason());
            continue;
        }
        const device::Cpu dev(2, p);
        using Model = student::Transformer<float, device::Cpu>;
        Model m(cfg, B, dev, student::activations::inference);
        m.init(3);
        // the logits of a forward, then of a prefill and two decoding steps
        auto run = [&](bool frozen) {
            m.forward(tokens.data(), B, Tn);
            const auto logits = m.logits();
            std::vector<float> all(logits.data(), logits.data() + logits.numel());
            auto cache = m.make_cache(B);
            m.prefill(cache, tokens.data(), lengths, B, Tn);
            if (frozen) CHECK(cache.packed_bytes() == 0);  // the model's own copies serve the cache
            for (int step = 0; step < 2; ++step) {
                const auto next = m.next_logits();
                all.insert(all.end(), next.data(), next.data() + next.numel());
                const std::vector<std::int32_t> chosen = {std::int32_t(step + 1), 7, 9};
                m.decode(cache, chosen.data(), B);
            }
            return all;
        };
        const auto plain = run(false);
        m.pack_matrices();
        const auto packed = run(true);
        INFO("precision " << (p == device::precision::bf16 ? "bf16" : "fp32"));
        CHECK(packed == plain);
        CHECK(m.packed_bytes() == student::kv_cache_packed_bytes<float>(cfg, dev));
        if (m.packed_bytes() == 0) MESSAGE("this CPU's oneDNN reads weights as they are: nothing packed");
        // the copies are a snapshot: rewritten weights are read once unpacked (or packed again)
        m.init(4);
        m.unpack_matrices();
        CHECK(m.packed_bytes() == 0);
        const auto fresh = run(false);
        m.pack_matrices();
        CHECK(run(true) == fresh);
        CHECK(fresh != plain);
    }
}
