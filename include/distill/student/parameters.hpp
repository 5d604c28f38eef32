#pragma once
/// @file student/parameters.hpp
/// `parameter_store`: the parameters of a student model (`Transformer`, `Encoder`) in two arenas,
/// values and gradients, with the same layout: how they are laid out, allocated, read back as
/// `Parameter`s and flat arrays, and zeroed.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "distill/detail/arena.hpp"
#include "distill/io/quant.hpp"
#include "distill/parameter.hpp"
#include "distill/tensor.hpp"

namespace distill::student {

/// What a student model keeps of a forward (`Transformer`; `Encoder`: training and checkpointed):
/// everything the backward and the transfer losses read
/// (`training`); or only the logits, one layer's working memory reused by every layer, no gradient
/// arena and no backward buffers (`inference`: a teacher whose loss reads logits alone, generation);
/// or, for training in less memory, each block's output (the hidden states) and one block's working
/// memory, the backward recomputing each block's activations from its input before differentiating
/// it (`checkpointed`: activation checkpointing, one more forward of every block but the last per
/// step; attention maps and q|k|v are not kept, so losses that read them need `training`); or
/// everything `training` keeps but the attention maps (`training_fused`, `Transformer` only;
/// `attention(l)` and `qkv(l)` are not offered, so losses that read them need `training`).
/// On a device with the fused attention kernels (`device::fused_attention_device`) a `Transformer`
/// attends fused in every mode but `training` (`attends_fused`): a (B,H,T) log-sum-exp in place of
/// each (B,H,T,T) map, no map gradient, the tiles above the diagonal skipped; `training_fused`'s
/// gradients then equal `training`'s to rounding. `checkpointed`'s gradients equal, bit for bit,
/// those of the same model without checkpointing on the same attention path: `training_fused` where
/// the device attends fused, `training` elsewhere (and for `Encoder`, which never attends fused).
enum class activations { training, inference, checkpointed, training_fused };

/// The enumerator's name: "training", "inference", "checkpointed" or "training_fused".
constexpr const char* activations_name(activations mode) noexcept {
    switch (mode) {
        case activations::inference:
            return "inference";
        case activations::checkpointed:
            return "checkpointed";
        case activations::training_fused:
            return "training_fused";
        default:
            return "training";
    }
}

/// How a parameter's values are stored: `fp32` (the scalar type T) alone; `fp32_bf16` an fp32
/// master copy (what optimizers update) and a bf16 copy the GEMMs read, refreshed from it
/// (`refresh_bf16`); `bf16` a bf16 copy alone (a frozen weight: nothing writes it but loaders).
enum class storage : std::uint8_t { fp32, fp32_bf16, bf16 };

/// Where a device rounds fp32 to bf16 for stored weights (`round_bf16(dev, dst, src, n)`, round to
/// nearest even, the rounding its bf16 GEMMs apply to their operands) and multiplies by a bf16 weight
/// (`gemm_bf16_weight`): device::Cpu with oneDNN, device::Cuda (whose `embedding_forward_bf16` reads a
/// token embedding stored in bf16 alone).
template <class Device>
concept bf16_weight_device = requires(const Device& d, float* f, const float* cf, std::uint16_t* h,
                                      const std::uint16_t* ch) {
    round_bf16(d, h, cf, std::int64_t(1));
    gemm_bf16_weight(d, false, true, 1, 1, 1, 1.0f, cf, 1, ch, 1, 0.0f, f, 1);
};

/// The base of the student models: their parameters, laid out one by one (`add_parameter`), then
/// allocated at once (`allocate_parameters`), values and gradients in two arenas of the same layout.
/// @tparam T scalar type. @tparam Device where the arenas live.
template <class T, class Device>
class parameter_store {
public:
    /// The trainable parameters in checkpoint order: every parameter, or, with adapters (LoRA),
    /// the adapters alone (the base weights are frozen).
    const std::vector<Parameter<T>>& parameters() const noexcept {
        return adapter_params_.empty() ? params_ : adapter_params_;
    }
    /// The model's own weights in checkpoint order (what Hugging Face exports hold); their
    /// gradients are empty when frozen (adapters present) or without a gradient arena. A weight
    /// stored in bf16 alone (`base_storage(k) == storage::bf16`) has a null value pointer: read and
    /// write it with `read_base` / `write_base`.
    const std::vector<Parameter<T>>& base_parameters() const noexcept { return params_; }
    /// How base parameter k is stored.
    storage base_storage(std::size_t k) const noexcept { return storage_[k]; }
    /// Whether any base parameter is stored in bf16 alone (no fp32 copy).
    bool bf16_only_weights() const noexcept { return bf16_only_; }
    /// Base parameter k's bf16 copy (device memory, packed rows), or nullptr when it has none.
    const std::uint16_t* bf16_value(std::size_t k) const noexcept {
        return bf16_index_.empty() || bf16_index_[k] == none
                   ? nullptr
                   : bf16_arena_.data() + bf16_layout_.blocks()[bf16_index_[k]].offset;
    }
    /// Elements of a flat fp32 image of every base parameter (`base_image()`), and parameter k's
    /// offset in it: the layout `parameter_data()` has when nothing is stored in bf16 alone.
    std::size_t image_size() const noexcept { return param_layout_.size(); }
    std::size_t image_offset(std::size_t k) const noexcept { return param_layout_.blocks()[k].offset; }
    /// Copies base parameter k's values to host memory `dst` (numel elements) as T: a bf16-only
    /// weight converted (exactly).
    void read_base(std::size_t k, T* dst) const {
        const std::size_t n = param_layout_.blocks()[k].numel;
        if (storage_[k] != storage::bf16) {
            dev_->copy(dst, params_[k].value.data(), sizeof(T) * n);
            return;
        }
        std::vector<std::uint16_t> h(n);
        dev_->copy(h.data(), bf16_value(k), sizeof(std::uint16_t) * n);
        for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(quant::bf16_to_fp32(h[i]));
    }
    /// Sets base parameter k from host memory `src` (numel elements; with `count`, elements
    /// [first, first + count) only): the fp32 values, and the bf16 copy rounded from them (round to
    /// nearest even) where it has one.
    void write_base(std::size_t k, const T* src, std::size_t first = 0, std::size_t count = std::size_t(-1)) {
        const std::size_t n = std::min(count, param_layout_.blocks()[k].numel - first);
        if (storage_[k] != storage::bf16) dev_->copy(params_[k].value.data() + first, src, sizeof(T) * n);
        if (storage_[k] == storage::fp32) return;
        if constexpr (std::is_same_v<T, float> && bf16_weight_device<Device>) {
            std::uint16_t* d = const_cast<std::uint16_t*>(bf16_value(k)) + first;
            if constexpr (Device::memory == memory_space::host) {
                round_bf16(*dev_, d, src, std::int64_t(n));
            } else {  // rounded on the host (src is host memory), the same bits as the device's round_bf16
                std::vector<std::uint16_t> h(n);
                for (std::size_t i = 0; i < n; ++i) h[i] = quant::fp32_to_bf16(src[i]);
                dev_->copy(d, h.data(), sizeof(std::uint16_t) * n);
            }
        }
    }
    /// A host image of every base parameter as T (`image_size()` elements, `image_offset(k)` where
    /// parameter k starts): bf16-only weights converted. For exports; a full fp32 copy of the model.
    std::vector<T> base_image() const {
        std::vector<T> host(image_size(), T(0));
        if (!bf16_only_) {
            dev_->copy(host.data(), param_arena_.data(), sizeof(T) * host.size());
            return host;
        }
        for (std::size_t k = 0; k < params_.size(); ++k) read_base(k, host.data() + image_offset(k));
        return host;
    }
    /// Rounds the fp32 master of every `storage::fp32_bf16` parameter into its bf16 copy; a model
    /// calls it before a forward whenever the masters may have changed (`bf16_version`).
    void refresh_bf16() {
        if constexpr (std::is_same_v<T, float> && bf16_weight_device<Device>) {
            for (std::size_t k = 0; k < params_.size(); ++k)
                if (storage_[k] == storage::fp32_bf16)
                    round_bf16(*dev_, const_cast<std::uint16_t*>(bf16_value(k)), params_[k].value.data(),
                               std::int64_t(param_layout_.blocks()[k].numel));
        }
    }
    /// The adapters (LoRA) in checkpoint order; empty without.
    const std::vector<Parameter<T>>& adapter_parameters() const noexcept { return adapter_params_; }
    /// Whether the base weights are frozen (adapters present): they have no gradient memory.
    bool frozen_base() const noexcept { return !adapter_params_.empty(); }
    /// The base weights' value and gradient arenas as flat arrays (same layout, `base_parameters()`
    /// point into them), for weight files and exports; the gradient arena is null when frozen.
    /// With weights stored in bf16 alone (`bf16_only_weights()`) the value arena holds the others only,
    /// and its layout is not `image_offset`'s: use `read_base`/`write_base`/`base_image` there.
    T* parameter_data() const noexcept { return param_arena_.data(); }
    T* gradient_data() const noexcept { return grad_arena_.data(); }
    std::size_t arena_size() const noexcept { return param_arena_.size(); }
    /// Bytes of gradient memory (both arenas).
    std::size_t gradient_bytes() const noexcept { return sizeof(T) * (grad_arena_.size() + adapter_grads_.size()); }

protected:
    /// The index of a parameter a model's config does not have: val and grad give nullptr.
    static constexpr std::size_t none = std::size_t(-1);

