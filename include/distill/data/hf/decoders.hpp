#pragma once
/// @file decoders.hpp
/// The `decoder` of a tokenizer.json: Sequence, ByteLevel, Metaspace, ByteFallback, Fuse, Strip,
/// Replace, WordPiece and BPEDecoder, turning tokens back into text as the `tokenizers` package does.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "distill/data/hf/reader.hpp"
#include "distill/data/hf/unicode.hpp"
#include "distill/data/utf8.hpp"

namespace distill::data::hf {

/// One decoder (a Sequence holds its children), applied to the tokens of some ids.
struct Decoder {
    enum class Kind : std::uint8_t {
        sequence,
        byte_level,
        metaspace,
        byte_fallback,
        fuse,
        strip,
        replace,
        wordpiece,
        bpe
    };
    Kind kind = Kind::sequence;
    std::vector<Decoder> children{};
    char32_t content = U' ';
    std::size_t start = 0, stop = 0;
    Replace replace{};
    std::string text{};  // WordPiece's prefix, BPEDecoder's suffix
    bool cleanup = true;
    Metaspace metaspace{};

    static std::string wordpiece_cleanup(std::string s) {
        static constexpr std::array<std::pair<std::string_view, std::string_view>, 11> fixes = {{{" .", "."},
                                                                                                 {" ?", "?"},
                                                                                                 {" !", "!"},
                                                                                                 {" ,", ","},
                                                                                                 {" ' ", "'"},
                                                                                                 {" n't", "n't"},
                                                                                                 {" 'm", "'m"},
                                                                                                 {" do not", " don't"},
                                                                                                 {" 's", "'s"},
                                                                                                 {" 've", "'ve"},
                                                                                                 {" 're", "'re"}}};
        for (const auto& [from, to] : fixes) s = replace_all(s, from, to);
        return s;
    }

    void apply(std::vector<std::string>& tokens) const {
        switch (kind) {
            case Kind::sequence:
                for (const auto& c : children) c.apply(tokens);
                return;
            case Kind::byte_level: {
                const auto& alpha = byte_alphabet();
                std::string bytes;
                for (const auto& t : tokens) {
                    std::string mapped;
                    bool ok = true;
                    for (char32_t c : to_u32(t)) {
                        const auto it = alpha.decode.find(c);
                        if (it == alpha.decode.end()) {
                            ok = false;
                            break;
                        }
                        mapped.push_back(static_cast<char>(it->second));
                    }
                    bytes += ok ? mapped : t;
                }
                tokens.assign(1, utf8::make_valid(std::move(bytes)));  // Rust's String::from_utf8_lossy
                return;
            }
            case Kind::metaspace: {
                const char32_t rep = to_u32(metaspace.replacement)[0];
                for (std::size_t i = 0; i < tokens.size(); ++i) {
                    std::u32string out;
                    for (char32_t c : to_u32(tokens[i])) {
                        if (c != rep)
                            out.push_back(c);
                        else if (!(i == 0 && metaspace.prepend != Prepend::never))
                            out.push_back(U' ');
                    }
                    tokens[i] = to_utf8(out);
                }
                return;
            }
            case Kind::byte_fallback: {
                std::vector<std::string> out;
                std::string pending;
                auto flush = [&] {
                    if (pending.empty()) return;
                    if (valid_utf8(pending))
                        out.push_back(pending);
                    else
                        for (std::size_t k = 0; k < pending.size(); ++k) out.emplace_back("\xEF\xBF\xBD");
                    pending.clear();
                };
                for (auto& t : tokens) {
                    if (const auto b = byte_token_value(t)) {
                        pending.push_back(static_cast<char>(*b));
                    } else {
                        flush();
                        out.push_back(std::move(t));
                    }
                }
                flush();
                tokens.swap(out);
                return;
            }
            case Kind::fuse: {
                std::string all;
                for (const auto& t : tokens) all += t;
                tokens.assign(1, std::move(all));
                return;
            }
            case Kind::strip:
                for (auto& t : tokens) {
                    const std::u32string s = to_u32(t);
                    std::size_t b = 0, e = s.size();
                    for (std::size_t i = 0; i < start && i < s.size() && s[i] == content; ++i) b = i + 1;
                    for (std::size_t i = 0; i < stop && i < s.size() && s[s.size() - 1 - i] == content; ++i)
                        e = s.size() - 1 - i;
                    t = b < e ? to_utf8(std::u32string_view(s).substr(b, e - b)) : std::string();
                }
                return;
            case Kind::replace:
                for (auto& t : tokens) t = replace.apply(t);
                return;
            case Kind::wordpiece:
                for (std::size_t i = 0; i < tokens.size(); ++i) {
                    std::string& t = tokens[i];
                    if (i != 0) {
                        if (t.compare(0, text.size(), text) == 0)
                            t.erase(0, text.size());
                        else
                            t.insert(t.begin(), ' ');
                    }
                    if (cleanup) t = wordpiece_cleanup(std::move(t));
                }
                return;
            case Kind::bpe:
                for (std::size_t i = 0; i < tokens.size(); ++i)
                    tokens[i] = replace_all(tokens[i], text, i + 1 == tokens.size() ? "" : " ");
                return;
        }
    }

