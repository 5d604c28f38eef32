#pragma once
/// @file added_tokens.hpp
/// The `added_tokens` of a tokenizer.json: ids assigned as the `tokenizers` package assigns them, and
/// found in a text before the pipeline runs (leftmost-longest, honouring single_word, lstrip, rstrip,
/// and whether a token is matched in the raw or in the normalized text).

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "distill/data/hf/models.hpp"
#include "distill/data/hf/normalizers.hpp"
#include "distill/data/hf/pre_tokenizers.hpp"
#include "distill/data/hf/reader.hpp"
#include "distill/data/hf/regex.hpp"
#include "distill/data/hf/unicode.hpp"

namespace distill::data::hf {

/// The added tokens of a tokenizer and the matcher that finds them in a text.
class AddedTokens {
public:
    /// One added token as tokenizer.json lists it, with its id.
    struct Token {
        std::string content;  // as written
        std::string match;    // what is searched for: content, or content normalized
        std::int32_t id = -1;
        bool special = false, single_word = false, lstrip = false, rstrip = false, normalized = false;
    };

    /// Reads the `added_tokens` list: each token takes the model's id for it, else the next free one.
    void read(const Reader& r, const json& list, const Model& model, const std::optional<Normalizer>& normalizer) {
        r.array(list, "added_tokens");
        for (std::size_t i = 0; i < list.size(); ++i) {
            const std::string p = "added_tokens[" + std::to_string(i) + "]";
            const json& e = list[i];
            r.object(e, p);
            r.only(e, p, {"id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"});
            Token t;
            t.content = r.req_string(e, p, "content");
            if (t.content.size() > max_token_bytes) r.fail(p + ".content", "token longer than 65536 bytes");
            t.special = r.opt_bool(e, p, "special", false);
            t.single_word = r.opt_bool(e, p, "single_word", false);
            t.lstrip = r.opt_bool(e, p, "lstrip", false);
            t.rstrip = r.opt_bool(e, p, "rstrip", false);
            t.normalized = r.opt_bool(e, p, "normalized", !t.special);
            if (const json* id = Reader::find(e, "id")) (void)r.integer(*id, p + ".id", 0, max_token_id);
            if (t.content.empty()) continue;  // tokenizers ignores empty added tokens
            // ids as tokenizers assigns them: the model's id, else the next one after everything so far
            if (const auto it = ids_.find(t.content); it != ids_.end()) {
                t.id = it->second;
                for (auto& old : list_)
                    if (old.content == t.content) old = t;
                if (t.special) special_ids_.insert(t.id);
                continue;
            }
            if (const auto it = model.vocab.find(t.content); it != model.vocab.end()) {
                t.id = it->second;
            } else {
                // tokenizers: the model's vocabulary size, or one past the largest added id at or above it
                const auto model_size = static_cast<std::int32_t>(model.vocab.size());
                std::int32_t max_added = -1;
                for (const auto& a : list_) max_added = std::max(max_added, a.id);
                t.id = max_added < 0 ? model_size
                                     : (max_added >= model_size || model_size == 0 ? max_added + 1 : model_size);
                if (t.id > max_token_id) r.fail(p, "too many added tokens");
            }
            ids_.emplace(t.content, t.id);
            if (t.special) special_ids_.insert(t.id);
            list_.push_back(std::move(t));
        }
        for (std::size_t k = 0; k < list_.size(); ++k) {
            Token& t = list_[k];
            t.match = t.normalized && normalizer ? normalizer->apply(t.content) : t.content;
            if (!t.match.empty())
                (t.normalized ? by_first_byte_normalized_ : by_first_byte_raw_)[static_cast<unsigned char>(t.match[0])]
                    .push_back(k);
        }
    }

