#pragma once
/// @file cpu_losses.hpp
/// The loss kernels of `device::Cpu`: the same functions as `reference_losses.hpp`, fused and
/// streaming. Each row is read from memory once: the first pass keeps an online maximum and
/// log-sum-exp per 1024-element chunk (the chunk is swept twice while it sits in L1: max, then
/// exp-sum rescaled to the running maximum); the gradient pass re-reads the row, which is still in
/// L2 (a 32 000-entry fp32 row pair is 256 KB), and writes the gradient. No (tokens × vocab)
/// probability tensor exists at any point. Rows are spread over OpenMP threads with a static
/// schedule and each row is reduced in a fixed order, so results are bit-identical run to run for
/// a fixed thread count. Vectorized through Eigen array expressions (exp, log1p, expm1).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "distill/device/cpu.hpp"
#include "distill/device/reference_losses.hpp"

namespace distill::device {

namespace cpu_loss_detail {

using cpu_detail::Array;
using cpu_detail::ConstArray;

// Elements per chunk of the online pass: 4 KB of fp32, so a chunk and its exponentials stay in L1.
inline constexpr int chunk = 1024;

template <class T>
inline constexpr T neg_inf = -std::numeric_limits<T>::infinity();

// Running (max, Σ exp(x - max)) of a stream of scaled logits, merged chunk by chunk.
template <class T>
struct online_lse {
    T max = neg_inf<T>;
    T sum = 0;
    const T* max_chunk = nullptr;  // the chunk that holds the maximum
    int max_len = 0;

