// The row kernels' run-time instruction set (device/cpu/isa.hpp): every dispatched kernel on every
// ISA this CPU runs against the plain-loop reference, and bit-identical run to run; the fused
// attention's tile kernels (tile_gemm, transpose, the tile softmax, probabilities and score
// gradient) against loops in double. Built without
// -march (tests/CMakeLists.txt: distill_isa_tests), as a user's plain Release build compiles them;
// under -march=native on an AVX-512 host there is one ISA, the compile-time path.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "distill/device/cpu.hpp"
#include "distill/device/reference.hpp"
#include "testing.hpp"

using namespace distill;
using distill::testing::check_close;
using distill::testing::random_vector;

namespace {

// The ISAs the row kernels can run here, each forced in turn (then the default restored).
std::vector<device::cpu_isa> available() {
    std::vector<device::cpu_isa> out;
    for (int i = 0; i <= 2; ++i) {
        device::detail::force_cpu_isa(i);
        const auto got = device::row_kernel_isa();
        if (out.empty() || out.back() != got) out.push_back(got);
    }
    device::detail::force_cpu_isa(-1);
    return out;
}

struct Forced {
    explicit Forced(device::cpu_isa i) { device::detail::force_cpu_isa(static_cast<int>(i)); }
    ~Forced() { device::detail::force_cpu_isa(-1); }
};

}  // namespace

