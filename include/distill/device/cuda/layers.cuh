#pragma once
/// @file layers.cuh
/// The layer kernels of `device::Cuda`: the same functions as `device/reference/layers.hpp` (read it for
/// the specification), one thread per element, one warp per row or a two-stage column reduction.
/// No atomics: every sum has a fixed order, so results are bit-identical run after run.

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "distill/detail/math.hpp"
#include "distill/device/cuda/blas.cuh"
#include "distill/device/cuda/common.cuh"

namespace distill::device {

namespace detail {

template <class T>
__global__ void add_bias_kernel(T* out, const T* bias, std::int64_t n, int OC) {
    for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x)
        out[i] += bias[i % OC];
}

template <class T>
__global__ void add_kernel(T* out, const T* a, const T* b, std::int64_t n) {
    for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x)
        out[i] = a[i] + b[i];
}

template <class T>
__global__ void accumulate_kernel(T* y, const T* x, std::int64_t n) {
    for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x)
        y[i] += x[i];
}

// Stage 1 of a column reduction of f(n, c) over rows n of an (N,OC) grid: block (x, y) sums rows
// [y·R, (y+1)·R) of columns x·blockDim.x + threadIdx.x into partial(chunks, OC).
template <class T, class F>
__global__ void column_partials_kernel(T* partial, int N, int OC, int R, F f) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= OC) return;
    const int n0 = blockIdx.y * R, n1 = min(N, n0 + R);
    T acc = 0;
    for (int n = n0; n < n1; ++n) acc += f(n, c);
    partial[std::int64_t(blockIdx.y) * OC + c] = acc;
}

// Stage 2: out(OC) += Σ_chunks partial(chunks, OC), chunks in order.
template <class T>
__global__ void column_finish_kernel(T* out, const T* partial, int chunks, int OC) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= OC) return;
    T acc = 0;
    for (int k = 0; k < chunks; ++k) acc += partial[std::int64_t(k) * OC + c];
    out[c] += acc;
}

// out(OC) += Σ_n f(n, c) for n in [0, N): 64-row chunks, then the chunks in order.
template <class T, class F>
void column_reduce(const Cuda& dev, T* out, int N, int OC, F f) {
    if (N <= 0 || OC <= 0) return;
    constexpr int R = 64, threads = 128;
    const int chunks = (N + R - 1) / R;
    T* partial = static_cast<T*>(dev.staging(slot_partials, sizeof(T) * std::size_t(chunks) * std::size_t(OC)));
    const dim3 grid((OC + threads - 1) / threads, chunks);
    DISTILL_CUDA_LAUNCH(column_partials_kernel, grid, threads, dev.stream(), partial, N, OC, R, f);
    DISTILL_CUDA_LAUNCH(column_finish_kernel, (OC + threads - 1) / threads, threads, dev.stream(), out, partial, chunks,
                        OC);
}

template <class T>
struct read_element {
    const T* x;
    int OC;
    __device__ T operator()(int n, int c) const { return x[std::int64_t(n) * OC + c]; }
};

