#pragma once
/// @file signals.hpp
/// The signals a teacher can provide and a loss term can need, as compile-time tags. A teacher
/// declares `static constexpr auto provides = boost::hana::make_set(signal::tokens, ...)`; a loss
/// term declares `static constexpr auto needs = boost::hana::make_set(signal::logits, ...)`; the
/// `Distiller` checks `needs ⊆ provides` and names the missing signal when it is not (see
/// `docs/losses.md`).

#include <algorithm>
#include <cstddef>

#include <boost/hana/contains.hpp>
#include <boost/hana/set.hpp>
#include <boost/hana/type.hpp>

namespace distill::signal {

/// A signal's name, usable as a template argument (`signal_t<"logits">`).
template <std::size_t N>
struct name_literal {
    char text[N];
    constexpr name_literal(const char (&s)[N]) { std::copy_n(s, N, text); }
};

/// The tag type of the signal named `Name`; `name` is what error messages print.
template <name_literal Name>
struct signal_t {
    static constexpr const char* name = Name.text;
};

using tokens_t = signal_t<"tokens">;                ///< the teacher's response tokens (every teacher)
using topk_logprobs_t = signal_t<"topk_logprobs">;  ///< top-k log-probabilities per position (API teachers, caches)
using logits_t = signal_t<"logits">;                ///< full-vocabulary logits per position (in-process teachers)
using hidden_states_t = signal_t<"hidden_states">;  ///< hidden states, (B,T,C_teacher) per layer
using attentions_t = signal_t<"attentions">;        ///< attention probabilities, (B,H,T,T) per layer
using qkv_t = signal_t<"qkv">;                      ///< query/key/value projections, (B,T,3C) per layer
using pooled_t = signal_t<"pooled">;                ///< one embedding per sequence, (B,C) (sentence encoders)

inline constexpr auto tokens = boost::hana::type_c<tokens_t>;
inline constexpr auto topk_logprobs = boost::hana::type_c<topk_logprobs_t>;
inline constexpr auto logits = boost::hana::type_c<logits_t>;
inline constexpr auto hidden_states = boost::hana::type_c<hidden_states_t>;
inline constexpr auto attentions = boost::hana::type_c<attentions_t>;
inline constexpr auto qkv = boost::hana::type_c<qkv_t>;
inline constexpr auto pooled = boost::hana::type_c<pooled_t>;

/// What a teacher of sampled tokens provides (`provides`): `tokens`, and `topk_logprobs` too when
/// it gives the top-k log-probabilities of each token (`topk`).
template <bool topk>
inline constexpr auto sampled_tokens = [] {
    if constexpr (topk)
        return boost::hana::make_set(tokens, topk_logprobs);
    else
        return boost::hana::make_set(tokens);
}();

}  // namespace distill::signal

namespace distill {

/// Whether teacher type `Teacher` provides `Signal` (a `distill::signal::*` tag) at compile time: the
/// signal is in its `provides` set. Teachers (teacher.hpp) declare the set; losses (loss.hpp) check
/// their needs against it.
template <class Teacher, class Signal>
inline constexpr bool teacher_provides =
    decltype(boost::hana::contains(Teacher::provides, boost::hana::type_c<Signal>))::value;

}  // namespace distill
