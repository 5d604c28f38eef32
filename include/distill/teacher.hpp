#pragma once
/// @file teacher.hpp
/// The `teacher_source` concept: where the answers and soft labels a student learns from come from.
///
/// **What a teacher represents.** Something that answers prompts: a model running in this process
/// (`teacher/model.hpp`), outputs computed earlier and cached (`teacher/cache.hpp`), any
/// OpenAI-compatible HTTP endpoint (`teacher/openai.hpp`), or a user's function
/// (`teacher/callable.hpp`). Besides the answer text a teacher may give per-token top-k
/// log-probabilities and, when it runs in-process, full logits, hidden states and attention maps.
/// Which of these it gives is a compile-time fact, its `provides` set, so a loss that needs a signal
/// the teacher cannot give is rejected when the `Distiller` is compiled, not after hours of generation.
///
/// **Minimal complete definition** (for a teacher `t`):
/// - `static constexpr auto provides = boost::hana::make_set(signal::tokens, ...)` — the signals it
///   gives (`signals.hpp`); `signal::tokens` (the answer) is always among them;
/// - `std::string t.fingerprint() const` — what determines its answers apart from the sampling
///   settings: a hash of the weights, tokenizer and chat template, or the endpoint and model name.
///   Never contains a secret. `generation_fingerprint()` adds the sampling settings;
/// - `std::string t.name() const` — a short description for logs and reports (no secrets);
/// - `t.generate(requests, sampling, sink)` — answers every request of the span and calls
///   `sink(i, response)` exactly once per request `i` (in any order, never concurrently). A request
///   that fails is answered with `finish_reason::error` and a reason; only an error that concerns
///   every request (misconfiguration) is thrown.
///
/// A teacher that provides `signal::topk_logprobs` names the tokenizer its ids belong to, either at run
/// time (`std::string tokenizer_id() const` and `int vocab_size() const`, as `teacher::Model` does)
/// or as `tokenizer_type` (with static `id()` and `vocab_size()`; `int vocab_size() const` then
/// when its vocabulary is larger than the tokenizer's).
///
/// Optional members the generate stage uses when present: `int t.batch_size() const` (how many
/// requests to hand over at once; default 16) and `static constexpr bool batch_invariant` (true when
/// an answer does not depend on which other requests share its batch; default false, and then a
/// resumed run re-runs a partly answered batch whole so that it equals an uninterrupted run).
///
/// A teacher that provides `signal::logits` also satisfies `online_teacher`: a teacher-forced
/// `forward(tokens, B, T)` and views `logits()` (B,T,V), `hidden_state(i)` (B,T,C),
/// `attention(l)` (B,H,T,T) and `qkv(l)` (B,T,3C), as `student_model` has them.
///
/// **Laws.** Answers are a function of (fingerprint, sampling settings, request id, messages): the
/// same inputs give the same answer, so a resumed generation equals an uninterrupted one. Top-k
/// log-probabilities are those of the teacher's unscaled distribution (the log-softmax of its full
/// logits, temperature 1), in descending order, and the chosen token's log-probability is reported
/// whether or not it is among the top k.
///
/// **Example** — a user's teacher needs no base class and no registration:
/// @code
/// struct Echo {
///     static constexpr auto provides = boost::hana::make_set(distill::signal::tokens);
///     std::string fingerprint() const { return "echo-v1"; }
///     std::string name() const { return "echo"; }
///     void generate(std::span<const distill::teacher::Request> requests, const distill::teacher::Sampling&,
///                   const distill::teacher::response_sink& sink) {
///         for (std::size_t i = 0; i < requests.size(); ++i) {
///             distill::teacher::Response r;
///             r.text = requests[i].messages.back().content;
///             sink(i, std::move(r));
///         }
///     }
/// };
/// static_assert(distill::teacher_source<Echo>);
/// @endcode

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/hana/adapt_struct.hpp>
#include <boost/hana/contains.hpp>
#include <boost/hana/core/tag_of.hpp>
#include <boost/hana/set.hpp>

