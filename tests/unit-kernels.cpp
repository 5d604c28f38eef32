// Kernels and layers: the fast CPU kernels against the plain-loop reference, and finite-difference
// gradient checks (double) of every layer's backward on both devices.

#include <doctest/doctest.h>

#include <numeric>

#include "distill/device/cpu.hpp"
#include "distill/device/reference.hpp"
#include "distill/nn/attention.hpp"
#include "distill/nn/linear.hpp"
#include "testing.hpp"

using namespace distill;
using distill::testing::check_close;
using distill::testing::check_gradient;
using distill::testing::random_vector;
using distill::testing::run_placed;

namespace {
double dot(const std::vector<double>& a, const std::vector<double>& b) {
    return std::inner_product(a.begin(), a.end(), b.begin(), 0.0);
}
}  // namespace

TEST_CASE("gemm: every transpose combination and beta, Cpu against Reference") {
    const int M = 37, N = 29, K = 53;
    device::Reference ref;
    device::Cpu cpu(2);
    for (bool ta : {false, true})
        for (bool tb : {false, true})
            for (float beta : {0.0f, 1.0f, 0.5f}) {
                const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
                auto A = random_vector<float>(std::size_t(ta ? K : M) * lda, 1);
                auto B = random_vector<float>(std::size_t(tb ? N : K) * ldb, 2);
                auto C0 = random_vector<float>(std::size_t(M) * ldc, 3);
                auto C1 = C0;
                gemm(ref, ta, tb, M, N, K, 0.7f, A.data(), lda, B.data(), ldb, beta, C0.data(), ldc);
                gemm(cpu, ta, tb, M, N, K, 0.7f, A.data(), lda, B.data(), ldb, beta, C1.data(), ldc);
                INFO("trans_a=" << ta << " trans_b=" << tb << " beta=" << beta);
                check_close("gemm", C1.data(), C0.data(), std::int64_t(C0.size()), 1e-4, 1e-4);
            }
}

TEST_CASE("gemm_bias: the bias (and the GELU) in the product's epilogue equal gemm then add_bias (gelu_forward)") {
    const int M = 37, N = 29, K = 53;
    device::Reference ref;
    for (const auto p : {device::precision::fp32, device::precision::bf16}) {
        if (p == device::precision::bf16 && !device::Cpu::bf16_supported()) {
            MESSAGE("bf16 skipped: " << device::Cpu::bf16_unsupported_reason());
            continue;
        }
        const device::Cpu cpu(2, p);
        for (bool ta : {false, true})
            for (bool tb : {false, true})
                for (float beta : {0.0f, 1.0f, 0.5f})
                    for (bool gelu : {false, true})
                        for (bool in_parallel : {false, true}) {  // oneDNN's epilogue, or Eigen then add_bias
                            const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
                            const auto A = random_vector<float>(std::size_t(ta ? K : M) * lda, 1);
                            const auto B = random_vector<float>(std::size_t(tb ? N : K) * ldb, 2);
                            const auto bias = random_vector<float>(std::size_t(N), 6);
                            auto C0 = random_vector<float>(std::size_t(M) * ldc, 3);
                            auto C1 = C0;
                            if (beta == 0.0f) C1[0] = std::nanf("");  // beta 0 never reads C
                            // the two-pass result on the same device (bf16: the same rounded operands)
                            gemm(cpu, ta, tb, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, beta, C0.data(), ldc);
                            for (int m = 0; m < M; ++m) {
                                float* row = C0.data() + std::int64_t(m) * ldc;
                                add_bias(ref, row, bias.data(), 1, N);
                                if (gelu) gelu_forward(ref, row, row, N);
                            }
                            auto fused = [&] {
                                gemm_bias(cpu, ta, tb, M, N, K, A.data(), lda, B.data(), ldb, beta, C1.data(), ldc,
                                          bias.data(), gelu);
                            };
                            if (in_parallel)
                                distill::detail::parallel_for(2, 2, [&](std::int64_t i) {
                                    if (i == 0) fused();
                                });
                            else
                                fused();
                            INFO("bf16=" << (p == device::precision::bf16) << " trans_a=" << ta << " trans_b=" << tb
                                         << " beta=" << beta << " gelu=" << gelu
                                         << " in a parallel region=" << in_parallel);
                            // bf16 inside a parallel region multiplies in fp32 (Eigen): a bf16 product's tolerance
                            const double tol = p == device::precision::bf16 && in_parallel ? 5e-2 : 1e-5;
                            check_close("gemm_bias", C1.data(), C0.data(), std::int64_t(C0.size()), tol, tol);
                        }
    }
}

