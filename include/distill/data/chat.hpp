#pragma once
/// @file chat.hpp
/// Training and evaluation examples as users have them, and the chat template that turns them into
/// student tokens.
///
/// **Input formats** (one JSON object per line, detected per line by its keys):
/// - OpenAI chat: `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`.
///   A final assistant turn, if present, is the ground-truth reference and not part of the prompt.
///   `content` may also be an array of `{"type": "text", "text": "..."}` parts, which are joined.
/// - Completion: `{"prompt": "...", "completion": "..."}` (`completion` optional: the reference).
/// - Classification (NLI): `{"input": "...", "label": "..." | 0 | true}` (`label` optional).
/// - Text (the `embedding` task): `{"text": "..."}`, a sentence to embed; no reference.
/// An optional `"id"` (string or integer) names the example; otherwise its id is derived from its
/// prompt, so it is stable when lines are reordered or added. Other keys are ignored.
///
/// **Chat template** (byte tokenizer): `<|bos|>` then, per turn, the role token (`<|system|>`,
/// `<|user|>`, `<|assistant|>`), the content bytes and `<|end|>`; the prompt ends with
/// `<|assistant|>`, and the answer is its bytes followed by `<|end|>`. Generation stops at `<|end|>`
/// or `<|eos|>`. Configurable: the leading `<|bos|>` and a default system prompt. A published
/// tokenizer's template (ChatML, Llama-3, Phi-3, plain) is `data::hf_chat_tokenizer`
/// (data/hf_tokenizer.hpp); `ChatTokenizer` holds either as a value.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/hana/adapt_struct.hpp>
#include <nlohmann/json.hpp>

#include "distill/data/byte_tokenizer.hpp"
#include "distill/data/jsonl.hpp"
#include "distill/data/utf8.hpp"
#include "distill/data/vocab_alignment.hpp"
#include "distill/detail/hash.hpp"
#include "distill/error.hpp"

namespace distill::data {

/// One conversation turn.
struct Message {
    std::string role{};     ///< "system", "user" or "assistant"
    std::string content{};  ///< the turn's text (UTF-8)

    friend bool operator==(const Message&, const Message&) = default;
};

/// Which of the four input formats a line was in.
enum class input_format : std::uint8_t { chat, prompt_completion, input_label, text };

/// The name of `f` as documented ("chat", "prompt_completion", "input_label", "text").
constexpr std::string_view format_name(input_format f) noexcept {
    constexpr std::array<std::string_view, 4> names = {"chat", "prompt_completion", "input_label", "text"};
    const auto i = static_cast<std::size_t>(f);
    return i < names.size() ? names[i] : "?";
}

/// One example: the prompt turns the teacher and student see and, when the data has it, the
/// ground-truth reference.
struct Example {
    std::string id{};        ///< stable key: the line's "id", or derived from the prompt
    std::uint64_t line = 0;  ///< 1-based line in the source file
    input_format format = input_format::chat;
    std::vector<Message> prompt{};           ///< ends with a user turn
    std::optional<std::string> reference{};  ///< last assistant turn / completion / label
    /// The line's other top-level fields whose values are strings or numbers (e.g. {"op": "div"}),
    /// as text: what a multi-teacher job's `route.field` reads (teacher/ensemble.hpp).
    std::map<std::string, std::string> fields{};
};

/// The turns as a JSON array `[{"role":..., "content":...}, ...]`.
inline nlohmann::json messages_to_json(std::span<const Message> messages) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& m : messages) a.push_back({{"role", m.role}, {"content", m.content}});
    return a;
}

/// The id derived from a prompt: the first 16 hex digits of the SHA-256 of its canonical JSON.
inline std::string prompt_key(std::span<const Message> prompt) {
    return distill::detail::sha256_hex(messages_to_json(prompt).dump()).substr(0, 16);
}