#include "distill/data/chat.hpp"
#include "distill/detail/hash.hpp"
#include "distill/device.hpp"
#include "distill/error.hpp"
#include "distill/io/reflect.hpp"
#include "distill/signals.hpp"
#include "distill/tensor.hpp"

namespace distill::teacher {

using data::Message;

/// Why a teacher stopped answering.
enum class finish_reason : std::uint8_t {
    stop,    ///< a stop token or stop sequence ended the answer
    length,  ///< max_new_tokens (or the context) ran out: the answer is truncated
    other,   ///< an API's other reasons ("content_filter", "tool_calls", ...)
    error,   ///< the request failed; `Response::error` says why
};

/// The OpenAI name of `f`: "stop", "length", "other", "error".
constexpr std::string_view finish_reason_name(finish_reason f) noexcept {
    switch (f) {
        case finish_reason::stop:
            return "stop";
        case finish_reason::length:
            return "length";
        case finish_reason::other:
            return "other";
        case finish_reason::error:
            return "error";
    }
    return "?";
}

/// The finish reason an API names `name` ("stop", "length"; anything else is `other`).
constexpr finish_reason parse_finish_reason(std::string_view name) noexcept {
    if (name == "stop" || name == "eos" || name == "end_turn") return finish_reason::stop;
    if (name == "length" || name == "max_tokens") return finish_reason::length;
    if (name == "error") return finish_reason::error;
    return finish_reason::other;
}

/// How a teacher samples its answers. Keys are the JSON keys of a job's `generation` object; the
/// defaults are those of managed distillation services (near-greedy, short answers).
struct Sampling {
    double temperature = 0.2;         ///< 0 = greedy (argmax)
    double top_p = 0.1;               ///< nucleus: smallest set of tokens whose probability reaches top_p
    int top_k = 0;                    ///< keep the k most likely tokens before top_p; 0 = all
    int max_new_tokens = 128;         ///< answer length limit; reaching it is finish_reason::length
    std::vector<std::string> stop{};  ///< stop sequences (not part of the answer), at most 4
    std::uint64_t seed = 0;           ///< with the request id, determines every random draw
    int top_logprobs = 0;             ///< top-k log-probabilities per answer token; 0 = none, at most 20

    /// Throws `config_error` naming the first field out of range.
    void validate(const std::string& path = "generation") const {
        if (!(temperature >= 0.0) || temperature > 100.0)
            throw config_error(path + ".temperature", "must be in [0, 100], got " + std::to_string(temperature));
        if (!(top_p > 0.0 && top_p <= 1.0))
            throw config_error(path + ".top_p", "must be in (0, 1], got " + std::to_string(top_p));
        if (top_k < 0) throw config_error(path + ".top_k", "must be >= 0, got " + std::to_string(top_k));
        if (max_new_tokens < 1)
            throw config_error(path + ".max_new_tokens", "must be >= 1, got " + std::to_string(max_new_tokens));
        if (stop.size() > 4)
            throw config_error(path + ".stop", "at most 4 stop sequences, got " + std::to_string(stop.size()));
        for (std::size_t i = 0; i < stop.size(); ++i)
            if (stop[i].empty()) throw config_error(path + ".stop[" + std::to_string(i) + "]", "must not be empty");
        if (top_logprobs < 0 || top_logprobs > 20)
            throw config_error(path + ".top_logprobs", "must be in [0, 20], got " + std::to_string(top_logprobs));
    }
};

/// One prompt for a teacher.
struct Request {
    std::string id{};                 ///< the example's stable id (seeds, cache lookups, resume)
    std::uint64_t index = 0;          ///< the example's position in its data set
    std::vector<Message> messages{};  ///< the prompt turns, ending with a user turn
    /// The example's other fields (`data::Example::fields`): what a teacher::Ensemble routes by.
    std::map<std::string, std::string> fields{};
};

/// Token counts of one answer, as APIs report them.
struct Usage {
    std::int64_t prompt_tokens = 0;
    std::int64_t completion_tokens = 0;
};

/// How an API teacher's reported tokens mapped onto the student's tokenizer
/// (teacher/openai_format.hpp, `map_logprobs_counted`): per answer in `Response::mapping`, summed per
/// run in the generate report and in the teacher's stats. All zero for other teachers.
struct TokenMapping {
    std::uint64_t top_entries = 0;    ///< top_logprobs entries read: k per position
    std::uint64_t top_unmapped = 0;   ///< entries whose bytes (or text) are no token of the tokenizer
    std::uint64_t top_ambiguous = 0;  ///< entries whose bytes are several tokens' and whose text names none
    std::uint64_t top_duplicate = 0;  ///< entries naming an id an earlier entry of the position named
    std::uint64_t top_missing = 0;    ///< slots an answer left empty (fewer than k entries)
    std::uint64_t tokens = 0;         ///< sampled tokens read
    /// Sampled tokens that are no single id; each was recovered from the ids of the answer's text
    /// (or the answer failed).
    std::uint64_t tokens_unmapped = 0;
    /// Answers whose reported token ids differ from the ids the tokenizer gives their text (the
    /// reported ids are kept: they are what the top-k entries were conditioned on).
    std::uint64_t retokenize_mismatches = 0;

