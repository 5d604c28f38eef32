#pragma once
/// @file hf_tokenizer.hpp
/// `data::HfTokenizer`: a Hugging Face `tokenizer.json` (and the `tokenizer_config.json` beside it),
/// encoding and decoding exactly as the Python `tokenizers` package does. Supported (docs/tokenizers.md):
/// - models: BPE (byte-level as GPT-2/Llama-3/Qwen2, SentencePiece-style with byte fallback as
///   Llama-2/TinyLlama/Phi-3, continuing-subword prefix, end-of-word suffix, ignore_merges),
///   WordPiece (BERT), WordLevel;
/// - normalizers: Sequence, BertNormalizer, Lowercase, StripAccents, NFC, NFD, Replace, Prepend, Strip;
/// - pre-tokenizers: Sequence, ByteLevel, Split, Metaspace, Digits, BertPreTokenizer, Whitespace,
///   WhitespaceSplit, Punctuation;
/// - decoders: Sequence, ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, WordPiece, BPEDecoder;
/// - post-processors: TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel, Sequence;
/// - added tokens (special flag, lstrip, rstrip, single_word, normalized).
/// Anything else in a file (Unigram, NFKC, Precompiled, dropout, truncation, padding, ...) is a
/// `config_error` naming the file, the JSON path and what is supported; nothing is silently ignored.
///
/// **Invalid UTF-8** in the text to encode: each maximal invalid subpart becomes U+FFFD, as Python's
/// `bytes.decode("utf-8", "replace")` does, so the ids equal those `tokenizers` gives for that string.
///
/// **Needs PCRE2** (Debian `libpcre2-dev`): link the CMake target `distill::text`. The pre-tokenizer
/// patterns of GPT-2, Llama-3 and Qwen2 use Unicode properties (`\p{L}`, `\p{N}`), lookahead and
/// case-insensitive groups; PCRE2 (UTF + UCP mode) is the standard engine that runs them unchanged
/// and also answers the general-category questions (punctuation, marks, controls) BERT needs.
///
/// This header is the facade: the class users see, its chat format for the pipeline, and the order
/// in which a tokenizer.json is read. Each section of the file has its room under data/hf/:
/// normalizers.hpp, pre_tokenizers.hpp, models.hpp (BPE, WordPiece, WordLevel), added_tokens.hpp,
/// post_processors.hpp, decoders.hpp; below them reader.hpp (JSON paths in errors), regex.hpp (PCRE2),
/// unicode.hpp (+ unicode_tables.hpp); beside them chat_format.hpp (the published chat templates).

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/data/chat.hpp"
#include "distill/data/hf/added_tokens.hpp"
#include "distill/data/hf/chat_format.hpp"
#include "distill/data/hf/decoders.hpp"
#include "distill/data/hf/models.hpp"
#include "distill/data/hf/normalizers.hpp"
#include "distill/data/hf/post_processors.hpp"
#include "distill/data/hf/pre_tokenizers.hpp"
#include "distill/data/hf/reader.hpp"
#include "distill/data/utf8.hpp"
#include "distill/data/vocab_alignment.hpp"
#include "distill/detail/hash.hpp"
#include "distill/error.hpp"

namespace distill::data {

/// A Hugging Face tokenizer read from `tokenizer.json`: encodes text to ids and decodes ids to text
/// exactly as the Python `tokenizers` package does for the supported components (see the file comment
/// and docs/tokenizers.md). Immutable after construction; `encode`/`decode` are safe to call from
/// several threads at once.
class HfTokenizer {
public:
    /// Reads `tokenizer_json` and, when it exists beside it, `tokenizer_config.json` (special-token
    /// names and the chat template). Throws io_error if a file cannot be read, format_error for
    /// malformed JSON, config_error (naming the file and JSON path) for anything unsupported or invalid.
    explicit HfTokenizer(const std::filesystem::path& tokenizer_json) {
        const std::string text = read_file(tokenizer_json);
        std::optional<std::string> config;
        const auto config_path = tokenizer_json.parent_path() / "tokenizer_config.json";
        std::error_code ec;
        if (std::filesystem::is_regular_file(config_path, ec)) config = read_file(config_path);
        load(text, tokenizer_json.string(), config, config_path.string());
        // newer transformers save the template beside the config instead of inside it
        const auto jinja = tokenizer_json.parent_path() / "chat_template.jinja";
        if (chat_template_.empty() && std::filesystem::is_regular_file(jinja, ec)) chat_template_ = read_file(jinja);
    }