TEST_CASE("row kernels: every run-time ISA equals Reference (float)") {
    device::Reference ref;
    device::Cpu cpu(2);
    // rows of 70 and 37 (tails on every width), values up to ±30 (exp's range: GELU saturates)
    const int N = 33, C = 70;
    auto x = random_vector<float>(std::size_t(N) * C, 10, 6.0);
    x[0] = -30.0f, x[1] = 30.0f, x[2] = 0.0f, x[3] = -9.5f;
    auto dy = random_vector<float>(x.size(), 13), w = random_vector<float>(C, 11);
    const int BH = 3, T = 37;
    auto s = random_vector<float>(std::size_t(BH) * T * T, 20, 40.0);
    auto d = random_vector<float>(s.size(), 21);

    std::vector<float> gelu0(x.size()), dgelu0(x.size()), sm0 = s, dsm0(s.size()), bias0 = x;
    gelu_forward(ref, gelu0.data(), x.data(), std::int64_t(x.size()));
    gelu_backward(ref, dgelu0.data(), x.data(), dy.data(), std::int64_t(x.size()));
    causal_softmax_forward(ref, sm0.data(), BH, T, 0.125f);
    causal_softmax_backward(ref, dsm0.data(), sm0.data(), d.data(), BH, T, 0.125f);
    add_bias(ref, bias0.data(), w.data(), N, C);
    auto b = random_vector<float>(C, 12);
    std::vector<float> ln0(x.size()), m0(N), r0(N), dln0(x.size(), 1.0f), dw0(C), db0(C);
    layernorm_forward(ref, ln0.data(), m0.data(), r0.data(), x.data(), w.data(), b.data(), N, C, 1e-5f);
    layernorm_backward(ref, dln0.data(), dw0.data(), db0.data(), dy.data(), x.data(), w.data(), m0.data(), r0.data(), N,
                       C);
    std::vector<float> rms0(x.size()), rr0(N), drms0(x.size(), 1.0f), drw0(C);
    rmsnorm_forward(ref, rms0.data(), rr0.data(), x.data(), w.data(), N, C, 1e-6f);
    rmsnorm_backward(ref, drms0.data(), drw0.data(), dy.data(), x.data(), w.data(), rr0.data(), N, C);
    const int Fw = C / 2;  // x as (N, 2F): gate | up (rows of 35: a tail on every width)
    std::vector<float> sw0(std::size_t(N) * Fw), dsw0(x.size());
    swiglu_forward(ref, sw0.data(), x.data(), N, Fw);
    swiglu_backward(ref, dsw0.data(), x.data(), dy.data(), N, Fw);

    const auto isas = available();
    CHECK(isas.front() == device::detail::compiled_isa);
    for (const auto isa : isas) {
        const std::string isa_name = device::to_string(isa);
        CAPTURE(isa_name);
        const Forced forced(isa);
        REQUIRE(device::row_kernel_isa() == isa);
        std::vector<float> o(x.size()), o2(x.size());
        gelu_forward(cpu, o.data(), x.data(), std::int64_t(x.size()));
        check_close("gelu", o.data(), gelu0.data(), std::int64_t(o.size()), 1e-7, 1e-5);
        gelu_forward(cpu, o2.data(), x.data(), std::int64_t(x.size()));
        CHECK(o == o2);
        gelu_backward(cpu, o.data(), x.data(), dy.data(), std::int64_t(x.size()));
        check_close("gelu grad", o.data(), dgelu0.data(), std::int64_t(o.size()), 1e-7, 1e-5);

        auto p = s;
        causal_softmax_forward(cpu, p.data(), BH, T, 0.125f);
        check_close("softmax", p.data(), sm0.data(), std::int64_t(p.size()), 1e-30, 1e-5);
        auto g = d;  // dscores aliasing datt
        causal_softmax_backward(cpu, g.data(), sm0.data(), g.data(), BH, T, 0.125f);
        check_close("softmax grad", g.data(), dsm0.data(), std::int64_t(g.size()), 1e-7, 1e-5);

        auto bx = x;
        add_bias(cpu, bx.data(), w.data(), N, C);
        check_close("add_bias", bx.data(), bias0.data(), std::int64_t(bx.size()), 0, 0);

        std::vector<float> ln(x.size()), m(N), r(N), dln(x.size(), 1.0f), dw(C), db(C);
        layernorm_forward(cpu, ln.data(), m.data(), r.data(), x.data(), w.data(), b.data(), N, C, 1e-5f);
        check_close("ln out", ln.data(), ln0.data(), std::int64_t(ln.size()), 1e-5, 1e-5);
        check_close("ln mean", m.data(), m0.data(), N, 1e-6, 1e-5);
        check_close("ln rstd", r.data(), r0.data(), N, 1e-6, 1e-5);
        layernorm_backward(cpu, dln.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), m0.data(), r0.data(),
                           N, C);
        check_close("ln din", dln.data(), dln0.data(), std::int64_t(dln.size()), 1e-5, 1e-4);
        check_close("ln dw", dw.data(), dw0.data(), C, 1e-4, 1e-4);

        std::vector<float> rms(x.size()), rr(N), drms(x.size(), 1.0f), drw(C);
        rmsnorm_forward(cpu, rms.data(), rr.data(), x.data(), w.data(), N, C, 1e-6f);
        check_close("rms out", rms.data(), rms0.data(), std::int64_t(rms.size()), 1e-5, 1e-5);
        rmsnorm_backward(cpu, drms.data(), drw.data(), dy.data(), x.data(), w.data(), rr0.data(), N, C);
        check_close("rms din", drms.data(), drms0.data(), std::int64_t(drms.size()), 1e-5, 1e-4);

        std::vector<float> sw(sw0.size()), dsw(x.size());
        swiglu_forward(cpu, sw.data(), x.data(), N, Fw);
        check_close("swiglu", sw.data(), sw0.data(), std::int64_t(sw.size()), 1e-6, 1e-5);
        swiglu_backward(cpu, dsw.data(), x.data(), dy.data(), N, Fw);
        check_close("swiglu grad", dsw.data(), dsw0.data(), std::int64_t(dsw.size()), 1e-6, 1e-5);
    }
}

TEST_CASE("decoding attention: every run-time ISA and head size equals Reference (float)") {
    device::Reference ref;
    device::Cpu cpu(2);
    const int B = 3, H = 4, Hkv = 2, Tmax = 41;
    const int lengths[B] = {1, 23, 41};  // one key, a partial block of four, the whole cache
    // head sizes below, at and between the widths (4, 8, 16 lanes), and past four vectors
    for (int hs : {3, 8, 24, 64, 80, 136}) {
        CAPTURE(hs);
        const int row = (H + 2 * Hkv) * hs;
        auto qkv = random_vector<float>(std::size_t(B) * row, 51, 2.0);
        auto kc = random_vector<float>(std::size_t(B) * Hkv * Tmax * hs, 52, 2.0);
        auto vc = random_vector<float>(kc.size(), 53);
        // the truth in double; fp32's error is that of a score (about hs·ulp of Σ|q_d k_d| ≈ 2.5 hs, times
        // the 1/√hs scale) carried into the probabilities, and so into the output, whose entries are ~1
        auto wide = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
        const auto qkv_d = wide(qkv), kc_d = wide(kc), vc_d = wide(vc);
        std::vector<double> o0(std::size_t(B) * H * hs), sc0(std::size_t(B) * H * Tmax);
        attention_decode(ref, o0.data(), sc0.data(), qkv_d.data(), kc_d.data(), vc_d.data(), lengths, B, H, Hkv, hs,
                         Tmax);
        for (const auto isa : available()) {
            const std::string isa_name = device::to_string(isa);
            CAPTURE(isa_name);
            const Forced forced(isa);
            std::vector<float> o(o0.size()), sc(sc0.size());
            attention_decode(cpu, o.data(), sc.data(), qkv.data(), kc.data(), vc.data(), lengths, B, H, Hkv, hs, Tmax);
            check_close("decode", o.data(), o0.data(), std::int64_t(o.size()), 3e-5, 1e-4);
        }
    }
}