// One warp per row: mean, rstd, normalized output.
template <class T>
__global__ void layernorm_forward_kernel(T* out, T* mean, T* rstd, const T* in, const T* w, const T* b, int N, int C,
                                         T eps) {
    const int row = blockIdx.x * (blockDim.x / warp) + threadIdx.x / warp, lane = threadIdx.x % warp;
    if (row >= N) return;
    const T* x = in + std::int64_t(row) * C;
    T s = 0;
    for (int c = lane; c < C; c += warp) s += x[c];
    const T m = warp_sum(s) / T(C);
    T v = 0;
    for (int c = lane; c < C; c += warp) v += (x[c] - m) * (x[c] - m);
    const T r = T(1) / sqrt(warp_sum(v) / T(C) + eps);
    T* o = out + std::int64_t(row) * C;
    for (int c = lane; c < C; c += warp) o[c] = (x[c] - m) * r * w[c] + b[c];
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

// One warp per row: din += rstd (g - mean(g) - xhat mean(g xhat)), g = dout w.
template <class T>
__global__ void layernorm_din_kernel(T* din, const T* dout, const T* in, const T* w, const T* mean, const T* rstd,
                                     int N, int C) {
    const int row = blockIdx.x * (blockDim.x / warp) + threadIdx.x / warp, lane = threadIdx.x % warp;
    if (row >= N) return;
    const std::int64_t off = std::int64_t(row) * C;
    const T m = mean[row], r = rstd[row];
    T gs = 0, gxs = 0;
    for (int c = lane; c < C; c += warp) {
        const T g = dout[off + c] * w[c];
        gs += g;
        gxs += g * (in[off + c] - m) * r;
    }
    const T g_mean = warp_sum(gs) / T(C), gx_mean = warp_sum(gxs) / T(C);
    for (int c = lane; c < C; c += warp) {
        const T xhat = (in[off + c] - m) * r;
        din[off + c] += r * (dout[off + c] * w[c] - g_mean - xhat * gx_mean);
    }
}

template <class T>
struct layernorm_dw_term {
    const T *dout, *in, *mean, *rstd;
    int C;
    __device__ T operator()(int n, int c) const {
        const std::int64_t i = std::int64_t(n) * C + c;
        return dout[i] * (in[i] - mean[n]) * rstd[n];
    }
};

// One warp per row: rstd = 1/sqrt(mean(in²) + eps), out = in rstd w.
template <class T>
__global__ void rmsnorm_forward_kernel(T* out, T* rstd, const T* in, const T* w, int N, int C, T eps) {
    const int row = blockIdx.x * (blockDim.x / warp) + threadIdx.x / warp, lane = threadIdx.x % warp;
    if (row >= N) return;
    const T* x = in + std::int64_t(row) * C;
    T s = 0;
    for (int c = lane; c < C; c += warp) s += x[c] * x[c];
    const T r = T(1) / sqrt(warp_sum(s) / T(C) + eps);
    T* o = out + std::int64_t(row) * C;
    for (int c = lane; c < C; c += warp) o[c] = x[c] * r * w[c];
    if (lane == 0) rstd[row] = r;
}

// One warp per row: din += rstd (g - xhat mean(g xhat)), g = dout w, xhat = in rstd.
template <class T>
__global__ void rmsnorm_din_kernel(T* din, const T* dout, const T* in, const T* w, const T* rstd, int N, int C) {
    const int row = blockIdx.x * (blockDim.x / warp) + threadIdx.x / warp, lane = threadIdx.x % warp;
    if (row >= N) return;
    const std::int64_t off = std::int64_t(row) * C;
    const T r = rstd[row];
    T gxs = 0;
    for (int c = lane; c < C; c += warp) gxs += dout[off + c] * w[c] * in[off + c] * r;
    const T gx_mean = warp_sum(gxs) / T(C);
    for (int c = lane; c < C; c += warp) din[off + c] += r * (dout[off + c] * w[c] - in[off + c] * r * gx_mean);
}

template <class T>
struct rmsnorm_dw_term {
    const T *dout, *in, *rstd;
    int C;
    __device__ T operator()(int n, int c) const {
        const std::int64_t i = std::int64_t(n) * C + c;
        return dout[i] * in[i] * rstd[n];
    }
};

// out(N,F) = silu(gate) up, in(N,2F) = gate | up per row; one thread per output element.
template <class T>
__global__ void swiglu_forward_kernel(T* out, const T* in, int F, std::int64_t n) {
    for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x) {
        const std::int64_t r = i / F * 2 * F + i % F;
        out[i] = math::silu(in[r]) * in[r + F];
    }
}

// din(N,2F) = dout up silu'(gate) | dout silu(gate); one thread per (n, f) pair.
template <class T>
__global__ void swiglu_backward_kernel(T* din, const T* in, const T* dout, int F, std::int64_t n) {
    for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x) {
        const std::int64_t r = i / F * 2 * F + i % F;
        const T g = in[r], u = in[r + F], d = dout[i];
        din[r] = d * u * math::silu_grad(g);
        din[r + F] = d * math::silu(g);
    }
}