    /// Marks an index as an adapter's (its own arenas).
    static constexpr std::size_t adapter_bit = std::size_t(1) << 62;

    /// Lays out the next parameter; returns its index.
    std::size_t add_parameter(std::string name, std::initializer_list<std::int64_t> shape, parameter_kind kind,
                              storage how = storage::fp32) {
        kinds_.push_back(kind);
        storage_.push_back(how);
        if (how != storage::bf16) fp32_layout_.add<T>(name, shape);
        if (how != storage::fp32) {
            bf16_index_.resize(storage_.size(), none);
            bf16_index_.back() = bf16_layout_.add<std::uint16_t>(name, shape);
        }
        bf16_only_ = bf16_only_ || how == storage::bf16;
        return param_layout_.add<T>(std::move(name), shape);
    }
    /// Lays out the next adapter (trainable, in arenas of their own; its presence freezes the base).
    std::size_t add_adapter(std::string name, std::initializer_list<std::int64_t> shape) {
        return adapter_bit | adapter_layout_.add<T>(std::move(name), shape);
    }

    /// Allocates the values (and, with `gradients`, the gradients) of every parameter laid out, and
    /// lists them; a parameter's gradient is an empty tensor without.
    /// With adapters laid out, the base weights get no gradient arena (frozen).
    void allocate_parameters(const Device& dev, bool gradients) {
        const bool adapters = !adapter_layout_.blocks().empty();
        dev_.emplace(dev);
        if (!bf16_index_.empty()) bf16_index_.resize(storage_.size(), none);
        // bf16-only weights are frozen (adapters) or never trained (no gradients): no fp32 value,
        // no gradient. The value arena holds the rest (fp32_layout_: the full layout without them).
        param_arena_ = detail::Arena<T, Device>(dev, fp32_layout_.size());
        if (gradients && !adapters) grad_arena_ = detail::Arena<T, Device>(dev, param_layout_.size());
        if (bf16_layout_.size()) bf16_arena_ = detail::Arena<std::uint16_t, Device>(dev, bf16_layout_.size());
        const auto& blocks = param_layout_.blocks();
        for (std::size_t i = 0, j = 0; i < blocks.size(); ++i) {
            Tensor<T> value;
            if (storage_[i] != storage::bf16) {
                value = param_arena_.view(fp32_layout_.blocks()[j++]);
            } else {  // a view of nothing, with the parameter's shape
                std::array<std::int64_t, Tensor<T>::max_rank> shape{}, strides{};
                const int rank = static_cast<int>(blocks[i].shape.size());
                for (int d = rank - 1, stride = 1; d >= 0; stride *= int(blocks[i].shape[std::size_t(d)]), --d) {
                    shape[std::size_t(d)] = blocks[i].shape[std::size_t(d)];
                    strides[std::size_t(d)] = stride;
                }
                value.assign(nullptr, shape, strides, rank, Device::memory);
            }
            params_.push_back(
                {blocks[i].name, value, grad_arena_.size() ? grad_arena_.view(blocks[i]) : Tensor<T>{}, kinds_[i]});
        }
        if (!adapters) return;
        adapter_arena_ = detail::Arena<T, Device>(dev, adapter_layout_.size());
        if (gradients) adapter_grads_ = detail::Arena<T, Device>(dev, adapter_layout_.size());
        for (const auto& b : adapter_layout_.blocks())
            adapter_params_.push_back({b.name, adapter_arena_.view(b),
                                       adapter_grads_.size() ? adapter_grads_.view(b) : Tensor<T>{},
                                       parameter_kind::weight});
    }

