#pragma once
/// @file loss.hpp
/// The `loss_policy` concept: what a distillation loss term is, what it may read, where it writes,
/// and how it is checked against a teacher at compile time. The formulas of the library's terms
/// are in `docs/losses.md`; each term lives in its own header under `loss/`.
///
/// **What a loss term represents.** A differentiable scalar of the student's outputs (logits,
/// pooled sentence embeddings, hidden states, attention maps, q|k|v projections) and the teacher's
/// outputs for the same batch.
/// One call computes the value *and* writes its gradient: the term adds `weight · ∂value/∂x` to the
/// gradient sink of every student output `x` it reads. Several terms share the sinks, so gradients
/// accumulate; the `Workspace` tracks which sinks were written this step so the first writer may
/// overwrite instead of adding (no separate zeroing pass over a (tokens × vocab) buffer).
///
/// **Minimal complete definition** (for a term type `L`, scalar `T`, device `D`):
/// - `static constexpr char name[]` — the term's key in the job's `loss` object, e.g. `"soft_kl"`;
/// - `static constexpr auto needs = boost::hana::make_set(signal::logits, ...)` — the teacher
///   signals it reads (see `signals.hpp`);
/// - a member type `config`, a struct with defaults adapted with `BOOST_HANA_ADAPT_STRUCT` (so jobs
///   configure it through `io::from_json`, with unknown keys and wrong types reported by path);
/// - a constructor `L(const L::config&, const loss::dims&)`, which validates the config against the
///   two models' shapes and throws `config_error` whose field starts with `name`;
/// - `T operator()(const loss::context<T, D>&)` — returns the value and accumulates its gradient,
///   scaled by `ctx.weight`, into the sinks `ctx` hands out.
///
/// Optional members: `parameters()` (learned parts, e.g. HiddenMSE's projections, as
/// `std::vector<Parameter<T>>`: optimizers and checkpoints treat them like model weights),
/// `zero_grad()`, `scratch_elements()` (scratch memory the `Workspace` must provide), and
/// `DISTILL_LOSS_TERM_CHECKS(Term)` in the class body, which makes a missing teacher signal fail
/// with the term's own name in the message.
///
/// **Reduction.** Every term is a *mean over the positions that count*: `mask(b,t) = 1` (prompt
/// and padding positions are 0). Per-position terms average over those positions; attention terms
/// average over mapped layers, heads and the query rows at those positions (every key ≤ t of a
/// counted row is part of its distribution; every key for a bidirectional student,
/// `model_dims::causal` false); hidden-state terms average over mapped layer pairs, counted
/// positions and channels; pooled-embedding terms average over the B sequences (one row each, all
/// counted). With no counted position the value is 0 and the gradient 0.
///
/// **Laws** (tested in `tests/unit-losses.cpp`): value and gradient agree with PyTorch autograd and
/// with finite differences; divergences are ≥ 0 and vanish when student and teacher agree;
/// gradients are exactly zero on positions that do not count; a term called twice with weights
/// a and b leaves a + b times its gradient in the sinks; values and gradients stay finite for
/// finite-or-masked (−inf) inputs.
///
/// **Example.**
/// @code
/// using Loss = distill::loss::Sum<distill::loss::SoftKL, distill::loss::HiddenMSE>;
/// static_assert(distill::loss::check_needs<MyTeacher, Loss>());           // compile time
/// const auto dims = distill::loss::dims_of(student, teacher, max_batch);
/// Loss loss(config, dims);
/// distill::loss::Workspace<float, distill::device::Cpu> ws(loss, dims);   // sized once
/// // each step, after both forwards:
/// student.zero_grad();
/// loss.zero_grad();                           // the projections get their gradient in the call
/// auto ctx = ws.begin(student, teacher_outputs, mask);
/// float value = loss(ctx);
/// ws.finish();
/// student.backward(ws.d_hidden(), ws.d_attention(), ws.d_qkv());
/// @endcode
/// `examples/custom_loss.cpp` is the compiled version, with a user-written term.

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/hana/accessors.hpp>
#include <boost/hana/adapt_struct.hpp>
#include <boost/hana/contains.hpp>
#include <boost/hana/set.hpp>
#include <boost/hana/string.hpp>
#include <boost/hana/type.hpp>
#include <boost/hana/unpack.hpp>

#include "distill/detail/arena.hpp"
#include "distill/device.hpp"
#include "distill/error.hpp"
#include "distill/io/reflect.hpp"
#include "distill/parameter.hpp"
#include "distill/signals.hpp"
#include "distill/tensor.hpp"