// One thread per rotated pair (n, h, i) of x(N,row), n = e / (heads·half): the pair (i, i + half)
// of head h is turned by the angle of positions[n] (backwards when `inverse`).
template <class T>
__global__ void rope_rotate_kernel(T* x, const T* cos, const T* sin, const std::int32_t* positions, int row, int heads,
                                   int hs, bool inverse, std::int64_t n) {
    const int half = hs / 2;
    for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < n;
         e += std::int64_t(gridDim.x) * blockDim.x) {
        const std::int64_t nh = e / half;
        const int i = static_cast<int>(e % half), h = static_cast<int>(nh % heads);
        const std::int64_t tok = nh / heads;
        T* v = x + tok * row + std::int64_t(h) * hs;
        const std::int64_t p = std::int64_t(positions[tok]) * half + i;
        const T c = cos[p], s = inverse ? -sin[p] : sin[p];
        const T x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c - x2 * s;
        v[i + half] = x2 * c + x1 * s;
    }
}

template <class T>
__global__ void gelu_forward_kernel(T* out, const T* in, std::int64_t n) {
    for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x)
        out[i] = math::gelu(in[i]);
}

// pre(N,OC) += bias, out = gelu(pre): one pass instead of two.
template <class T>
__global__ void bias_gelu_kernel(T* out, T* pre, const T* bias, std::int64_t n, int OC) {
    for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x) {
        const T x = pre[i] + bias[i % OC];
        pre[i] = x;
        out[i] = math::gelu(x);
    }
}

template <class T>
__global__ void gelu_backward_kernel(T* din, const T* in, const T* dout, std::int64_t n) {
    for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x)
        din[i] = dout[i] * math::gelu_grad(in[i]);
}

// One warp per row r of att(BH·T, T); query t = r mod T sees keys 0..t.
template <class T>
__global__ void causal_softmax_forward_kernel(T* att, std::int64_t rows, int Tn, T scale) {
    const std::int64_t r = blockIdx.x * std::int64_t(blockDim.x / warp) + threadIdx.x / warp;
    const int lane = threadIdx.x % warp;
    if (r >= rows) return;
    const int t = static_cast<int>(r % Tn);
    T* row = att + r * Tn;
    T mx = -INFINITY;
    for (int j = lane; j <= t; j += warp) mx = fmax(mx, row[j]);  // the raw maximum: (x - max)·scale
    mx = warp_max(mx);
    T s = 0;
    for (int j = lane; j <= t; j += warp) {
        const T e = exp((row[j] - mx) * scale);
        row[j] = e;
        s += e;
    }
    const T inv = T(1) / warp_sum(s);
    for (int j = lane; j < Tn; j += warp) row[j] = j <= t ? row[j] * inv : T(0);
}

// dscores = scale p (datt - Σ p datt) on keys ≤ t, 0 above; dscores may alias datt.
template <class T>
__global__ void causal_softmax_backward_kernel(T* dscores, const T* att, const T* datt, std::int64_t rows, int Tn,
                                               T scale) {
    const std::int64_t r = blockIdx.x * std::int64_t(blockDim.x / warp) + threadIdx.x / warp;
    const int lane = threadIdx.x % warp;
    if (r >= rows) return;
    const int t = static_cast<int>(r % Tn);
    const std::int64_t off = r * Tn;
    T dot = 0;
    for (int j = lane; j <= t; j += warp) dot += att[off + j] * datt[off + j];
    dot = warp_sum(dot);
    for (int j = lane; j < Tn; j += warp)
        dscores[off + j] = j <= t ? scale * att[off + j] * (datt[off + j] - dot) : T(0);
}

template <class T>
__global__ void embedding_forward_kernel(T* out, const std::int32_t* tokens, const T* wte, const T* wpe, int Tn, int C,
                                         std::int64_t n) {
    for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x) {
        const std::int64_t bt = i / C;
        const int c = static_cast<int>(i % C);
        out[i] = wte[std::int64_t(tokens[bt]) * C + c] + (wpe ? wpe[(bt % Tn) * C + c] : T(0));
    }
}

// The token embedding stored in bf16 alone (widened exactly); the sum is device::Cpu's: v + pos, or v.
template <class T>
__global__ void embedding_forward_bf16_kernel(T* out, const std::int32_t* tokens, const std::uint16_t* wte,
                                              const T* wpe, int Tn, int C, std::int64_t n) {
    for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x) {
        const std::int64_t bt = i / C;
        const int c = static_cast<int>(i % C);
        const T v = static_cast<T>(from_bf16(wte[std::int64_t(tokens[bt]) * C + c]));
        out[i] = wpe ? v + wpe[(bt % Tn) * C + c] : v;
    }
}

