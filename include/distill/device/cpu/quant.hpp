#pragma once
/// @file cpu/quant.hpp
/// `device::Cpu`'s weight-only quantized matrix product for generation (batch-1 GEMV and small
/// batches): the weights stay in ggml blocks in memory (Q8_0 is 1.06 bytes per weight, Q4_0 0.56,
/// Q4_K 0.56, against 4 for fp32), and each tile of 4 weight rows is dequantized once into a
/// per-thread scratch that stays in L1/L2, then multiplied with fp32 activations through the vector
/// shim (`device/simd.hpp`: AVX-512, AVX, SSE2 or scalar, as the build targets) with 2 × 4
/// independent accumulators. Threads split the weight rows (tiles of 4). Every output element is
/// computed by the same instructions in the same order whichever thread runs it, so the result is
/// the same for every thread count.
///
/// For large m (a long prefill) dequantizing the whole matrix and calling `gemm` is faster; this
/// kernel is for the m ≤ a few rows of decoding.

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "distill/detail/parallel.hpp"
#include "distill/device/cpu/layers.hpp"
#include "distill/device/simd.hpp"
#include "distill/io/quant.hpp"

namespace distill::device {

namespace detail {

/// Weight rows dequantized together: 4 rows × 2 activation rows = 8 accumulators, which hides the
/// FMA latency and fits the 16 vector registers of AVX2 with the operands.
inline constexpr int quant_tile_rows = 4;
/// Activation rows per micro-kernel call.
inline constexpr int quant_tile_inputs = 2;
/// Below this many multiply-adds one thread does the product (waking a team costs more).
inline constexpr std::int64_t quant_min_parallel_work = std::int64_t(1) << 18;

/// Dequantizes one weight row of k elements of type `t` (not F32) into `out`. Unlike
/// `quant::dequantize_row`, which keeps ggml's rounding bit for bit, these loops let the compiler
/// vectorize and fuse (Q4_K's d·q − m may become an FMA): the product only needs fp32 accuracy.
inline void dequantize_row_fast(quant::type t, const std::byte* row, std::int64_t k, float* out) {
    switch (t) {
        case quant::type::Q8_0:
            for (std::int64_t b = 0; b < k / quant::qk8_0; ++b, out += quant::qk8_0) {
                quant::block_q8_0 blk;
                std::memcpy(&blk, row + b * std::int64_t(sizeof blk), sizeof blk);
                const float d = quant::fp16_to_fp32(blk.d);
                for (int j = 0; j < quant::qk8_0; ++j) out[j] = static_cast<float>(blk.qs[j]) * d;
            }
            return;
        case quant::type::Q4_0:
            for (std::int64_t b = 0; b < k / quant::qk4_0; ++b, out += quant::qk4_0) {
                quant::block_q4_0 blk;
                std::memcpy(&blk, row + b * std::int64_t(sizeof blk), sizeof blk);
                const float d = quant::fp16_to_fp32(blk.d);
                for (int j = 0; j < quant::qk4_0 / 2; ++j) {
                    out[j] = static_cast<float>((blk.qs[j] & 0xF) - 8) * d;
                    out[j + quant::qk4_0 / 2] = static_cast<float>((blk.qs[j] >> 4) - 8) * d;
                }
            }
            return;
        case quant::type::Q4_K:
            for (std::int64_t b = 0; b < k / quant::qk_k; ++b, out += quant::qk_k) {
                quant::block_q4_K blk;
                std::memcpy(&blk, row + b * std::int64_t(sizeof blk), sizeof blk);
                const float d = quant::fp16_to_fp32(blk.d), dmin = quant::fp16_to_fp32(blk.dmin);
                for (int s = 0; s < 8; ++s) {  // sub-block s: nibble half s % 2 of byte group s / 2
                    std::uint8_t sc, m;
                    quant::detail::scale_min_k4(s, blk.scales, sc, m);
                    const float ds = d * sc, ms = dmin * m;
                    const std::uint8_t* q = blk.qs + 32 * (s / 2);
                    const int shift = 4 * (s % 2);
                    float* o = out + 32 * s;
                    for (int l = 0; l < 32; ++l) o[l] = ds * static_cast<float>((q[l] >> shift) & 0xF) - ms;
                }
            }
            return;
        case quant::type::F16:
            for (std::int64_t i = 0; i < k; ++i) {
                std::uint16_t h;
                std::memcpy(&h, row + 2 * i, 2);
                out[i] = quant::fp16_to_fp32(h);
            }
            return;
        case quant::type::BF16:
            for (std::int64_t i = 0; i < k; ++i) {
                std::uint16_t h;
                std::memcpy(&h, row + 2 * i, 2);
                out[i] = std::bit_cast<float>(std::uint32_t(h) << 16);
            }
            return;
        case quant::type::F32:
            break;  // read in place
    }
}

/// The lanes of `v` added in lane order.
template <class V>
float horizontal_sum(typename V::type v) noexcept {
    float lanes[V::width];
    V::store(lanes, v);
    float s = 0;
    for (float l : lanes) s += l;
    return s;
}

/// y(RX, RW) = x(RX, k) · w(RW, k)ᵀ, rows of x `k` apart, rows of y `ldy` apart, weight row b at
/// `w[b]`: RW·RX vector accumulators over the whole of k, then a scalar tail for k % width.
template <int RW, int RX>
void quant_dot_tile(const float* const* w, const float* x, std::int64_t k, float* y, std::int64_t ldy) noexcept {
    using V = simd<float>;
    constexpr int W = V::width;
    typename V::type acc[RX][RW];
    for (auto& row : acc)
        for (auto& a : row) a = V::set1(0.0f);
    const std::int64_t kv = k / W * W;
    for (std::int64_t c = 0; c < kv; c += W) {
        typename V::type xv[RX];
        for (int r = 0; r < RX; ++r) xv[r] = V::load(x + r * k + c);
        for (int b = 0; b < RW; ++b) {
            const typename V::type wv = V::load(w[b] + c);
            for (int r = 0; r < RX; ++r) acc[r][b] = V::add(acc[r][b], V::mul(xv[r], wv));
        }
    }
    for (int r = 0; r < RX; ++r)
        for (int b = 0; b < RW; ++b) {
            float s = horizontal_sum<V>(acc[r][b]);
            for (std::int64_t c = kv; c < k; ++c) s += x[r * k + c] * w[b][c];
            y[r * ldy + b] = s;
        }
}

/// `quant_dot_tile` for `rw` (1..4) weight rows and `rx` (1..2) activation rows.
inline void quant_dot(int rw, int rx, const float* const* w, const float* x, std::int64_t k, float* y,
                      std::int64_t ldy) noexcept {
    auto with = [&]<int RW>() {
        if (rx == 2)
            quant_dot_tile<RW, 2>(w, x, k, y, ldy);
        else
            quant_dot_tile<RW, 1>(w, x, k, y, ldy);
    };
    switch (rw) {
        case 4:
            return with.template operator()<4>();
        case 3:
            return with.template operator()<3>();
        case 2:
            return with.template operator()<2>();
        default:
            return with.template operator()<1>();
    }
}

}  // namespace detail

/// The Reference's `quant_matmul` (y(m,n) = x(m,k) · W(n,k)ᵀ, W in ggml blocks, see
/// `reference/quant.hpp`), fast: tiles of 4 weight rows dequantized into a per-thread scratch
/// (kept across calls), multiplied with 2 activation rows at a time; threads over the tiles.
/// Bit-identical for every thread count.
inline void quant_matmul(const Cpu& dev, const float* x, const std::byte* w, quant::type t, float* y, std::int64_t m,
                         std::int64_t k, std::int64_t n) {
    const std::size_t stride = quant::row_bytes(t, k);
    if (m <= 0 || n <= 0) return;
    constexpr int RW = detail::quant_tile_rows, RX = detail::quant_tile_inputs;
    const std::int64_t tiles = (n + RW - 1) / RW;
    const bool parallel = m * n * k >= detail::quant_min_parallel_work;
    distill::detail::parallel_for(
        dev.threads(), tiles,
        [&](std::int64_t tile) {
            thread_local std::vector<float> scratch;  // RW dequantized rows (RW, k); grows once, then reused
            const std::int64_t j0 = tile * RW;
            const int rw = static_cast<int>(std::min<std::int64_t>(RW, n - j0));
            const float* rows[RW];
            if (t == quant::type::F32) {
                for (int b = 0; b < rw; ++b)
                    rows[b] = reinterpret_cast<const float*>(w + static_cast<std::size_t>(j0 + b) * stride);
            } else {
                if (scratch.size() < static_cast<std::size_t>(RW * k)) scratch.resize(static_cast<std::size_t>(RW * k));
                for (int b = 0; b < rw; ++b) {
                    detail::dequantize_row_fast(t, w + static_cast<std::size_t>(j0 + b) * stride, k,
                                                scratch.data() + b * k);
                    rows[b] = scratch.data() + b * k;
                }
            }
            for (std::int64_t i = 0; i < m; i += RX)
                detail::quant_dot(rw, static_cast<int>(std::min<std::int64_t>(RX, m - i)), rows, x + i * k, k,
                                  y + i * n + j0, n);
        },
        parallel);
}

}  // namespace distill::device
