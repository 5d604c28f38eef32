#pragma once
/// @file student/parameters.hpp
/// `parameter_store`: the parameters of a student model (`Transformer`, `Encoder`) in two arenas,
/// values and gradients, with the same layout: how they are laid out, allocated, read back as
/// `Parameter`s and flat arrays, and zeroed.

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "distill/detail/arena.hpp"
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
/// step; the gradients are those of `training`, bit for bit; attention maps and q|k|v are not kept,
/// so losses that read them need `training`); or everything `training` keeps but the attention maps
/// (`training_fused`, `Transformer` only: where the device has the fused attention kernels,
/// `device::fused_attention_device`, attention runs fused and keeps a (B,H,T) log-sum-exp in place of
/// the (B,H,T,T) map and its gradient; the gradients equal `training`'s to rounding; `attention(l)` and
/// `qkv(l)` are not offered, so losses that read them need `training`). `inference` attends fused too
/// on such a device.
enum class activations { training, inference, checkpointed, training_fused };

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
    /// gradients are empty when frozen (adapters present) or without a gradient arena.
    const std::vector<Parameter<T>>& base_parameters() const noexcept { return params_; }
    /// The adapters (LoRA) in checkpoint order; empty without.
    const std::vector<Parameter<T>>& adapter_parameters() const noexcept { return adapter_params_; }
    /// Whether the base weights are frozen (adapters present): they have no gradient memory.
    bool frozen_base() const noexcept { return !adapter_params_.empty(); }
    /// The base weights' value and gradient arenas as flat arrays (same layout, `base_parameters()`
    /// point into them), for weight files and exports; the gradient arena is null when frozen.
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
    std::size_t add_parameter(std::string name, std::initializer_list<std::int64_t> shape, parameter_kind kind) {
        kinds_.push_back(kind);
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
        param_arena_ = detail::Arena<T, Device>(dev, param_layout_.size());
        if (gradients && !adapters) grad_arena_ = detail::Arena<T, Device>(dev, param_layout_.size());
        const auto& blocks = param_layout_.blocks();
        for (std::size_t i = 0; i < blocks.size(); ++i)
            params_.push_back({blocks[i].name, param_arena_.view(blocks[i]),
                               grad_arena_.size() ? grad_arena_.view(blocks[i]) : Tensor<T>{}, kinds_[i]});
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
        return sizeof(T) * (param_arena_.size() + grad_arena_.size() + adapter_arena_.size() + adapter_grads_.size());
    }

    /// Parameter i's value / gradient; nullptr for `none`, and the gradient of a frozen (or
    /// gradient-less) parameter.
    T* val(std::size_t i) const noexcept {
        if (i == none) return nullptr;
        if (i & adapter_bit) return adapter_arena_.data() + adapter_layout_.blocks()[i & ~adapter_bit].offset;
        return param_arena_.data() + param_layout_.blocks()[i].offset;
    }
    T* grad(std::size_t i) const noexcept {
        if (i == none) return nullptr;
        if (i & adapter_bit)
            return adapter_grads_.size() ? adapter_grads_.data() + adapter_layout_.blocks()[i & ~adapter_bit].offset
                                         : nullptr;
        return grad_arena_.size() ? grad_arena_.data() + param_layout_.blocks()[i].offset : nullptr;
    }

private:
    detail::ArenaLayout param_layout_, adapter_layout_;
    std::vector<parameter_kind> kinds_;
    detail::Arena<T, Device> param_arena_, grad_arena_, adapter_arena_, adapter_grads_;
    std::vector<Parameter<T>> params_, adapter_params_;
};

}  // namespace distill::student