// dwpe(T,C) += Σ_b dout(b,t,c): one thread per (t, c), batches in order.
template <class T>
__global__ void embedding_dwpe_kernel(T* dwpe, const T* dout, int B, int Tn, int C) {
    const std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
    if (i >= std::int64_t(Tn) * C) return;
    T acc = 0;
    for (int b = 0; b < B; ++b) acc += dout[std::int64_t(b) * Tn * C + i];
    dwpe[i] += acc;
}

// dwte(V,C): block k owns the k-th distinct token; its rows (ascending, from `order`) are summed in
// order by threads over channels. No two blocks touch the same row of dwte.
template <class T>
__global__ void embedding_dwte_kernel(T* dwte, const T* dout, const std::int32_t* order, const std::int32_t* segments,
                                      int C) {
    const int k = blockIdx.x;
    const std::int32_t begin = segments[2 * k], end = segments[2 * k + 1];
    const std::int64_t token = segments[2 * gridDim.x + k];
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        T acc = 0;
        for (std::int32_t i = begin; i < end; ++i) acc += dout[std::int64_t(order[i]) * C + c];
        dwte[token * C + c] += acc;
    }
}

// One block per row: cross-entropy and its gradient (dlogits may alias logits).
template <class T>
__global__ void cross_entropy_kernel(T* dlogits, T* losses, const T* logits, const std::int32_t* targets, int V,
                                     T dloss) {
    __shared__ Lse shared[32];
    const std::int64_t n = blockIdx.x;
    const std::int64_t off = n * V;
    const std::int32_t target = targets[n];
    if (target < 0) {
        for (int v = threadIdx.x; v < V; v += blockDim.x) dlogits[off + v] = 0;
        if (threadIdx.x == 0) losses[n] = 0;
        return;
    }
    Lse acc = lse_init();
    for (int v = threadIdx.x; v < V; v += blockDim.x) acc = lse_push(acc, double(logits[off + v]));
    const double lse = block_lse(acc, shared);
    const T x_target = logits[off + target];
    __syncthreads();  // every thread has read logits[target] before dlogits (maybe aliased) changes
    if (threadIdx.x == 0) losses[n] = T(lse - double(x_target));
    for (int v = threadIdx.x; v < V; v += blockDim.x)
        dlogits[off + v] = (T(exp(double(logits[off + v]) - lse)) - (v == target ? T(1) : T(0))) * dloss;
}

// One block per (b, h): scores against the n cached keys of kv head h / (H/Hkv), softmax, weighted
// sum of the values. q is head h of row b of qkv(B, (H+2Hkv)hs).
template <class T>
__global__ void attention_decode_kernel(T* out, T* scratch, const T* qkv, const T* kcache, const T* vcache,
                                        const int* lengths, int H, int Hkv, int hs, int Tmax) {
    __shared__ T shared[32];
    const int bh = blockIdx.x, b = bh / H, h = bh % H, n = lengths[b], C = H * hs, row = (H + 2 * Hkv) * hs;
    const T scale = T(1) / sqrt(T(hs));
    const std::int64_t base = (std::int64_t(b) * Hkv + h / (H / Hkv)) * Tmax * hs;
    const T* q = qkv + std::int64_t(b) * row + h * hs;
    T* p = scratch + std::int64_t(bh) * Tmax;
    T mx = -INFINITY;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        T s = 0;
        for (int d = 0; d < hs; ++d) s += q[d] * kcache[base + std::int64_t(j) * hs + d];
        p[j] = s;  // raw scores: (x - max)·scale keeps the low bits of large ones
        mx = fmax(mx, p[j]);
    }
    mx = block_max(mx, shared);
    T sum = 0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        p[j] = exp((p[j] - mx) * scale);
        sum += p[j];
    }
    sum = block_sum(sum, shared);  // synchronizes: every p[j] is written
    T* o = out + std::int64_t(b) * C + h * hs;
    for (int d = threadIdx.x; d < hs; d += blockDim.x) {
        T acc = 0;
        for (int j = 0; j < n; ++j) acc += p[j] * vcache[base + std::int64_t(j) * hs + d];
        o[d] = acc / sum;
    }
}