    // Adds x[0..len) · scale (scale > 0). A chunk that is all -inf adds nothing.
    void add(const T* x, int len, T scale) {
        const ConstArray<T> a(x, len);
        const T cmax = a.maxCoeff() * scale;
        if (cmax == neg_inf<T>) return;
        if (cmax > max) {
            sum *= std::exp(max - cmax);
            max = cmax;
            max_chunk = x;
            max_len = len;
        }
        sum += (a * scale - max).exp().sum();
    }
    // The offset of the (first) maximum from `row`, given the scale used in `add`.
    std::int64_t argmax(const T* row, T scale) const {
        for (int j = 0; j < max_len; ++j)
            if (max_chunk[j] * scale == max) return (max_chunk - row) + j;
        return 0;
    }
    // add(), also writing exp(x·scale - max) (relative to the running max after this chunk) to e.
    void add_store(const T* x, int len, T scale, T* e) {
        const ConstArray<T> a(x, len);
        Array<T> out(e, len);
        const T cmax = a.maxCoeff() * scale;
        if (cmax == neg_inf<T>) {
            out.setZero();
            return;
        }
        if (cmax > max) {
            sum *= std::exp(max - cmax);
            max = cmax;
            max_chunk = x;
            max_len = len;
        }
        out = (a * scale - max).exp();
        sum += out.sum();
    }
    // Adds an explicit array (already scaled).
    void add_scaled(const T* x, int len) {
        const ConstArray<T> a(x, len);
        const T cmax = a.maxCoeff();
        if (cmax == neg_inf<T>) return;
        if (cmax > max) {
            sum *= std::exp(max - cmax);
            max = cmax;
        }
        sum += (a - max).exp().sum();
    }
    T value() const { return max == neg_inf<T> ? max : max + std::log(sum); }
};

// A per-thread buffer of at least n elements for one row's intermediate values. It grows on the
// first call that needs more (once per thread and size, not per call) and lives as long as the
// thread — OpenMP keeps its team, so steady-state training allocates nothing.
template <class T>
T* row_scratch(std::size_t n) {
    thread_local std::vector<T> buffer;
    if (buffer.size() < n) buffer.resize(n);
    return buffer.data();
}

// The first pass over a student/teacher row pair: both log-sum-exps in one sweep of memory, and
// the position of the student's largest logit when `argmax` is given.
template <class T>
void lse_pair(const T* s, const T* t, int V, T inv_tau, T& lse_s, T& lse_t, std::int64_t* argmax = nullptr) {
    online_lse<T> a, b;
    for (int c = 0; c < V; c += chunk) {
        const int len = std::min(chunk, V - c);
        a.add(s + c, len, inv_tau);
        b.add(t + c, len, inv_tau);
    }
    lse_s = a.value();
    lse_t = b.value();
    if (argmax) *argmax = a.argmax(s, inv_tau);
}

template <class T, class E>
void store(T* d, int len, const E& g, bool accumulate) {
    Array<T> out(d, len);
    if (accumulate)
        out += g;
    else
        out = g;
}

// p · x where p > 0 and x is not -inf or NaN, else 0 — the terms p log(p/q) of a divergence,
// where 0 · log 0 = 0: x is -inf or NaN (-inf - -inf) exactly where the probability's logit was
// -inf, and then p is 0 (or, in double, the 5e-309 Eigen's exp returns for -inf). A vectorized
// select (Eigen's `select` on a comparison runs one element at a time).
struct product_where_positive {
    template <class S>
    S operator()(const S& p, const S& x) const {
        return p > S(0) && x > -std::numeric_limits<S>::infinity() ? p * x : S(0);
    }
    template <class Packet>
    Packet packetOp(const Packet& p, const Packet& x) const {
        using namespace Eigen::internal;
        using S = typename unpacket_traits<Packet>::type;
        const Packet ninf = pset1<Packet>(-std::numeric_limits<S>::infinity());
        return pand(pand(pcmp_lt(pzero(p), p), pcmp_lt(ninf, x)), pmul(p, x));
    }
};

// out[i] = r[i] < bound ? a[i] : b[i] (NaN r picks b), vectorized: the two branches of a
// piecewise formula are evaluated whole, then blended.
template <class T>
void blend_if_less(T* out, const T* r, T bound, const T* a, const T* b, int len) {
    using namespace Eigen::internal;
    using Packet = typename packet_traits<T>::type;
    constexpr int width = packet_traits<T>::size;
    const Packet pb = pset1<Packet>(bound);
    int i = 0;
    for (; i + width <= len; i += width)
        pstoreu(out + i, pselect(pcmp_lt(ploadu<Packet>(r + i), pb), ploadu<Packet>(a + i), ploadu<Packet>(b + i)));
    for (; i < len; ++i) out[i] = r[i] < bound ? a[i] : b[i];
}

// Below this many elements a kernel runs on one thread: waking a team costs more than the work.
inline constexpr std::int64_t parallel_threshold = 1 << 15;

// Runs row(n) for every counted row on `threads` threads (static schedule); rows that do not
// count get loss 0 and, unless accumulating, a zero gradient row of `width` elements.
template <class T, class F>
void for_rows(int threads, T* d, bool accumulate, T* losses, const std::uint8_t* mask, std::int64_t N,
              std::int64_t width, F&& row) {
    distill::detail::parallel_for(
        threads, N,
        [&](std::int64_t n) {
            if (mask && !mask[n]) {
                losses[n] = 0;
                if (!accumulate) std::fill(d + n * width, d + (n + 1) * width, T(0));
                return;
            }
            losses[n] = row(n);
        },
        N * width >= parallel_threshold);
}

}  // namespace cpu_loss_detail

}  // namespace distill::device

template <>
struct Eigen::internal::functor_traits<distill::device::cpu_loss_detail::product_where_positive> {
    enum { Cost = 3, PacketAccess = true };
};

namespace distill::device {

namespace cpu_loss_detail {

// Whether T's Eigen packet is the 16-float AVX-512 register (the intrinsics below apply).
template <class T>
inline constexpr bool is_avx512_float = std::is_same_v<T, float>&& Eigen::internal::packet_traits<float>::size == 16;

// exp of a packet. With AVX-512 and fp32, a leaner version of Eigen's: Cody–Waite reduction
// x = n ln2 + r, |r| <= ln2/2, e^r by its degree-6 Taylor polynomial (relative error 1.2e-7,
// about one ulp), and 2^n applied by `vscalefps`, which saturates to inf/0 by itself — 12
// instructions against Eigen's ~20, and the kernels' arithmetic is mostly these exponentials.
// Inputs below -104 give 0 (e^-104 is below the smallest subnormal float).
template <class T, class P>
inline P vexp(const P& x) {
#if defined(__AVX512F__)
    if constexpr (is_avx512_float<T>) {
        const __m512 xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.7f));
        const __m512 n =
            _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT);
        __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
        r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
        __m512 p = _mm512_set1_ps(1.0f / 720.0f);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
        return _mm512_scalef_ps(p, n);
    } else
