#pragma once
/// @file cpu/layers.hpp
/// The `device::Cpu` tag and its layer kernels: those of `device/reference/layers.hpp`, fast (its
/// other parts: `cpu/{losses,optim,encoder}.hpp`). GEMMs go through oneDNN's matmul when
/// the program links `distill::dnnl` (`DISTILL_WITH_DNNL`; see `device/cpu/dnnl.hpp`), else through
/// Eigen's GEMM kernel (AVX-512 when compiled for the host), split over threads by us and packing into
/// per-thread buffers kept across calls, so a steady-state step allocates nothing; the hot fp32 row
/// kernels (LayerNorm/RMSNorm rows, GELU, SwiGLU, the causal softmax, bias add) through
/// `cpu/isa.hpp` on the widest vectors the CPU has, chosen at run time (so a build without -march
/// runs them on AVX2/AVX-512 too), the others (and fp64) through Eigen array expressions (vectorized
/// for the build's ISA), parallel over rows or column
/// blocks (`distill::detail::parallel_for`, OpenMP). Reductions never use atomics and split work by a fixed rule, so a
/// fixed thread count gives bit-identical results run after run.
///
/// Precision: `Cpu(threads, precision::bf16)` rounds the operands of the model's GEMMs to bf16 and
/// accumulates in fp32 (oneDNN; refused with a config_error without it — Eigen has no fast bf16
/// GEMM). Everything else stays fp32: master weights, gradients, optimizer state, losses, softmax,
/// LayerNorm statistics. The fused attention's tile products round their operands to bf16 too on a
/// CPU with AMX (`cpu/flash_attention.hpp`, `cpu/amx.hpp`).

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "distill/detail/macros.hpp"
#include "distill/detail/parallel.hpp"
#include "distill/device.hpp"
#include "distill/device/cpu/isa.hpp"
#include "distill/device/cpu/panel_gemm.hpp"
#include "distill/device/reference/layers.hpp"
#include "distill/error.hpp"

#if defined(DISTILL_WITH_DNNL)
#include "distill/device/cpu/dnnl.hpp"
#endif

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace distill::device {

/// Whether this build has a fast bf16 GEMM (oneDNN linked through `distill::dnnl`).
inline constexpr bool has_bf16_gemm =
#if defined(DISTILL_WITH_DNNL)
    true;
#else
    false;
#endif

/// The multithreaded CPU device.
struct Cpu : HostMemory {
    static constexpr const char* name = "cpu";

    /// Threads from `DISTILL_NUM_THREADS` when set, else OpenMP's default (OMP_NUM_THREADS or the cores).
    Cpu() : num_threads(default_threads()) {}
    /// Exactly `threads` threads (>= 1), GEMMs in `p` (bf16: `bf16_supported()`, else config_error).
    explicit Cpu(int threads, precision p = precision::fp32) : num_threads(threads), compute(p) {
        if (threads < 1) throw config_error("device.threads", "must be >= 1, got " + std::to_string(threads));
        if (p == precision::bf16 && !bf16_supported())
            throw config_error("device.precision", "bf16 is refused: " + bf16_unsupported_reason());
    }

    /// Why `precision::bf16` cannot run here ("" when it can): this build has no oneDNN, or this CPU
    /// has no oneDNN bf16 matmul (oneDNN 2.x needs AVX-512; detected at run time, never assumed).
    static std::string bf16_unsupported_reason() {
#if defined(DISTILL_WITH_DNNL)
        return detail::bf16_unsupported_reason();
#else
        return "bf16 needs oneDNN's GEMM: install libdnnl-dev and link distill::dnnl (DISTILL_WITH_DNNL); this "
               "build has only Eigen's fp32 GEMM";
#endif
    }
    static bool bf16_supported() {
        return bf16_unsupported_reason().empty();
    }

    int threads() const noexcept {
        return num_threads;
    }
    precision compute_precision() const noexcept {
        return compute;
    }

    int num_threads;
    precision compute = precision::fp32;

private:
    static int default_threads() {
        if (const char* env = std::getenv("DISTILL_NUM_THREADS")) {
            char* end = nullptr;
            const long n = std::strtol(env, &end, 10);
            if (end == env || *end != '\0' || n < 1 || n > 4096)
                throw config_error("DISTILL_NUM_THREADS",
                                   std::string("expected an integer in [1, 4096], got \"") + env + "\"");
            return static_cast<int>(n);
        }
#if defined(_OPENMP)
        return omp_get_max_threads();
#else
        return 1;
#endif
    }
};

namespace detail {

template <class T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ConstMap = Eigen::Map<const RowMajor<T>, 0, Eigen::OuterStride<>>;
template <class T>
using Map = Eigen::Map<RowMajor<T>, 0, Eigen::OuterStride<>>;
template <class T>
using ConstArray = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using Array = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;

// Why the two functions below exist: Eigen assigns to (and sums) an unaligned buffer by first running
// the elements before its first aligned address through the scalar path, whose exp, log or tanh
// differs from the packet one in the last bits. The bits of a result would then depend on where a
// buffer lies, and two runs of one program (or a resumed run) could differ. Here whole packets start
// at element 0 and only the last n % W elements take the scalar path: the bits depend on positions.

// dst[0..n) = expr, or dst[0..n) += expr when `add`; expr is an Eigen array expression of size n.
template <class T, class Expr>
void assign_unpeeled(T* dst, std::int64_t n, const Expr& expr, bool add = false) {
    using namespace Eigen::internal;
    using P = typename packet_traits<T>::type;
    constexpr int W = packet_traits<T>::size;
    const evaluator<Expr> ev(expr);
    std::int64_t i = 0;
    if constexpr ((evaluator<Expr>::Flags & Eigen::PacketAccessBit) != 0 && W > 1)
        for (; i + W <= n; i += W) {
            const P v = ev.template packet<Eigen::Unaligned, P>(i);
            pstoreu(dst + i, add ? padd(ploadu<P>(dst + i), v) : v);
        }
    for (; i < n; ++i) dst[i] = add ? dst[i] + ev.coeff(i) : ev.coeff(i);
}

// Σ x[0..n): packets from element 0 (two accumulators), then the last n % W elements in order.
template <class T>
T sum_unpeeled(const T* x, std::int64_t n) {
    using namespace Eigen::internal;
    using P = typename packet_traits<T>::type;
    constexpr int W = packet_traits<T>::size;
    P a0 = pset1<P>(T(0)), a1 = a0;
    std::int64_t i = 0;
    for (; i + 2 * W <= n; i += 2 * W) {
        a0 = padd(a0, ploadu<P>(x + i));
        a1 = padd(a1, ploadu<P>(x + i + W));
    }
    if (i + W <= n) {
        a0 = padd(a0, ploadu<P>(x + i));
        i += W;
    }
    T s = predux(padd(a0, a1));
    for (; i < n; ++i) s += x[i];
    return s;
}

// Splits [0, n) into `parts` contiguous ranges, the same for every run; range `k` is [begin, end).
inline void split(std::int64_t n, int parts, int k, std::int64_t align, std::int64_t& begin, std::int64_t& end) {
    const std::int64_t blocks = (n + align - 1) / align;
    const std::int64_t per = blocks / parts, extra = blocks % parts;
    const std::int64_t b0 = k * per + std::min<std::int64_t>(k, extra);
    const std::int64_t b1 = b0 + per + (k < extra ? 1 : 0);
    begin = std::min(n, b0 * align);
    end = std::min(n, b1 * align);
}

// Runs f(begin, end) on `threads` contiguous column blocks of [0, n) (64-byte aligned so no two
// threads share a cache line): the pattern of every deterministic reduction over rows.
template <class F>
void for_column_blocks(int threads, std::int64_t n, std::int64_t align, F&& f) {
    const int parts =
        static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(threads, (n + align - 1) / align)));
    distill::detail::parallel_for(parts, parts, [&](std::int64_t k_) {
        const int k = static_cast<int>(k_);
        std::int64_t b, e;
        split(n, parts, k, align, b, e);
        if (b < e) f(b, e);
    });
}