TEST_CASE("gemm_bias: oneDNN's GELU epilogue is the tanh GELU to 1e-6 over x in [-12, 12]") {
    // C(M,1) = gelu(x(M,1) · 1): the epilogue alone, against the formula in double
    const int M = 2401;
    std::vector<float> x(M), C(M);
    for (int i = 0; i < M; ++i) x[std::size_t(i)] = -12.0f + 0.01f * float(i);
    const float one = 1.0f;
    for (const int threads : {1, 2}) {
        const device::Cpu cpu(threads);
        gemm_bias(cpu, false, true, M, 1, 1, x.data(), 1, &one, 1, 0.0f, C.data(), 1,
                  static_cast<const float*>(nullptr), true);
        std::vector<double> want(x.begin(), x.end());
        gelu_forward(device::Reference{}, want.data(), want.data(), M);
        for (int i = 0; i < M; ++i) {
            INFO("threads=" << threads << " x=" << x[std::size_t(i)]);
            CHECK(std::abs(double(C[std::size_t(i)]) - want[std::size_t(i)]) <=
                  1e-6 + 1e-6 * std::abs(want[std::size_t(i)]));
        }
    }
}

TEST_CASE("gemm: beta = 0 ignores NaN already in C") {
    device::Cpu cpu(2);
    std::vector<float> A(4, 1.0f), B(4, 1.0f), C(4, std::nanf(""));
    gemm(cpu, false, false, 2, 2, 2, 1.0f, A.data(), 2, B.data(), 2, 0.0f, C.data(), 2);
    for (float c : C) CHECK(c == 2.0f);
}

TEST_CASE("gemm_strided_batched matches per-matrix gemm") {
    const int M = 9, N = 7, K = 5, batch = 6;
    device::Reference ref;
    device::Cpu cpu(2);
    auto A = random_vector<float>(std::size_t(M) * K * batch, 4);
    auto B = random_vector<float>(std::size_t(K) * N * batch, 5);
    std::vector<float> C0(std::size_t(M) * N * batch), C1(C0.size());
    gemm_strided_batched(ref, false, false, M, N, K, 1.0f, A.data(), K, M * K, B.data(), N, K * N, 0.0f, C0.data(), N,
                         M * N, batch);
    gemm_strided_batched(cpu, false, false, M, N, K, 1.0f, A.data(), K, M * K, B.data(), N, K * N, 0.0f, C1.data(), N,
                         M * N, batch);
    check_close("batched", C1.data(), C0.data(), std::int64_t(C0.size()), 1e-5, 1e-5);
}

