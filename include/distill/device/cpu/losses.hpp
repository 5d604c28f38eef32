#pragma once
/// @file cpu/losses.hpp
/// The loss kernels of `device::Cpu`: the same functions as `reference/losses.hpp`, fused and
/// streaming. Each row is read from memory once: the first pass keeps an online maximum and
/// exp-sum per 1024-element chunk (the chunk is swept twice while it sits in L1: max, then
/// exp-sum rescaled to the running maximum); the gradient pass re-reads the row, which is still in
/// L2 (a 32 000-entry fp32 row pair is 256 KB), and writes the gradient. No (tokens × vocab)
/// probability tensor exists at any point. Rows are spread over OpenMP threads with a static
/// schedule and each row is reduced in a fixed order, so results are bit-identical run to run for
/// a fixed thread count, wherever the buffers lie (`detail::assign_unpeeled`). Vectorized through
/// Eigen packets and array expressions.
///
/// Numerics shared by every kernel here: log-probabilities are (x − max)·scale − log(sum) with the
/// row's raw maximum and the log of its exp-sum kept apart (`math::log_softmax_entry`), never
/// x·scale − lse with lse rounded to one number near the maximum logit; the exponential of −inf
/// (a masked vocabulary entry) is exactly 0, so every term with a zero probability vanishes.

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

#include "distill/detail/math.hpp"
#include "distill/device/cpu/layers.hpp"
#include "distill/device/reference/losses.hpp"

namespace distill::device {

namespace detail {

// Elements per chunk of the online pass: 4 KB of fp32, so a chunk and its exponentials stay in L1.
inline constexpr int chunk = 1024;

// Whether T's Eigen packet is the 16-float AVX-512 register (the intrinsics below apply).
template <class T>
inline constexpr bool is_avx512_float = std::is_same_v<T, float>&& Eigen::internal::packet_traits<float>::size == 16;

// The smallest argument whose exponential is a normal number; below it exp gives 0 here.
template <class T>
inline constexpr T exp_floor = std::is_same_v<T, float> ? T(-87.33654475f) : T(-708.3964185322641);

// exp of a packet, exactly 0 for −inf (and for anything whose exponential is subnormal).
// Eigen's pexp clamps its argument at about −88.7 (fp32) / −709.8 (fp64) and returns a tiny
// positive number for anything below, −inf included: a masked entry's probability would not be 0,
// and its terms p·log(p/M) would become tiny·(+inf) = +inf instead of vanishing.
// With AVX-512 and fp32, a leaner version of Eigen's: Cody–Waite reduction x = n ln2 + r,
// |r| <= ln2/2, e^r by its degree-6 Taylor polynomial (relative error 1.2e-7, about one ulp), and
// 2^n applied by `vscalefps`, which saturates to inf/0 by itself — 12 instructions against Eigen's
// ~20, and the kernels' arithmetic is mostly these exponentials. Inputs below -104 give 0 (e^-104
// rounds to 0 in fp32, so −inf gives exactly 0 without a mask).
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
    {
        using namespace Eigen::internal;
        return pandnot(pexp(x), pcmp_lt(x, pset1<P>(exp_floor<T>)));
    }
}

// Scalar exp with the same convention (std::exp already gives 0 for −inf; kept for symmetry).
template <class T>
inline T sexp(T x) {
    return x < exp_floor<T> ? T(0) : std::exp(x);
}

// `vexp` as an Eigen unary functor: `array.unaryExpr(exp_op{})` instead of `array.exp()`.
struct exp_op {
    template <class S>
    S operator()(const S& x) const {
        return sexp(x);
    }
    template <class Packet>
    Packet packetOp(const Packet& x) const {
        return vexp<typename Eigen::internal::unpacket_traits<Packet>::type>(x);
    }
};

// Running (raw max, Σ exp((x − max)·scale)) of a stream of logits, merged chunk by chunk; the
// log-probability of x is (x − max)·scale − log(sum).
template <class T>
struct online_lse {
    T scale = 1;
    T max = neg_inf<T>;
    T sum = 0;
    const T* max_chunk = nullptr;  // the chunk that holds the maximum
    int max_len = 0;