// Block i copies token i's keys and values (every kv head) from its q|k|v row into the cache.
template <class T>
__global__ void kv_cache_store_kernel(T* keys, T* values, const T* qkv, const std::int32_t* rows, int H, int Hkv,
                                      int hs, int Tmax) {
    const int i = blockIdx.x, Ckv = Hkv * hs, Cq = H * hs;
    const T* src = qkv + std::int64_t(rows[3 * i]) * (Cq + 2 * Ckv);
    const int b = rows[3 * i + 1], t = rows[3 * i + 2];
    for (int c = threadIdx.x; c < Ckv; c += blockDim.x) {
        const int h = c / hs, d = c % hs;
        const std::int64_t dst = ((std::int64_t(b) * Hkv + h) * Tmax + t) * hs + d;
        keys[dst] = src[Cq + c];
        values[dst] = src[Cq + Ckv + c];
    }
}

}  // namespace detail

/// Writes the keys and values of `count` tokens into a KV cache (max_batch, Hkv, Tmax, hs) per
/// tensor: token i is row rows[3i] of qkv(·, (H+2Hkv)hs) (q H·hs | k Hkv·hs | v Hkv·hs), stored at
/// sequence rows[3i+1], position rows[3i+2]. `rows` in host or device memory. One block per token.
template <class T>
void kv_cache_store(const Cuda& dev, T* keys, T* values, const T* qkv, const std::int32_t* rows, int count, int H,
                    int Hkv, int hs, int Tmax) {
    if (count <= 0) return;
    const std::int32_t* r = dev.on_device(rows, 3 * std::size_t(count), detail::slot_kv);
    DISTILL_CUDA_LAUNCH(detail::kv_cache_store_kernel, count, 128, dev.stream(), keys, values, qkv, r, H, Hkv, hs,
                        Tmax);
}

/// out(N,OC) += bias(OC) broadcast over rows.
template <class T>
void add_bias(const Cuda& dev, T* out, const T* bias, int N, int OC) {
    const std::int64_t n = std::int64_t(N) * OC;
    if (!n) return;
    DISTILL_CUDA_LAUNCH(detail::add_bias_kernel, detail::blocks_for(n, 256), 256, dev.stream(), out, bias, n, OC);
}

/// dbias(OC) += Σ_n dout(N,OC): 64-row partial sums, then the partials in order.
template <class T>
void bias_grad(const Cuda& dev, T* dbias, const T* dout, int N, int OC) {
    detail::column_reduce(dev, dbias, N, OC, detail::read_element<T>{dout, OC});
}

/// out = a + b, n elements (the residual connection).
template <class T>
void add(const Cuda& dev, T* out, const T* a, const T* b, std::int64_t n) {
    if (!n) return;
    DISTILL_CUDA_LAUNCH(detail::add_kernel, detail::blocks_for(n, 256), 256, dev.stream(), out, a, b, n);
}

/// y += x, n elements.
template <class T>
void accumulate(const Cuda& dev, T* y, const T* x, std::int64_t n) {
    if (!n) return;
    DISTILL_CUDA_LAUNCH(detail::accumulate_kernel, detail::blocks_for(n, 256), 256, dev.stream(), y, x, n);
}

/// LayerNorm over the last dimension: out(N,C) = (in - mean) rstd w + b, rstd = 1/sqrt(var + eps);
/// mean(N), rstd(N) saved. One warp per row.
template <class T>
void layernorm_forward(const Cuda& dev, T* out, T* mean, T* rstd, const T* in, const T* w, const T* b, int N, int C,
                       T eps) {
    if (N <= 0) return;
    constexpr int rows_per_block = 8;
    DISTILL_CUDA_LAUNCH(detail::layernorm_forward_kernel, (N + rows_per_block - 1) / rows_per_block,
                        rows_per_block * 32, dev.stream(), out, mean, rstd, in, w, b, N, C, eps);
}