    /// Builds a tokenizer from the text of a tokenizer.json (and optionally of a tokenizer_config.json);
    /// `name` stands for the file in error messages.
    static HfTokenizer from_json(std::string_view tokenizer_json, std::optional<std::string_view> config_json = {},
                                 std::string name = "tokenizer.json") {
        HfTokenizer t;
        std::optional<std::string> config;
        if (config_json) config = std::string(*config_json);
        t.load(std::string(tokenizer_json), name, config, "tokenizer_config.json");
        return t;
    }

    /// The tokenizer's identity for fingerprints: `hf-` and the first 16 hex digits of the SHA-256 of
    /// the tokenizer.json bytes (and of tokenizer_config.json, when read).
    const std::string& id() const noexcept { return id_; }

    /// The number of ids a model needs embedding rows for: the largest id (model vocabulary or added
    /// token) + 1.
    std::int32_t vocab_size() const noexcept { return static_cast<std::int32_t>(id_to_token_.size()); }

    /// The model type: "BPE", "WordPiece" or "WordLevel".
    const std::string& model_type() const noexcept { return model_.type; }

    /// The ids of `text` (UTF-8; invalid sequences are read as U+FFFD), with the post-processor's
    /// special tokens (e.g. BOS) when `add_special_tokens` is set.
    std::vector<std::int32_t> encode(std::string_view text, bool add_special_tokens = true) const {
        std::vector<hf::Piece> pieces = added_.split(utf8::make_valid(std::string(text)), normalizer_);
        if (pre_tokenizer_) pre_tokenizer_->apply(pieces);
        std::vector<std::int32_t> ids;
        if (add_special_tokens) ids = post_.before;
        for (const auto& p : pieces) {
            if (p.token >= 0)
                ids.push_back(p.token);
            else
                model_.tokenize(p.text, ids, id_);
        }
        if (add_special_tokens) ids.insert(ids.end(), post_.after.begin(), post_.after.end());
        return ids;
    }

