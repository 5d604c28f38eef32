#pragma once
/// @file device.hpp
/// The `device_policy` concept: where tensors live and which kernels run on them.
///
/// **What a device represents.** A tag object, cheap to copy, chosen at compile time as the
/// `Device` parameter of models, losses, optimizers and the `Distiller`. It owns no tensors; it
/// allocates arena memory and carries execution settings (thread count, CUDA stream).
///
/// **Minimal complete definition.**
/// - `static constexpr memory_space memory` — where its allocations live;
/// - `void* allocate(std::size_t bytes) const`, `void deallocate(void*, std::size_t bytes) const`,
///   `void fill_zero(void*, std::size_t bytes) const`, `void copy(void* dst, const void* src, std::size_t) const`;
/// - `static constexpr const char* name`;
/// - the kernels of each feature it is used for, as free functions in the device's namespace found by
///   argument-dependent lookup, first argument the device. `device::kernel` below lists every one of
///   them with its signature, one concept per kernel, grouped by feature:
///
///   - layers (`layer_device`, checked by `require_layer_kernels`; `student::Transformer`,
///     `student::Encoder`): gemm, gemm_strided_batched, add_bias, bias_grad, add, accumulate,
///     layernorm_forward/backward, gelu_forward/backward, causal_softmax_forward/backward,
///     embedding_forward/backward, cross_entropy_forward_backward;
///   - Llama blocks (`llama_device`, `require_llama_kernels`; `student::Transformer`):
///     rmsnorm_forward/backward, swiglu_forward/backward, rope_rotate;
///   - decoding (`decoding_device`, `require_decoding_kernels`; `Transformer::prefill`, `decode`):
///     attention_decode, kv_cache_store;
///   - fused attention (`fused_attention_device`, optional: a model uses it where the device has it,
///     else the (T,T) path of `nn::attention_forward`): flash_attention_forward/backward;
///   - the bias in the product's epilogue (optional: `nn::linear_forward` and the model's bf16-weight
///     linear call it where the device has it, else `gemm` then `add_bias`): gemm_bias(dev, trans_a,
///     trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc, bias), and a trailing `bias` argument of
///     gemm_bf16_weight (`device::Cpu`); a further trailing `gelu` of gemm_bias, gemm_bf16_weight and
///     gemm_packed applies `gelu_forward` to the result in the same epilogue (`device::Cpu`;
///     `student::Transformer` uses it for an inference forward of 64 rows or more, and calls
///     `gelu_forward` after the product on a device without it);
///   - packed weights (`weight_packing_device`, optional: `Transformer::prefill` packs the model's
///     matrices where the device has them, and `prefill` and `decode` multiply by the copies; so does
///     every product after `Transformer::pack_matrices()`): pack_weight(dev, W, N, K) and
///     gemm_packed(dev, M, N, K, A, lda, W, packed, beta, C, ldc, bias) (`device::Cpu` with oneDNN,
///     for fp32 and stored bf16 weights);
///   - losses (`loss_device`, `require_loss_kernels`; every `loss::` term, through `loss::context`):
///     kl_, reverse_kl_, jsd_, topk_kl_, masked_cross_entropy_, attention_kl_,
///     relation_kl_, cosine_embedding_ and embedding_mse_forward_backward,
///     hidden_match_forward_backward;
///   - optimizers (`optimizer_device`, `require_optimizer_kernels`; `optim::Adam`, `AdamW`, `Sgd`,
///     `GradClipper`): adam_update, sgd_update, sum_of_squares, scale_in_place, each over a
///     `tensor_list` (all parameters at once);
///   - encoder (`encoder_device`, `require_encoder_kernels`; `student::Encoder`):
///     bert_embedding_forward/backward, gelu_erf_forward/backward, masked_softmax_forward/backward,
///     mean_pool_forward/backward, cls_pool_forward/backward;
///   - quantized inference (`quant_device`, `require_quant_kernels`; the quantized student of a GGUF
///     export, used for generation only): quant_matmul, y = x · Wᵀ with W in ggml blocks (F32, F16,
///     BF16, Q8_0, Q4_0, Q4_K; `io/quant.hpp`) as ggml's CPU backend computes it (fp32 activations in,
///     converted to the weight type's 8-bit or 16-bit form inside). Host devices only: `device::Cuda`
///     does not provide it, and nothing that trains calls it.
///
///   Each check is one `static_assert` per kernel, made where the feature is instantiated with the
///   device (the model's and the optimizer's class templates, the loss context), so a device that
///   lacks kernels fails to compile with one line per missing kernel, e.g. `device lacks kernel:
///   adam_update(dev, const tensor_list<T>&, const adam_coefficients<T>&)`; the compiler's
///   "required from" lines name the device and the feature.
///
///   The kernels' semantics are those of `device::Reference` (`device/reference/*.hpp`: plain loops
///   with shapes, formula and the PyTorch function each mirrors — read them as the specification).
///   The loss kernels write per-row divergences (no τ², no mean over rows) and
///   `grad_scale · ∂row/∂input`; the loss terms of `loss/` are the entry point for everyone else
///   (docs/losses.md, "Kernels and numerics"). Extras a device may have beyond the contract
///   (`device::Cuda`'s `bias_gelu_forward`, `argmax_rows`, `sample_rows`) are never called by shared code.
///
/// **Laws.** Every kernel of a device agrees with the `Reference` kernel of the same name to fp32
/// rounding (tested in `tests/unit-kernels.cpp`); for a fixed thread count every kernel is
/// deterministic (no atomics, fixed reduction order). On host devices the optimizer updates and the
/// gradient-norm reduction give `Reference`'s bits whatever the thread count.

