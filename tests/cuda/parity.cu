// CUDA parity suite: every kernel of device::Cuda against device::Cpu (or device::Reference) on the
// same inputs, a full distillation step (student forward/backward + SoftKL + HiddenMSE + AdamW) on
// both devices, and a short distillation whose loss curve must match. fp32 throughout, tf32 off,
// except the precision::bf16 section (bf16 GEMMs and weight storage against a host emulation of
// device::Cpu's bf16 arithmetic, bf16_host.hpp; skipped with a message on GPUs older than sm_80).
// Tolerance |cuda - cpu| <= atol + rtol |cpu|: rtol 1e-4 for elementwise kernels and losses, 1e-3
// after GEMMs (a floor of rtol times the tensor's largest magnitude absorbs values that are zero
// up to rounding). Exits with 77 (ctest: skipped) when no GPU is visible.

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/detail/rng.hpp"
#include "distill/device/cpu.hpp"
#include "distill/device/cuda.hpp"
#include "distill/device/reference.hpp"
#include "distill/loss/attention_kl.hpp"
#include "distill/loss/attention_relation.hpp"
#include "distill/loss/hidden_mse.hpp"
#include "distill/loss/jsd.hpp"
#include "distill/loss/reverse_kl.hpp"
#include "distill/loss/soft_kl.hpp"
#include "distill/loss/sum.hpp"
#include "distill/optim/adam.hpp"
#include "distill/optim/clip.hpp"
#include "distill/optim/sgd.hpp"
#include "distill/student/transformer.hpp"
#include "distill/student/transformer_memory.hpp"

#include "bf16_host.hpp"

using namespace distill;
using device::Cpu;
using device::Cuda;

namespace {

// ---- helpers ------------------------------------------------------------------------------------

template <class T>
std::vector<T> randn(std::size_t n, std::uint64_t seed, double scale = 1.0) {
    Rng rng(seed);
    std::vector<T> v(n);
    for (auto& x : v) x = static_cast<T>(rng.normal() * scale);
    return v;
}

/// A device buffer holding a copy of a host vector; frees itself.
template <class T>
struct DeviceVec {
    Cuda dev;
    T* ptr = nullptr;
    std::size_t n = 0;
    DeviceVec(const Cuda& d, std::size_t count) : dev(d), n(count) {
        ptr = static_cast<T*>(dev.allocate(sizeof(T) * std::max<std::size_t>(n, 1)));
        dev.fill_zero(ptr, sizeof(T) * n);
    }
    DeviceVec(const Cuda& d, const std::vector<T>& host) : DeviceVec(d, host.size()) {
        dev.copy(ptr, host.data(), sizeof(T) * n);
    }
    DeviceVec(const DeviceVec&) = delete;
    DeviceVec& operator=(const DeviceVec&) = delete;
    ~DeviceVec() { dev.deallocate(ptr, sizeof(T) * n); }
    std::vector<T> host() const {
        std::vector<T> v(n);
        dev.copy(v.data(), ptr, sizeof(T) * n);
        return v;
    }
};

/// |a - b| <= atol + rtol |b| elementwise, atol = floor · max|b|; reports the worst element.
template <class A, class B>
void close(const std::string& what, const A* a, const B* b, std::size_t n, double rtol, double floor = 0.0) {
    double scale = 0;
    for (std::size_t i = 0; i < n; ++i) scale = std::max(scale, std::abs(double(b[i])));
    const double atol = floor * scale + 1e-30;
    std::size_t worst = n;
    double worst_excess = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const double x = double(a[i]), y = double(b[i]);
        const double excess = std::abs(x - y) - (atol + rtol * std::abs(y));
        if (!(excess <= 0) && (worst == n || !(excess <= worst_excess))) {
            worst = i;
            worst_excess = excess;
            if (std::isnan(excess)) break;
        }
    }
    INFO(what << ": worst element " << worst << " of " << n << ": cuda " << (worst < n ? double(a[worst]) : 0.0)
              << ", cpu " << (worst < n ? double(b[worst]) : 0.0) << " (rtol " << rtol << ", atol " << atol << ")");
    CHECK(worst == n);
}
template <class T>
void close(const std::string& what, const std::vector<T>& a, const std::vector<T>& b, double rtol, double floor = 0.0) {
    REQUIRE(a.size() == b.size());
    close(what, a.data(), b.data(), a.size(), rtol, floor);
}

constexpr double elementwise = 1e-4, after_gemm = 1e-3;

Cuda& gpu() {
    static Cuda dev;
    return dev;
}
Cpu& cpu() {
    static Cpu dev;
    return dev;
}

}  // namespace

// ---- GEMM ---------------------------------------------------------------------------------------

TEST_CASE("gemm: every transpose combination, alpha, beta, padded leading dimensions") {
    const int M = 37, N = 53, K = 29;
    for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb)
            for (float beta : {0.0f, 0.5f}) {
                const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
                const auto A = randn<float>(std::size_t(ta ? K : M) * lda, 1);
                const auto B = randn<float>(std::size_t(tb ? N : K) * ldb, 2);
                auto C = randn<float>(std::size_t(M) * ldc, 3);
                DeviceVec<float> dA(gpu(), A), dB(gpu(), B), dC(gpu(), C);
                device::gemm(gpu(), bool(ta), bool(tb), M, N, K, 1.5f, dA.ptr, lda, dB.ptr, ldb, beta, dC.ptr, ldc);
                device::gemm(cpu(), bool(ta), bool(tb), M, N, K, 1.5f, A.data(), lda, B.data(), ldb, beta, C.data(),
                             ldc);
                close("gemm ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) + " beta=" + std::to_string(beta),
                      dC.host(), C, after_gemm, after_gemm);
            }
}

TEST_CASE("gemm_strided_batched: the attention shapes") {
    const int Tn = 19, hs = 16, H = 3, C3 = 3 * H * hs;
    const auto qkv = randn<float>(std::size_t(Tn) * C3, 4);
    std::vector<float> att(std::size_t(H) * Tn * Tn, 0.f);
    DeviceVec<float> dq(gpu(), qkv), datt(gpu(), att);
    device::gemm_strided_batched(gpu(), false, true, Tn, Tn, hs, 1.f, dq.ptr, C3, hs, dq.ptr + H * hs, C3, hs, 0.f,
                                 datt.ptr, Tn, std::int64_t(Tn) * Tn, H);
    device::gemm_strided_batched(cpu(), false, true, Tn, Tn, hs, 1.f, qkv.data(), C3, hs, qkv.data() + H * hs, C3, hs,
                                 0.f, att.data(), Tn, std::int64_t(Tn) * Tn, H);
    close("q k^T", datt.host(), att, after_gemm, after_gemm);
}

// ---- layer kernels ------------------------------------------------------------------------------

TEST_CASE("elementwise and row kernels match device::Cpu") {
    const int N = 45, C = 96;
    const std::size_t NC = std::size_t(N) * C;
    const auto x = randn<float>(NC, 10), y = randn<float>(NC, 11), b = randn<float>(C, 12);
    DeviceVec<float> dx(gpu(), x), dy(gpu(), y), db(gpu(), b);

    SUBCASE("add_bias, bias_grad, add, accumulate") {
        auto out = x;
        DeviceVec<float> dout(gpu(), x);
        device::add_bias(gpu(), dout.ptr, db.ptr, N, C);
        device::add_bias(cpu(), out.data(), b.data(), N, C);
        close("add_bias", dout.host(), out, elementwise);
        auto g = b;
        DeviceVec<float> dg(gpu(), b);
        device::bias_grad(gpu(), dg.ptr, dx.ptr, N, C);
        device::bias_grad(cpu(), g.data(), x.data(), N, C);
        close("bias_grad", dg.host(), g, elementwise, 1e-6);
        std::vector<float> s(NC);
        DeviceVec<float> ds(gpu(), NC);
        device::add(gpu(), ds.ptr, dx.ptr, dy.ptr, std::int64_t(NC));
        device::add(cpu(), s.data(), x.data(), y.data(), std::int64_t(NC));
        close("add", ds.host(), s, elementwise);
        device::accumulate(gpu(), ds.ptr, dx.ptr, std::int64_t(NC));
        device::accumulate(cpu(), s.data(), x.data(), std::int64_t(NC));
        close("accumulate", ds.host(), s, elementwise);
    }
    SUBCASE("layernorm forward and backward") {
        const auto w = randn<float>(C, 13, 0.5), bb = randn<float>(C, 14, 0.5), dout = randn<float>(NC, 15);
        std::vector<float> out(NC), mean(N), rstd(N), din(NC, 0.f), dw(C, 0.f), dbb(C, 0.f);
        DeviceVec<float> dw_(gpu(), w), db_(gpu(), bb), ddout(gpu(), dout), o(gpu(), NC), m(gpu(), N), r(gpu(), N),
            di(gpu(), NC), gw(gpu(), C), gb(gpu(), C);
        device::layernorm_forward(gpu(), o.ptr, m.ptr, r.ptr, dx.ptr, dw_.ptr, db_.ptr, N, C, 1e-5f);
        device::layernorm_forward(cpu(), out.data(), mean.data(), rstd.data(), x.data(), w.data(), bb.data(), N, C,
                                  1e-5f);
        close("ln out", o.host(), out, elementwise, 1e-6);
        close("ln mean", m.host(), mean, elementwise, 1e-6);
        close("ln rstd", r.host(), rstd, elementwise);
        device::layernorm_backward(gpu(), di.ptr, gw.ptr, gb.ptr, ddout.ptr, dx.ptr, dw_.ptr, m.ptr, r.ptr, N, C);
        device::layernorm_backward(cpu(), din.data(), dw.data(), dbb.data(), dout.data(), x.data(), w.data(),
                                   mean.data(), rstd.data(), N, C);
        close("ln din", di.host(), din, elementwise, 1e-5);
        close("ln dw", gw.host(), dw, elementwise, 1e-5);
        close("ln db", gb.host(), dbb, elementwise, 1e-6);
    }
    SUBCASE("gelu forward and backward") {
        auto big = randn<float>(NC, 16, 3.0);
        std::vector<float> out(NC), din(NC);
        DeviceVec<float> dbig(gpu(), big), o(gpu(), NC), di(gpu(), NC);
        device::gelu_forward(gpu(), o.ptr, dbig.ptr, std::int64_t(NC));
        device::gelu_forward(cpu(), out.data(), big.data(), std::int64_t(NC));
        close("gelu", o.host(), out, elementwise, 1e-7);
        device::gelu_backward(gpu(), di.ptr, dbig.ptr, dy.ptr, std::int64_t(NC));
        device::gelu_backward(cpu(), din.data(), big.data(), y.data(), std::int64_t(NC));
        close("gelu'", di.host(), din, elementwise, 1e-7);
        // fused bias + GELU against add_bias then gelu_forward
        auto pre = big;
        DeviceVec<float> dpre(gpu(), big), dout2(gpu(), NC);
        device::bias_gelu_forward(gpu(), dout2.ptr, dpre.ptr, db.ptr, N, C);
        device::add_bias(cpu(), pre.data(), b.data(), N, C);
        device::gelu_forward(cpu(), out.data(), pre.data(), std::int64_t(NC));
        close("bias+gelu pre", dpre.host(), pre, elementwise);
        close("bias+gelu", dout2.host(), out, elementwise, 1e-7);
    }
}