    /// The text of `ids` through the decoder; special added tokens are dropped when
    /// `skip_special_tokens` is set. Throws distill::error for an id outside [0, vocab_size()) or
    /// one no token has.
    std::string decode(std::span<const std::int32_t> ids, bool skip_special_tokens = false) const {
        std::vector<std::string> tokens;
        tokens.reserve(ids.size());
        for (std::int32_t id : ids) {
            const std::string* t = token_of(id);
            if (t == nullptr)
                throw error("token id " + std::to_string(id) + " is not in the vocabulary of tokenizer " + id_ + " (" +
                            std::to_string(vocab_size()) + " ids)");
            if (skip_special_tokens && added_.is_special(id)) continue;
            tokens.push_back(*t);
        }
        if (!decoder_) {
            std::string out;
            for (std::size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
            return out;
        }
        decoder_->apply(tokens);
        std::string out;
        for (const auto& t : tokens) out += t;
        return out;
    }

    /// The id of a token (model vocabulary or added token), if it has one.
    std::optional<std::int32_t> token_to_id(std::string_view token) const {
        if (const auto id = added_.id(token)) return id;
        return model_.lookup(token);
    }

    /// The token of an id, if the id has one.
    std::optional<std::string> id_to_token(std::int32_t id) const {
        const std::string* t = token_of(id);
        return t ? std::optional<std::string>(*t) : std::nullopt;
    }

    /// The exact bytes token `id` stands for inside a text: an added token's content, a model token
    /// through the decoder (hf::Decoder::piece: a byte-level token's raw bytes, a `<0xNN>`
    /// byte-fallback token's byte, "▁" as a space). What an API reports as a token's `bytes`.
    /// nullopt for an id no token has.
    std::optional<std::string> token_bytes(std::int32_t id) const {
        const std::string* t = token_of(id);
        if (t == nullptr) return std::nullopt;
        if (added_.id(*t) == id || !decoder_) return *t;
        return decoder_->piece(*t);
    }

    /// Whether `id` has a token (model vocabulary or added token).
    bool has_id(std::int32_t id) const noexcept { return token_of(id) != nullptr; }

    /// Whether `id` is a special added token (skipped by `decode(ids, true)`).
    bool is_special(std::int32_t id) const { return added_.is_special(id); }

    /// Special-token ids named in tokenizer_config.json (`bos_token`, ...); the unknown token falls back
    /// to the model's `unk_token`.
    std::optional<std::int32_t> bos_id() const noexcept { return bos_; }
    std::optional<std::int32_t> eos_id() const noexcept { return eos_; }
    std::optional<std::int32_t> pad_id() const noexcept { return pad_; }
    std::optional<std::int32_t> unk_id() const noexcept { return unk_; }
    /// The names of those tokens ("" when absent).
    const std::string& bos_token() const noexcept { return bos_token_; }
    const std::string& eos_token() const noexcept { return eos_token_; }

    /// The `chat_template` string of tokenizer_config.json ("" when absent).
    const std::string& chat_template() const noexcept { return chat_template_; }

    /// The chat template recognized from `chat_template()` (data/hf/chat_format.hpp), with this
    /// tokenizer's bos/eos names. Throws config_error for a template it does not recognize.
    HfChatTemplate chat() const { return HfChatTemplate::recognize(chat_template_, bos_token_, eos_token_); }

    /// The token of every id, in id order ("" for an id no token has).
    const std::vector<std::string>& tokens() const noexcept { return id_to_token_; }

    /// What data::align_vocabularies needs: the tokens, the pipeline fingerprint (normalizer,
    /// pre-tokenizer, model) and the model's embedding rows (0: as many as ids).
    VocabInfo vocab_info(std::string name, std::int64_t embedding_rows = 0) const {
        return {std::move(name), id_to_token_, pipeline_, embedding_rows};
    }

private:
    HfTokenizer() = default;

    static std::string read_file(const std::filesystem::path& p) {
        std::ifstream in(p, std::ios::binary);
        if (!in) throw io_error(p, "cannot open the tokenizer file");
        std::string s{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
        if (in.bad()) throw io_error(p, "cannot read the tokenizer file");
        return s;
    }

    const std::string* token_of(std::int32_t id) const {
        if (id < 0 || id >= vocab_size() || !has_token_[static_cast<std::size_t>(id)]) return nullptr;
        return &id_to_token_[static_cast<std::size_t>(id)];
    }

    // ------------------------------------------------------------ loading

    void load(const std::string& text, const std::string& file, const std::optional<std::string>& config,
              const std::string& config_file) {
        using hf::json;
        using hf::Reader;
        json j;
        try {
            j = json::parse(text);
        } catch (const json::exception& e) {
            throw format_error(file, 0, std::string("malformed JSON: ") + e.what());
        }
        const Reader r(file);
        r.object(j, "(root)");
        r.only(j, "",
               {"version", "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer", "model",
                "post_processor", "decoder"});
        if (const json* t = Reader::find(j, "truncation"))
            r.fail("truncation", "truncation is not supported (" + t->dump().substr(0, 80) +
                                     "); truncate the ids yourself, or set it to null");
        if (const json* p = Reader::find(j, "padding"))
            r.fail("padding", "padding is not supported (" + p->dump().substr(0, 80) +
                                  "); pad the ids yourself, or set it to null");
        model_.read(r, r.required(j, "", "model"));
        if (const json* n = Reader::find(j, "normalizer")) normalizer_ = hf::read_normalizer(r, *n, "normalizer");
        if (const json* p = Reader::find(j, "pre_tokenizer"))
            pre_tokenizer_ = hf::read_pre_tokenizer(r, *p, "pre_tokenizer");
        if (const json* d = Reader::find(j, "decoder")) decoder_ = hf::read_decoder(r, *d, "decoder");
        if (const json* a = Reader::find(j, "added_tokens")) added_.read(r, *a, model_, normalizer_);
        build_id_table(r);
        if (const json* p = Reader::find(j, "post_processor")) post_.read(r, *p, "post_processor");
        for (std::int32_t id : post_.before) check_id(r, "post_processor", id);
        for (std::int32_t id : post_.after) check_id(r, "post_processor", id);
        pipeline_ = distill::detail::sha256_hex((j.contains("normalizer") ? j["normalizer"].dump() : "null") + "\n" +
                                                (j.contains("pre_tokenizer") ? j["pre_tokenizer"].dump() : "null") +
                                                "\n" + j["model"].dump());
        std::string fingerprint = distill::detail::sha256_hex(text);
        if (config) {
            read_config(*config, config_file);
            fingerprint = distill::detail::sha256_hex(fingerprint + distill::detail::sha256_hex(*config));
        }
        if (!unk_ && !model_.unk_token.empty()) unk_ = token_to_id(model_.unk_token);
        id_ = "hf-" + fingerprint.substr(0, 16);
    }

    void check_id(const hf::Reader& r, const std::string& path, std::int32_t id) const {
        if (token_of(id) == nullptr)
            r.fail(path, "special token id " + std::to_string(id) + " is not in the vocabulary (" +
                             std::to_string(vocab_size()) + " ids)");
    }

    void build_id_table(const hf::Reader& r) {
        std::int32_t size = 0;
        const auto& vocab = model_.vocab;
        const auto& added = added_.list();
        for (const auto& [k, v] : vocab) size = std::max(size, v + 1);
        for (const auto& t : added) size = std::max(size, t.id + 1);
        // ids must be dense enough that a table indexed by id is bounded by the file's own size
        if (static_cast<std::size_t>(size) > 2 * (vocab.size() + added.size()) + 65536)
            r.fail("model.vocab", "ids are sparse: the largest id is " + std::to_string(size - 1) + " for " +
                                      std::to_string(vocab.size() + added.size()) + " tokens");
        id_to_token_.assign(static_cast<std::size_t>(size), std::string());
        has_token_.assign(static_cast<std::size_t>(size), false);
        for (const auto& [k, v] : vocab) {
            if (has_token_[static_cast<std::size_t>(v)])
                r.fail("model.vocab", "id " + std::to_string(v) + " is given to two tokens (\"" +
                                          id_to_token_[static_cast<std::size_t>(v)].substr(0, 40) + "\" and \"" +
                                          k.substr(0, 40) + "\")");
            id_to_token_[static_cast<std::size_t>(v)] = k;
            has_token_[static_cast<std::size_t>(v)] = true;
        }
        for (const auto& t : added) {
            id_to_token_[static_cast<std::size_t>(t.id)] = t.content;
            has_token_[static_cast<std::size_t>(t.id)] = true;
        }
        model_.resolve_unk();
    }

    void read_config(const std::string& text, const std::string& file) {
        using hf::json;
        using hf::Reader;
        const json j = json::parse(text, nullptr, false);
        if (j.is_discarded()) throw format_error(file, 0, "malformed JSON");
        const Reader r(file);
        r.object(j, "(root)");
        auto token = [&](const char* key, std::string& name) -> std::optional<std::int32_t> {
            const json* v = Reader::find(j, key);
            if (!v) return std::nullopt;
            if (v->is_object()) {  // {"__type": "AddedToken", "content": ...}
                name = r.req_string(*v, key, "content");
            } else {
                name = r.string(*v, key);
            }
            const auto id = token_to_id(name);
            if (!id) r.fail(key, "\"" + name.substr(0, 80) + "\" is not a token of the tokenizer");
            return id;
        };
        std::string ignored;
        bos_ = token("bos_token", bos_token_);
        eos_ = token("eos_token", eos_token_);
        pad_ = token("pad_token", ignored);
        unk_ = token("unk_token", ignored);
        if (const json* t = Reader::find(j, "chat_template")) {
            if (t->is_string()) {
                chat_template_ = t->get<std::string>();
            } else if (t->is_array()) {  // [{"name": "default", "template": ...}, ...]
                for (std::size_t i = 0; i < t->size(); ++i) {
                    const std::string at = "chat_template[" + std::to_string(i) + "]";
                    const json& e = r.object((*t)[i], at);
                    if (r.opt_string(e, at, "name", "") == "default") chat_template_ = r.req_string(e, at, "template");
                }
            } else {
                r.fail("chat_template", "must be a string or a list of named templates, got " + Reader::type_name(*t));
            }
        }
    }

    hf::Model model_{};
    std::optional<hf::Normalizer> normalizer_{};
    std::optional<hf::PreTokenizer> pre_tokenizer_{};
    std::optional<hf::Decoder> decoder_{};
    hf::PostProcessor post_{};
    hf::AddedTokens added_{};
    // ids
    std::vector<std::string> id_to_token_{};
    std::vector<bool> has_token_{};
    std::string id_{}, pipeline_{};
    // tokenizer_config.json
    std::optional<std::int32_t> bos_{}, eos_{}, pad_{}, unk_{};
    std::string bos_token_{}, eos_token_{}, chat_template_{};
};

/// A published tokenizer's chat format for the pipeline (`data::ChatTokenizer`): prompts rendered by
/// the model's template (data/hf/chat_format.hpp) and encoded without added special tokens, as
/// transformers' `apply_chat_template(..., add_generation_prompt=True, tokenize=True)` does; an answer
/// is its text and the token that ends the template's assistant turn (`<|im_end|>`, `<|eot_id|>`,
/// `<|end|>`; the eos token for `plain`), where generation also stops, as at the eos token.
class HfChatFormat final : public ChatFormat {
public:
    /// Throws config_error (field `chat_template`) when the tokenizer has no id for the token that
    /// ends a turn.
    HfChatFormat(std::shared_ptr<const HfTokenizer> tokenizer, HfChatTemplate chat)
        : tok_(std::move(tokenizer)), chat_(std::move(chat)) {
        const std::string_view name = chat_format_name(chat_.format);
        std::string end = chat_.format == chat_format::chatml   ? "<|im_end|>"
                          : chat_.format == chat_format::llama3 ? "<|eot_id|>"
                          : chat_.format == chat_format::phi3   ? "<|end|>"
                                                                : tok_->eos_token();
        const auto id = end.empty() ? std::nullopt : tok_->token_to_id(end);
        if (!id)
            throw config_error(
                "chat_template",
                "the " + std::string(name) + " format ends a turn with " +
                    (end.empty() ? std::string("the eos token, which tokenizer ") + tok_->id() + " does not name"
                                 : "\"" + end + "\", which tokenizer " + tok_->id() + " does not have"));
        end_of_turn_ = *id;
        eos_ = tok_->eos_id().value_or(end_of_turn_);
        pad_ = tok_->pad_id().value_or(eos_);
        id_ = "chat-v1;tokenizer=" + tok_->id() + ";format=" + std::string(name) +
              ";default_system=" + distill::detail::sha256_hex(chat_.default_system).substr(0, 16);
    }

    std::string id() const override { return id_; }
    std::string tokenizer_id() const override { return tok_->id(); }
    std::int32_t vocab_size() const override { return tok_->vocab_size(); }

    std::vector<std::int32_t> encode_prompt(std::span<const Message> prompt) const override {
        return tok_->encode(chat_.render(prompt, /*add_generation_prompt=*/true), /*add_special_tokens=*/false);
    }

    std::vector<std::int32_t> encode_response(std::string_view response) const override {
        std::vector<std::int32_t> ids = tok_->encode(response, /*add_special_tokens=*/false);
        ids.push_back(end_of_turn_);
        return ids;
    }

    std::vector<std::int32_t> encode_text(std::string_view text) const override {
        return tok_->encode(text, /*add_special_tokens=*/false);
    }

    std::string decode(std::span<const std::int32_t> ids) const override {
        std::vector<std::int32_t> kept;
        kept.reserve(ids.size());
        for (std::int32_t t : ids)
            if (tok_->has_id(t)) kept.push_back(t);  // ids of padding rows have no text
        return tok_->decode(kept, /*skip_special_tokens=*/true);
    }

    bool is_stop_token(std::int32_t token) const override { return token == end_of_turn_ || token == eos_; }
    std::int32_t pad() const override { return pad_; }

    VocabInfo vocab_info(std::string name, std::int64_t embedding_rows) const override {
        return tok_->vocab_info(std::move(name), embedding_rows);
    }

private:
    std::shared_ptr<const HfTokenizer> tok_;
    HfChatTemplate chat_;
    std::int32_t end_of_turn_ = 0, eos_ = 0, pad_ = 0;
    std::string id_;
};

/// The pipeline's template over a published tokenizer: the chat format `config.format` names, or the
/// one recognized from the tokenizer's tokenizer_config.json when it is "". Throws config_error for
/// an unrecognized template (saying how to name one) or a format the tokenizer cannot end a turn in.
inline ChatTokenizer hf_chat_tokenizer(std::shared_ptr<const HfTokenizer> tokenizer, ChatTemplateConfig config = {}) {
    config.validate();
    HfChatTemplate chat = config.format.empty()
                              ? tokenizer->chat()
                              : HfChatTemplate::named(config.format, tokenizer->bos_token(), tokenizer->eos_token());
    auto format = std::make_shared<const HfChatFormat>(std::move(tokenizer), std::move(chat));
    return ChatTokenizer(std::move(config), std::move(format));
}

}  // namespace distill::data