// The row half of a norm's backward (LayerNorm, RMSNorm), rows in parallel on the device's
// threads: f(n, x, dy, dx) with row n's input x, output gradient dy and input gradient dx (C wide).
template <class T, class F>
void norm_backward_rows(const Cpu& dev, T* din, const T* dout, const T* in, int N, int C, F&& f) {
    distill::detail::parallel_for(dev.threads(), N, [&](std::int64_t n_) {
        const int n = static_cast<int>(n_);
        const std::int64_t row = std::int64_t(n) * C;
        f(n, ConstArray<T>(in + row, C), ConstArray<T>(dout + row, C), Array<T>(din + row, C));
    });
}

}  // namespace detail

// ---- GEMM ---------------------------------------------------------------------------------------

namespace detail {

// Eigen's GEMM kernel packing into buffers kept per thread (Eigen's own product allocates its
// packing blocks on every call beyond a 128 KiB stack limit), with the output split over our threads.
template <class T>
struct PackingBuffers {
    T* a = nullptr;
    T* b = nullptr;
    std::size_t a_size = 0, b_size = 0;
    PackingBuffers() = default;
    PackingBuffers(const PackingBuffers&) = delete;
    PackingBuffers& operator=(const PackingBuffers&) = delete;
    ~PackingBuffers() {
        Eigen::internal::aligned_free(a);
        Eigen::internal::aligned_free(b);
    }
    static T* grow(T*& p, std::size_t& size, std::size_t n) {
        if (n > size) {
            Eigen::internal::aligned_free(p);
            p = static_cast<T*>(Eigen::internal::aligned_malloc(sizeof(T) * n));
            size = n;
        }
        return p;
    }
};

// Eigen's cache blocking for a (M,N,K) row-major product on one thread, over this thread's buffers.
template <class T>
class ThreadBlocking : public Eigen::internal::level3_blocking<T, T> {
public:
    ThreadBlocking(Eigen::Index M, Eigen::Index N, Eigen::Index K) {
        // a row-major result is computed as its column-major transpose: Eigen's rows are our N
        this->m_mc = N;
        this->m_nc = M;
        this->m_kc = K;
        Eigen::internal::computeProductBlockingSizes<T, T, 1>(this->m_kc, this->m_mc, this->m_nc, Eigen::Index(1));
        thread_local PackingBuffers<T> buffers;
        this->m_blockA = PackingBuffers<T>::grow(buffers.a, buffers.a_size, std::size_t(this->m_kc * this->m_mc));
        this->m_blockB = PackingBuffers<T>::grow(buffers.b, buffers.b_size, std::size_t(this->m_kc * this->m_nc));
    }
};

// C(M,N) += alpha op(A) op(B) on this thread (row-major, see gemm).
template <class T>
void gemm_block(bool trans_a, bool trans_b, Eigen::Index M, Eigen::Index N, Eigen::Index K, T alpha, const T* A,
                Eigen::Index lda, const T* B, Eigen::Index ldb, T* C, Eigen::Index ldc) {
    ThreadBlocking<T> blocking(M, N, K);
    auto run = [&](auto lhs, auto rhs) {
        using Product = Eigen::internal::general_matrix_matrix_product<Eigen::Index, T, decltype(lhs)::value, false, T,
                                                                       decltype(rhs)::value, false, Eigen::RowMajor, 1>;
        Product::run(M, N, K, A, lda, B, ldb, C, 1, ldc, alpha, blocking, nullptr);
    };
    using R = std::integral_constant<int, Eigen::RowMajor>;
    using Cm = std::integral_constant<int, Eigen::ColMajor>;
    if (!trans_a && !trans_b)
        run(R{}, R{});
    else if (!trans_a && trans_b)
        run(R{}, Cm{});
    else if (trans_a && !trans_b)
        run(Cm{}, R{});
    else
        run(Cm{}, Cm{});
}

// C(M,N) = alpha op(A) op(B) + beta C (row-major, see gemm) through Eigen's GEMM kernel: the longer
// side of C split into contiguous blocks, one per thread (a fixed rule, so runs are bit-identical),
// each packed into its thread's buffers. One thread inside a parallel region (a GEMM per attention
// head) or below ~64 rows or columns per thread; a matrix-vector product goes to Eigen's GEMV.
template <class T>
void eigen_gemm(const Cpu& dev, bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda,
                const T* B, int ldb, T beta, T* C, int ldc) {
    Map<T> c(C, M, N, Eigen::OuterStride<>(ldc));
    if (beta == T(0))
        c.setZero();
    else if (beta != T(1))
        c *= beta;
    if (K == 0 || M == 0 || N == 0) return;
#if defined(_OPENMP)
    const int threads = omp_in_parallel() ? 1 : dev.threads();
#else
    const int threads = 1;
    (void)dev;
#endif
    if (M == 1 || N == 1) {  // a matrix-vector product: Eigen's GEMV, no packing (decoding one token)
        const ConstMap<T> a(A, trans_a ? K : M, trans_a ? M : K, Eigen::OuterStride<>(lda));
        const ConstMap<T> b(B, trans_b ? N : K, trans_b ? K : N, Eigen::OuterStride<>(ldb));
        if (!trans_a && !trans_b)
            c.noalias() += alpha * (a * b);
        else if (!trans_a && trans_b)
            c.noalias() += alpha * (a * b.transpose());
        else if (trans_a && !trans_b)
            c.noalias() += alpha * (a.transpose() * b);
        else
            c.noalias() += alpha * (a.transpose() * b.transpose());
        return;
    }
    const bool by_rows = M >= N;
    const std::int64_t side = by_rows ? M : N;
    const int parts = static_cast<int>(std::clamp<std::int64_t>(side / 64, 1, threads));
    if (parts == 1) return gemm_block<T>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, C, ldc);
    distill::detail::parallel_for(parts, parts, [&](std::int64_t k_) {
        const int k = static_cast<int>(k_);
        std::int64_t b, e;
        split(side, parts, k, 16, b, e);
        if (b >= e) return;
        if (by_rows)  // rows [b, e) of C and of op(A)
            gemm_block<T>(trans_a, trans_b, e - b, N, K, alpha, trans_a ? A + b : A + b * lda, lda, B, ldb, C + b * ldc,
                          ldc);
        else  // columns [b, e) of C and of op(B)
            gemm_block<T>(trans_a, trans_b, M, e - b, K, alpha, A, lda, trans_b ? B + b * ldb : B + b, ldb, C + b, ldc);
    });
}
#if defined(DISTILL_WITH_DNNL)
/// Whether oneDNN's matmul takes a product: a non-empty one outside any parallel region (a product
/// inside one, an attention head per thread, stays with Eigen, single-threaded and in cache).
inline bool dnnl_takes(int M, int N, int K) {
#if defined(_OPENMP)
    if (omp_in_parallel()) return false;
#endif
    return M > 0 && N > 0 && K > 0;
}
/// Whether oneDNN runs at AVX2 (its effective ISA, after ONEDNN_MAX_CPU_ISA): there its fp32 matmul
/// reads weights in their plain layout.
inline bool dnnl_runs_avx2() {
    static const bool avx2 = [] {
        const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
        return isa == dnnl::cpu_isa::avx2 || isa == dnnl::cpu_isa::avx2_vnni;
    }();
    return avx2;
}
/// Whether Eigen's kernel keeps an fp32 product with A transposed (a weight gradient doutᵀ · in): where
/// oneDNN runs at AVX2 and Eigen was compiled for AVX2 and FMA. There oneDNN 2.6 runs these products
/// at 44-87% of Eigen's speed and its other products at 96-119% (docs/performance.md, "A build for
/// AVX2").
inline bool eigen_takes_transposed_a([[maybe_unused]] const Cpu& dev) {
#if defined(__AVX2__) && defined(__FMA__)
    return dnnl_runs_avx2() && dev.compute != precision::bf16;
#else
    return false;
#endif
}
/// Whether `panel_gemm` takes C = A · Wᵀ (alpha 1): fp32, at most 16 rows (decoding), where oneDNN runs
/// at AVX2 and would take the product; with a packed W or without (`gemm_packed`, `gemm_bias`, `gemm`),
/// so that both give the same bits.
inline bool panels_take([[maybe_unused]] const Cpu& dev, [[maybe_unused]] bool trans_a, [[maybe_unused]] bool trans_b,
                        [[maybe_unused]] int M, [[maybe_unused]] int N, [[maybe_unused]] int K) {
#if defined(DISTILL_PANEL_GEMM)
    return !trans_a && trans_b && M <= panel_max_rows && dnnl_takes(M, N, K) && dev.compute != precision::bf16 &&
           dnnl_runs_avx2();
#else
    return false;
#endif
}
#endif
}  // namespace detail

