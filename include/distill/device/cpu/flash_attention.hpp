#pragma once
/// @file cpu/flash_attention.hpp
/// Fused causal attention on `device::Cpu` (FlashAttention-2's schedule on host threads): for each
/// (sequence, query head, tile of query rows) the key tiles up to the diagonal are streamed through
/// an online softmax (a running maximum and sum per row; the output accumulator rescaled when the
/// maximum grows), so no (T,T) score or probability buffer exists. The backward recomputes each
/// probability tile from q, k and the forward's per-row log-sum-exp. Same q|k|v layout and
/// grouped-query rule as `nn::attention_forward` (query head h reads kv head h / (H / Hkv)).
///
/// The tile products go through Eigen's GEMM kernel on this thread's packing buffers
/// (`detail::gemm_block`); a tile is 64 query rows × 64 keys, so a tile of scores, the output
/// accumulator and the q, k, v tiles (head size 64) stay in L2. Work units are independent and split
/// by a fixed rule, so results do not depend on the thread count; there are no atomics.
///
/// Declared only where they pay (`DISTILL_CPU_FUSED_ATTENTION` is then 1): Eigen's kernels compiled
/// for AVX2 or more, or no oneDNN. A build without AVX2 that links oneDNN runs the unfused path's
/// products as batched oneDNN matmuls on the host's ISA, and there the fused tiles on Eigen's SSE2
/// kernel measured 2-5x slower (bench_attention); without the kernels `device::fused_attention_device`
/// is false and the models keep the unfused path.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "distill/detail/parallel.hpp"
#include "distill/device/cpu/layers.hpp"

#if defined(__AVX2__) || !defined(DISTILL_WITH_DNNL)
#define DISTILL_CPU_FUSED_ATTENTION 1
#else
#define DISTILL_CPU_FUSED_ATTENTION 0
#endif