/// LayerNorm backward, accumulating: din(N,C) += rstd (g - mean(g) - xhat mean(g xhat)), g = dout w;
/// dw(C) += Σ_n dout xhat; db(C) += Σ_n dout.
template <class T>
void layernorm_backward(const Cuda& dev, T* din, T* dw, T* db, const T* dout, const T* in, const T* w, const T* mean,
                        const T* rstd, int N, int C) {
    if (N <= 0) return;
    constexpr int rows_per_block = 8;
    DISTILL_CUDA_LAUNCH(detail::layernorm_din_kernel, (N + rows_per_block - 1) / rows_per_block, rows_per_block * 32,
                        dev.stream(), din, dout, in, w, mean, rstd, N, C);
    detail::column_reduce(dev, dw, N, C, detail::layernorm_dw_term<T>{dout, in, mean, rstd, C});
    detail::column_reduce(dev, db, N, C, detail::read_element<T>{dout, C});
}

/// RMSNorm over the last dimension: out(N,C) = in rstd w, rstd(N) = 1/sqrt(mean(in²) + eps) saved.
/// One warp per row.
template <class T>
void rmsnorm_forward(const Cuda& dev, T* out, T* rstd, const T* in, const T* w, int N, int C, T eps) {
    if (N <= 0) return;
    constexpr int rows_per_block = 8;
    DISTILL_CUDA_LAUNCH(detail::rmsnorm_forward_kernel, (N + rows_per_block - 1) / rows_per_block, rows_per_block * 32,
                        dev.stream(), out, rstd, in, w, N, C, eps);
}

/// RMSNorm backward, accumulating: din(N,C) += rstd (g - xhat mean(g xhat)), g = dout w, xhat = in
/// rstd; dw(C) += Σ_n dout xhat (64-row partial sums, then the partials in order).
template <class T>
void rmsnorm_backward(const Cuda& dev, T* din, T* dw, const T* dout, const T* in, const T* w, const T* rstd, int N,
                      int C) {
    if (N <= 0) return;
    constexpr int rows_per_block = 8;
    DISTILL_CUDA_LAUNCH(detail::rmsnorm_din_kernel, (N + rows_per_block - 1) / rows_per_block, rows_per_block * 32,
                        dev.stream(), din, dout, in, w, rstd, N, C);
    detail::column_reduce(dev, dw, N, C, detail::rmsnorm_dw_term<T>{dout, in, rstd, C});
}

/// SwiGLU: out(N,F) = silu(gate) up, in(N,2F) = gate | up per row.
template <class T>
void swiglu_forward(const Cuda& dev, T* out, const T* in, int N, int F) {
    const std::int64_t n = std::int64_t(N) * F;
    if (n <= 0) return;
    DISTILL_CUDA_LAUNCH(detail::swiglu_forward_kernel, detail::blocks_for(n, 256), 256, dev.stream(), out, in, F, n);
}

/// SwiGLU backward: din(N,2F) = dout up silu'(gate) | dout silu(gate) (overwrites din).
template <class T>
void swiglu_backward(const Cuda& dev, T* din, const T* in, const T* dout, int N, int F) {
    const std::int64_t n = std::int64_t(N) * F;
    if (n <= 0) return;
    DISTILL_CUDA_LAUNCH(detail::swiglu_backward_kernel, detail::blocks_for(n, 256), 256, dev.stream(), din, in, dout, F,
                        n);
}

/// Rotary position embedding in place (rotate-half pairing): in each of the first `heads` heads (hs
/// wide) of every row of x(N, row), the pair (i, i + hs/2) turns by the angle of positions[n] and
/// frequency i: x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin, cos/sin(P, hs/2) in device memory;
/// `inverse` turns back (the backward). `positions` (N) in host or device memory. One thread per pair.
template <class T>
void rope_rotate(const Cuda& dev, T* x, const T* cos, const T* sin, const std::int32_t* positions, int N, int row,
                 int heads, int hs, bool inverse) {
    const std::int64_t n = std::int64_t(N) * heads * (hs / 2);
    if (n <= 0) return;
    const std::int32_t* pos = dev.on_device(positions, std::size_t(N), detail::slot_positions);
    DISTILL_CUDA_LAUNCH(detail::rope_rotate_kernel, detail::blocks_for(n, 256), 256, dev.stream(), x, cos, sin, pos,
                        row, heads, hs, inverse, n);
}

