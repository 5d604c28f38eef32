#pragma once
/// @file cpu/dnnl.hpp
/// `device::Cpu`'s oneDNN GEMM provider (compiled only with `DISTILL_WITH_DNNL`, which the CMake
/// target `distill::dnnl` sets when oneDNN is installed; Debian: libdnnl-dev). oneDNN's matmul is
/// the GEMM PyTorch itself uses on CPU; here it runs fp32 GEMMs ~1.3x faster than Eigen's, and bf16
/// GEMMs on the AVX512-BF16 (or AMX) units.
///
/// - fp32: a matmul primitive on the caller's buffers.
/// - bf16: both operands are rounded to bf16 (round to nearest even) into scratch buffers owned by
///   the calling thread, the product is accumulated in fp32 and written to the fp32 C. Master
///   weights, gradients, losses, softmax and LayerNorm statistics stay fp32.
///
/// One primitive per GEMM shape (dims, leading dimensions, transposes, alpha, beta, data type,
/// threads), created on first use and kept in a per-thread cache; a call then sets the buffers' data
/// handles and executes: no primitive creation in a training step. Results are deterministic for a
/// fixed thread count (oneDNN's CPU matmul uses no atomics).
///
/// - packed weights (`packed_weight_desc`, `pack`): a weight the same products read again and again
///   (decoding: one call per token, few rows) copied once into the blocked layout the matmul reads,
///   which it otherwise copies its plain weight into at every call (fp32, and bf16 stored weights).

#if !defined(DISTILL_WITH_DNNL)
#error "device/cpu/dnnl.hpp needs oneDNN: link distill::dnnl (DISTILL_WITH_DNNL)"
#endif

#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include <oneapi/dnnl/dnnl.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(__AVX512BF16__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace distill::device::detail {

/// fp32 -> bf16, round to nearest even (NaN stays NaN), as torch's `.to(torch.bfloat16)`.
inline std::uint16_t to_bf16(float f) noexcept {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>(u >> 16);
}

/// bf16 -> fp32 (exact).
inline float from_bf16(std::uint16_t h) noexcept {
    const std::uint32_t u = std::uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

/// Rounds n floats to bf16.
inline void convert_row(std::uint16_t* dst, const float* src, std::int64_t n) noexcept {
    std::int64_t i = 0;
#if defined(__AVX512BF16__)
    for (; i + 32 <= n; i += 32) {
        const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + i + 16), _mm512_loadu_ps(src + i));
        _mm512_storeu_si512(dst + i, reinterpret_cast<const __m512i&>(v));
    }
#endif
    for (; i < n; ++i) dst[i] = to_bf16(src[i]);
}

/// A (rows, cols) fp32 matrix with leading dimension ld rounded into a packed bf16 one (ld = cols),
/// rows split over the threads.
inline void convert(std::uint16_t* dst, const float* src, std::int64_t rows, std::int64_t cols, std::int64_t ld,
                    int threads) {
    const bool parallel = rows * cols >= (std::int64_t(1) << 16) && threads > 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (parallel)
    for (std::int64_t r = 0; r < rows; ++r) convert_row(dst + r * cols, src + r * ld, cols);
}

struct Key {
    std::int64_t M, N, K, lda, ldb, ldc;
    float alpha, beta;
    int flags;  // bit 0 trans_a, bit 1 trans_b, bit 2 bf16, bit 3 bias, bit 4 packed B, bit 5 GELU
    int threads;
    std::int64_t batch = 1, stride_a = 0, stride_b = 0, stride_c = 0;
    bool operator==(const Key& o) const noexcept {
        return M == o.M && N == o.N && K == o.K && lda == o.lda && ldb == o.ldb && ldc == o.ldc &&
               std::memcmp(&alpha, &o.alpha, 4) == 0 && std::memcmp(&beta, &o.beta, 4) == 0 && flags == o.flags &&
               threads == o.threads && batch == o.batch && stride_a == o.stride_a && stride_b == o.stride_b &&
               stride_c == o.stride_c;
    }
};