TEST_CASE("causal softmax forward and backward") {
    const int BH = 6, Tn = 45;  // rows longer than a warp
    const std::size_t n = std::size_t(BH) * Tn * Tn;
    auto att = randn<float>(n, 20, 2.0);
    const auto datt = randn<float>(n, 21);
    DeviceVec<float> da(gpu(), att), dd(gpu(), datt), ds(gpu(), n);
    const float scale = 0.25f;
    device::causal_softmax_forward(gpu(), da.ptr, BH, Tn, scale);
    device::causal_softmax_forward(cpu(), att.data(), BH, Tn, scale);
    close("softmax", da.host(), att, elementwise, 1e-7);
    std::vector<float> dsc(n);
    device::causal_softmax_backward(gpu(), ds.ptr, da.ptr, dd.ptr, BH, Tn, scale);
    device::causal_softmax_backward(cpu(), dsc.data(), att.data(), datt.data(), BH, Tn, scale);
    close("softmax backward", ds.host(), dsc, elementwise, 1e-6);
}

TEST_CASE("embedding forward and backward with repeated tokens") {
    const int B = 3, Tn = 17, C = 40, V = 11;
    std::vector<std::int32_t> tokens(std::size_t(B) * Tn);
    for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = std::int32_t((i * 7) % V);
    const auto wte = randn<float>(std::size_t(V) * C, 30), wpe = randn<float>(std::size_t(Tn) * C, 31);
    const auto dout = randn<float>(tokens.size() * C, 32);
    DeviceVec<float> dwte(gpu(), wte), dwpe(gpu(), wpe), ddout(gpu(), dout), o(gpu(), tokens.size() * C);
    DeviceVec<std::int32_t> dtok(gpu(), tokens);
    std::vector<float> out(tokens.size() * C);
    device::embedding_forward(gpu(), o.ptr, dtok.ptr, dwte.ptr, dwpe.ptr, B, Tn, C);
    device::embedding_forward(cpu(), out.data(), tokens.data(), wte.data(), wpe.data(), B, Tn, C);
    close("embedding", o.host(), out, elementwise);
    auto gte = wte, gpe = wpe;  // accumulates
    device::embedding_backward(gpu(), dwte.ptr, dwpe.ptr, ddout.ptr, dtok.ptr, B, Tn, C);
    device::embedding_backward(cpu(), gte.data(), gpe.data(), dout.data(), tokens.data(), B, Tn, C);
    close("dwte", dwte.host(), gte, elementwise, 1e-6);
    close("dwpe", dwpe.host(), gpe, elementwise, 1e-6);
}

TEST_CASE("cross-entropy forward/backward with ignored rows (host targets)") {
    const int N = 23, V = 1031;
    const auto logits = randn<float>(std::size_t(N) * V, 40, 3.0);
    std::vector<std::int32_t> targets(N);
    for (int n = 0; n < N; ++n) targets[n] = n % 5 == 0 ? -1 : (n * 131) % V;
    std::vector<float> d(logits.size()), losses(N);
    DeviceVec<float> dl(gpu(), logits), dd(gpu(), logits.size()), dloss(gpu(), N);
    const int count_gpu =
        device::cross_entropy_forward_backward(gpu(), dd.ptr, dloss.ptr, dl.ptr, targets.data(), N, V, 0.1f);
    const int count_cpu = device::cross_entropy_forward_backward(cpu(), d.data(), losses.data(), logits.data(),
                                                                 targets.data(), N, V, 0.1f);
    CHECK(count_gpu == count_cpu);
    close("ce losses", dloss.host(), losses, elementwise);
    close("ce grad", dd.host(), d, elementwise, 1e-6);
}

TEST_CASE("attention_decode against a KV cache: multi-head and grouped-query") {
    const int B = 3, H = 4, hs = 16, Tmax = 40;
    const device::Reference ref;
    for (int Hkv : {4, 2}) {
        INFO("H " << H << ", Hkv " << Hkv);
        const int row = (H + 2 * Hkv) * hs;
        const auto qkv = randn<float>(std::size_t(B) * row, 50);
        const auto kc = randn<float>(std::size_t(B) * Hkv * Tmax * hs, 51), vc = randn<float>(kc.size(), 52);
        const std::vector<int> lengths{1, 17, 40};
        std::vector<float> out(std::size_t(B) * H * hs), scratch(std::size_t(B) * H * Tmax);
        DeviceVec<float> dq(gpu(), qkv), dk(gpu(), kc), dv(gpu(), vc), o(gpu(), out.size()), s(gpu(), scratch.size());
        device::attention_decode(gpu(), o.ptr, s.ptr, dq.ptr, dk.ptr, dv.ptr, lengths.data(), B, H, Hkv, hs, Tmax);
        device::attention_decode(ref, out.data(), scratch.data(), qkv.data(), kc.data(), vc.data(), lengths.data(), B,
                                 H, Hkv, hs, Tmax);
        close("attention_decode", o.host(), out, after_gemm, 1e-5);
    }
}

TEST_CASE("kv_cache_store: grouped-query rows into (max_batch, Hkv, Tmax, hs), rows on host and device") {
    const int H = 4, Hkv = 2, hs = 16, Tmax = 10, max_batch = 3, row = (H + 2 * Hkv) * hs, count = 5;
    const auto qkv = randn<float>(std::size_t(7) * row, 55);
    const std::size_t cache = std::size_t(max_batch) * Hkv * Tmax * hs;
    auto keys = randn<float>(cache, 56), values = randn<float>(cache, 57);  // untouched entries must stay
    // token i: qkv row, sequence, position
    const std::vector<std::int32_t> rows{6, 0, 0, 2, 2, 9, 0, 1, 3, 4, 2, 0, 3, 0, 1};
    DeviceVec<float> dq(gpu(), qkv), dk(gpu(), keys), dv(gpu(), values);
    DeviceVec<float> dk2(gpu(), keys), dv2(gpu(), values);
    DeviceVec<std::int32_t> drows(gpu(), rows);
    device::kv_cache_store(gpu(), dk.ptr, dv.ptr, dq.ptr, rows.data(), count, H, Hkv, hs, Tmax);
    device::kv_cache_store(gpu(), dk2.ptr, dv2.ptr, dq.ptr, drows.ptr, count, H, Hkv, hs, Tmax);
    for (int i = 0; i < count; ++i) {
        const float* src = qkv.data() + std::size_t(rows[3 * i]) * row;
        const int b = rows[3 * i + 1], t = rows[3 * i + 2];
        for (int h = 0; h < Hkv; ++h)
            for (int d = 0; d < hs; ++d) {
                const std::size_t dst = ((std::size_t(b) * Hkv + h) * Tmax + t) * hs + d;
                keys[dst] = src[H * hs + h * hs + d];
                values[dst] = src[(H + Hkv) * hs + h * hs + d];
            }
    }
    close("keys (host rows)", dk.host(), keys, 0.0);
    close("values (host rows)", dv.host(), values, 0.0);
    close("keys (device rows)", dk2.host(), keys, 0.0);
    close("values (device rows)", dv2.host(), values, 0.0);
}

// ---- Llama-style layer kernels (against device::Reference) --------------------------------------

