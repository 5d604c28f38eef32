#pragma once
/// @file utf8.hpp
/// UTF-8 encoding and lossy decoding, shared by the tokenizers and the pipeline: text a model
/// generates is bytes until it is checked, and a byte-level model may stop in the middle of a
/// character; JSON (synthetic.jsonl, answers, reports) holds only valid UTF-8.

#include <cstddef>
#include <string>
#include <string_view>

namespace distill::utf8 {

/// Appends the UTF-8 encoding of `cp` to `out`.
inline void append_utf8(std::string& out, char32_t cp) {
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

inline constexpr char32_t replacement_char = 0xFFFD;

/// Decodes one code point at `s[pos]`, advancing `pos`. An invalid sequence yields U+FFFD and
/// advances over its maximal subpart (the longest prefix of a valid sequence, at least one byte), the
/// substitution Python's and Rust's lossy decoders make.
inline char32_t next_utf8(std::string_view s, std::size_t& pos) {
    const auto b0 = static_cast<unsigned char>(s[pos]);
    if (b0 < 0x80) {
        ++pos;
        return b0;
    }
    int need = 0;
    char32_t cp = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // the valid range of the second byte
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 1;
        cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 2;
        cp = b0 & 0x0F;
        if (b0 == 0xE0) lo = 0xA0;
        if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 3;
        cp = b0 & 0x07;
        if (b0 == 0xF0) lo = 0x90;
        if (b0 == 0xF4) hi = 0x8F;
    } else {
        ++pos;
        return replacement_char;
    }
    std::size_t p = pos + 1;
    for (int i = 0; i < need; ++i, ++p) {
        if (p >= s.size()) {
            pos = p;
            return replacement_char;
        }
        const auto b = static_cast<unsigned char>(s[p]);
        if (b < lo || b > hi) {
            pos = p;
            return replacement_char;
        }
        lo = 0x80;
        hi = 0xBF;
        cp = (cp << 6) | (b & 0x3F);
    }
    pos = p;
    return cp;
}

/// `s` with each maximal invalid subpart replaced by U+FFFD, as Python's
/// `bytes.decode("utf-8", "replace")` and transformers' `decode` do; valid input is returned as is.
inline std::string make_valid(std::string s) {
    for (std::size_t p = 0; p < s.size();) {
        const std::size_t from = p;
        if (next_utf8(s, p) == replacement_char && s.compare(from, 3, "\xEF\xBF\xBD") != 0) {
            std::string out = s.substr(0, from);  // the valid prefix, then the rest decoded lossily
            for (std::size_t q = from; q < s.size();) append_utf8(out, next_utf8(s, q));
            return out;
        }
    }
    return s;
}

}  // namespace distill::utf8
