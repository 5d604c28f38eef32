#pragma once
/// @file sampling.cuh
/// Next-token selection on `device::Cuda` for generation: greedy (argmax) and temperature sampling
/// by inverse CDF from caller-supplied uniforms (the host's seeded generator), so a sampled
/// sequence depends only on the seed. One block per row; the result goes to host or device memory.

#include <cstdint>

#include "distill/device/cuda/common.cuh"
#include "distill/device/cuda/losses.cuh"

namespace distill::device {

namespace detail {

template <class T>
__global__ void argmax_kernel(std::int32_t* out, const T* logits, int V) {
    __shared__ float sv[32];
    __shared__ int si[32];
    const T* x = logits + std::int64_t(blockIdx.x) * V;
    float best = -INFINITY;
    int arg = 0x7fffffff;
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        if (float(x[j]) > best) best = float(x[j]), arg = j;
    const int m = block_argmax(best, arg, sv, si);
    if (threadIdx.x == 0) out[blockIdx.x] = m < V ? m : 0;
}

// p = softmax(x / τ); the token is the first j with Σ_{i≤j} p_i > u. Thread k owns the contiguous
// chunk [k·V/threads, (k+1)·V/threads): chunk sums, a serial prefix over the chunks, then a serial
// scan inside the one chunk where the CDF crosses u. Deterministic.
template <class T>
__global__ void sample_kernel(std::int32_t* out, const T* logits, int V, T inv_tau, const float* uniforms) {
    __shared__ Lse sl[32];
    __shared__ double chunk[1024];
    __shared__ int pick;
    const T* x = logits + std::int64_t(blockIdx.x) * V;
    Lse a = lse_init();
    for (int j = threadIdx.x; j < V; j += blockDim.x) a = lse_push(a, double(x[j]) * double(inv_tau));
    const double lse = block_lse(a, sl);
    const int per = (V + blockDim.x - 1) / blockDim.x, b = threadIdx.x * per, e = min(V, b + per);
    double s = 0;
    for (int j = b; j < e; ++j) s += exp(double(x[j]) * double(inv_tau) - lse);
    chunk[threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        const double u = uniforms[blockIdx.x];
        double c = 0;
        int k = 0;
        for (; k < static_cast<int>(blockDim.x) - 1 && c + chunk[k] <= u; ++k) c += chunk[k];
        int token = -1;
        const int kb = k * per, ke = min(V, kb + per);
        for (int j = kb; j < ke; ++j) {
            c += exp(double(x[j]) * double(inv_tau) - lse);
            if (c > u) {
                token = j;
                break;
            }
        }
        if (token < 0)  // u beyond the rounded total: the last token with probability > 0
            for (int j = V - 1; j >= 0 && token < 0; --j)
                if (double(x[j]) * double(inv_tau) > -INFINITY) token = j;
        pick = token < 0 ? 0 : token;
    }
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = pick;
}

}  // namespace detail

/// out[n] = argmax_j logits(N,V)[n, j] (the first of ties): greedy decoding. `out` host or device.
template <class T>
void argmax_rows(const Cuda& dev, std::int32_t* out, const T* logits, int N, int V) {
    if (N <= 0) return;
    const bool host = !detail::is_device_pointer(out);
    auto* d = host ? static_cast<std::int32_t*>(dev.staging(detail::slot_misc, sizeof(std::int32_t) * N)) : out;
    DISTILL_CUDA_LAUNCH(detail::argmax_kernel, N, 256, dev.stream(), d, logits, V);
    if (host) dev.copy(out, d, sizeof(std::int32_t) * N);
}

/// out[n] = a token drawn from softmax(logits[n] / temperature) by inverse CDF at uniforms[n] in
/// [0, 1) (host or device memory, one per row). temperature > 0. `out` host or device.
template <class T>
void sample_rows(const Cuda& dev, std::int32_t* out, const T* logits, int N, int V, T temperature,
                 const float* uniforms) {
    if (N <= 0) return;
    const float* u = dev.on_device(uniforms, std::size_t(N), detail::slot_values);
    const bool host = !detail::is_device_pointer(out);
    auto* d = host ? static_cast<std::int32_t*>(dev.staging(detail::slot_misc, sizeof(std::int32_t) * N)) : out;
    DISTILL_CUDA_LAUNCH(detail::sample_kernel, N, 256, dev.stream(), d, logits, V, T(1) / temperature, u);
    if (host) dev.copy(out, d, sizeof(std::int32_t) * N);
}

}  // namespace distill::device