    /// Sets every gradient to zero (none without a gradient arena).
    void zero_gradients(const Device& dev) {
        if (grad_arena_.size()) dev.fill_zero(grad_arena_.data(), sizeof(T) * grad_arena_.size());
        if (adapter_grads_.size()) dev.fill_zero(adapter_grads_.data(), sizeof(T) * adapter_grads_.size());
    }

    /// Bytes held by the parameter and gradient arenas.
    std::size_t parameter_bytes() const noexcept {
        return sizeof(T) * (param_arena_.size() + grad_arena_.size() + adapter_arena_.size() + adapter_grads_.size()) +
               sizeof(std::uint16_t) * bf16_arena_.size();
    }

    /// Parameter i's value / gradient; nullptr for `none`, and the gradient of a frozen (or
    /// gradient-less) parameter.
    T* val(std::size_t i) const noexcept {
        if (i == none) return nullptr;
        if (i & adapter_bit) return adapter_arena_.data() + adapter_layout_.blocks()[i & ~adapter_bit].offset;
        return params_[i].value.data();
    }
    T* grad(std::size_t i) const noexcept {
        if (i == none) return nullptr;
        if (i & adapter_bit)
            return adapter_grads_.size() ? adapter_grads_.data() + adapter_layout_.blocks()[i & ~adapter_bit].offset
                                         : nullptr;
        return grad_arena_.size() ? grad_arena_.data() + param_layout_.blocks()[i].offset : nullptr;
    }

private:
    // param_layout_: every base parameter (the gradient arena's and base_image's layout);
    // fp32_layout_: those with an fp32 value (the value arena's); bf16_layout_: those with a bf16 copy
    detail::ArenaLayout param_layout_, fp32_layout_, bf16_layout_, adapter_layout_;
    std::vector<parameter_kind> kinds_;
    std::vector<storage> storage_;
    std::vector<std::size_t> bf16_index_;  // per base parameter: its block of bf16_layout_, or none
    bool bf16_only_ = false;
    std::optional<Device> dev_;  // set by allocate_parameters
    detail::Arena<T, Device> param_arena_, grad_arena_, adapter_arena_, adapter_grads_;
    detail::Arena<std::uint16_t, Device> bf16_arena_;
    std::vector<Parameter<T>> params_, adapter_params_;
};

}  // namespace distill::student