namespace detail {

inline std::string json_type(const nlohmann::json& j) {
    if (j.is_number_integer()) return "an integer";
    if (j.is_number()) return "a number";
    const std::string n = j.type_name();
    return (n[0] == 'a' || n[0] == 'o' ? "an " : "a ") + n;
}

inline bool blank(std::string_view s) {
    return s.find_first_not_of(" \t\r\n\f\v") == std::string_view::npos;
}

// A required non-empty string field `key` of `j`, named `where` in messages.
inline std::string required_text(const nlohmann::json& j, const char* key, const std::string& where) {
    auto it = j.find(key);
    if (it == j.end()) throw bad_line("missing field \"" + where + "\"");
    if (!it->is_string()) throw bad_line("wrong type: \"" + where + "\" must be a string, got " + json_type(*it));
    std::string s = it->get<std::string>();
    if (blank(s)) throw bad_line("empty content: \"" + where + "\" is empty");
    return s;
}

inline std::string message_content(const nlohmann::json& c, const std::string& where) {
    if (c.is_string()) {
        std::string s = c.get<std::string>();
        if (blank(s)) throw bad_line("empty content: \"" + where + "\" is empty");
        return s;
    }
    if (!c.is_array())
        throw bad_line("wrong type: \"" + where + "\" must be a string or an array of text parts, got " + json_type(c));
    std::string s{};
    for (std::size_t i = 0; i < c.size(); ++i) {
        const std::string part = where + "[" + std::to_string(i) + "]";
        if (!c[i].is_object()) throw bad_line("wrong type: \"" + part + "\" must be an object, got " + json_type(c[i]));
        auto type = c[i].find("type");
        if (type == c[i].end() || *type != "text")
            throw bad_line("wrong type: \"" + part + ".type\" must be \"text\" (only text content is supported)");
        s += required_text(c[i], "text", part + ".text");
    }
    if (blank(s)) throw bad_line("empty content: \"" + where + "\" is empty");
    return s;
}

}  // namespace detail

/// Parses one line's JSON into an example (id not yet assigned unless the line has one).
/// Throws `bad_line` naming the defect: missing field, wrong type, empty content, unknown role,
/// a prompt without a user turn.
inline Example parse_example(const nlohmann::json& j) {
    using namespace detail;
    if (!j.is_object()) throw bad_line("wrong type: expected a JSON object, got " + json_type(j));
    Example ex;
    if (auto id = j.find("id"); id != j.end()) {
        if (id->is_string() && !blank(id->get<std::string>()))
            ex.id = id->get<std::string>();
        else if (id->is_number_integer())
            ex.id = id->dump();
        else
            throw bad_line("wrong type: \"id\" must be a non-empty string or an integer, got " + json_type(*id));
    }
    if (auto msgs = j.find("messages"); msgs != j.end()) {
        ex.format = input_format::chat;
        if (!msgs->is_array()) throw bad_line("wrong type: \"messages\" must be an array, got " + json_type(*msgs));
        if (msgs->empty()) throw bad_line("empty content: \"messages\" is an empty array");
        for (std::size_t i = 0; i < msgs->size(); ++i) {
            const auto& m = (*msgs)[i];
            const std::string where = "messages[" + std::to_string(i) + "]";
            if (!m.is_object()) throw bad_line("wrong type: \"" + where + "\" must be an object, got " + json_type(m));
            auto role = m.find("role");
            if (role == m.end()) throw bad_line("missing field \"" + where + ".role\"");
            if (!role->is_string())
                throw bad_line("wrong type: \"" + where + ".role\" must be a string, got " + json_type(*role));
            const std::string r = role->get<std::string>();
            if (r != "system" && r != "user" && r != "assistant")
                throw bad_line("unknown role \"" + r + "\" in \"" + where +
                               ".role\" (expected system, user or assistant)");
            auto content = m.find("content");
            if (content == m.end()) throw bad_line("missing field \"" + where + ".content\"");
            ex.prompt.push_back({r, message_content(*content, where + ".content")});
        }
        if (ex.prompt.back().role == "assistant") {
            ex.reference = std::move(ex.prompt.back().content);
            ex.prompt.pop_back();
        }
        if (ex.prompt.empty() || ex.prompt.back().role != "user")
            throw bad_line(
                "missing field: the conversation has no user turn for the teacher to answer "
                "(the prompt must end with a user message)");
    } else if (j.contains("prompt")) {
        ex.format = input_format::prompt_completion;
        ex.prompt.push_back({"user", required_text(j, "prompt", "prompt")});
        if (j.contains("completion")) ex.reference = required_text(j, "completion", "completion");
    } else if (j.contains("input")) {
        ex.format = input_format::input_label;
        ex.prompt.push_back({"user", required_text(j, "input", "input")});
        if (auto label = j.find("label"); label != j.end()) {
            if (label->is_string())
                ex.reference = required_text(j, "label", "label");
            else if (label->is_number_integer() || label->is_boolean())
                ex.reference = label->dump();
            else
                throw bad_line("wrong type: \"label\" must be a string, an integer or a boolean, got " +
                               json_type(*label));
        }
    } else if (j.contains("text")) {
        ex.format = input_format::text;
        ex.prompt.push_back({"user", required_text(j, "text", "text")});
    } else {
        throw bad_line(
            "missing field: expected \"messages\" (chat), \"prompt\" (completion), \"input\" (classification) "
            "or \"text\" (a sentence to embed)");
    }
    static constexpr std::string_view read[] = {"id", "messages", "prompt", "completion", "input", "label", "text"};
    for (const auto& item : j.items()) {
        if (std::find(std::begin(read), std::end(read), item.key()) != std::end(read)) continue;
        if (item.value().is_string())
            ex.fields.emplace(item.key(), item.value().get<std::string>());
        else if (item.value().is_number() || item.value().is_boolean())
            ex.fields.emplace(item.key(), item.value().dump());
    }
    return ex;
}