#endif
        return Eigen::internal::pexp(x);
}

// Stores a packet of the gradient. `Stream` (first writer, 64-byte aligned address) uses a
// non-temporal store: the (tokens × vocab) gradient does not fit any cache and is read back by
// the next GEMM from memory anyway, so skipping the read-for-ownership saves a quarter of the
// kernel's memory traffic. The caller issues `stream_fence()` before the row is handed on.
template <bool Stream, class T, class P>
inline void store_grad(T* to, const P& x) {
#if defined(__AVX512F__)
    if constexpr (Stream && is_avx512_float<T>) {
        _mm512_stream_ps(to, x);
        return;
    }
#endif
    Eigen::internal::pstoreu(to, x);
}
inline void stream_fence() {
#if defined(__AVX512F__)
    _mm_sfence();
#endif
}

// One row of the forward KL, written with Eigen's packet primitives so each sweep does all its
// work in one loop: the streaming pass keeps both online log-sum-exps chunk by chunk and stores
// the exponentials exp(z - running max) in `scratch` (2V + 2·chunks elements, L2-resident); the
// second pass turns them into p and q with one multiply (no exp), adds p (log p - log q) from the
// logits (re-read from cache) and writes the gradient g (q - p).
template <bool Accumulate, class T>
T kl_row(T* d, const T* s, const T* t, int V, T inv_tau, T g, T* scratch) {
    using namespace Eigen::internal;
    using P = typename packet_traits<T>::type;
    constexpr int W = packet_traits<T>::size;
    const int chunks = (V + chunk - 1) / chunk;
    T* e_s = scratch;
    T* e_t = e_s + V;
    T* m_s = e_t + V;  // the running maximum each chunk's exponentials are relative to
    T* m_t = m_s + chunks;
    const P sc = pset1<P>(inv_tau);
    T max_s = neg_inf<T>, max_t = neg_inf<T>, sum_s = 0, sum_t = 0;
    for (int c = 0, k = 0; c < V; c += chunk, ++k) {
        const int len = std::min(chunk, V - c), vl = len / W * W;
        // chunk maxima (inv_tau > 0, so max(x)·inv_tau = max(x·inv_tau))
        P vs = pset1<P>(neg_inf<T>), vt = vs;
        for (int i = 0; i < vl; i += W) {
            vs = pmax(vs, ploadu<P>(s + c + i));
            vt = pmax(vt, ploadu<P>(t + c + i));
        }
        T cs = predux_max(vs), ct = predux_max(vt);
        for (int i = vl; i < len; ++i) {
            cs = std::max(cs, s[c + i]);
            ct = std::max(ct, t[c + i]);
        }
        cs *= inv_tau;
        ct *= inv_tau;
        if (cs > max_s) {
            sum_s *= std::exp(max_s - cs);
            max_s = cs;
        }
        if (ct > max_t) {
            sum_t *= std::exp(max_t - ct);
            max_t = ct;
        }
        m_s[k] = max_s;
        m_t[k] = max_t;
        if (max_s == neg_inf<T> || max_t == neg_inf<T>) {  // nothing finite yet: these exponentials are 0
            std::fill(e_s + c, e_s + c + len, T(0));
            std::fill(e_t + c, e_t + c + len, T(0));
            if (max_s == neg_inf<T>) m_s[k] = T(0);
            if (max_t == neg_inf<T>) m_t[k] = T(0);
            if (max_s > neg_inf<T>)
                for (int i = 0; i < len; ++i) sum_s += (e_s[c + i] = std::exp(s[c + i] * inv_tau - max_s));
            if (max_t > neg_inf<T>)
                for (int i = 0; i < len; ++i) sum_t += (e_t[c + i] = std::exp(t[c + i] * inv_tau - max_t));
            continue;
        }
        // exponentials relative to the running maxima, stored and summed in the same sweep
        const P ms = pset1<P>(max_s), mt = pset1<P>(max_t);
        P as = pzero(ms), at = pzero(mt);
        for (int i = 0; i < vl; i += W) {
            const P es = vexp<T>(psub(pmul(ploadu<P>(s + c + i), sc), ms));
            const P et = vexp<T>(psub(pmul(ploadu<P>(t + c + i), sc), mt));
            pstoreu(e_s + c + i, es);
            pstoreu(e_t + c + i, et);
            as = padd(as, es);
            at = padd(at, et);
        }
        T rs = predux(as), rt = predux(at);
        for (int i = vl; i < len; ++i) {
            rs += (e_s[c + i] = std::exp(s[c + i] * inv_tau - max_s));
            rt += (e_t[c + i] = std::exp(t[c + i] * inv_tau - max_t));
        }
        sum_s += rs;
        sum_t += rt;
    }
    const T lse_s = max_s + std::log(sum_s), lse_t = max_t + std::log(sum_t), delta = lse_t - lse_s;
    const product_where_positive plogr;
    const P pd = pset1<P>(delta), pg = pset1<P>(g);
    P acc = pset1<P>(T(0));
    T tail = 0;
    auto second_pass = [&]<bool Stream>() {
        for (int c = 0, k = 0; c < V; c += chunk, ++k) {
            const int len = std::min(chunk, V - c), vl = len / W * W;
            // q = exp(z_s - m_k) · exp(m_k - lse_s), p likewise
            const T fs = std::exp(m_s[k] - lse_s), ft = std::exp(m_t[k] - lse_t);
            const P pfs = pset1<P>(fs), pft = pset1<P>(ft);
            for (int i = 0; i < vl; i += W) {
                const P q = pmul(ploadu<P>(e_s + c + i), pfs);
                const P p = pmul(ploadu<P>(e_t + c + i), pft);
                // log p - log q = (t - s)/τ - (lse_t - lse_s), exact where p underflows
                const P x = psub(pmul(psub(ploadu<P>(t + c + i), ploadu<P>(s + c + i)), sc), pd);
                acc = padd(acc, plogr.packetOp(p, x));
                P grad = pmul(pg, psub(q, p));
                if constexpr (Accumulate) grad = padd(grad, ploadu<P>(d + c + i));
                store_grad<Stream>(d + c + i, grad);
            }
            for (int i = vl; i < len; ++i) {
                const T q = e_s[c + i] * fs, p = e_t[c + i] * ft;
                tail += plogr(p, (t[c + i] - s[c + i]) * inv_tau - delta);
                d[c + i] = (Accumulate ? d[c + i] : T(0)) + g * (q - p);
            }
        }
    };
    // chunks are multiples of 64 bytes, so an aligned row start aligns every full packet
    if (!Accumulate && reinterpret_cast<std::uintptr_t>(d) % 64 == 0) {
        second_pass.template operator()<true>();
        stream_fence();
    } else {
        second_pass.template operator()<false>();
    }
    return predux(acc) + tail;
}

}  // namespace cpu_loss_detail

