#pragma once
/// @file cpu/flash_attention.hpp
/// Fused causal attention on `device::Cpu` (FlashAttention-2's schedule on host threads): for each
/// (sequence, query head, tile of query rows) the key tiles up to the diagonal are streamed through
/// an online softmax (a running maximum and sum per row; the output accumulator rescaled when the
/// maximum grows), so no (T,T) score or probability buffer exists. The backward recomputes each
/// probability tile from q, k and the forward's per-row log-sum-exp. Same q|k|v layout and
/// grouped-query rule as `nn::attention_forward` (query head h reads kv head h / (H / Hkv)).
///
/// The tile products are `rowk::tile_gemm` (`cpu/isa.hpp`): a register-blocked broadcast-FMA kernel
/// on the widest vectors the CPU has, chosen at run time like the row kernels, so a build without
/// -march runs them on AVX2 or AVX-512 too; so do the tiles' exponentials and rescaling
/// (`rowk::flash_softmax_tile`, `flash_probabilities`, `flash_scores_grad`). Products against kᵀ
/// and vᵀ read a copy of k and v transposed once per call (per (sequence, kv head): hs × T, zero
/// up to a multiple of 16 keys), so every kernel streams contiguous rows. fp64 runs the same
/// schedule on Eigen's GEMM kernel (`detail::gemm_block`) and arrays. A tile is 64 query rows × 64
/// keys, so a tile of scores, the output accumulator and the q, k, v tiles (head size 64) stay in
/// L2. Work units are independent and split by a fixed rule, and no kernel's bits depend on a
/// buffer's address, so results do not depend on the thread count; there are no atomics.
///
/// Under precision::bf16 on a CPU with AMX or AVX512-BF16 the tile products are bf16 products
/// (`cpu/bf16_tiles.hpp`), as `torch.autocast` runs attention in bf16: their operands (q, k, v,
/// dout, the probabilities, dS) rounded to bf16, sums in fp32, the softmax and the other
/// elementwise steps in fp32 as above. An inference forward (no lse: a teacher's forward, a
/// prefill) always does; a training forward and its backward when there are at least as many (b,
/// kv head) pairs as threads (`trains_on_bf16_tiles`: the bf16 backward is the one-pass schedule,
/// and forward and backward must decide alike, so that the backward recomputes the forward's very
/// products). Measured at 1 thread on AMX (`bench_attention`): an inference forward 1.9-2x the fp32
/// tiles at the teacher's shape (B 8, T 256, 8 heads of 64); at the student's (`--heads 4`) the
/// training forward 2.1x, the backward 1.9x. On AVX512-BF16 (AMD EPYC, Zen 4): the inference forward
/// 1.49x / 1.58x at the teacher's / the student's shape, the training forward 1.55x, the backward
/// 1.65x. Which tiles run depends on the thread count here too.
///
/// `DISTILL_CPU_FUSED_ATTENTION` is 1 in every build (it was 0 in builds without AVX2 that link
/// oneDNN while the tiles ran on Eigen's kernel at the build's ISA); it stays for code that tests it.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "distill/detail/parallel.hpp"
#include "distill/device/cpu/bf16_tiles.hpp"
#include "distill/device/cpu/isa.hpp"
#include "distill/device/cpu/layers.hpp"

#define DISTILL_CPU_FUSED_ATTENTION 1