#if DISTILL_CPU_FUSED_ATTENTION
namespace distill::device {

namespace detail {

inline constexpr int flash_tile = 64;  // query rows and keys per tile

// This thread's scratch of at least n elements, kept across calls (no allocation in a steady step),
// aligned for Eigen's packets: an unaligned row would have its head peeled into scalar code (std::exp,
// other FMA contraction), and its bits would depend on which thread's buffer it landed in.
template <class T>
T* flash_scratch(std::size_t n) {
    thread_local std::vector<T, Eigen::aligned_allocator<T>> buffer;
    if (buffer.size() < n) buffer.resize(n);
    return buffer.data();
}

// The probabilities of one tile in place: S (rows, cols, leading dimension ld) holds raw scores of
// queries i0.. against keys k0..; p = exp((s - lse_t)·scale) on and below the diagonal, 0 above.
template <class T>
void flash_probabilities(T* S, int ld, int rows, int cols, int i0, int k0, const T* lse, T scale) {
    for (int r = 0; r < rows; ++r) {
        T* s = S + std::int64_t(r) * ld;
        const int n = std::clamp(i0 + r + 1 - k0, 0, cols);
        Array<T> p(s, n);
        p = ((p - lse[i0 + r]) * scale).exp();
        std::fill(s + n, s + cols, T(0));
    }
}

}  // namespace detail

/// Fused causal attention forward. qkv(B,T,(H+2Hkv)hs) as `nn::attention_forward`;
/// out(B,T,H*hs) = softmax(q kᵀ / √hs + causal mask) v. `lse` (B,H,T, may be null: inference) gets
/// each row's log-sum-exp of the scaled scores divided by the scale (m + log(l)/scale with m the raw
/// row maximum), which `flash_attention_backward` reads. Parallel over (b, h, query tile).
template <class T>
void flash_attention_forward(const Cpu& dev, T* out, T* lse, const T* qkv, int B, int Tn, int H, int Hkv, int hs) {
    using namespace detail;
    const int C = H * hs, row = (H + 2 * Hkv) * hs, G = H / Hkv, Bt = flash_tile;
    const T scale = T(1) / std::sqrt(T(hs));
    const int tiles = (Tn + Bt - 1) / Bt;
    distill::detail::parallel_for(dev.threads(), std::int64_t(B) * H * tiles, [&](std::int64_t u) {
        const int tile = static_cast<int>(u % tiles), bh = static_cast<int>(u / tiles);
        const int b = bh / H, h = bh % H, j = h / G;
        const int i0 = tile * Bt, rows = std::min(Bt, Tn - i0), i1 = i0 + rows;
        const T* x = qkv + std::int64_t(b) * Tn * row;
        const T* q = x + std::int64_t(i0) * row + h * hs;
        const T* k = x + C + j * hs;
        const T* v = x + C + Hkv * hs + j * hs;
        T* S = flash_scratch<T>(std::size_t(Bt) * (Bt + hs + 2));
        T* O = S + Bt * Bt;
        T* m = O + Bt * hs;  // running raw maximum per row
        T* l = m + Bt;       // running sum of exp((s - m)·scale) per row
        std::fill(O, O + rows * hs, T(0));
        std::fill(l, l + rows, T(0));
        for (int k0 = 0; k0 < i1; k0 += Bt) {
            const int cols = std::min(Bt, i1 - k0);
            std::fill(S, S + rows * Bt, T(0));
            // S (rows,cols) = q_tile · k_tileᵀ, raw: scaled after the maximum, as causal_softmax_forward
            gemm_block<T>(false, true, rows, cols, hs, T(1), q, row, k + std::int64_t(k0) * row, row, S, Bt);
            for (int r = 0; r < rows; ++r) {
                T* s = S + std::int64_t(r) * Bt;
                const int n = std::clamp(i0 + r + 1 - k0, 0, cols);  // keys at or before the query
                if (n > 0) {
                    Array<T> p(s, n);
                    const T mx = k0 == 0 ? p.maxCoeff() : std::max(m[r], p.maxCoeff());
                    p = ((p - mx) * scale).exp();
                    if (k0 == 0) {
                        l[r] = p.sum();
                    } else {
                        const T alpha = std::exp((m[r] - mx) * scale);  // rescales what earlier tiles summed
                        l[r] = l[r] * alpha + p.sum();
                        if (alpha != T(1)) Array<T>(O + std::int64_t(r) * hs, hs) *= alpha;
                    }
                    m[r] = mx;
                }
                std::fill(s + n, s + cols, T(0));
            }
            // O (rows,hs) += P (rows,cols) · v_tile (cols,hs)
            gemm_block<T>(false, false, rows, hs, cols, T(1), S, Bt, v + std::int64_t(k0) * row, row, O, hs);
        }
        for (int r = 0; r < rows; ++r) {
            const int t = i0 + r;
            Array<T>(out + (std::int64_t(b) * Tn + t) * C + h * hs, hs) =
                ConstArray<T>(O + std::int64_t(r) * hs, hs) / l[r];
            if (lse) lse[std::int64_t(bh) * Tn + t] = m[r] + std::log(l[r]) / scale;
        }
    });
}

/// Fused causal attention backward from dout(B,T,H*hs), the forward's qkv, out and lse: dqkv
/// (B,T,(H+2Hkv)hs), overwritten. With P = exp(s·scale − lse), D_t = dout_t · out_t: dv += Pᵀ dout,
/// dS = P ∘ (dout vᵀ − D), dk += scale dSᵀ q, dq += scale dS k. With at least 4 (b, kv head) pairs
/// per thread, one pass, a pair per work unit (it alone writes the dq, dk, dv of its heads): each
/// probability tile is computed once. With fewer, two passes that recompute the tiles but split
/// finer: over (b, kv head, key tile) for dk and dv (summing the group's query heads), then over
/// (b, h, query tile) for dq. A fixed thread count gives bit-identical results; two thread counts
/// that pick the same schedule give the same ones too.
template <class T>
void flash_attention_backward(const Cpu& dev, T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse, int B,
                              int Tn, int H, int Hkv, int hs) {
    using namespace detail;
    const int C = H * hs, row = (H + 2 * Hkv) * hs, G = H / Hkv, Bt = flash_tile;
    const T scale = T(1) / std::sqrt(T(hs));
    const int tiles = (Tn + Bt - 1) / Bt;
    // D (rows) of query head h, rows i0..: D_t = dout_t · out_t
    auto row_dots = [&](T* D, int b, int h, int i0, int rows) {
        for (int r = 0; r < rows; ++r) {
            const std::int64_t o = (std::int64_t(b) * Tn + i0 + r) * C + h * hs;
            D[r] = (ConstArray<T>(dout + o, hs) * ConstArray<T>(out + o, hs)).sum();
        }
    };
    // dP (rows,cols) = dout_tile · v_tileᵀ, then dS = P ∘ (dP − D) in place
    auto scores_grad = [&](T* dS, const T* P, const T* D, const T* dy, const T* v, int rows, int cols) {
        std::fill(dS, dS + rows * Bt, T(0));
        gemm_block<T>(false, true, rows, cols, hs, T(1), dy, C, v, row, dS, Bt);
        for (int r = 0; r < rows; ++r) {
            Array<T> d(dS + std::int64_t(r) * Bt, cols);
            d = ConstArray<T>(P + std::int64_t(r) * Bt, cols) * (d - D[r]);
        }
    };
    if (std::int64_t(B) * Hkv >= 4 * std::int64_t(dev.threads())) {
        distill::detail::parallel_for(dev.threads(), std::int64_t(B) * Hkv, [&](std::int64_t u) {
            const int b = static_cast<int>(u / Hkv), j = static_cast<int>(u % Hkv);
            const T* x = qkv + std::int64_t(b) * Tn * row;
            T* g = dqkv + std::int64_t(b) * Tn * row;
            T* P = flash_scratch<T>(std::size_t(Bt) * (2 * Bt + 2 * hs) + std::size_t(G) * Tn);
            T* dS = P + Bt * Bt;
            T* dK = dS + Bt * Bt;
            T* dV = dK + Bt * hs;
            T* D = dV + Bt * hs;  // (G,T): D_t of each query head of the group
            for (int i = 0; i < G; ++i) row_dots(D + std::int64_t(i) * Tn, b, j * G + i, 0, Tn);
            for (int t = 0; t < Tn; ++t) std::fill_n(g + std::int64_t(t) * row + j * G * hs, G * hs, T(0));
            for (int k0 = 0; k0 < Tn; k0 += Bt) {
                const int cols = std::min(Bt, Tn - k0);
                const T* k = x + std::int64_t(k0) * row + C + j * hs;
                const T* v = x + std::int64_t(k0) * row + C + Hkv * hs + j * hs;
                std::fill(dK, dK + cols * hs, T(0));
                std::fill(dV, dV + cols * hs, T(0));
                for (int i = 0; i < G; ++i) {
                    const int h = j * G + i;
                    for (int i0 = k0; i0 < Tn; i0 += Bt) {  // query tiles at or after the key tile
                        const int rows = std::min(Bt, Tn - i0);
                        const T* q = x + std::int64_t(i0) * row + h * hs;
                        const T* dy = dout + (std::int64_t(b) * Tn + i0) * C + h * hs;
                        std::fill(P, P + rows * Bt, T(0));
                        gemm_block<T>(false, true, rows, cols, hs, T(1), q, row, k, row, P, Bt);
                        flash_probabilities(P, Bt, rows, cols, i0, k0, lse + (std::int64_t(b) * H + h) * Tn, scale);
                        gemm_block<T>(true, false, cols, hs, rows, T(1), P, Bt, dy, C, dV, hs);  // dV += Pᵀ dout
                        scores_grad(dS, P, D + std::int64_t(i) * Tn + i0, dy, v, rows, cols);
                        gemm_block<T>(true, false, cols, hs, rows, scale, dS, Bt, q, row, dK, hs);  // dK += scale dSᵀ q
                        gemm_block<T>(false, false, rows, hs, cols, scale, dS, Bt, k, row,
                                      g + std::int64_t(i0) * row + h * hs, row);  // dq += scale dS k
                    }
                }
                for (int c = 0; c < cols; ++c) {
                    std::copy(dK + c * hs, dK + (c + 1) * hs, g + std::int64_t(k0 + c) * row + C + j * hs);
                    std::copy(dV + c * hs, dV + (c + 1) * hs, g + std::int64_t(k0 + c) * row + C + Hkv * hs + j * hs);
                }
            }
        });
        return;
    }
    // pass 1: dk, dv of kv head j for keys [k0, k0 + cols)
    distill::detail::parallel_for(dev.threads(), std::int64_t(B) * Hkv * tiles, [&](std::int64_t u) {
        const int tile = static_cast<int>(u % tiles), bj = static_cast<int>(u / tiles);
        const int b = bj / Hkv, j = bj % Hkv;
        const int k0 = tile * Bt, cols = std::min(Bt, Tn - k0);
        const T* x = qkv + std::int64_t(b) * Tn * row;
        const T* k = x + std::int64_t(k0) * row + C + j * hs;
        const T* v = x + std::int64_t(k0) * row + C + Hkv * hs + j * hs;
        T* P = flash_scratch<T>(std::size_t(Bt) * (2 * Bt + 2 * hs + 1));
        T* dS = P + Bt * Bt;
        T* dK = dS + Bt * Bt;
        T* dV = dK + Bt * hs;
        T* D = dV + Bt * hs;
        std::fill(dK, dK + cols * hs, T(0));
        std::fill(dV, dV + cols * hs, T(0));
        for (int h = j * G; h < (j + 1) * G; ++h)
            for (int i0 = k0; i0 < Tn; i0 += Bt) {  // query tiles at or after the key tile
                const int rows = std::min(Bt, Tn - i0);
                const T* q = x + std::int64_t(i0) * row + h * hs;
                const T* dy = dout + (std::int64_t(b) * Tn + i0) * C + h * hs;
                std::fill(P, P + rows * Bt, T(0));
                gemm_block<T>(false, true, rows, cols, hs, T(1), q, row, k, row, P, Bt);
                flash_probabilities(P, Bt, rows, cols, i0, k0, lse + (std::int64_t(b) * H + h) * Tn, scale);
                gemm_block<T>(true, false, cols, hs, rows, T(1), P, Bt, dy, C, dV, hs);  // dV += Pᵀ dout
                row_dots(D, b, h, i0, rows);
                scores_grad(dS, P, D, dy, v, rows, cols);
                gemm_block<T>(true, false, cols, hs, rows, scale, dS, Bt, q, row, dK, hs);  // dK += scale dSᵀ q
            }
        T* g = dqkv + std::int64_t(b) * Tn * row + std::int64_t(k0) * row;
        for (int c = 0; c < cols; ++c) {
            std::copy(dK + c * hs, dK + (c + 1) * hs, g + std::int64_t(c) * row + C + j * hs);
            std::copy(dV + c * hs, dV + (c + 1) * hs, g + std::int64_t(c) * row + C + Hkv * hs + j * hs);
        }
    });
    // pass 2: dq of query head h for rows [i0, i0 + rows)
    distill::detail::parallel_for(dev.threads(), std::int64_t(B) * H * tiles, [&](std::int64_t u) {
        const int tile = static_cast<int>(u % tiles), bh = static_cast<int>(u / tiles);
        const int b = bh / H, h = bh % H, j = h / G;
        const int i0 = tile * Bt, rows = std::min(Bt, Tn - i0), i1 = i0 + rows;
        const T* x = qkv + std::int64_t(b) * Tn * row;
        const T* q = x + std::int64_t(i0) * row + h * hs;
        const T* dy = dout + (std::int64_t(b) * Tn + i0) * C + h * hs;
        T* P = flash_scratch<T>(std::size_t(Bt) * (2 * Bt + hs + 1));
        T* dS = P + Bt * Bt;
        T* dQ = dS + Bt * Bt;
        T* D = dQ + Bt * hs;
        std::fill(dQ, dQ + rows * hs, T(0));
        row_dots(D, b, h, i0, rows);
        for (int k0 = 0; k0 < i1; k0 += Bt) {
            const int cols = std::min(Bt, i1 - k0);
            const T* k = x + std::int64_t(k0) * row + C + j * hs;
            const T* v = x + std::int64_t(k0) * row + C + Hkv * hs + j * hs;
            std::fill(P, P + rows * Bt, T(0));
            gemm_block<T>(false, true, rows, cols, hs, T(1), q, row, k, row, P, Bt);
            flash_probabilities(P, Bt, rows, cols, i0, k0, lse + std::int64_t(bh) * Tn, scale);
            scores_grad(dS, P, D, dy, v, rows, cols);
            gemm_block<T>(false, false, rows, hs, cols, scale, dS, Bt, k, row, dQ, hs);  // dQ += scale dS k
        }
        T* g = dqkv + (std::int64_t(b) * Tn + i0) * row + h * hs;
        for (int r = 0; r < rows; ++r) std::copy(dQ + r * hs, dQ + (r + 1) * hs, g + std::int64_t(r) * row);
    });
}

}  // namespace distill::device
#endif  // DISTILL_CPU_FUSED_ATTENTION