/// out = gelu_tanh(in), n elements (the shared `math::gelu`).
template <class T>
void gelu_forward(const Cuda& dev, T* out, const T* in, std::int64_t n) {
    if (!n) return;
    DISTILL_CUDA_LAUNCH(detail::gelu_forward_kernel, detail::blocks_for(n, 256), 256, dev.stream(), out, in, n);
}

/// Fused bias + GELU of an MLP's first projection: pre(N,OC) += bias(OC) (kept for the backward
/// pass), out(N,OC) = gelu_tanh(pre). The same values as `add_bias` then `gelu_forward`, one pass.
template <class T>
void bias_gelu_forward(const Cuda& dev, T* out, T* pre, const T* bias, int N, int OC) {
    const std::int64_t n = std::int64_t(N) * OC;
    if (!n) return;
    DISTILL_CUDA_LAUNCH(detail::bias_gelu_kernel, detail::blocks_for(n, 256), 256, dev.stream(), out, pre, bias, n, OC);
}

/// din = dout gelu_tanh'(in), n elements (overwrites; din may alias dout).
template <class T>
void gelu_backward(const Cuda& dev, T* din, const T* in, const T* dout, std::int64_t n) {
    if (!n) return;
    DISTILL_CUDA_LAUNCH(detail::gelu_backward_kernel, detail::blocks_for(n, 256), 256, dev.stream(), din, in, dout, n);
}

/// In place on att(BH,T,T): row t = softmax(scale · att[t, 0..t]), zeros after t. One warp per row.
template <class T>
void causal_softmax_forward(const Cuda& dev, T* att, int BH, int Tn, T scale) {
    const std::int64_t rows = std::int64_t(BH) * Tn;
    if (!rows) return;
    constexpr int rows_per_block = 8;
    DISTILL_CUDA_LAUNCH(detail::causal_softmax_forward_kernel,
                        static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block), rows_per_block * 32,
                        dev.stream(), att, rows, Tn, scale);
}

/// dscores(BH,T,T)[t,j] = scale p[t,j] (datt[t,j] - Σ_k p[t,k] datt[t,k]) for j ≤ t, else 0.
template <class T>
void causal_softmax_backward(const Cuda& dev, T* dscores, const T* att, const T* datt, int BH, int Tn, T scale) {
    const std::int64_t rows = std::int64_t(BH) * Tn;
    if (!rows) return;
    constexpr int rows_per_block = 8;
    DISTILL_CUDA_LAUNCH(detail::causal_softmax_backward_kernel,
                        static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block), rows_per_block * 32,
                        dev.stream(), dscores, att, datt, rows, Tn, scale);
}

/// out(B,T,C) = wte[tokens[b,t]] + wpe[t] (wpe null: the token embedding alone, for rotary models).
/// `tokens` in host or device memory.
template <class T>
void embedding_forward(const Cuda& dev, T* out, const std::int32_t* tokens, const T* wte, const T* wpe, int B, int Tn,
                       int C) {
    const std::int64_t n = std::int64_t(B) * Tn * C;
    if (!n) return;
    const std::int32_t* tok = dev.on_device(tokens, std::size_t(B) * Tn, detail::slot_index);
    DISTILL_CUDA_LAUNCH(detail::embedding_forward_kernel, detail::blocks_for(n, 256), 256, dev.stream(), out, tok, wte,
                        wpe, Tn, C, n);
}

/// `embedding_forward` with the token embedding stored in bf16 alone (student::storage::bf16, device
/// memory, (V,C) packed): out(B,T,C) = widen(wte16[tokens[b,t]]) (+ wpe[t]). `tokens` in host or
/// device memory.
template <class T>
void embedding_forward_bf16(const Cuda& dev, T* out, const std::int32_t* tokens, const std::uint16_t* wte16,
                            const T* wpe, int B, int Tn, int C) {
    const std::int64_t n = std::int64_t(B) * Tn * C;
    if (!n) return;
    const std::int32_t* tok = dev.on_device(tokens, std::size_t(B) * Tn, detail::slot_index);
    DISTILL_CUDA_LAUNCH(detail::embedding_forward_bf16_kernel, detail::blocks_for(n, 256), 256, dev.stream(), out, tok,
                        wte16, wpe, Tn, C, n);
}