TEST_CASE("rmsnorm forward and backward match device::Reference") {
    const int N = 150, C = 96;  // rows longer than a warp, three 64-row chunks for dw
    const std::size_t NC = std::size_t(N) * C;
    const device::Reference ref;
    const auto x = randn<float>(NC, 110), w = randn<float>(C, 111, 0.5), dout = randn<float>(NC, 112);
    auto din = randn<float>(NC, 113), dw = randn<float>(C, 114);  // backward accumulates
    std::vector<float> out(NC), rstd(N);
    DeviceVec<float> dx(gpu(), x), dw_(gpu(), w), ddout(gpu(), dout), o(gpu(), NC), r(gpu(), N), di(gpu(), din),
        gw(gpu(), dw);
    device::rmsnorm_forward(gpu(), o.ptr, r.ptr, dx.ptr, dw_.ptr, N, C, 1e-6f);
    device::rmsnorm_forward(ref, out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-6f);
    close("rms out", o.host(), out, elementwise, 1e-6);
    close("rms rstd", r.host(), rstd, elementwise);
    device::rmsnorm_backward(gpu(), di.ptr, gw.ptr, ddout.ptr, dx.ptr, dw_.ptr, r.ptr, N, C);
    device::rmsnorm_backward(ref, din.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), N, C);
    close("rms din", di.host(), din, elementwise, 1e-5);
    close("rms dw", gw.host(), dw, elementwise, 1e-5);
}

TEST_CASE("swiglu forward and backward match device::Reference") {
    const int N = 45, F = 96;
    const device::Reference ref;
    const auto in = randn<float>(std::size_t(N) * 2 * F, 120, 3.0), dout = randn<float>(std::size_t(N) * F, 121);
    std::vector<float> out(std::size_t(N) * F), din(in.size());
    DeviceVec<float> dinp(gpu(), in), ddout(gpu(), dout), o(gpu(), out.size()), di(gpu(), din.size());
    device::swiglu_forward(gpu(), o.ptr, dinp.ptr, N, F);
    device::swiglu_forward(ref, out.data(), in.data(), N, F);
    close("swiglu", o.host(), out, elementwise, 1e-7);
    device::swiglu_backward(gpu(), di.ptr, dinp.ptr, ddout.ptr, N, F);
    device::swiglu_backward(ref, din.data(), in.data(), dout.data(), N, F);
    close("swiglu'", di.host(), din, elementwise, 1e-7);
}

TEST_CASE("rope_rotate on q and k heads, both directions, positions on host") {
    const int N = 13, H = 4, Hkv = 2, hs = 16, half = hs / 2, P = 32, row = (H + 2 * Hkv) * hs;
    const device::Reference ref;
    std::vector<float> cos(std::size_t(P) * half), sin(cos.size());
    for (int p = 0; p < P; ++p)
        for (int i = 0; i < half; ++i) {
            const double a = p * std::pow(10000.0, -2.0 * i / hs);
            cos[std::size_t(p) * half + i] = float(std::cos(a));
            sin[std::size_t(p) * half + i] = float(std::sin(a));
        }
    std::vector<std::int32_t> positions(N);
    for (int n = 0; n < N; ++n) positions[n] = (n * 5 + 3) % P;
    const auto x0 = randn<float>(std::size_t(N) * row, 130);
    auto x = x0;
    DeviceVec<float> dx(gpu(), x0), dcos(gpu(), cos), dsin(gpu(), sin);
    for (bool inverse : {false, true}) {
        INFO("inverse " << inverse);
        // q: the first H heads; k: Hkv heads from column H hs; v untouched
        device::rope_rotate(gpu(), dx.ptr, dcos.ptr, dsin.ptr, positions.data(), N, row, H, hs, inverse);
        device::rope_rotate(gpu(), dx.ptr + H * hs, dcos.ptr, dsin.ptr, positions.data(), N, row, Hkv, hs, inverse);
        device::rope_rotate(ref, x.data(), cos.data(), sin.data(), positions.data(), N, row, H, hs, inverse);
        device::rope_rotate(ref, x.data() + H * hs, cos.data(), sin.data(), positions.data(), N, row, Hkv, hs, inverse);
        close("rope", dx.host(), x, elementwise, 1e-6);
    }
    close("rope forward then inverse", dx.host(), x0, elementwise, 1e-6);
}

TEST_CASE("embedding without position table (wpe and dwpe null)") {
    const int B = 3, Tn = 17, C = 40, V = 11;
    const device::Reference ref;
    std::vector<std::int32_t> tokens(std::size_t(B) * Tn);
    for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = std::int32_t((i * 7) % V);
    const auto wte = randn<float>(std::size_t(V) * C, 140), dout = randn<float>(tokens.size() * C, 141);
    DeviceVec<float> dwte(gpu(), wte), ddout(gpu(), dout), o(gpu(), tokens.size() * C);
    std::vector<float> out(tokens.size() * C);
    device::embedding_forward(gpu(), o.ptr, tokens.data(), dwte.ptr, static_cast<const float*>(nullptr), B, Tn, C);
    device::embedding_forward(ref, out.data(), tokens.data(), wte.data(), static_cast<const float*>(nullptr), B, Tn, C);
    close("embedding (no wpe)", o.host(), out, elementwise);
    auto gte = wte;  // accumulates
    device::embedding_backward(gpu(), dwte.ptr, static_cast<float*>(nullptr), ddout.ptr, tokens.data(), B, Tn, C);
    device::embedding_backward(ref, gte.data(), static_cast<float*>(nullptr), dout.data(), tokens.data(), B, Tn, C);
    close("dwte (no dwpe)", dwte.host(), gte, elementwise, 1e-6);
}

// ---- fused loss kernels -------------------------------------------------------------------------

TEST_CASE("fused loss kernels match device::Reference (overwrite and accumulate, masked rows)") {
    const int N = 19, V = 2053;
    const auto s = randn<float>(std::size_t(N) * V, 60, 2.0), t = randn<float>(std::size_t(N) * V, 61, 2.0);
    std::vector<std::uint8_t> mask(N);
    for (int n = 0; n < N; ++n) mask[n] = n % 4 != 1;
    DeviceVec<float> ds(gpu(), s), dt(gpu(), t);
    const device::Reference ref;
    for (bool acc : {false, true}) {
        INFO("accumulate " << acc);
        const auto init = randn<float>(std::size_t(N) * V, 62);
        auto run = [&](const char* what, auto&& on_gpu, auto&& on_ref) {
            DeviceVec<float> dd(gpu(), init), dl(gpu(), N);
            auto d = init;
            std::vector<float> losses(N);
            on_gpu(dd.ptr, dl.ptr);
            on_ref(d.data(), losses.data());
            close(std::string(what) + " losses", dl.host(), losses, elementwise, 1e-7);
            close(std::string(what) + " grad", dd.host(), d, elementwise, 1e-6);
        };
        run(
            "kl",
            [&](float* d, float* l) {
                device::kl_forward_backward(gpu(), d, acc, l, ds.ptr, dt.ptr, mask.data(), N, V, 0.5f, 0.3f);
            },
            [&](float* d, float* l) {
                device::kl_forward_backward(ref, d, acc, l, s.data(), t.data(), mask.data(), N, V, 0.5f, 0.3f);
            });
        run(
            "reverse kl",
            [&](float* d, float* l) {
                device::reverse_kl_forward_backward(gpu(), d, acc, l, ds.ptr, dt.ptr, mask.data(), N, V, 0.5f, 0.3f);
            },
            [&](float* d, float* l) {
                device::reverse_kl_forward_backward(ref, d, acc, l, s.data(), t.data(), mask.data(), N, V, 0.5f, 0.3f);
            });
        run(
            "jsd",
            [&](float* d, float* l) {
                device::jsd_forward_backward(gpu(), d, acc, l, ds.ptr, dt.ptr, mask.data(), N, V, 0.3f, 0.5f, 0.3f);
            },
            [&](float* d, float* l) {
                device::jsd_forward_backward(ref, d, acc, l, s.data(), t.data(), mask.data(), N, V, 0.3f, 0.5f, 0.3f);
            });
        std::vector<std::int32_t> targets(N);
        for (int n = 0; n < N; ++n) targets[n] = n % 6 == 0 ? -1 : (n * 97) % V;
        run(
            "masked ce",
            [&](float* d, float* l) {
                device::masked_cross_entropy_forward_backward(gpu(), d, acc, l, ds.ptr, targets.data(), mask.data(), N,
                                                              V, 0.3f);
            },
            [&](float* d, float* l) {
                device::masked_cross_entropy_forward_backward(ref, d, acc, l, s.data(), targets.data(), mask.data(), N,
                                                              V, 0.3f);
            });
        // top-k: 5 distinct ids per row (one unused slot), log-probs of a distribution with a tail
        const int k = 6;
        std::vector<std::int32_t> ids(std::size_t(N) * k);
        std::vector<float> lp(ids.size());
        for (int n = 0; n < N; ++n)
            for (int i = 0; i < k; ++i) {
                ids[std::size_t(n) * k + i] = i == k - 1 ? -1 : (n * 31 + i * 401) % V;
                lp[std::size_t(n) * k + i] = std::log(0.5f / float(1 << i));
            }
        run(
            "top-k kl",
            [&](float* d, float* l) {
                device::topk_kl_forward_backward(gpu(), d, acc, l, ds.ptr, ids.data(), lp.data(), mask.data(), N, V, k,
                                                 1.0f, 0.3f);
            },
            [&](float* d, float* l) {
                device::topk_kl_forward_backward(ref, d, acc, l, s.data(), ids.data(), lp.data(), mask.data(), N, V, k,
                                                 1.0f, 0.3f);
            });
    }
}