namespace distill::loss {

// ---- shapes ---------------------------------------------------------------------------------------

/// The shape of one model as the loss terms see it. A 0 means "unknown" (an API teacher has no
/// visible layers); terms that need a dimension reject 0 with a config_error.
struct model_dims {
    int vocab_size = 0;  ///< V
    int d_model = 0;     ///< C, the width of hidden states
    int n_layers = 0;    ///< L: hidden states 0..L, attention layers 0..L-1
    int n_heads = 0;     ///< H, attention heads per layer
    int qkv_width = 0;   ///< width of a q|k|v row: 3C, less with grouped-query attention; 0 = 3C
    /// Whether query t attends to keys j ≤ t only (decoders); false for bidirectional encoders,
    /// whose queries attend to every valid key.
    bool causal = true;

    /// The q|k|v row width (3C unless the model says otherwise).
    int qkv() const noexcept { return qkv_width ? qkv_width : 3 * d_model; }
};

/// What terms and the `Workspace` are built for: both models' shapes and the largest batch.
struct dims {
    model_dims student;
    model_dims teacher;
    int max_batch = 1;   ///< most sequences per batch
    int max_length = 1;  ///< most positions per sequence
};

/// The `model_dims` of a config with `vocab_size`, `d_model`, `n_layers`, `n_heads` (and
/// `qkv_width()` where q|k|v is not 3C wide, and a `static constexpr bool causal` where the model
/// is not a causal decoder, e.g. `student::EncoderConfig`), e.g. `student::TransformerConfig`.
template <class Config>
model_dims model_dims_of_config(const Config& c) {
    model_dims d{c.vocab_size, c.d_model, c.n_layers, c.n_heads};
    if constexpr (requires { c.qkv_width(); }) d.qkv_width = c.qkv_width();
    if constexpr (requires { Config::causal; }) d.causal = Config::causal;
    return d;
}

/// The `model_dims` of any model whose `config()` `model_dims_of_config` reads (e.g.
/// `student::Transformer`).
template <class Model>
model_dims model_dims_of(const Model& m) {
    return model_dims_of_config(m.config());
}

/// `dims` of a student and an in-process teacher, for batches of up to `max_batch` sequences of up
/// to the student's context length.
template <class Student, class Teacher>
dims dims_of(const Student& student, const Teacher& teacher, int max_batch) {
    return {model_dims_of(student), model_dims_of(teacher), max_batch, student.config().context_length};
}

// ---- what terms read ------------------------------------------------------------------------------

/// Read-only views of one model's outputs for a batch of B sequences of T positions. Empty tensors
/// (and empty vectors) mean "not available". Everything is contiguous row-major.
/// @tparam T scalar type.
template <class T>
struct model_outputs {
    Tensor<const T> logits;                      ///< (B,T,V)
    Tensor<const T> pooled;                      ///< (B,C): one embedding per sequence (sentence encoders)
    std::vector<Tensor<const T>> hidden_states;  ///< L+1 × (B,T,C): 0 embeddings, L after the final norm
    std::vector<Tensor<const T>> attentions;     ///< L × (B,H,T,T) probabilities, zeros above the diagonal
    std::vector<Tensor<const T>> qkv;            ///< L × (B,T,3C): q | k | v, head h in columns [h·C/H, (h+1)·C/H)
};

/// The student's outputs.
template <class T>
using student_outputs = model_outputs<T>;

/// The teacher's outputs for the batch: what a `teacher_source` fills, as far as it `provides`.
/// @tparam T scalar type.
template <class T>
struct teacher_outputs : model_outputs<T> {
    /// (B,T) the token the teacher produced after position t — the target of the student's logits
    /// at t (already shifted) — or -1 where it produced none (sequence-level distillation).
    Tensor<const std::int32_t> tokens;
    /// (B,T,k) ids of the teacher's k most likely next tokens at each position; -1 marks an
    /// unused slot (an API that returned fewer than k).
    Tensor<const std::int32_t> topk_ids;
    /// (B,T,k) their natural-log probabilities under the teacher at `topk_temperature`.
    Tensor<const T> topk_logprobs;
    /// The temperature at which `topk_logprobs` were computed (1 for API teachers and caches).
    double topk_temperature = 1.0;
};

/// Fills `out` with views of `model`'s last forward: its logits when it has `logits()`, its
/// pooled embeddings when it has `pooled()`, every hidden state, every attention map and, when the
/// model has `qkv(l)`, every q|k|v projection — what the model keeps of them (`keeps_activations()`,
/// `keeps_attention()`). Reuses `out`'s vectors, so after the first call it
/// does not allocate.
template <class T, class Model>
void collect_outputs(const Model& model, model_outputs<T>& out) {
    if constexpr (requires { model.logits(); })
        out.logits = model.logits();
    else
        out.logits = {};
    if constexpr (requires { model.pooled(); })
        out.pooled = model.pooled();
    else
        out.pooled = {};
    if constexpr (requires { model.keeps_activations(); })
        if (!model.keeps_activations()) {  // an inference-only network: its logits alone
            out.hidden_states.clear();
            out.attentions.clear();
            out.qkv.clear();
            return;
        }
    const int hidden = model.hidden_state_count();
    out.hidden_states.resize(static_cast<std::size_t>(hidden));
    for (int i = 0; i < hidden; ++i) out.hidden_states[static_cast<std::size_t>(i)] = model.hidden_state(i);
    if constexpr (requires { model.keeps_attention(); })
        if (!model.keeps_attention()) {  // activation checkpointing: hidden states alone
            out.attentions.clear();
            out.qkv.clear();
            return;
        }
    const int layers = hidden - 1;
    out.attentions.resize(static_cast<std::size_t>(layers));
    for (int l = 0; l < layers; ++l) out.attentions[static_cast<std::size_t>(l)] = model.attention(l);
    if constexpr (requires { model.qkv(0); }) {
        out.qkv.resize(static_cast<std::size_t>(layers));
        for (int l = 0; l < layers; ++l) out.qkv[static_cast<std::size_t>(l)] = model.qkv(l);
    }
}

/// Where a term writes the gradient of one student output this step.
/// @tparam T scalar type.
template <class T>
struct sink {
    Tensor<T> tensor;  ///< the gradient buffer, the output's shape
    /// false: no term has written it this step, and the receiver must *overwrite every element*
    /// (zeros where it has no gradient); true: add to it.
    bool accumulate = true;
};

template <class T, class Device>
class Workspace;

/// Everything a term sees in one call: the student's and the teacher's outputs, which positions
/// count, the ground-truth labels, the device, the gradient sinks and the weight to scale by.
/// A cheap view (copied by `Sum` to set each term's weight); valid between `Workspace::begin`
/// and `Workspace::finish`.
/// @tparam T scalar type. @tparam Device the device whose kernels the terms call.
template <class T, class Device>
struct context {
    static_assert(device::require_loss_kernels<Device, T>::value);  // one line per missing loss kernel

