#pragma once
/// @file common.cuh
/// Reductions shared by the CUDA kernels. Every reduction has a fixed shape (lane i of a warp,
/// warp w of a block, a tree of fixed depth), so results are bit-identical run after run.

#include <cmath>
#include <cstdint>
#include <limits>

#include "distill/device/cuda/context.cuh"

namespace distill::device::detail {

/// Sum over the 32 lanes of a warp (butterfly; every lane gets the same bits).
template <class T>
__device__ inline T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/// Max over the 32 lanes of a warp.
template <class T>
__device__ inline T warp_max(T v) {
    for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
/// `shared` holds 32 values of T. Synchronizes the block.
template <class T>
__device__ inline T block_sum(T v, T* shared) {
    const int lane = threadIdx.x % warp, w = threadIdx.x / warp, warps = blockDim.x / warp;
    v = warp_sum(v);
    __syncthreads();  // `shared` may still be read by a previous reduction
    if (lane == 0) shared[w] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : T(0);
    return warp_sum(v);
}

/// Max over the block; as `block_sum`.
template <class T>
__device__ inline T block_max(T v, T* shared) {
    const int lane = threadIdx.x % warp, w = threadIdx.x / warp, warps = blockDim.x / warp;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared[w] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : -std::numeric_limits<T>::infinity();
    return warp_max(v);
}

/// Online log-sum-exp state: running max m and Σ exp(x - m).
struct Lse {
    double m, s;
};
__device__ inline Lse lse_init() {
    return {-INFINITY, 0.0};
}
__device__ inline Lse lse_push(Lse a, double x) {
    if (x == -INFINITY) return a;
    if (x > a.m) return {x, a.s * exp(a.m - x) + 1.0};
    return {a.m, a.s + exp(x - a.m)};
}
__device__ inline Lse lse_merge(Lse a, Lse b) {
    if (b.m == -INFINITY) return a;
    if (a.m == -INFINITY) return b;
    return a.m >= b.m ? Lse{a.m, a.s + b.s * exp(b.m - a.m)} : Lse{b.m, b.s + a.s * exp(a.m - b.m)};
}
/// Block-wide merge of Lse states (fixed tree); every thread gets log Σ exp.
__device__ inline double block_lse(Lse v, Lse* shared) {
    const int lane = threadIdx.x % warp, w = threadIdx.x / warp, warps = blockDim.x / warp;
    for (int o = 16; o > 0; o >>= 1) {
        Lse other{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
        v = lane & o ? lse_merge(other, v) : lse_merge(v, other);
    }
    __syncthreads();
    if (lane == 0) shared[w] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : lse_init();
    for (int o = 16; o > 0; o >>= 1) {
        Lse other{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
        v = lane & o ? lse_merge(other, v) : lse_merge(v, other);
    }
    return v.m == -INFINITY ? -INFINITY : v.m + log(v.s);
}

}  // namespace distill::device::detail
