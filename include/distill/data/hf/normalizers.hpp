#pragma once
/// @file normalizers.hpp
/// The `normalizer` of a tokenizer.json: Sequence, BertNormalizer, Lowercase, StripAccents, NFC, NFD,
/// Replace, Prepend and Strip, as the `tokenizers` package applies them. NFKC, NFKD, Precompiled and
/// Nmt are refused with a config_error that names them.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "distill/data/hf/reader.hpp"
#include "distill/data/hf/regex.hpp"
#include "distill/data/hf/unicode.hpp"

namespace distill::data::hf {

/// One normalizer (a Sequence holds its children), applied to a piece of text.
struct Normalizer {
    enum class Kind : std::uint8_t { sequence, bert, lowercase, strip_accents, nfc, nfd, replace, prepend, strip };
    Kind kind = Kind::sequence;
    std::vector<Normalizer> children{};
    bool clean_text = true, handle_chinese_chars = true, strip_accents = false, lowercase = false;
    bool strip_left = false, strip_right = false;
    Replace replace{};
    std::string content{};  // Prepend's

    std::string apply(std::string_view text) const {
        switch (kind) {
            case Kind::sequence: {
                std::string s(text);
                for (const auto& c : children) s = c.apply(s);
                return s;
            }
            case Kind::bert:
                return bert(text);
            case Kind::lowercase: {
                std::u32string out;
                for (char32_t c : to_u32(text)) append_lowercase(out, c);
                return to_utf8(out);
            }
            case Kind::strip_accents: {
                std::u32string out;
                for (char32_t c : to_u32(text))
                    if (!is_mark(c)) out.push_back(c);
                return to_utf8(out);
            }
            case Kind::nfc:
                return to_utf8(nfc(to_u32(text)));
            case Kind::nfd:
                return to_utf8(nfd(to_u32(text)));
            case Kind::replace:
                return replace.apply(text);
            case Kind::prepend:
                return text.empty() ? std::string() : content + std::string(text);
            case Kind::strip: {
                std::u32string s = to_u32(text);
                std::size_t b = 0, e = s.size();
                if (strip_left)
                    while (b < e && is_whitespace(s[b])) ++b;
                if (strip_right)
                    while (e > b && is_whitespace(s[e - 1])) --e;
                return to_utf8(std::u32string_view(s).substr(b, e - b));
            }
        }
        return std::string(text);
    }

    std::string bert(std::string_view text) const {
        std::u32string s = to_u32(text), t;
        if (clean_text) {
            for (char32_t c : s) {
                if (c == 0 || c == replacement_char) continue;
                const bool control = c != '\t' && c != '\n' && c != '\r' && is_other(c);
                if (control) continue;
                t.push_back(is_whitespace(c) ? U' ' : c);
            }
            s.swap(t);
            t.clear();
        }
        if (handle_chinese_chars) {
            for (char32_t c : s) {
                if (is_chinese_char(c)) {
                    t.push_back(U' ');
                    t.push_back(c);
                    t.push_back(U' ');
                } else {
                    t.push_back(c);
                }
            }
            s.swap(t);
            t.clear();
        }
        if (strip_accents) {
            for (char32_t c : nfd(s))
                if (!is_nonspacing_mark(c)) t.push_back(c);
            s.swap(t);
            t.clear();
        }
        if (lowercase) {
            for (char32_t c : s) append_lowercase(t, c);
            s.swap(t);
        }
        return to_utf8(s);
    }
};

/// Reads the normalizer at `path`; `depth` counts the Sequence components around it.
inline Normalizer read_normalizer(const Reader& r, const json& j, const std::string& path, int depth = 0) {
    r.nesting(path, depth);
    const std::string t = r.type(j, path, "normalizer",
                                 {"Sequence", "BertNormalizer", "Lowercase", "StripAccents", "NFC", "NFD", "Replace",
                                  "Prepend", "Strip", "NFKC", "NFKD", "Precompiled", "Nmt"});
    Normalizer n;
    using K = Normalizer::Kind;
    if (t == "NFKC" || t == "NFKD" || t == "Precompiled" || t == "Nmt")
        r.fail(path + ".type", "normalizer \"" + t +
                                   "\" is not supported (it needs compatibility-decomposition or SentencePiece "
                                   "charsmap tables; supported: Sequence, BertNormalizer, Lowercase, StripAccents, "
                                   "NFC, NFD, Replace, Prepend, Strip)");
    if (const auto bare = bare_kind<K>(
            r, j, path, t,
            {{"Lowercase", K::lowercase}, {"StripAccents", K::strip_accents}, {"NFC", K::nfc}, {"NFD", K::nfd}})) {
        n.kind = *bare;
    } else if (t == "Sequence") {
        n.kind = K::sequence;
        r.sequence(j, path, "normalizers", [&](const json& e, const std::string& at) {
            n.children.push_back(read_normalizer(r, e, at, depth + 1));
        });
    } else if (t == "BertNormalizer") {
        r.only(j, path, {"type", "clean_text", "handle_chinese_chars", "strip_accents", "lowercase"});
        n.kind = K::bert;
        n.clean_text = r.opt_bool(j, path, "clean_text", true);
        n.handle_chinese_chars = r.opt_bool(j, path, "handle_chinese_chars", true);
        n.lowercase = r.opt_bool(j, path, "lowercase", true);
        n.strip_accents = r.opt_bool(j, path, "strip_accents", n.lowercase);  // null: follows lowercase
    } else if (t == "Replace") {
        n.kind = K::replace;
        n.replace = read_replace(r, j, path);
    } else if (t == "Prepend") {
        r.only(j, path, {"type", "prepend"});
        n.kind = K::prepend;
        n.content = r.req_string(j, path, "prepend");
    } else {  // Strip
        r.only(j, path, {"type", "strip_left", "strip_right"});
        n.kind = K::strip;
        n.strip_left = r.opt_bool(j, path, "strip_left", true);
        n.strip_right = r.opt_bool(j, path, "strip_right", true);
    }
    return n;
}

}  // namespace distill::data::hf