/// Forward KL per row with its gradient (see the Reference kernel for the formula). The streaming
/// pass reads both rows from memory once, keeps the online log-sum-exps and leaves the
/// exponentials exp(z - running max) of every chunk in a per-thread row buffer (L2-resident; grown
/// once, never per call); the second pass turns them into p and q with one multiply per element
/// (no exp), re-reading the logits from cache only for the value Σ p (log p - log q), and writes
/// the gradient. Two exponentials per element in all.
template <class T>
void kl_forward_backward(const Cpu& dev, T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                         const std::uint8_t* mask, std::int64_t N, int V, T inv_tau, T grad_scale) {
    using namespace cpu_loss_detail;
    const T g = grad_scale * inv_tau;
    const int chunks = (V + chunk - 1) / chunk;
    for_rows(dev.threads(), d, accumulate, losses, mask, N, V, [&](std::int64_t n) {
        T* scratch = row_scratch<T>(2 * std::size_t(V) + 2 * std::size_t(chunks));
        return accumulate ? kl_row<true>(d + n * V, student + n * V, teacher + n * V, V, inv_tau, g, scratch)
                          : kl_row<false>(d + n * V, student + n * V, teacher + n * V, V, inv_tau, g, scratch);
    });
}

/// Reverse KL per row with its gradient (see the Reference kernel): log-sum-exps, then the value,
/// then the gradient, which needs the value (the last two passes read the row from cache). The
/// gradient is q_j (e_j − Σ q_i e_i) with e the log-ratio shifted to 0 at the student's argmax m:
/// where q_m ≈ 1 the unshifted form subtracts two nearly equal numbers of the size of the KL.
template <class T>
void reverse_kl_forward_backward(const Cpu& dev, T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                                 const std::uint8_t* mask, std::int64_t N, int V, T inv_tau, T grad_scale) {
    using namespace cpu_loss_detail;
    const T g = grad_scale * inv_tau;
    for_rows(dev.threads(), d, accumulate, losses, mask, N, V, [&](std::int64_t n) {
        const T* s = student + n * V;
        const T* t = teacher + n * V;
        // the student's exponentials (relative to each chunk's running max) stay in a per-thread
        // buffer, so the value and gradient passes need no exp
        const int chunks = (V + chunk - 1) / chunk;
        T* e_s = row_scratch<T>(std::size_t(V) + std::size_t(chunks));
        T* m_s = e_s + V;
        online_lse<T> ls, lt;
        for (int c = 0, k = 0; c < V; c += chunk, ++k) {
            const int len = std::min(chunk, V - c);
            ls.add_store(s + c, len, inv_tau, e_s + c);
            lt.add(t + c, len, inv_tau);
            m_s[k] = ls.max;
        }
        const T lse_s = ls.value(), lse_t = lt.value();
        const std::int64_t m = ls.argmax(s, inv_tau);
        const T shift = (s[m] - t[m]) * inv_tau;  // e_i = (s_i - t_i)/τ - shift: log(q_i/p_i) - log(q_m/p_m)
        T kl = 0, ke = 0;
        for (int c = 0, k = 0; c < V; c += chunk, ++k) {
            const int len = std::min(chunk, V - c);
            const ConstArray<T> sa(s + c, len), ta(t + c, len);
            const auto q = ConstArray<T>(e_s + c, len) * std::exp(m_s[k] - lse_s);
            kl += q.binaryExpr((sa - ta) * inv_tau + (lse_t - lse_s), product_where_positive{}).sum();
            ke += q.binaryExpr((sa - ta) * inv_tau - shift, product_where_positive{}).sum();
        }
        for (int c = 0, k = 0; c < V; c += chunk, ++k) {
            const int len = std::min(chunk, V - c);
            const ConstArray<T> sa(s + c, len), ta(t + c, len);
            const auto q = ConstArray<T>(e_s + c, len) * std::exp(m_s[k] - lse_s);
            store(d + n * V + c, len, g * q.binaryExpr(((sa - ta) * inv_tau - shift) - ke, product_where_positive{}),
                  accumulate);
        }
        return kl;
    });
}