/// A data file read into examples, with the reader's counts.
struct Dataset {
    std::filesystem::path path;
    std::vector<Example> examples{};
    JsonlStats stats;
};

/// Reads the examples of a JSONL file in any of the four formats (see the file comment). Ids: a
/// line's own "id" (a duplicate is a defect), else `prompt_key(prompt)`, with "-2", "-3", ...
/// appended for repeated prompts so every example has a distinct, stable id.
/// Throws format_error naming `file:line` and the defect (or skips, under on_bad_line = "skip").
inline Dataset read_examples(const std::filesystem::path& path, const JsonlConfig& config = {}) {
    Dataset ds;
    ds.path = path;
    std::map<std::string, std::uint64_t> seen;  // id -> line, for duplicate ids
    std::map<std::string, int> repeats;         // derived key -> occurrences so far
    ds.stats = read_jsonl(path, config, [&](std::uint64_t line, const nlohmann::json& j) {
        Example ex = parse_example(j);
        ex.line = line;
        if (!ex.id.empty()) {
            if (auto it = seen.find(ex.id); it != seen.end())
                throw bad_line("duplicate id \"" + ex.id + "\" (first used on line " + std::to_string(it->second) +
                               ")");
        } else {
            const std::string key = prompt_key(ex.prompt);
            const int n = ++repeats[key];
            ex.id = n == 1 ? key : key + "-" + std::to_string(n);
        }
        seen.emplace(ex.id, line);
        ds.examples.push_back(std::move(ex));
    });
    return ds;
}

/// Settings of the chat template. Keys are the JSON keys of a job's `chat_template` object.
struct ChatTemplateConfig {
    /// The byte tokenizer's template starts every sequence with `<|bos|>`. A published model's
    /// template decides its own start (Llama-3's begins with its bos token), so this is ignored there.
    bool add_bos = true;
    std::string system_prompt{};  ///< a system turn prepended when an example has none ("" = none)
    /// A published tokenizer's chat format: "" recognizes it from the tokenizer's
    /// tokenizer_config.json; "chatml", "llama3", "phi3" or "plain" names it. Must be "" for the byte
    /// tokenizer, whose role tokens are its template.
    std::string format{};

    void validate(const std::string& path = "chat_template") const {
        if (!format.empty() && format != "chatml" && format != "llama3" && format != "phi3" && format != "plain")
            throw config_error(path + ".format",
                               "expected \"\" (recognize it from the tokenizer), \"chatml\", "
                               "\"llama3\", \"phi3\" or \"plain\", got \"" +
                                   format + "\"");
    }
};

