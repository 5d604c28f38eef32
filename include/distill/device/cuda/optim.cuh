#pragma once
/// @file optim.cuh
/// Optimizer kernels of `device::Cuda`: the AdamW/Adam and SGD updates, elementwise with the same
/// expressions (and the same order of operations) as `device/reference/optim.hpp`, one launch per
/// tensor of the `tensor_list`, and the deterministic sum of squares behind gradient-norm clipping.

#include <cstdint>
#include <vector>

#include "distill/device.hpp"
#include "distill/device/cuda/common.cuh"

namespace distill::device {

namespace detail {

// Products rounded on their own (never contracted into an FMA), as the host kernels compute them.
__device__ inline float mul_rn(float a, float b) {
    return __fmul_rn(a, b);
}
__device__ inline double mul_rn(double a, double b) {
    return __dmul_rn(a, b);
}

template <class T>
__global__ void adam_tensor_kernel(T* p, const T* g, T* m, T* v, std::int64_t n, adam_coefficients<T> k, bool decay) {
    for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x) {
        T pp = p[i], gg = g[i];
        if (decay) {
            if (k.decoupled)
                pp = pp * k.shrink;  // param.mul_(1 - lr * weight_decay)
            else
                gg = gg + k.wd * pp;  // grad = grad.add(param, alpha=weight_decay)
        }
        const T mm = mul_rn(m[i], k.b1) + mul_rn(k.c1, gg);
        const T vv = mul_rn(v[i], k.b2) + mul_rn(mul_rn(k.c2, gg), gg);
        const T denom = sqrt(vv) / k.bc2_sqrt + k.eps;
        p[i] = pp + mul_rn(k.neg_step_size, mm) / denom;
        m[i] = mm;
        v[i] = vv;
    }
}

template <class T>
__global__ void sgd_tensor_kernel(T* p, const T* g, T* buf, std::int64_t n, sgd_coefficients<T> k, bool decay) {
    for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x) {
        const T pp = p[i];
        T d = g[i];
        if (decay) d = d + mul_rn(k.wd, pp);
        if (k.momentum) {
            const T b = k.first ? d : mul_rn(buf[i], k.mu) + mul_rn(k.keep, d);
            buf[i] = b;
            d = k.nesterov ? d + mul_rn(k.mu, b) : b;
        }
        p[i] = pp + mul_rn(k.neg_lr, d);
    }
}

// Block b of tensor i: Σ x² over its grid-stride share, in double, into partial[offset + b].
template <class T>
__global__ void sum_squares_kernel(double* partial, const T* x, std::int64_t n) {
    __shared__ double sd[32];
    double acc = 0;
    for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x)
        acc += double(x[i]) * double(x[i]);
    acc = block_sum(acc, sd);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ inline void sum_partials_kernel(double* out, const double* partial, int n) {
    __shared__ double sd[32];
    double acc = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += partial[i];
    acc = block_sum(acc, sd);
    if (threadIdx.x == 0) *out = acc;
}

template <class T>
__global__ void scale_kernel(T* x, T factor, std::int64_t n) {
    for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x)
        x[i] *= factor;
}

// Calls f(t, n) for every tensor t of `list` that has elements, n = its element count, in order.
template <class T, class F>
void for_each_tensor(const tensor_list<T>& list, F&& f) {
    for (std::size_t t = 0; t < list.size(); ++t)
        if (const std::int64_t n = list.numel(t)) f(t, n);
}

}  // namespace detail

/// One Adam/AdamW step over every tensor of `list` (arrays p, g, m, v; flag = decay), the
/// Reference's expressions (torch.optim.Adam/AdamW, foreach=False):
///   [decoupled: p ← p (1 - lr λ) | coupled: g ← g + λ p]  (when the flag is set),
///   m ← β₁ m + (1-β₁) g,  v ← β₂ v + (1-β₂) g²,  p ← p - (lr/bc₁) m / (√v / √bc₂ + ε).
template <class T>
void adam_update(const Cuda& dev, const tensor_list<T>& list, const adam_coefficients<T>& k) {
    detail::for_each_tensor(list, [&](std::size_t t, std::int64_t n) {
        DISTILL_CUDA_LAUNCH(detail::adam_tensor_kernel, detail::blocks_for(n, 256), 256, dev.stream(), list.array(t, 0),
                            list.array(t, 1), list.array(t, 2), list.array(t, 3), n, k, list.flag(t));
    });
}

/// One SGD step over every tensor of `list` (arrays p, g, buf — null without momentum; flag = decay):
/// d ← g [+ λ p]; with momentum buf ← d (first step) or μ buf + (1-τ) d, d ← d + μ buf (Nesterov) or
/// buf;  p ← p - lr d.
template <class T>
void sgd_update(const Cuda& dev, const tensor_list<T>& list, const sgd_coefficients<T>& k) {
    detail::for_each_tensor(list, [&](std::size_t t, std::int64_t n) {
        DISTILL_CUDA_LAUNCH(detail::sgd_tensor_kernel, detail::blocks_for(n, 256), 256, dev.stream(), list.array(t, 0),
                            list.array(t, 1), list.array(t, 2), n, k, list.flag(t));
    });
}

/// Σ_i Σ_j x_i[j]² over array 0 of the tensors of `list`, in double, returned to the host. Fixed
/// grid per tensor and a fixed final tree: the same bits every run (not the CPU's bits: the
/// summation order differs).
template <class T>
double sum_of_squares(const Cuda& dev, const tensor_list<T>& list) {
    constexpr int threads = 256, max_blocks = 64;
    const std::size_t count = list.size();
    std::vector<int> blocks(count);
    int total = 0;
    for (std::size_t i = 0; i < count; ++i) {
        blocks[i] = detail::blocks_for(list.numel(i), threads, max_blocks);
        total += list.numel(i) > 0 ? blocks[i] : 0;
    }
    if (total == 0) return 0.0;
    double* partial = static_cast<double*>(dev.staging(detail::slot_partials, sizeof(double) * (total + 1)));
    int offset = 0;
    for (std::size_t i = 0; i < count; ++i) {
        if (list.numel(i) <= 0) continue;
        DISTILL_CUDA_LAUNCH(detail::sum_squares_kernel, blocks[i], threads, dev.stream(), partial + offset,
                            static_cast<const T*>(list.array(i, 0)), list.numel(i));
        offset += blocks[i];
    }
    DISTILL_CUDA_LAUNCH(detail::sum_partials_kernel, 1, 1024, dev.stream(), partial + total, partial, total);
    double result = 0;
    dev.copy(&result, partial + total, sizeof(double));
    return result;
}

/// x ← factor · x for array 0 of every tensor of `list` (gradient clipping and averaging).
template <class T>
void scale_in_place(const Cuda& dev, const tensor_list<T>& list, T factor) {
    detail::for_each_tensor(list, [&](std::size_t t, std::int64_t n) {
        DISTILL_CUDA_LAUNCH(detail::scale_kernel, detail::blocks_for(n, 256), 256, dev.stream(), list.array(t, 0),
                            factor, n);
    });
}

}  // namespace distill::device