/// Generalized JSD per row with its gradient (see the Reference kernel for the formula and its
/// normalization); β = 0 and β = 1 are exactly the forward and reverse KL kernels.
template <class T>
void jsd_forward_backward(const Cpu& dev, T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                          const std::uint8_t* mask, std::int64_t N, int V, T beta, T inv_tau, T grad_scale) {
    using namespace cpu_loss_detail;
    if (beta <= T(0))
        return kl_forward_backward(dev, d, accumulate, losses, student, teacher, mask, N, V, inv_tau, grad_scale);
    if (beta >= T(1))
        return reverse_kl_forward_backward(dev, d, accumulate, losses, student, teacher, mask, N, V, inv_tau,
                                           grad_scale);
    const T g = grad_scale * inv_tau / beta;
    const T log_beta = std::log(beta), log_1m_beta = std::log1p(-beta);
    for_rows(dev.threads(), d, accumulate, losses, mask, N, V, [&](std::int64_t n) {
        const T* s = student + n * V;
        const T* t = teacher + n * V;
        T lse_s, lse_t;
        std::int64_t m;
        lse_pair(s, t, V, inv_tau, lse_s, lse_t, &m);
        // log(M/q) at the student's argmax: the gradient uses log(M/q) shifted to 0 there (see ReverseKL)
        const T lmq_m = math::jsd_log_m_over_q((t[m] * inv_tau - lse_t) - (s[m] * inv_tau - lse_s), beta);
        // q and log(M/q) of the whole row stay in a per-thread buffer for the gradient pass
        T* q_row = row_scratch<T>(2 * std::size_t(V));
        T* lmq_row = q_row + V;
        alignas(64) T r_buf[chunk], a_buf[chunk], b_buf[chunk];
        T kl_pm = 0, kl_qm = 0, kh = 0;
        for (int c = 0; c < V; c += chunk) {
            const int len = std::min(chunk, V - c);
            const ConstArray<T> sa(s + c, len), ta(t + c, len);
            Array<T> r(r_buf, len), a(a_buf, len), b(b_buf, len), q(q_row + c, len), lmq(lmq_row + c, len);
            r = (ta * inv_tau - lse_t) - (sa * inv_tau - lse_s);
            q = (sa * inv_tau - lse_s).exp();
            // log(M/q): the two branches of math::jsd_log_m_over_q evaluated whole, then blended
            a = (beta * r.expm1()).log1p();
            b = (r + log_beta).max(log_1m_beta) + (-((r + log_beta) - log_1m_beta).abs()).exp().log1p();
            blend_if_less(lmq_row + c, r_buf, T(1), a_buf, b_buf, len);
            // log(M/p): log1p((1-β) expm1(-r)) for -r < 1, else log-add-exp (math::jsd_log_m_over_p)
            b = (log_1m_beta - r).max(log_beta) + (-((log_1m_beta - r) - log_beta).abs()).exp().log1p();
            a = ((T(1) - beta) * (-r).expm1()).log1p();
            r = -r;
            blend_if_less(a_buf, r_buf, T(1), a_buf, b_buf, len);
            const auto p = (ta * inv_tau - lse_t).exp();
            kl_qm -= q.binaryExpr(lmq, product_where_positive{}).sum();
            kl_pm -= p.binaryExpr(a, product_where_positive{}).sum();
            kh += q.binaryExpr(lmq - lmq_m, product_where_positive{}).sum();
        }
        for (int c = 0; c < V; c += chunk) {
            const int len = std::min(chunk, V - c);
            const ConstArray<T> q(q_row + c, len), lmq(lmq_row + c, len);
            store(d + n * V + c, len, -g * q.binaryExpr((lmq - lmq_m) - kh, product_where_positive{}), accumulate);
        }
        return (beta * kl_pm + (T(1) - beta) * kl_qm) / (beta * (T(1) - beta));
    });
}