    Device device;
    const student_outputs<T>* student = nullptr;
    const teacher_outputs<T>* teacher = nullptr;
    /// (B,T): 1 where the position counts; empty means every position counts.
    Tensor<const std::uint8_t> mask;
    /// (B,T): the ground-truth next token at each position, -1 for none; may be empty.
    Tensor<const std::int32_t> labels;
    /// Multiplies every gradient a term writes (a `Sum` sets it to its weight for the term).
    T weight = T(1);
    Workspace<T, Device>* workspace = nullptr;
    /// The batch's shape, B sequences of T positions (set by `Workspace::begin`; a model without
    /// logits has them too).
    int batch_size = 0;
    int sequence_length = 0;

    int batch() const noexcept { return batch_size; }
    int length() const noexcept { return sequence_length; }
    /// Whether position n = b·T + t counts.
    bool counts(std::int64_t n) const noexcept { return mask.empty() || mask.data()[n] != 0; }
    /// The mask as a pointer (nullptr: every position counts), the form the kernels take.
    const std::uint8_t* mask_data() const noexcept { return mask.empty() ? nullptr : mask.data(); }
    /// Number of positions that count.
    std::int64_t count() const noexcept {
        const std::int64_t n = std::int64_t(batch()) * length();
        if (mask.empty()) return n;
        std::int64_t c = 0;
        for (std::int64_t i = 0; i < n; ++i) c += mask.data()[i] != 0;
        return c;
    }