    // Raises the running max to cmax (a chunk's max), rescaling the sum.
    void raise(T cmax, const T* x, int len) {
        if (cmax > max) {
            sum *= sexp((max - cmax) * scale);
            max = cmax;
            max_chunk = x;
            max_len = len;
        }
    }
    // Adds x[0..len). A chunk that is all -inf adds nothing.
    void add(const T* x, int len) {
        const ConstArray<T> a(x, len);
        const T cmax = a.maxCoeff();
        if (cmax == neg_inf<T>) return;
        raise(cmax, x, len);
        sum += ((a - max) * scale).unaryExpr(exp_op{}).sum();
    }
    // add(), also writing exp((x − max)·scale) (relative to the running max after this chunk) to e.
    void add_store(const T* x, int len, T* e) {
        const ConstArray<T> a(x, len);
        const T cmax = a.maxCoeff();
        if (cmax == neg_inf<T>) {
            std::fill(e, e + len, T(0));
            return;
        }
        raise(cmax, x, len);
        assign_unpeeled(e, len, ((a - max) * scale).unaryExpr(exp_op{}));
        sum += sum_unpeeled(e, len);
    }
    // The offset of the (first) maximum from `row`.
    std::int64_t argmax(const T* row) const {
        for (int j = 0; j < max_len; ++j)
            if (max_chunk[j] == max) return (max_chunk - row) + j;
        return 0;
    }
    bool empty() const { return max == neg_inf<T>; }
    T log_sum() const { return std::log(sum); }
    T log_prob(T x) const { return math::log_softmax_entry(x, max, scale, log_sum()); }
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

// p · x where p > 0 and x is not -inf or NaN, else 0 — the terms p log(p/q) of a divergence,
// where 0 · log 0 = 0: p is exactly 0 wherever its logit was −inf (`vexp`), and x is −inf or NaN
// where the other side's logit was. A vectorized select (Eigen's `select` on a comparison runs
// one element at a time).
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

// out = math::log_mix(x, a, log_a, log_b) = log(a·e^x + b) elementwise (see there for the two
// forms): both evaluated whole, then blended on |a·expm1(x)| < 1/2. y_buf and b_buf are scratch.
template <class T>
void log_mix(T* out, const T* x, int len, T a, T log_a, T log_b, T* y_buf, T* b_buf) {
    const ConstArray<T> xa(x, len), y(y_buf, len);
    // log-add-exp of log a + x and log b: max + log1p(exp(−|difference|))
    assign_unpeeled(b_buf, len, (xa + log_a).max(log_b) + (-((xa + log_a) - log_b).abs()).unaryExpr(exp_op{}).log1p());
    assign_unpeeled(y_buf, len, a * xa.expm1());
    assign_unpeeled(out, len, y.log1p());
    assign_unpeeled(y_buf, len, y.abs());
    blend_if_less(out, y_buf, math::log_mix_switch<T>, out, b_buf, len);
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
            if (mask && !mask[n])
                clear_row(losses[n], d + n * width, width, accumulate);
            else
                losses[n] = row(n);
        },
        N * width >= parallel_threshold);
}

// Runs losses[b] = row(d_b, accumulate, s_b, t_b, C, grad_scale) for the B rows of (B,C)
// embeddings on the device's threads (the pooled-embedding kernels).
template <class Dev, class T, class Row>
void embedding_rows(const Dev& dev, Row row, T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                    int B, int C, T grad_scale) {
    distill::detail::parallel_for(
        dev.threads(), B,
        [&](std::int64_t b) {
            losses[b] = row(d + b * C, accumulate, student + b * C, teacher + b * C, C, grad_scale);
        },
        std::int64_t(B) * C >= parallel_threshold);
}

}  // namespace detail

}  // namespace distill::device