/// dwte(V,C) += Σ_{(b,t): tokens=v} dout(b,t,:), dwpe(T,C) += Σ_b dout(b,t,:) (skipped when dwpe is
/// null). Deterministic
/// without atomics: the token ids come to the host (B·T ints), are grouped by token (rows
/// ascending, the CPU's order), and each distinct token is summed by one block.
template <class T>
void embedding_backward(const Cuda& dev, T* dwte, T* dwpe, const T* dout, const std::int32_t* tokens, int B, int Tn,
                        int C) {
    const int N = B * Tn;
    if (N <= 0) return;
    if (dwpe) {
        DISTILL_CUDA_LAUNCH(detail::embedding_dwpe_kernel, detail::blocks_for(std::int64_t(Tn) * C, 256), 256,
                            dev.stream(), dwpe, dout, B, Tn, C);
    }
    std::vector<std::int32_t> tok(static_cast<std::size_t>(N));
    dev.copy(tok.data(), tokens, sizeof(std::int32_t) * tok.size());
    std::vector<std::int32_t> order(tok.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) { return tok[a] < tok[b]; });
    // segments: [begin, end) pairs of each distinct token, then the tokens
    std::vector<std::int32_t> begins, ends, ids;
    for (int i = 0; i < N; ++i)
        if (i == 0 || tok[order[i]] != tok[order[i - 1]]) {
            if (i) ends.push_back(i);
            begins.push_back(i);
            ids.push_back(tok[order[i]]);
        }
    ends.push_back(N);
    const int K = static_cast<int>(ids.size());
    std::vector<std::int32_t> segments(3 * std::size_t(K));
    for (int k = 0; k < K; ++k) {
        segments[2 * k] = begins[k];
        segments[2 * k + 1] = ends[k];
        segments[2 * K + k] = ids[k];
    }
    const std::int32_t* d_order = dev.on_device(order.data(), order.size(), detail::slot_order);
    const std::int32_t* d_segments = dev.on_device(segments.data(), segments.size(), detail::slot_segments);
    DISTILL_CUDA_LAUNCH(detail::embedding_dwte_kernel, K, 128, dev.stream(), dwte, dout, d_order, d_segments, C);
}

/// Cross-entropy with ignore_index -1, fused with its gradient (see Reference): for rows with
/// target ≥ 0, losses[n] = logsumexp(row) - row[target], dlogits[n] = (softmax - onehot) dloss;
/// others get 0. One block per row, one online log-sum-exp pass and one gradient pass. `targets`
/// in host or device memory. Returns the number of rows that count.
template <class T>
int cross_entropy_forward_backward(const Cuda& dev, T* dlogits, T* losses, const T* logits, const std::int32_t* targets,
                                   int N, int V, T dloss) {
    if (N <= 0) return 0;
    std::vector<std::int32_t> host(static_cast<std::size_t>(N));
    dev.copy(host.data(), targets, sizeof(std::int32_t) * host.size());
    int count = 0;
    for (auto t : host) count += t >= 0;
    const std::int32_t* tg = dev.on_device(host.data(), host.size(), detail::slot_index);
    DISTILL_CUDA_LAUNCH(detail::cross_entropy_kernel, N, 256, dev.stream(), dlogits, losses, logits, tg, V, dloss);
    return count;
}

/// One decoding step of attention against a KV cache (see Reference), grouped-query: for each (b, h),
/// the n = lengths[b] cached keys and values of kv head h / (H/Hkv), caches (max_batch, Hkv, Tmax,
/// hs); q from qkv(B,(H+2Hkv)hs); out(B,H·hs); scratch B·H·Tmax. `lengths` in host or device memory.
/// One block per (b, h).
template <class T>
void attention_decode(const Cuda& dev, T* out, T* scratch, const T* qkv, const T* kcache, const T* vcache,
                      const int* lengths, int B, int H, int Hkv, int hs, int Tmax) {
    if (B * H <= 0) return;
    const int* len = dev.on_device(lengths, std::size_t(B), detail::slot_misc);
    DISTILL_CUDA_LAUNCH(detail::attention_decode_kernel, B * H, 128, dev.stream(), out, scratch, qkv, kcache, vcache,
                        len, H, Hkv, hs, Tmax);
}

}  // namespace distill::device
