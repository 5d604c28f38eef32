#pragma once
/// @file parameter.hpp
/// `distill::Parameter`: one trainable tensor with its gradient. Students and loss terms with
/// learned parts (projections) expose theirs as `std::vector<Parameter<T>>`; optimizers and
/// checkpoints take the concatenation, so anything trainable is trained and saved the same way.

#include <cstdint>
#include <string>

#include "distill/tensor.hpp"

namespace distill {

/// How a parameter is treated by optimizers (e.g. no weight decay on biases, norms, embeddings).
enum class parameter_kind : std::uint8_t { weight, bias, norm, embedding };

/// One trainable tensor: its checkpoint name, its value and its gradient (same shape, both contiguous).
template <class T>
struct Parameter {
    std::string name;
    Tensor<T> value;
    Tensor<T> grad;
    parameter_kind kind;
};

}  // namespace distill
