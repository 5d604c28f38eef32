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
/// so losses that read them need `training`).
enum class activations { training, inference, checkpointed };

/// The base of the student models: their parameters, laid out one by one (`add_parameter`), then
/// allocated at once (`allocate_parameters`), values and gradients in two arenas of the same layout.
/// @tparam T scalar type. @tparam Device where the arenas live.
template <class T, class Device>
class parameter_store {
public:
    /// Every parameter in checkpoint order.
    const std::vector<Parameter<T>>& parameters() const noexcept { return params_; }
    /// The parameter and gradient arenas as flat arrays (same layout), for optimizers and checkpoints.
    T* parameter_data() const noexcept { return param_arena_.data(); }
    T* gradient_data() const noexcept { return grad_arena_.data(); }
    std::size_t arena_size() const noexcept { return param_arena_.size(); }

protected:
    /// The index of a parameter a model's config does not have: val and grad give nullptr.
    static constexpr std::size_t none = std::size_t(-1);

    /// Lays out the next parameter; returns its index.
    std::size_t add_parameter(std::string name, std::initializer_list<std::int64_t> shape, parameter_kind kind) {
        kinds_.push_back(kind);
        return param_layout_.add<T>(std::move(name), shape);
    }

    /// Allocates the values (and, with `gradients`, the gradients) of every parameter laid out, and
    /// lists them; a parameter's gradient is an empty tensor without.
    void allocate_parameters(const Device& dev, bool gradients) {
        param_arena_ = detail::Arena<T, Device>(dev, param_layout_.size());
        if (gradients) grad_arena_ = detail::Arena<T, Device>(dev, param_layout_.size());
        const auto& blocks = param_layout_.blocks();
        for (std::size_t i = 0; i < blocks.size(); ++i)
            params_.push_back({blocks[i].name, param_arena_.view(blocks[i]),
                               grad_arena_.size() ? grad_arena_.view(blocks[i]) : Tensor<T>{}, kinds_[i]});
    }

    /// Sets every gradient to zero (none without a gradient arena).
    void zero_gradients(const Device& dev) {
        if (grad_arena_.size()) dev.fill_zero(grad_arena_.data(), sizeof(T) * grad_arena_.size());
    }

    /// Bytes held by the parameter and gradient arenas.
    std::size_t parameter_bytes() const noexcept { return sizeof(T) * (param_arena_.size() + grad_arena_.size()); }

    /// Parameter i's value / gradient; nullptr for `none`.
    T* val(std::size_t i) const noexcept {
        return i == none ? nullptr : param_arena_.data() + param_layout_.blocks()[i].offset;
    }
    T* grad(std::size_t i) const noexcept {
        return i == none ? nullptr : grad_arena_.data() + param_layout_.blocks()[i].offset;
    }

private:
    detail::ArenaLayout param_layout_;
    std::vector<parameter_kind> kinds_;
    detail::Arena<T, Device> param_arena_, grad_arena_;
    std::vector<Parameter<T>> params_;
};

}  // namespace distill::student
