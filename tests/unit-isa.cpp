// The row kernels' run-time instruction set (device/cpu/isa.hpp): every dispatched kernel on every
// ISA this CPU runs against the plain-loop reference, and bit-identical run to run. Built without
// -march (tests/CMakeLists.txt: distill_isa_tests), as a user's plain Release build compiles them;
// under -march=native on an AVX-512 host there is one ISA, the compile-time path.

#include <doctest/doctest.h>

#include <cstdlib>
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