TEST_CASE("row kernels: Cpu equals Reference (float)") {
    device::Reference ref;
    device::Cpu cpu(2);
    const int N = 33, C = 70;
    auto x = random_vector<float>(std::size_t(N) * C, 10, 3.0);
    auto w = random_vector<float>(C, 11), b = random_vector<float>(C, 12);
    auto dy = random_vector<float>(std::size_t(N) * C, 13);

    SUBCASE("layernorm") {
        std::vector<float> o0(x.size()), o1(x.size()), m0(N), m1(N), r0(N), r1(N);
        layernorm_forward(ref, o0.data(), m0.data(), r0.data(), x.data(), w.data(), b.data(), N, C, 1e-5f);
        layernorm_forward(cpu, o1.data(), m1.data(), r1.data(), x.data(), w.data(), b.data(), N, C, 1e-5f);
        check_close("ln out", o1.data(), o0.data(), std::int64_t(o0.size()), 1e-5, 1e-5);
        std::vector<float> di0(x.size(), 1.0f), di1(x.size(), 1.0f), dw0(C, 0.5f), dw1(C, 0.5f), db0(C), db1(C);
        layernorm_backward(ref, di0.data(), dw0.data(), db0.data(), dy.data(), x.data(), w.data(), m0.data(), r0.data(),
                           N, C);
        layernorm_backward(cpu, di1.data(), dw1.data(), db1.data(), dy.data(), x.data(), w.data(), m1.data(), r1.data(),
                           N, C);
        check_close("ln din", di1.data(), di0.data(), std::int64_t(di0.size()), 1e-5, 1e-4);
        check_close("ln dw", dw1.data(), dw0.data(), C, 1e-4, 1e-4);
        check_close("ln db", db1.data(), db0.data(), C, 1e-4, 1e-4);
    }
    SUBCASE("gelu") {
        std::vector<float> o0(x.size()), o1(x.size());
        gelu_forward(ref, o0.data(), x.data(), std::int64_t(x.size()));
        gelu_forward(cpu, o1.data(), x.data(), std::int64_t(x.size()));
        check_close("gelu", o1.data(), o0.data(), std::int64_t(o0.size()), 1e-6, 1e-5);
        gelu_backward(ref, o0.data(), x.data(), dy.data(), std::int64_t(x.size()));
        gelu_backward(cpu, o1.data(), x.data(), dy.data(), std::int64_t(x.size()));
        check_close("gelu grad", o1.data(), o0.data(), std::int64_t(o0.size()), 1e-6, 1e-5);
    }
    SUBCASE("bias, add, accumulate") {
        auto o0 = x, o1 = x;
        add_bias(ref, o0.data(), w.data(), N, C);
        add_bias(cpu, o1.data(), w.data(), N, C);
        check_close("add_bias", o1.data(), o0.data(), std::int64_t(o0.size()), 0, 0);
        std::vector<float> g0(C, 1.0f), g1(C, 1.0f);
        bias_grad(ref, g0.data(), dy.data(), N, C);
        bias_grad(cpu, g1.data(), dy.data(), N, C);
        check_close("bias_grad", g1.data(), g0.data(), C, 1e-5, 1e-5);
        add(ref, o0.data(), x.data(), dy.data(), std::int64_t(x.size()));
        add(cpu, o1.data(), x.data(), dy.data(), std::int64_t(x.size()));
        check_close("add", o1.data(), o0.data(), std::int64_t(o0.size()), 0, 0);
        accumulate(ref, o0.data(), dy.data(), std::int64_t(x.size()));
        accumulate(cpu, o1.data(), dy.data(), std::int64_t(x.size()));
        check_close("accumulate", o1.data(), o0.data(), std::int64_t(o0.size()), 0, 0);
    }
    SUBCASE("causal softmax") {
        const int BH = 3, T = 11;
        auto s = random_vector<float>(std::size_t(BH) * T * T, 20, 4.0);
        auto d = random_vector<float>(s.size(), 21);
        auto p0 = s, p1 = s;
        causal_softmax_forward(ref, p0.data(), BH, T, 0.3f);
        causal_softmax_forward(cpu, p1.data(), BH, T, 0.3f);
        check_close("softmax", p1.data(), p0.data(), std::int64_t(p0.size()), 1e-7, 1e-5);
        std::vector<float> g0(s.size()), g1(s.size());
        causal_softmax_backward(ref, g0.data(), p0.data(), d.data(), BH, T, 0.3f);
        causal_softmax_backward(cpu, g1.data(), p0.data(), d.data(), BH, T, 0.3f);
        check_close("softmax grad", g1.data(), g0.data(), std::int64_t(g0.size()), 1e-6, 1e-5);
    }
    SUBCASE("rmsnorm, swiglu, rotary embedding") {
        std::vector<float> o0(x.size()), o1(x.size()), r0(N), r1(N);
        rmsnorm_forward(ref, o0.data(), r0.data(), x.data(), w.data(), N, C, 1e-6f);
        rmsnorm_forward(cpu, o1.data(), r1.data(), x.data(), w.data(), N, C, 1e-6f);
        check_close("rms out", o1.data(), o0.data(), std::int64_t(o0.size()), 1e-5, 1e-5);
        std::vector<float> di0(x.size(), 1.0f), di1(x.size(), 1.0f), dw0(C, 0.5f), dw1(C, 0.5f);
        rmsnorm_backward(ref, di0.data(), dw0.data(), dy.data(), x.data(), w.data(), r0.data(), N, C);
        rmsnorm_backward(cpu, di1.data(), dw1.data(), dy.data(), x.data(), w.data(), r1.data(), N, C);
        check_close("rms din", di1.data(), di0.data(), std::int64_t(di0.size()), 1e-5, 1e-4);
        check_close("rms dw", dw1.data(), dw0.data(), C, 1e-4, 1e-4);
        const int F = C / 2;  // x as (N, 2F): gate | up
        std::vector<float> s0(std::size_t(N) * F), s1(s0.size()), g0(x.size()), g1(x.size());
        swiglu_forward(ref, s0.data(), x.data(), N, F);
        swiglu_forward(cpu, s1.data(), x.data(), N, F);
        check_close("swiglu", s1.data(), s0.data(), std::int64_t(s0.size()), 1e-6, 1e-5);
        swiglu_backward(ref, g0.data(), x.data(), dy.data(), N, F);
        swiglu_backward(cpu, g1.data(), x.data(), dy.data(), N, F);
        check_close("swiglu grad", g1.data(), g0.data(), std::int64_t(g0.size()), 1e-6, 1e-5);
        const int hs = 10, heads = 6, P = N;  // rows of 70: 6 rotated heads, 10 columns untouched
        std::vector<float> cos(std::size_t(P) * hs / 2), sin(cos.size());
        for (std::size_t i = 0; i < cos.size(); ++i) cos[i] = std::cos(0.37f * i), sin[i] = std::sin(0.37f * i);
        std::vector<std::int32_t> pos(N);
        for (int n = 0; n < N; ++n) pos[n] = (n * 7) % P;
        for (bool inverse : {false, true}) {
            auto y0 = x, y1 = x;
            rope_rotate(ref, y0.data(), cos.data(), sin.data(), pos.data(), N, C, heads, hs, inverse);
            rope_rotate(cpu, y1.data(), cos.data(), sin.data(), pos.data(), N, C, heads, hs, inverse);
            check_close("rope", y1.data(), y0.data(), std::int64_t(y0.size()), 1e-6, 1e-6);
        }
    }
    SUBCASE("attention decode, grouped-query") {
        const int B = 2, H = 4, Hkv = 2, hs = 8, Tmax = 6, W = (H + 2 * Hkv) * hs;
        auto qkv = random_vector<float>(std::size_t(B) * W, 41);
        auto kc = random_vector<float>(std::size_t(B) * Hkv * Tmax * hs, 42), vc = random_vector<float>(kc.size(), 43);
        const int lengths[B] = {3, 6};
        std::vector<float> o0(std::size_t(B) * H * hs), o1(o0.size()), sc0(std::size_t(B) * H * Tmax), sc1(sc0.size());
        attention_decode(ref, o0.data(), sc0.data(), qkv.data(), kc.data(), vc.data(), lengths, B, H, Hkv, hs, Tmax);
        attention_decode(cpu, o1.data(), sc1.data(), qkv.data(), kc.data(), vc.data(), lengths, B, H, Hkv, hs, Tmax);
        check_close("decode", o1.data(), o0.data(), std::int64_t(o0.size()), 1e-6, 1e-5);
    }
    SUBCASE("embedding") {
        const int B = 3, T = 5, V = 4;
        std::vector<std::int32_t> tok = {0, 1, 1, 3, 0, 2, 2, 2, 1, 0, 3, 3, 1, 0, 0};
        auto wte = random_vector<float>(std::size_t(V) * C, 30), wpe = random_vector<float>(std::size_t(T) * C, 31);
        std::vector<float> o0(std::size_t(B) * T * C), o1(o0.size());
        embedding_forward(ref, o0.data(), tok.data(), wte.data(), wpe.data(), B, T, C);
        embedding_forward(cpu, o1.data(), tok.data(), wte.data(), wpe.data(), B, T, C);
        check_close("embedding", o1.data(), o0.data(), std::int64_t(o0.size()), 0, 0);
        std::vector<float> dwte0(wte.size()), dwte1(wte.size()), dwpe0(wpe.size()), dwpe1(wpe.size());
        embedding_backward(ref, dwte0.data(), dwpe0.data(), dy.data(), tok.data(), B, T, C);
        embedding_backward(cpu, dwte1.data(), dwpe1.data(), dy.data(), tok.data(), B, T, C);
        check_close("dwte", dwte1.data(), dwte0.data(), std::int64_t(dwte0.size()), 1e-6, 1e-5);
        check_close("dwpe", dwpe1.data(), dwpe0.data(), std::int64_t(dwpe0.size()), 1e-6, 1e-5);
    }
    SUBCASE("cross entropy, large logits and masked rows") {
        const int V = 301;
        auto logits = random_vector<float>(std::size_t(N) * V, 40, 30.0);
        std::vector<std::int32_t> tg(N);
        for (int n = 0; n < N; ++n) tg[n] = n % 4 == 3 ? -1 : (n * 37) % V;
        std::vector<float> d0(logits.size()), d1(logits.size()), l0(N), l1(N);
        const int c0 = cross_entropy_forward_backward(ref, d0.data(), l0.data(), logits.data(), tg.data(), N, V, 0.1f);
        const int c1 = cross_entropy_forward_backward(cpu, d1.data(), l1.data(), logits.data(), tg.data(), N, V, 0.1f);
        CHECK(c0 == c1);
        CHECK(c0 == N - N / 4);
        check_close("ce loss", l1.data(), l0.data(), N, 1e-4, 1e-5);
        check_close("ce grad", d1.data(), d0.data(), std::int64_t(d0.size()), 1e-7, 1e-4);
        for (float l : l1) CHECK(std::isfinite(l));
    }
}