    /// The gradient sink of the logits (B,T,V); see `sink::accumulate`.
    sink<T> d_logits() const { return workspace->logits_sink(); }
    /// The gradient sink of the pooled embeddings (B,C) (the student's `grad_pooled()`), with the
    /// same overwrite/accumulate semantics as `d_logits`.
    sink<T> d_pooled() const { return workspace->pooled_sink(); }
    /// The sink of hidden state i (B,T,C), of attention map l (B,H,T,T), of q|k|v of layer l (B,T,3C).
    sink<T> d_hidden(int i) const { return workspace->hidden_sink(i); }
    sink<T> d_attention(int l) const { return workspace->attention_sink(l); }
    sink<T> d_qkv(int l) const { return workspace->qkv_sink(l); }
    /// The same sinks for terms that only add: zeroed on the first touch of the step.
    Tensor<T> d_logits_accumulate() const { return workspace->logits_accumulate(); }
    Tensor<T> d_pooled_accumulate() const { return workspace->pooled_accumulate(); }
    Tensor<T> d_hidden_accumulate(int i) const { return workspace->hidden_accumulate(i); }
    Tensor<T> d_attention_accumulate(int l) const { return workspace->attention_accumulate(l); }
    Tensor<T> d_qkv_accumulate(int l) const { return workspace->qkv_accumulate(l); }
    /// Per-position scratch (max_batch · max_length elements), e.g. for per-row losses.
    T* rows() const noexcept { return workspace->rows(); }
    /// The scratch the loss asked for with `scratch_elements()`.
    T* scratch() const noexcept { return workspace->scratch(); }
};

// ---- the concept ----------------------------------------------------------------------------------

/// Whether `S` is a Boost.Hana set.
template <class S>
inline constexpr bool is_hana_set = std::is_same_v<typename boost::hana::tag_of<S>::type, boost::hana::set_tag>;

/// A distillation loss term (see the file comment for the full contract).
/// @tparam L the term. @tparam T scalar type. @tparam Device the device it runs on.
template <class L, class T, class Device>
concept loss_policy = requires(L& term, const context<T, Device>& ctx) {
    { L::name } -> std::convertible_to<const char*>;
    requires is_hana_set<std::remove_cvref_t<decltype(L::needs)>>;
    typename L::config;
    requires io::reflected<typename L::config>;
    requires std::constructible_from<L, const typename L::config&, const dims&>;
    { term(ctx) } -> std::convertible_to<T>;
};

/// Whether term `L` reads teacher signal `Signal` (e.g. `signal::attentions_t`).
template <class L, class Signal>
inline constexpr bool term_needs = decltype(boost::hana::contains(L::needs, boost::hana::type_c<Signal>))::value;

/// Whether term `L` reads any of the teacher's activations: hidden states, attention maps, q|k|v.
template <class L>
inline constexpr bool needs_activations =
    term_needs<L, signal::hidden_states_t> || term_needs<L, signal::attentions_t> || term_needs<L, signal::qkv_t>;

/// Whether term `L` reads attention maps or q|k|v (of the teacher and the student alike).
template <class L>
inline constexpr bool needs_attention = term_needs<L, signal::attentions_t> || term_needs<L, signal::qkv_t>;

/// Whether `loss` reads the teacher's activations at run time (a `Sum` counts only its terms of
/// nonzero weight).
template <class L>
bool reads_activations(const L& loss) {
    if constexpr (requires { loss.reads_activations(); })
        return loss.reads_activations();
    else
        return needs_activations<L>;
}

/// Whether `loss` reads attention maps or q|k|v at run time (a `Sum` counts only its terms of
/// nonzero weight): a student trained with activation checkpointing keeps neither.
template <class L>
bool reads_attention(const L& loss) {
    if constexpr (requires { loss.reads_attention(); })
        return loss.reads_attention();
    else
        return needs_attention<L>;
}

/// The learned parameters of a term or loss (none unless it has `parameters()`).
template <class T, class L>
std::vector<Parameter<T>> parameters_of(const L& term) {
    if constexpr (requires {
                      { term.parameters() } -> std::convertible_to<std::vector<Parameter<T>>>;
                  })
        return term.parameters();
    else
        return {};
}

/// Scratch elements a term or loss asks the `Workspace` for (0 unless it has `scratch_elements()`).
template <class L>
std::size_t scratch_elements_of(const L& term) {
    if constexpr (requires {
                      { term.scratch_elements() } -> std::convertible_to<std::size_t>;
                  })
        return term.scratch_elements();
    else
        return 0;
}

/// Zeroes the gradients of a term's learned parameters, if it has any.
template <class L>
void zero_grad_of(L& term) {
    if constexpr (requires { term.zero_grad(); }) term.zero_grad();
}

/// The same term (or loss) computing in scalar `T` on `Device`: the identity, except for types
/// with learned state (`BasicHiddenMSE`, `Sum`) which define a member `rebind<T, Device>`. Lets
/// `Sum<SoftKL, HiddenMSE>` (float, Cpu) be used by a double or CUDA `Distiller`.
template <class L, class T, class Device>
struct rebind {
    using type = L;
};
template <class L, class T, class Device>
requires requires {
    typename L::template rebind<T, Device>;
}
struct rebind<L, T, Device> {
    using type = typename L::template rebind<T, Device>;
};
template <class L, class T, class Device>
using rebind_t = typename rebind<L, T, Device>::type;

// ---- the workspace --------------------------------------------------------------------------------

/// The gradient sinks and scratch memory of a loss, laid out once for the largest batch, and the
/// bookkeeping of one step: which sinks have been written, the student's output views, the views
/// handed to `student.backward`. Nothing is allocated after construction (the first `begin` with
/// a model sizes the view vectors once).
///
/// A step: `auto ctx = ws.begin(student, teacher, mask);  T v = loss(ctx);  ws.finish();
/// student.backward(ws.d_hidden(), ws.d_attention(), ws.d_qkv());`
/// @tparam T scalar type. @tparam Device where the buffers live.
template <class T, class Device>
class Workspace {
public:
    /// Buffers for `d.student`'s hidden states (L+1 × (B,T,C)) when `hidden`, attention maps
    /// (L × (B,H,T,T)) when `attention`, q|k|v (L × (B,T,3C)) when `qkv`, plus `scratch` elements.
    Workspace(const dims& d, bool hidden, bool attention, bool qkv, std::size_t scratch, Device device = Device{})
        : dims_(d), dev_(device) {
        if (d.max_batch < 1 || d.max_length < 1)
            throw config_error("loss.dims", "max_batch and max_length must be >= 1, got " +
                                                std::to_string(d.max_batch) + " and " + std::to_string(d.max_length));
        const std::int64_t N = std::int64_t(d.max_batch) * d.max_length, C = d.student.d_model, L = d.student.n_layers;
        auto need = [&](bool on, const char* what) {
            if (on && (C < 1 || L < 1 || (what[0] == 'a' && d.student.n_heads < 1)))
                throw config_error("loss.dims.student", std::string("the student's shape is needed for ") + what +
                                                            " gradients (d_model, n_layers, n_heads must be >= 1)");
        };
        need(hidden, "hidden-state");
        need(attention, "attention");
        need(qkv, "qkv");
        rows_ = layout_.add<T>("rows", {N});
        if (scratch) scratch_ = layout_.add<T>("scratch", {std::int64_t(scratch)});
        if (hidden)
            for (std::int64_t i = 0; i <= L; ++i) hidden_.push_back(layout_.add<T>("d_hidden", {N * C}));
        if (attention)
            for (std::int64_t l = 0; l < L; ++l)
                attention_.push_back(layout_.add<T>(
                    "d_attention", {std::int64_t(d.max_batch) * d.student.n_heads * d.max_length * d.max_length}));
        if (qkv)
            for (std::int64_t l = 0; l < L; ++l) qkv_.push_back(layout_.add<T>("d_qkv", {N * d.student.qkv()}));
        arena_ = distill::detail::Arena<T, Device>(dev_, layout_.size());
        hidden_state_.assign(hidden_.size(), 0);
        attention_state_.assign(attention_.size(), 0);
        qkv_state_.assign(qkv_.size(), 0);
        hidden_views_.assign(hidden_.size(), {});
        attention_views_.assign(attention_.size(), {});
        qkv_views_.assign(qkv_.size(), {});
    }

