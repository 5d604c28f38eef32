#pragma once
/// @file unicode.hpp
/// The Unicode a Hugging Face tokenizer needs without a regular-expression engine: UTF-8 to code
/// points and back, Rust's `char::is_whitespace`, BERT's CJK ranges, simple lowercase, NFD and NFC
/// (tables in unicode_tables.hpp), and GPT-2's byte-level alphabet. The general categories
/// (punctuation, marks, numbers) are PCRE2's answers and live in regex.hpp.

#include <algorithm>
#include <array>
#include <cstdint>
#include <iterator>
#include <string>
#include <string_view>
#include <unordered_map>

#include "distill/data/hf/unicode_tables.hpp"
#include "distill/data/utf8.hpp"

namespace distill::data::hf {

using utf8::append_utf8;
using utf8::next_utf8;
using utf8::replacement_char;

/// Decodes valid UTF-8 (as every string inside the tokenizer is) into code points.
inline std::u32string to_u32(std::string_view s) {
    std::u32string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size();) out.push_back(next_utf8(s, i));
    return out;
}

inline std::string to_utf8(std::u32string_view s) {
    std::string out;
    out.reserve(s.size());
    for (char32_t c : s) append_utf8(out, c);
    return out;
}

inline bool valid_utf8(std::string_view s) {
    for (std::size_t i = 0; i < s.size();) {
        const std::size_t start = i;
        if (next_utf8(s, i) == replacement_char && s.substr(start, i - start) != "\xEF\xBF\xBD") return false;
    }
    return true;
}