/// Sparse top-k forward KL per row with its gradient (see the Reference kernel). The first pass
/// keeps two online log-sum-exps: over the whole row, and over the row with the top-k entries set
/// to -inf (the tail, summed directly so q_rest keeps full relative precision however small it is).
template <class T>
void topk_kl_forward_backward(const Cpu& dev, T* d, bool accumulate, T* losses, const T* student,
                              const std::int32_t* ids, const T* logprobs, const std::uint8_t* mask, std::int64_t N,
                              int V, int k, T inv_tau, T grad_scale) {
    using namespace cpu_loss_detail;
    const T g = grad_scale * inv_tau;
    for_rows(dev.threads(), d, accumulate, losses, mask, N, V, [&](std::int64_t n) {
        const T* s = student + n * V;
        const std::int32_t* id = ids + n * k;
        const T* lp = logprobs + n * k;
        T* dr = d + n * V;
        alignas(64) T z_buf[chunk];
        online_lse<T> tail;
        for (int c = 0; c < V; c += chunk) {
            const int len = std::min(chunk, V - c);
            Array<T> z(z_buf, len);
            z = ConstArray<T>(s + c, len) * inv_tau;
            for (int i = 0; i < k; ++i)
                if (id[i] >= c && id[i] < c + len) z_buf[id[i] - c] = neg_inf<T>;
            tail.add_scaled(z_buf, len);
        }
        const T lse_rest = tail.value();
        T lse_k = neg_inf<T>, lse_p = neg_inf<T>;
        for (int i = 0; i < k; ++i)
            if (id[i] >= 0) {
                lse_k = math::logaddexp(lse_k, s[id[i]] * inv_tau);
                lse_p = math::logaddexp(lse_p, lp[i]);
            }
        const T lse = math::logaddexp(lse_rest, lse_k);
        const bool has_rest = lse_p < T(0) && lse_rest > neg_inf<T>;
        const T log_p_rest = has_rest ? math::log1mexp(lse_p) : neg_inf<T>;
        const T p_rest = std::exp(log_p_rest);
        T kl = 0;
        for (int i = 0; i < k; ++i)
            if (id[i] >= 0 && lp[i] > neg_inf<T>) kl += std::exp(lp[i]) * (lp[i] - (s[id[i]] * inv_tau - lse));
        if (has_rest && p_rest > 0) kl += p_rest * (log_p_rest - (lse_rest - lse));
        // the top-k entries' old values, so the tail formula can be replaced there afterwards
        constexpr int stash = 64;
        T old[stash];
        const bool stashed = accumulate && k <= stash;
        if (stashed)
            for (int i = 0; i < k; ++i) old[i] = id[i] >= 0 ? dr[id[i]] : T(0);
        for (int c = 0; c < V; c += chunk) {
            const int len = std::min(chunk, V - c);
            const ConstArray<T> sa(s + c, len);
            if (has_rest)
                store(dr + c, len, g * ((sa * inv_tau - lse).exp() - p_rest * (sa * inv_tau - lse_rest).exp()),
                      accumulate);
            else
                store(dr + c, len, g * (sa * inv_tau - lse).exp(), accumulate);
        }
        for (int i = 0; i < k; ++i) {
            if (id[i] < 0) continue;
            const T z = s[id[i]] * inv_tau;
            const T gi = g * (std::exp(z - lse) - std::exp(lp[i]));
            if (!accumulate)
                dr[id[i]] = gi;
            else if (stashed)
                dr[id[i]] = old[i] + gi;
            else  // more slots than the stash: undo the tail formula instead (p_rest e^{z-lse_rest} <= p_rest)
                dr[id[i]] += gi - g * (std::exp(z - lse) - (has_rest ? p_rest * std::exp(z - lse_rest) : T(0)));
        }
        return kl;
    });
}