    /// Bytes the workspace of the constructor below allocates (`bytes()`), without allocating: the
    /// memory plan's figure (eval/memory_plan.hpp).
    static std::size_t planned_bytes(const dims& d, bool hidden, bool attention, bool qkv, std::size_t scratch) {
        const std::int64_t N = std::int64_t(d.max_batch) * d.max_length, C = d.student.d_model, L = d.student.n_layers;
        distill::detail::ArenaLayout layout;  // the constructor's blocks, in its order
        layout.add<T>("rows", {N});
        if (scratch) layout.add<T>("scratch", {std::int64_t(scratch)});
        if (hidden)
            for (std::int64_t i = 0; i <= L; ++i) layout.add<T>("d_hidden", {N * C});
        if (attention)
            for (std::int64_t l = 0; l < L; ++l)
                layout.add<T>("d_attention",
                              {std::int64_t(d.max_batch) * d.student.n_heads * d.max_length * d.max_length});
        if (qkv)
            for (std::int64_t l = 0; l < L; ++l) layout.add<T>("d_qkv", {N * d.student.qkv()});
        return sizeof(T) * layout.size();
    }
    /// `planned_bytes` of the workspace `Workspace(loss, d)` allocates.
    template <class Loss>
    requires requires { Loss::needs; }
    static std::size_t planned_bytes(const Loss& loss, const dims& d) {
        return planned_bytes(d, term_needs<Loss, signal::hidden_states_t>, term_needs<Loss, signal::attentions_t>,
                             term_needs<Loss, signal::qkv_t>, scratch_elements_of(loss));
    }

    /// Buffers for what `loss` needs: per-layer sinks of the kinds in `Loss::needs` (a term reading
    /// the teacher's hidden states writes the student's), and `loss.scratch_elements()`.
    template <class Loss>
    requires requires { Loss::needs; }
    Workspace(const Loss& loss, const dims& d, Device device = Device{})
        : Workspace(d, term_needs<Loss, signal::hidden_states_t>, term_needs<Loss, signal::attentions_t>,
                    term_needs<Loss, signal::qkv_t>, scratch_elements_of(loss), device) {}

    /// Starts a step on `student`'s last forward: the student's views, its `grad_logits()` as the
    /// logits sink and, for a sentence encoder, its `grad_pooled()` as the pooled sink (a student
    /// may have either or both), and no sink written yet. `mask` and `labels` are (B,T) or empty.
    template <class Student>
    requires requires(const Student& s) {
        s.hidden_state_count();
    } &&(
        requires(const Student& s) { s.grad_logits(); } ||
        requires(const Student& s) {
            s.grad_pooled();
        }) context<T, Device> begin(const Student& student, const teacher_outputs<T>& teacher,
                                    Tensor<const std::uint8_t> mask = {}, Tensor<const std::int32_t> labels = {}) {
        collect_outputs(student, own_student_);
        Tensor<T> d_logits, d_pooled;
        if constexpr (requires { student.grad_logits(); }) d_logits = student.grad_logits();
        if constexpr (requires { student.grad_pooled(); }) d_pooled = student.grad_pooled();
        return begin(own_student_, d_logits, d_pooled, teacher, mask, labels);
    }