TEST_CASE("Cpu kernels are bit-identical run to run at a fixed thread count") {
    device::Cpu cpu(2);
    const int M = 64, N = 300, K = 128;
    auto A = random_vector<float>(std::size_t(M) * K, 50), B = random_vector<float>(std::size_t(K) * N, 51);
    std::vector<float> C0(std::size_t(M) * N), C1(C0.size()), g0(N), g1(N);
    gemm(cpu, false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C0.data(), N);
    gemm(cpu, false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C1.data(), N);
    bias_grad(cpu, g0.data(), C0.data(), M, N);
    bias_grad(cpu, g1.data(), C1.data(), M, N);
    CHECK(std::equal(C0.begin(), C0.end(), C1.begin()));
    CHECK(std::equal(g0.begin(), g0.end(), g1.begin()));
}

TEST_CASE_TEMPLATE("Cpu row kernels: the bits do not depend on where the buffers lie", T, float, double) {
    device::Cpu cpu(2);
    const int N = 7, C = 70, F = 45, BH = 3, Tn = 29, V = 333, B = 2, H = 4, Hkv = 2, hs = 24, Tmax = 40;
    auto check = [&](const char* what, const std::vector<std::vector<T>>& buffers, const auto& kernel) {
        INFO(std::string(what));
        const auto at_boundary = run_placed(buffers, 0, kernel);
        for (int offset : {1, 3, 6, 7, 13}) {
            INFO("offset " << offset);
            CHECK(run_placed(buffers, offset, kernel) == at_boundary);
        }
    };
    auto rnd = [](std::size_t n, std::uint64_t seed, double scale = 1.0) { return random_vector<T>(n, seed, scale); };
    const auto x = rnd(N * C, 1, 3.0), w = rnd(C, 2), b = rnd(C, 3), dy = rnd(N * C, 4);
    const std::vector<T> nc(N * C), n1(N), c1(C);
    check("gelu", {x, nc}, [&](auto& p) { gelu_forward(cpu, p[1], p[0], N * C); });
    check("gelu_backward", {x, dy, nc}, [&](auto& p) { gelu_backward(cpu, p[2], p[0], p[1], N * C); });
    check("swiglu", {rnd(N * 2 * F, 5, 3.0), std::vector<T>(N * F)},
          [&](auto& p) { swiglu_forward(cpu, p[1], p[0], N, F); });
    check("swiglu_backward", {rnd(N * 2 * F, 5, 3.0), rnd(N * F, 6), std::vector<T>(N * 2 * F)},
          [&](auto& p) { swiglu_backward(cpu, p[2], p[0], p[1], N, F); });
    check("layernorm", {x, w, b, nc, n1, n1}, [&](auto& p) {
        layernorm_forward(cpu, p[3], p[4], p[5], p[0], p[1], p[2], N, C, T(1e-5));
        layernorm_backward(cpu, p[3], p[1], p[2], p[0], p[0], p[2], p[4], p[5], N, C);
    });
    check("rmsnorm", {x, w, nc, n1, c1}, [&](auto& p) {
        rmsnorm_forward(cpu, p[2], p[3], p[0], p[1], N, C, T(1e-5));
        rmsnorm_backward(cpu, p[2], p[4], p[0], p[0], p[1], p[3], N, C);
    });
    check("causal_softmax", {rnd(BH * Tn * Tn, 7, 3.0), rnd(BH * Tn * Tn, 8), std::vector<T>(BH * Tn * Tn)},
          [&](auto& p) {
              causal_softmax_forward(cpu, p[0], BH, Tn, T(0.3));
              causal_softmax_backward(cpu, p[2], p[0], p[1], BH, Tn, T(0.3));
          });
    const std::vector<std::int32_t> targets = {0, 5, -1, 332, 17, 100, 200};
    check("cross_entropy", {rnd(N * V, 9, 4.0), n1},
          [&](auto& p) { cross_entropy_forward_backward(cpu, p[0], p[1], p[0], targets.data(), N, V, T(0.25)); });
    const int lengths[B] = {33, 17};
    const std::size_t row = std::size_t(H + 2 * Hkv) * hs, cache = std::size_t(B) * Hkv * Tmax * hs;
    check("attention_decode",
          {rnd(B * row, 10), rnd(cache, 11), rnd(cache, 12), std::vector<T>(B * H * hs), std::vector<T>(B * H * Tmax)},
          [&](auto& p) { attention_decode(cpu, p[3], p[4], p[0], p[1], p[2], lengths, B, H, Hkv, hs, Tmax); });
}