TEST_CASE("embedding kernels: cosine embedding and embedding MSE") {
    const int B = 5, C = 300;  // C spans several 128-thread strides
    auto s = randn<float>(std::size_t(B) * C, 80), t = randn<float>(s.size(), 81);
    for (int c = 0; c < C; ++c) s[std::size_t(C) + c] = 0.0f;  // row 1: a zero student vector
    DeviceVec<float> ds(gpu(), s), dt(gpu(), t);
    for (bool acc : {false, true}) {
        const auto init = randn<float>(s.size(), 82);
        for (int which = 0; which < 2; ++which) {
            DeviceVec<float> dd(gpu(), init), dl(gpu(), std::size_t(B));
            auto d = init;
            std::vector<float> losses(static_cast<std::size_t>(B));
            if (which == 0) {
                device::cosine_embedding_forward_backward(gpu(), dd.ptr, acc, dl.ptr, ds.ptr, dt.ptr, B, C, 0.3f);
                device::cosine_embedding_forward_backward(device::Reference{}, d.data(), acc, losses.data(), s.data(),
                                                          t.data(), B, C, 0.3f);
            } else {
                device::embedding_mse_forward_backward(gpu(), dd.ptr, acc, dl.ptr, ds.ptr, dt.ptr, B, C, 0.3f);
                device::embedding_mse_forward_backward(device::Reference{}, d.data(), acc, losses.data(), s.data(),
                                                       t.data(), B, C, 0.3f);
            }
            close(which == 0 ? "cosine embedding losses" : "embedding mse losses", dl.host(), losses, elementwise,
                  1e-6);
            close(which == 0 ? "cosine embedding grad" : "embedding mse grad", dd.host(), d, elementwise, 1e-6);
        }
    }
}

TEST_CASE("attention-transfer kernels: attention KL (grouped heads) and relation KL") {
    const int B = 2, Hs = 2, Ht = 4, Tn = 37;
    auto make_att = [&](int H, std::uint64_t seed) {
        auto a = randn<float>(std::size_t(B) * H * Tn * Tn, seed, 2.0);
        device::causal_softmax_forward(device::Reference{}, a.data(), B * H, Tn, 1.0f);
        return a;
    };
    const auto as = make_att(Hs, 70), at = make_att(Ht, 71);
    std::vector<std::uint8_t> mask(std::size_t(B) * Tn);
    for (std::size_t i = 0; i < mask.size(); ++i) mask[i] = i % 5 != 2;
    DeviceVec<float> das(gpu(), as), dat(gpu(), at);
    for (bool causal : {true, false})  // not causal: every key; those above the diagonal carry 0 here
        for (bool acc : {false, true}) {
            const auto init = randn<float>(as.size(), 72);
            DeviceVec<float> dd(gpu(), init), dl(gpu(), mask.size());
            auto d = init;
            std::vector<float> losses(mask.size());
            device::attention_kl_forward_backward(gpu(), dd.ptr, acc, dl.ptr, das.ptr, dat.ptr, mask.data(), B, Hs, Ht,
                                                  Tn, 0.2f, causal);
            device::attention_kl_forward_backward(device::Reference{}, d.data(), acc, losses.data(), as.data(),
                                                  at.data(), mask.data(), B, Hs, Ht, Tn, 0.2f, causal);
            close("attention kl losses", dl.host(), losses, elementwise, 1e-7);
            close("attention kl grad", dd.host(), d, elementwise, 1e-6);
        }
    const int R = 3;
    const auto rs = randn<float>(std::size_t(R) * Tn * Tn, 73), rt = randn<float>(rs.size(), 74);
    DeviceVec<float> drs(gpu(), rs), drt(gpu(), rt), dd(gpu(), rs.size()), dl(gpu(), Tn);
    std::vector<float> d(rs.size()), losses(Tn);
    device::relation_kl_forward_backward(gpu(), dd.ptr, dl.ptr, drs.ptr, drt.ptr, mask.data(), R, Tn, 0.3f, 0.4f, 0.5f);
    device::relation_kl_forward_backward(device::Reference{}, d.data(), losses.data(), rs.data(), rt.data(),
                                         mask.data(), R, Tn, 0.3f, 0.4f, 0.5f);
    close("relation kl losses", dl.host(), losses, elementwise, 1e-7);
    close("relation kl grad", dd.host(), d, elementwise, 1e-6);
}

TEST_CASE("HiddenMSE on CUDA (projected, mse and cosine) matches the CPU") {
    const int B = 2, Tn = 5, V = 7, Cs = 6, Ct = 10;
    const std::size_t N = std::size_t(B) * Tn;
    const auto hs0 = randn<float>(N * Cs, 100), hs1 = randn<float>(N * Cs, 101);
    const auto ht0 = randn<float>(N * Ct, 102), ht1 = randn<float>(N * Ct, 103);
    const auto logits = randn<float>(N * V, 104);
    std::vector<std::uint8_t> mask(N, 1);
    mask[0] = mask[7] = 0;
    const loss::dims d{{V, Cs, 1, 1}, {V, Ct, 1, 1}, B, Tn};
    // value, the gradient on the student's last hidden state, and the projection's gradients
    auto run = [&]<class Device>(const Device& dev, const std::string& form) {
        auto put = [&](const std::vector<float>& h) {
            float* p = static_cast<float*>(dev.allocate(sizeof(float) * h.size()));
            dev.copy(p, h.data(), sizeof(float) * h.size());
            return p;
        };
        std::vector<float*> owned{put(hs0), put(hs1), put(ht0), put(ht1), put(logits), put(logits)};
        loss::HiddenMSEConfig c;
        c.layer_map = "uniform";
        c.form = form;
        loss::BasicHiddenMSE<float, Device> term(c, d, dev);
        loss::Workspace<float, Device> ws(term, d, dev);
        loss::student_outputs<float> so;
        loss::teacher_outputs<float> to;
        so.logits = Tensor<const float>(owned[4], {B, Tn, V}, Device::memory);
        so.hidden_states = {Tensor<const float>(owned[0], {B, Tn, Cs}, Device::memory),
                            Tensor<const float>(owned[1], {B, Tn, Cs}, Device::memory)};
        to.hidden_states = {Tensor<const float>(owned[2], {B, Tn, Ct}, Device::memory),
                            Tensor<const float>(owned[3], {B, Tn, Ct}, Device::memory)};
        term.zero_grad();
        auto ctx = ws.begin(so, Tensor<float>(owned[5], {B, Tn, V}, Device::memory), to,
                            Tensor<const std::uint8_t>(mask.data(), {B, Tn}));
        const float value = term(ctx);
        ws.finish();
        std::vector<std::vector<float>> out{{value}};
        for (const auto& t : ws.d_hidden())
            if (!t.empty()) {
                std::vector<float> h(static_cast<std::size_t>(t.numel()));
                dev.copy(h.data(), t.data(), sizeof(float) * h.size());
                out.push_back(h);
            }
        for (const auto& p : term.parameters()) {
            std::vector<float> h(static_cast<std::size_t>(p.grad.numel()));
            dev.copy(h.data(), p.grad.data(), sizeof(float) * h.size());
            out.push_back(h);
        }
        for (std::size_t i = 0; i < owned.size(); ++i) dev.deallocate(owned[i], 0);
        return out;
    };
    for (const std::string form : {"mse", "cosine"}) {
        INFO(form);
        const auto g = run(gpu(), form), c = run(cpu(), form);
        REQUIRE(g.size() == c.size());
        CHECK(g[0][0] == doctest::Approx(c[0][0]).epsilon(1e-4));
        for (std::size_t i = 1; i < c.size(); ++i)
            close(form + " gradient " + std::to_string(i), g[i], c[i], after_gemm, after_gemm);
    }
}

// ---- optimizer kernels --------------------------------------------------------------------------

namespace {

/// A flat parameter list over one arena per device, same values on both.
template <class Device>
struct Params {
    detail::Arena<float, Device> values, grads;
    std::vector<Parameter<float>> list;
    Params(const Device& dev, const std::vector<float>& v, const std::vector<float>& g, const std::vector<int>& sizes)
        : values(dev, v.size()), grads(dev, g.size()) {
        dev.copy(values.data(), v.data(), sizeof(float) * v.size());
        dev.copy(grads.data(), g.data(), sizeof(float) * g.size());
        std::size_t off = 0;
        int i = 0;
        for (int n : sizes) {
            const auto kind = i % 3 == 0   ? parameter_kind::weight
                              : i % 3 == 1 ? parameter_kind::bias
                                           : parameter_kind::norm;
            list.push_back({"p" + std::to_string(i++), Tensor<float>(values.data() + off, {n}, Device::memory),
                            Tensor<float>(grads.data() + off, {n}, Device::memory), kind});
            off += std::size_t(n);
        }
    }
    std::vector<float> host_values(const Device& dev) const {
        std::vector<float> h(values.size());
        dev.copy(h.data(), values.data(), sizeof(float) * h.size());
        return h;
    }
};

}  // namespace