namespace detail {
#if defined(DISTILL_WITH_DNNL) && defined(DISTILL_PANEL_GEMM)
// panel_gemm on a plain W(N,K) (row stride ldw), packed into panels first (as oneDNN copies W at
// every call): the bits of the packed copy's product
inline void panel_gemm_plain(const Cpu& dev, int M, int N, int K, const float* A, int lda, const float* W, int ldw,
                             float beta, float* C, int ldc, const float* bias) {
    thread_local std::vector<float> panels;
    panels.resize(panel_floats(N, K));
    pack_panels(panels.data(), W, N, K, ldw);
    panel_gemm(dev.threads(), M, N, K, A, lda, panels.data(), beta, C, ldc, bias);
}
#endif
}  // namespace detail

/// C(M,N) = alpha op(A) op(B) + beta C, row-major (see the Reference kernel): oneDNN's matmul with
/// `distill::dnnl` (fp32, or bf16 operands when the device's precision says so), else Eigen's GEMM
/// (also for A transposed where oneDNN runs at AVX2: `eigen_takes_transposed_a`); up to 16 rows of
/// A · Bᵀ (alpha 1) where oneDNN runs at AVX2: `panel_gemm` (`panels_take`).
template <class T>
void gemm(const Cpu& dev, bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda, const T* B,
          int ldb, T beta, T* C, int ldc) {
#if defined(DISTILL_WITH_DNNL) && defined(DISTILL_PANEL_GEMM)
    if constexpr (std::is_same_v<T, float>)
        if (alpha == 1.0f && detail::panels_take(dev, trans_a, trans_b, M, N, K))
            return detail::panel_gemm_plain(dev, M, N, K, A, lda, B, ldb, beta, C, ldc, nullptr);
#endif
#if defined(DISTILL_WITH_DNNL)
    if constexpr (std::is_same_v<T, float>)
        if (detail::dnnl_takes(M, N, K) && !(trans_a && detail::eigen_takes_transposed_a(dev)))
            return detail::gemm(dev.compute == precision::bf16, dev.threads(), trans_a, trans_b, M, N, K, alpha, A, lda,
                                B, ldb, beta, C, ldc);
#endif
    detail::eigen_gemm(dev, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

namespace detail {
// C(M,N) (ldc) = gelu(C): a GELU epilogue where oneDNN does not take the product.
template <class T>
void gelu_in_place(const Cpu& dev, T* C, int M, int N, int ldc) {
    if (ldc == N) return gelu_forward(dev, C, C, std::int64_t(M) * N);
    for (int m = 0; m < M; ++m) gelu_forward(dev, C + std::int64_t(m) * ldc, C + std::int64_t(m) * ldc, N);
}
}  // namespace detail

/// C(M,N) = alpha op(A) op(W) + beta C with W a stored bf16 matrix (packed rows, ldw its width): A
/// rounded to bf16, W read as it is, fp32 accumulation — bit for bit the bf16 `gemm` of the fp32
/// matrix W was rounded from, without rounding W again. Needs oneDNN (Cpu refuses bf16 without it);
/// inside a parallel region (where oneDNN does not take products) W is widened and Eigen multiplies.
/// With `bias` (alpha 1) bias(N) is added to every row of the product, in oneDNN's epilogue; with
/// `gelu` the GELU follows, as in `gemm_bias`.
inline void gemm_bf16_weight(const Cpu& dev, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                             const float* A, int lda, const std::uint16_t* W, int ldw, float beta, float* C, int ldc,
                             const float* bias = nullptr, bool gelu = false) {
#if defined(DISTILL_WITH_DNNL)
    if (detail::dnnl_takes(M, N, K))
        return detail::gemm(true, dev.threads(), trans_a, trans_b, M, N, K, alpha, A, lda, nullptr, ldw, beta, C, ldc,
                            1, 0, 0, 0, W, bias, nullptr, gelu);
#endif
    const std::int64_t rows = trans_b ? N : K;
    thread_local std::vector<float> wide;
    wide.resize(std::size_t(rows) * std::size_t(ldw));
    for (std::size_t i = 0; i < wide.size(); ++i) {
        const std::uint32_t u = std::uint32_t(W[i]) << 16;
        std::memcpy(&wide[i], &u, 4);
    }
    detail::eigen_gemm(dev, trans_a, trans_b, M, N, K, alpha, A, lda, wide.data(), ldw, beta, C, ldc);
    if (bias)
        for (int m = 0; m < M; ++m)
            for (int n = 0; n < N; ++n) C[std::int64_t(m) * ldc + n] += bias[n];
    if (gelu) detail::gelu_in_place(dev, C, M, N, ldc);
}

/// dst(n) = src(n) rounded to bf16 (round to nearest even: the rounding of the bf16 GEMMs' operands).
inline void round_bf16(const Cpu& dev, std::uint16_t* dst, const float* src, std::int64_t n) {
#if defined(DISTILL_WITH_DNNL)
    const std::int64_t cols = 4096, rows = n / cols;  // rows of 4096 to split over the threads
    if (rows) detail::convert(dst, src, rows, cols, cols, dev.threads());
    detail::convert_row(dst + rows * cols, src + rows * cols, n - rows * cols);
#else
    (void)dev;
    for (std::int64_t i = 0; i < n; ++i) {  // the same rounding as dnnl.hpp's to_bf16
        std::uint32_t u;
        std::memcpy(&u, &src[i], 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            dst[i] = static_cast<std::uint16_t>((u >> 16) | 0x40u);
            continue;
        }
        u += 0x7fffu + ((u >> 16) & 1u);
        dst[i] = static_cast<std::uint16_t>(u >> 16);
    }
#endif
}

/// `batch` GEMMs at fixed strides, fp32 in every precision: split over the threads (each
/// single-threaded, in cache; a batch of one gets every thread) with Eigen; or, where Eigen's kernels
/// were compiled for less than AVX2 (a build without -march) and oneDNN is linked, one batched oneDNN
/// matmul, which picks the CPU's instruction set at run time.
template <class T>
void gemm_strided_batched(const Cpu& dev, bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda,
                          std::int64_t stride_a, const T* B, int ldb, std::int64_t stride_b, T beta, T* C, int ldc,
                          std::int64_t stride_c, int batch) {
#if defined(DISTILL_WITH_DNNL) && !defined(__AVX2__)
    if constexpr (std::is_same_v<T, float>)
        if (detail::dnnl_takes(M, N, K) && batch > 0)
            return detail::gemm(false, dev.threads(), trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
                                batch, stride_a, stride_b, stride_c);
#endif
    distill::detail::parallel_for(dev.threads(), batch, [&](std::int64_t b) {
        detail::eigen_gemm(dev, trans_a, trans_b, M, N, K, alpha, A + b * stride_a, lda, B + b * stride_b, ldb, beta,
                           C + b * stride_c, ldc);
    });
}

// ---- elementwise and row kernels -----------------------------------------------------------------

/// out(N,OC) += bias(OC).
template <class T>
void add_bias(const Cpu& dev, T* out, const T* bias, int N, int OC) {
    using namespace detail;
    if constexpr (std::is_same_v<T, float>) {
        const cpu_isa isa = row_kernel_isa();
        distill::detail::parallel_for(dev.threads(), N, [&](std::int64_t n) {
            rowk::run_kernel<rowk::add_row>(isa, out + n * OC, bias, std::int64_t(OC));
        });
        return;
    }
    const ConstArray<T> b(bias, OC);
    distill::detail::parallel_for(dev.threads(), N, [&](std::int64_t n_) {
        const int n = static_cast<int>(n_);
        Array<T>(out + std::int64_t(n) * OC, OC) += b;
    });
}

/// C(M,N) = op(A) op(B) + bias(N) + beta C (row-major): `gemm` and `add_bias` in one, the bias added in
/// oneDNN's epilogue (one pass over C where the two make two) wherever oneDNN takes the product. With
/// `gelu`, C = gelu_forward(that), the GELU in the same epilogue (an MLP's first linear where nothing
/// keeps its input to the GELU: inference); oneDNN evaluates the tanh GELU itself, equal to
/// `gelu_forward` to rounding, and `gelu_forward` runs after the product where oneDNN does not take it.
/// Up to 16 rows of A · Wᵀ where oneDNN runs at AVX2: `panel_gemm` (`detail::panels_take`).
template <class T>
void gemm_bias(const Cpu& dev, bool trans_a, bool trans_b, int M, int N, int K, const T* A, int lda, const T* B,
               int ldb, T beta, T* C, int ldc, const T* bias, bool gelu = false) {
#if defined(DISTILL_WITH_DNNL) && defined(DISTILL_PANEL_GEMM)
    if constexpr (std::is_same_v<T, float>)
        if (detail::panels_take(dev, trans_a, trans_b, M, N, K)) {
            detail::panel_gemm_plain(dev, M, N, K, A, lda, B, ldb, beta, C, ldc, bias);
            if (gelu) detail::gelu_in_place(dev, C, M, N, ldc);
            return;
        }
#endif
#if defined(DISTILL_WITH_DNNL)
    if constexpr (std::is_same_v<T, float>)
        if (detail::dnnl_takes(M, N, K))
            return detail::gemm(dev.compute == precision::bf16, dev.threads(), trans_a, trans_b, M, N, K, 1.0f, A, lda,
                                B, ldb, beta, C, ldc, 1, 0, 0, 0, nullptr, bias, nullptr, gelu);
#endif
    detail::eigen_gemm(dev, trans_a, trans_b, M, N, K, T(1), A, lda, B, ldb, beta, C, ldc);
    if (bias) {
        if (ldc == N)
            add_bias(dev, C, bias, M, N);
        else
            for (int m = 0; m < M; ++m) add_bias(dev, C + std::int64_t(m) * ldc, bias, 1, N);
    }
    if (gelu) detail::gelu_in_place(dev, C, M, N, ldc);
}

#if defined(DISTILL_WITH_DNNL)
namespace detail {
// The layout `pack_weight` copies W(N,K) into on `dev` (fp32, or bf16 with `bf16`), or a zero desc
// where it makes no copy (see packed_weight).
inline dnnl::memory::desc packed_layout(const Cpu& dev, int N, int K, bool bf16) {
    const bool packs = bf16 ? Cpu::bf16_supported() : dev.compute != precision::bf16;
    if (!packs || N < 1 || K < 1) return {};
    return packed_weight_desc(N, K, dev.threads(), bf16);
}
// Whether `pack_weight` copies an fp32 W(N,K) into `panel_gemm`'s panels: where oneDNN runs at AVX2 (it
// has no packed layout there) and the device computes in fp32.
inline bool packs_panels([[maybe_unused]] const Cpu& dev, [[maybe_unused]] int N, [[maybe_unused]] int K,
                         [[maybe_unused]] bool bf16) {
#if defined(DISTILL_PANEL_GEMM)
    return !bf16 && N > 0 && K > 0 && dev.compute != precision::bf16 && dnnl_runs_avx2();
#else
    return false;
#endif
}
}  // namespace detail
#endif

/// A weight W(N,K) (row-major: the weight of C = A · Wᵀ; fp32, or a stored bf16 one) copied once into
/// the blocked layout oneDNN's matmul reads (`pack_weight`), for products that repeat with W
/// unchanged: decoding multiplies a few rows by every weight once per token, and the matmul
/// otherwise copies W into that layout at every call. Where oneDNN runs at AVX2 (no blocked layout
/// there) an fp32 W is copied into `panel_gemm`'s panels instead, which products of up to 16 rows read
/// (`panels()`). A snapshot: it does not follow later writes to W. Empty (false) where packing gains
/// nothing: without oneDNN, for an fp32 W under bf16 compute (whose products round W at every call), or
/// for a bf16 W where oneDNN has no bf16 matmul.
class packed_weight {
public:
    packed_weight() = default;
    explicit operator bool() const noexcept { return data_ != nullptr; }
    const void* data() const noexcept { return data_.get(); }
    /// W's shape (N, K), its type, the device threads it was packed for (its layout may depend on
    /// them), and the bytes of the copy.
    int rows() const noexcept { return rows_; }
    int cols() const noexcept { return cols_; }
    bool bf16() const noexcept { return bf16_; }
    int threads() const noexcept { return threads_; }
    std::size_t bytes() const noexcept { return bytes_; }
    /// Whether the copy is in `panel_gemm`'s panels (where oneDNN runs at AVX2), not oneDNN's layout.
    bool panels() const noexcept { return panels_; }

private:
    struct release {
        void operator()(void* p) const noexcept { std::free(p); }
    };
    std::unique_ptr<void, release> data_;
    int rows_ = 0, cols_ = 0, threads_ = 0;
    bool bf16_ = false, panels_ = false;
    std::size_t bytes_ = 0;
    friend packed_weight pack_weight(const Cpu&, const float*, int, int);
    friend packed_weight pack_weight(const Cpu&, const std::uint16_t*, int, int);
    static packed_weight make([[maybe_unused]] const Cpu& dev, [[maybe_unused]] const void* W, [[maybe_unused]] int N,
                              [[maybe_unused]] int K, [[maybe_unused]] bool bf16) {
        packed_weight p;
#if defined(DISTILL_WITH_DNNL)
        // panel_gemm's panels where oneDNN runs at AVX2, else oneDNN's blocked layout (if any)
        const bool panels = detail::packs_panels(dev, N, K, bf16);
        const dnnl::memory::desc layout = panels ? dnnl::memory::desc() : detail::packed_layout(dev, N, K, bf16);
        if (!panels && layout.is_zero()) return p;
        p.bytes_ = panels ? sizeof(float) * detail::panel_floats(N, K) : layout.get_size();
        p.data_.reset(std::aligned_alloc(64, (p.bytes_ + 63) / 64 * 64));
        if (!p.data_) throw std::bad_alloc();
        if (panels)
            detail::pack_panels(static_cast<float*>(p.data_.get()), static_cast<const float*>(W), N, K, K);
        else
            detail::pack(p.data_.get(), layout, W, N, K, bf16);
        p.rows_ = N;
        p.cols_ = K;
        p.bf16_ = bf16;
        p.threads_ = dev.threads();
        p.panels_ = panels;
#endif
        return p;
    }
};

/// W(N,K) (row-major) packed for `gemm_packed` on `dev`, or an empty handle (see packed_weight): an
/// fp32 W for fp32 products, a stored bf16 W (`gemm_bf16_weight`'s) for bf16 ones.
inline packed_weight pack_weight(const Cpu& dev, const float* W, int N, int K) {
    return packed_weight::make(dev, W, N, K, false);
}
inline packed_weight pack_weight(const Cpu& dev, const std::uint16_t* W, int N, int K) {
    return packed_weight::make(dev, W, N, K, true);
}

/// Bytes of the copy `pack_weight(dev, W, N, K)` makes of a W(N,K) (fp32, or bf16 with `bf16`); 0
/// where it makes none.
inline std::size_t packed_weight_bytes([[maybe_unused]] const Cpu& dev, [[maybe_unused]] int N, [[maybe_unused]] int K,
                                       [[maybe_unused]] bool bf16 = false) {
#if defined(DISTILL_WITH_DNNL)
    if (detail::packs_panels(dev, N, K, bf16)) return sizeof(float) * detail::panel_floats(N, K);
    return detail::packed_layout(dev, N, K, bf16).get_size();
#else
    return 0;
#endif
}

namespace detail {
// Whether `packed` is W(N,K)'s copy of the type asked, for this device's threads, and oneDNN takes
// the product here.
inline bool reads_packed([[maybe_unused]] const Cpu& dev, [[maybe_unused]] int M, int N, int K,
                         const packed_weight& packed, bool bf16) {
#if defined(DISTILL_WITH_DNNL)
    return packed && !packed.panels() && packed.rows() == N && packed.cols() == K && packed.bf16() == bf16 &&
           packed.threads() == dev.threads() && dnnl_takes(M, N, K);
#else
    (void)N, (void)K, (void)packed, (void)bf16;
    return false;
#endif
}
}  // namespace detail

/// C(M,N) = A(M,K) · Wᵀ (+ bias(N)) + beta C (row-major; lda, ldc), W read from its packed copy
/// `packed` where that fits this call (`pack_weight(dev, W, N, K)` on a device of the same threads),
/// else from W: the same kernel either way, so the bits are those of `gemm` / `gemm_bias` on W (a
/// bf16 W: of `gemm_bf16_weight`).
inline void gemm_packed(const Cpu& dev, int M, int N, int K, const float* A, int lda, const float* W,
                        [[maybe_unused]] const packed_weight& packed, float beta, float* C, int ldc,
                        const float* bias = nullptr, bool gelu = false) {
#if defined(DISTILL_WITH_DNNL) && defined(DISTILL_PANEL_GEMM)
    if (packed.panels() && packed.rows() == N && packed.cols() == K && detail::panels_take(dev, false, true, M, N, K)) {
        detail::panel_gemm(dev.threads(), M, N, K, A, lda, static_cast<const float*>(packed.data()), beta, C, ldc,
                           bias);
        if (gelu) detail::gelu_in_place(dev, C, M, N, ldc);
        return;
    }
#endif
#if defined(DISTILL_WITH_DNNL)
    if (dev.compute != precision::bf16 && detail::reads_packed(dev, M, N, K, packed, false))
        return detail::gemm(false, dev.threads(), false, true, M, N, K, 1.0f, A, lda, W, K, beta, C, ldc, 1, 0, 0, 0,
                            nullptr, bias, packed.data(), gelu);
#endif
    gemm_bias(dev, false, true, M, N, K, A, lda, W, K, beta, C, ldc, bias, gelu);
}
inline void gemm_packed(const Cpu& dev, int M, int N, int K, const float* A, int lda, const std::uint16_t* W,
                        [[maybe_unused]] const packed_weight& packed, float beta, float* C, int ldc,
                        const float* bias = nullptr, bool gelu = false) {
#if defined(DISTILL_WITH_DNNL)
    if (detail::reads_packed(dev, M, N, K, packed, true))
        return detail::gemm(true, dev.threads(), false, true, M, N, K, 1.0f, A, lda, nullptr, K, beta, C, ldc, 1, 0, 0,
                            0, W, bias, packed.data(), gelu);
#endif
    gemm_bf16_weight(dev, false, true, M, N, K, 1.0f, A, lda, W, K, beta, C, ldc, bias, gelu);
}

/// The GELU MLP of an inference forward with bf16 matrices: out(M,C) += gelu(x(M,C) · W1ᵀ + b1) · W2ᵀ +
/// b2, W1 (F,C) and W2 (C,F) stored bf16, each read from its packed copy where that fits (as
/// `gemm_packed`). The first product's epilogue writes the hidden rows in bf16, and the second reads
/// them as they are: it would round them to bf16 itself, so the bits are those of the two `gemm_packed`
/// calls, less a rounding pass and the fp32 rows' traffic. `hidden` holds M·F floats: the bf16 rows take
/// half of it; the fp32 rows, all of it where oneDNN does not take the products. Cpu itself only: a
/// device derived from it multiplies its own way (its `gemm_bf16_weight`), so the model calls that.
template <std::same_as<Cpu> Device>
void mlp_bf16(const Device& dev, int M, int C, int F, const float* x, const std::uint16_t* W1,
              const packed_weight& packed1, const float* b1, const std::uint16_t* W2, const packed_weight& packed2,
              const float* b2, float* hidden, float* out) {
#if defined(DISTILL_WITH_DNNL)
    if (detail::dnnl_takes(M, F, C)) {
        auto* h16 = reinterpret_cast<std::uint16_t*>(hidden);
        const auto packed = [&](const packed_weight& p, int N, int K) {
            return detail::reads_packed(dev, M, N, K, p, true) ? p.data() : nullptr;
        };
        detail::gemm(true, dev.threads(), false, true, M, F, C, 1.0f, x, C, nullptr, C, 0.0f, nullptr, F, 1, 0, 0, 0,
                     W1, b1, packed(packed1, F, C), true, nullptr, h16);
        return detail::gemm(true, dev.threads(), false, true, M, C, F, 1.0f, nullptr, F, nullptr, F, 1.0f, out, C, 1, 0,
                            0, 0, W2, b2, packed(packed2, C, F), false, h16);
    }
#endif
    gemm_packed(dev, M, F, C, x, C, W1, packed1, 0.0f, hidden, F, b1, true);
    gemm_packed(dev, M, C, F, hidden, F, W2, packed2, 1.0f, out, C, b2);
}

/// The backward of out(N,OC) = in(N,C) · Wᵀ with W a stored bf16 matrix: din = dout · W (overwritten;
/// skipped when null) and dW(OC,C) += doutᵀ · in (fp32; skipped when null), the bits of
/// `gemm_bf16_weight` and of `gemm` on this device. Under bf16 products dout is rounded once for
/// both. Cpu itself only, as `mlp_bf16`.
template <std::same_as<Cpu> Device>
void linear_backward_bf16(const Device& dev, float* din, float* dW, const float* dout, const float* in,
                          const std::uint16_t* W, int N, int C, int OC) {
#if defined(DISTILL_WITH_DNNL)
    if (dev.compute == precision::bf16 && din && dW && detail::dnnl_takes(N, C, OC)) {
        thread_local std::vector<std::uint16_t> rounded;  // grows to the largest dout, then stays
        if (rounded.size() < std::size_t(N) * std::size_t(OC)) rounded.resize(std::size_t(N) * std::size_t(OC));
        round_bf16(dev, rounded.data(), dout, std::int64_t(N) * OC);
        detail::gemm(true, dev.threads(), false, false, N, C, OC, 1.0f, nullptr, OC, nullptr, C, 0.0f, din, C, 1, 0, 0,
                     0, W, nullptr, nullptr, false, rounded.data());
        return detail::gemm(true, dev.threads(), true, false, OC, C, N, 1.0f, nullptr, OC, in, C, 1.0f, dW, C, 1, 0, 0,
                            0, nullptr, nullptr, nullptr, false, rounded.data());
    }
#endif
    if (din) gemm_bf16_weight(dev, false, false, N, C, OC, 1.0f, dout, OC, W, C, 0.0f, din, C);
    if (dW) gemm(dev, true, false, OC, C, N, 1.0f, dout, OC, in, C, 1.0f, dW, C);
}

/// dbias(OC) += column sums of dout(N,OC); each thread owns a block of columns.
template <class T>
void bias_grad(const Cpu& dev, T* dbias, const T* dout, int N, int OC) {
    using namespace detail;
    for_column_blocks(dev.threads(), OC, 64 / sizeof(T), [&](std::int64_t b, std::int64_t e) {
        Array<T> acc(dbias + b, e - b);
        for (int n = 0; n < N; ++n) acc += ConstArray<T>(dout + std::int64_t(n) * OC + b, e - b);
    });
}

/// out = a + b.
template <class T>
void add(const Cpu& dev, T* out, const T* a, const T* b, std::int64_t n) {
    using namespace detail;
    for_column_blocks(dev.threads(), n, 4096, [&](std::int64_t s, std::int64_t e) {
        Array<T>(out + s, e - s) = ConstArray<T>(a + s, e - s) + ConstArray<T>(b + s, e - s);
    });
}

/// y += x.
template <class T>
void accumulate(const Cpu& dev, T* y, const T* x, std::int64_t n) {
    using namespace detail;
    for_column_blocks(dev.threads(), n, 4096,
                      [&](std::int64_t s, std::int64_t e) { Array<T>(y + s, e - s) += ConstArray<T>(x + s, e - s); });
}

/// LayerNorm forward (see Reference), parallel over rows.
template <class T>
void layernorm_forward(const Cpu& dev, T* out, T* mean, T* rstd, const T* in, const T* w, const T* b, int N, int C,
                       T eps) {
    using namespace detail;
    if constexpr (std::is_same_v<T, float>) {  // the run-time ISA's kernel (cpu/isa.hpp)
        const cpu_isa isa = row_kernel_isa();
        distill::detail::parallel_for(dev.threads(), N, [&](std::int64_t n) {
            rowk::run_kernel<rowk::layernorm_forward>(isa, out + n * C, mean + n, rstd + n, in + n * C, w, b,
                                                      std::int64_t(C), eps);
        });
        return;
    }
    const ConstArray<T> wa(w, C), ba(b, C);
    distill::detail::parallel_for(dev.threads(), N, [&](std::int64_t n_) {
        const int n = static_cast<int>(n_);
        const ConstArray<T> x(in + std::int64_t(n) * C, C);
        const T m = sum_unpeeled(x.data(), C) / T(C);
        const T s = T(1) / std::sqrt((x - m).square().mean() + eps);
        Array<T>(out + std::int64_t(n) * C, C) = (x - m) * s * wa + ba;
        mean[n] = m;
        rstd[n] = s;
    });
}

/// LayerNorm backward (see Reference): din by rows, then dw/db by column blocks.
template <class T>
void layernorm_backward(const Cpu& dev, T* din, T* dw, T* db, const T* dout, const T* in, const T* w, const T* mean,
                        const T* rstd, int N, int C) {
    using namespace detail;
    const ConstArray<T> wa(w, C);
    if constexpr (std::is_same_v<T, float>) {
        const cpu_isa isa = row_kernel_isa();
        distill::detail::parallel_for(dev.threads(), N, [&](std::int64_t n) {
            rowk::run_kernel<rowk::layernorm_backward>(isa, din + n * C, in + n * C, dout + n * C, w, mean[n], rstd[n],
                                                       std::int64_t(C));
        });
    } else
        norm_backward_rows(dev, din, dout, in, N, C,
                           [&](int n, const ConstArray<T>& x, const ConstArray<T>& dy, Array<T> dx) {
                               const auto xhat = (x - mean[n]) * rstd[n];
                               const auto g = dy * wa;
                               const T g_mean = g.mean();
                               const T gx_mean = (g * xhat).mean();
                               dx += rstd[n] * (g - g_mean - xhat * gx_mean);
                           });
    for_column_blocks(dev.threads(), C, 64 / sizeof(T), [&](std::int64_t b, std::int64_t e) {
        Array<T> dwa(dw + b, e - b), dba(db + b, e - b);
        for (int n = 0; n < N; ++n) {
            const std::int64_t row = std::int64_t(n) * C;
            const ConstArray<T> dy(dout + row + b, e - b);
            dwa += dy * (ConstArray<T>(in + row + b, e - b) - mean[n]) * rstd[n];
            dba += dy;
        }
    });
}

/// out = gelu_tanh(in), written as x * sigmoid(2u) (u the tanh argument): the same function, but
/// with a vectorized exp it stays accurate where 1 + tanh(u) would cancel (x << 0). float: the
/// run-time ISA's kernel (cpu/isa.hpp); double: Eigen's arrays.
template <class T>
void gelu_forward(const Cpu& dev, T* out, const T* in, std::int64_t n) {
    using namespace detail;
    if constexpr (std::is_same_v<T, float>) {
        const cpu_isa isa = row_kernel_isa();
        for_column_blocks(dev.threads(), n, 4096, [&](std::int64_t s, std::int64_t e) {
            rowk::run_kernel<rowk::gelu_forward>(isa, out + s, in + s, e - s);
        });
        return;
    }
    for_column_blocks(dev.threads(), n, 4096, [&](std::int64_t s, std::int64_t e) {
        const ConstArray<T> x(in + s, e - s);
        assign_unpeeled(out + s, e - s, x / (T(1) + (T(-2) * math::gelu_k<T> * (x + T(0.044715) * x.cube())).exp()));
    });
}

/// din = dout * gelu_tanh'(in) = dout * (s + 2 x u' s (1 - s)), s = sigmoid(2u), with s (1 - s)
/// computed as e / (1 + e)^2, e = exp(-2|u|), which neither overflows nor cancels.
template <class T>
void gelu_backward(const Cpu& dev, T* din, const T* in, const T* dout, std::int64_t n) {
    using namespace detail;
    if constexpr (std::is_same_v<T, float>) {
        const cpu_isa isa = row_kernel_isa();
        for_column_blocks(dev.threads(), n, 4096, [&](std::int64_t s, std::int64_t e) {
            rowk::run_kernel<rowk::gelu_backward>(isa, din + s, in + s, dout + s, e - s);
        });
        return;
    }
    for_column_blocks(dev.threads(), n, 4096, [&](std::int64_t s, std::int64_t e) {
        constexpr std::int64_t chunk = 1024;
        alignas(64) T u_buf[chunk], e_buf[chunk];
        for (std::int64_t i = s; i < e; i += chunk) {
            const std::int64_t len = std::min(chunk, e - i);
            const ConstArray<T> x(in + i, len);
            const ConstArray<T> u(u_buf, len), ex(e_buf, len);
            assign_unpeeled(u_buf, len, math::gelu_k<T> * (x + T(0.044715) * x.cube()));
            assign_unpeeled(e_buf, len, (T(-2) * u.abs()).exp());
            const auto sig = (u >= T(0)).select(T(1) / (T(1) + ex), ex / (T(1) + ex));
            const auto sig_1m = ex / (T(1) + ex).square();
            const auto du = math::gelu_k<T> * (T(1) + T(3 * 0.044715) * x.square());
            assign_unpeeled(din + i, len, ConstArray<T>(dout + i, len) * (sig + T(2) * x * du * sig_1m));
        }
    });
}

/// RMSNorm forward (see Reference), parallel over rows.
template <class T>
void rmsnorm_forward(const Cpu& dev, T* out, T* rstd, const T* in, const T* w, int N, int C, T eps) {
    using namespace detail;
    if constexpr (std::is_same_v<T, float>) {
        const cpu_isa isa = row_kernel_isa();
        distill::detail::parallel_for(dev.threads(), N, [&](std::int64_t n) {
            rowk::run_kernel<rowk::rmsnorm_forward>(isa, out + n * C, rstd + n, in + n * C, w, std::int64_t(C), eps);
        });
        return;
    }
    const ConstArray<T> wa(w, C);
    distill::detail::parallel_for(dev.threads(), N, [&](std::int64_t n_) {
        const int n = static_cast<int>(n_);
        const ConstArray<T> x(in + std::int64_t(n) * C, C);
        const T s = T(1) / std::sqrt(x.square().mean() + eps);
        Array<T>(out + std::int64_t(n) * C, C) = x * s * wa;
        rstd[n] = s;
    });
}

/// RMSNorm backward (see Reference): din by rows, then dw by column blocks.
template <class T>
void rmsnorm_backward(const Cpu& dev, T* din, T* dw, const T* dout, const T* in, const T* w, const T* rstd, int N,
                      int C) {
    using namespace detail;
    const ConstArray<T> wa(w, C);
    if constexpr (std::is_same_v<T, float>) {
        const cpu_isa isa = row_kernel_isa();
        distill::detail::parallel_for(dev.threads(), N, [&](std::int64_t n) {
            rowk::run_kernel<rowk::rmsnorm_backward>(isa, din + n * C, in + n * C, dout + n * C, w, rstd[n],
                                                     std::int64_t(C));
        });
    } else
        norm_backward_rows(dev, din, dout, in, N, C,
                           [&](int n, const ConstArray<T>& x, const ConstArray<T>& dy, Array<T> dx) {
                               const T gx_mean = (dy * wa * x).mean() * rstd[n];
                               dx += rstd[n] * (dy * wa - x * (rstd[n] * gx_mean));
                           });
    for_column_blocks(dev.threads(), C, 64 / sizeof(T), [&](std::int64_t b, std::int64_t e) {
        Array<T> dwa(dw + b, e - b);
        for (int n = 0; n < N; ++n) {
            const std::int64_t row = std::int64_t(n) * C;
            dwa += ConstArray<T>(dout + row + b, e - b) * ConstArray<T>(in + row + b, e - b) * rstd[n];
        }
    });
}

/// SwiGLU forward (see Reference), parallel over rows: out(N,F) = silu(gate) * up.
template <class T>
void swiglu_forward(const Cpu& dev, T* out, const T* in, int N, int F) {
    using namespace detail;
    if constexpr (std::is_same_v<T, float>) {
        const cpu_isa isa = row_kernel_isa();
        distill::detail::parallel_for(dev.threads(), N, [&](std::int64_t n) {
            rowk::run_kernel<rowk::swiglu_forward>(isa, out + n * F, in + n * 2 * F, std::int64_t(F));
        });
        return;
    }
    distill::detail::parallel_for(dev.threads(), N, [&](std::int64_t n_) {
        const int n = static_cast<int>(n_);
        const ConstArray<T> g(in + std::int64_t(n) * 2 * F, F), u(in + std::int64_t(n) * 2 * F + F, F);
        assign_unpeeled(out + std::int64_t(n) * F, F, g / (T(1) + (-g).exp()) * u);
    });
}

/// SwiGLU backward (see Reference): din(N,2F) = dout up silu'(gate) | dout silu(gate), with
/// silu'(g) = s (1 + g (1 - s)), s = sigmoid(g).
template <class T>
void swiglu_backward(const Cpu& dev, T* din, const T* in, const T* dout, int N, int F) {
    using namespace detail;
    if constexpr (std::is_same_v<T, float>) {
        const cpu_isa isa = row_kernel_isa();
        distill::detail::parallel_for(dev.threads(), N, [&](std::int64_t n) {
            rowk::run_kernel<rowk::swiglu_backward>(isa, din + n * 2 * F, in + n * 2 * F, dout + n * F,
                                                    std::int64_t(F));
        });
        return;
    }
    distill::detail::parallel_for(dev.threads(), N, [&](std::int64_t n_) {
        const int n = static_cast<int>(n_);
        const std::int64_t r = std::int64_t(n) * 2 * F;
        const ConstArray<T> g(in + r, F), u(in + r + F, F), d(dout + std::int64_t(n) * F, F);
        const auto sig = T(1) / (T(1) + (-g).exp());
        assign_unpeeled(din + r, F, d * u * sig * (T(1) + g * (T(1) - sig)));
        assign_unpeeled(din + r + F, F, d * g * sig);
    });
}

/// Rotary embedding in place (see Reference), parallel over rows.
template <class T>
void rope_rotate(const Cpu& dev, T* x, const T* cos, const T* sin, const std::int32_t* positions, int N, int row,
                 int heads, int hs, bool inverse) {
    const int half = hs / 2;
    const T sign = inverse ? T(-1) : T(1);
    distill::detail::parallel_for(dev.threads(), N, [&](std::int64_t n) {
        const T* c = cos + std::int64_t(positions[n]) * half;
        const T* s = sin + std::int64_t(positions[n]) * half;
        for (int h = 0; h < heads; ++h) {
            T* v = x + n * row + std::int64_t(h) * hs;
            for (int i = 0; i < half; ++i) {  // a plain loop the compiler vectorizes, no temporary
                const T x1 = v[i], x2 = v[i + half];
                v[i] = x1 * c[i] - sign * x2 * s[i];
                v[i + half] = x2 * c[i] + sign * x1 * s[i];
            }
        }
    });
}

/// Scaled causal softmax in place on att(BH,T,T), parallel over rows.
template <class T>
void causal_softmax_forward(const Cpu& dev, T* att, int BH, int Tn, T scale) {
    using namespace detail;
    const std::int64_t rows = std::int64_t(BH) * Tn;
    if constexpr (std::is_same_v<T, float>) {  // the run-time ISA's kernel (cpu/isa.hpp)
        const cpu_isa isa = row_kernel_isa();
        distill::detail::parallel_for(dev.threads(), rows, [&](std::int64_t r) {
            const int t = static_cast<int>(r % Tn);
            rowk::run_kernel<rowk::softmax_forward>(isa, att + r * Tn, std::int64_t(t + 1), scale);
            std::fill(att + r * Tn + t + 1, att + (r + 1) * Tn, T(0));
        });
        return;
    }
    distill::detail::parallel_for(dev.threads(), rows, [&](std::int64_t r) {
        const int t = static_cast<int>(r % Tn);
        T* row = att + r * Tn;
        Array<T> p(row, t + 1);
        const T mx = p.maxCoeff();  // the raw maximum: (x - max)·scale keeps the low bits of large scores
        assign_unpeeled(row, t + 1, ((p - mx) * scale).exp());
        p /= sum_unpeeled(row, t + 1);
        std::fill(row + t + 1, row + Tn, T(0));
    });
}

/// Causal softmax backward (see Reference); dscores may alias datt.
template <class T>
void causal_softmax_backward(const Cpu& dev, T* dscores, const T* att, const T* datt, int BH, int Tn, T scale) {
    using namespace detail;
    const std::int64_t rows = std::int64_t(BH) * Tn;
    if constexpr (std::is_same_v<T, float>) {
        const cpu_isa isa = row_kernel_isa();
        distill::detail::parallel_for(dev.threads(), rows, [&](std::int64_t r) {
            const int t = static_cast<int>(r % Tn);
            rowk::run_kernel<rowk::softmax_backward>(isa, dscores + r * Tn, att + r * Tn, datt + r * Tn,
                                                     std::int64_t(t + 1), scale);
            std::fill(dscores + r * Tn + t + 1, dscores + (r + 1) * Tn, T(0));
        });
        return;
    }
    distill::detail::parallel_for(dev.threads(), rows, [&](std::int64_t r) {
        const int t = static_cast<int>(r % Tn);
        const ConstArray<T> p(att + r * Tn, t + 1), d(datt + r * Tn, t + 1);
        const T dot = (p * d).sum();
        Array<T>(dscores + r * Tn, t + 1) = scale * p * (d - dot);
        std::fill(dscores + r * Tn + t + 1, dscores + (r + 1) * Tn, T(0));
    });
}

/// out(B,T,C) = wte[tokens] + wpe[t] (wpe null: wte[tokens] alone), parallel over positions.
template <class T>
void embedding_forward(const Cpu& dev, T* out, const std::int32_t* tokens, const T* wte, const T* wpe, int B, int Tn,
                       int C) {
    using namespace detail;
    const std::int64_t rows = std::int64_t(B) * Tn;
    distill::detail::parallel_for(dev.threads(), rows, [&](std::int64_t bt) {
        Array<T> o(out + bt * C, C);
        o = ConstArray<T>(wte + std::int64_t(tokens[bt]) * C, C);
        if (wpe) o += ConstArray<T>(wpe + (bt % Tn) * C, C);
    });
}

/// dwte(V,C), dwpe(T,C) (when not null) += scatter of dout(B,T,C); each thread owns a block of channels, so
/// repeated tokens never race and the summation order is fixed.
template <class T>
void embedding_backward(const Cpu& dev, T* dwte, T* dwpe, const T* dout, const std::int32_t* tokens, int B, int Tn,
                        int C) {
    using namespace detail;
    const std::int64_t rows = std::int64_t(B) * Tn;
    for_column_blocks(dev.threads(), C, 64 / sizeof(T), [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t bt = 0; bt < rows; ++bt) {
            const ConstArray<T> g(dout + bt * C + b, e - b);
            Array<T>(dwte + std::int64_t(tokens[bt]) * C + b, e - b) += g;
            if (dwpe) Array<T>(dwpe + (bt % Tn) * C + b, e - b) += g;
        }
    });
}

/// Fused cross-entropy and its gradient (see Reference), parallel over rows, one streaming pass
/// for the max and sum and one for the gradient; dlogits may alias logits.
template <class T>
int cross_entropy_forward_backward(const Cpu& dev, T* dlogits, T* losses, const T* logits, const std::int32_t* targets,
                                   int N, int V, T dloss) {
    using namespace detail;
    int count = 0;
    for (int n = 0; n < N; ++n) count += targets[n] >= 0;
    distill::detail::parallel_for(dev.threads(), N, [&](std::int64_t n_) {
        const int n = static_cast<int>(n_);
        const std::int64_t off = std::int64_t(n) * V;
        Array<T> d(dlogits + off, V);
        if (targets[n] < 0) {
            losses[n] = 0;
            d.setZero();
            return;
        }
        const ConstArray<T> x(logits + off, V);
        // (x - max) - log(sum), never x - lse with lse rounded near the largest logit
        const T mx = x.maxCoeff();
        const T log_sum = std::log((x - mx).exp().sum());
        losses[n] = log_sum - (x[targets[n]] - mx);
        assign_unpeeled(d.data(), V, ((x - mx) - log_sum).exp() * dloss);
        d[targets[n]] -= dloss;
    });
    return count;
}

/// One decoding step of attention against a KV cache (see Reference), parallel over (b, h). float:
/// the run-time ISA's kernel (`rowk::decode_attention`: scores, softmax and weighted sum of one head
/// with its operands in registers); double: a matrix-vector product for the scores, a vectorized
/// softmax, and one for the output. Query head h reads kv head h / (H / Hkv); caches
/// (max_batch, Hkv, Tmax, hs); q from qkv(B,(H+2Hkv)hs).
template <class T>
void attention_decode(const Cpu& dev, T* out, T* scratch, const T* qkv, const T* kcache, const T* vcache,
                      const int* lengths, int B, int H, int Hkv, int hs, int Tmax) {
    using namespace detail;
    using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
    const int C = H * hs, row = (H + 2 * Hkv) * hs;
    const T scale = T(1) / std::sqrt(T(hs));
    if constexpr (std::is_same_v<T, float>) {
        const cpu_isa isa = row_kernel_isa();
        distill::detail::parallel_for(dev.threads(), B * H, [&](std::int64_t bh) {
            const int b = static_cast<int>(bh / H), h = static_cast<int>(bh % H);
            const std::int64_t base = (std::int64_t(b) * Hkv + h / (H / Hkv)) * Tmax * hs;
            rowk::run_kernel<rowk::decode_attention>(isa, out + std::int64_t(b) * C + h * hs, scratch + bh * Tmax,
                                                     qkv + std::int64_t(b) * row + h * hs, kcache + base, vcache + base,
                                                     std::int64_t(lengths[b]), std::int64_t(hs), scale);
        });
        return;
    }
    distill::detail::parallel_for(dev.threads(), B * H, [&](std::int64_t bh_) {
        const int bh = static_cast<int>(bh_);
        const int b = bh / H, h = bh % H, n = lengths[b];
        const std::int64_t base = (std::int64_t(b) * Hkv + h / (H / Hkv)) * Tmax * hs;
        const ConstMap<T> K(kcache + base, n, hs, Eigen::OuterStride<>(hs));
        const ConstMap<T> Vm(vcache + base, n, hs, Eigen::OuterStride<>(hs));
        const Eigen::Map<const Vec> q(qkv + std::int64_t(b) * row + h * hs, hs);
        Eigen::Map<Vec> p(scratch + std::int64_t(bh) * Tmax, n);
        p.noalias() = K * q;
        const T mx = p.maxCoeff();
        assign_unpeeled(p.data(), n, ((p.array() - mx) * scale).exp());
        p /= sum_unpeeled(p.data(), n);
        Eigen::Map<Vec>(out + std::int64_t(b) * C + h * hs, hs).noalias() = Vm.transpose() * p;
    });
}

}  // namespace distill::device

// The fused attention kernels belong to the same device: wherever `Cpu` is complete they are declared,
// so `fused_attention_device<Cpu, T>` has one answer in every translation unit.
#include "distill/device/cpu/flash_attention.hpp"  // IWYU pragma: export