struct KeyHash {
    std::size_t operator()(const Key& k) const noexcept {
        std::uint64_t h = 1469598103934665603ULL;
        auto mix = [&](std::uint64_t v) { h = (h ^ v) * 1099511628211ULL; };
        mix(std::uint64_t(k.M));
        mix(std::uint64_t(k.N));
        mix(std::uint64_t(k.K));
        mix(std::uint64_t(k.lda));
        mix(std::uint64_t(k.ldb));
        mix(std::uint64_t(k.ldc));
        std::uint32_t a, b;
        std::memcpy(&a, &k.alpha, 4);
        std::memcpy(&b, &k.beta, 4);
        mix(a);
        mix(b);
        mix(std::uint64_t(k.flags));
        mix(std::uint64_t(k.threads));
        mix(std::uint64_t(k.batch));
        mix(std::uint64_t(k.stride_a));
        mix(std::uint64_t(k.stride_b));
        mix(std::uint64_t(k.stride_c));
        return static_cast<std::size_t>(h);
    }
};

/// The instruction set oneDNN dispatches to on this CPU (after ONEDNN_MAX_CPU_ISA), e.g. "avx2".
inline const char* isa_name() {
    using isa = dnnl::cpu_isa;
    switch (dnnl::get_effective_cpu_isa()) {
        case isa::sse41:
            return "sse41";
        case isa::avx:
            return "avx";
        case isa::avx2:
            return "avx2";
        case isa::avx2_vnni:
            return "avx2_vnni";
        case isa::avx512_core:
            return "avx512_core";
        case isa::avx512_core_vnni:
            return "avx512_core_vnni";
        case isa::avx512_core_bf16:
            return "avx512_core_bf16";
        case isa::avx512_core_amx:
            return "avx512_core_amx";
        default:
            return "other";
    }
}

// One GEMM shape: its primitive, the three memory objects whose data handles change per call, and
// the argument array handed to the C API (the C++ wrapper's execute builds a vector per call).
struct Entry {
    dnnl::matmul prim;
    dnnl::memory a, b, c, bias;
    dnnl_exec_arg_t args[4];
    bool reads_packed = false;  // B from the caller's packed copy (see packed_weight_desc)
};

// Per-thread state: engine, stream, primitive cache, bf16 scratch.
struct DnnlState {
    dnnl::engine engine{dnnl::engine::kind::cpu, 0};
    dnnl::stream stream{engine};
    std::unordered_map<Key, std::unique_ptr<Entry>, KeyHash> cache;
    std::uint16_t* scratch = nullptr;
    std::size_t scratch_elems = 0;

    DnnlState() { cache.reserve(256); }
    ~DnnlState() { std::free(scratch); }
    DnnlState(const DnnlState&) = delete;
    DnnlState& operator=(const DnnlState&) = delete;

    // Room for n bf16 elements; grows (reallocates) only when a larger GEMM than any before appears.
    std::uint16_t* bf16_scratch(std::size_t n) {
        if (n > scratch_elems) {
            std::free(scratch);
            const std::size_t bytes = (n * 2 + 63) / 64 * 64;
            scratch = static_cast<std::uint16_t*>(std::aligned_alloc(64, bytes));
            if (!scratch) throw std::bad_alloc();
            scratch_elems = n;
        }
        return scratch;
    }
};

inline DnnlState& state() {
    thread_local DnnlState s;
    return s;
}