TEST_CASE("AdamW, Adam and SGD updates, grad-norm clipping") {
    const std::vector<int> sizes{1000, 17, 3, 70000, 129};
    std::size_t total = 0;
    for (int n : sizes) total += std::size_t(n);
    const auto v = randn<float>(total, 80), g = randn<float>(total, 81, 0.1);
    Params<Cuda> pg(gpu(), v, g, sizes);
    Params<Cpu> pc(cpu(), v, g, sizes);

    SUBCASE("grad norm and clipping") {
        const double ng = optim::global_grad_norm<float>(pg.list, gpu());
        const double nc = optim::global_grad_norm<float>(pc.list, cpu());
        CHECK(ng == doctest::Approx(nc).epsilon(1e-10));
        optim::clip_grad_norm<float>(pg.list, 0.5 * nc, gpu());
        optim::clip_grad_norm<float>(pc.list, 0.5 * nc, cpu());
        std::vector<float> hg(total), hc(total);
        gpu().copy(hg.data(), pg.grads.data(), sizeof(float) * total);
        std::copy(pc.grads.data(), pc.grads.data() + total, hc.data());
        close("clipped grads", hg, hc, elementwise);
    }
    SUBCASE("AdamW, three steps") {
        optim::AdamConfig c;
        c.weight_decay = 0.1;
        optim::AdamW<float, Cuda> og(pg.list, c, gpu());
        optim::AdamW<float, Cpu> oc(pc.list, c, cpu());
        for (int s = 0; s < 3; ++s) {
            og.step(1e-2);
            oc.step(1e-2);
        }
        close("adamw values", pg.host_values(gpu()), pc.host_values(cpu()), elementwise, 1e-7);
    }
    SUBCASE("Adam with coupled weight decay") {
        optim::AdamConfig c;
        c.weight_decay = 0.05;
        optim::Adam<float, Cuda> og(pg.list, c, gpu());
        optim::Adam<float, Cpu> oc(pc.list, c, cpu());
        for (int s = 0; s < 3; ++s) {
            og.step(1e-2);
            oc.step(1e-2);
        }
        close("adam values", pg.host_values(gpu()), pc.host_values(cpu()), elementwise, 1e-7);
    }
    SUBCASE("SGD with Nesterov momentum and weight decay") {
        optim::SgdConfig c;
        c.momentum = 0.9;
        c.nesterov = true;
        c.weight_decay = 0.01;
        optim::Sgd<float, Cuda> og(pg.list, c, gpu());
        optim::Sgd<float, Cpu> oc(pc.list, c, cpu());
        for (int s = 0; s < 3; ++s) {
            og.step(0.1);
            oc.step(0.1);
        }
        close("sgd values", pg.host_values(gpu()), pc.host_values(cpu()), elementwise, 1e-7);
    }
}

// ---- sampling -----------------------------------------------------------------------------------

TEST_CASE("sampling: argmax and inverse-CDF temperature sampling") {
    const int N = 9, V = 3001;
    const auto logits = randn<float>(std::size_t(N) * V, 90, 3.0);
    DeviceVec<float> dl(gpu(), logits);
    std::vector<std::int32_t> got(N);
    device::argmax_rows(gpu(), got.data(), dl.ptr, N, V);
    for (int n = 0; n < N; ++n) {
        const float* row = logits.data() + std::size_t(n) * V;
        CHECK(got[n] == std::int32_t(std::max_element(row, row + V) - row));
    }
    std::vector<float> u(N);
    for (int n = 0; n < N; ++n) u[n] = (n + 0.5f) / N;
    device::sample_rows(gpu(), got.data(), dl.ptr, N, V, 0.7f, u.data());
    for (int n = 0; n < N; ++n) {
        // the host's inverse CDF, in double: the drawn token's CDF interval must hold u (up to rounding)
        const float* row = logits.data() + std::size_t(n) * V;
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < V; ++j) mx = std::max(mx, double(row[j]) / 0.7);
        for (int j = 0; j < V; ++j) sum += std::exp(double(row[j]) / 0.7 - mx);
        double before = 0;
        for (int j = 0; j < got[n]; ++j) before += std::exp(double(row[j]) / 0.7 - mx) / sum;
        const double after = before + std::exp(double(row[got[n]]) / 0.7 - mx) / sum;
        CHECK(before <= u[n] + 1e-5);
        CHECK(after >= u[n] - 1e-5);
    }
}

// ---- the model: a full distillation step and a loss curve ----------------------------------------

namespace {

student::TransformerConfig student_config() {
    student::TransformerConfig c;
    c.vocab_size = 263;
    c.context_length = 32;
    c.d_model = 64;
    c.n_layers = 2;
    c.n_heads = 4;
    c.d_ff = 256;
    return c;
}
student::TransformerConfig teacher_config() {
    auto c = student_config();
    c.d_model = 96;
    c.n_layers = 3;
    c.n_heads = 8;  // a multiple of the student's 4: AttentionKL groups teacher heads
    c.d_ff = 384;
    return c;
}

/// A config with the Llama/Qwen2-style blocks: RMSNorm, rotary positions, SwiGLU, grouped-query
/// attention (half as many kv heads), biases only on q|k|v, untied LM head.
student::TransformerConfig llama_style(student::TransformerConfig c) {
    c.norm = "rmsnorm";
    c.positions = "rope";
    c.mlp = "swiglu";
    c.n_kv_heads = c.n_heads / 2;
    c.qkv_bias = true;
    c.proj_bias = false;
    c.mlp_bias = false;
    c.tie_embeddings = false;
    return c;
}

using Loss = loss::Sum<loss::SoftKL, loss::HiddenMSE>;
/// The other terms that read the models: the logit divergences and the attention transfers.
using OtherTerms = loss::Sum<loss::ReverseKL, loss::JSD, loss::AttentionKL, loss::AttentionRelation>;

/// One device's whole distillation setup: teacher, student, loss, workspace, AdamW.
template <class Device, class L = Loss>
struct Setup {
    static constexpr int B = 4, Tn = 32;
    Device dev;
    student::Transformer<float, Device> student, teacher;
    loss::dims dims;
    loss::rebind_t<L, float, Device> loss;
    loss::Workspace<float, Device> ws;
    optim::AdamW<float, Device> opt;
    std::vector<std::int32_t> tokens;
    std::vector<std::uint8_t> mask;

    static typename loss::rebind_t<L, float, Device>::config loss_config() {
        typename loss::rebind_t<L, float, Device>::config c;
        if constexpr (std::is_same_v<L, Loss>) {
            c.template get<0>() = {1.0, {.temperature = 2.0}};
            c.template get<1>().weight = 0.5;
            c.template get<1>().config.layer_map = "uniform";
        } else {
            c.template get<0>().config.temperature = 1.5;  // ReverseKL
            c.template get<1>().config.beta = 0.3;         // JSD
            c.template get<3>().config.layer_map = "uniform";
        }
        return c;
    }

    explicit Setup(const Device& d, const student::TransformerConfig& sc = student_config(),
                   const student::TransformerConfig& tc = teacher_config())
        : dev(d),
          student(sc, B, d),
          teacher(tc, B, d),
          dims(loss::dims_of(student, teacher, B)),
          loss(loss_config(), dims),
          ws(loss, dims, d),
          opt(optim::gather(student.parameters(), loss.parameters()), optim::AdamConfig{}, d) {
        student.init(1);
        teacher.init(2);
        tokens.resize(std::size_t(B) * Tn);
        for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = std::int32_t((i * 37 + i / 7) % 263);
        mask.assign(tokens.size(), 1);
        for (int b = 0; b < B; ++b)
            for (int t = 0; t < 3 + b; ++t) mask[std::size_t(b) * Tn + t] = 0;  // a prompt per sequence
    }

    /// Forward both models, the loss and its gradient, backward; returns the loss.
    float forward_backward() {
        student.forward(tokens.data(), B, Tn);
        teacher.forward(tokens.data(), B, Tn);
        loss::teacher_outputs<float> to;
        loss::collect_outputs(teacher, to);
        student.zero_grad();
        loss.zero_grad();
        auto ctx = ws.begin(student, to, Tensor<const std::uint8_t>(mask.data(), {B, Tn}));
        const float value = loss(ctx);
        ws.finish();
        student.backward(ws.d_hidden(), ws.d_attention(), ws.d_qkv());
        return value;
    }
    void step(double lr) { opt.step(lr); }

    template <class T>
    std::vector<float> host(const Tensor<T>& t) const {
        std::vector<float> h(static_cast<std::size_t>(t.numel()));
        dev.copy(h.data(), t.data(), sizeof(float) * h.size());
        return h;
    }
};

}  // namespace