namespace distill::device {

namespace detail {

inline constexpr int flash_tile = 64;  // query rows and keys per tile
inline constexpr int flash_pad = 16;   // the transposed k and v padded to a multiple of this many keys

// This thread's scratch of at least n elements, kept across calls (no allocation in a steady step),
// aligned for Eigen's packets (the fp64 path: an unaligned row would have its head peeled into scalar
// code, and its bits would depend on which thread's buffer it landed in). `Slot` tells apart buffers that live at once
// on one thread (the workers' tiles, the calling thread's transposed k and v, which its own tiles read while it works
// as one of the threads).
template <class T, int Slot = 0>
T* flash_scratch(std::size_t n) {
    thread_local std::vector<T, Eigen::aligned_allocator<T>> buffer;
    if (buffer.size() < n) buffer.resize(n);
    return buffer.data();
}

inline int flash_round_up(int n) {
    return (n + flash_pad - 1) / flash_pad * flash_pad;
}

// kt (B, Hkv, hs, Tp) = the k (offset 0) or v (offset Hkv hs) columns of qkv transposed, zero for
// keys Tn..Tp; Tp = flash_round_up(Tn). Parallel over (b, kv head).
template <class T>
void flash_transpose(const Cpu& dev, cpu_isa isa, T* kt, const T* qkv, int offset, int B, int Tn, int H, int Hkv,
                     int hs) {
    const int row = (H + 2 * Hkv) * hs, Tp = flash_round_up(Tn), C = H * hs;
    distill::detail::parallel_for(dev.threads(), std::int64_t(B) * Hkv, [&](std::int64_t u) {
        const int b = static_cast<int>(u / Hkv), j = static_cast<int>(u % Hkv);
        const T* x = qkv + std::int64_t(b) * Tn * row + C + offset + j * hs;
        T* y = kt + u * hs * Tp;
        for (int d = 0; d < hs; ++d) std::fill(y + std::int64_t(d) * Tp + Tn, y + std::int64_t(d + 1) * Tp, T(0));
        if constexpr (std::is_same_v<T, float>)
            rowk::run_kernel<rowk::transpose>(isa, y, std::int64_t(Tp), x, std::int64_t(row), Tn, hs);
        else
            for (int t = 0; t < Tn; ++t)
                for (int d = 0; d < hs; ++d) y[std::int64_t(d) * Tp + t] = x[std::int64_t(t) * row + d];
    });
}

// C(M,N) = alpha op(A) B, or C += alpha op(A) B (`accumulate`); row-major A (lda; transposed when
// trans_a), B (ldb) and C (ldc). fp32: rowk::tile_gemm on the run-time ISA; fp64: Eigen's kernel.
template <class T>
void flash_gemm(cpu_isa isa, bool trans_a, int M, int N, int K, T alpha, const T* A, int lda, const T* B, int ldb, T* C,
                int ldc, bool accumulate) {
    if constexpr (std::is_same_v<T, float>) {
        rowk::run_kernel<rowk::tile_gemm>(isa, M, N, K, alpha, A, std::int64_t(trans_a ? 1 : lda),
                                          std::int64_t(trans_a ? lda : 1), B, std::int64_t(ldb), C, std::int64_t(ldc),
                                          accumulate);
    } else {
        if (!accumulate)
            for (int i = 0; i < M; ++i) std::fill_n(C + std::int64_t(i) * ldc, N, T(0));
        gemm_block<T>(trans_a, false, M, N, K, alpha, A, lda, B, ldb, C, ldc);
    }
}

// The probabilities of one tile in place: S (rows, cols, leading dimension ld) holds raw scores of
// queries i0.. against keys k0..; p = exp((s - lse_t)·scale) on and below the diagonal, 0 above.
template <class T>
void flash_probabilities(cpu_isa isa, T* S, int ld, int rows, int cols, int i0, int k0, const T* lse, T scale) {
    if constexpr (std::is_same_v<T, float>) {
        rowk::run_kernel<rowk::flash_probabilities>(isa, S, ld, rows, cols, i0, k0, lse, scale);
    } else {
        for (int r = 0; r < rows; ++r) {
            T* s = S + std::int64_t(r) * ld;
            const int n = std::clamp(i0 + r + 1 - k0, 0, cols);
            assign_unpeeled(s, n, ((ConstArray<T>(s, n) - lse[i0 + r]) * scale).exp());
            std::fill(s + n, s + cols, T(0));
        }
    }
}

// The forward's online softmax on one score tile (see rowk::flash_softmax_tile).
template <class T>
void flash_softmax_tile(cpu_isa isa, T* S, int ld, int rows, int cols, int i0, int k0, T* m, T* l, T* O, int hs,
                        T scale) {
    if constexpr (std::is_same_v<T, float>) {
        rowk::run_kernel<rowk::flash_softmax_tile>(isa, S, ld, rows, cols, i0, k0, m, l, O, hs, scale, k0 == 0);
    } else {
        for (int r = 0; r < rows; ++r) {
            T* s = S + std::int64_t(r) * ld;
            const int n = std::clamp(i0 + r + 1 - k0, 0, cols);  // keys at or before the query
            if (n > 0) {
                const ConstArray<T> p(s, n);
                const T mx = k0 == 0 ? p.maxCoeff() : std::max(m[r], p.maxCoeff());
                assign_unpeeled(s, n, ((p - mx) * scale).exp());
                const T tile_sum = sum_unpeeled(s, n);
                if (k0 == 0) {
                    l[r] = tile_sum;
                } else {
                    const T alpha = std::exp((m[r] - mx) * scale);  // rescales what earlier tiles summed
                    l[r] = l[r] * alpha + tile_sum;
                    if (alpha != T(1)) Array<T>(O + std::int64_t(r) * hs, hs) *= alpha;
                }
                m[r] = mx;
            }
            std::fill(s + n, s + cols, T(0));
        }
    }
}

// dS = P ∘ (dP − D) in place of dP (rows, cols; leading dimension ld for both).
template <class T>
void flash_scores_grad(cpu_isa isa, T* dS, const T* P, int ld, const T* D, int rows, int cols) {
    if constexpr (std::is_same_v<T, float>) {
        rowk::run_kernel<rowk::flash_scores_grad>(isa, dS, P, ld, D, rows, cols);
    } else {
        for (int r = 0; r < rows; ++r) {
            Array<T> d(dS + std::int64_t(r) * ld, cols);
            d = ConstArray<T>(P + std::int64_t(r) * ld, cols) * (d - D[r]);
        }
    }
}

/// Whether an inference forward (`flash_attention_forward` without lse) runs bf16 tile products:
/// under precision::bf16, with the row kernels on AVX-512 (not capped by DISTILL_CPU_ISA), a head
/// size that is a multiple of 32 and a CPU with AMX or AVX512-BF16 (`bf16_tiles::available`).
inline bool uses_bf16_attention(const Cpu& dev, cpu_isa isa, int hs) {
    return dev.compute_precision() == precision::bf16 && isa == cpu_isa::avx512 && hs % 32 == 0 &&
           bf16_tiles::available();
}

/// Whether a training forward (with lse) and its backward run bf16 tile products: as an inference
/// forward, and with a (sequence, kv head) pair for each thread at least, their backward's unit of work (the
/// forward and the backward decide alike, so the backward recomputes the forward's products).
inline bool trains_on_bf16_tiles(const Cpu& dev, cpu_isa isa, int hs, int B, int Hkv) {
    return uses_bf16_attention(dev, isa, hs) && std::int64_t(B) * Hkv >= dev.threads();
}

#if defined(DISTILL_BF16_TILES)
// One (b, h, query tile) of a forward on bf16 tiles: out (rows, hs; rows ldo apart) for queries
// i0.. (q: their first row, rows `row` apart). q rounded to bf16 once; S = q kᵀ and O += P v as bf16
// tile products summed in fp32; the online softmax in fp32, the fp32 path's kernel. kt: kᵀ of this
// kv head (bf16_tiles::pack_transposed), vp: its v (bf16_tiles::pack_pairs), both over Tp keys.
[[DISTILL_BF16_TARGET]] inline void flash_forward_bf16_tile(cpu_isa isa, float* out, std::int64_t ldo, float* lse,
                                                            const float* q, std::int64_t row, const std::uint32_t* kt,
                                                            const std::uint32_t* vp, std::int64_t Tp, int i0, int rows,
                                                            int hs, float scale) {
    constexpr int Bt = flash_tile;
    const int mr = (rows + 31) / 32 * 32, i1 = i0 + rows;  // tile products run over 32-row blocks
    std::uint16_t* qb = flash_scratch<std::uint16_t>(std::size_t(Bt) * (hs + Bt));
    std::uint16_t* pb = qb + Bt * hs;  // P rounded (mr, 64)
    float* S = flash_scratch<float>(std::size_t(Bt) * (Bt + hs + 2));
    float* O = S + Bt * Bt;
    float* m = O + Bt * hs;  // running raw maximum per row
    float* l = m + Bt;       // running sum of exp((s - m)·scale) per row
    bf16_tiles::round_rows(qb, hs, q, row, mr, rows, hs, hs);
    std::fill(O, O + mr * hs, 0.0f);
    std::fill(l, l + rows, 0.0f);
    bf16_tiles::configure();
    for (int k0 = 0; k0 < i1; k0 += Bt) {
        const int cols = std::min(Bt, i1 - k0), nc = (cols + 31) / 32 * 32;
        // S (mr, nc) = q_tile · k_tileᵀ (keys past Tn are zero), raw as in the fp32 path
        bf16_tiles::product(mr, nc, hs, qb, hs, reinterpret_cast<const std::uint16_t*>(kt + k0), 2 * Tp, S, Bt, false);
        rowk::run_kernel<rowk::flash_softmax_tile>(isa, S, Bt, rows, cols, i0, k0, m, l, O, hs, scale, k0 == 0);
        // O (mr, hs) += P (mr, nc) · v_tile (nc, hs), P zero past each row's keys and past `rows`
        bf16_tiles::round_rows(pb, Bt, S, Bt, mr, rows, nc, cols);
        bf16_tiles::product(mr, hs, nc, pb, Bt, reinterpret_cast<const std::uint16_t*>(vp + std::int64_t(k0 / 2) * hs),
                            2 * hs, O, hs, true);
    }
    bf16_tiles::release();
    for (int r = 0; r < rows; ++r)
        for (int d = 0; d < hs; d += 16)
            _mm512_storeu_ps(out + r * ldo + d, _mm512_div_ps(_mm512_loadu_ps(O + r * hs + d), _mm512_set1_ps(l[r])));
    if (lse)
        for (int r = 0; r < rows; ++r) lse[r] = m[r] + std::log(l[r]) / scale;
}

// flash_attention_forward on bf16 tiles (see there): k and v of each (b, kv head) packed into bf16 pairs
// once, then parallel over (b, h, query tile).
inline void flash_forward_bf16(const Cpu& dev, cpu_isa isa, float* out, float* lse, const float* qkv, int B, int Tn,
                               int H, int Hkv, int hs) {
    const int C = H * hs, row = (H + 2 * Hkv) * hs, G = H / Hkv, Bt = flash_tile, Tp = (Tn + 31) / 32 * 32;
    const int tiles = (Tn + Bt - 1) / Bt;
    const std::int64_t slab = std::int64_t(hs) * Tp / 2;  // one (b, kv head)'s packed k or v, in 32-bit pairs
    std::uint32_t* kt = flash_scratch<std::uint32_t, 1>(std::size_t(2 * B * Hkv * slab));
    std::uint32_t* vp = kt + B * Hkv * slab;
    distill::detail::parallel_for(dev.threads(), std::int64_t(B) * Hkv, [&](std::int64_t u) {
        const int b = static_cast<int>(u / Hkv), j = static_cast<int>(u % Hkv);
        const float* k = qkv + std::int64_t(b) * Tn * row + C + j * hs;
        bf16_tiles::pack_transposed(kt + u * slab, Tp, k, row, Tn, hs,
                                    flash_scratch<std::uint32_t>(std::size_t(Tn) * hs / 2));
        bf16_tiles::pack_pairs(vp + u * slab, Tp, k + Hkv * hs, row, Tn, hs);
    });
    const float scale = 1.0f / std::sqrt(float(hs));
    distill::detail::parallel_for(dev.threads(), std::int64_t(B) * H * tiles, [&](std::int64_t u) {
        const int tile = static_cast<int>(u % tiles), bh = static_cast<int>(u / tiles);
        const int b = bh / H, h = bh % H, j = h / G, i0 = tile * Bt, rows = std::min(Bt, Tn - i0);
        const std::int64_t kv = (std::int64_t(b) * Hkv + j) * slab;
        flash_forward_bf16_tile(
            isa, out + (std::int64_t(b) * Tn + i0) * C + h * hs, C, lse ? lse + std::int64_t(bh) * Tn + i0 : nullptr,
            qkv + (std::int64_t(b) * Tn + i0) * row + h * hs, row, kt + kv, vp + kv, Tp, i0, rows, hs, scale);
    });
}

// dk, dv of kv head j of sequence b (one work unit of flash_backward_bf16) and its query heads' dq,
// on bf16 tiles: every product of flash_attention_backward's one-pass schedule with bf16 operands (q,
// dout, k, v, P and scale·dS rounded) and fp32 sums; the probabilities recomputed from the
// forward's very products (the same rounded q and k), the elementwise steps the fp32 path's kernels.
// x: the sequence's qkv rows; dy: its dout rows; g: its dqkv rows; lse (G, T) and D (G, T), D_t =
// dout_t · out_t: those of the group's query heads.
[[DISTILL_BF16_TARGET]] inline void flash_backward_bf16_unit(cpu_isa isa, float* g, const float* x, const float* dy,
                                                             const float* lse, const float* D, int Tn, int H, int Hkv,
                                                             int hs, int j) {
    constexpr int Bt = flash_tile;
    const int C = H * hs, row = (H + 2 * Hkv) * hs, G = H / Hkv, Tp = (Tn + 31) / 32 * 32;
    const float scale = 1.0f / std::sqrt(float(hs));
    const std::int64_t slab = std::int64_t(hs) * Tp / 2;
    std::uint32_t* kt = flash_scratch<std::uint32_t, 2>(std::size_t((3 + 2 * G) * slab));
    std::uint32_t* vt = kt + slab;        // vᵀ in pairs along d (dP = dout vᵀ)
    std::uint32_t* kp = vt + slab;        // k in pairs of keys (dq += dS k)
    std::uint32_t* qpa = kp + slab;       // each query head's q in pairs of rows (dk += dSᵀ q)
    std::uint32_t* ypa = qpa + G * slab;  // its dout in pairs of rows (dv += Pᵀ dout)
    std::uint16_t* qba = flash_scratch<std::uint16_t, 2>(std::size_t(4 * G * slab + Bt * Bt));
    std::uint16_t* yba = qba + 2 * G * slab;  // each query head's dout rounded
    std::uint16_t* ab = yba + 2 * G * slab;   // a rounded (64, 64) operand: Pᵀ, dSᵀ, dS
    float* P = flash_scratch<float, 2>(std::size_t(3 * Bt * Bt + 3 * Bt * hs));
    float* dS = P + Bt * Bt;
    float* tr = dS + Bt * Bt;  // Pᵀ or dSᵀ (fp32)
    float* dK = tr + Bt * Bt;
    float* dV = dK + Bt * hs;
    float* dQ = dV + Bt * hs;
    const float* k = x + C + j * hs;
    bf16_tiles::pack_transposed(kt, Tp, k, row, Tn, hs, flash_scratch<std::uint32_t, 3>(std::size_t(Tn) * hs / 2));
    bf16_tiles::pack_transposed(vt, Tp, k + Hkv * hs, row, Tn, hs,
                                flash_scratch<std::uint32_t, 3>(std::size_t(Tn) * hs / 2));
    bf16_tiles::pack_pairs(kp, Tp, k, row, Tn, hs);
    for (int i = 0; i < G; ++i) {  // q and dout of the group's query heads rounded and paired once
        const float* q = x + (j * G + i) * hs;
        const float* dyh = dy + (j * G + i) * hs;
        bf16_tiles::round_rows(qba + 2 * i * slab, hs, q, row, Tp, Tn, hs, hs);
        bf16_tiles::round_rows(yba + 2 * i * slab, hs, dyh, C, Tp, Tn, hs, hs);
        bf16_tiles::pack_pairs(qpa + i * slab, Tp, q, row, Tn, hs);
        bf16_tiles::pack_pairs(ypa + i * slab, Tp, dyh, C, Tn, hs);
    }
    for (int t = 0; t < Tn; ++t) std::fill_n(g + std::int64_t(t) * row + j * G * hs, G * hs, 0.0f);
    const auto u16 = [](const std::uint32_t* p) { return reinterpret_cast<const std::uint16_t*>(p); };
    for (int k0 = 0; k0 < Tn; k0 += Bt) {
        const int cols = std::min(Bt, Tn - k0), nc = (cols + 31) / 32 * 32;
        std::fill(dK, dK + nc * hs, 0.0f);
        std::fill(dV, dV + nc * hs, 0.0f);
        for (int i = 0; i < G; ++i) {
            const int h = j * G + i;
            for (int i0 = k0; i0 < Tn; i0 += Bt) {  // query tiles at or after the key tile
                const int rows = std::min(Bt, Tn - i0), mr = (rows + 31) / 32 * 32;
                const std::uint16_t* qb = qba + 2 * i * slab + std::int64_t(i0) * hs;
                const std::uint16_t* yb = yba + 2 * i * slab + std::int64_t(i0) * hs;
                const std::uint32_t* qp = qpa + i * slab + std::int64_t(i0 / 2) * hs;
                const std::uint32_t* yp = ypa + i * slab + std::int64_t(i0 / 2) * hs;
                bf16_tiles::configure();
                // P (mr, nc) = exp(q kᵀ · scale − lse), zero above the diagonal and past rows / cols
                bf16_tiles::product(mr, nc, hs, qb, hs, u16(kt + k0), 2 * Tp, P, Bt, false);
                rowk::run_kernel<rowk::flash_probabilities>(isa, P, Bt, rows, cols, i0, k0, lse + i * Tn, scale);
                // dP (mr, nc) = dout vᵀ, then dS = P ∘ (dP − D), scaled
                bf16_tiles::product(mr, nc, hs, yb, hs, u16(vt + k0), 2 * Tp, dS, Bt, false);
                rowk::run_kernel<rowk::flash_scores_grad>(isa, dS, P, Bt, D + i * Tn + i0, rows, cols);
                for (int r = 0; r < rows; ++r)
                    for (int c = 0; c < nc; ++c) dS[r * Bt + c] *= scale;
                // dv (nc, hs) += Pᵀ dout
                rowk::transpose::run<rowk::vec<64>>(tr, Bt, P, Bt, mr, nc);
                bf16_tiles::round_rows(ab, Bt, tr, Bt, nc, nc, mr, mr);
                bf16_tiles::product(nc, hs, mr, ab, Bt, u16(yp), 2 * hs, dV, hs, true);
                // dk (nc, hs) += (scale dS)ᵀ q
                rowk::transpose::run<rowk::vec<64>>(tr, Bt, dS, Bt, mr, nc);
                bf16_tiles::round_rows(ab, Bt, tr, Bt, nc, nc, mr, mr);
                bf16_tiles::product(nc, hs, mr, ab, Bt, u16(qp), 2 * hs, dK, hs, true);
                // dq (rows, hs) += (scale dS) k
                bf16_tiles::round_rows(ab, Bt, dS, Bt, mr, rows, nc, nc);
                bf16_tiles::product(mr, hs, nc, ab, Bt, u16(kp + std::int64_t(k0 / 2) * hs), 2 * hs, dQ, hs, false);
                bf16_tiles::release();
                float* gq = g + std::int64_t(i0) * row + h * hs;
                for (int r = 0; r < rows; ++r)
                    for (int d = 0; d < hs; ++d) gq[std::int64_t(r) * row + d] += dQ[r * hs + d];
            }
        }
        for (int c = 0; c < cols; ++c) {
            std::copy(dK + c * hs, dK + (c + 1) * hs, g + std::int64_t(k0 + c) * row + C + j * hs);
            std::copy(dV + c * hs, dV + (c + 1) * hs, g + std::int64_t(k0 + c) * row + C + Hkv * hs + j * hs);
        }
    }
}
#endif

}  // namespace detail

/// Fused causal attention forward. qkv(B,T,(H+2Hkv)hs) as `nn::attention_forward`;
/// out(B,T,H*hs) = softmax(q kᵀ / √hs + causal mask) v. `lse` (B,H,T, may be null: inference) gets
/// each row's log-sum-exp of the scaled scores divided by the scale (m + log(l)/scale with m the raw
/// row maximum), which `flash_attention_backward` reads. Parallel over (b, h, query tile).
template <class T>
void flash_attention_forward(const Cpu& dev, T* out, T* lse, const T* qkv, int B, int Tn, int H, int Hkv, int hs) {
    using namespace detail;
    const int C = H * hs, row = (H + 2 * Hkv) * hs, G = H / Hkv, Bt = flash_tile, Tp = flash_round_up(Tn);
    const T scale = T(1) / std::sqrt(T(hs));
    const int tiles = (Tn + Bt - 1) / Bt;
    const cpu_isa isa = row_kernel_isa();
#if defined(DISTILL_BF16_TILES)
    if constexpr (std::is_same_v<T, float>)
        if (lse ? trains_on_bf16_tiles(dev, isa, hs, B, Hkv) : uses_bf16_attention(dev, isa, hs))
            return flash_forward_bf16(dev, isa, out, lse, qkv, B, Tn, H, Hkv, hs);
#endif
    T* kt = flash_scratch<T, 1>(std::size_t(B) * Hkv * hs * Tp);  // kᵀ per (b, kv head)
    flash_transpose(dev, isa, kt, qkv, 0, B, Tn, H, Hkv, hs);
    distill::detail::parallel_for(dev.threads(), std::int64_t(B) * H * tiles, [&](std::int64_t u) {
        const int tile = static_cast<int>(u % tiles), bh = static_cast<int>(u / tiles);
        const int b = bh / H, h = bh % H, j = h / G;
        const int i0 = tile * Bt, rows = std::min(Bt, Tn - i0), i1 = i0 + rows;
        const T* x = qkv + std::int64_t(b) * Tn * row;
        const T* q = x + std::int64_t(i0) * row + h * hs;
        const T* ktj = kt + (std::int64_t(b) * Hkv + j) * hs * Tp;
        const T* v = x + C + Hkv * hs + j * hs;
        T* S = flash_scratch<T>(std::size_t(Bt) * (Bt + hs + 2));
        T* O = S + Bt * Bt;
        T* m = O + Bt * hs;  // running raw maximum per row
        T* l = m + Bt;       // running sum of exp((s - m)·scale) per row
        std::fill(O, O + rows * hs, T(0));
        std::fill(l, l + rows, T(0));
        for (int k0 = 0; k0 < i1; k0 += Bt) {
            const int cols = std::min(Bt, i1 - k0);
            // S (rows,cols) = q_tile · k_tileᵀ, raw: scaled after the maximum, as causal_softmax_forward
            flash_gemm<T>(isa, false, rows, flash_round_up(cols), hs, T(1), q, row, ktj + k0, Tp, S, Bt, false);
            flash_softmax_tile<T>(isa, S, Bt, rows, cols, i0, k0, m, l, O, hs, scale);
            // O (rows,hs) += P (rows,cols) · v_tile (cols,hs)
            flash_gemm<T>(isa, false, rows, hs, cols, T(1), S, Bt, v + std::int64_t(k0) * row, row, O, hs, true);
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
    const int C = H * hs, row = (H + 2 * Hkv) * hs, G = H / Hkv, Bt = flash_tile, Tp = flash_round_up(Tn);
    const T scale = T(1) / std::sqrt(T(hs));
    const int tiles = (Tn + Bt - 1) / Bt;
    const cpu_isa isa = row_kernel_isa();
#if defined(DISTILL_BF16_TILES)
    if constexpr (std::is_same_v<T, float>)
        if (trains_on_bf16_tiles(dev, isa, hs, B, Hkv)) {  // one pass, a (b, kv head) pair per work unit
            distill::detail::parallel_for(dev.threads(), std::int64_t(B) * Hkv, [&](std::int64_t u) {
                const int b = static_cast<int>(u / Hkv), j = static_cast<int>(u % Hkv);
                // D_t of each query head of the group, from the rounded dout the products read (so a row's
                // dS = P ∘ (dP − D) sums to zero as in exact arithmetic)
                T* D = flash_scratch<T, 3>(std::size_t(G) * Tn);
                for (int r = 0; r < Tn; ++r)
                    for (int i = 0; i < G; ++i) {
                        const std::int64_t o = (std::int64_t(b) * Tn + r) * C + (j * G + i) * hs;
                        D[std::int64_t(i) * Tn + r] = bf16_tiles::rounded_dot(dout + o, out + o, hs);
                    }
                flash_backward_bf16_unit(isa, dqkv + std::int64_t(b) * Tn * row, qkv + std::int64_t(b) * Tn * row,
                                         dout + std::int64_t(b) * Tn * C, lse + std::int64_t(b) * H * Tn + j * G * Tn,
                                         D, Tn, H, Hkv, hs, j);
            });
            return;
        }
#endif
    const std::int64_t slab = std::int64_t(hs) * Tp;  // one (b, kv head)'s kᵀ or vᵀ
    T* kt = flash_scratch<T, 1>(std::size_t(2) * B * Hkv * slab);
    T* vt = kt + std::int64_t(B) * Hkv * slab;
    flash_transpose(dev, isa, kt, qkv, 0, B, Tn, H, Hkv, hs);
    flash_transpose(dev, isa, vt, qkv, Hkv * hs, B, Tn, H, Hkv, hs);
    // D (rows) of query head h, rows i0..: D_t = dout_t · out_t
    auto row_dots = [&](T* D, int b, int h, int i0, int rows) {
        for (int r = 0; r < rows; ++r) {
            const std::int64_t o = (std::int64_t(b) * Tn + i0 + r) * C + h * hs;
            D[r] = (ConstArray<T>(dout + o, hs) * ConstArray<T>(out + o, hs)).sum();
        }
    };
    // P (rows,cols) = exp(q_tile · k_tileᵀ · scale − lse) on and below the diagonal (k_tileᵀ: ktj + k0)
    auto probabilities = [&](T* P, const T* q, const T* ktj, const T* lse_h, int i0, int k0, int rows, int cols) {
        flash_gemm<T>(isa, false, rows, flash_round_up(cols), hs, T(1), q, row, ktj + k0, Tp, P, Bt, false);
        flash_probabilities<T>(isa, P, Bt, rows, cols, i0, k0, lse_h, scale);
    };
    // dP (rows,cols) = dout_tile · v_tileᵀ, then dS = P ∘ (dP − D) in place
    auto scores_grad = [&](T* dS, const T* P, const T* D, const T* dy, const T* vtj, int k0, int rows, int cols) {
        flash_gemm<T>(isa, false, rows, flash_round_up(cols), hs, T(1), dy, C, vtj + k0, Tp, dS, Bt, false);
        flash_scores_grad<T>(isa, dS, P, Bt, D, rows, cols);
    };
    if (std::int64_t(B) * Hkv >= 4 * std::int64_t(dev.threads())) {
        distill::detail::parallel_for(dev.threads(), std::int64_t(B) * Hkv, [&](std::int64_t u) {
            const int b = static_cast<int>(u / Hkv), j = static_cast<int>(u % Hkv);
            const T* x = qkv + std::int64_t(b) * Tn * row;
            const T* ktj = kt + u * slab;
            const T* vtj = vt + u * slab;
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
                for (int i = 0; i < G; ++i) {
                    const int h = j * G + i;
                    for (int i0 = k0; i0 < Tn; i0 += Bt) {  // query tiles at or after the key tile
                        const int rows = std::min(Bt, Tn - i0);
                        const T* q = x + std::int64_t(i0) * row + h * hs;
                        const T* dy = dout + (std::int64_t(b) * Tn + i0) * C + h * hs;
                        const bool first = i == 0 && i0 == k0;  // dK, dV of this key tile start here
                        probabilities(P, q, ktj, lse + (std::int64_t(b) * H + h) * Tn, i0, k0, rows, cols);
                        flash_gemm<T>(isa, true, cols, hs, rows, T(1), P, Bt, dy, C, dV, hs, !first);  // dV += Pᵀ dout
                        scores_grad(dS, P, D + std::int64_t(i) * Tn + i0, dy, vtj, k0, rows, cols);
                        flash_gemm<T>(isa, true, cols, hs, rows, scale, dS, Bt, q, row, dK, hs,
                                      !first);  // dK += scale dSᵀ q
                        flash_gemm<T>(isa, false, rows, hs, cols, scale, dS, Bt, k, row,
                                      g + std::int64_t(i0) * row + h * hs, row, true);  // dq += scale dS k
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
        const T* ktj = kt + bj * slab;
        const T* vtj = vt + bj * slab;
        T* P = flash_scratch<T>(std::size_t(Bt) * (2 * Bt + 2 * hs + 1));
        T* dS = P + Bt * Bt;
        T* dK = dS + Bt * Bt;
        T* dV = dK + Bt * hs;
        T* D = dV + Bt * hs;
        for (int h = j * G; h < (j + 1) * G; ++h)
            for (int i0 = k0; i0 < Tn; i0 += Bt) {  // query tiles at or after the key tile
                const int rows = std::min(Bt, Tn - i0);
                const T* q = x + std::int64_t(i0) * row + h * hs;
                const T* dy = dout + (std::int64_t(b) * Tn + i0) * C + h * hs;
                const bool first = h == j * G && i0 == k0;
                probabilities(P, q, ktj, lse + (std::int64_t(b) * H + h) * Tn, i0, k0, rows, cols);
                flash_gemm<T>(isa, true, cols, hs, rows, T(1), P, Bt, dy, C, dV, hs, !first);  // dV += Pᵀ dout
                row_dots(D, b, h, i0, rows);
                scores_grad(dS, P, D, dy, vtj, k0, rows, cols);
                flash_gemm<T>(isa, true, cols, hs, rows, scale, dS, Bt, q, row, dK, hs, !first);  // dK += scale dSᵀ q
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
        const T* ktj = kt + (std::int64_t(b) * Hkv + j) * slab;
        const T* vtj = vt + (std::int64_t(b) * Hkv + j) * slab;
        T* P = flash_scratch<T>(std::size_t(Bt) * (2 * Bt + hs + 1));
        T* dS = P + Bt * Bt;
        T* dQ = dS + Bt * Bt;
        T* D = dQ + Bt * hs;
        row_dots(D, b, h, i0, rows);
        for (int k0 = 0; k0 < i1; k0 += Bt) {
            const int cols = std::min(Bt, i1 - k0);
            const T* k = x + std::int64_t(k0) * row + C + j * hs;
            probabilities(P, q, ktj, lse + std::int64_t(bh) * Tn, i0, k0, rows, cols);
            scores_grad(dS, P, D, dy, vtj, k0, rows, cols);
            flash_gemm<T>(isa, false, rows, hs, cols, scale, dS, Bt, k, row, dQ, hs, k0 > 0);  // dQ += scale dS k
        }
        T* g = dqkv + (std::int64_t(b) * Tn + i0) * row + h * hs;
        for (int r = 0; r < rows; ++r) std::copy(dQ + r * hs, dQ + (r + 1) * hs, g + std::int64_t(r) * row);
    });
}

}  // namespace distill::device