/// Why this CPU cannot run oneDNN's bf16 matmul, or "" when it can. oneDNN 2.x has a bf16 matmul only
/// from AVX-512 up (native on AVX512-BF16 and AMX); elsewhere creating one throws. Asked once: a
/// small bf16 primitive descriptor is created (respecting ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA).
inline const std::string& bf16_unsupported_reason() {
    static const std::string reason = [] {
        using dt = dnnl::memory::data_type;
        using dims = dnnl::memory::dims;
        try {
            const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
            const dnnl::memory::desc a(dims{16, 16}, dt::bf16, dims{16, 1}), c(dims{16, 16}, dt::f32, dims{16, 1});
            const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, a, c), engine);
            return std::string();
        } catch (const dnnl::error&) {
            return std::string("this CPU (oneDNN's ISA: ") + isa_name() +
                   ") has no bf16 matmul; oneDNN needs AVX-512 (AVX512-BF16 or AMX to be fast)";
        }
    }();
    return reason;
}

/// The blocked layout oneDNN's matmul reads a weight W(N,K) in (row-major W, the product C = A · Wᵀ;
/// fp32 operands, or bf16 ones with `bf16`) on this CPU at `threads` threads; a zero (empty) desc where
/// it reads a plain layout (oneDNN 2.6's fp32 gemm kernel below AVX-512). Asked of a primitive with 64
/// rows; every row count takes the same layout (the same brgemm kernels, which otherwise copy W into
/// it at every call).
inline dnnl::memory::desc packed_weight_desc(int N, int K, int threads, bool bf16 = false) {
    using dims = dnnl::memory::dims;
    using dt = dnnl::memory::data_type;
#if defined(_OPENMP)
    if (omp_get_max_threads() != threads) omp_set_num_threads(threads);
#endif
    const dt type = bf16 ? dt::bf16 : dt::f32;
    const dnnl::memory::desc a(dims{64, K}, type, dims{K, 1}), any(dims{K, N}, type, dnnl::memory::format_tag::any),
        c(dims{64, N}, dt::f32, dims{N, 1});
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, any, c), state().engine);
    const dnnl::memory::desc packed = pd.weights_desc();
    // a layout with inner blocks (brgemm's); a plain one, even transposed, is read as it is
    const bool blocked = packed.data.format_kind == dnnl_blocked && packed.data.format_desc.blocking.inner_nblks > 0;
    return blocked ? packed : dnnl::memory::desc();
}

/// Copies W(N,K) (row-major; fp32, or bf16 bits with `bf16`) into `dst`, laid out as `packed`
/// (`packed_weight_desc`; dst holds packed.get_size() bytes).
inline void pack(void* dst, const dnnl::memory::desc& packed, const void* W, int N, int K, bool bf16 = false) {
    using dims = dnnl::memory::dims;
    using dt = dnnl::memory::data_type;
    const dnnl::memory::desc plain(dims{K, N}, bf16 ? dt::bf16 : dt::f32, dims{1, K});
    DnnlState& st = state();
    dnnl::memory src(plain, st.engine, const_cast<void*>(W)), out(packed, st.engine, dst);
    dnnl::reorder(src, out).execute(st.stream, src, out);
    st.stream.wait();
}