/// What a tokenizer and its chat format do for the pipeline. `ChatTokenizer` holds one; the byte
/// tokenizer's is below, a published tokenizer's is `data::hf_chat_tokenizer` (data/hf_tokenizer.hpp).
class ChatFormat {
public:
    virtual ~ChatFormat() = default;
    /// Identity for fingerprints: tokenizer, format and settings (not the system prompt).
    virtual std::string id() const = 0;
    /// The tokenizer's identity alone ("byte-v1", "hf-<digest>"): what top-k ids and answer tokens
    /// belong to.
    virtual std::string tokenizer_id() const = 0;
    /// Ids a model needs embedding rows for.
    virtual std::int32_t vocab_size() const = 0;
    /// The prompt's ids, ending with the generation prompt.
    virtual std::vector<std::int32_t> encode_prompt(std::span<const Message> prompt) const = 0;
    /// An answer's ids: its text and the token that ends an assistant turn.
    virtual std::vector<std::int32_t> encode_response(std::string_view response) const = 0;
    /// The ids of plain text: no template, no special tokens (raw text completions).
    virtual std::vector<std::int32_t> encode_text(std::string_view text) const = 0;
    /// The text of generated ids: special tokens and ids past the tokenizer's (padding rows) dropped,
    /// runs of ids decoded together (a character may span several ids).
    virtual std::string decode(std::span<const std::int32_t> ids) const = 0;
    /// Whether generation stops at `token` (end of turn, end of sequence).
    virtual bool is_stop_token(std::int32_t token) const = 0;
    /// The id that fills batch rows past a sequence's end (never a loss target).
    virtual std::int32_t pad() const = 0;
    /// The tokens of every id, for data::align_vocabularies.
    virtual VocabInfo vocab_info(std::string name, std::int64_t embedding_rows) const = 0;
};

/// The byte tokenizer's template (see the file comment for the layout).
class ByteChatFormat final : public ChatFormat {
public:
    explicit ByteChatFormat(bool add_bos) : add_bos_(add_bos) {}

    std::string id() const override {
        std::string id = "chat-v1;tokenizer=";
        id += ByteTokenizer::id();
        id += add_bos_ ? ";add_bos=1" : ";add_bos=0";
        return id;
    }
    std::string tokenizer_id() const override { return std::string(ByteTokenizer::id()); }
    std::int32_t vocab_size() const override { return ByteTokenizer::vocab_size(); }

    std::vector<std::int32_t> encode_prompt(std::span<const Message> prompt) const override {
        std::vector<std::int32_t> ids{};
        if (add_bos_) ids.push_back(ByteTokenizer::bos);
        for (const auto& m : prompt) {
            ids.push_back(m.role == "system" ? ByteTokenizer::system
                          : m.role == "user" ? ByteTokenizer::user
                                             : ByteTokenizer::assistant);
            const auto body = tok_.encode(m.content);
            ids.insert(ids.end(), body.begin(), body.end());
            ids.push_back(ByteTokenizer::end_of_turn);
        }
        ids.push_back(ByteTokenizer::assistant);
        return ids;
    }

    std::vector<std::int32_t> encode_response(std::string_view response) const override {
        std::vector<std::int32_t> ids = tok_.encode(response);
        ids.push_back(ByteTokenizer::end_of_turn);
        return ids;
    }

    std::vector<std::int32_t> encode_text(std::string_view text) const override { return tok_.encode(text); }

    std::string decode(std::span<const std::int32_t> ids) const override {
        std::string text;
        for (std::int32_t t : ids)
            if (t >= 0 && t < ByteTokenizer::bos) text.push_back(static_cast<char>(static_cast<unsigned char>(t)));
        return text;
    }

    bool is_stop_token(std::int32_t token) const override {
        return token == ByteTokenizer::end_of_turn || token == ByteTokenizer::eos;
    }
    std::int32_t pad() const override { return ByteTokenizer::pad; }