    /// The exact bytes one token stands for inside a decoded text (neither its first nor its last
    /// token), before any UTF-8 repair: a byte-level token's bytes and a `<0xNN>` byte-fallback
    /// token's byte stay raw even when they are part of a character. Strip, Fuse and Metaspace's
    /// first-token rule act at the ends of a whole text, so they leave a token inside it unchanged.
    std::string piece(std::string t) const {
        switch (kind) {
            case Kind::sequence:
                for (const auto& c : children) t = c.piece(std::move(t));
                return t;
            case Kind::byte_level: {
                const auto& alpha = byte_alphabet();
                std::string mapped;
                for (char32_t c : to_u32(t)) {
                    const auto it = alpha.decode.find(c);
                    if (it == alpha.decode.end()) return t;  // as apply(): a token outside the alphabet stays
                    mapped.push_back(static_cast<char>(it->second));
                }
                return mapped;
            }
            case Kind::metaspace:
                return replace_all(t, metaspace.replacement, " ");
            case Kind::byte_fallback:
                if (const auto b = byte_token_value(t)) return std::string(1, static_cast<char>(*b));
                return t;
            case Kind::fuse:
            case Kind::strip:
                return t;
            case Kind::replace:
                return valid_utf8(t) ? replace.apply(t) : t;  // a raw partial character holds no text to replace
            case Kind::wordpiece:
                if (t.compare(0, text.size(), text) == 0)
                    t.erase(0, text.size());
                else
                    t.insert(t.begin(), ' ');
                return cleanup ? wordpiece_cleanup(std::move(t)) : t;
            case Kind::bpe:
                return replace_all(t, text, " ");
        }
        return t;
    }

    /// The byte of a `<0xNN>` token (Rust's u8::from_str_radix also takes a leading '+').
    static std::optional<std::uint8_t> byte_token_value(std::string_view t) {
        if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return std::nullopt;
        auto hex = [](char c) -> int {
            if (c >= '0' && c <= '9') return c - '0';
            if (c >= 'a' && c <= 'f') return c - 'a' + 10;
            if (c >= 'A' && c <= 'F') return c - 'A' + 10;
            return -1;
        };
        const int hi = hex(t[3]), lo = hex(t[4]);
        if (t[3] == '+' && lo >= 0) return static_cast<std::uint8_t>(lo);
        if (hi < 0 || lo < 0) return std::nullopt;
        return static_cast<std::uint8_t>(hi * 16 + lo);
    }
};

/// Reads the decoder at `path`; `depth` counts the Sequence components around it.
inline Decoder read_decoder(const Reader& r, const json& j, const std::string& path, int depth = 0) {
    r.nesting(path, depth);
    const std::string t = r.type(
        j, path, "decoder",
        {"Sequence", "ByteLevel", "Metaspace", "ByteFallback", "Fuse", "Strip", "Replace", "WordPiece", "BPEDecoder"});
    Decoder d;
    using K = Decoder::Kind;
    if (const auto bare = bare_kind<K>(r, j, path, t, {{"ByteFallback", K::byte_fallback}, {"Fuse", K::fuse}})) {
        d.kind = *bare;
    } else if (t == "Sequence") {
        r.sequence(j, path, "decoders", [&](const json& e, const std::string& at) {
            d.children.push_back(read_decoder(r, e, at, depth + 1));
        });
    } else if (t == "ByteLevel") {
        r.only(j, path, {"type", "add_prefix_space", "trim_offsets", "use_regex"});
        d.kind = K::byte_level;
    } else if (t == "Metaspace") {
        d.kind = K::metaspace;
        d.metaspace = read_metaspace(r, j, path);
    } else if (t == "Strip") {
        r.only(j, path, {"type", "content", "start", "stop"});
        d.kind = K::strip;
        d.content = r.character(j, path, "content", U' ');
        const json* s = Reader::find(j, "start");
        const json* e = Reader::find(j, "stop");
        d.start = s ? static_cast<std::size_t>(r.integer(*s, path + ".start", 0, 1 << 20)) : 0;
        d.stop = e ? static_cast<std::size_t>(r.integer(*e, path + ".stop", 0, 1 << 20)) : 0;
    } else if (t == "Replace") {
        d.kind = K::replace;
        d.replace = read_replace(r, j, path);
    } else if (t == "WordPiece") {
        r.only(j, path, {"type", "prefix", "cleanup"});
        d.kind = K::wordpiece;
        d.text = r.opt_string(j, path, "prefix", "##");
        d.cleanup = r.opt_bool(j, path, "cleanup", true);
    } else {  // BPEDecoder
        r.only(j, path, {"type", "suffix"});
        d.kind = K::bpe;
        d.text = r.opt_string(j, path, "suffix", "</w>");
    }
    return d;
}

}  // namespace distill::data::hf