/// Cross-entropy per row with its gradient (see the Reference kernel): one online pass for the
/// log-sum-exp, one for the gradient.
template <class T>
void masked_cross_entropy_forward_backward(const Cpu& dev, T* d, bool accumulate, T* losses, const T* logits,
                                           const std::int32_t* targets, const std::uint8_t* mask, std::int64_t N, int V,
                                           T grad_scale) {
    using namespace cpu_loss_detail;
    distill::detail::parallel_for(
        dev.threads(), N,
        [&](std::int64_t n) {
            const T* x = logits + n * V;
            T* dr = d + n * V;
            if ((mask && !mask[n]) || targets[n] < 0) {
                losses[n] = 0;
                if (!accumulate) std::fill(dr, dr + V, T(0));
                return;
            }
            online_lse<T> acc;
            for (int c = 0; c < V; c += chunk) acc.add(x + c, std::min(chunk, V - c), T(1));
            const T lse = acc.value();
            const T old = dr[targets[n]];
            for (int c = 0; c < V; c += chunk) {
                const int len = std::min(chunk, V - c);
                store(dr + c, len, grad_scale * (ConstArray<T>(x + c, len) - lse).exp(), accumulate);
            }
            dr[targets[n]] = (accumulate ? old : T(0)) + grad_scale * (std::exp(x[targets[n]] - lse) - T(1));
            losses[n] = lse - x[targets[n]];
        },
        N * V >= parallel_threshold);
}