// ---- gradient checks in double ---------------------------------------------------------------------

TEST_CASE_TEMPLATE("layer gradients match finite differences", Dev, device::Reference, device::Cpu) {
    Dev dev;
    SUBCASE("linear") {
        const int N = 5, C = 7, OC = 6;
        auto in = random_vector<double>(N * C, 1), w = random_vector<double>(OC * C, 2),
             b = random_vector<double>(OC, 3);
        auto R = random_vector<double>(N * OC, 4);
        std::vector<double> out(N * OC);
        auto f = [&] {
            nn::linear_forward(dev, out.data(), in.data(), w.data(), b.data(), N, C, OC);
            return dot(out, R);
        };
        std::vector<double> din(N * C), dw(OC * C), db(OC);
        nn::linear_backward(dev, din.data(), dw.data(), db.data(), R.data(), in.data(), w.data(), N, C, OC);
        check_gradient("linear d_in", in, f, din);
        check_gradient("linear d_w", w, f, dw);
        check_gradient("linear d_b", b, f, db);
    }
    SUBCASE("layernorm") {
        const int N = 4, C = 9;
        auto x = random_vector<double>(N * C, 5, 2.0), w = random_vector<double>(C, 6), b = random_vector<double>(C, 7);
        auto R = random_vector<double>(N * C, 8);
        std::vector<double> out(N * C), mean(N), rstd(N);
        auto f = [&] {
            layernorm_forward(dev, out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C, 1e-5);
            return dot(out, R);
        };
        f();
        std::vector<double> dx(N * C), dw(C), db(C);
        layernorm_backward(dev, dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), mean.data(), rstd.data(),
                           N, C);
        check_gradient("layernorm d_x", x, f, dx);
        check_gradient("layernorm d_w", w, f, dw);
        check_gradient("layernorm d_b", b, f, db);
    }
    SUBCASE("gelu") {
        auto x = random_vector<double>(40, 9, 3.0), R = random_vector<double>(40, 10);
        std::vector<double> out(40), dx(40);
        auto f = [&] {
            gelu_forward(dev, out.data(), x.data(), 40);
            return dot(out, R);
        };
        gelu_backward(dev, dx.data(), x.data(), R.data(), 40);
        check_gradient("gelu", x, f, dx);
    }
    SUBCASE("attention core, multi-head and grouped-query, with an extra gradient on the attention map") {
        for (const int Hkv : {4, 2, 1}) {
            CAPTURE(Hkv);
            const int B = 2, T = 5, H = 4, hs = 3, C = H * hs, W = (H + 2 * Hkv) * hs;
            auto qkv = random_vector<double>(B * T * W, 11), R = random_vector<double>(B * T * C, 12);
            auto S = random_vector<double>(B * H * T * T, 13);
            std::vector<double> out(B * T * C), att(B * H * T * T);
            auto f = [&] {
                nn::attention_forward(dev, out.data(), att.data(), qkv.data(), B, T, H, Hkv, hs);
                return dot(out, R) + dot(att, S);
            };
            f();
            std::vector<double> dqkv(qkv.size()), scratch(att.size());
            nn::attention_backward(dev, dqkv.data(), scratch.data(), R.data(), qkv.data(), att.data(), S.data(), B, T,
                                   H, Hkv, hs);
            check_gradient("attention d_qkv", qkv, f, dqkv);
        }
    }
    SUBCASE("grouped-query attention equals multi-head attention with each kv head repeated") {
        const int B = 2, T = 4, H = 4, Hkv = 2, hs = 3, C = H * hs, W = (H + 2 * Hkv) * hs;
        auto qkv = random_vector<double>(B * T * W, 18);
        std::vector<double> wide(B * T * 3 * C);  // q | k_{h/2} for every h | v_{h/2} for every h
        for (int r = 0; r < B * T; ++r)
            for (int h = 0; h < H; ++h)
                for (int d = 0; d < hs; ++d) {
                    wide[r * 3 * C + h * hs + d] = qkv[r * W + h * hs + d];
                    wide[r * 3 * C + C + h * hs + d] = qkv[r * W + C + (h / 2) * hs + d];
                    wide[r * 3 * C + 2 * C + h * hs + d] = qkv[r * W + C + (Hkv + h / 2) * hs + d];
                }
        std::vector<double> o0(B * T * C), o1(o0.size()), a0(B * H * T * T), a1(a0.size());
        nn::attention_forward(dev, o0.data(), a0.data(), qkv.data(), B, T, H, Hkv, hs);
        nn::attention_forward(dev, o1.data(), a1.data(), wide.data(), B, T, H, H, hs);
        check_close("gqa out", o0.data(), o1.data(), std::int64_t(o0.size()), 1e-12, 1e-12);
        check_close("gqa att", a0.data(), a1.data(), std::int64_t(a0.size()), 1e-12, 1e-12);
    }
    SUBCASE("rmsnorm") {
        const int N = 3, C = 5;
        auto x = random_vector<double>(N * C, 31, 2.0), w = random_vector<double>(C, 32);
        auto R = random_vector<double>(N * C, 33);
        std::vector<double> out(N * C), rstd(N);
        auto f = [&] {
            rmsnorm_forward(dev, out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-6);
            return dot(out, R);
        };
        f();
        std::vector<double> dx(N * C), dw(C);
        rmsnorm_backward(dev, dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), N, C);
        check_gradient("rmsnorm d_x", x, f, dx);
        check_gradient("rmsnorm d_w", w, f, dw);
    }
    SUBCASE("swiglu") {
        const int N = 3, F = 7;
        auto x = random_vector<double>(N * 2 * F, 34, 4.0), R = random_vector<double>(N * F, 35);
        std::vector<double> out(N * F), dx(N * 2 * F);
        auto f = [&] {
            swiglu_forward(dev, out.data(), x.data(), N, F);
            return dot(out, R);
        };
        swiglu_backward(dev, dx.data(), x.data(), R.data(), N, F);
        check_gradient("swiglu", x, f, dx);
    }
    SUBCASE("rotary embedding: inverse is the backward and undoes the forward") {
        const int N = 4, heads = 3, hs = 6, row = heads * hs + 4, P = 9;
        auto cs = random_vector<double>(P * hs / 2, 36, 3.0);
        std::vector<double> cos(cs.size()), sin(cs.size());
        for (std::size_t i = 0; i < cs.size(); ++i) cos[i] = std::cos(cs[i]), sin[i] = std::sin(cs[i]);
        const std::vector<std::int32_t> pos = {0, 3, 8, 5};
        const auto x = random_vector<double>(N * row, 37);
        auto R = random_vector<double>(N * row, 38);
        auto y = x;
        auto f = [&] {
            y = x;
            rope_rotate(dev, y.data(), cos.data(), sin.data(), pos.data(), N, row, heads, hs, false);
            return dot(y, R);
        };
        f();
        auto back = y;
        rope_rotate(dev, back.data(), cos.data(), sin.data(), pos.data(), N, row, heads, hs, true);
        check_close("rope round trip", back.data(), x.data(), std::int64_t(x.size()), 1e-14, 1e-12);
        auto dx = R;  // d<rope(x), R>/dx = rope^T R = inverse rotation of R
        rope_rotate(dev, dx.data(), cos.data(), sin.data(), pos.data(), N, row, heads, hs, true);
        auto xv = x;
        auto g = [&] {
            auto z = xv;
            rope_rotate(dev, z.data(), cos.data(), sin.data(), pos.data(), N, row, heads, hs, false);
            return dot(z, R);
        };
        check_gradient("rope", xv, g, dx);
    }
    SUBCASE("embedding") {
        const int B = 2, T = 3, C = 4, V = 5;
        std::vector<std::int32_t> tok = {1, 4, 1, 0, 1, 3};
        auto wte = random_vector<double>(V * C, 14), wpe = random_vector<double>(T * C, 15);
        auto R = random_vector<double>(B * T * C, 16);
        std::vector<double> out(B * T * C);
        auto f = [&] {
            embedding_forward(dev, out.data(), tok.data(), wte.data(), wpe.data(), B, T, C);
            return dot(out, R);
        };
        std::vector<double> dwte(wte.size()), dwpe(wpe.size());
        embedding_backward(dev, dwte.data(), dwpe.data(), R.data(), tok.data(), B, T, C);
        // token 2 never occurs: its gradient is exactly zero, and the check covers the rest.
        check_gradient("embedding d_wte", wte, f, dwte);
        check_gradient("embedding d_wpe", wpe, f, dwpe);
    }
    SUBCASE("cross entropy with masked positions") {
        const int N = 6, V = 7;
        auto logits = random_vector<double>(N * V, 17, 3.0);
        std::vector<std::int32_t> tg = {3, -1, 0, 6, -1, 2};
        std::vector<double> d(N * V), losses(N);
        auto f = [&] {
            std::vector<double> scratch(N * V);
            cross_entropy_forward_backward(dev, scratch.data(), losses.data(), logits.data(), tg.data(), N, V, 0.25);
            return std::accumulate(losses.begin(), losses.end(), 0.0) / 4;
        };
        cross_entropy_forward_backward(dev, d.data(), losses.data(), logits.data(), tg.data(), N, V, 0.25);
        check_gradient("cross entropy", logits, f, d);
    }
}