    /// Starts a step on explicit views: `student` outputs and `d_logits`, the buffer `backward`
    /// reads the logits' gradient from (same shape as `student.logits`).
    context<T, Device> begin(const student_outputs<T>& student, Tensor<T> d_logits, const teacher_outputs<T>& teacher,
                             Tensor<const std::uint8_t> mask = {}, Tensor<const std::int32_t> labels = {}) {
        if (student.logits.rank() != 3)
            throw shape_error("loss: the student's logits must be (B,T,V), got " + student.logits.shape_string());
        return begin(student, d_logits, Tensor<T>{}, teacher, mask, labels);
    }

    /// Starts a step on explicit views of any student: `d_logits` (the shape of `student.logits`)
    /// and `d_pooled` (the shape of `student.pooled`) are the buffers `backward` reads the
    /// gradients from; each is empty exactly when the student has no such output. B and T come
    /// from the logits (B,T,V) when there are any, else B from the pooled embeddings (B,C) and T
    /// from hidden state 0 (B,T,C) or, without hidden states, from the mask (B,T), else T = 1.
    context<T, Device> begin(const student_outputs<T>& student, Tensor<T> d_logits, Tensor<T> d_pooled,
                             const teacher_outputs<T>& teacher, Tensor<const std::uint8_t> mask = {},
                             Tensor<const std::int32_t> labels = {}) {
        if (!student.logits.empty()) {
            if (student.logits.rank() != 3)
                throw shape_error("loss: the student's logits must be (B,T,V), got " + student.logits.shape_string());
            B_ = static_cast<int>(student.logits.size(0));
            T_ = static_cast<int>(student.logits.size(1));
        } else if (!student.pooled.empty()) {
            if (student.pooled.rank() != 2)
                throw shape_error("loss: the student's pooled embeddings must be (B,C), got " +
                                  student.pooled.shape_string());
            B_ = static_cast<int>(student.pooled.size(0));
            if (!student.hidden_states.empty() && student.hidden_states[0].rank() == 3)
                T_ = static_cast<int>(student.hidden_states[0].size(1));
            else if (mask.rank() == 2)
                T_ = static_cast<int>(mask.size(1));
            else
                T_ = 1;  // embeddings only: one "position" per sequence
        } else {
            throw shape_error("loss: the student has neither logits (B,T,V) nor pooled embeddings (B,C)");
        }
        if (B_ > dims_.max_batch || T_ > dims_.max_length)
            throw shape_error("loss: batch (B=" + std::to_string(B_) + ", T=" + std::to_string(T_) +
                              ") exceeds the workspace (max_batch=" + std::to_string(dims_.max_batch) +
                              ", max_length=" + std::to_string(dims_.max_length) + ")");
        if (d_logits.numel() != student.logits.numel() || (!d_logits.empty() && !d_logits.contiguous()))
            throw shape_error("loss: the logits' gradient buffer has shape " + d_logits.shape_string() + ", expected " +
                              student.logits.shape_string());
        if (d_pooled.numel() != student.pooled.numel() || (!d_pooled.empty() && !d_pooled.contiguous()))
            throw shape_error("loss: the pooled embeddings' gradient buffer has shape " + d_pooled.shape_string() +
                              ", expected " + student.pooled.shape_string());
        auto check_bt = [&](const auto& t, const char* what) {
            if (!t.empty() && (t.rank() != 2 || t.size(0) != B_ || t.size(1) != T_))
                throw shape_error(std::string("loss: ") + what + " must be (B,T) = [" + std::to_string(B_) + ", " +
                                  std::to_string(T_) + "], got " + t.shape_string());
        };
        check_bt(mask, "the mask");
        check_bt(labels, "the labels");
        d_logits_ = d_logits;
        logits_written_ = false;
        d_pooled_ = d_pooled;
        pooled_written_ = false;
        std::fill(hidden_state_.begin(), hidden_state_.end(), 0);
        std::fill(attention_state_.begin(), attention_state_.end(), 0);
        std::fill(qkv_state_.begin(), qkv_state_.end(), 0);
        std::fill(hidden_views_.begin(), hidden_views_.end(), Tensor<const T>{});
        std::fill(attention_views_.begin(), attention_views_.end(), Tensor<const T>{});
        std::fill(qkv_views_.begin(), qkv_views_.end(), Tensor<const T>{});
        context<T, Device> ctx;
        ctx.device = dev_;
        ctx.student = &student;
        ctx.teacher = &teacher;
        ctx.mask = mask;
        ctx.labels = labels;
        ctx.workspace = this;
        ctx.batch_size = B_;
        ctx.sequence_length = T_;
        return ctx;
    }

    /// Ends the step: a logits or pooled gradient no term wrote becomes zeros (`backward` always
    /// reads it).
    void finish() {
        if (!logits_written_ && !d_logits_.empty())
            dev_.fill_zero(d_logits_.data(), sizeof(T) * std::size_t(d_logits_.numel()));
        logits_written_ = true;
        if (!pooled_written_ && !d_pooled_.empty())
            dev_.fill_zero(d_pooled_.data(), sizeof(T) * std::size_t(d_pooled_.numel()));
        pooled_written_ = true;
    }

