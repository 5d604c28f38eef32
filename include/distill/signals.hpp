#pragma once
/// @file signals.hpp
/// The signals a teacher can provide and a loss term can need, as compile-time tags. A teacher
/// declares `static constexpr auto provides = boost::hana::make_set(signal::tokens, ...)`; a loss
/// term declares `static constexpr auto needs = boost::hana::make_set(signal::logits, ...)`; the
/// `Distiller` checks `needs ⊆ provides` and names the missing signal when it is not (see
/// `docs/losses.md`).

#include <boost/hana/contains.hpp>
#include <boost/hana/set.hpp>
#include <boost/hana/type.hpp>

namespace distill::signal {

/// The teacher's response tokens (sequence-level distillation; every teacher has these).
struct tokens_t {
    static constexpr const char* name = "tokens";
};
/// The teacher's top-k log-probabilities per response position (API teachers, cached runs).
struct topk_logprobs_t {
    static constexpr const char* name = "topk_logprobs";
};
/// The teacher's full-vocabulary logits per position (in-process teachers).
struct logits_t {
    static constexpr const char* name = "logits";
};
/// The teacher's hidden states, (B,T,C_teacher) per layer (in-process teachers).
struct hidden_states_t {
    static constexpr const char* name = "hidden_states";
};
/// The teacher's attention probabilities, (B,H,T,T) per layer (in-process teachers).
struct attentions_t {
    static constexpr const char* name = "attentions";
};
/// The teacher's query/key/value projections, (B,T,3C) per layer (relation distillation).
struct qkv_t {
    static constexpr const char* name = "qkv";
};

inline constexpr auto tokens = boost::hana::type_c<tokens_t>;
inline constexpr auto topk_logprobs = boost::hana::type_c<topk_logprobs_t>;
inline constexpr auto logits = boost::hana::type_c<logits_t>;
inline constexpr auto hidden_states = boost::hana::type_c<hidden_states_t>;
inline constexpr auto attentions = boost::hana::type_c<attentions_t>;
inline constexpr auto qkv = boost::hana::type_c<qkv_t>;

}  // namespace distill::signal

namespace distill {

/// Whether teacher type `Teacher` provides `Signal` (a `distill::signal::*` tag) at compile time: the
/// signal is in its `provides` set. Teachers (teacher.hpp) declare the set; losses (loss.hpp) check
/// their needs against it.
template <class Teacher, class Signal>
inline constexpr bool teacher_provides =
    decltype(boost::hana::contains(Teacher::provides, boost::hana::type_c<Signal>))::value;

}  // namespace distill
