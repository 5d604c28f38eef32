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
/// - the kernels, as free functions in the device's namespace found by argument-dependent lookup,
///   first argument the device: `gemm`, `gemm_strided_batched`, `add_bias`, `bias_grad`,
///   `layernorm_forward/backward`, `gelu_forward/backward`, `causal_softmax_forward/backward`,
///   `embedding_forward/backward`, `cross_entropy_forward_backward`, `add`, `accumulate`; for the
///   Llama family's blocks `rmsnorm_forward/backward`, `swiglu_forward/backward`, `rope_rotate`; for
///   incremental decoding `attention_decode` (and `kv_cache_store` on a device with its own memory);
///   for the loss terms the fused row kernels of `device/reference_losses.hpp` (`kl_forward_backward`,
///   `reverse_kl_forward_backward`, `jsd_forward_backward`, `topk_kl_forward_backward`,
///   `masked_cross_entropy_forward_backward`, `attention_kl_forward_backward`,
///   `relation_kl_forward_backward`, and `hidden_match_forward_backward` on a device with its own
///   memory). Those write per-row divergences (no τ², no mean over rows) and
///   `grad_scale · ∂row/∂input` — the loss terms of `loss/` are the entry point for everyone else
///   (see `reference_losses.hpp` and docs/losses.md, "Kernels and numerics").
///   `device/reference.hpp` is the plain-loop definition of each kernel, with its shapes and formula.
///
/// **Laws.** Every kernel of a device agrees with the `Reference` kernel of the same name to fp32
/// rounding (tested in `tests/unit-kernels.cpp`); for a fixed thread count every kernel is
/// deterministic (no atomics, fixed reduction order).

#include <concepts>
#include <cstddef>
#include <utility>
#include <vector>

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
