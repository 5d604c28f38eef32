#pragma once
/// @file reference/optim.hpp
/// The optimizer kernels of `device::Reference`: the Adam/AdamW and SGD updates, the gradient-norm
/// reduction and in-place scaling, over a `tensor_list` (several tensors at once), as plain loops.
/// The updates are torch's `_single_tensor_adam(w)` / `_single_tensor_sgd` expressions, in the same
/// order of operations.
///
/// One exception to "plain loops": an update's bits are part of the contract (a resumed run equals an
/// uninterrupted one; `device::Cpu` on any thread count equals `device::Reference`), and a compiler
/// that contracts a·b + c into an FMA does so differently in a scalar loop and in a vector one. So the
/// element kernels (`detail::adam_kernel`, `sgd_kernel`) are written once, on the vector shim of
/// `device/simd.hpp` (scalar where the build has no vectors), and every host device runs them through
/// `packetwise`: the Reference one tensor after another, `device::Cpu` on its threads.

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "distill/device.hpp"
#include "distill/device/reference/layers.hpp"
#include "distill/device/simd.hpp"

namespace distill::device {

namespace detail {

/// Σ x² of the n ≤ `tensor_list::chunk_elements` values of one chunk, in double, in eight
/// interleaved accumulators (element i to lane i mod 8, which the compiler vectorizes without
/// reassociating) added as ((0+1)+(2+3))+((4+5)+(6+7)): the chunk sum every host device computes.
template <class T>
double chunk_sum_of_squares(const T* x, std::int64_t n) noexcept {
    double acc[8] = {};
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) {
            const double v = static_cast<double>(x[i + j]);
            acc[j] += v * v;
        }
    for (int j = 0; i < n; ++i, ++j) {
        const double v = static_cast<double>(x[i]);
        acc[j] += v * v;
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/// Runs `kernel(p, g, s0, s1, count)` over `n` elements, `count` always a multiple of the vector
/// width: the whole vectors in place, the remainder through zero-padded vector-sized copies. The
/// kernel is one out-of-line function, so every element of every tensor is computed by the same
/// instructions (state pointers may be null when an optimizer has fewer state arrays).
template <class T, class Kernel>
void packetwise(const Kernel& kernel, std::int64_t n, T* p, const T* g, T* s0, T* s1) {
    constexpr int W = simd<T>::width;
    const std::int64_t full = n / W * W;
    if (full > 0) kernel(p, g, s0, s1, full);
    if (full == n) return;
    const auto r = static_cast<std::size_t>(n - full);
    alignas(64) T bp[W] = {}, bg[W] = {}, b0[W] = {}, b1[W] = {};
    std::copy_n(p + full, r, bp);
    std::copy_n(g + full, r, bg);
    if (s0) std::copy_n(s0 + full, r, b0);
    if (s1) std::copy_n(s1 + full, r, b1);
    kernel(bp, bg, s0 ? b0 : nullptr, s1 ? b1 : nullptr, static_cast<std::int64_t>(W));
    std::copy_n(bp, r, p + full);
    if (s0) std::copy_n(b0, r, s0 + full);
    if (s1) std::copy_n(b1, r, s1 + full);
}

/// The Adam update of `n` elements (a multiple of the vector width), `adam_update`'s expressions in
/// torch's order, out of line so that every element runs the same instructions.
template <class T>
struct adam_kernel {
    adam_coefficients<T> k;
    bool decay;
    [[gnu::noinline]] void operator()(T* p, const T* g, T* m, T* v, std::int64_t n) const {
        using V = simd<T>;
        const auto vb1 = V::set1(k.b1), vc1 = V::set1(k.c1), vb2 = V::set1(k.b2), vc2 = V::set1(k.c2);
        const auto vstep = V::set1(k.neg_step_size), vbc2 = V::set1(k.bc2_sqrt), veps = V::set1(k.eps);
        const auto vwd = V::set1(k.wd), vshrink = V::set1(k.shrink);
        for (std::int64_t i = 0; i < n; i += V::width) {
            auto pp = V::load(p + i), gg = V::load(g + i);
            if (decay) {
                if (k.decoupled)
                    pp = V::mul(pp, vshrink);  // param.mul_(1 - lr * weight_decay)
                else
                    gg = V::add(gg, V::mul(vwd, pp));  // grad = grad.add(param, alpha=weight_decay)
            }
            // exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
            const auto mm = V::add(V::mul(V::load(m + i), vb1), V::mul(vc1, gg));
            // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            const auto vv = V::add(V::mul(V::load(v + i), vb2), V::mul(V::mul(vc2, gg), gg));
            // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            const auto denom = V::add(V::div(V::sqrt(vv), vbc2), veps);
            // param.addcdiv_(exp_avg, denom, value=-step_size)
            V::store(p + i, V::add(pp, V::div(V::mul(vstep, mm), denom)));
            V::store(m + i, mm);
            V::store(v + i, vv);
        }
    }
};

/// The SGD update of `n` elements (a multiple of the vector width), out of line (see `packetwise`).
template <class T>
struct sgd_kernel {
    sgd_coefficients<T> k;
    bool decay;
    [[gnu::noinline]] void operator()(T* p, const T* g, T* buf, T*, std::int64_t n) const {
        using V = simd<T>;
        const auto vlr = V::set1(k.neg_lr), vwd = V::set1(k.wd), vmu = V::set1(k.mu), vkeep = V::set1(k.keep);
        for (std::int64_t i = 0; i < n; i += V::width) {
            const auto pp = V::load(p + i);
            auto d = V::load(g + i);
            if (decay) d = V::add(d, V::mul(vwd, pp));  // d_p = d_p.add(param, alpha=weight_decay)
            if (k.momentum) {
                // first step: buf = clone(d_p); then buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
                const auto b = k.first ? d : V::add(V::mul(V::load(buf + i), vmu), V::mul(vkeep, d));
                V::store(buf + i, b);
                d = k.nesterov ? V::add(d, V::mul(vmu, b)) : b;  // d_p.add(buf, alpha=momentum) or buf
            }
            V::store(p + i, V::add(pp, V::mul(vlr, d)));  // param.add_(d_p, alpha=-lr)
        }
    }
};

}  // namespace detail

/// One Adam/AdamW step over every tensor i of `list` (torch.optim.Adam/AdamW, foreach=False), arrays
/// 0..3 = p, g, m, v (numel(i) elements each), flag = weight decay applies:
///   [flag, decoupled: p ← p·shrink | flag, coupled: g ← g + wd·p]
///   m ← b1·m + c1·g,   v ← b2·v + (c2·g)·g,   p ← p + (neg_step_size·m) / (√v / bc2_sqrt + eps)
/// (the optimizer folds lr, the bias corrections and the decay into `k`; see optim/adam.hpp), each
/// tensor through `detail::adam_kernel`.
template <class T>
void adam_update(const Reference&, const tensor_list<T>& list, const adam_coefficients<T>& k) {
    const detail::adam_kernel<T> decayed{k, true}, plain{k, false};
    for (std::size_t t = 0; t < list.size(); ++t)
        detail::packetwise<T>(list.flag(t) ? decayed : plain, list.numel(t), list.array(t, 0), list.array(t, 1),
                              list.array(t, 2), list.array(t, 3));
}

/// One SGD step over every tensor i of `list` (torch.optim.SGD, foreach=False), arrays 0..2 = p, g,
/// buf (buf null without momentum), flag = weight decay applies:
///   d ← g (+ wd·p);  with momentum buf ← d (first step) or buf·mu + keep·d, d ← d + mu·buf (Nesterov) or buf;
///   p ← p + neg_lr·d,
/// each tensor through `detail::sgd_kernel`.
template <class T>
void sgd_update(const Reference&, const tensor_list<T>& list, const sgd_coefficients<T>& k) {
    const detail::sgd_kernel<T> decayed{k, true}, plain{k, false};
    for (std::size_t t = 0; t < list.size(); ++t)
        detail::packetwise<T>(list.flag(t) ? decayed : plain, list.numel(t), list.array(t, 0), list.array(t, 1),
                              list.array(t, 2), nullptr);
}

/// Σ over the tensors of `list` of Σ x² (array 0), in double: each chunk's `chunk_sum_of_squares`,
/// the chunk sums added in list order (the order every host device keeps, so the bits do not depend
/// on threads). NaN or ±Inf when an element is one.
template <class T>
double sum_of_squares(const Reference&, const tensor_list<T>& list) {
    double total = 0;
    for (const auto& c : list.chunks())
        total += detail::chunk_sum_of_squares(list.array(c.tensor, 0) + c.offset, c.size);
    return total;
}

/// x ← factor·x for array 0 of every tensor of `list` (one rounding per element).
template <class T>
void scale_in_place(const Reference&, const tensor_list<T>& list, T factor) {
    for (std::size_t t = 0; t < list.size(); ++t) {
        T* x = list.array(t, 0);
        for (std::int64_t i = 0; i < list.numel(t); ++i) x[i] *= factor;
    }
}

}  // namespace distill::device