    VocabInfo vocab_info(std::string name, std::int64_t embedding_rows) const override {
        VocabInfo v{std::move(name), {}, tokenizer_id(), embedding_rows};
        for (std::int32_t t = 0; t < ByteTokenizer::vocab_size(); ++t) v.tokens.emplace_back(tok_.token_name(t));
        return v;
    }

private:
    bool add_bos_;
    ByteTokenizer tok_{};
};

/// A tokenizer with its chat format, as every stage uses it: turns conversations into ids for
/// generation and training, and generated ids back into text. A value (copies share one immutable
/// format), so a teacher, the Distiller and its evaluation runners hold the same one.
class ChatTokenizer {
public:
    /// The byte tokenizer's template (see the file comment). Throws config_error for a named format.
    explicit ChatTokenizer(ChatTemplateConfig config = {}) : cfg_(std::move(config)) {
        cfg_.validate();
        if (!cfg_.format.empty())
            throw config_error("chat_template.format", "is \"" + cfg_.format +
                                                           "\", but the byte tokenizer has its own template; "
                                                           "leave it empty (formats are for published tokenizers)");
        format_ = std::make_shared<const ByteChatFormat>(cfg_.add_bos);
    }

    /// A template over `format` (a published tokenizer's: `data::hf_chat_tokenizer`).
    ChatTokenizer(ChatTemplateConfig config, std::shared_ptr<const ChatFormat> format)
        : cfg_(std::move(config)), format_(std::move(format)) {
        cfg_.validate();
        if (!format_) throw error("ChatTokenizer: no format given");
    }

    const ChatTemplateConfig& config() const noexcept { return cfg_; }
    const ChatFormat& format() const noexcept { return *format_; }

    /// The template's identity for fingerprints: its format, tokenizer and settings.
    std::string id() const {
        return format_->id() + ";system_prompt=" + distill::detail::sha256_hex(cfg_.system_prompt).substr(0, 16);
    }
    /// The tokenizer's identity ("byte-v1", "hf-<digest>").
    std::string tokenizer_id() const { return format_->tokenizer_id(); }
    /// Ids a model needs embedding rows for.
    std::int32_t vocab_size() const { return format_->vocab_size(); }

    /// The prompt's ids (with the configured system prompt when it has no system turn), ending with
    /// the generation prompt.
    std::vector<std::int32_t> encode_prompt(std::span<const Message> prompt) const {
        const bool has_system = !prompt.empty() && prompt.front().role == "system";
        if (has_system || cfg_.system_prompt.empty()) return format_->encode_prompt(prompt);
        std::vector<Message> with{{"system", cfg_.system_prompt}};
        with.insert(with.end(), prompt.begin(), prompt.end());
        return format_->encode_prompt(with);
    }

    /// An answer's ids as the student learns them: its text and the end-of-turn token.
    std::vector<std::int32_t> encode_response(std::string_view response) const {
        return format_->encode_response(response);
    }
    /// The ids of plain text: no template, no special tokens (a raw text completion's prompt).
    std::vector<std::int32_t> encode_text(std::string_view text) const { return format_->encode_text(text); }
    /// The text of generated ids (special tokens and padding-row ids dropped), valid UTF-8: an
    /// invalid byte sequence (a byte-level model may stop inside a character) becomes U+FFFD, as in
    /// transformers' `decode`.
    std::string decode(std::span<const std::int32_t> ids) const { return utf8::make_valid(format_->decode(ids)); }
    /// Whether generation stops at `token`.
    bool is_stop_token(std::int32_t token) const { return format_->is_stop_token(token); }
    /// The id that pads batch rows.
    std::int32_t pad() const { return format_->pad(); }
    /// The tokens of every id, for data::align_vocabularies (`embedding_rows` = the model's).
    VocabInfo vocab_info(std::string name, std::int64_t embedding_rows = 0) const {
        return format_->vocab_info(std::move(name), embedding_rows);
    }

private:
    ChatTemplateConfig cfg_;
    std::shared_ptr<const ChatFormat> format_;
};

}  // namespace distill::data

BOOST_HANA_ADAPT_STRUCT(distill::data::ChatTemplateConfig, add_bos, system_prompt, format);