    /// Added-token extraction and normalization (tokenizers' extract_and_normalize).
    std::vector<Piece> split(const std::string& text, const std::optional<Normalizer>& normalizer) const {
        std::vector<Piece> raw;
        find(text, true, false, raw);
        std::vector<Piece> out;
        for (auto& p : raw) {
            if (p.token >= 0) {
                out.push_back(std::move(p));
                continue;
            }
            const std::string n = normalizer ? normalizer->apply(p.text) : p.text;
            std::vector<Piece> sub;
            find(n, p.at_start, true, sub);
            for (auto& s : sub)
                if (s.token >= 0 || !s.text.empty()) out.push_back(std::move(s));
        }
        return out;
    }

    /// Every added token (those with empty content left out), in the order read.
    const std::vector<Token>& list() const noexcept { return list_; }
    /// The id of an added token's content, if it is one.
    std::optional<std::int32_t> id(std::string_view content) const {
        const auto it = ids_.find(content);
        return it == ids_.end() ? std::nullopt : std::optional<std::int32_t>(it->second);
    }
    /// Whether `id` is a special added token.
    bool is_special(std::int32_t id) const { return special_ids_.count(id) != 0; }

private:
    static bool is_word_char(char32_t c) { return c == '_' || is_alphanumeric(c) || is_mark(c); }

    /// Splits `text` at the added tokens found in it (leftmost-longest, as tokenizers' Aho-Corasick
    /// matcher), honouring single_word, lstrip and rstrip. `normalized` picks the tokens matched after
    /// normalization or those matched in the raw text.
    void find(const std::string& text, bool at_start, bool normalized, std::vector<Piece>& out) const {
        const auto& candidates = normalized ? by_first_byte_normalized_ : by_first_byte_raw_;
        std::size_t start_offset = 0, pos = 0;
        auto piece = [&](std::size_t b, std::size_t e) {
            out.push_back({text.substr(b, e - b), at_start && b == 0, -1});
        };
        while (pos < text.size()) {
            // the leftmost match, the longest there (Aho-Corasick's leftmost-longest)
            const Token* best = nullptr;
            std::size_t at = pos;
            for (; at < text.size() && best == nullptr; ++at) {
                for (std::size_t k : candidates[static_cast<unsigned char>(text[at])]) {
                    const Token& t = list_[k];
                    if ((best == nullptr || t.match.size() > best->match.size()) &&
                        text.compare(at, t.match.size(), t.match) == 0)
                        best = &t;
                }
            }
            if (best == nullptr) break;
            std::size_t start = at - 1, stop = start + best->match.size();
            pos = stop;  // the matcher goes on after the match itself, whatever rstrip takes
            if (best->single_word) {
                bool start_space = start == 0, stop_space = stop == text.size();
                if (!start_space) start_space = !is_word_char(char_before(text, start));
                if (!stop_space) {
                    std::size_t k = stop;
                    stop_space = !is_word_char(next_utf8(text, k));
                }
                if (!start_space || !stop_space) continue;
            }
            if (best->lstrip) {
                std::size_t s = start;
                while (s > 0 && is_whitespace(char_before(text, s))) {
                    --s;
                    while (s > 0 && (static_cast<unsigned char>(text[s]) & 0xC0) == 0x80) --s;
                }
                start = std::max(s, start_offset);
            }
            if (best->rstrip) {
                for (std::size_t k = stop; k < text.size();) {
                    if (!is_whitespace(next_utf8(text, k))) break;
                    stop = k;
                }
            }
            if (start_offset < start) piece(start_offset, start);
            out.push_back({std::string(), false, best->id});
            start_offset = stop;
        }
        if (start_offset < text.size()) piece(start_offset, text.size());
    }

    static char32_t char_before(const std::string& text, std::size_t end) {
        std::size_t k = end - 1;
        while (k > 0 && (static_cast<unsigned char>(text[k]) & 0xC0) == 0x80) --k;
        return next_utf8(text, k);
    }

    std::vector<Token> list_{};
    Vocab ids_{};  // content -> id
    std::unordered_set<std::int32_t> special_ids_{};
    std::array<std::vector<std::size_t>, 256> by_first_byte_raw_{}, by_first_byte_normalized_{};  // indexes
};

}  // namespace distill::data::hf
