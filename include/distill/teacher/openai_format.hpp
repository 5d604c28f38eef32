#pragma once
/// @file openai_format.hpp
/// The OpenAI chat-completions wire format, without any HTTP: building a request body, parsing a
/// response (text, finish reason, usage, `logprobs.content[].top_logprobs`), mapping token strings
/// onto a tokenizer's ids, and the retry rules (which statuses are transient, `Retry-After`,
/// exponential backoff with jitter). `teacher::OpenAI` sends what this builds, `teacher::Cache`
/// reads saved responses with it, and `apps/serve` answers in it, so all three agree.

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <ctime>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/data/utf8.hpp"
#include "distill/detail/rng.hpp"
#include "distill/error.hpp"
#include "distill/teacher.hpp"

namespace distill::teacher::openai {

/// JSON text of `j`; invalid UTF-8 in strings (a byte-level model can produce it) becomes U+FFFD
/// instead of an exception, because the wire format is JSON and JSON is UTF-8.
inline std::string dump(const nlohmann::json& j) {
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

/// The body of a `/v1/chat/completions` request for `messages` under `s`, with `seed` as the
/// request's seed. Log-probabilities are asked for when `s.top_logprobs > 0`; `top_k` (an extension
/// vLLM and llama.cpp accept) is sent only when set.
inline nlohmann::json make_request(std::string_view model, std::span<const Message> messages, const Sampling& s,
                                   std::uint64_t seed) {
    nlohmann::json body = {{"model", model},
                           {"messages", data::messages_to_json(messages)},
                           {"temperature", s.temperature},
                           {"top_p", s.top_p},
                           {"max_tokens", s.max_new_tokens},
                           // JSON integers above 2^53 lose precision in many clients; 53 bits of seed suffice.
                           {"seed", seed & ((std::uint64_t(1) << 53) - 1)},
                           {"n", 1}};
    if (!s.stop.empty()) body["stop"] = s.stop;
    if (s.top_k > 0) body["top_k"] = s.top_k;
    if (s.top_logprobs > 0) {
        body["logprobs"] = true;
        body["top_logprobs"] = s.top_logprobs;
    }
    return body;
}

/// One candidate token of a logprobs entry as the API names it: its text, its bytes when given, its
/// log-probability.
struct TokenLogprob {
    std::string token{};
    std::optional<std::vector<std::uint8_t>> bytes{};
    float logprob = 0;
};

/// One generated token with its top alternatives.
struct LogprobEntry {
    TokenLogprob chosen;
    std::vector<TokenLogprob> top{};
};

/// A parsed chat completion: the answer plus its token-level log-probabilities as strings.
struct Completion {
    Response response{};                   ///< text, finish reason, usage (tokens/top-k not yet mapped)
    std::vector<LogprobEntry> logprobs{};  ///< empty when the response had none
    std::string custom_id{};               ///< batch-output lines: the request's custom_id
};

namespace detail_ {

inline const nlohmann::json& field(const nlohmann::json& j, const char* key, const std::string& where) {
    auto it = j.find(key);
    if (it == j.end()) throw protocol_error("missing field \"" + where + key + "\"");
    return *it;
}

inline TokenLogprob parse_token(const nlohmann::json& j, const std::string& where) {
    if (!j.is_object()) throw protocol_error("\"" + where + "\" is not an object");
    TokenLogprob t;
    const auto& token = field(j, "token", where + ".");
    if (!token.is_string()) throw protocol_error("\"" + where + ".token\" is not a string");
    t.token = token.get<std::string>();
    const auto& lp = field(j, "logprob", where + ".");
    if (!lp.is_number()) throw protocol_error("\"" + where + ".logprob\" is not a number");
    t.logprob = lp.get<float>();
    if (auto b = j.find("bytes"); b != j.end() && !b->is_null()) {
        if (!b->is_array()) throw protocol_error("\"" + where + ".bytes\" is not an array");
        std::vector<std::uint8_t> bytes;
        for (const auto& x : *b) {
            if (!x.is_number_unsigned() || x.get<std::uint64_t>() > 255)
                throw protocol_error("\"" + where + ".bytes\" holds a value that is not a byte");
            bytes.push_back(std::uint8_t(x.get<std::uint64_t>()));
        }
        t.bytes = std::move(bytes);
    }
    return t;
}

}  // namespace detail_

/// Parses a chat completion object (`choices[0].message.content`, `finish_reason`, `usage`,
/// `choices[0].logprobs.content`), or a batch-output line wrapping one
/// (`{"custom_id": ..., "response": {"status_code": 200, "body": {...}}}`). Throws protocol_error
/// naming the missing or malformed field; an error object or a non-200 batch line is a protocol_error
/// carrying the API's message.
inline Completion parse_completion(const nlohmann::json& j) {
    using detail_::field;
    if (!j.is_object()) throw protocol_error("the response is not a JSON object");
    Completion c;
    const nlohmann::json* body = &j;
    if (auto r = j.find("response"); r != j.end() && j.contains("custom_id")) {
        if (j["custom_id"].is_string()) c.custom_id = j["custom_id"].get<std::string>();
        if (!r->is_object()) throw protocol_error("\"response\" is not an object");
        if (auto st = r->find("status_code"); st != r->end() && st->is_number_integer() && st->get<int>() != 200)
            throw protocol_error("batch request '" + c.custom_id + "' failed with status " +
                                 std::to_string(st->get<int>()));
        body = &field(*r, "body", "response.");
        if (!body->is_object()) throw protocol_error("\"response.body\" is not an object");
    }
    if (auto e = body->find("error"); e != body->end() && !e->is_null()) {
        std::string msg = e->is_object() && e->contains("message") && (*e)["message"].is_string()
                              ? (*e)["message"].get<std::string>()
                              : dump(*e).substr(0, 200);
        throw protocol_error("the API answered with an error: " + msg);
    }
    const auto& choices = field(*body, "choices", "");
    if (!choices.is_array() || choices.empty()) throw protocol_error("\"choices\" is not a non-empty array");
    const auto& choice = choices[0];
    if (!choice.is_object()) throw protocol_error("\"choices[0]\" is not an object");
    const auto& message = field(choice, "message", "choices[0].");
    if (!message.is_object()) throw protocol_error("\"choices[0].message\" is not an object");
    const auto& content = field(message, "content", "choices[0].message.");
    if (content.is_string())
        c.response.text = content.get<std::string>();
    else if (!content.is_null())
        throw protocol_error("\"choices[0].message.content\" is not a string");
    if (auto f = choice.find("finish_reason"); f != choice.end() && f->is_string())
        c.response.finish = parse_finish_reason(f->get<std::string>());
    else
        c.response.finish = finish_reason::stop;
    if (c.response.finish == finish_reason::error)
        c.response.finish = finish_reason::other;  // an API's "error" is not ours
    if (auto u = body->find("usage"); u != body->end() && u->is_object()) {
        if (auto p = u->find("prompt_tokens"); p != u->end() && p->is_number_integer())
            c.response.usage.prompt_tokens = p->get<std::int64_t>();
        if (auto p = u->find("completion_tokens"); p != u->end() && p->is_number_integer())
            c.response.usage.completion_tokens = p->get<std::int64_t>();
    }
    if (auto lp = choice.find("logprobs"); lp != choice.end() && lp->is_object()) {
        if (auto ct = lp->find("content"); ct != lp->end() && !ct->is_null()) {
            if (!ct->is_array()) throw protocol_error("\"choices[0].logprobs.content\" is not an array");
            for (std::size_t i = 0; i < ct->size(); ++i) {
                const std::string where = "choices[0].logprobs.content[" + std::to_string(i) + "]";
                LogprobEntry e;
                e.chosen = detail_::parse_token((*ct)[i], where);
                if (auto top = (*ct)[i].find("top_logprobs"); top != (*ct)[i].end() && !top->is_null()) {
                    if (!top->is_array()) throw protocol_error("\"" + where + ".top_logprobs\" is not an array");
                    for (std::size_t t = 0; t < top->size(); ++t)
                        e.top.push_back(
                            detail_::parse_token((*top)[t], where + ".top_logprobs[" + std::to_string(t) + "]"));
                }
                c.logprobs.push_back(std::move(e));
            }
        }
    }
    return c;
}

/// The id of an API token in `Tokenizer`, or nullopt when it is not exactly one id: its `bytes` when
/// given (the exact byte sequence), else its text, where a special token appears under its name.
template <class Tokenizer>
std::optional<std::int32_t> token_id(const Tokenizer& tok, const TokenLogprob& t) {
    if (t.bytes && !t.bytes->empty()) {
        const std::string raw(t.bytes->begin(), t.bytes->end());
        const auto ids = tok.encode(raw);
        if (ids.size() == 1) return ids[0];
        return std::nullopt;
    }
    for (std::int32_t id = 0; id < Tokenizer::vocab_size(); ++id)
        if (tok.is_special(id) && tok.token_name(id) == t.token) return id;
    const auto ids = tok.encode(t.token);
    if (ids.size() == 1) return ids[0];
    return std::nullopt;
}

/// Fills `r.tokens`, `r.token_logprobs` and the top-k arrays (width `k`) from `logprobs`, mapping
/// every token onto `Tokenizer`. Throws protocol_error when a token is not one id or an entry has
/// fewer than k alternatives. Alternatives are sorted most likely first (APIs do not promise it).
template <class Tokenizer>
void map_logprobs(Response& r, const std::vector<LogprobEntry>& logprobs, int k, const Tokenizer& tok) {
    r.tokens.clear();
    r.token_logprobs.clear();
    r.top_ids.clear();
    r.top_logprobs.clear();
    r.k = k;
    for (std::size_t i = 0; i < logprobs.size(); ++i) {
        const auto& e = logprobs[i];
        auto id = token_id(tok, e.chosen);
        if (!id)
            throw protocol_error("logprobs.content[" + std::to_string(i) + "]: token \"" + e.chosen.token +
                                 "\" is not one id of tokenizer " + std::string(Tokenizer::id()));
        r.tokens.push_back(*id);
        r.token_logprobs.push_back(e.chosen.logprob);
        if (k == 0) continue;
        if (int(e.top.size()) < k)
            throw protocol_error("logprobs.content[" + std::to_string(i) + "] has " + std::to_string(e.top.size()) +
                                 " top_logprobs, " + std::to_string(k) + " were asked for");
        std::vector<std::pair<float, std::int32_t>> top;
        for (const auto& t : e.top) {
            auto tid = token_id(tok, t);
            if (!tid)
                throw protocol_error("logprobs.content[" + std::to_string(i) + "].top_logprobs: token \"" + t.token +
                                     "\" is not one id of tokenizer " + std::string(Tokenizer::id()));
            top.emplace_back(t.logprob, *tid);
        }
        std::stable_sort(top.begin(), top.end(), [](const auto& a, const auto& b) {
            return a.first > b.first || (a.first == b.first && a.second < b.second);
        });
        for (int j = 0; j < k; ++j) {
            r.top_ids.push_back(top[std::size_t(j)].second);
            r.top_logprobs.push_back(top[std::size_t(j)].first);
        }
    }
}

/// A tokenizer's tokens by their exact bytes, for mapping an API's tokens onto its ids (see
/// `map_logprobs_counted`). Built once per teacher: `Tokenizer` is data::ByteTokenizer (bytes 0..255,
/// special tokens by name) or anything with `vocab_size()`, `token_bytes(id)` (the exact bytes, as
/// data::HfTokenizer gives them: byte-level BPE through the byte-to-unicode table, `<0xNN>`
/// byte-fallback tokens as their byte, "▁" as a space, added tokens as their text), `id_to_token(id)`
/// and `is_special(id)`.
class TokenTable {
public:
    /// Why an API token has no id.
    enum class miss : std::uint8_t { none, unknown, ambiguous };

    template <class Tokenizer>
    explicit TokenTable(const Tokenizer& tok) {
        const std::int32_t n = std::int32_t(tok.vocab_size());
        names_.resize(std::size_t(n));
        bytes_.resize(std::size_t(n));
        lossy_.resize(std::size_t(n));
        special_.assign(std::size_t(n), false);
        for (std::int32_t id = 0; id < n; ++id) {
            std::optional<std::string> bytes;
            if constexpr (requires { tok.token_bytes(id); }) {
                bytes = tok.token_bytes(id);
                if (auto name = tok.id_to_token(id)) names_[std::size_t(id)] = *name;
            } else {
                bytes = std::string(tok.token_name(id));
                names_[std::size_t(id)] = *bytes;
            }
            if (!bytes || bytes->empty()) continue;
            special_[std::size_t(id)] = tok.is_special(id);
            bytes_[std::size_t(id)] = *bytes;
            lossy_[std::size_t(id)] = lossy_text(*bytes);
            longest_ = std::max(longest_, bytes->size());
            by_bytes_[*bytes].push_back(id);
            by_text_[lossy_[std::size_t(id)]].push_back(id);
        }
    }

    /// The id of API token `t`: the token whose exact bytes are `t.bytes`, when given and not empty.
    /// Without bytes only the text is known, and servers make a token's text by decoding its bytes
    /// alone, dropping what is not UTF-8 (llama-cpp-python's `errors="ignore"`: " \xE2" becomes " ")
    /// or replacing it with U+FFFD (then no token has that text): so the candidates are every token
    /// whose bytes give `t.token` so decoded, and a text two tokens give (" " for "Ġ" and "Ġâ") names
    /// neither for sure. Several candidates (a `<0x41>` byte-fallback token beside "A", a special
    /// token spelled like text) are told apart by `t.token` naming one of them, else by preferring
    /// the one token that is neither special nor a byte-fallback token; otherwise the token is
    /// ambiguous. `why` says why there is no id.
    std::optional<std::int32_t> find(const TokenLogprob& t, miss* why = nullptr) const {
        auto fail = [&](miss m) -> std::optional<std::int32_t> {
            if (why) *why = m;
            return std::nullopt;
        };
        if (why) *why = miss::none;
        const bool has_bytes = t.bytes && !t.bytes->empty();
        const std::string key = has_bytes ? std::string(t.bytes->begin(), t.bytes->end()) : t.token;
        if (key.empty()) return fail(miss::unknown);
        const auto& table = has_bytes ? by_bytes_ : by_text_;
        const auto it = table.find(key);
        if (it == table.end()) return fail(miss::unknown);
        const auto& ids = it->second;
        if (ids.size() == 1) return ids[0];
        for (std::int32_t id : ids)
            if (names_[std::size_t(id)] == t.token) return id;
        std::optional<std::int32_t> plain;
        int n_plain = 0;
        for (std::int32_t id : ids)
            if (!special_[std::size_t(id)] && !is_byte_token(names_[std::size_t(id)])) {
                plain = id;
                ++n_plain;
            }
        if (n_plain == 1) return plain;
        return fail(miss::ambiguous);
    }

    /// The exact bytes of `id` ("" for an id no token has).
    const std::string& bytes_of(std::int32_t id) const { return bytes_[std::size_t(id)]; }

    /// The ids API token `t` (one without `bytes`, else none) may stand for at byte `at` of `text`:
    /// tokens whose exact bytes start there and whose bytes decoded alone give `t.token`.
    void candidates_at(std::string_view text, std::size_t at, const TokenLogprob& t,
                       std::vector<std::int32_t>& out) const {
        out.clear();
        if (t.bytes && !t.bytes->empty()) return;
        for (std::size_t len = 1; len <= longest_ && at + len <= text.size(); ++len) {
            const auto it = by_bytes_.find(std::string(text.substr(at, len)));
            if (it == by_bytes_.end()) continue;
            for (std::int32_t id : it->second)
                if (lossy_[std::size_t(id)] == t.token) out.push_back(id);
        }
    }

    /// Whether `id` is a special token.
    bool is_special(std::int32_t id) const {
        return id >= 0 && std::size_t(id) < special_.size() && special_[std::size_t(id)];
    }

private:
    // A token's bytes decoded alone, dropping what is not UTF-8 (Python's errors="ignore").
    static std::string lossy_text(const std::string& bytes) {
        std::string out;
        for (std::size_t p = 0; p < bytes.size();) {
            const std::size_t from = p;
            if (utf8::next_utf8(bytes, p) == utf8::replacement_char && bytes.compare(from, 3, "\xEF\xBF\xBD") != 0)
                continue;
            out.append(bytes, from, p - from);
        }
        return out;
    }

    static bool is_byte_token(std::string_view name) {
        return name.size() == 6 && name.substr(0, 3) == "<0x" && name[5] == '>';
    }

    std::unordered_map<std::string, std::vector<std::int32_t>> by_bytes_, by_text_;
    std::vector<std::string> names_, bytes_, lossy_;
    std::size_t longest_ = 0;
    std::vector<bool> special_;
};

namespace detail_ {

// The one way to read the sampled tokens as the bytes of `text`: mapped tokens spell their bytes
// (special ones none), each unmapped one is a token whose bytes come next and decode alone to its
// reported text. False when there is none, several, or the search grows too long.
inline bool align_by_bytes(const std::vector<LogprobEntry>& logprobs,
                           const std::vector<std::optional<std::int32_t>>& chosen, const TokenTable& table,
                           std::string_view text, std::vector<std::int32_t>& out) {
    const std::size_t n = chosen.size();
    constexpr std::size_t max_steps = 100000;
    std::vector<std::int32_t> path(n), found;
    int solutions = 0;
    std::size_t steps = 0;
    std::vector<std::vector<std::int32_t>> candidates(n);
    auto go = [&](auto&& self, std::size_t i, std::size_t at) -> void {
        if (solutions > 1 || ++steps > max_steps) return;
        if (i == n) {
            if (at == text.size()) {
                ++solutions;
                found = path;
            }
            return;
        }
        if (chosen[i]) {
            const std::int32_t id = *chosen[i];
            path[i] = id;
            if (table.is_special(id)) return self(self, i + 1, at);
            const std::string& b = table.bytes_of(id);
            if (text.compare(at, b.size(), b) == 0) self(self, i + 1, at + b.size());
            return;
        }
        table.candidates_at(text, at, logprobs[i].chosen, candidates[i]);
        for (const std::int32_t id : std::vector<std::int32_t>(candidates[i])) {
            path[i] = id;
            self(self, i + 1, at + table.bytes_of(id).size());
        }
    };
    go(go, 0, 0);
    if (solutions != 1 || steps > max_steps) return false;
    out = std::move(found);
    return true;
}

}  // namespace detail_

/// An answer whose tokens cannot be mapped onto the student's tokenizer (a property of the answer,
/// not a broken response: it is not retried).
class mapping_error : public protocol_error {
public:
    using protocol_error::protocol_error;
};

/// Fills `r.tokens`, `r.token_logprobs` and the top-k arrays (width `k`) from an API's `logprobs`,
/// mapping its tokens onto the student's tokenizer through `table`, and returns what did not map
/// (also left in `r.mapping`); nothing is dropped without being counted.
///
/// - **Top-k.** At each position the endpoint's k most likely entries (by log-probability; an
///   endpoint may add the sampled token as a (k+1)-th) fill the k slots, most likely first. An
///   entry that maps to no id (unknown or empty bytes and text), to several (`ambiguous`) or to an
///   id already in the position (`duplicate`), and a slot the endpoint left empty (fewer than k
///   entries: `missing`), becomes id -1 with log-probability -inf. The top-k loss reads such a slot
///   as unused: its probability is neither renormalized onto the other entries nor lost but stays
///   in the loss's "rest" bucket, 1 − Σ mapped probabilities (loss/soft_kl.hpp, TopKSoftKL).
/// - **Sampled tokens.** `text_ids` are the ids the student's tokenizer gives `r.text` (no special
///   tokens added). When every sampled token maps, those ids are the answer's tokens, and an answer
///   whose ids are not `text_ids` (optionally followed by one special token, the stop token some
///   endpoints report) counts as a `retokenize_mismatch`. A sampled token that maps to no single id
///   is recovered from `text_ids` when the reported tokens line up with them (same count, every
///   mapped one equal), else from the answer's bytes when the reported tokens spell `r.text` in
///   exactly one way (each unmapped one a token whose bytes come next there and decode alone to its
///   reported text); otherwise the answer cannot be aligned with its top-k and this throws
///   mapping_error naming the position.
inline TokenMapping map_logprobs_counted(Response& r, const std::vector<LogprobEntry>& logprobs, int k,
                                         const TokenTable& table, std::span<const std::int32_t> text_ids,
                                         std::string_view tokenizer_name) {
    TokenMapping m;
    r.tokens.clear();
    r.token_logprobs.clear();
    r.top_ids.clear();
    r.top_logprobs.clear();
    r.k = k;
    const std::size_t n = logprobs.size();
    std::vector<std::optional<std::int32_t>> chosen(n);
    m.tokens = n;
    for (std::size_t i = 0; i < n; ++i) {
        chosen[i] = table.find(logprobs[i].chosen);
        if (!chosen[i]) ++m.tokens_unmapped;
    }
    // the reported tokens against the text's ids: the same ids, or those and one special token
    const std::size_t tn = text_ids.size();
    const bool same_count = n == tn || (n == tn + 1 && chosen[n - 1] && table.is_special(*chosen[n - 1]));
    bool lines_up = same_count;
    for (std::size_t i = 0; i < std::min(n, tn) && lines_up; ++i)
        if (chosen[i] && *chosen[i] != text_ids[i]) lines_up = false;
    std::vector<std::int32_t> spelled;
    const bool by_bytes =
        !lines_up && m.tokens_unmapped > 0 && detail_::align_by_bytes(logprobs, chosen, table, r.text, spelled);
    for (std::size_t i = 0; i < n; ++i) {
        if (!chosen[i] && by_bytes) chosen[i] = spelled[i];
        if (!chosen[i]) {
            if (!lines_up || i >= tn)
                throw mapping_error("logprobs.content[" + std::to_string(i) + "]: the sampled token \"" +
                                    logprobs[i].chosen.token.substr(0, 40) + "\" is no single id of tokenizer " +
                                    std::string(tokenizer_name) +
                                    ", and the answer's text neither tokenizes to the reported tokens nor is "
                                    "spelled by them in one way, so it cannot be recovered");
            chosen[i] = text_ids[i];
        }
        r.tokens.push_back(*chosen[i]);
        r.token_logprobs.push_back(logprobs[i].chosen.logprob);
    }
    if (!lines_up) ++m.retokenize_mismatches;
    if (k > 0) {
        r.top_ids.reserve(n * std::size_t(k));
        r.top_logprobs.reserve(n * std::size_t(k));
    }
    for (std::size_t i = 0; i < n && k > 0; ++i) {
        std::vector<const TokenLogprob*> top;
        for (const auto& t : logprobs[i].top) top.push_back(&t);
        std::stable_sort(top.begin(), top.end(),
                         [](const TokenLogprob* a, const TokenLogprob* b) { return a->logprob > b->logprob; });
        if (top.size() > std::size_t(k)) top.resize(std::size_t(k));
        m.top_entries += std::uint64_t(k);
        m.top_missing += std::uint64_t(k) - top.size();
        std::vector<std::pair<float, std::int32_t>> slots;
        for (const TokenLogprob* t : top) {
            TokenTable::miss why{};
            const auto id = table.find(*t, &why);
            if (!id) {
                ++(why == TokenTable::miss::ambiguous ? m.top_ambiguous : m.top_unmapped);
                continue;
            }
            if (std::any_of(slots.begin(), slots.end(), [&](const auto& s) { return s.second == *id; })) {
                ++m.top_duplicate;
                continue;
            }
            slots.emplace_back(t->logprob, *id);
        }
        std::stable_sort(slots.begin(), slots.end(), [](const auto& a, const auto& b) {
            return a.first > b.first || (a.first == b.first && a.second < b.second);
        });
        slots.resize(std::size_t(k), {-std::numeric_limits<float>::infinity(), -1});
        for (const auto& [lp, id] : slots) {
            r.top_ids.push_back(id);
            r.top_logprobs.push_back(lp);
        }
    }
    r.mapping = m;
    return m;
}

/// The API form of token `id`: its text (a special token's name; a byte >= 0x80, which is not
/// UTF-8 on its own, as the text "\\xNN") and its exact `bytes` (null for a special token).
template <class Tokenizer>
nlohmann::json token_json(const Tokenizer& tok, std::int32_t id, float logprob) {
    nlohmann::json t;
    if (tok.is_special(id)) {
        t["token"] = std::string(tok.token_name(id));
        t["bytes"] = nullptr;
    } else {
        const auto name = tok.token_name(id);
        std::string text;
        for (unsigned char c : name) {
            if (c < 0x80) {
                text += char(c);
            } else {
                static constexpr char hex[] = "0123456789abcdef";
                text += "\\x";
                text += hex[c >> 4];
                text += hex[c & 15];
            }
        }
        t["token"] = text;
        t["bytes"] = std::vector<int>(name.begin(), name.end());
        for (auto& b : t["bytes"]) b = b.get<int>() & 0xff;
    }
    t["logprob"] = logprob;
    return t;
}

/// The `logprobs.content` entries of tokens [from, to) of `r`: each token with its log-probability
/// and its `top_logprobs` (r.k of them).
template <class Tokenizer>
nlohmann::json logprob_content(const Tokenizer& tok, const Response& r, std::size_t from, std::size_t to) {
    nlohmann::json content = nlohmann::json::array();
    for (std::size_t i = from; i < to && i < r.tokens.size(); ++i) {
        nlohmann::json e = token_json(tok, r.tokens[i], i < r.token_logprobs.size() ? r.token_logprobs[i] : 0.0f);
        nlohmann::json top = nlohmann::json::array();
        for (int j = 0; j < r.k; ++j) {
            const std::size_t at = i * std::size_t(r.k) + std::size_t(j);
            top.push_back(token_json(tok, r.top_ids[at], r.top_logprobs[at]));
        }
        e["top_logprobs"] = std::move(top);
        content.push_back(std::move(e));
    }
    return content;
}

/// A chat completion object for `r` (what `apps/serve` answers), with
/// `choices[0].logprobs.content` when `with_logprobs` (r.tokens mapped back to token strings).
template <class Tokenizer>
nlohmann::json make_completion(std::string_view id, std::string_view model, std::int64_t created, const Response& r,
                               const Tokenizer& tok, bool with_logprobs) {
    nlohmann::json choice = {{"index", 0},
                             {"message", {{"role", "assistant"}, {"content", r.text}}},
                             {"finish_reason", std::string(finish_reason_name(r.finish))}};
    if (with_logprobs)
        choice["logprobs"] = {{"content", logprob_content(tok, r, 0, r.tokens.size())}};
    else
        choice["logprobs"] = nullptr;
    return {{"id", id},
            {"object", "chat.completion"},
            {"created", created},
            {"model", model},
            {"choices", nlohmann::json::array({std::move(choice)})},
            {"usage",
             {{"prompt_tokens", r.usage.prompt_tokens},
              {"completion_tokens", r.usage.completion_tokens},
              {"total_tokens", r.usage.prompt_tokens + r.usage.completion_tokens}}}};
}

/// How many bytes of an answer's text so far a stream can send for good: the text without a tail
/// that may still become one of the `stops` (the answer would end before it) and without trailing
/// U+FFFD, which may stand for a character whose remaining bytes are still to come (a decoder shows
/// an incomplete character so), cut at a character boundary. What it allows is a prefix of the final
/// answer as long as the decoder only appends, so streamed pieces join into the whole answer.
inline std::size_t streamable(std::string_view text, std::span<const std::string> stops) {
    std::size_t keep = text.size();
    for (const auto& stop : stops)
        for (std::size_t k = std::min(stop.size() > 0 ? stop.size() - 1 : 0, text.size()); k > 0; --k)
            if (text.substr(text.size() - k) == std::string_view(stop).substr(0, k)) {
                keep = std::min(keep, text.size() - k);
                break;
            }
    while (keep > 0 && keep < text.size() && (static_cast<unsigned char>(text[keep]) & 0xC0) == 0x80) --keep;
    constexpr std::string_view replacement = "\xEF\xBF\xBD";
    while (keep >= 3 && text.substr(keep - 3, 3) == replacement) keep -= 3;
    return keep;
}

/// Whether an HTTP status is worth retrying: 408 (timeout), 413 (some gateways use it for a
/// momentarily full queue), 429 (rate limit) and every 5xx.
constexpr bool retryable_status(int status) noexcept {
    return status == 408 || status == 413 || status == 429 || (status >= 500 && status <= 599);
}

/// Seconds to wait that a `Retry-After` header asks for: delay-seconds (decimals accepted) or an
/// HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`) relative to `now`. nullopt when unparsable.
inline std::optional<double> parse_retry_after(std::string_view value, std::time_t now) {
    while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    while (!value.empty() && value.back() == ' ') value.remove_suffix(1);
    if (value.empty()) return std::nullopt;
    if (std::isdigit(static_cast<unsigned char>(value.front()))) {
        double s = 0;
        auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), s);
        if (ec != std::errc() || ptr != value.data() + value.size() || !(s >= 0) || !std::isfinite(s))
            return std::nullopt;
        return s;
    }
    std::tm tm{};
    const std::string text(value);
    const char* end = ::strptime(text.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (!end || *end != '\0') return std::nullopt;
    const std::time_t at = ::timegm(&tm);
    return std::max(0.0, std::difftime(at, now));
}

/// Exponential backoff with jitter: attempt a (0-based) waits uniformly in [d/2, d] with
/// d = min(max, initial * 2^a), so clients that failed together do not retry together.
inline double backoff_delay(int attempt, double initial, double max, Rng& rng) {
    const double d = std::min(max, initial * std::ldexp(1.0, std::min(attempt, 60)));
    return d * (0.5 + 0.5 * rng.uniform());
}

}  // namespace distill::teacher::openai