namespace {

void full_step(const student::TransformerConfig& sc, const student::TransformerConfig& tc) {
    Setup<Cuda> g(gpu(), sc, tc);
    Setup<Cpu> c(cpu(), sc, tc);
    // same initial weights on both devices
    for (std::size_t i = 0; i < c.student.parameters().size(); ++i)
        close("init " + c.student.parameters()[i].name, g.host(g.student.parameters()[i].value),
              c.host(c.student.parameters()[i].value), 0.0);
    const float lg = g.forward_backward(), lc = c.forward_backward();
    close("logits", g.host(g.student.logits()), c.host(c.student.logits()), after_gemm, after_gemm);
    for (int i = 0; i < c.student.hidden_state_count(); ++i)
        close("hidden " + std::to_string(i), g.host(g.student.hidden_state(i)), c.host(c.student.hidden_state(i)),
              after_gemm, after_gemm);
    CHECK(double(lg) == doctest::Approx(double(lc)).epsilon(1e-4));
    CHECK(g.loss.values()[0] == doctest::Approx(c.loss.values()[0]).epsilon(1e-4));
    CHECK(g.loss.values()[1] == doctest::Approx(c.loss.values()[1]).epsilon(1e-4));
    const auto pg = g.opt.parameters(), pc = c.opt.parameters();
    REQUIRE(pg.size() == pc.size());
    for (std::size_t i = 0; i < pc.size(); ++i)
        close("grad " + pc[i].name, g.host(pg[i].grad), c.host(pc[i].grad), after_gemm, after_gemm);
    g.step(1e-3);
    c.step(1e-3);
    // Adam's first step moves each weight by about lr · sign(g): where |g| is at the level of the GEMMs'
    // rounding its sign is noise, so those elements (|g| < 1e-4 of the tensor's largest) are left out
    for (std::size_t i = 0; i < pc.size(); ++i) {
        const auto grad = c.host(pc[i].grad);
        auto vg = g.host(pg[i].value), vc = c.host(pc[i].value);
        float gmax = 0;
        for (float x : grad) gmax = std::max(gmax, std::abs(x));
        std::size_t kept = 0;
        for (std::size_t e = 0; e < grad.size(); ++e)
            if (std::abs(grad[e]) >= 1e-4f * gmax) {
                vg[kept] = vg[e];
                vc[kept] = vc[e];
                ++kept;
            }
        vg.resize(kept);
        vc.resize(kept);
        close("after AdamW " + pc[i].name, vg, vc, after_gemm, 1e-4);
    }
    // the same loss through the model's own cross-entropy
    std::vector<std::int32_t> targets(c.tokens.size());
    for (std::size_t i = 0; i < targets.size(); ++i) targets[i] = i % 9 == 0 ? -1 : c.tokens[(i + 1) % targets.size()];
    g.student.forward(g.tokens.data(), g.B, g.Tn);
    c.student.forward(c.tokens.data(), c.B, c.Tn);
    CHECK(double(g.student.cross_entropy(targets.data())) ==
          doctest::Approx(double(c.student.cross_entropy(targets.data()))).epsilon(1e-4));
}

}  // namespace

TEST_CASE("a full distillation step: forward, SoftKL + HiddenMSE, backward, AdamW") {
    full_step(student_config(), teacher_config());
}

TEST_CASE("a full distillation step with Llama-style blocks (rmsnorm, rope, swiglu, GQA, untied head)") {
    full_step(llama_style(student_config()), llama_style(teacher_config()));
}

TEST_CASE("the other terms through the models: ReverseKL, JSD, AttentionKL, AttentionRelation") {
    Setup<Cuda, OtherTerms> g(gpu());
    Setup<Cpu, OtherTerms> c(cpu());
    const float lg = g.forward_backward(), lc = c.forward_backward();
    CHECK(double(lg) == doctest::Approx(double(lc)).epsilon(1e-4));
    for (std::size_t i = 0; i < OtherTerms::size; ++i) {
        INFO("term " << OtherTerms::names()[i]);
        CHECK(g.loss.values()[i] == doctest::Approx(c.loss.values()[i]).epsilon(1e-4));
    }
    const auto pg = g.opt.parameters(), pc = c.opt.parameters();
    REQUIRE(pg.size() == pc.size());
    for (std::size_t i = 0; i < pc.size(); ++i)
        close("grad " + pc[i].name, g.host(pg[i].grad), c.host(pc[i].grad), after_gemm, after_gemm);
}

TEST_CASE("end to end: 30 distillation steps on CUDA follow the CPU's loss curve") {
    Setup<Cuda> g(gpu());
    Setup<Cpu> c(cpu());
    std::vector<float> curve_g, curve_c;
    for (int s = 0; s < 30; ++s) {
        curve_g.push_back(g.forward_backward());
        curve_c.push_back(c.forward_backward());
        g.step(3e-3);
        c.step(3e-3);
    }
    for (int s = 0; s < 30; s += 5) MESSAGE("step " << s << ": cuda " << curve_g[s] << ", cpu " << curve_c[s]);
    CHECK(curve_c.back() < 0.8f * curve_c.front());  // it trains
    close("loss curve", curve_g, curve_c, 5e-3);
}

namespace {

void generation(const student::TransformerConfig& sc) {
    Setup<Cuda> g(gpu(), sc);
    Setup<Cpu> c(cpu(), sc);
    const int B = 2, Tn = 8;
    std::vector<int> lengths{5, 8};
    auto kg = g.student.make_cache(B);
    auto kc = c.student.make_cache(B);
    g.student.prefill(kg, g.tokens.data(), lengths.data(), B, Tn);
    c.student.prefill(kc, c.tokens.data(), lengths.data(), B, Tn);
    close("prefill logits", g.host(g.student.next_logits()), c.host(c.student.next_logits()), after_gemm, after_gemm);
    std::vector<std::int32_t> next(B);
    for (int step = 0; step < 4; ++step) {
        device::argmax_rows(gpu(), next.data(), g.student.next_logits().data(), B, 263);
        g.student.decode(kg, next.data(), B);
        c.student.decode(kc, next.data(), B);
        close("decode logits", g.host(g.student.next_logits()), c.host(c.student.next_logits()), after_gemm,
              after_gemm);
    }
}

}  // namespace

TEST_CASE("generation: prefill and decode on CUDA give the CPU's next-token logits") {
    generation(student_config());
}

TEST_CASE("generation with Llama-style blocks: rotary positions, grouped-query KV cache") {
    generation(llama_style(student_config()));
}

// ---- precision::bf16: bf16 GEMM operands, bf16 weight storage ------------------------------------
//
// The reference is testing::Bf16Cpu (bf16_host.hpp): device::Cpu's bf16 arithmetic (operands rounded
// to bf16, fp32 products and sums) without oneDNN, which this build does not link; tests/unit-bf16.cpp
// checks it against device::Cpu(threads, precision::bf16). A single GEMM agrees to the order of its
// fp32 sums; through a model a different order of sums flips a few bf16 roundings of the next GEMM's
// operands (2^-8 each), so the models are compared by relative L2 norm, against bounds measured for
// oneDNN against the emulation, and must be much closer to the emulation than to the fp32 model.

namespace {

using Emu = testing::Bf16Cpu;

bool bf16_skip() {
    const std::string why = Cuda::bf16_unsupported_reason(gpu().ordinal());
    if (why.empty()) return false;
    MESSAGE("skipped: " << why);
    return true;
}
Cuda& gpu_bf16() {
    static Cuda dev(device::precision::bf16);  // GPU 0's shared context: gpu()'s stream
    return dev;
}

template <class T>
std::vector<T> download(const Cuda& dev, const T* p, std::size_t n) {
    std::vector<T> h(n);
    dev.copy(h.data(), p, sizeof(T) * n);
    return h;
}
template <class T, class D>
std::vector<float> download(const D& dev, const Tensor<T>& t) {
    std::vector<float> h(static_cast<std::size_t>(t.numel()));
    dev.copy(h.data(), t.data(), sizeof(float) * h.size());
    return h;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0;
}

bool is_matrix(const std::string& name) {
    return name == "wte.weight" || name == "lm_head.weight" || name.ends_with("c_attn.weight") ||
           name.ends_with("c_proj.weight") || name.ends_with("c_fc.weight");
}

/// Relative L2 distance of `a` to `ref`, bounded absolutely and by `share` of `ref`'s distance to
/// the fp32 result `fp32` (a bf16 path that rounded nothing, or too little, fails the second).
void near_bf16(const std::string& what, const std::vector<float>& a, const std::vector<float>& ref,
               const std::vector<float>& fp32, double bound, double share) {
    REQUIRE(a.size() == ref.size());
    const double d = testing::relative_l2(a, ref), d32 = testing::relative_l2(fp32, ref);
    INFO(what << ": relative L2 to the emulation " << d << ", fp32's " << d32);
    CHECK(d < bound);
    CHECK(d < share * d32);
}

}  // namespace

TEST_CASE("bf16: round_bf16 on the GPU gives quant::fp32_to_bf16's bits (ties to even, NaN, overflow)") {
    std::vector<std::uint32_t> bits{0x00000000u,
                                    0x80000000u,
                                    0x3f800000u,
                                    0x3f808000u /* tie, even: down */,
                                    0x3f818000u /* tie, odd: up */,
                                    0x3f808001u,
                                    0x3f807fffu,
                                    0x7f7fffffu /* → inf */,
                                    0x7f800000u,
                                    0xff800000u,
                                    0x7fc00000u,
                                    0x7f800001u /* signaling NaN */,
                                    0xffa12345u,
                                    0x00000001u /* subnormal */,
                                    0x807fffffu,
                                    0x7f7f7fffu};
    Rng rng(11);
    for (int i = 0; i < 20000; ++i) bits.push_back(std::uint32_t(rng.next() >> 32));
    std::vector<float> x(bits.size());
    std::memcpy(x.data(), bits.data(), sizeof(float) * x.size());
    DeviceVec<float> dx(gpu(), x);
    DeviceVec<std::uint16_t> dy(gpu(), x.size());
    device::round_bf16(gpu(), dy.ptr, dx.ptr, std::int64_t(x.size()));
    const auto y = dy.host();
    std::size_t wrong = 0, first = x.size();
    for (std::size_t i = 0; i < x.size(); ++i)
        if (y[i] != quant::fp32_to_bf16(x[i])) {
            ++wrong;
            if (first == x.size()) first = i;
        }
    INFO("first difference at " << first << " (bits " << (first < x.size() ? bits[first] : 0u) << ")");
    CHECK(wrong == 0);
}