/// Attention-map KL with grouped teacher heads (see the Reference kernel), parallel over query
/// positions (b,t); each handles every student head of its row, so the loss needs no reduction
/// across threads.
template <class T>
void attention_kl_forward_backward(const Cpu& dev, T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                                   const std::uint8_t* mask, int B, int Hs, int Ht, int Tn, T grad_scale) {
    using namespace cpu_loss_detail;
    const int g = Ht / Hs;
    const T tiny = std::numeric_limits<T>::min();
    const std::int64_t tt = std::int64_t(Tn) * Tn, rows = std::int64_t(B) * Tn;
    distill::detail::parallel_for(
        dev.threads(), rows,
        [&](std::int64_t bt) {
            const std::int64_t b = bt / Tn;
            const int t = static_cast<int>(bt % Tn), len = t + 1;
            const bool counts = !mask || mask[bt];
            T kl = 0;
            alignas(64) T at_buf[chunk];
            for (int h = 0; h < Hs; ++h) {
                const std::int64_t off = (b * Hs + h) * tt + std::int64_t(t) * Tn;
                T* dr = d + off;
                if (!counts) {
                    if (!accumulate) std::fill(dr, dr + Tn, T(0));
                    continue;
                }
                for (int c = 0; c < len; c += chunk) {  // keys in chunks: the group mean lives on the stack
                    const int cl = std::min(chunk, len - c);
                    Array<T> at(at_buf, cl);
                    at.setZero();
                    for (int i = 0; i < g; ++i)
                        at += ConstArray<T>(teacher + (b * Ht + h * g + i) * tt + std::int64_t(t) * Tn + c, cl);
                    at /= T(g);
                    const auto as = ConstArray<T>(student + off + c, cl).max(tiny);
                    kl += at.binaryExpr(at.log() - as.log(), product_where_positive{}).sum();
                    store(dr + c, cl, -grad_scale * at / as, accumulate);
                }
                if (!accumulate) std::fill(dr + len, dr + Tn, T(0));
            }
            losses[bt] = counts ? kl : T(0);
        },
        rows * Hs * Tn >= parallel_threshold);
}

/// Causal relation rows for one sequence (see the Reference kernel), parallel over query rows.
template <class T>
void relation_kl_forward_backward(const Cpu& dev, T* d, T* losses, const T* student, const T* teacher,
                                  const std::uint8_t* mask, int R, int Tn, T s_scale, T t_scale, T grad_scale) {
    using namespace cpu_loss_detail;
    const std::int64_t tt = std::int64_t(Tn) * Tn;
    distill::detail::parallel_for(
        dev.threads(), Tn,
        [&](std::int64_t t_) {
            const int t = static_cast<int>(t_);
            const int len = t + 1;
            T kl = 0;
            for (int r = 0; r < R; ++r) {
                const std::int64_t off = r * tt + std::int64_t(t) * Tn;
                T* dr = d + off;
                if (mask && !mask[t]) {
                    std::fill(dr, dr + Tn, T(0));
                    continue;
                }
                const ConstArray<T> sa(student + off, len), ta(teacher + off, len);
                online_lse<T> ls, lt;
                ls.add(student + off, len, s_scale);
                lt.add(teacher + off, len, t_scale);
                const T lse_s = ls.value(), lse_t = lt.value();
                const auto lp = ta * t_scale - lse_t;
                const auto lq = sa * s_scale - lse_s;
                kl += lp.exp().binaryExpr(lp - lq, product_where_positive{}).sum();
                Array<T>(dr, len) = grad_scale * s_scale * (lq.exp() - lp.exp());
                std::fill(dr + len, dr + Tn, T(0));
            }
            losses[t] = kl;
        },
        R * tt >= parallel_threshold);
}

}  // namespace distill::device
