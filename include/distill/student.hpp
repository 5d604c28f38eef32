#pragma once
/// @file student.hpp
/// The `student_model` concept: the network that is trained.
///
/// **What a student represents.** A differentiable sequence model over token ids that owns its
/// parameters, gradients and activations (three arenas laid out at construction; nothing is allocated
/// in `forward` or `backward`). The loss terms read its outputs and write gradients on them; the
/// optimizer updates `parameters()`.
///
/// **Minimal complete definition** (for a model `m`):
/// - `scalar_type`, `device_type`, `config_type` (a Hana-adapted struct, so jobs can configure it);
/// - `m.forward(tokens, B, T)` over row-major int32 ids;
/// - `m.logits()` (B,T,V); `m.grad_logits()` (B,T,V), which losses write and `backward` reads;
/// - `m.hidden_state_count()`, `m.hidden_state(i)` (B,T,C) and `m.attention(l)` (B,H,T,T) when
///   the model exposes them (what the transfer losses need);
/// - `m.backward(d_hidden, d_attention)`, which accumulates parameter gradients from `grad_logits()`
///   plus optional extra gradients on hidden states and attention maps;
/// - `m.zero_grad()` and `m.parameters()` (named value/gradient views).
///
/// **Laws.** `backward` computes the exact gradient of the scalar whose partial derivatives were
/// supplied (finite differences agree, `tests/unit-student.cpp`); gradients accumulate until `zero_grad`.
///
/// **Example.**
/// @code
/// distill::student::Transformer<float, distill::device::Cpu> m({.vocab_size = 263, .d_model = 64}, 8);
/// m.init(42);
/// m.forward(tokens, 8, 32);
/// float loss = m.cross_entropy(targets);  // fills grad_logits()
/// m.zero_grad();
/// m.backward();
/// @endcode

#include <concepts>
#include <cstdint>
#include <span>

#include "distill/device.hpp"
#include "distill/tensor.hpp"

namespace distill {

/// A trainable sequence model (see the file comment for the full contract).
template <class M>
concept student_model = device_policy<typename M::device_type> &&
    requires(M& m, const M& cm, const std::int32_t* tokens, int n,
             std::span<const Tensor<const typename M::scalar_type>> extra) {
    typename M::config_type;
    m.forward(tokens, n, n);
    { cm.logits() } -> std::convertible_to<Tensor<typename M::scalar_type>>;
    { cm.grad_logits() } -> std::convertible_to<Tensor<typename M::scalar_type>>;
    { cm.hidden_state_count() } -> std::convertible_to<int>;
    { cm.hidden_state(n) } -> std::convertible_to<Tensor<typename M::scalar_type>>;
    { cm.attention(n) } -> std::convertible_to<Tensor<typename M::scalar_type>>;
    m.backward(extra, extra);
    m.zero_grad();
    cm.parameters();
};

}  // namespace distill
