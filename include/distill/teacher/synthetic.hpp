#pragma once
/// @file synthetic.hpp
/// The record format of `synthetic.jsonl`, the generate stage's output: one line per accepted teacher
/// answer, in the OpenAI chat format (the answer is the last assistant turn) plus the teacher's
/// metadata, so the file is also valid fine-tuning data for other tools:
///
///     {"id": "...", "source_line": 12, "format": "chat",
///      "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "<answer>"}],
///      "reference": "<ground truth, when the data had one>",
///      "teacher": {"fingerprint": "sha256:...", "finish_reason": "stop",
///                  "usage": {"prompt_tokens": 20, "completion_tokens": 31},
///                  "tokens": [..], "tokenizer": "byte-v1", "topk": 8}}
///
/// `teacher.tokens` (the answer's ids, stop token included) is present when the teacher gives tokens,
/// with `teacher.tokenizer` naming their tokenizer when the teacher does (`byte-v1`, `hf-<digest>`):
/// the student trains on them when it has that tokenizer, else on the text re-encoded;
/// `teacher.topk` is k when the answer has a record in the top-k cache.

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/data/chat.hpp"
#include "distill/data/jsonl.hpp"
#include "distill/teacher.hpp"

namespace distill::teacher {

/// One line of synthetic.jsonl.
struct SyntheticRecord {
    std::string id{};
    std::uint64_t source_line = 0;
    data::input_format format = data::input_format::chat;
    std::vector<Message> prompt{};           ///< the prompt turns (without the answer)
    std::optional<std::string> reference{};  ///< ground truth from the input data
    Response response{};                     ///< text, finish reason, usage, tokens (top-k lives in the cache file)
    std::string fingerprint{};               ///< generation fingerprint of the teacher that answered
    int topk = 0;                            ///< k of its top-k cache record, 0 when none
    std::string tokenizer{};                 ///< the tokenizer of response.tokens ("" = unknown: older files)
};

/// The record as one JSON object (key order fixed, so equal records are equal bytes).
inline nlohmann::ordered_json to_json(const SyntheticRecord& r) {
    nlohmann::ordered_json j;
    j["id"] = r.id;
    j["source_line"] = r.source_line;
    j["format"] = std::string(data::format_name(r.format));
    nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
    for (const auto& m : r.prompt) msgs.push_back({{"role", m.role}, {"content", m.content}});
    msgs.push_back({{"role", "assistant"}, {"content", r.response.text}});
    j["messages"] = std::move(msgs);
    if (r.reference) j["reference"] = *r.reference;
    nlohmann::ordered_json t;
    t["fingerprint"] = r.fingerprint;
    t["finish_reason"] = std::string(finish_reason_name(r.response.finish));
    t["usage"] = {{"prompt_tokens", r.response.usage.prompt_tokens},
                  {"completion_tokens", r.response.usage.completion_tokens}};
    if (!r.response.tokens.empty()) t["tokens"] = r.response.tokens;
    if (!r.response.tokens.empty() && !r.tokenizer.empty()) t["tokenizer"] = r.tokenizer;
    if (r.topk > 0) t["topk"] = r.topk;
    if (!r.response.answered_by.empty()) t["answered_by"] = r.response.answered_by;
    j["teacher"] = std::move(t);
    return j;
}

/// The record as one JSONL line, newline included. Invalid UTF-8 in the answer (possible from a
/// byte-level model) is written as U+FFFD, since JSON is UTF-8; `teacher.tokens` keeps the exact bytes.
inline std::string to_line(const SyntheticRecord& r) {
    return to_json(r).dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

/// Parses one synthetic.jsonl line. Throws `data::bad_line` naming the defect.
inline SyntheticRecord parse_synthetic(const nlohmann::json& j) {
    auto need = [&](const nlohmann::json& o, const char* key, const char* where) -> const nlohmann::json& {
        auto it = o.find(key);
        if (it == o.end()) throw data::bad_line(std::string("missing field \"") + where + "\"");
        return *it;
    };
    if (!j.is_object()) throw data::bad_line("wrong type: expected a JSON object");
    SyntheticRecord r;
    // The prompt and reference are read exactly as input data is, then the answer is split off.
    const auto& msgs = need(j, "messages", "messages");
    if (!msgs.is_array() || msgs.empty() || !msgs.back().is_object() || !msgs.back().contains("role") ||
        msgs.back()["role"] != "assistant")
        throw data::bad_line("wrong type: \"messages\" must end with the teacher's assistant turn");
    const auto& answer = msgs.back();
    if (!answer.contains("content") || !answer["content"].is_string())
        throw data::bad_line("wrong type: the assistant turn's \"content\" must be a string");
    r.response.text = answer["content"].get<std::string>();
    nlohmann::json prompt_only = {{"messages", nlohmann::json(msgs.begin(), msgs.end() - 1)}};
    data::Example ex = data::parse_example(prompt_only);
    r.prompt = std::move(ex.prompt);
    const auto& id = need(j, "id", "id");
    if (!id.is_string()) throw data::bad_line("wrong type: \"id\" must be a string");
    r.id = id.get<std::string>();
    if (auto l = j.find("source_line"); l != j.end() && l->is_number_unsigned())
        r.source_line = l->get<std::uint64_t>();
    if (auto f = j.find("format"); f != j.end() && f->is_string()) {
        const auto name = f->get<std::string>();
        r.format = name == "prompt_completion" ? data::input_format::prompt_completion
                   : name == "input_label"     ? data::input_format::input_label
                   : name == "text"            ? data::input_format::text
                                               : data::input_format::chat;
    }
    if (auto ref = j.find("reference"); ref != j.end()) {
        if (!ref->is_string()) throw data::bad_line("wrong type: \"reference\" must be a string");
        r.reference = ref->get<std::string>();
    }
    const auto& t = need(j, "teacher", "teacher");
    if (!t.is_object()) throw data::bad_line("wrong type: \"teacher\" must be an object");
    const auto& fp = need(t, "fingerprint", "teacher.fingerprint");
    if (!fp.is_string()) throw data::bad_line("wrong type: \"teacher.fingerprint\" must be a string");
    r.fingerprint = fp.get<std::string>();
    const auto& fr = need(t, "finish_reason", "teacher.finish_reason");
    if (!fr.is_string()) throw data::bad_line("wrong type: \"teacher.finish_reason\" must be a string");
    r.response.finish = parse_finish_reason(fr.get<std::string>());
    if (auto u = t.find("usage"); u != t.end() && u->is_object()) {
        auto count = [&](const char* key) -> std::int64_t {
            auto it = u->find(key);
            if (it == u->end()) return 0;
            if (!it->is_number_integer())
                throw data::bad_line(std::string("wrong type: \"teacher.usage.") + key + "\" must be an integer");
            return it->get<std::int64_t>();
        };
        r.response.usage.prompt_tokens = count("prompt_tokens");
        r.response.usage.completion_tokens = count("completion_tokens");
    }
    if (auto tok = t.find("tokens"); tok != t.end()) {
        if (!tok->is_array()) throw data::bad_line("wrong type: \"teacher.tokens\" must be an array");
        for (const auto& x : *tok) {
            if (!x.is_number_integer() || (x.is_number_unsigned() && x.get<std::uint64_t>() > INT32_MAX) ||
                (!x.is_number_unsigned() && (x.get<std::int64_t>() < INT32_MIN || x.get<std::int64_t>() > INT32_MAX)))
                throw data::bad_line("wrong type: \"teacher.tokens\" must hold 32-bit integers");
            r.response.tokens.push_back(x.get<std::int32_t>());
        }
    }
    if (auto tk = t.find("tokenizer"); tk != t.end()) {
        if (!tk->is_string()) throw data::bad_line("wrong type: \"teacher.tokenizer\" must be a string");
        r.tokenizer = tk->get<std::string>();
    }
    if (auto a = t.find("answered_by"); a != t.end()) {
        if (!a->is_string()) throw data::bad_line("wrong type: \"teacher.answered_by\" must be a string");
        r.response.answered_by = a->get<std::string>();
    }
    if (auto k = t.find("topk"); k != t.end()) {
        const bool in_range = k->is_number_unsigned()  ? k->get<std::uint64_t>() >= 1 && k->get<std::uint64_t>() <= 1024
                              : k->is_number_integer() ? k->get<std::int64_t>() >= 1 && k->get<std::int64_t>() <= 1024
                                                       : false;
        if (!in_range) throw data::bad_line("wrong type: \"teacher.topk\" must be a positive integer (at most 1024)");
        r.topk = k->get<int>();
    }
    return r;
}

/// Every record of a synthetic.jsonl file, in order. Throws format_error naming `file:line`.
inline std::vector<SyntheticRecord> read_synthetic(const std::filesystem::path& path) {
    std::vector<SyntheticRecord> out{};
    data::read_jsonl(path, {}, [&](std::uint64_t, const nlohmann::json& j) { out.push_back(parse_synthetic(j)); });
    return out;
}

}  // namespace distill::teacher