TEST_CASE("bf16 gemm: every transpose combination equals rounded operands multiplied in fp32") {
    if (bf16_skip()) return;
    CHECK(device::compute_precision_of(gpu_bf16()) == device::precision::bf16);
    CHECK(device::compute_precision_of(gpu()) == device::precision::fp32);
    CHECK(gpu_bf16().stream() == gpu().stream());
    const int M = 37, N = 53, K = 29;
    for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb)
            for (float beta : {0.0f, 0.5f}) {
                CAPTURE(ta);
                CAPTURE(tb);
                CAPTURE(beta);
                const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
                const auto A = randn<float>(std::size_t(ta ? K : M) * lda, 1);
                const auto B = randn<float>(std::size_t(tb ? N : K) * ldb, 2);
                const auto C0 = randn<float>(std::size_t(M) * ldc, 3);
                auto C = C0, C32 = C0;
                DeviceVec<float> dA(gpu(), A), dB(gpu(), B), dC(gpu(), C0), dC32(gpu(), C0);
                device::gemm(gpu_bf16(), bool(ta), bool(tb), M, N, K, 1.5f, dA.ptr, lda, dB.ptr, ldb, beta, dC.ptr,
                             ldc);
                device::gemm(gpu(), bool(ta), bool(tb), M, N, K, 1.5f, dA.ptr, lda, dB.ptr, ldb, beta, dC32.ptr, ldc);
                testing::gemm(Emu(), bool(ta), bool(tb), M, N, K, 1.5f, A.data(), lda, B.data(), ldb, beta, C.data(),
                              ldc);
                device::gemm(cpu(), bool(ta), bool(tb), M, N, K, 1.5f, A.data(), lda, B.data(), ldb, beta, C32.data(),
                             ldc);
                const auto g = dC.host();
                // sums of exact products: the order of the fp32 sums alone (K·2^-24 of Σ|a b|)
                close("bf16 gemm", g, C, 1e-5, 1e-5);
                // and not the fp32 product (2^-9 relative per operand)
                CHECK(testing::relative_l2(g, C32) > 1e-4);
                close("fp32 gemm beside it", dC32.host(), C32, after_gemm, after_gemm);
            }
}

TEST_CASE("bf16 gemm_bf16_weight: a stored bf16 weight gives the bf16 gemm of the matrix it was rounded from") {
    if (bf16_skip()) return;
    const int M = 45, N = 38, K = 70;
    for (int tb = 0; tb < 2; ++tb)
        for (int ta = 0; ta < 2; ++ta) {
            CAPTURE(ta);
            CAPTURE(tb);
            const int lda = ta ? M : K, ldw = tb ? K : N, w_rows = tb ? N : K;
            const auto A = randn<float>(std::size_t(ta ? K : M) * lda, 4);
            const auto W = randn<float>(std::size_t(w_rows) * ldw, 5, 0.05);
            std::vector<std::uint16_t> W16(W.size());
            for (std::size_t i = 0; i < W.size(); ++i) W16[i] = quant::fp32_to_bf16(W[i]);
            const auto C0 = randn<float>(std::size_t(M) * N, 6);
            DeviceVec<float> dA(gpu(), A), dW(gpu(), W), dC(gpu(), C0), dR(gpu(), C0);
            DeviceVec<std::uint16_t> dW16(gpu(), W16);
            device::gemm_bf16_weight(gpu_bf16(), bool(ta), bool(tb), M, N, K, 0.75f, dA.ptr, lda, dW16.ptr, ldw, 1.0f,
                                     dC.ptr, N);
            device::gemm(gpu_bf16(), bool(ta), bool(tb), M, N, K, 0.75f, dA.ptr, lda, dW.ptr, ldw, 1.0f, dR.ptr, N);
            // the same cuBLAS call on the same bf16 operands (packed, 16-byte aligned)
            CHECK(same_bits(dC.host(), dR.host()));
            auto C = C0;
            testing::gemm_bf16_weight(Emu(), bool(ta), bool(tb), M, N, K, 0.75f, A.data(), lda, W16.data(), ldw, 1.0f,
                                      C.data(), N);
            close("gemm_bf16_weight", dC.host(), C, 1e-5, 1e-5);
        }
}

TEST_CASE("bf16: gemm_strided_batched stays fp32 under precision::bf16") {
    if (bf16_skip()) return;
    const int Tn = 19, hs = 16, H = 3;
    const auto q = randn<float>(std::size_t(H) * Tn * hs, 7), k = randn<float>(std::size_t(H) * Tn * hs, 8);
    DeviceVec<float> dq(gpu(), q), dk(gpu(), k), a(gpu(), std::size_t(H) * Tn * Tn), b(gpu(), std::size_t(H) * Tn * Tn);
    for (auto* d : {&gpu_bf16(), &gpu()})
        device::gemm_strided_batched(*d, false, true, Tn, Tn, hs, 1.0f, dq.ptr, hs, std::int64_t(Tn) * hs, dk.ptr, hs,
                                     std::int64_t(Tn) * hs, 0.0f, d == &gpu() ? b.ptr : a.ptr, Tn,
                                     std::int64_t(Tn) * Tn, H);
    CHECK(same_bits(a.host(), b.host()));
}

namespace {

// One training step of `cfg` on the GPU in bf16, the emulation and the GPU in fp32: storage, the
// bf16 copies' bits, the memory plan, logits, loss, gradients, then AdamW and the refreshed copies.
void bf16_training_step(const student::TransformerConfig& cfg) {
    const int B = 3, Tn = 16;
    student::Transformer<float, Cuda> g(cfg, B, gpu_bf16()), f(cfg, B, gpu());
    student::Transformer<float, Emu> h(cfg, B, Emu(2));
    CHECK(student::stores_bf16_weights<float>(cfg, gpu_bf16()));
    CHECK(!student::stores_bf16_weights<float>(cfg, gpu()));
    g.init(21);
    f.init(21);
    h.init(21);
    const auto& params = g.base_parameters();
    for (std::size_t k = 0; k < params.size(); ++k) {
        CAPTURE(params[k].name);
        CHECK(g.base_storage(k) == (is_matrix(params[k].name) ? student::storage::fp32_bf16 : student::storage::fp32));
        CHECK(g.base_storage(k) == h.base_storage(k));
        if (const std::uint16_t* g16 = g.bf16_value(k)) {
            const std::size_t n = std::size_t(params[k].value.numel());
            const auto bits = download(gpu(), g16, n);
            CHECK(std::memcmp(bits.data(), h.bf16_value(k), 2 * n) == 0);
        }
    }
    CHECK(!g.bf16_only_weights());
    const auto plan = student::transformer_memory<float, Cuda>(cfg, B, student::activations::training, true);
    CHECK(plan.total() == g.arena_bytes());
    CHECK(plan.total() == h.arena_bytes());
    std::vector<std::int32_t> tokens(std::size_t(B) * Tn), targets(tokens.size());
    for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = std::int32_t((i * 37 + i / 7) % cfg.vocab_size);
    for (std::size_t i = 0; i < targets.size(); ++i) targets[i] = i % 9 == 0 ? -1 : tokens[(i + 1) % tokens.size()];
    optim::AdamW<float, Cuda> og(g.parameters(), {.weight_decay = 0.1}, gpu_bf16());
    for (int step = 0; step < 2; ++step) {
        CAPTURE(step);
        g.forward(tokens.data(), B, Tn);
        f.forward(tokens.data(), B, Tn);
        h.forward(tokens.data(), B, Tn);
        near_bf16("logits", download(gpu(), g.logits()), download(cpu(), h.logits()), download(gpu(), f.logits()), 1e-3,
                  0.25);
        const float lg = g.cross_entropy(targets.data()), lh = h.cross_entropy(targets.data());
        f.cross_entropy(targets.data());
        CHECK(double(lg) == doctest::Approx(double(lh)).epsilon(5e-4));
        g.zero_grad();
        f.zero_grad();
        h.zero_grad();
        g.backward();
        f.backward();
        h.backward();
        const std::size_t n = g.arena_size();
        near_bf16("gradients", download(gpu(), g.gradient_data(), n),
                  std::vector<float>(h.gradient_data(), h.gradient_data() + n), download(gpu(), f.gradient_data(), n),
                  3e-3, 0.5);
        og.step(1e-2);
        g.forward(tokens.data(), B, Tn);  // refreshes the bf16 copies from the updated masters
        // the bf16 copies follow the updated fp32 masters, rounded on the GPU as on the host
        for (std::size_t k = 0; k < params.size(); ++k)
            if (const std::uint16_t* g16 = g.bf16_value(k)) {
                CAPTURE(params[k].name);
                const std::size_t m = std::size_t(params[k].value.numel());
                const auto master = download(gpu(), params[k].value.data(), m);
                const auto bits = download(gpu(), g16, m);
                std::size_t wrong = 0;
                for (std::size_t i = 0; i < m; ++i) wrong += bits[i] != quant::fp32_to_bf16(master[i]);
                CHECK(wrong == 0);
            }
        // the emulation takes the GPU's updated weights, so the next step starts from the same point
        for (std::size_t k = 0; k < params.size(); ++k) {
            std::vector<float> v(std::size_t(params[k].value.numel()));
            g.read_base(k, v.data());
            h.write_base(k, v.data());
            f.write_base(k, v.data());
        }
    }
}

}  // namespace

TEST_CASE("bf16 training step: fp32 masters + bf16 copies on the GPU give the host's bf16 numbers") {
    if (bf16_skip()) return;
    bf16_training_step(student_config());
}

TEST_CASE("bf16 training step with Llama-style blocks (rmsnorm, rope, swiglu, GQA, untied head)") {
    if (bf16_skip()) return;
    bf16_training_step(llama_style(student_config()));
}