#include <algorithm>
#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <variant>
#include <vector>

#include "distill/io/quant.hpp"
#include "distill/tensor.hpp"

namespace distill {

/// A place where tensors live and kernels run (see the file comment for the full contract).
template <class D>
concept device_policy = std::copy_constructible<D> && requires(const D& d, void* p, const void* q, std::size_t n) {
    { D::memory } -> std::convertible_to<memory_space>;
    { D::name } -> std::convertible_to<const char*>;
    { d.allocate(n) } -> std::same_as<void*>;
    d.deallocate(p, n);
    d.fill_zero(p, n);
    d.copy(p, q, n);
};

namespace device {

/// The arithmetic of a device's matrix products.
enum class precision {
    fp32,  ///< fp32 operands, fp32 accumulation
    bf16   ///< operands rounded to bf16, fp32 accumulation (fp32 master weights and reductions)
};

/// The precision `dev` computes in: its `compute_precision()` where it has one (device::Cpu), else fp32.
template <class D>
precision compute_precision_of(const D& dev) noexcept {
    if constexpr (requires {
                      { dev.compute_precision() } -> std::same_as<precision>;
                  })
        return dev.compute_precision();
    else
        return precision::fp32;
}

/// The library's host devices, defined in `device/reference.hpp` and `device/cpu.hpp` (declared here
/// so that a default template argument can name them).
struct Reference;
struct Cpu;

// ---- what the optimizer kernels take ------------------------------------------------------------

/// The per-step coefficients of an Adam/AdamW update (`adam_update`):
/// m ← b1 m + c1 g, v ← b2 v + c2 g², p ← p + neg_step_size m / (√v / bc2_sqrt + eps); with decay,
/// p ← shrink p first (decoupled) or g ← g + wd p (coupled).
template <class T>
struct adam_coefficients {
    T b1, c1, b2, c2, neg_step_size, bc2_sqrt, eps, wd, shrink;
    bool decoupled;
};

/// The per-step coefficients of an SGD update (`sgd_update`): d ← g (+ wd p with decay); with
/// momentum buf ← d (first step) or mu buf + keep d, d ← d + mu buf (nesterov) or buf; p ← p + neg_lr d.
template <class T>
struct sgd_coefficients {
    T neg_lr, wd, mu, keep;
    bool momentum, first, nesterov;
};

/// Several tensors in one device's memory, swept together by the multi-tensor kernels (`adam_update`,
/// `sgd_update`, `sum_of_squares`, `scale_in_place`): per tensor its element count, up to four arrays
/// of that many elements (a kernel's documentation says which array is what; an unused one is null)
/// and a flag (weight decay applies), plus the split of all of them into chunks of at most
/// `chunk_elements` (aligned to 16 elements, so no two threads write one cache line) and one double
/// per chunk for partial sums. Host devices spread the chunks over their threads and add the
/// partials in chunk order, so a reduction's bits do not depend on the thread count; a device with
/// its own memory may ignore the chunks. Laid out once (adding allocates); the kernels use it
/// without allocating.
/// @tparam T element type.
template <class T>
class tensor_list {
public:
    /// Elements per chunk: large enough that scheduling costs nothing, small enough that a
    /// 50M-parameter model gives thousands of chunks to balance over the threads.
    static constexpr std::int64_t chunk_elements = 16384;

    /// One contiguous piece of one tensor: the unit of parallel work.
    struct chunk {
        std::uint32_t tensor;  ///< index of the tensor
        std::int64_t offset;   ///< first element inside the tensor
        std::int64_t size;     ///< elements
    };