    /// The extra gradients for `student.backward(d_hidden(), d_attention(), d_qkv())`: one entry per
    /// hidden state / layer, empty where no term wrote this step.
    std::span<const Tensor<const T>> d_hidden() const noexcept { return hidden_views_; }
    std::span<const Tensor<const T>> d_attention() const noexcept { return attention_views_; }
    std::span<const Tensor<const T>> d_qkv() const noexcept { return qkv_views_; }

    /// The sinks (see `context`). `accumulate` is false for the first writer of the step.
    sink<T> logits_sink() {
        if (d_logits_.empty()) throw shape_error("loss: the student has no logits, so no logits gradient to write");
        const bool acc = logits_written_;
        logits_written_ = true;
        return {d_logits_, acc};
    }
    sink<T> pooled_sink() {
        if (d_pooled_.empty())
            throw shape_error("loss: the student has no pooled embeddings, so no pooled gradient to write");
        const bool acc = pooled_written_;
        pooled_written_ = true;
        return {d_pooled_, acc};
    }
    sink<T> hidden_sink(int i) {
        return layer_sink(hidden_, hidden_state_, hidden_views_, i, "hidden-state", {B_, T_, dims_.student.d_model});
    }
    sink<T> attention_sink(int l) {
        return layer_sink(attention_, attention_state_, attention_views_, l, "attention",
                          {B_, dims_.student.n_heads, T_, T_});
    }
    sink<T> qkv_sink(int l) {
        return layer_sink(qkv_, qkv_state_, qkv_views_, l, "qkv", {B_, T_, dims_.student.qkv()});
    }
    Tensor<T> logits_accumulate() { return zeroed(logits_sink()); }
    Tensor<T> pooled_accumulate() { return zeroed(pooled_sink()); }
    Tensor<T> hidden_accumulate(int i) { return zeroed(hidden_sink(i)); }
    Tensor<T> attention_accumulate(int l) { return zeroed(attention_sink(l)); }
    Tensor<T> qkv_accumulate(int l) { return zeroed(qkv_sink(l)); }

    T* rows() const noexcept { return arena_.data() + layout_.blocks()[rows_].offset; }
    T* scratch() const noexcept { return scratch_ ? arena_.data() + layout_.blocks()[*scratch_].offset : nullptr; }
    const dims& shape() const noexcept { return dims_; }
    const Device& device() const noexcept { return dev_; }
    /// Bytes of the workspace's buffers.
    std::size_t bytes() const noexcept { return sizeof(T) * layout_.size(); }

private:
    sink<T> layer_sink(const std::vector<std::size_t>& blocks, std::vector<char>& state,
                       std::vector<Tensor<const T>>& views, int i, const char* what,
                       std::initializer_list<std::int64_t> shape) {
        if (blocks.empty())
            throw shape_error(std::string("loss: the workspace has no ") + what +
                              " gradient buffers (build it for a loss whose needs include them)");
        if (i < 0 || i >= static_cast<int>(blocks.size()))
            throw shape_error(std::string("loss: ") + what + " gradient " + std::to_string(i) + " is out of range 0.." +
                              std::to_string(blocks.size() - 1));
        Tensor<T> t(arena_.data() + layout_.blocks()[blocks[std::size_t(i)]].offset, shape, Device::memory);
        const bool acc = state[std::size_t(i)] != 0;
        state[std::size_t(i)] = 1;
        views[std::size_t(i)] = t;
        return {t, acc};
    }
    Tensor<T> zeroed(const sink<T>& s) {
        if (!s.accumulate) dev_.fill_zero(s.tensor.data(), sizeof(T) * std::size_t(s.tensor.numel()));
        return s.tensor;
    }

