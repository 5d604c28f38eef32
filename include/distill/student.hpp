#pragma once
/// @file student.hpp
/// The `student_model` concept: the network that is trained, a `sequence_model` (next-token logits)
/// or an `embedding_model` (one pooled embedding per sequence).
///
/// **What a student represents.** A differentiable sequence model over token ids that owns its
/// parameters, gradients and activations (three arenas laid out at construction; nothing is allocated
/// in `forward` or `backward`). The loss terms read its outputs and write gradients on them; the
/// optimizer updates `parameters()`.
///
/// **Minimal complete definition** (for a model `m`):
/// - `scalar_type`, `device_type`, `config_type` (a Hana-adapted struct, so jobs can configure it);
/// - a sequence model: `m.forward(tokens, B, T)` over row-major int32 ids, `m.logits()` (B,T,V) and
///   `m.grad_logits()` (B,T,V), which losses write and `backward` reads; an embedding model:
///   `m.forward(tokens, B, T, lengths)`, `m.pooled()` (B,C) and `m.grad_pooled()` (B,C) likewise;
/// - `m.hidden_state_count()`, `m.hidden_state(i)` (B,T,C) and `m.attention(l)` (B,H,T,T) when
///   the model exposes them (what the transfer losses need);
/// - `m.backward(d_hidden, d_attention)`, which accumulates parameter gradients from `grad_logits()`
///   (or `grad_pooled()`) plus optional extra gradients on hidden states and attention maps;
/// - `m.zero_grad()` and `m.parameters()` (named value/gradient views).
///
/// **Laws.** `backward` computes the exact gradient of the scalar whose partial derivatives were
/// supplied (finite differences agree, `tests/unit-student.cpp`, `tests/unit-encoder.cpp`); gradients accumulate until
/// `zero_grad`.
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

/// What every trainable model shares (see the file comment): a config, parameters, gradients, the
/// hidden states and attention maps transfer losses read, and `backward` with extra gradients on them.
template <class M>
concept trainable_model = device_policy<typename M::device_type> &&
    requires(M& m, const M& cm, int n, std::span<const Tensor<const typename M::scalar_type>> extra) {
    typename M::config_type;
    { cm.hidden_state_count() } -> std::convertible_to<int>;
    { cm.hidden_state(n) } -> std::convertible_to<Tensor<typename M::scalar_type>>;
    { cm.attention(n) } -> std::convertible_to<Tensor<typename M::scalar_type>>;
    m.backward(extra, extra);
    m.zero_grad();
    cm.parameters();
};

/// A model that predicts the next token: `forward(tokens, B, T)`, then `logits()` (B,T,V) and
/// `grad_logits()` (B,T,V), which losses write and `backward` reads (`student::Transformer`).
template <class M>
concept sequence_model = trainable_model<M> && requires(M& m, const M& cm, const std::int32_t* tokens, int n) {
    m.forward(tokens, n, n);
    { cm.logits() } -> std::convertible_to<Tensor<typename M::scalar_type>>;
    { cm.grad_logits() } -> std::convertible_to<Tensor<typename M::scalar_type>>;
};

/// A model that embeds a sentence: `forward(tokens, B, T, lengths)` over right-padded rows of
/// `lengths[b]` tokens, then `pooled()` (B,C), one embedding per sequence, and `grad_pooled()` (B,C),
/// which losses write and `backward` reads (`student::Encoder`).
template <class M>
concept embedding_model = trainable_model<M> &&
    requires(M& m, const M& cm, const std::int32_t* tokens, const int* lengths, int n) {
    m.forward(tokens, n, n, lengths);
    { cm.pooled() } -> std::convertible_to<Tensor<typename M::scalar_type>>;
    { cm.grad_pooled() } -> std::convertible_to<Tensor<typename M::scalar_type>>;
    { cm.max_length() } -> std::convertible_to<int>;
};

/// A model the Distiller can train: a `sequence_model` (language tasks) or an `embedding_model`
/// (the `embedding` task).
template <class M>
concept student_model = sequence_model<M> || embedding_model<M>;

}  // namespace distill