    /// Appends a tensor of `n` elements with the arrays `a0..a3` (null where unused) and `flag`.
    void add(std::int64_t n, T* a0, T* a1 = nullptr, T* a2 = nullptr, T* a3 = nullptr, bool flag = false) {
        const auto index = static_cast<std::uint32_t>(sizes_.size());
        sizes_.push_back(n);
        arrays_.push_back({a0, a1, a2, a3});
        flags_.push_back(flag);
        for (std::int64_t off = 0; off < n; off += chunk_elements)
            chunks_.push_back({index, off, std::min(chunk_elements, n - off)});
        partials_.resize(chunks_.size());
        total_ += n;
    }

    /// Tensors in the list.
    std::size_t size() const noexcept { return sizes_.size(); }
    /// Elements of tensor `i`.
    std::int64_t numel(std::size_t i) const noexcept { return sizes_[i]; }
    /// Array `slot` (0..3) of tensor `i`; null where unused.
    T* array(std::size_t i, int slot) const noexcept { return arrays_[i][static_cast<std::size_t>(slot)]; }
    /// The flag of tensor `i`.
    bool flag(std::size_t i) const noexcept { return flags_[i] != 0; }
    /// Elements in all tensors.
    std::int64_t total() const noexcept { return total_; }
    /// Every tensor's chunks, tensor by tensor, in element order.
    const std::vector<chunk>& chunks() const noexcept { return chunks_; }
    /// One double per chunk: scratch for reductions (writable through a const list).
    double* partials() const noexcept { return partials_.data(); }

private:
    std::vector<std::int64_t> sizes_;
    std::vector<std::array<T*, 4>> arrays_;
    std::vector<std::uint8_t> flags_;
    std::vector<chunk> chunks_;
    mutable std::vector<double> partials_;
    std::int64_t total_ = 0;
};

// ---- the kernels ----------------------------------------------------------------------------------

/// Every kernel of the contract, one concept per kernel: `kernel::has_<name><D, T>` holds when a call
/// with the kernel's signature, first argument a `const D&`, finds a function by argument-dependent
/// lookup. The signatures are the Reference's (`device/reference/*.hpp` documents each: shapes,
/// formula). Scalars: `T` elements; `i` ints, `n` 64-bit counts, `f` flags.
namespace kernel {

// clang-format off
// layers (device/<name>/layers): GEMMs, elementwise, LayerNorm, GELU (tanh), causal softmax, embeddings, cross-entropy
template <class D, class T> concept has_gemm = requires(const D& d, T* y, const T* x, T s, int i, bool f) { gemm(d, f, f, i, i, i, s, x, i, x, i, s, y, i); };
template <class D, class T> concept has_gemm_strided_batched = requires(const D& d, T* y, const T* x, T s, int i, std::int64_t n, bool f) { gemm_strided_batched(d, f, f, i, i, i, s, x, i, n, x, i, n, s, y, i, n, i); };
template <class D, class T> concept has_add_bias = requires(const D& d, T* y, const T* x, int i) { add_bias(d, y, x, i, i); };
template <class D, class T> concept has_bias_grad = requires(const D& d, T* y, const T* x, int i) { bias_grad(d, y, x, i, i); };
template <class D, class T> concept has_add = requires(const D& d, T* y, const T* x, std::int64_t n) { add(d, y, x, x, n); };
template <class D, class T> concept has_accumulate = requires(const D& d, T* y, const T* x, std::int64_t n) { accumulate(d, y, x, n); };
template <class D, class T> concept has_layernorm_forward = requires(const D& d, T* y, const T* x, T s, int i) { layernorm_forward(d, y, y, y, x, x, x, i, i, s); };
template <class D, class T> concept has_layernorm_backward = requires(const D& d, T* y, const T* x, int i) { layernorm_backward(d, y, y, y, x, x, x, x, x, i, i); };
template <class D, class T> concept has_gelu_forward = requires(const D& d, T* y, const T* x, std::int64_t n) { gelu_forward(d, y, x, n); };
template <class D, class T> concept has_gelu_backward = requires(const D& d, T* y, const T* x, std::int64_t n) { gelu_backward(d, y, x, x, n); };
template <class D, class T> concept has_causal_softmax_forward = requires(const D& d, T* y, T s, int i) { causal_softmax_forward(d, y, i, i, s); };
template <class D, class T> concept has_causal_softmax_backward = requires(const D& d, T* y, const T* x, T s, int i) { causal_softmax_backward(d, y, x, x, i, i, s); };
template <class D, class T> concept has_embedding_forward = requires(const D& d, T* y, const T* x, const std::int32_t* ids, int i) { embedding_forward(d, y, ids, x, x, i, i, i); };
template <class D, class T> concept has_embedding_backward = requires(const D& d, T* y, const T* x, const std::int32_t* ids, int i) { embedding_backward(d, y, y, x, ids, i, i, i); };
template <class D, class T> concept has_cross_entropy_forward_backward = requires(const D& d, T* y, const T* x, const std::int32_t* ids, T s, int i) { { cross_entropy_forward_backward(d, y, y, x, ids, i, i, s) } -> std::convertible_to<int>; };
// the Llama family's blocks
template <class D, class T> concept has_rmsnorm_forward = requires(const D& d, T* y, const T* x, T s, int i) { rmsnorm_forward(d, y, y, x, x, i, i, s); };
template <class D, class T> concept has_rmsnorm_backward = requires(const D& d, T* y, const T* x, int i) { rmsnorm_backward(d, y, y, x, x, x, x, i, i); };
template <class D, class T> concept has_swiglu_forward = requires(const D& d, T* y, const T* x, int i) { swiglu_forward(d, y, x, i, i); };
template <class D, class T> concept has_swiglu_backward = requires(const D& d, T* y, const T* x, int i) { swiglu_backward(d, y, x, x, i, i); };
template <class D, class T> concept has_rope_rotate = requires(const D& d, T* y, const T* x, const std::int32_t* ids, int i, bool f) { rope_rotate(d, y, x, x, ids, i, i, i, i, f); };
// incremental decoding
template <class D, class T> concept has_attention_decode = requires(const D& d, T* y, const T* x, const int* len, int i) { attention_decode(d, y, y, x, x, x, len, i, i, i, i, i); };
template <class D, class T> concept has_kv_cache_store = requires(const D& d, T* y, const T* x, const std::int32_t* ids, int i) { kv_cache_store(d, y, y, x, ids, i, i, i, i, i); };
// fused causal attention (optional; device/cpu/flash_attention.hpp)
template <class D, class T> concept has_flash_attention_forward = requires(const D& d, T* y, const T* x, int i) { flash_attention_forward(d, y, y, x, i, i, i, i, i); };
template <class D, class T> concept has_flash_attention_backward = requires(const D& d, T* y, const T* x, int i) { flash_attention_backward(d, y, x, x, x, x, i, i, i, i, i); };
// losses (device/<name>/losses): fused rows
template <class D, class T> concept has_kl_forward_backward = requires(const D& d, T* y, const T* x, const std::uint8_t* m, std::int64_t n, T s, int i, bool f) { kl_forward_backward(d, y, f, y, x, x, m, n, i, s, s); };
template <class D, class T> concept has_reverse_kl_forward_backward = requires(const D& d, T* y, const T* x, const std::uint8_t* m, std::int64_t n, T s, int i, bool f) { reverse_kl_forward_backward(d, y, f, y, x, x, m, n, i, s, s); };
template <class D, class T> concept has_jsd_forward_backward = requires(const D& d, T* y, const T* x, const std::uint8_t* m, std::int64_t n, T s, int i, bool f, double r) { jsd_forward_backward(d, y, f, y, x, x, m, n, i, r, s, s); };
template <class D, class T> concept has_topk_kl_forward_backward = requires(const D& d, T* y, const T* x, const std::int32_t* ids, const std::uint8_t* m, std::int64_t n, T s, int i, bool f) { topk_kl_forward_backward(d, y, f, y, x, ids, x, m, n, i, i, s, s); };
template <class D, class T> concept has_masked_cross_entropy_forward_backward = requires(const D& d, T* y, const T* x, const std::int32_t* ids, const std::uint8_t* m, std::int64_t n, T s, int i, bool f) { masked_cross_entropy_forward_backward(d, y, f, y, x, ids, m, n, i, s); };
template <class D, class T> concept has_attention_kl_forward_backward = requires(const D& d, T* y, const T* x, const std::uint8_t* m, T s, int i, bool f) { attention_kl_forward_backward(d, y, f, y, x, x, m, i, i, i, i, s, f); };
template <class D, class T> concept has_relation_kl_forward_backward = requires(const D& d, T* y, const T* x, const std::uint8_t* m, T s, int i) { relation_kl_forward_backward(d, y, y, x, x, m, i, i, s, s, s); };
template <class D, class T> concept has_cosine_embedding_forward_backward = requires(const D& d, T* y, const T* x, T s, int i, bool f) { cosine_embedding_forward_backward(d, y, f, y, x, x, i, i, s); };
template <class D, class T> concept has_embedding_mse_forward_backward = requires(const D& d, T* y, const T* x, T s, int i, bool f) { embedding_mse_forward_backward(d, y, f, y, x, x, i, i, s); };
template <class D, class T> concept has_hidden_match_forward_backward = requires(const D& d, T* y, const T* x, const std::uint8_t* m, std::int64_t n, T s, int i, bool f) { { hidden_match_forward_backward(d, y, y, x, m, n, i, s, f) } -> std::convertible_to<double>; };
// optimizers (device/<name>/optim): multi-tensor updates and reductions
template <class D, class T> concept has_adam_update = requires(const D& d, const tensor_list<T>& l, const adam_coefficients<T>& k) { adam_update(d, l, k); };
template <class D, class T> concept has_sgd_update = requires(const D& d, const tensor_list<T>& l, const sgd_coefficients<T>& k) { sgd_update(d, l, k); };
template <class D, class T> concept has_sum_of_squares = requires(const D& d, const tensor_list<T>& l) { { sum_of_squares(d, l) } -> std::convertible_to<double>; };
template <class D, class T> concept has_scale_in_place = requires(const D& d, const tensor_list<T>& l, T s) { scale_in_place(d, l, s); };
// the bidirectional encoder (device/<name>/encoder)
template <class D, class T> concept has_bert_embedding_forward = requires(const D& d, T* y, const T* x, const std::int32_t* ids, int i) { bert_embedding_forward(d, y, ids, ids, x, x, x, i, i, i); };
template <class D, class T> concept has_bert_embedding_backward = requires(const D& d, T* y, const T* x, const std::int32_t* ids, int i) { bert_embedding_backward(d, y, y, y, x, ids, ids, i, i, i); };
template <class D, class T> concept has_gelu_erf_forward = requires(const D& d, T* y, const T* x, std::int64_t n) { gelu_erf_forward(d, y, x, n); };
template <class D, class T> concept has_gelu_erf_backward = requires(const D& d, T* y, const T* x, std::int64_t n) { gelu_erf_backward(d, y, x, x, n); };
template <class D, class T> concept has_masked_softmax_forward = requires(const D& d, T* y, const T* x, T s, int i) { masked_softmax_forward(d, y, x, i, i, i, s); };
template <class D, class T> concept has_masked_softmax_backward = requires(const D& d, T* y, const T* x, T s, int i) { masked_softmax_backward(d, y, x, x, x, i, i, i, s); };
template <class D, class T> concept has_mean_pool_forward = requires(const D& d, T* y, const T* x, int i) { mean_pool_forward(d, y, x, x, i, i, i); };
template <class D, class T> concept has_mean_pool_backward = requires(const D& d, T* y, const T* x, int i) { mean_pool_backward(d, y, x, x, i, i, i); };
template <class D, class T> concept has_cls_pool_forward = requires(const D& d, T* y, const T* x, int i) { cls_pool_forward(d, y, x, i, i, i); };
template <class D, class T> concept has_cls_pool_backward = requires(const D& d, T* y, const T* x, int i) { cls_pool_backward(d, y, x, i, i, i); };
// quantized inference (device/<name>/quant): fp32 activations in, weights in ggml blocks (not templated on T)
template <class D> concept has_quant_matmul = requires(const D& d, float* y, const float* x, const std::byte* w, quant::type t, std::int64_t n) { quant_matmul(d, x, w, t, y, n, n, n); };
// clang-format on

}  // namespace kernel

/// The kernels of `student::Transformer`'s GPT-2 blocks and of every model's dense layers.
template <class D, class T>
concept layer_device = kernel::has_gemm<D, T> && kernel::has_gemm_strided_batched<D, T> && kernel::has_add_bias<D, T> &&
    kernel::has_bias_grad<D, T> && kernel::has_add<D, T> && kernel::has_accumulate<D, T> &&
    kernel::has_layernorm_forward<D, T> && kernel::has_layernorm_backward<D, T> && kernel::has_gelu_forward<D, T> &&
    kernel::has_gelu_backward<D, T> && kernel::has_causal_softmax_forward<D, T> &&
    kernel::has_causal_softmax_backward<D, T> && kernel::has_embedding_forward<D, T> &&
    kernel::has_embedding_backward<D, T> && kernel::has_cross_entropy_forward_backward<D, T>;
/// The kernels of the Llama family's blocks.
template <class D, class T>
concept llama_device = kernel::has_rmsnorm_forward<D, T> && kernel::has_rmsnorm_backward<D, T> &&
    kernel::has_swiglu_forward<D, T> && kernel::has_swiglu_backward<D, T> && kernel::has_rope_rotate<D, T>;
/// The kernels of incremental decoding (prefill, decode).
template <class D, class T>
concept decoding_device = kernel::has_attention_decode<D, T> && kernel::has_kv_cache_store<D, T>;
/// The fused causal attention kernels (no (T,T) buffer); optional, `student::Transformer` uses them
/// where attention maps are not kept.
template <class D, class T>
concept fused_attention_device =
    kernel::has_flash_attention_forward<D, T> && kernel::has_flash_attention_backward<D, T>;
/// Packed weights (optional): `pack_weight(dev, W, N, K)` copies a weight once into the layout the
/// device's products read, `gemm_packed` multiplies by that copy (`device::Cpu`). The concept asks for
/// fp32 weights; `student::Transformer` packs its matrices into the `KvCache` at prefill (and into
/// itself after `pack_matrices()`) where the device has them, and multiplies by the copies.
template <class D>
concept weight_packing_device = requires(const D& d, float* y, const float* x, int i) {
    { pack_weight(d, x, i, i) } -> std::movable;
    gemm_packed(d, i, i, i, x, i, x, pack_weight(d, x, i, i), 0.0f, y, i, x);
};
/// What `pack_weight` returns on D (`weight_packing_device<D>`), else std::monostate (nothing to hold).
template <class D>
struct packed_weight_of {
    using type = std::monostate;
};
template <weight_packing_device D>
struct packed_weight_of<D> {
    using type = decltype(pack_weight(std::declval<const D&>(), static_cast<const float*>(nullptr), 1, 1));
};
template <class D>
using packed_weight_t = typename packed_weight_of<D>::type;
/// The kernels of the loss terms.
template <class D, class T>
concept loss_device = kernel::has_kl_forward_backward<D, T> && kernel::has_reverse_kl_forward_backward<D, T> &&
    kernel::has_jsd_forward_backward<D, T> && kernel::has_topk_kl_forward_backward<D, T> &&
    kernel::has_masked_cross_entropy_forward_backward<D, T> && kernel::has_attention_kl_forward_backward<D, T> &&
    kernel::has_relation_kl_forward_backward<D, T> && kernel::has_cosine_embedding_forward_backward<D, T> &&
    kernel::has_embedding_mse_forward_backward<D, T> && kernel::has_hidden_match_forward_backward<D, T>;
/// The kernels of the optimizers and of gradient clipping.
template <class D, class T>
concept optimizer_device = kernel::has_adam_update<D, T> && kernel::has_sgd_update<D, T> &&
    kernel::has_sum_of_squares<D, T> && kernel::has_scale_in_place<D, T>;
/// The kernels a bidirectional encoder adds to the layer kernels.
template <class D, class T>
concept encoder_device = kernel::has_bert_embedding_forward<D, T> && kernel::has_bert_embedding_backward<D, T> &&
    kernel::has_gelu_erf_forward<D, T> && kernel::has_gelu_erf_backward<D, T> &&
    kernel::has_masked_softmax_forward<D, T> && kernel::has_masked_softmax_backward<D, T> &&
    kernel::has_mean_pool_forward<D, T> && kernel::has_mean_pool_backward<D, T> && kernel::has_cls_pool_forward<D, T> &&
    kernel::has_cls_pool_backward<D, T>;

/// The kernels of quantized inference (weights in ggml blocks, fp32 activations in and out).
template <class D>
concept quant_device = kernel::has_quant_matmul<D>;

// The checks: instantiating `require_<group>_kernels<D, T>` runs one static_assert per kernel of the
// group, each naming its kernel (C++20 messages are string literals; the "required from" lines name
// D and T). `value` is true either way, so the check adds no second error of its own.

/// Checks `layer_device<D, T>` kernel by kernel.
template <class D, class T>
struct require_layer_kernels {
    // clang-format off
    static_assert(kernel::has_gemm<D, T>, "device lacks kernel: gemm(dev, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)");
    static_assert(kernel::has_gemm_strided_batched<D, T>, "device lacks kernel: gemm_strided_batched(dev, trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc, stride_c, batch)");
    static_assert(kernel::has_add_bias<D, T>, "device lacks kernel: add_bias(dev, out, bias, N, OC)");
    static_assert(kernel::has_bias_grad<D, T>, "device lacks kernel: bias_grad(dev, dbias, dout, N, OC)");
    static_assert(kernel::has_add<D, T>, "device lacks kernel: add(dev, out, a, b, n)");
    static_assert(kernel::has_accumulate<D, T>, "device lacks kernel: accumulate(dev, y, x, n)");
    static_assert(kernel::has_layernorm_forward<D, T>, "device lacks kernel: layernorm_forward(dev, out, mean, rstd, in, w, b, N, C, eps)");
    static_assert(kernel::has_layernorm_backward<D, T>, "device lacks kernel: layernorm_backward(dev, din, dw, db, dout, in, w, mean, rstd, N, C)");
    static_assert(kernel::has_gelu_forward<D, T>, "device lacks kernel: gelu_forward(dev, out, in, n)");
    static_assert(kernel::has_gelu_backward<D, T>, "device lacks kernel: gelu_backward(dev, din, in, dout, n)");
    static_assert(kernel::has_causal_softmax_forward<D, T>, "device lacks kernel: causal_softmax_forward(dev, att, BH, T, scale)");
    static_assert(kernel::has_causal_softmax_backward<D, T>, "device lacks kernel: causal_softmax_backward(dev, dscores, att, datt, BH, T, scale)");
    static_assert(kernel::has_embedding_forward<D, T>, "device lacks kernel: embedding_forward(dev, out, tokens, wte, wpe, B, T, C)");
    static_assert(kernel::has_embedding_backward<D, T>, "device lacks kernel: embedding_backward(dev, dwte, dwpe, dout, tokens, B, T, C)");
    static_assert(kernel::has_cross_entropy_forward_backward<D, T>, "device lacks kernel: int cross_entropy_forward_backward(dev, dlogits, losses, logits, targets, N, V, dloss)");
    // clang-format on
    static constexpr bool value = true;
};

/// Checks `llama_device<D, T>` kernel by kernel.
template <class D, class T>
struct require_llama_kernels {
    // clang-format off
    static_assert(kernel::has_rmsnorm_forward<D, T>, "device lacks kernel: rmsnorm_forward(dev, out, rstd, in, w, N, C, eps)");
    static_assert(kernel::has_rmsnorm_backward<D, T>, "device lacks kernel: rmsnorm_backward(dev, din, dw, dout, in, w, rstd, N, C)");
    static_assert(kernel::has_swiglu_forward<D, T>, "device lacks kernel: swiglu_forward(dev, out, in, N, F)");
    static_assert(kernel::has_swiglu_backward<D, T>, "device lacks kernel: swiglu_backward(dev, din, in, dout, N, F)");
    static_assert(kernel::has_rope_rotate<D, T>, "device lacks kernel: rope_rotate(dev, x, cos, sin, positions, N, row, heads, hs, inverse)");
    // clang-format on
    static constexpr bool value = true;
};

/// Checks `decoding_device<D, T>` kernel by kernel.
template <class D, class T>
struct require_decoding_kernels {
    // clang-format off
    static_assert(kernel::has_attention_decode<D, T>, "device lacks kernel: attention_decode(dev, out, scratch, qkv, kcache, vcache, lengths, B, H, Hkv, hs, Tmax)");
    static_assert(kernel::has_kv_cache_store<D, T>, "device lacks kernel: kv_cache_store(dev, keys, values, qkv, rows, count, H, Hkv, hs, Tmax)");
    // clang-format on
    static constexpr bool value = true;
};

/// Checks `loss_device<D, T>` kernel by kernel.
template <class D, class T>
struct require_loss_kernels {
    // clang-format off
    static_assert(kernel::has_kl_forward_backward<D, T>, "device lacks kernel: kl_forward_backward(dev, d, accumulate, losses, student, teacher, mask, N, V, inv_tau, grad_scale)");
    static_assert(kernel::has_reverse_kl_forward_backward<D, T>, "device lacks kernel: reverse_kl_forward_backward(dev, d, accumulate, losses, student, teacher, mask, N, V, inv_tau, grad_scale)");
    static_assert(kernel::has_jsd_forward_backward<D, T>, "device lacks kernel: jsd_forward_backward(dev, d, accumulate, losses, student, teacher, mask, N, V, double beta, inv_tau, grad_scale)");
    static_assert(kernel::has_topk_kl_forward_backward<D, T>, "device lacks kernel: topk_kl_forward_backward(dev, d, accumulate, losses, student, ids, logprobs, mask, N, V, k, inv_tau, grad_scale)");
    static_assert(kernel::has_masked_cross_entropy_forward_backward<D, T>, "device lacks kernel: masked_cross_entropy_forward_backward(dev, d, accumulate, losses, logits, targets, mask, N, V, grad_scale)");
    static_assert(kernel::has_attention_kl_forward_backward<D, T>, "device lacks kernel: attention_kl_forward_backward(dev, d, accumulate, losses, student, teacher, mask, B, Hs, Ht, T, grad_scale, causal)");
    static_assert(kernel::has_relation_kl_forward_backward<D, T>, "device lacks kernel: relation_kl_forward_backward(dev, d, losses, student, teacher, mask, R, T, s_scale, t_scale, grad_scale)");
    static_assert(kernel::has_cosine_embedding_forward_backward<D, T>, "device lacks kernel: cosine_embedding_forward_backward(dev, d, accumulate, losses, student, teacher, B, C, grad_scale)");
    static_assert(kernel::has_embedding_mse_forward_backward<D, T>, "device lacks kernel: embedding_mse_forward_backward(dev, d, accumulate, losses, student, teacher, B, C, grad_scale)");
    static_assert(kernel::has_hidden_match_forward_backward<D, T>, "device lacks kernel: double hidden_match_forward_backward(dev, y, losses, g, mask, N, C, scale, cosine)");
    // clang-format on
    static constexpr bool value = true;
};

/// Checks `optimizer_device<D, T>` kernel by kernel.
template <class D, class T>
struct require_optimizer_kernels {
    // clang-format off
    static_assert(kernel::has_adam_update<D, T>, "device lacks kernel: adam_update(dev, const tensor_list<T>&, const adam_coefficients<T>&)");
    static_assert(kernel::has_sgd_update<D, T>, "device lacks kernel: sgd_update(dev, const tensor_list<T>&, const sgd_coefficients<T>&)");
    static_assert(kernel::has_sum_of_squares<D, T>, "device lacks kernel: double sum_of_squares(dev, const tensor_list<T>&)");
    static_assert(kernel::has_scale_in_place<D, T>, "device lacks kernel: scale_in_place(dev, const tensor_list<T>&, T factor)");
    // clang-format on
    static constexpr bool value = true;
};

/// Checks `encoder_device<D, T>` kernel by kernel.
template <class D, class T>
struct require_encoder_kernels {
    // clang-format off
    static_assert(kernel::has_bert_embedding_forward<D, T>, "device lacks kernel: bert_embedding_forward(dev, out, tokens, types, word, pos, type, B, T, C)");
    static_assert(kernel::has_bert_embedding_backward<D, T>, "device lacks kernel: bert_embedding_backward(dev, dword, dpos, dtype, dout, tokens, types, B, T, C)");
    static_assert(kernel::has_gelu_erf_forward<D, T>, "device lacks kernel: gelu_erf_forward(dev, out, in, n)");
    static_assert(kernel::has_gelu_erf_backward<D, T>, "device lacks kernel: gelu_erf_backward(dev, din, in, dout, n)");
    static_assert(kernel::has_masked_softmax_forward<D, T>, "device lacks kernel: masked_softmax_forward(dev, att, mask, B, H, T, scale)");
    static_assert(kernel::has_masked_softmax_backward<D, T>, "device lacks kernel: masked_softmax_backward(dev, dscores, att, datt, mask, B, H, T, scale)");
    static_assert(kernel::has_mean_pool_forward<D, T>, "device lacks kernel: mean_pool_forward(dev, out, h, mask, B, T, C)");
    static_assert(kernel::has_mean_pool_backward<D, T>, "device lacks kernel: mean_pool_backward(dev, dh, dout, mask, B, T, C)");
    static_assert(kernel::has_cls_pool_forward<D, T>, "device lacks kernel: cls_pool_forward(dev, out, h, B, T, C)");
    static_assert(kernel::has_cls_pool_backward<D, T>, "device lacks kernel: cls_pool_backward(dev, dh, dout, B, T, C)");
    // clang-format on
    static constexpr bool value = true;
};

/// Checks `quant_device<D>` kernel by kernel.
template <class D>
struct require_quant_kernels {
    // clang-format off
    static_assert(kernel::has_quant_matmul<D>, "device lacks kernel: quant_matmul(dev, x, w, quant::type, y, m, k, n)");
    // clang-format on
    static constexpr bool value = true;
};

}  // namespace device

namespace detail {

/// `n` elements of a device's memory, readable on the host: the memory itself on a host device
/// (no copy), a copy in a host vector on a device with its own memory (`device::Cuda`). The hook
/// through which shared code reads results (per-row losses, values for metrics) on every device.
/// @tparam T element type.
template <class T>
class host_readable {
public:
    explicit host_readable(const T* host) noexcept : ptr_(host) {}
    explicit host_readable(std::vector<T> copy) noexcept : copy_(std::move(copy)), ptr_(copy_.data()) {}
    host_readable(host_readable&& o) noexcept
        : copy_(std::move(o.copy_)), ptr_(copy_.empty() ? o.ptr_ : copy_.data()) {}
    host_readable(const host_readable&) = delete;
    host_readable& operator=(const host_readable&) = delete;
    host_readable& operator=(host_readable&&) = delete;
    const T* data() const noexcept { return ptr_; }
    const T& operator[](std::size_t i) const noexcept { return ptr_[i]; }

private:
    std::vector<T> copy_;
    const T* ptr_;
};

/// `n` elements at `src` (memory of `dev`) for reading on the host; see `host_readable`.
template <class Device, class T>
host_readable<T> read_on_host(const Device& dev, const T* src, std::size_t n) {
    if constexpr (Device::memory == memory_space::host) {
        (void)dev;
        (void)n;
        return host_readable<T>(src);
    } else {
        std::vector<T> copy(n);
        if (n) dev.copy(copy.data(), src, n * sizeof(T));
        return host_readable<T>(std::move(copy));
    }
}

}  // namespace detail

}  // namespace distill