TEST_CASE("bf16 frozen storage: an inference model and a frozen teacher keep bf16 alone; loaders and decode") {
    if (bf16_skip()) return;
    for (const auto& base : {student_config(), llama_style(student_config())}) {
        CAPTURE(base.mlp);
        for (bool inference : {true, false}) {
            CAPTURE(inference);
            auto cfg = base;
            cfg.frozen = !inference;
            const auto mode = inference ? student::activations::inference : student::activations::training;
            const int B = 2, Tn = 12;
            student::Transformer<float, Cuda> g(cfg, B, gpu_bf16(), mode), f(cfg, B, gpu(), mode);
            student::Transformer<float, Emu> h(cfg, B, Emu(2), mode);
            g.init(31);
            f.init(31);
            h.init(31);
            CHECK(g.bf16_only_weights());
            CHECK(student::transformer_memory<float, Cuda>(cfg, B, mode, true).total() == g.arena_bytes());
            const auto& params = g.base_parameters();
            for (std::size_t k = 0; k < params.size(); ++k) {
                CAPTURE(params[k].name);
                CHECK(g.base_storage(k) ==
                      (is_matrix(params[k].name) ? student::storage::bf16 : student::storage::fp32));
                // read_base widens exactly; write_base rounds as the host does
                std::vector<float> vg(std::size_t(params[k].value.numel())), vh(vg.size()), vf(vg.size());
                g.read_base(k, vg.data());
                h.read_base(k, vh.data());
                f.read_base(k, vf.data());
                CHECK(same_bits(vg, vh));
                for (auto& x : vf) x *= 1.01f;  // new values, written into the three models
                g.write_base(k, vf.data());
                h.write_base(k, vf.data());
                f.write_base(k, vf.data());
                g.read_base(k, vg.data());
                h.read_base(k, vh.data());
                CHECK(same_bits(vg, vh));
            }
            std::vector<std::int32_t> tokens(std::size_t(B) * Tn);
            for (std::size_t i = 0; i < tokens.size(); ++i)
                tokens[i] = std::int32_t((i * 53 + 5) % std::size_t(cfg.vocab_size));
            g.forward(tokens.data(), B, Tn);
            f.forward(tokens.data(), B, Tn);
            h.forward(tokens.data(), B, Tn);
            near_bf16("logits", download(gpu(), g.logits()), download(cpu(), h.logits()), download(gpu(), f.logits()),
                      1e-3, 0.25);
            if (!inference) continue;
            // generation: the token embedding's bf16 rows widened on the GPU in prefill and decode
            std::vector<int> lengths{7, 12};
            auto kg = g.make_cache(B);
            auto kf = f.make_cache(B);
            auto kh = h.make_cache(B);
            g.prefill(kg, tokens.data(), lengths.data(), B, Tn);
            f.prefill(kf, tokens.data(), lengths.data(), B, Tn);
            h.prefill(kh, tokens.data(), lengths.data(), B, Tn);
            std::vector<std::int32_t> next(B);
            for (int step = 0; step < 3; ++step) {
                CAPTURE(step);
                near_bf16("next logits", download(gpu(), g.next_logits()), download(cpu(), h.next_logits()),
                          download(gpu(), f.next_logits()), 1e-3, 0.25);
                const auto logits = download(cpu(), h.next_logits());  // the host's argmax, fed to all three
                for (int b = 0; b < B; ++b) {
                    const auto row = logits.begin() + std::ptrdiff_t(b) * cfg.vocab_size;
                    next[std::size_t(b)] = std::int32_t(std::max_element(row, row + cfg.vocab_size) - row);
                }
                g.decode(kg, next.data(), B);
                f.decode(kf, next.data(), B);
                h.decode(kh, next.data(), B);
            }
        }
    }
}

TEST_CASE("bf16 LoRA: a base in bf16 alone on the GPU; adapter gradients and a step as the host's") {
    if (bf16_skip()) return;
    for (auto cfg : {student_config(), llama_style(student_config())}) {
        CAPTURE(cfg.mlp);
        cfg.lora.rank = 4;
        cfg.lora.alpha = 8;
        cfg.lora.targets = cfg.swiglu() ? std::vector<std::string>{"q", "v", "o", "gate", "down", "head"}
                                        : std::vector<std::string>{"qkv", "o", "up", "down"};
        const int B = 2, Tn = 16;
        student::Transformer<float, Cuda> g(cfg, B, gpu_bf16()), f(cfg, B, gpu());
        student::Transformer<float, Emu> h(cfg, B, Emu(2));
        g.init(41);
        f.init(41);
        h.init(41);
        CHECK(g.bf16_only_weights());
        CHECK(g.gradient_data() == nullptr);
        const auto plan = student::transformer_memory<float, Cuda>(cfg, B, student::activations::training, true);
        CHECK(plan.total() == g.arena_bytes());
        CHECK(plan.activations == g.activation_bytes());
        // adapters with non-zero B, so that every adapter product matters
        auto perturb = [&](auto& m, const auto& dev) {
            std::uint64_t seed = 50;
            for (const auto& p : m.parameters()) {
                const auto v = randn<float>(std::size_t(p.value.numel()), seed++, 0.05);
                dev.copy(p.value.data(), v.data(), sizeof(float) * v.size());
            }
        };
        perturb(g, gpu());
        perturb(f, gpu());
        perturb(h, cpu());
        optim::AdamW<float, Cuda> og(g.parameters(), {}, gpu_bf16());
        std::vector<std::int32_t> tokens(std::size_t(B) * Tn), targets(tokens.size());
        for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = std::int32_t((i * 29 + 3) % cfg.vocab_size);
        for (std::size_t i = 0; i < targets.size(); ++i) targets[i] = tokens[(i + 1) % tokens.size()];
        for (int step = 0; step < 2; ++step) {
            CAPTURE(step);
            g.forward(tokens.data(), B, Tn);
            f.forward(tokens.data(), B, Tn);
            h.forward(tokens.data(), B, Tn);
            near_bf16("logits", download(gpu(), g.logits()), download(cpu(), h.logits()), download(gpu(), f.logits()),
                      1e-3, 0.25);
            g.cross_entropy(targets.data());
            f.cross_entropy(targets.data());
            h.cross_entropy(targets.data());
            g.zero_grad();
            f.zero_grad();
            h.zero_grad();
            g.backward();
            f.backward();
            h.backward();
            std::vector<float> gg, gf, gh;
            for (std::size_t i = 0; i < g.parameters().size(); ++i) {
                for (auto x : download(gpu(), g.parameters()[i].grad)) gg.push_back(x);
                for (auto x : download(gpu(), f.parameters()[i].grad)) gf.push_back(x);
                for (auto x : download(cpu(), h.parameters()[i].grad)) gh.push_back(x);
            }
            near_bf16("adapter gradients", gg, gh, gf, 3e-3, 0.5);
            og.step(1e-2);
            // the GPU's updated adapters on every model (Adam's first steps move by about lr·sign(g),
            // noise where |g| is at the level of the rounding)
            for (std::size_t i = 0; i < g.parameters().size(); ++i) {
                const auto v = download(gpu(), g.parameters()[i].value);
                cpu().copy(h.parameters()[i].value.data(), v.data(), sizeof(float) * v.size());
                gpu().copy(f.parameters()[i].value.data(), v.data(), sizeof(float) * v.size());
            }
        }
        // the merged export widens the bf16 base exactly: the host's merge of the same adapters
        const auto mg = g.merged_parameters(), mh = h.merged_parameters();
        CHECK(testing::relative_l2(mg, mh) < 1e-6);
    }
}

TEST_CASE("bf16 refusal: a GPU that cannot is refused naming device.precision, never aborted") {
    const std::string why = Cuda::bf16_unsupported_reason(gpu().ordinal());
    CHECK(why.empty() == (gpu().properties().major >= 8));
    if (!why.empty()) {
        bool refused = false;
        try {
            Cuda d(device::precision::bf16);
        } catch (const config_error& e) {
            refused = e.field() == "device.precision" && std::string(e.what()).find("8.0") != std::string::npos;
        }
        CHECK(refused);
    }
    const int n = Cuda::visible_devices();
    CHECK(Cuda::bf16_unsupported_reason(n).find("visible") != std::string::npos);
    bool refused = false;
    try {
        Cuda d(n, device::precision::bf16);
    } catch (const config_error& e) {
        refused = e.field() == "device.ordinal";
    }
    CHECK(refused);
}

TEST_CASE("errors: CUDA failures become distill::cuda_error naming the call") {
    bool thrown = false;
    try {
        (void)gpu().allocate(std::size_t(1) << 62);  // no GPU has 4 EiB
    } catch (const cuda_error& e) {
        thrown = true;
        CHECK(std::string(e.what()).find("cudaMalloc") != std::string::npos);
        CHECK(std::string(e.what()).find("context.cuh") != std::string::npos);
    }
    CHECK(thrown);
}

int main(int argc, char** argv) {
    const int n = Cuda::visible_devices();
    if (n == 0) {
        std::printf("distill CUDA parity suite: SKIPPED (no CUDA device visible)\n");
        return 77;  // ctest SKIP_RETURN_CODE
    }
    std::printf("distill CUDA parity suite on %s\n", gpu().properties().name);
    doctest::Context ctx;
    ctx.applyCommandLine(argc, argv);
    return ctx.run();
}