    /// Top-k slots that hold no id (their probability stays in the rest of the distribution).
    std::uint64_t top_lost() const noexcept { return top_unmapped + top_ambiguous + top_duplicate + top_missing; }

    TokenMapping& operator+=(const TokenMapping& o) noexcept {
        top_entries += o.top_entries;
        top_unmapped += o.top_unmapped;
        top_ambiguous += o.top_ambiguous;
        top_duplicate += o.top_duplicate;
        top_missing += o.top_missing;
        tokens += o.tokens;
        tokens_unmapped += o.tokens_unmapped;
        retokenize_mismatches += o.retokenize_mismatches;
        return *this;
    }
};

/// A teacher's answer to one request.
struct Response {
    std::string text{};  ///< the answer (stop sequence and stop token excluded)
    finish_reason finish = finish_reason::stop;
    Usage usage{};
    /// The answer's token ids in the student's tokenizer (the stop token included), when the
    /// teacher gives them; empty for a text-only teacher.
    std::vector<std::int32_t> tokens{};
    int k = 0;  ///< top-k width: the arrays below hold tokens.size() * k entries
    /// Per position, the k most likely ids, most likely first; -1 marks a slot whose API token maps to
    /// no id of the student's tokenizer (log-probability -inf: its mass stays in the tail).
    std::vector<std::int32_t> top_ids{};
    std::vector<float> top_logprobs{};    ///< their log-probabilities
    std::vector<float> token_logprobs{};  ///< log-probability of each chosen token (tokens.size() entries, or none)
    std::string error{};                  ///< why the request failed, when finish == error
    /// Which teacher of a teacher::Ensemble answered (its name in the job); "" for a single teacher.
    std::string answered_by{};
    TokenMapping mapping{};  ///< how an API teacher's tokens mapped (not saved with the answer)

    /// Whether the request was answered.
    bool ok() const noexcept { return finish != finish_reason::error; }

    /// Probability mass outside the top k at position `pos`: 1 - sum exp(top_logprobs), clamped to [0, 1].
    float tail_mass(std::size_t pos) const noexcept {
        double s = 0;
        for (int j = 0; j < k; ++j) s += std::exp(double(top_logprobs[pos * std::size_t(k) + std::size_t(j)]));
        return static_cast<float>(std::clamp(1.0 - s, 0.0, 1.0));
    }