/// C(M,N) = alpha op(A) op(B) + beta C (row-major, see the Reference gemm) through oneDNN, the
/// operands rounded to bf16 when `bf16`; with `batch` > 1, that many such products at the strides
/// (elements) between consecutive A, B and C (one batched primitive: the attention's per-head
/// products; fp32 only). Runs on `threads` OpenMP threads.
/// With `B16` (bf16 only) the B operand is that bf16 matrix, already rounded and packed (ldb = its
/// width): a stored bf16 weight, read as it is (`B` is ignored); A alone is rounded.
/// With `bias` (alpha 1, no batch) C(M,N) = op(A) op(B) + bias(N) + beta C: the bias added in the
/// product's epilogue, saving a pass over C.
/// With `B_packed` (B transposed, no batch; bf16: with B16) B_packed holds B laid out as
/// `packed_weight_desc(N, K, threads, bf16)`, and the product reads it there wherever the kernel is the
/// one the plain B would run (so the bits are too); B (B16) stays the plain B.
/// With `gelu` (no batch) C = gelu(alpha op(A) op(B) (+ bias) + beta C), the tanh GELU of
/// `gelu_forward` (oneDNN's evaluation of it, equal to rounding) in the epilogue: no second pass over C.
/// With `A16` (bf16 only) A is that bf16 matrix, already rounded and packed (lda = its width), as B16
/// for B. With `C16` (bf16, no batch, beta 0) the product is written there rounded to bf16 (packed, ldc
/// = N; round to nearest even, as `to_bf16`) instead of to C: an operand the next bf16 product reads.
inline void gemm(bool bf16, int threads, bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                 int lda, const float* B, int ldb, float beta, float* C, int ldc, std::int64_t batch = 1,
                 std::int64_t stride_a = 0, std::int64_t stride_b = 0, std::int64_t stride_c = 0,
                 const std::uint16_t* B16 = nullptr, const float* bias = nullptr, const void* B_packed = nullptr,
                 bool gelu = false, const std::uint16_t* A16 = nullptr, std::uint16_t* C16 = nullptr) {
    using dt = dnnl::memory::data_type;
    using dims = dnnl::memory::dims;
    DnnlState& st = state();
#if defined(_OPENMP)
    if (omp_get_max_threads() != threads) omp_set_num_threads(threads);
#endif
    if (bf16 && batch > 1) throw std::logic_error("oneDNN gemm: batched products are fp32");
    if (B16 && (!bf16 || ldb != (trans_b ? K : N)))
        throw std::logic_error("oneDNN gemm: a bf16 B operand must be packed and the product bf16");
    if (A16 && (!bf16 || lda != (trans_a ? M : K)))
        throw std::logic_error("oneDNN gemm: a bf16 A operand must be packed and the product bf16");
    if (C16 && (!bf16 || batch > 1 || beta != 0.0f || ldc != N))
        throw std::logic_error("oneDNN gemm: a bf16 C is packed, of a bf16 product with beta 0 and no batch");
    if (bias && (alpha != 1.0f || batch > 1)) throw std::logic_error("oneDNN gemm: a bias needs alpha 1 and no batch");
    if (gelu && batch > 1) throw std::logic_error("oneDNN gemm: a GELU epilogue takes no batch");
    if (B_packed && (batch > 1 || !trans_b || bf16 != (B16 != nullptr)))
        throw std::logic_error(
            "oneDNN gemm: a packed B is a weight (bf16: a stored one), transposed, and takes no batch");
    // bf16 copies are packed: leading dimension = their stored width
    const std::int64_t a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
    const std::int64_t b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
    const std::int64_t la = bf16 ? a_cols : lda, lb = bf16 ? b_cols : ldb;
    if (batch <= 1) stride_a = stride_b = stride_c = 0;
    const int flags = int(trans_a) | int(trans_b) << 1 | int(bf16) << 2 | int(bias != nullptr) << 3 |
                      int(B_packed != nullptr) << 4 | int(gelu) << 5 | int(C16 != nullptr) << 6;
    const Key key{M, N, K, la, lb, ldc, alpha, beta, flags, threads, batch, stride_a, stride_b, stride_c};
    auto it = st.cache.find(key);
    if (it == st.cache.end()) {
        const dt type = bf16 ? dt::bf16 : dt::f32;
        // (batch, rows, cols) where batched; the batch stride first
        auto md = [&](std::int64_t rows, std::int64_t cols, dims strides, std::int64_t stride, dt t) {
            if (batch <= 1) return dnnl::memory::desc(dims{rows, cols}, t, strides);
            return dnnl::memory::desc(dims{batch, rows, cols}, t, dims{stride, strides[0], strides[1]});
        };
        const dnnl::memory::desc a_md = md(M, K, trans_a ? dims{1, la} : dims{la, 1}, stride_a, type);
        const dnnl::memory::desc plain_b = md(K, N, trans_b ? dims{1, lb} : dims{lb, 1}, stride_b, type);
        const dnnl::memory::desc c_md = md(M, N, dims{ldc, 1}, stride_c, C16 ? dt::bf16 : dt::f32);
        dnnl::primitive_attr attr;
        if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
        if (beta != 0.0f || gelu) {
            dnnl::post_ops po;
            if (beta != 0.0f) po.append_sum(beta);
            if (gelu) po.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_tanh, 0.0f, 0.0f);
            attr.set_post_ops(po);
        }
        const dnnl::memory::desc bias_md(dims{1, N}, dt::f32, dims{N, 1});
        auto make = [&](const dnnl::memory::desc& b) {
            return dnnl::matmul::primitive_desc(
                bias ? dnnl::matmul::desc(a_md, b, bias_md, c_md) : dnnl::matmul::desc(a_md, b, c_md), attr, st.engine);
        };
        dnnl::matmul::primitive_desc pd = make(plain_b);
        dnnl::memory::desc b_md = plain_b;
        auto e = std::make_unique<Entry>();
        if (B_packed) {
            // the packed B only where the plain call runs the same kernel (which copies B into that
            // layout itself), so the bits are the same; otherwise (a strided A or C: oneDNN's gemm
            // kernel, not brgemm) the plain B
            const dnnl::memory::desc packed_b = packed_weight_desc(N, K, threads, bf16);
            if (!packed_b.is_zero()) {
                dnnl::matmul::primitive_desc packed_pd = make(packed_b);
                if (std::strcmp(packed_pd.impl_info_str(), pd.impl_info_str()) == 0) {
                    pd = packed_pd;
                    b_md = packed_b;
                    e->reads_packed = true;
                }
            }
        }
        e->prim = dnnl::matmul(pd);
        e->a = dnnl::memory(a_md, st.engine, nullptr);
        e->b = dnnl::memory(b_md, st.engine, nullptr);
        e->c = dnnl::memory(c_md, st.engine, nullptr);
        e->bias = dnnl::memory(bias_md, st.engine, nullptr);
        e->args[0] = {DNNL_ARG_SRC, e->a.get()};
        e->args[1] = {DNNL_ARG_WEIGHTS, e->b.get()};
        e->args[2] = {DNNL_ARG_DST, e->c.get()};
        e->args[3] = {DNNL_ARG_BIAS, e->bias.get()};
        it = st.cache.emplace(key, std::move(e)).first;
    }
    Entry& e = *it->second;
    if (bf16) {
        // the same primitive either way (packed bf16 operands): a stored bf16 B gives the bits a
        // rounded fp32 B gives
        const std::int64_t a_elems = A16 ? 0 : a_rows * a_cols, b_elems = B16 ? 0 : b_rows * b_cols;
        std::uint16_t* sa = st.bf16_scratch(std::size_t(a_elems + b_elems + 32));
        std::uint16_t* sb = sa + (a_elems + 31) / 32 * 32;
        if (!A16) convert(sa, A, a_rows, a_cols, lda, threads);
        if (!B16) convert(sb, B, b_rows, b_cols, ldb, threads);
        e.a.set_data_handle(const_cast<std::uint16_t*>(A16 ? A16 : sa));
        e.b.set_data_handle(e.reads_packed ? const_cast<void*>(B_packed) : const_cast<std::uint16_t*>(B16 ? B16 : sb));
    } else {
        e.a.set_data_handle(const_cast<float*>(A));
        e.b.set_data_handle(e.reads_packed ? const_cast<void*>(B_packed) : const_cast<float*>(B));
    }
    e.c.set_data_handle(C16 ? static_cast<void*>(C16) : C);
    if (bias) e.bias.set_data_handle(const_cast<float*>(bias));
    const dnnl_status_t status = dnnl_primitive_execute(e.prim.get(), st.stream.get(), bias ? 4 : 3, e.args);
    if (status != dnnl_success) throw std::runtime_error("oneDNN matmul failed, status " + std::to_string(status));
    st.stream.wait();
}

}  // namespace distill::device::detail