template <>
struct Eigen::internal::functor_traits<distill::device::detail::product_where_positive> {
    enum { Cost = 3, PacketAccess = true };
};
template <>
struct Eigen::internal::functor_traits<distill::device::detail::exp_op> {
    enum { Cost = 20, PacketAccess = true };
};

namespace distill::device {

namespace detail {

// Stores a packet of the gradient. `Stream` (first writer, 64-byte aligned address) uses a
// non-temporal store: the (tokens × vocab) gradient does not fit any cache and is read back by
// the next GEMM from memory anyway, so skipping the read-for-ownership saves a quarter of the
// kernel's memory traffic. The caller issues `stream_fence()` before the row is handed on.
template <bool Stream, class T, class P>
inline void store_gradient_packet(T* to, const P& x) {
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
// work in one loop: the streaming pass keeps both online (raw max, exp-sum) pairs chunk by chunk
// and stores the exponentials exp((x − running max)·inv_tau) in `scratch` (2V + 2·chunks elements,
// L2-resident); the second pass turns them into p and q with one multiply (no exp), adds
// p (log p - log q) from the logits (re-read from cache) and writes the gradient g (q - p).
template <bool Accumulate, class T>
T kl_row(T* d, const T* s, const T* t, int V, T inv_tau, T g, T* scratch) {
    using namespace Eigen::internal;
    using P = typename packet_traits<T>::type;
    constexpr int W = packet_traits<T>::size;
    const int chunks = (V + chunk - 1) / chunk;
    T* e_s = scratch;
    T* e_t = e_s + V;
    T* m_s = e_t + V;  // the running (raw) maximum each chunk's exponentials are relative to
    T* m_t = m_s + chunks;
    const P sc = pset1<P>(inv_tau);
    T max_s = neg_inf<T>, max_t = neg_inf<T>, sum_s = 0, sum_t = 0;
    for (int c = 0, k = 0; c < V; c += chunk, ++k) {
        const int len = std::min(chunk, V - c), vl = len / W * W;
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
        if (cs > max_s) {
            sum_s *= sexp((max_s - cs) * inv_tau);
            max_s = cs;
        }
        if (ct > max_t) {
            sum_t *= sexp((max_t - ct) * inv_tau);
            max_t = ct;
        }
        m_s[k] = max_s;
        m_t[k] = max_t;
        if (max_s == neg_inf<T> || max_t == neg_inf<T>) {  // nothing finite yet on a side: its exponentials are 0
            std::fill(e_s + c, e_s + c + len, T(0));
            std::fill(e_t + c, e_t + c + len, T(0));
            if (max_s > neg_inf<T>)
                for (int i = 0; i < len; ++i) sum_s += (e_s[c + i] = sexp((s[c + i] - max_s) * inv_tau));
            if (max_t > neg_inf<T>)
                for (int i = 0; i < len; ++i) sum_t += (e_t[c + i] = sexp((t[c + i] - max_t) * inv_tau));
            continue;
        }
        // exponentials relative to the running maxima, stored and summed in the same sweep
        const P ms = pset1<P>(max_s), mt = pset1<P>(max_t);
        P as = pzero(ms), at = pzero(mt);
        for (int i = 0; i < vl; i += W) {
            const P es = vexp<T>(pmul(psub(ploadu<P>(s + c + i), ms), sc));
            const P et = vexp<T>(pmul(psub(ploadu<P>(t + c + i), mt), sc));
            pstoreu(e_s + c + i, es);
            pstoreu(e_t + c + i, et);
            as = padd(as, es);
            at = padd(at, et);
        }
        T rs = predux(as), rt = predux(at);
        for (int i = vl; i < len; ++i) {
            rs += (e_s[c + i] = sexp((s[c + i] - max_s) * inv_tau));
            rt += (e_t[c + i] = sexp((t[c + i] - max_t) * inv_tau));
        }
        sum_s += rs;
        sum_t += rt;
    }
    // log q_j = (s_j − max_s)·inv_tau − log_s, log p_j likewise
    const T log_s = std::log(sum_s), log_t = std::log(sum_t), delta = log_t - log_s;
    const product_where_positive plogr;
    const P pd = pset1<P>(delta), pg = pset1<P>(g), pms = pset1<P>(max_s), pmt = pset1<P>(max_t);
    P acc = pset1<P>(T(0));
    T tail = 0;
    auto second_pass = [&]<bool Stream>() {
        for (int c = 0, k = 0; c < V; c += chunk, ++k) {
            const int len = std::min(chunk, V - c), vl = len / W * W;
            // q = exp((s - m_k)·inv_tau) · exp((m_k - max_s)·inv_tau - log_s), p likewise
            const T fs = sexp((m_s[k] - max_s) * inv_tau - log_s), ft = sexp((m_t[k] - max_t) * inv_tau - log_t);
            const P pfs = pset1<P>(fs), pft = pset1<P>(ft);
            for (int i = 0; i < vl; i += W) {
                const P q = pmul(ploadu<P>(e_s + c + i), pfs);
                const P p = pmul(ploadu<P>(e_t + c + i), pft);
                // log p - log q = ((t - max_t) - (s - max_s))/τ - (log_t - log_s): each difference of
                // logits is taken against its own row's maximum, so no offset enters the rounding
                const P x = psub(pmul(psub(psub(ploadu<P>(t + c + i), pmt), psub(ploadu<P>(s + c + i), pms)), sc), pd);
                acc = padd(acc, plogr.packetOp(p, x));
                P grad = pmul(pg, psub(q, p));
                if constexpr (Accumulate) grad = padd(grad, ploadu<P>(d + c + i));
                store_gradient_packet<Stream>(d + c + i, grad);
            }
            for (int i = vl; i < len; ++i) {
                const T q = e_s[c + i] * fs, p = e_t[c + i] * ft;
                tail += plogr(p, ((t[c + i] - max_t) - (s[c + i] - max_s)) * inv_tau - delta);
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

}  // namespace detail

/// Forward KL per row with its gradient (see the Reference kernel for the formula). The streaming
/// pass reads both rows from memory once, keeps the online (max, exp-sum) pairs and leaves the
/// exponentials exp((x - running max)/τ) of every chunk in a per-thread row buffer (L2-resident;
/// grown once, never per call); the second pass turns them into p and q with one multiply per
/// element (no exp), re-reading the logits from cache only for the value Σ p (log p - log q), and
/// writes the gradient. Two exponentials per element in all.
template <class T>
void kl_forward_backward(const Cpu& dev, T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                         const std::uint8_t* mask, std::int64_t N, int V, T inv_tau, T grad_scale) {
    using namespace detail;
    const T g = grad_scale * inv_tau;
    const int chunks = (V + chunk - 1) / chunk;
    for_rows(dev.threads(), d, accumulate, losses, mask, N, V, [&](std::int64_t n) {
        T* scratch = row_scratch<T>(2 * std::size_t(V) + 2 * std::size_t(chunks));
        return accumulate ? kl_row<true>(d + n * V, student + n * V, teacher + n * V, V, inv_tau, g, scratch)
                          : kl_row<false>(d + n * V, student + n * V, teacher + n * V, V, inv_tau, g, scratch);
    });
}

/// Reverse KL per row with its gradient (see the Reference kernel): (max, exp-sum) pairs, then the
/// value, then the gradient, which needs the value (the last two passes read the row from cache).
/// The gradient is q_j (e_j − Σ q_i e_i) with e the log-ratio shifted to 0 at the student's argmax
/// m, e_j = ((s_j − s_m) − (t_j − t_m))/τ: where q_m ≈ 1 the unshifted form subtracts two nearly
/// equal numbers of the size of the KL.
template <class T>
void reverse_kl_forward_backward(const Cpu& dev, T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                                 const std::uint8_t* mask, std::int64_t N, int V, T inv_tau, T grad_scale) {
    using namespace detail;
    const T g = grad_scale * inv_tau;
    for_rows(dev.threads(), d, accumulate, losses, mask, N, V, [&](std::int64_t n) {
        const T* s = student + n * V;
        const T* t = teacher + n * V;
        // the student's exponentials (relative to each chunk's running max) stay in a per-thread
        // buffer, so the value and gradient passes need no exp
        const int chunks = (V + chunk - 1) / chunk;
        T* e_s = row_scratch<T>(std::size_t(V) + std::size_t(chunks));
        T* m_s = e_s + V;
        online_lse<T> ls{inv_tau}, lt{inv_tau};
        for (int c = 0, k = 0; c < V; c += chunk, ++k) {
            const int len = std::min(chunk, V - c);
            ls.add_store(s + c, len, e_s + c);
            lt.add(t + c, len);
            m_s[k] = ls.max;
        }
        const T log_s = ls.log_sum(), log_t = lt.log_sum();
        const std::int64_t m = ls.argmax(s);
        const T sm = s[m], tm = t[m];
        T kl = 0, ke = 0;
        for (int c = 0, k = 0; c < V; c += chunk, ++k) {
            const int len = std::min(chunk, V - c);
            const ConstArray<T> sa(s + c, len), ta(t + c, len);
            const auto q = ConstArray<T>(e_s + c, len) * sexp((m_s[k] - ls.max) * inv_tau - log_s);
            // log q − log p = ((s − max_s) − (t − max_t))/τ − (log_s − log_t)
            kl += q.binaryExpr(((sa - ls.max) - (ta - lt.max)) * inv_tau - (log_s - log_t), product_where_positive{})
                      .sum();
            ke += q.binaryExpr(((sa - sm) - (ta - tm)) * inv_tau, product_where_positive{}).sum();
        }
        for (int c = 0, k = 0; c < V; c += chunk, ++k) {
            const int len = std::min(chunk, V - c);
            const ConstArray<T> sa(s + c, len), ta(t + c, len);
            const auto q = ConstArray<T>(e_s + c, len) * sexp((m_s[k] - ls.max) * inv_tau - log_s);
            assign_unpeeled(d + n * V + c, len,
                            g * q.binaryExpr(((sa - sm) - (ta - tm)) * inv_tau - ke, product_where_positive{}),
                            accumulate);
        }
        return kl;
    });
}

/// Generalized JSD per row with its gradient (see the Reference kernel for the formula and its
/// normalization); precondition 0 < β < 1 (`loss::JSD` runs the KL kernels at the ends). `beta` is a
/// double so that β and 1 − β are both formed before rounding; log(M/q) and log(M/p) are
/// `math::log_mix`, whose two forms are evaluated whole and blended.
template <class T>
void jsd_forward_backward(const Cpu& dev, T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                          const std::uint8_t* mask, std::int64_t N, int V, double beta, T inv_tau, T grad_scale) {
    using namespace detail;
    const T b = T(beta), b1 = T(1 - beta), log_b = T(std::log(beta)), log_b1 = T(std::log1p(-beta));
    const T g = T(double(grad_scale) * double(inv_tau) / beta);
    for_rows(dev.threads(), d, accumulate, losses, mask, N, V, [&](std::int64_t n) {
        const T* s = student + n * V;
        const T* t = teacher + n * V;
        online_lse<T> ls{inv_tau}, lt{inv_tau};
        for (int c = 0; c < V; c += chunk) {
            const int len = std::min(chunk, V - c);
            ls.add(s + c, len);
            lt.add(t + c, len);
        }
        const T log_s = ls.log_sum(), log_t = lt.log_sum();
        // log(M/q) at the student's argmax: the gradient uses log(M/q) shifted to 0 there (see ReverseKL)
        const std::int64_t m = ls.argmax(s);
        const T lmq_m = math::log_mix(lt.log_prob(t[m]) - ls.log_prob(s[m]), b, log_b, log_b1);
        // q and log(M/q) of the whole row stay in a per-thread buffer for the gradient pass
        T* q_row = row_scratch<T>(2 * std::size_t(V));
        T* lmq_row = q_row + V;
        alignas(64) T r_buf[chunk], lmp_buf[chunk], y_buf[chunk], b_buf[chunk];
        T kl_pm = 0, kl_qm = 0, kh = 0;
        for (int c = 0; c < V; c += chunk) {
            const int len = std::min(chunk, V - c);
            const ConstArray<T> sa(s + c, len), ta(t + c, len);
            const ConstArray<T> r(r_buf, len), q(q_row + c, len);
            const auto lq = (sa - ls.max) * inv_tau - log_s;
            const auto lp = (ta - lt.max) * inv_tau - log_t;
            assign_unpeeled(r_buf, len, lp - lq);  // log p − log q
            assign_unpeeled(q_row + c, len, lq.unaryExpr(exp_op{}));
            const auto p = lp.unaryExpr(exp_op{});
            log_mix(lmq_row + c, r_buf, len, b, log_b, log_b1, y_buf, b_buf);  // log(M/q)
            assign_unpeeled(r_buf, len, -r);
            log_mix(lmp_buf, r_buf, len, b1, log_b1, log_b, y_buf, b_buf);  // log(M/p)
            const ConstArray<T> lmq(lmq_row + c, len), lmp(lmp_buf, len);
            kl_qm -= q.binaryExpr(lmq, product_where_positive{}).sum();
            kl_pm -= p.binaryExpr(lmp, product_where_positive{}).sum();
            kh += q.binaryExpr(lmq - lmq_m, product_where_positive{}).sum();
        }
        for (int c = 0; c < V; c += chunk) {
            const int len = std::min(chunk, V - c);
            const ConstArray<T> q(q_row + c, len), lmq(lmq_row + c, len);
            assign_unpeeled(d + n * V + c, len, -g * q.binaryExpr((lmq - lmq_m) - kh, product_where_positive{}),
                            accumulate);
        }
        return T(double(kl_pm) / (1 - beta) + double(kl_qm) / beta);
    });
}

/// Sparse top-k forward KL per row with its gradient (see the Reference kernel). The first pass
/// keeps the (max, exp-sum) pair of the tail: the row with the top-k entries set to -inf (summed
/// directly, so q_rest keeps full relative precision however small it is); the whole row's pair
/// is the tail's merged with the k top entries.
template <class T>
void topk_kl_forward_backward(const Cpu& dev, T* d, bool accumulate, T* losses, const T* student,
                              const std::int32_t* ids, const T* logprobs, const std::uint8_t* mask, std::int64_t N,
                              int V, int k, T inv_tau, T grad_scale) {
    using namespace detail;
    const T g = grad_scale * inv_tau;
    for_rows(dev.threads(), d, accumulate, losses, mask, N, V, [&](std::int64_t n) {
        const T* s = student + n * V;
        const std::int32_t* id = ids + n * k;
        const T* lp = logprobs + n * k;
        T* dr = d + n * V;
        alignas(64) T z_buf[chunk];
        online_lse<T> tail{inv_tau};
        for (int c = 0; c < V; c += chunk) {
            const int len = std::min(chunk, V - c);
            std::copy(s + c, s + c + len, z_buf);
            for (int i = 0; i < k; ++i)
                if (id[i] >= c && id[i] < c + len) z_buf[id[i] - c] = neg_inf<T>;
            tail.add(z_buf, len);
        }
        // the whole row: the tail's pair merged with the top-k entries
        T max = tail.max;
        for (int i = 0; i < k; ++i)
            if (id[i] >= 0) max = std::max(max, s[id[i]]);
        T sum = tail.empty() ? T(0) : tail.sum * sexp((tail.max - max) * inv_tau);
        T lse_p = neg_inf<T>;
        for (int i = 0; i < k; ++i)
            if (id[i] >= 0) {
                sum += sexp((s[id[i]] - max) * inv_tau);
                lse_p = math::logaddexp(lse_p, lp[i]);
            }
        const T log_sum = std::log(sum);
        auto log_q = [&](T x) { return math::log_softmax_entry(x, max, inv_tau, log_sum); };
        const bool has_rest = lse_p < T(0) && !tail.empty();
        const T log_q_rest = has_rest ? (tail.max - max) * inv_tau + (tail.log_sum() - log_sum) : neg_inf<T>;
        const T log_p_rest = has_rest ? math::log1mexp(lse_p) : neg_inf<T>;
        const T p_rest = sexp(log_p_rest);
        T kl = 0;
        for (int i = 0; i < k; ++i)
            if (id[i] >= 0 && lp[i] > neg_inf<T>) kl += std::exp(lp[i]) * (lp[i] - log_q(s[id[i]]));
        if (has_rest && p_rest > 0) kl += p_rest * (log_p_rest - log_q_rest);
        // the top-k entries' old values, so the tail formula can be replaced there afterwards
        constexpr int stash = 64;
        T old[stash];
        const bool stashed = accumulate && k <= stash;
        if (stashed)
            for (int i = 0; i < k; ++i) old[i] = id[i] >= 0 ? dr[id[i]] : T(0);
        const T tail_log_sum = has_rest ? tail.log_sum() : T(0);
        for (int c = 0; c < V; c += chunk) {
            const int len = std::min(chunk, V - c);
            const ConstArray<T> sa(s + c, len);
            const auto q = ((sa - max) * inv_tau - log_sum).unaryExpr(exp_op{});
            if (has_rest)  // q_j − P_rest · q_j/q_rest, q_j/q_rest = exp((s_j − tail max)/τ − tail log-sum)
                assign_unpeeled(dr + c, len,
                                g * (q - p_rest * ((sa - tail.max) * inv_tau - tail_log_sum).unaryExpr(exp_op{})),
                                accumulate);
            else
                assign_unpeeled(dr + c, len, g * q, accumulate);
        }
        for (int i = 0; i < k; ++i) {
            if (id[i] < 0) continue;
            const T x = s[id[i]];
            const T gi = g * (sexp(log_q(x)) - std::exp(lp[i]));
            if (!accumulate)
                dr[id[i]] = gi;
            else if (stashed)
                dr[id[i]] = old[i] + gi;
            else  // more slots than the stash: undo the tail formula instead
                dr[id[i]] += gi - g * (sexp(log_q(x)) -
                                       (has_rest ? p_rest * sexp((x - tail.max) * inv_tau - tail_log_sum) : T(0)));
        }
        return kl;
    });
}

/// Cross-entropy per row with its gradient (see the Reference kernel): one online pass for the
/// (max, exp-sum) pair, one for the gradient.
template <class T>
void masked_cross_entropy_forward_backward(const Cpu& dev, T* d, bool accumulate, T* losses, const T* logits,
                                           const std::int32_t* targets, const std::uint8_t* mask, std::int64_t N, int V,
                                           T grad_scale) {
    using namespace detail;
    distill::detail::parallel_for(
        dev.threads(), N,
        [&](std::int64_t n) {
            const T* x = logits + n * V;
            T* dr = d + n * V;
            if ((mask && !mask[n]) || targets[n] < 0) {
                detail::clear_row(losses[n], dr, V, accumulate);
                return;
            }
            online_lse<T> acc{T(1)};
            for (int c = 0; c < V; c += chunk) acc.add(x + c, std::min(chunk, V - c));
            const T max = acc.max, log_sum = acc.log_sum();
            const T old = dr[targets[n]];
            for (int c = 0; c < V; c += chunk) {
                const int len = std::min(chunk, V - c);
                assign_unpeeled(dr + c, len,
                                grad_scale * ((ConstArray<T>(x + c, len) - max) - log_sum).unaryExpr(exp_op{}),
                                accumulate);
            }
            const T lp = acc.log_prob(x[targets[n]]);
            dr[targets[n]] = (accumulate ? old : T(0)) + grad_scale * (sexp(lp) - T(1));
            losses[n] = -lp;
        },
        N * V >= parallel_threshold);
}

/// Attention-map KL with grouped teacher heads (see the Reference kernel; keys j ≤ t when
/// `causal`, every key otherwise), parallel over query positions (b,t); each handles every student
/// head of its row, so the loss needs no reduction across threads.
template <class T>
void attention_kl_forward_backward(const Cpu& dev, T* d, bool accumulate, T* losses, const T* student, const T* teacher,
                                   const std::uint8_t* mask, int B, int Hs, int Ht, int Tn, T grad_scale, bool causal) {
    using namespace detail;
    const int g = Ht / Hs;
    const T tiny = std::numeric_limits<T>::min();
    const std::int64_t tt = std::int64_t(Tn) * Tn, rows = std::int64_t(B) * Tn;
    distill::detail::parallel_for(
        dev.threads(), rows,
        [&](std::int64_t bt) {
            const std::int64_t b = bt / Tn;
            const int t = static_cast<int>(bt % Tn), len = causal ? t + 1 : Tn;
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
                    assign_unpeeled(dr + c, cl, -grad_scale * at / as, accumulate);
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
    using namespace detail;
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
                online_lse<T> ls{s_scale}, lt{t_scale};
                ls.add(student + off, len);
                lt.add(teacher + off, len);
                const auto lp = (ta - lt.max) * t_scale - lt.log_sum();
                const auto lq = (sa - ls.max) * s_scale - ls.log_sum();
                kl += lp.unaryExpr(exp_op{}).binaryExpr(lp - lq, product_where_positive{}).sum();
                assign_unpeeled(dr, len, grad_scale * s_scale * (lq.unaryExpr(exp_op{}) - lp.unaryExpr(exp_op{})));
                std::fill(dr + len, dr + Tn, T(0));
            }
            losses[t] = kl;
        },
        R * tt >= parallel_threshold);
}

/// Hidden-state matching rows with their gradient (see the Reference): the Reference's serial loop,
/// whose double row sum is the term's value bit for bit (it is O(N·C), next to the projection's GEMMs).
template <class T>
double hidden_match_forward_backward(const Cpu&, T* y, T* losses, const T* g, const std::uint8_t* mask, std::int64_t N,
                                     int C, T scale, bool cosine) {
    return hidden_match_forward_backward(Reference{}, y, losses, g, mask, N, C, scale, cosine);
}

/// Cosine embedding rows (see the Reference kernel): the Reference's row, rows spread over the
/// threads (static schedule; each row is summed in order in double, so the result does not depend
/// on the thread count). B·C is one embedding per sequence — small next to the encoder's GEMMs.
template <class T>
void cosine_embedding_forward_backward(const Cpu& dev, T* d, bool accumulate, T* losses, const T* student,
                                       const T* teacher, int B, int C, T grad_scale) {
    detail::embedding_rows(dev, detail::cosine_embedding_row<T>, d, accumulate, losses, student, teacher, B, C,
                           grad_scale);
}

/// Embedding MSE rows (see the Reference kernel), rows spread over the threads as
/// `cosine_embedding_forward_backward`.
template <class T>
void embedding_mse_forward_backward(const Cpu& dev, T* d, bool accumulate, T* losses, const T* student,
                                    const T* teacher, int B, int C, T grad_scale) {
    detail::embedding_rows(dev, detail::embedding_mse_row<T>, d, accumulate, losses, student, teacher, B, C,
                           grad_scale);
}

}  // namespace distill::device