    /// A failed response with reason `why`.
    static Response failure(std::string why) {
        Response r;
        r.finish = finish_reason::error;
        r.error = std::move(why);
        return r;
    }
};

/// Receives answers: `sink(i, response)` for request `i` of the span given to `generate`.
using response_sink = std::function<void(std::size_t, Response&&)>;

/// The seed of every random draw for `request`: the sampling seed mixed with the request id, so an
/// answer does not depend on the order, batching or resumption of the requests.
inline std::uint64_t request_seed(const Sampling& sampling, const Request& request) noexcept {
    return detail::mix64(sampling.seed, detail::fnv1a64(request.id));
}

}  // namespace distill::teacher

BOOST_HANA_ADAPT_STRUCT(distill::teacher::Sampling, temperature, top_p, top_k, max_new_tokens, stop, seed,
                        top_logprobs);

namespace distill {

/// A source of teacher answers (see the file comment for the full contract).
template <class T>
concept teacher_source =
    std::is_same_v<boost::hana::tag_of_t<std::remove_cvref_t<decltype(T::provides)>>, boost::hana::set_tag> &&
    teacher_provides<T, signal::tokens_t> &&
    requires(T& t, const T& ct, std::span<const teacher::Request> requests, const teacher::Sampling& sampling,
             const teacher::response_sink& sink) {
    { ct.fingerprint() } -> std::convertible_to<std::string>;
    { ct.name() } -> std::convertible_to<std::string>;
    t.generate(requests, sampling, sink);
};

/// A teacher that also runs teacher-forced forwards in-process (online distillation): full logits,
/// hidden states, attention maps and q|k|v projections of a batch, as `student_model` exposes them.
template <class T>
concept online_teacher = teacher_source<T> && teacher_provides<T, signal::logits_t> &&
    requires(T& t, const T& ct, const std::int32_t* tokens, int n) {
    typename T::scalar_type;
    t.forward(tokens, n, n);
    { ct.logits() } -> std::convertible_to<Tensor<typename T::scalar_type>>;
    { ct.hidden_state_count() } -> std::convertible_to<int>;
    { ct.hidden_state(n) } -> std::convertible_to<Tensor<typename T::scalar_type>>;
    { ct.attention(n) } -> std::convertible_to<Tensor<typename T::scalar_type>>;
    { ct.qkv(n) } -> std::convertible_to<Tensor<typename T::scalar_type>>;
};

/// A sentence-embedding teacher running in-process (the `embedding` task, `teacher::EncoderModel`):
/// it provides `signal::pooled`, turns text into the token ids student and teacher both read
/// (`encode(text, limit)`, special tokens included, truncated to `limit` or its own `max_length()`),
/// and forwards right-padded batches whose outputs its `network()` exposes as `student::Encoder` does.
template <class T>
concept embedding_teacher = teacher_provides<T, signal::pooled_t> &&
    requires(T& t, const T& ct, const std::int32_t* tokens, const int* lengths, int n, std::string_view text) {
    typename T::scalar_type;
    { ct.fingerprint() } -> std::convertible_to<std::string>;
    { ct.name() } -> std::convertible_to<std::string>;
    { ct.encode(text, n) } -> std::convertible_to<std::vector<std::int32_t>>;
    { ct.max_length() } -> std::convertible_to<int>;
    { ct.max_batch() } -> std::convertible_to<int>;
    t.forward(tokens, n, n, lengths);
    ct.network().pooled();
};

/// The first 32 hex digits of the SHA-256 of `tag`, `net`'s config (as JSON) and every parameter's
/// name and bytes (read on the host): the part of an in-process teacher's fingerprint that says which
/// weights it runs.
template <class Network>
std::string network_digest(std::string_view tag, const Network& net) {
    ::distill::detail::Sha256 h;
    h.update(tag);
    h.update(io::to_json(net.config()).dump());
    for (std::size_t k = 0; k < net.parameters().size(); ++k) {
        const auto& p = net.parameters()[k];
        const auto n = static_cast<std::size_t>(p.value.numel());
        h.update(p.name);
        if constexpr (requires { net.read_base(k, p.value.data()); }) {
            if (net.bf16_only_weights() && !net.frozen_base()) {  // stored in bf16 alone: its widened values
                std::vector<std::remove_cvref_t<decltype(*p.value.data())>> host(n);
                net.read_base(k, host.data());
                h.update(host.data(), sizeof(host[0]) * n);
                continue;
            }
        }
        h.update(::distill::detail::read_on_host(net.device(), p.value.data(), n).data(), sizeof(*p.value.data()) * n);
    }
    return h.hex().substr(0, 32);
}

/// The fingerprint stamped on generated data: the teacher's own fingerprint and the sampling
/// settings, hashed ("sha256:" and 32 hex digits). Output whose fingerprint differs is stale.
template <teacher_source Teacher>
std::string generation_fingerprint(const Teacher& teacher, const teacher::Sampling& sampling) {
    return "sha256:" + detail::sha256_hex(teacher.fingerprint() + "\n" + io::to_json(sampling).dump()).substr(0, 32);
}

/// How many requests the generate stage hands `teacher` at once (its `batch_size()`, else 16).
template <teacher_source Teacher>
int teacher_batch_size(const Teacher& teacher) {
    if constexpr (requires {
                      { teacher.batch_size() } -> std::convertible_to<int>;
                  })
        return std::max(1, int(teacher.batch_size()));
    else
        return 16;
}

/// The tokenizer `teacher`'s token ids belong to: its `tokenizer_id()`, else (a teacher that provides
/// top-k log-probabilities) its `tokenizer_type::id()`, else "" (unknown: a text-only teacher).
template <class Teacher>
std::string teacher_tokenizer_id(const Teacher& teacher) {
    if constexpr (requires {
                      { teacher.tokenizer_id() } -> std::convertible_to<std::string>;
                  })
        return teacher.tokenizer_id();
    else if constexpr (teacher_provides<Teacher, signal::topk_logprobs_t> &&
                       requires { Teacher::tokenizer_type::id(); })
        return std::string(Teacher::tokenizer_type::id());
    else
        return {};
}

/// The ids `teacher` can give: its `vocab_size()`, else its `tokenizer_type::vocab_size()`, else 0.
template <class Teacher>
int teacher_vocab_size(const Teacher& teacher) {
    if constexpr (requires {
                      { teacher.vocab_size() } -> std::convertible_to<int>;
                  })
        return int(teacher.vocab_size());
    else if constexpr (requires { Teacher::tokenizer_type::vocab_size(); })
        return int(Teacher::tokenizer_type::vocab_size());
    else
        return 0;
}

/// Whether `Teacher`'s answers are independent of batch composition (its `batch_invariant`, else false).
template <class Teacher>
inline constexpr bool teacher_batch_invariant = [] {
    if constexpr (requires {
                      { Teacher::batch_invariant } -> std::convertible_to<bool>;
                  })
        return bool(Teacher::batch_invariant);
    else
        return false;
}();

/// Answers every request and returns the responses in request order.
template <teacher_source Teacher>
std::vector<teacher::Response> generate_all(Teacher& teacher, std::span<const teacher::Request> requests,
                                            const teacher::Sampling& sampling) {
    std::vector<teacher::Response> out(requests.size());
    std::vector<bool> got(requests.size());
    teacher.generate(requests, sampling, [&](std::size_t i, teacher::Response&& r) {
        if (i >= out.size() || got[i])
            throw error("teacher " + teacher.name() + " answered request " + std::to_string(i) +
                        " twice or out of range");
        got[i] = true;
        out[i] = std::move(r);
    });
    for (std::size_t i = 0; i < got.size(); ++i)
        if (!got[i]) out[i] = teacher::Response::failure("the teacher returned no answer");
    return out;
}

}  // namespace distill