TEST_CASE("attention tile kernels: every run-time ISA equals loops in double") {
    namespace rowk = device::detail::rowk;
    // a product of M x N over K: A row-major (lda) or transposed, B and C row-major; sizes with a row
    // tail on every block height and a column tail (whole vectors, then scalars) on every width
    const int M = 23, N = 45, K = 19, lda = 29, ldb = 53, ldc = 47;
    const auto A = random_vector<float>(std::size_t(lda) * std::max(M, K), 41);
    const auto Bm = random_vector<float>(std::size_t(K) * ldb, 42);
    const auto C0 = random_vector<float>(std::size_t(M) * ldc, 43);
    // the transpose: n = 37 keys of hs = 21 (tails on both sides), source rows of 50
    const int n = 37, hs = 21, ldx = 50, ldy = 48;
    const auto X = random_vector<float>(std::size_t(n) * ldx, 44);
    // a score tile of 27 query rows (i0 = 70) against 37 keys (k0 = 64): rows before, across and past
    // the diagonal; rows of ld 48 (room for the whole vectors past cols); head size 21
    const int rows = 27, cols = 37, ld = 48, i0 = 70, k0 = 64;
    const float scale = 0.3f;
    const auto S0 = random_vector<float>(std::size_t(rows) * ld, 45, 4.0);
    const auto O0 = random_vector<float>(std::size_t(rows) * hs, 46);
    auto m0 = random_vector<float>(rows, 47, 4.0);
    const auto l0 = std::vector<float>(rows, 3.0f);
    std::vector<float> lse(i0 + rows);
    for (int r = 0; r < rows; ++r) lse[i0 + r] = m0[r] + 2.0f;
    const auto D = random_vector<float>(rows, 48);
    const auto dP = random_vector<float>(S0.size(), 49);

    for (const auto isa : available()) {
        const std::string isa_name = device::to_string(isa);
        CAPTURE(isa_name);
        for (const bool trans : {false, true})
            for (const bool acc : {false, true}) {
                CAPTURE(trans);
                CAPTURE(acc);
                auto C = C0;
                const std::int64_t ai = trans ? 1 : lda, ak = trans ? lda : 1;
                rowk::run_kernel<rowk::tile_gemm>(isa, M, N, K, 0.75f, A.data(), ai, ak, Bm.data(), std::int64_t(ldb),
                                                  C.data(), std::int64_t(ldc), acc);
                std::vector<double> want(C.size());
                for (int i = 0; i < M; ++i)
                    for (int j = 0; j < ldc; ++j) {
                        double sum = 0;
                        for (int k = 0; k < K; ++k) sum += double(A[i * ai + k * ak]) * Bm[k * ldb + j];
                        const std::size_t e = std::size_t(i) * ldc + j;
                        want[e] = j >= N ? C0[e] : 0.75 * sum + (acc ? C0[e] : 0.0);  // past N: untouched
                    }
                check_close("tile_gemm", C.data(), want.data(), std::int64_t(C.size()), 1e-5, 1e-5);
            }

        std::vector<float> Y(std::size_t(hs) * ldy, 7.0f);
        rowk::run_kernel<rowk::transpose>(isa, Y.data(), std::int64_t(ldy), X.data(), std::int64_t(ldx), n, hs);
        // transposed for t < n, zero up to the next whole vector of the ISA's width, untouched past it
        const int width = isa == device::cpu_isa::avx512 ? 16 : isa == device::cpu_isa::avx2 ? 8 : 4;
        const int padded = (n + width - 1) / width * width;
        std::vector<float> want(Y.size(), 7.0f);
        for (int d = 0; d < hs; ++d)
            for (int t = 0; t < padded; ++t) want[d * ldy + t] = t < n ? X[t * ldx + d] : 0.0f;
        CHECK(Y == want);

        for (const bool first : {true, false}) {
            CAPTURE(first);
            auto S = S0, O = O0, m = m0, l = l0;
            rowk::run_kernel<rowk::flash_softmax_tile>(isa, S.data(), ld, rows, cols, i0, k0, m.data(), l.data(),
                                                       O.data(), hs, scale, first);
            for (int r = 0; r < rows; ++r) {
                CAPTURE(r);
                const int keys = std::clamp(i0 + r + 1 - k0, 0, cols);
                double mx = first ? -std::numeric_limits<double>::infinity() : m0[r], sum = 0;
                for (int c = 0; c < keys; ++c) mx = std::max(mx, double(S0[r * ld + c]));
                std::vector<double> p(cols, 0.0);
                for (int c = 0; c < keys; ++c) sum += p[c] = std::exp((S0[r * ld + c] - mx) * scale);
                const double alpha = first ? 0.0 : std::exp((m0[r] - mx) * scale);
                std::vector<double> o(hs);
                for (int d = 0; d < hs; ++d) o[d] = first ? O0[r * hs + d] : O0[r * hs + d] * alpha;
                check_close("softmax tile p", S.data() + r * ld, p.data(), cols, 1e-7, 1e-5);
                CHECK(double(m[r]) == (keys > 0 ? mx : double(m0[r])));
                const double l_want = keys == 0 ? l0[r] : first ? sum : l0[r] * alpha + sum;
                check_close("softmax tile l", &l[r], &l_want, 1, 1e-7, 1e-5);
                if (keys > 0) check_close("softmax tile O", O.data() + r * hs, o.data(), hs, 1e-7, 1e-5);
            }
        }

        auto P = S0;
        rowk::run_kernel<rowk::flash_probabilities>(isa, P.data(), ld, rows, cols, i0, k0, lse.data(), scale);
        for (int r = 0; r < rows; ++r) {
            const int keys = std::clamp(i0 + r + 1 - k0, 0, cols);
            std::vector<double> p(cols, 0.0);
            for (int c = 0; c < keys; ++c) p[c] = std::exp((double(S0[r * ld + c]) - lse[i0 + r]) * scale);
            check_close("probabilities", P.data() + r * ld, p.data(), cols, 1e-7, 1e-5);
        }
        auto dS = dP;
        rowk::run_kernel<rowk::flash_scores_grad>(isa, dS.data(), static_cast<const float*>(P.data()), ld, D.data(),
                                                  rows, cols);
        for (int r = 0; r < rows; ++r) {
            std::vector<double> g(cols);
            for (int c = 0; c < cols; ++c) g[c] = double(P[r * ld + c]) * (double(dP[r * ld + c]) - D[r]);
            check_close("scores grad", dS.data() + r * ld, g.data(), cols, 1e-7, 1e-6);
        }
    }
}

TEST_CASE("row kernels: the chosen ISA and DISTILL_CPU_ISA") {
    const auto isas = available();
    // the default is the widest this CPU and build allow
    CHECK(device::row_kernel_isa() == isas.back());
#if defined(DISTILL_ISA_DISPATCH)
    // a plain x86-64 build reaches every ISA the CPU has
    CHECK(isas.back() == device::detail::detected_cpu_isa());
#endif
    ::setenv("DISTILL_CPU_ISA", "avx2", 1);
    CHECK(device::detail::env_cpu_isa_cap() == device::cpu_isa::avx2);
    ::setenv("DISTILL_CPU_ISA", "avx3", 1);
    CHECK_THROWS_WITH_AS(device::detail::env_cpu_isa_cap(), doctest::Contains("DISTILL_CPU_ISA"), config_error);
    ::unsetenv("DISTILL_CPU_ISA");
    CHECK(device::detail::env_cpu_isa_cap() == device::cpu_isa::avx512);
}