/// Rust's `char::is_whitespace` (the White_Space property).
inline bool is_whitespace(char32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
/// BERT's CJK ideograph ranges (the CJK Unified Ideographs blocks and their extensions).
inline bool is_chinese_char(char32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/// Rust's `char::to_lowercase` (simple mapping; U+0130 becomes "i̇", two code points).
inline void append_lowercase(std::u32string& out, char32_t c) {
    if (c < 0x80) {
        out.push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
        return;
    }
    if (c == 0x130) {
        out.push_back(U'i');
        out.push_back(0x307);
        return;
    }
    using tables::lowercase_runs;
    const auto* it = std::upper_bound(std::begin(lowercase_runs), std::end(lowercase_runs), c,
                                      [](char32_t v, const auto& r) { return v < r.first; });
    if (it != std::begin(lowercase_runs)) {
        const auto& r = *(it - 1);
        if (c <= r.last && (c - r.first) % r.stride == 0) {
            out.push_back(static_cast<char32_t>(static_cast<std::int64_t>(c) + r.delta));
            return;
        }
    }
    out.push_back(c);
}

inline std::uint8_t combining_class(char32_t c) {
    if (c < 0x300) return 0;
    using tables::combining_classes;
    const auto* it = std::upper_bound(std::begin(combining_classes), std::end(combining_classes), c,
                                      [](char32_t v, const auto& r) { return v < r.first; });
    if (it == std::begin(combining_classes)) return 0;
    const auto& r = *(it - 1);
    return c <= r.last ? r.ccc : 0;
}

inline constexpr char32_t hangul_s = 0xAC00, hangul_l = 0x1100, hangul_v = 0x1161, hangul_t = 0x11A7;
inline constexpr char32_t hangul_l_count = 19, hangul_v_count = 21, hangul_t_count = 28;
inline constexpr char32_t hangul_n = hangul_v_count * hangul_t_count, hangul_count = hangul_l_count * hangul_n;

/// Appends the full canonical decomposition of `c`.
inline void append_decomposition(std::u32string& out, char32_t c, int depth = 0) {
    if (c >= hangul_s && c < hangul_s + hangul_count) {
        const char32_t s = c - hangul_s;
        out.push_back(hangul_l + s / hangul_n);
        out.push_back(hangul_v + (s % hangul_n) / hangul_t_count);
        if (s % hangul_t_count != 0) out.push_back(hangul_t + s % hangul_t_count);
        return;
    }
    if (c >= 0xC0 && depth < 8) {
        using tables::decompositions;
        const auto* it = std::lower_bound(std::begin(decompositions), std::end(decompositions), c,
                                          [](const auto& d, char32_t v) { return d.cp < v; });
        if (it != std::end(decompositions) && it->cp == c) {
            append_decomposition(out, it->first, depth + 1);
            if (it->second != 0) append_decomposition(out, it->second, depth + 1);
            return;
        }
    }
    out.push_back(c);
}

/// NFD: full canonical decomposition, then canonical ordering of combining marks.
inline std::u32string nfd(std::u32string_view s) {
    std::u32string out;
    out.reserve(s.size());
    for (char32_t c : s) append_decomposition(out, c);
    // canonical ordering: a stable sort of each run of non-starters by combining class
    for (std::size_t i = 0; i < out.size();) {
        if (combining_class(out[i]) == 0) {
            ++i;
            continue;
        }
        std::size_t j = i;
        while (j < out.size() && combining_class(out[j]) != 0) ++j;
        std::stable_sort(out.begin() + static_cast<std::ptrdiff_t>(i), out.begin() + static_cast<std::ptrdiff_t>(j),
                         [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
        i = j;
    }
    return out;
}

/// The primary composite of `a` `b`, or 0.
inline char32_t compose_pair(char32_t a, char32_t b) {
    if (a >= hangul_l && a < hangul_l + hangul_l_count && b >= hangul_v && b < hangul_v + hangul_v_count)
        return hangul_s + ((a - hangul_l) * hangul_v_count + (b - hangul_v)) * hangul_t_count;
    if (a >= hangul_s && a < hangul_s + hangul_count && (a - hangul_s) % hangul_t_count == 0 && b > hangul_t &&
        b < hangul_t + hangul_t_count)
        return a + (b - hangul_t);
    static const std::unordered_map<std::uint64_t, char32_t> pairs = [] {
        std::unordered_map<std::uint64_t, char32_t> m;
        for (const auto& d : tables::decompositions)
            if (d.composes) m.emplace((std::uint64_t{d.first} << 32) | d.second, d.cp);
        return m;
    }();
    const auto it = pairs.find((std::uint64_t{a} << 32) | b);
    return it == pairs.end() ? 0 : it->second;
}

/// NFC: NFD, then canonical composition (UAX #15).
inline std::u32string nfc(std::u32string_view s) {
    std::u32string d = nfd(s);
    if (d.empty()) return d;
    std::size_t starter = 0, out = 1;
    int last_class = combining_class(d[0]) == 0 ? 0 : 256;
    for (std::size_t i = 1; i < d.size(); ++i) {
        const char32_t c = d[i];
        const int cls = combining_class(c);
        const char32_t composite = last_class == 256 ? 0 : compose_pair(d[starter], c);
        if (composite != 0 && (last_class < cls || last_class == 0)) {
            d[starter] = composite;
        } else {
            if (cls == 0) starter = out;
            last_class = cls;
            d[out++] = c;
        }
    }
    d.resize(out);
    return d;
}

/// GPT-2's bytes_to_unicode: every byte as a printable character.
struct ByteAlphabet {
    std::array<std::string, 256> encode{};              // byte -> UTF-8 of its character
    std::unordered_map<char32_t, std::uint8_t> decode;  // character -> byte
    ByteAlphabet() {
        char32_t n = 0;
        for (int b = 0; b < 256; ++b) {
            const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            const char32_t c = printable ? static_cast<char32_t>(b) : 256 + n++;
            append_utf8(encode[static_cast<std::size_t>(b)], c);
            decode.emplace(c, static_cast<std::uint8_t>(b));
        }
    }
};

inline const ByteAlphabet& byte_alphabet() {
    static const ByteAlphabet a;
    return a;
}

}  // namespace distill::data::hf