    dims dims_;
    Device dev_;
    distill::detail::ArenaLayout layout_;
    distill::detail::Arena<T, Device> arena_;
    std::size_t rows_ = 0;
    std::optional<std::size_t> scratch_;
    std::vector<std::size_t> hidden_, attention_, qkv_;
    std::vector<char> hidden_state_, attention_state_, qkv_state_;
    std::vector<Tensor<const T>> hidden_views_, attention_views_, qkv_views_;
    student_outputs<T> own_student_;
    Tensor<T> d_logits_, d_pooled_;
    bool logits_written_ = true, pooled_written_ = true;
    int B_ = 0, T_ = 0;
};

// ---- needs ⊆ provides ----------------------------------------------------------------------------

// One static_assert for `Signal` of the term called `who` (a string literal): the library's
// signals by name, any other signal type generically.
#define DISTILL_LOSS_CHECK_SIGNAL_(who, Teacher_, Signal_)                                       \
    DISTILL_LOSS_CHECK_NAMED_(who, Teacher_, Signal_, tokens)                                    \
    DISTILL_LOSS_CHECK_NAMED_(who, Teacher_, Signal_, topk_logprobs)                             \
    DISTILL_LOSS_CHECK_NAMED_(who, Teacher_, Signal_, logits)                                    \
    DISTILL_LOSS_CHECK_NAMED_(who, Teacher_, Signal_, pooled)                                    \
    DISTILL_LOSS_CHECK_NAMED_(who, Teacher_, Signal_, hidden_states)                             \
    DISTILL_LOSS_CHECK_NAMED_(who, Teacher_, Signal_, attentions)                                \
    DISTILL_LOSS_CHECK_NAMED_(who, Teacher_, Signal_, qkv)                                       \
    static_assert(::distill::teacher_provides<Teacher_, Signal_>,                                \
                  "Loss: " who                                                                   \
                  " needs a signal that the teacher does not provide (the note below names the " \
                  "signal and the teacher); see docs/losses.md");

// One link of that chain: the check of the library's signal `sig` (`signal::sig##_t`), named in
// the message, and an `else` for the next link.
#define DISTILL_LOSS_CHECK_NAMED_(who, Teacher_, Signal_, sig)                                                 \
    if constexpr (::std::is_same_v<Signal_, ::distill::signal::sig##_t>) {                                     \
        static_assert(::distill::teacher_provides<Teacher_, Signal_>,                                          \
                      "Loss: " who " needs " #sig ", which the teacher does not provide; see docs/losses.md"); \
    } else

namespace detail {
template <class>
inline constexpr bool always_false = false;

// The fallback for terms without DISTILL_LOSS_TERM_CHECKS, whose message cannot name the term
// (C++20 static_assert messages are literals); the compiler's "required from" lines and the note
// under the assertion name the term, the signal and the teacher.
template <class Term, class Teacher, class Signal>
constexpr bool generic_check() {
    DISTILL_LOSS_CHECK_SIGNAL_("a loss term", Teacher, Signal)
    return true;
}
template <class Term, class Teacher>
constexpr bool generic_checks() {
    return boost::hana::unpack(Term::needs, [](auto... signals) {
        return (generic_check<Term, Teacher, typename decltype(signals)::type>() && ... && true);
    });
}
}  // namespace detail

/// Checks, for every term of `Loss`, that `Teacher` provides each signal the term needs: every
/// element of the term's `needs` set must be in the teacher's `provides` set, whatever the signal
/// type (the library's `signal::*` tags or a user's own). Fails to compile with one
/// `static_assert` per missing signal, first term first, its message naming the term and the
/// signal: `"Loss: distill::loss::AttentionKL needs attentions, which the teacher does not
/// provide; see docs/losses.md"`, and the compiler's note under it naming the teacher
/// (`'distill::teacher_provides<my_teacher, distill::signal::attentions_t>' evaluates to
/// false`). A user-defined signal cannot be pasted into a C++20 message, so its message says "needs
/// a signal that the teacher does not provide" and the note names the signal type and the teacher.
/// @tparam Teacher a type with `static constexpr auto provides` (a Hana set of signals).
/// @tparam Loss a term or a `Sum` of terms.
template <class Teacher, class Loss>
constexpr bool check_needs() {
    static_assert(
        requires { Teacher::provides; },
        "Teacher: a teacher source declares `static constexpr auto provides = boost::hana::make_set(...)`; "
        "see docs/losses.md");
    if constexpr (requires { Loss::template check_teacher<Teacher>(); })
        return Loss::template check_teacher<Teacher>();
    else
        return detail::generic_checks<Loss, Teacher>();
}

}  // namespace distill::loss

/// Put in a loss term's class body (public, after `needs`) with the term's fully qualified name
/// as users spell it: makes `check_needs` report a missing signal as "Loss: <Term> needs
/// <signal>, which the teacher does not provide; see docs/losses.md" (for a user-defined signal:
/// "Loss: <Term> needs a signal that the teacher does not provide (...)", the note naming it).
/// (C++20 static_assert messages are string literals, so the name is pasted in by the preprocessor.)
/// Every element of `needs` is checked, in order.
#define DISTILL_LOSS_TERM_CHECKS(Term)                                                                  \
    template <class Teacher>                                                                            \
    static constexpr bool check_teacher() {                                                             \
        return ::boost::hana::unpack(needs, [](auto... signals) {                                       \
            return (distill_check_signal_<Teacher, typename decltype(signals)::type>() && ... && true); \
        });                                                                                             \
    }                                                                                                   \
    template <class Teacher, class Signal>                                                              \
    static constexpr bool distill_check_signal_() {                                                     \
        DISTILL_LOSS_CHECK_SIGNAL_(#Term, Teacher, Signal)                                              \
        return true;                                                                                    \
    }

BOOST_HANA_ADAPT_STRUCT(distill::loss::model_dims, vocab_size, d_model, n_layers, n_heads);
