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

#if !__has_include(<pcre2.h>)
#error \
    "distill/data/hf_tokenizer.hpp needs PCRE2: install libpcre2-dev (Debian) and link the CMake target distill::text"
#endif
#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/data/chat_template.hpp"
#include "distill/data/load_chat_template.hpp"
#include "distill/data/utf8.hpp"
#include "distill/data/vocab_alignment.hpp"
#include "distill/detail/hash.hpp"
#include "distill/detail/unicode_tables.hpp"
#include "distill/error.hpp"

namespace distill::data {

namespace hf_detail {

using json = nlohmann::json;

// ---------------------------------------------------------------- UTF-8

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

/// `s` with every invalid UTF-8 subpart replaced by U+FFFD (unchanged when valid).
inline std::string sanitize_utf8(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size();) {
        const std::size_t start = i;
        const char32_t c = next_utf8(s, i);
        if (c == replacement_char && !(i - start == 3 && s.substr(start, 3) == "\xEF\xBF\xBD"))
            append_utf8(out, c);
        else
            out.append(s.substr(start, i - start));
    }
    return out;
}

/// Rust's `String::from_utf8_lossy`.
inline std::string lossy_utf8(std::string_view bytes) {
    return sanitize_utf8(bytes);
}

inline bool valid_utf8(std::string_view s) {
    for (std::size_t i = 0; i < s.size();) {
        const std::size_t start = i;
        if (next_utf8(s, i) == replacement_char && s.substr(start, i - start) != "\xEF\xBF\xBD") return false;
    }
    return true;
}

// ---------------------------------------------------------------- PCRE2

struct CodeDeleter {
    void operator()(pcre2_code_8* c) const noexcept { pcre2_code_free_8(c); }
};
struct MatchDataDeleter {
    void operator()(pcre2_match_data_8* m) const noexcept { pcre2_match_data_free_8(m); }
};
struct MatchContextDeleter {
    void operator()(pcre2_match_context_8* m) const noexcept { pcre2_match_context_free_8(m); }
};

// Bounds on one match, so a pathological pattern from a file fails instead of hanging.
inline constexpr std::uint32_t regex_match_limit = 1'000'000;
inline constexpr std::uint32_t regex_heap_limit_kib = 64 * 1024;

// Oniguruma's (tokenizers' engine) Unicode \s is the White_Space property and its \w is letters, marks,
// decimal digits, connector punctuation and the joiners; PCRE2 10.42's UCP \s also takes U+180E and
// its \w takes every number but no mark. Patterns are rewritten to Oniguruma's sets so the splits agree.
inline constexpr std::string_view onig_space =
    R"(\t\n\x0B\f\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";
inline constexpr std::string_view onig_word = R"(\p{L}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D})";

/// `pattern` with \s, \S, \w and \W replaced by explicit Oniguruma-equivalent classes (inside a
/// character class only the positive forms can be, and are, replaced).
inline std::string oniguruma_compatible(std::string_view pattern) {
    std::string out;
    bool in_class = false;
    std::size_t class_start = 0;
    for (std::size_t i = 0; i < pattern.size(); ++i) {
        const char c = pattern[i];
        if (c == '\\' && i + 1 < pattern.size()) {
            const char n = pattern[i + 1];
            const std::string_view set = n == 's' || n == 'S' ? onig_space : n == 'w' || n == 'W' ? onig_word : "";
            if (!set.empty() && (n == 's' || n == 'w')) {
                out += in_class ? std::string(set) : "[" + std::string(set) + "]";
            } else if (!set.empty() && !in_class) {
                out += "[^" + std::string(set) + "]";
            } else {
                out += c;
                out += n;
            }
            ++i;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            class_start = out.size() + 1;
            out += c;
            if (i + 1 < pattern.size() && pattern[i + 1] == '^') {
                out += '^';
                ++i;
                ++class_start;
            }
            if (i + 1 < pattern.size() && pattern[i + 1] == ']') {  // a leading ] is literal
                out += ']';
                ++i;
            }
            continue;
        }
        if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {  // [:alpha:]
            const auto end = pattern.find(":]", i + 2);
            if (end != std::string_view::npos) {
                out.append(pattern.substr(i, end + 2 - i));
                i = end + 1;
                continue;
            }
        }
        if (in_class && c == ']' && out.size() > class_start) in_class = false;
        out += c;
    }
    return out;
}

/// A compiled PCRE2 pattern in UTF + UCP mode (Unicode properties for \p, \w, \d, \s and case).
class Regex {
public:
    Regex() = default;

    /// Compiles `pattern`; on a syntax error throws config_error naming `where`.
    Regex(std::string_view pattern, const std::string& where) {
        int code = 0;
        PCRE2_SIZE offset = 0;
        const std::string compatible = oniguruma_compatible(pattern);
        pcre2_code_8* c = pcre2_compile_8(reinterpret_cast<PCRE2_SPTR8>(compatible.data()), compatible.size(),
                                          PCRE2_UTF | PCRE2_UCP, &code, &offset, nullptr);
        if (c == nullptr) {
            std::array<PCRE2_UCHAR8, 256> msg{};
            pcre2_get_error_message_8(code, msg.data(), msg.size());
            throw config_error(where, "invalid regular expression at offset " + std::to_string(offset) + ": " +
                                          reinterpret_cast<const char*>(msg.data()));
        }
        code_.reset(c, CodeDeleter{});
        pcre2_match_context_8* ctx = pcre2_match_context_create_8(nullptr);
        if (ctx == nullptr) throw error("PCRE2: out of memory");
        ctx_.reset(ctx, MatchContextDeleter{});
        pcre2_set_match_limit_8(ctx, regex_match_limit);
        pcre2_set_heap_limit_8(ctx, regex_heap_limit_kib);
    }

    explicit operator bool() const noexcept { return code_ != nullptr; }

    /// The non-empty, non-overlapping matches of the pattern in `s` (valid UTF-8), as byte ranges.
    std::vector<std::pair<std::size_t, std::size_t>> find_all(std::string_view s) const {
        std::vector<std::pair<std::size_t, std::size_t>> out;
        std::unique_ptr<pcre2_match_data_8, MatchDataDeleter> md(
            pcre2_match_data_create_from_pattern_8(code_.get(), nullptr));
        if (!md) throw error("PCRE2: out of memory");
        std::size_t at = 0;
        std::uint32_t options = 0;  // the subject is checked for valid UTF-8 once, on the first call
        while (at <= s.size()) {
            const int rc = pcre2_match_8(code_.get(), reinterpret_cast<PCRE2_SPTR8>(s.data()), s.size(), at, options,
                                         md.get(), ctx_.get());
            options = PCRE2_NO_UTF_CHECK;
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc < 0) fail(rc);
            const PCRE2_SIZE* ov = pcre2_get_ovector_pointer_8(md.get());
            const std::size_t b = ov[0], e = ov[1];
            if (e > b) {
                out.emplace_back(b, e);
                at = e;
            } else {  // an empty match: step over one character
                if (b >= s.size()) break;
                std::size_t next = b;
                next_utf8(s, next);
                at = next;
            }
        }
        return out;
    }

    /// Whether the pattern matches at the start of `s` (used for one-character category tests).
    bool matches_at_start(std::string_view s) const {
        std::unique_ptr<pcre2_match_data_8, MatchDataDeleter> md(
            pcre2_match_data_create_from_pattern_8(code_.get(), nullptr));
        if (!md) throw error("PCRE2: out of memory");
        const int rc = pcre2_match_8(code_.get(), reinterpret_cast<PCRE2_SPTR8>(s.data()), s.size(), 0,
                                     PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, md.get(), ctx_.get());
        if (rc == PCRE2_ERROR_NOMATCH) return false;
        if (rc < 0) fail(rc);
        return true;
    }

private:
    [[noreturn]] static void fail(int rc) {
        std::array<PCRE2_UCHAR8, 256> msg{};
        pcre2_get_error_message_8(rc, msg.data(), msg.size());
        throw error(std::string("tokenizer: regular expression failed on the input: ") +
                    reinterpret_cast<const char*>(msg.data()));
    }

    std::shared_ptr<pcre2_code_8> code_{};
    std::shared_ptr<pcre2_match_context_8> ctx_{};
};

// ---------------------------------------------------------------- Unicode properties

/// Whether `c` has the Unicode general category `pattern` (`\p{P}`, ...), asked of PCRE2.
inline bool has_category(const Regex& category, char32_t c) {
    std::string s;
    append_utf8(s, c);
    return category.matches_at_start(s);
}

inline const Regex& category_regex(int which) {
    static const std::array<Regex, 4> regexes = {Regex(R"(\p{P})", "category"), Regex(R"(\p{C})", "category"),
                                                 Regex(R"(\p{Mn})", "category"), Regex(R"(\p{M})", "category")};
    return regexes[static_cast<std::size_t>(which)];
}

/// Rust's `char::is_whitespace` (the White_Space property).
inline bool is_whitespace(char32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
/// BERT's punctuation: ASCII punctuation (incl. symbols such as `$`) or general category P.
inline bool is_bert_punctuation(char32_t c) {
    if (c < 0x80)
        return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
               (c >= 0x7B && c <= 0x7E);
    return has_category(category_regex(0), c);
}
/// General category C (control, format, unassigned, private use, surrogate).
inline bool is_other(char32_t c) {
    if (c < 0x80) return c < 0x20 || c == 0x7F;
    return has_category(category_regex(1), c);
}
/// Rust's `char::is_numeric`: general category N (Nd, Nl, No), what the Digits pre-tokenizer splits.
inline bool is_numeric(char32_t c) {
    if (c < 0x80) return c >= '0' && c <= '9';
    static const Regex numeric(R"(\p{N})", "category");
    return has_category(numeric, c);
}
/// General category Mn (nonspacing mark), what strip_accents removes after NFD.
inline bool is_nonspacing_mark(char32_t c) {
    return c >= 0x300 && has_category(category_regex(2), c);
}
/// General category M (any mark).
inline bool is_mark(char32_t c) {
    return c >= 0x300 && has_category(category_regex(3), c);
}

inline bool is_alphanumeric(char32_t c) {
    static const Regex alnum(R"([\p{L}\p{N}])", "category");
    if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    return has_category(alnum, c);
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
    using detail::unicode::lowercase_runs;
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
    using detail::unicode::combining_classes;
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
        using detail::unicode::decompositions;
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
        for (const auto& d : detail::unicode::decompositions)
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

// ---------------------------------------------------------------- byte-level alphabet

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

// ---------------------------------------------------------------- string helpers

struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using Vocab = std::unordered_map<std::string, std::int32_t, StringHash, std::equal_to<>>;

inline std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
    if (from.empty()) return std::string(s);
    std::string out;
    std::size_t at = 0;
    for (std::size_t f; (f = s.find(from, at)) != std::string_view::npos; at = f + from.size()) {
        out.append(s.substr(at, f - at));
        out.append(to);
    }
    out.append(s.substr(at));
    return out;
}

/// A split of a piece: byte range and whether it is a match of the split pattern.
struct Span {
    std::size_t begin, end;
    bool match;
};

/// How Split and the other pre-tokenizers treat the delimiters they find (tokenizers'
/// SplitDelimiterBehavior).
enum class Behavior : std::uint8_t { removed, isolated, merged_with_previous, merged_with_next, contiguous };

/// Applies `behavior` to the alternating matches/non-matches of a piece (tokenizers' semantics);
/// returns the byte ranges of the resulting non-empty parts.
inline std::vector<std::pair<std::size_t, std::size_t>> apply_behavior(std::vector<Span> spans, Behavior behavior) {
    std::vector<Span> acc;
    switch (behavior) {
        case Behavior::removed:
            for (const auto& s : spans)
                if (!s.match) acc.push_back(s);
            break;
        case Behavior::isolated:
            acc = std::move(spans);
            break;
        case Behavior::merged_with_previous: {
            bool previous_match = false;
            for (const auto& s : spans) {
                if (s.match && !previous_match) {
                    if (!acc.empty())
                        acc.back().end = s.end;
                    else
                        acc.push_back({s.begin, s.end, true});
                } else {
                    acc.push_back({s.begin, s.end, false});
                }
                previous_match = s.match;
            }
            break;
        }
        case Behavior::merged_with_next: {
            bool previous_match = false;
            for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
                if (it->match && !previous_match) {
                    if (!acc.empty())
                        acc.back().begin = it->begin;
                    else
                        acc.push_back({it->begin, it->end, true});
                } else {
                    acc.push_back({it->begin, it->end, false});
                }
                previous_match = it->match;
            }
            std::reverse(acc.begin(), acc.end());
            break;
        }
        case Behavior::contiguous: {
            bool previous_match = false;
            for (const auto& s : spans) {
                if (s.match == previous_match) {
                    if (!acc.empty())
                        acc.back().end = s.end;
                    else
                        acc.push_back({s.begin, s.end, false});
                } else {
                    acc.push_back({s.begin, s.end, false});
                }
                previous_match = s.match;
            }
            break;
        }
    }
    std::vector<std::pair<std::size_t, std::size_t>> out;
    for (const auto& s : acc)
        if (s.end > s.begin) out.emplace_back(s.begin, s.end);
    return out;
}

/// Matches and gaps of a character predicate: every matching character is its own match.
template <class Pred>
std::vector<Span> char_spans(std::string_view s, Pred pred) {
    std::vector<Span> out;
    if (s.empty()) return {{0, 0, false}};
    std::size_t last = 0;
    for (std::size_t i = 0; i < s.size();) {
        const std::size_t b = i;
        const char32_t c = next_utf8(s, i);
        if (pred(c)) {
            if (last < b) out.push_back({last, b, false});
            out.push_back({b, i, true});
            last = i;
        }
    }
    if (last < s.size()) out.push_back({last, s.size(), false});
    return out;
}

/// Matches and gaps of a list of match ranges.
inline std::vector<Span> range_spans(std::size_t size, const std::vector<std::pair<std::size_t, std::size_t>>& m) {
    if (size == 0) return {{0, 0, false}};
    std::vector<Span> out;
    std::size_t prev = 0;
    for (const auto& [b, e] : m) {
        if (prev != b) out.push_back({prev, b, false});
        out.push_back({b, e, true});
        prev = e;
    }
    if (prev != size) out.push_back({prev, size, false});
    return out;
}

/// Matches and gaps of a literal string (all non-overlapping occurrences).
inline std::vector<std::pair<std::size_t, std::size_t>> literal_matches(std::string_view s, std::string_view lit) {
    std::vector<std::pair<std::size_t, std::size_t>> out;
    if (lit.empty()) return out;
    for (std::size_t at = 0, f; (f = s.find(lit, at)) != std::string_view::npos; at = f + lit.size())
        out.emplace_back(f, f + lit.size());
    return out;
}

/// A piece of the text on its way through the pipeline: its (normalized) text, whether it begins at
/// offset 0 of the original text (Metaspace's prepend_scheme "first"), and the id when it is an added
/// token (then it skips the rest of the pipeline).
struct Piece {
    std::string text;
    bool at_start = false;
    std::int32_t token = -1;
};

// ---------------------------------------------------------------- JSON access with paths

/// Reads a tokenizer.json, naming the file and the JSON path in every error.
class Reader {
public:
    explicit Reader(std::string file) : file_(std::move(file)) {}

    const std::string& file() const noexcept { return file_; }

    [[noreturn]] void fail(const std::string& path, const std::string& what) const {
        throw config_error(file_ + ":" + (!path.empty() && path[0] == '.' ? path.substr(1) : path), what);
    }

    static std::string type_name(const json& j) {
        if (j.is_number_integer()) return "an integer";
        if (j.is_number()) return "a number";
        const std::string n = j.type_name();
        return (n[0] == 'a' || n[0] == 'o' ? "an " : "a ") + n;
    }

    const json& object(const json& j, const std::string& path) const {
        if (!j.is_object()) fail(path, "must be an object, got " + type_name(j));
        return j;
    }
    const json& array(const json& j, const std::string& path) const {
        if (!j.is_array()) fail(path, "must be an array, got " + type_name(j));
        return j;
    }
    std::string string(const json& j, const std::string& path) const {
        if (!j.is_string()) fail(path, "must be a string, got " + type_name(j));
        return j.get<std::string>();
    }
    bool boolean(const json& j, const std::string& path) const {
        if (!j.is_boolean()) fail(path, "must be a boolean, got " + type_name(j));
        return j.get<bool>();
    }
    std::int64_t integer(const json& j, const std::string& path, std::int64_t lo, std::int64_t hi) const {
        if (!j.is_number_integer()) fail(path, "must be an integer, got " + type_name(j));
        const std::int64_t v = j.is_number_unsigned() && j.get<std::uint64_t>() > std::uint64_t{INT64_MAX}
                                   ? INT64_MAX
                                   : j.get<std::int64_t>();
        if (v < lo || v > hi)
            fail(path, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + j.dump());
        return v;
    }

    // Optional fields: absent or null gives the default.
    static const json* find(const json& obj, const char* key) {
        const auto it = obj.find(key);
        return it == obj.end() || it->is_null() ? nullptr : &*it;
    }
    bool opt_bool(const json& obj, const std::string& path, const char* key, bool dflt) const {
        const json* v = find(obj, key);
        return v ? boolean(*v, path + "." + key) : dflt;
    }
    std::string opt_string(const json& obj, const std::string& path, const char* key, std::string dflt) const {
        const json* v = find(obj, key);
        return v ? string(*v, path + "." + key) : dflt;
    }
    std::string req_string(const json& obj, const std::string& path, const char* key) const {
        const json* v = find(obj, key);
        if (!v) fail(path + "." + key, "missing");
        return string(*v, path + "." + key);
    }
    /// A single character field (Metaspace's replacement, Strip's content).
    char32_t character(const json& obj, const std::string& path, const char* key, char32_t dflt) const {
        const json* v = find(obj, key);
        if (!v) return dflt;
        const std::u32string s = to_u32(string(*v, path + "." + key));
        if (s.size() != 1) fail(path + "." + key, "must be a single character, got " + v->dump());
        return s[0];
    }
    /// The "type" of a component, checked against the supported ones.
    std::string type(const json& j, const std::string& path, const char* what,
                     std::initializer_list<std::string_view> supported) const {
        object(j, path);
        const json* t = find(j, "type");
        if (!t) fail(path + ".type", std::string("missing: the ") + what + " type");
        const std::string name = string(*t, path + ".type");
        if (std::find(supported.begin(), supported.end(), name) == supported.end()) {
            std::string list;
            for (auto s : supported) list += (list.empty() ? "" : ", ") + std::string(s);
            fail(path + ".type", std::string("unsupported ") + what + " \"" + name + "\" (supported: " + list + ")");
        }
        return name;
    }
    /// Rejects keys outside `known`, so an option distill does not implement is never ignored.
    void only(const json& obj, const std::string& path, std::initializer_list<std::string_view> known) const {
        for (auto it = obj.begin(); it != obj.end(); ++it)
            if (std::find(known.begin(), known.end(), it.key()) == known.end())
                fail(path + "." + it.key(), "unsupported field (this tokenizer component is supported without it)");
    }

private:
    std::string file_;
};

// Nesting bound for Sequence components, so a hostile file cannot exhaust the stack.
inline constexpr int max_nesting = 16;
// Bounds on what a file may ask for.
inline constexpr std::int64_t max_token_id = (std::int64_t{1} << 24) - 1;
inline constexpr std::size_t max_token_bytes = 1 << 16;

/// A Split/Replace pattern: a literal string or a regular expression.
struct Pattern {
    std::string literal;
    Regex regex;
    bool is_regex = false;

    std::vector<std::pair<std::size_t, std::size_t>> find(std::string_view s) const {
        return is_regex ? regex.find_all(s) : literal_matches(s, literal);
    }
    std::string replace(std::string_view s, std::string_view content) const {
        if (!is_regex) return replace_all(s, literal, content);
        std::string out;
        std::size_t at = 0;
        for (const auto& [b, e] : regex.find_all(s)) {
            out.append(s.substr(at, b - at));
            out.append(content);
            at = e;
        }
        out.append(s.substr(at));
        return out;
    }
};

inline Pattern read_pattern(const Reader& r, const json& j, const std::string& path) {
    r.object(j, path);
    Pattern p;
    if (const json* s = Reader::find(j, "String")) {
        p.literal = r.string(*s, path + ".String");
    } else if (const json* re = Reader::find(j, "Regex")) {
        p.regex = Regex(r.string(*re, path + ".Regex"), r.file() + ":" + path + ".Regex");
        p.is_regex = true;
    } else {
        r.fail(path, "must be {\"String\": ...} or {\"Regex\": ...}");
    }
    if (j.size() != 1) r.fail(path, "must have exactly one of \"String\" and \"Regex\"");
    return p;
}

// ---------------------------------------------------------------- normalizers

struct Normalizer {
    enum class Kind : std::uint8_t { sequence, bert, lowercase, strip_accents, nfc, nfd, replace, prepend, strip };
    Kind kind = Kind::sequence;
    std::vector<Normalizer> children{};
    bool clean_text = true, handle_chinese_chars = true, strip_accents = false, lowercase = false;
    bool strip_left = false, strip_right = false;
    Pattern pattern{};
    std::string content{};

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
                return pattern.replace(text, content);
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

inline Normalizer read_normalizer(const Reader& r, const json& j, const std::string& path, int depth = 0) {
    if (depth > max_nesting) r.fail(path, "nested too deeply (at most " + std::to_string(max_nesting) + " levels)");
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
    if (t == "Sequence") {
        r.only(j, path, {"type", "normalizers"});
        n.kind = K::sequence;
        const json* list = Reader::find(j, "normalizers");
        if (!list) r.fail(path + ".normalizers", "missing");
        r.array(*list, path + ".normalizers");
        for (std::size_t i = 0; i < list->size(); ++i)
            n.children.push_back(
                read_normalizer(r, (*list)[i], path + ".normalizers[" + std::to_string(i) + "]", depth + 1));
    } else if (t == "BertNormalizer") {
        r.only(j, path, {"type", "clean_text", "handle_chinese_chars", "strip_accents", "lowercase"});
        n.kind = K::bert;
        n.clean_text = r.opt_bool(j, path, "clean_text", true);
        n.handle_chinese_chars = r.opt_bool(j, path, "handle_chinese_chars", true);
        n.lowercase = r.opt_bool(j, path, "lowercase", true);
        n.strip_accents = r.opt_bool(j, path, "strip_accents", n.lowercase);  // null: follows lowercase
    } else if (t == "Lowercase") {
        r.only(j, path, {"type"});
        n.kind = K::lowercase;
    } else if (t == "StripAccents") {
        r.only(j, path, {"type"});
        n.kind = K::strip_accents;
    } else if (t == "NFC") {
        r.only(j, path, {"type"});
        n.kind = K::nfc;
    } else if (t == "NFD") {
        r.only(j, path, {"type"});
        n.kind = K::nfd;
    } else if (t == "Replace") {
        r.only(j, path, {"type", "pattern", "content"});
        n.kind = K::replace;
        const json* p = Reader::find(j, "pattern");
        if (!p) r.fail(path + ".pattern", "missing");
        n.pattern = read_pattern(r, *p, path + ".pattern");
        n.content = r.req_string(j, path, "content");
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

// ---------------------------------------------------------------- pre-tokenizers

inline const char* gpt2_pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class Prepend : std::uint8_t { always, first, never };

struct PreTokenizer {
    enum class Kind : std::uint8_t {
        sequence,
        byte_level,
        split,
        metaspace,
        digits,
        bert,
        whitespace,
        whitespace_split,
        punctuation
    };
    Kind kind = Kind::sequence;
    std::vector<PreTokenizer> children{};
    bool add_prefix_space = false, use_regex = true, invert = false, individual_digits = false, split = true;
    Pattern pattern{};
    Regex regex{};
    Behavior behavior = Behavior::isolated;
    std::string replacement{};
    Prepend prepend = Prepend::always;

    /// Splits every piece without a token id further (tokenizers' PreTokenizedString::split).
    void apply(std::vector<Piece>& pieces) const {
        if (kind == Kind::sequence) {
            for (const auto& c : children) c.apply(pieces);
            return;
        }
        std::vector<Piece> out;
        out.reserve(pieces.size());
        for (auto& p : pieces) {
            if (p.token >= 0) {
                out.push_back(std::move(p));
                continue;
            }
            split_one(p, out);
        }
        pieces.swap(out);
    }

    void split_one(Piece& p, std::vector<Piece>& out) const {
        std::string text = std::move(p.text);
        std::vector<std::pair<std::size_t, std::size_t>> parts;
        switch (kind) {
            case Kind::byte_level: {
                if (add_prefix_space && (text.empty() || text[0] != ' ')) text.insert(text.begin(), ' ');
                if (use_regex)
                    parts = apply_behavior(range_spans(text.size(), regex.find_all(text)), Behavior::isolated);
                else if (!text.empty())
                    parts = {{0, text.size()}};
                break;
            }
            case Kind::split: {
                std::vector<Span> spans = range_spans(text.size(), pattern.find(text));
                if (invert)
                    for (auto& s : spans) s.match = !s.match;
                parts = apply_behavior(std::move(spans), behavior);
                break;
            }
            case Kind::metaspace: {
                text = replace_all(text, " ", replacement);
                const bool starts = text.compare(0, replacement.size(), replacement) == 0;
                if (!starts && (prepend == Prepend::always || (prepend == Prepend::first && p.at_start)))
                    text = replacement + text;
                if (split) {
                    parts = apply_behavior(range_spans(text.size(), literal_matches(text, replacement)),
                                           Behavior::merged_with_next);
                } else if (!text.empty()) {
                    parts = {{0, text.size()}};
                }
                break;
            }
            case Kind::digits:
                parts = apply_behavior(char_spans(text, is_numeric),
                                       individual_digits ? Behavior::isolated : Behavior::contiguous);
                break;
            case Kind::bert: {
                // whitespace removed, then punctuation isolated
                for (const auto& [b, e] : apply_behavior(char_spans(text, is_whitespace), Behavior::removed)) {
                    const std::string_view w = std::string_view(text).substr(b, e - b);
                    for (const auto& [b2, e2] : apply_behavior(char_spans(w, is_bert_punctuation), Behavior::isolated))
                        parts.emplace_back(b + b2, b + e2);
                }
                break;
            }
            case Kind::whitespace: {
                std::vector<Span> spans = range_spans(text.size(), regex.find_all(text));
                for (auto& s : spans) s.match = !s.match;
                parts = apply_behavior(std::move(spans), Behavior::removed);
                break;
            }
            case Kind::whitespace_split:
                parts = apply_behavior(char_spans(text, is_whitespace), Behavior::removed);
                break;
            case Kind::punctuation:
                parts = apply_behavior(char_spans(text, is_bert_punctuation), behavior);
                break;
            case Kind::sequence:
                break;
        }
        if (kind == Kind::byte_level) {  // every byte as its printable character
            const auto& alpha = byte_alphabet();
            for (const auto& [b, e] : parts) {
                std::string mapped;
                for (std::size_t k = b; k < e; ++k) mapped += alpha.encode[static_cast<unsigned char>(text[k])];
                out.push_back({std::move(mapped), p.at_start && b == 0, -1});
            }
            return;
        }
        for (const auto& [b, e] : parts) out.push_back({text.substr(b, e - b), p.at_start && b == 0, -1});
    }
};

inline Behavior read_behavior(const Reader& r, const json& obj, const std::string& path, Behavior dflt) {
    const json* v = Reader::find(obj, "behavior");
    if (!v) return dflt;
    const std::string b = r.string(*v, path + ".behavior");
    if (b == "Removed") return Behavior::removed;
    if (b == "Isolated") return Behavior::isolated;
    if (b == "MergedWithPrevious") return Behavior::merged_with_previous;
    if (b == "MergedWithNext") return Behavior::merged_with_next;
    if (b == "Contiguous") return Behavior::contiguous;
    r.fail(path + ".behavior", "unknown behavior \"" + b +
                                   "\" (supported: Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous)");
}

inline Prepend read_prepend_scheme(const Reader& r, const json& j, const std::string& path) {
    if (const json* v = Reader::find(j, "prepend_scheme")) {
        const std::string s = r.string(*v, path + ".prepend_scheme");
        if (s == "always") return Prepend::always;
        if (s == "first") return Prepend::first;
        if (s == "never") return Prepend::never;
        r.fail(path + ".prepend_scheme", "unknown prepend_scheme \"" + s + "\" (supported: always, first, never)");
    }
    return r.opt_bool(j, path, "add_prefix_space", true) ? Prepend::always : Prepend::never;  // the older form
}

inline PreTokenizer read_pre_tokenizer(const Reader& r, const json& j, const std::string& path, int depth = 0) {
    if (depth > max_nesting) r.fail(path, "nested too deeply (at most " + std::to_string(max_nesting) + " levels)");
    const std::string t = r.type(j, path, "pre-tokenizer",
                                 {"Sequence", "ByteLevel", "Split", "Metaspace", "Digits", "BertPreTokenizer",
                                  "Whitespace", "WhitespaceSplit", "Punctuation"});
    PreTokenizer p;
    using K = PreTokenizer::Kind;
    if (t == "Sequence") {
        r.only(j, path, {"type", "pretokenizers"});
        const json* list = Reader::find(j, "pretokenizers");
        if (!list) r.fail(path + ".pretokenizers", "missing");
        r.array(*list, path + ".pretokenizers");
        for (std::size_t i = 0; i < list->size(); ++i)
            p.children.push_back(
                read_pre_tokenizer(r, (*list)[i], path + ".pretokenizers[" + std::to_string(i) + "]", depth + 1));
    } else if (t == "ByteLevel") {
        r.only(j, path, {"type", "add_prefix_space", "trim_offsets", "use_regex"});
        p.kind = K::byte_level;
        p.add_prefix_space = r.opt_bool(j, path, "add_prefix_space", true);
        p.use_regex = r.opt_bool(j, path, "use_regex", true);
        (void)r.opt_bool(j, path, "trim_offsets", true);  // offsets only; distill returns ids
        if (p.use_regex) p.regex = Regex(gpt2_pattern, "ByteLevel");
    } else if (t == "Split") {
        r.only(j, path, {"type", "pattern", "behavior", "invert"});
        p.kind = K::split;
        const json* pat = Reader::find(j, "pattern");
        if (!pat) r.fail(path + ".pattern", "missing");
        p.pattern = read_pattern(r, *pat, path + ".pattern");
        p.behavior = read_behavior(r, j, path, Behavior::removed);
        if (!Reader::find(j, "behavior")) r.fail(path + ".behavior", "missing");
        p.invert = r.opt_bool(j, path, "invert", false);
    } else if (t == "Metaspace") {
        r.only(j, path, {"type", "replacement", "prepend_scheme", "split", "add_prefix_space", "str_rep"});
        p.kind = K::metaspace;
        std::string rep;
        append_utf8(rep, r.character(j, path, "replacement", 0x2581));
        p.replacement = rep;
        p.prepend = read_prepend_scheme(r, j, path);
        p.split = r.opt_bool(j, path, "split", true);
    } else if (t == "Digits") {
        r.only(j, path, {"type", "individual_digits"});
        p.kind = K::digits;
        p.individual_digits = r.opt_bool(j, path, "individual_digits", false);
    } else if (t == "BertPreTokenizer") {
        r.only(j, path, {"type"});
        p.kind = K::bert;
    } else if (t == "Whitespace") {
        r.only(j, path, {"type"});
        p.kind = K::whitespace;
        p.regex = Regex(R"([\p{L}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}]+|[^\p{L}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}\s]+)",
                        "Whitespace");
    } else if (t == "WhitespaceSplit") {
        r.only(j, path, {"type"});
        p.kind = K::whitespace_split;
    } else {  // Punctuation
        r.only(j, path, {"type", "behavior"});
        p.kind = K::punctuation;
        p.behavior = read_behavior(r, j, path, Behavior::isolated);
    }
    return p;
}

// ---------------------------------------------------------------- decoders

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
    Pattern pattern{};
    std::string text{};  // Replace's content, WordPiece's prefix, BPEDecoder's suffix, Metaspace's replacement
    bool cleanup = true;
    Prepend prepend = Prepend::always;

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
                tokens.assign(1, lossy_utf8(bytes));
                return;
            }
            case Kind::metaspace: {
                const char32_t rep = to_u32(text)[0];
                for (std::size_t i = 0; i < tokens.size(); ++i) {
                    std::u32string out;
                    for (char32_t c : to_u32(tokens[i])) {
                        if (c != rep)
                            out.push_back(c);
                        else if (!(i == 0 && prepend != Prepend::never))
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
                for (auto& t : tokens) t = pattern.replace(t, text);
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

inline Decoder read_decoder(const Reader& r, const json& j, const std::string& path, int depth = 0) {
    if (depth > max_nesting) r.fail(path, "nested too deeply (at most " + std::to_string(max_nesting) + " levels)");
    const std::string t = r.type(
        j, path, "decoder",
        {"Sequence", "ByteLevel", "Metaspace", "ByteFallback", "Fuse", "Strip", "Replace", "WordPiece", "BPEDecoder"});
    Decoder d;
    using K = Decoder::Kind;
    if (t == "Sequence") {
        r.only(j, path, {"type", "decoders"});
        const json* list = Reader::find(j, "decoders");
        if (!list) r.fail(path + ".decoders", "missing");
        r.array(*list, path + ".decoders");
        for (std::size_t i = 0; i < list->size(); ++i)
            d.children.push_back(read_decoder(r, (*list)[i], path + ".decoders[" + std::to_string(i) + "]", depth + 1));
    } else if (t == "ByteLevel") {
        r.only(j, path, {"type", "add_prefix_space", "trim_offsets", "use_regex"});
        d.kind = K::byte_level;
    } else if (t == "Metaspace") {
        r.only(j, path, {"type", "replacement", "prepend_scheme", "split", "add_prefix_space", "str_rep"});
        d.kind = K::metaspace;
        append_utf8(d.text, r.character(j, path, "replacement", 0x2581));
        d.prepend = read_prepend_scheme(r, j, path);
    } else if (t == "ByteFallback") {
        r.only(j, path, {"type"});
        d.kind = K::byte_fallback;
    } else if (t == "Fuse") {
        r.only(j, path, {"type"});
        d.kind = K::fuse;
    } else if (t == "Strip") {
        r.only(j, path, {"type", "content", "start", "stop"});
        d.kind = K::strip;
        d.content = r.character(j, path, "content", U' ');
        const json* s = Reader::find(j, "start");
        const json* e = Reader::find(j, "stop");
        d.start = s ? static_cast<std::size_t>(r.integer(*s, path + ".start", 0, 1 << 20)) : 0;
        d.stop = e ? static_cast<std::size_t>(r.integer(*e, path + ".stop", 0, 1 << 20)) : 0;
    } else if (t == "Replace") {
        r.only(j, path, {"type", "pattern", "content"});
        d.kind = K::replace;
        const json* p = Reader::find(j, "pattern");
        if (!p) r.fail(path + ".pattern", "missing");
        d.pattern = read_pattern(r, *p, path + ".pattern");
        d.text = r.req_string(j, path, "content");
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

// ---------------------------------------------------------------- post-processors

/// The single-sequence part of a post-processor: ids before and after the sequence.
struct PostProcessor {
    std::vector<std::int32_t> before{}, after{};
};

}  // namespace hf_detail

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
    const std::string& model_type() const noexcept { return model_type_; }

    /// The ids of `text` (UTF-8; invalid sequences are read as U+FFFD), with the post-processor's
    /// special tokens (e.g. BOS) when `add_special_tokens` is set.
    std::vector<std::int32_t> encode(std::string_view text, bool add_special_tokens = true) const {
        using namespace hf_detail;
        std::vector<Piece> pieces = split_added(sanitize_utf8(text));
        if (pre_tokenizer_) pre_tokenizer_->apply(pieces);
        std::vector<std::int32_t> ids;
        if (add_special_tokens) ids = post_.before;
        for (const auto& p : pieces) {
            if (p.token >= 0)
                ids.push_back(p.token);
            else
                tokenize(p.text, ids);
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
            if (skip_special_tokens && special_ids_.count(id)) continue;
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
        if (const auto it = added_.find(token); it != added_.end()) return it->second;
        if (const auto it = vocab_.find(token); it != vocab_.end()) return it->second;
        return std::nullopt;
    }

    /// The token of an id, if the id has one.
    std::optional<std::string> id_to_token(std::int32_t id) const {
        const std::string* t = token_of(id);
        return t ? std::optional<std::string>(*t) : std::nullopt;
    }

    /// Whether `id` has a token (model vocabulary or added token).
    bool has_id(std::int32_t id) const noexcept { return token_of(id) != nullptr; }

    /// Whether `id` is a special added token (skipped by `decode(ids, true)`).
    bool is_special(std::int32_t id) const { return special_ids_.count(id) != 0; }

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

    /// The chat template recognized from `chat_template()` (data/chat_template.hpp), with this
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

    struct AddedToken {
        std::string content;  // as written
        std::string match;    // what is searched for: content, or content normalized
        std::int32_t id = -1;
        bool special = false, single_word = false, lstrip = false, rstrip = false, normalized = false;
    };

    // ------------------------------------------------------------ loading

    void load(const std::string& text, const std::string& file, const std::optional<std::string>& config,
              const std::string& config_file) {
        using namespace hf_detail;
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
        const json* model = Reader::find(j, "model");
        if (!model) r.fail("model", "missing");
        read_model(r, *model);
        if (const json* n = Reader::find(j, "normalizer")) normalizer_ = read_normalizer(r, *n, "normalizer");
        if (const json* p = Reader::find(j, "pre_tokenizer"))
            pre_tokenizer_ = read_pre_tokenizer(r, *p, "pre_tokenizer");
        if (const json* d = Reader::find(j, "decoder")) decoder_ = read_decoder(r, *d, "decoder");
        if (const json* a = Reader::find(j, "added_tokens")) read_added_tokens(r, *a);
        build_id_table(r);
        if (const json* p = Reader::find(j, "post_processor")) read_post_processor(r, *p, "post_processor", 0);
        for (std::int32_t id : post_.before) check_id(r, "post_processor", id);
        for (std::int32_t id : post_.after) check_id(r, "post_processor", id);
        pipeline_ = detail::sha256_hex((j.contains("normalizer") ? j["normalizer"].dump() : "null") + "\n" +
                                       (j.contains("pre_tokenizer") ? j["pre_tokenizer"].dump() : "null") + "\n" +
                                       j["model"].dump());
        std::string fingerprint = detail::sha256_hex(text);
        if (config) {
            read_config(*config, config_file);
            fingerprint = detail::sha256_hex(fingerprint + detail::sha256_hex(*config));
        }
        if (!unk_ && !model_unk_.empty()) unk_ = token_to_id(model_unk_);
        id_ = "hf-" + fingerprint.substr(0, 16);
    }

    void check_id(const hf_detail::Reader& r, const std::string& path, std::int32_t id) const {
        if (token_of(id) == nullptr)
            r.fail(path, "special token id " + std::to_string(id) + " is not in the vocabulary (" +
                             std::to_string(vocab_size()) + " ids)");
    }

    void read_vocab(const hf_detail::Reader& r, const hf_detail::json& v, const std::string& path) {
        r.object(v, path);
        vocab_.reserve(v.size());
        for (auto it = v.begin(); it != v.end(); ++it) {
            const std::string p = path + "[\"" + it.key().substr(0, 40) + "\"]";
            const auto id = static_cast<std::int32_t>(r.integer(it.value(), p, 0, hf_detail::max_token_id));
            if (it.key().size() > hf_detail::max_token_bytes) r.fail(p, "token longer than 65536 bytes");
            vocab_.emplace(it.key(), id);
        }
    }

    void read_model(const hf_detail::Reader& r, const hf_detail::json& m) {
        using namespace hf_detail;
        model_type_ = r.type(m, "model", "model type", {"BPE", "WordPiece", "WordLevel", "Unigram"});
        if (model_type_ == "Unigram")
            r.fail("model.type",
                   "unsupported model type \"Unigram\" (supported: BPE, WordPiece, WordLevel); SentencePiece "
                   "unigram models such as T5's are not implemented");
        if (model_type_ == "BPE") {
            r.only(m, "model",
                   {"type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk",
                    "byte_fallback", "ignore_merges", "vocab", "merges"});
            if (const json* d = Reader::find(m, "dropout"))
                if (!d->is_number() || d->get<double>() != 0.0)
                    r.fail("model.dropout", "BPE dropout is not supported (it makes encoding random); set it to null");
            model_unk_ = r.opt_string(m, "model", "unk_token", "");
            prefix_ = r.opt_string(m, "model", "continuing_subword_prefix", "");
            suffix_ = r.opt_string(m, "model", "end_of_word_suffix", "");
            fuse_unk_ = r.opt_bool(m, "model", "fuse_unk", false);
            byte_fallback_ = r.opt_bool(m, "model", "byte_fallback", false);
            ignore_merges_ = r.opt_bool(m, "model", "ignore_merges", false);
            const json* v = Reader::find(m, "vocab");
            if (!v) r.fail("model.vocab", "missing");
            read_vocab(r, *v, "model.vocab");
            const json* merges = Reader::find(m, "merges");
            if (merges) read_merges(r, *merges);
        } else if (model_type_ == "WordPiece") {
            r.only(m, "model", {"type", "unk_token", "continuing_subword_prefix", "max_input_chars_per_word", "vocab"});
            model_unk_ = r.opt_string(m, "model", "unk_token", "[UNK]");
            prefix_ = r.opt_string(m, "model", "continuing_subword_prefix", "##");
            if (const json* x = Reader::find(m, "max_input_chars_per_word"))
                max_chars_ = static_cast<std::size_t>(r.integer(*x, "model.max_input_chars_per_word", 0, INT32_MAX));
            const json* v = Reader::find(m, "vocab");
            if (!v) r.fail("model.vocab", "missing");
            read_vocab(r, *v, "model.vocab");
        } else {
            r.only(m, "model", {"type", "unk_token", "vocab"});
            model_unk_ = r.opt_string(m, "model", "unk_token", "<unk>");
            const json* v = Reader::find(m, "vocab");
            if (!v) r.fail("model.vocab", "missing");
            read_vocab(r, *v, "model.vocab");
        }
        if (!model_unk_.empty() && model_type_ != "BPE" && !vocab_.count(model_unk_))
            r.fail("model.unk_token", "\"" + model_unk_ + "\" is not in the vocabulary");
    }

    void read_merges(const hf_detail::Reader& r, const hf_detail::json& merges) {
        using namespace hf_detail;
        r.array(merges, "model.merges");
        merges_.reserve(merges.size());
        for (std::size_t i = 0; i < merges.size(); ++i) {
            const std::string p = "model.merges[" + std::to_string(i) + "]";
            const json& e = merges[i];
            std::string a, b;
            if (e.is_string()) {  // the older "a b" form
                const std::string s = e.get<std::string>();
                const auto sp = s.find(' ');
                if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
                    r.fail(p, "must be two tokens separated by one space, got \"" + s.substr(0, 80) + "\"");
                a = s.substr(0, sp);
                b = s.substr(sp + 1);
            } else if (e.is_array() && e.size() == 2) {
                a = r.string(e[0], p + "[0]");
                b = r.string(e[1], p + "[1]");
            } else {
                r.fail(p, "must be \"a b\" or [\"a\", \"b\"], got " + Reader::type_name(e));
            }
            const auto ia = vocab_.find(a), ib = vocab_.find(b);
            if (ia == vocab_.end()) r.fail(p, "merge token \"" + a.substr(0, 80) + "\" is not in the vocabulary");
            if (ib == vocab_.end()) r.fail(p, "merge token \"" + b.substr(0, 80) + "\" is not in the vocabulary");
            const std::string merged =
                a + (prefix_.empty() || b.compare(0, prefix_.size(), prefix_) != 0 ? b : b.substr(prefix_.size()));
            const auto im = vocab_.find(merged);
            if (im == vocab_.end())
                r.fail(p, "the merged token \"" + merged.substr(0, 80) + "\" is not in the vocabulary");
            // a repeated pair keeps its last rank, as tokenizers' map does
            merges_[pair_key(ia->second, ib->second)] = {static_cast<std::int32_t>(i), im->second};
        }
    }

    void read_added_tokens(const hf_detail::Reader& r, const hf_detail::json& list) {
        using namespace hf_detail;
        r.array(list, "added_tokens");
        for (std::size_t i = 0; i < list.size(); ++i) {
            const std::string p = "added_tokens[" + std::to_string(i) + "]";
            const json& e = list[i];
            r.object(e, p);
            r.only(e, p, {"id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"});
            AddedToken t;
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
            if (const auto it = added_.find(t.content); it != added_.end()) {
                t.id = it->second;
                for (auto& old : added_list_)
                    if (old.content == t.content) old = t;
                if (t.special) special_ids_.insert(t.id);
                continue;
            }
            if (const auto it = vocab_.find(t.content); it != vocab_.end()) {
                t.id = it->second;
            } else {
                // tokenizers: the model's vocabulary size, or one past the largest added id at or above it
                const auto model_size = static_cast<std::int32_t>(vocab_.size());
                std::int32_t max_added = -1;
                for (const auto& a : added_list_) max_added = std::max(max_added, a.id);
                t.id = max_added < 0 ? model_size
                                     : (max_added >= model_size || model_size == 0 ? max_added + 1 : model_size);
                if (t.id > max_token_id) r.fail(p, "too many added tokens");
            }
            added_.emplace(t.content, t.id);
            if (t.special) special_ids_.insert(t.id);
            added_list_.push_back(std::move(t));
        }
        for (std::size_t k = 0; k < added_list_.size(); ++k) {
            AddedToken& t = added_list_[k];
            t.match = t.normalized && normalizer_ ? normalizer_->apply(t.content) : t.content;
            if (!t.match.empty())
                (t.normalized ? by_first_byte_normalized_ : by_first_byte_raw_)[static_cast<unsigned char>(t.match[0])]
                    .push_back(k);
        }
    }

    void build_id_table(const hf_detail::Reader& r) {
        std::int32_t size = 0;
        for (const auto& [k, v] : vocab_) size = std::max(size, v + 1);
        for (const auto& t : added_list_) size = std::max(size, t.id + 1);
        // ids must be dense enough that a table indexed by id is bounded by the file's own size
        if (static_cast<std::size_t>(size) > 2 * (vocab_.size() + added_list_.size()) + 65536)
            r.fail("model.vocab", "ids are sparse: the largest id is " + std::to_string(size - 1) + " for " +
                                      std::to_string(vocab_.size() + added_list_.size()) + " tokens");
        id_to_token_.assign(static_cast<std::size_t>(size), std::string());
        has_token_.assign(static_cast<std::size_t>(size), false);
        for (const auto& [k, v] : vocab_) {
            if (has_token_[static_cast<std::size_t>(v)])
                r.fail("model.vocab", "id " + std::to_string(v) + " is given to two tokens (\"" +
                                          id_to_token_[static_cast<std::size_t>(v)].substr(0, 40) + "\" and \"" +
                                          k.substr(0, 40) + "\")");
            id_to_token_[static_cast<std::size_t>(v)] = k;
            has_token_[static_cast<std::size_t>(v)] = true;
        }
        for (const auto& t : added_list_) {
            id_to_token_[static_cast<std::size_t>(t.id)] = t.content;
            has_token_[static_cast<std::size_t>(t.id)] = true;
        }
        if (model_type_ == "WordPiece" || model_type_ == "WordLevel") unk_model_id_ = vocab_.at(model_unk_);
        if (model_type_ == "BPE" && !model_unk_.empty()) {
            if (const auto it = vocab_.find(model_unk_); it != vocab_.end()) unk_model_id_ = it->second;
        }
    }

    // The id of a post-processor's special token: [name, id] (Bert/Roberta) checked against the name.
    std::int32_t named_id(const hf_detail::Reader& r, const hf_detail::json& j, const std::string& path) const {
        if (!j.is_array() || j.size() != 2 || !j[0].is_string())
            r.fail(path, "must be [\"token\", id], got " + j.dump().substr(0, 80));
        return static_cast<std::int32_t>(r.integer(j[1], path + "[1]", 0, hf_detail::max_token_id));
    }

    void read_post_processor(const hf_detail::Reader& r, const hf_detail::json& j, const std::string& path, int depth) {
        using namespace hf_detail;
        if (depth > max_nesting) r.fail(path, "nested too deeply");
        const std::string t =
            r.type(j, path, "post-processor",
                   {"TemplateProcessing", "BertProcessing", "RobertaProcessing", "ByteLevel", "Sequence"});
        if (t == "Sequence") {
            r.only(j, path, {"type", "processors"});
            const json* list = Reader::find(j, "processors");
            if (!list) r.fail(path + ".processors", "missing");
            r.array(*list, path + ".processors");
            for (std::size_t i = 0; i < list->size(); ++i)
                read_post_processor(r, (*list)[i], path + ".processors[" + std::to_string(i) + "]", depth + 1);
        } else if (t == "ByteLevel") {
            r.only(j, path, {"type", "add_prefix_space", "trim_offsets", "use_regex"});  // offsets only
        } else if (t == "BertProcessing" || t == "RobertaProcessing") {
            if (t == "BertProcessing")
                r.only(j, path, {"type", "sep", "cls"});
            else
                r.only(j, path, {"type", "sep", "cls", "trim_offsets", "add_prefix_space"});
            const json* sep = Reader::find(j, "sep");
            const json* cls = Reader::find(j, "cls");
            if (!sep) r.fail(path + ".sep", "missing");
            if (!cls) r.fail(path + ".cls", "missing");
            // a wrapper around what earlier processors added
            post_.before.insert(post_.before.begin(), named_id(r, *cls, path + ".cls"));
            post_.after.push_back(named_id(r, *sep, path + ".sep"));
        } else {  // TemplateProcessing
            r.only(j, path, {"type", "single", "pair", "special_tokens"});
            const json* single = Reader::find(j, "single");
            if (!single) r.fail(path + ".single", "missing");
            r.array(*single, path + ".single");
            const json* specials = Reader::find(j, "special_tokens");
            std::vector<std::int32_t> before, after;
            bool seen_sequence = false;
            for (std::size_t i = 0; i < single->size(); ++i) {
                const std::string p = path + ".single[" + std::to_string(i) + "]";
                const json& piece = r.object((*single)[i], p);
                if (const json* s = Reader::find(piece, "Sequence")) {
                    r.object(*s, p + ".Sequence");
                    if (r.req_string(*s, p + ".Sequence", "id") != "A")
                        r.fail(p + ".Sequence.id", "a single-sequence template can only hold the sequence A");
                    if (seen_sequence) r.fail(p, "the sequence appears twice");
                    seen_sequence = true;
                } else if (const json* sp = Reader::find(piece, "SpecialToken")) {
                    const std::string name =
                        r.req_string(r.object(*sp, p + ".SpecialToken"), p + ".SpecialToken", "id");
                    if (!specials || !specials->is_object() || !specials->contains(name))
                        r.fail(p + ".SpecialToken.id", "\"" + name + "\" is not in " + path + ".special_tokens");
                    const json& def = (*specials)[name];
                    const std::string dp = path + ".special_tokens[\"" + name + "\"]";
                    r.object(def, dp);
                    const json* ids = Reader::find(def, "ids");
                    if (!ids) r.fail(dp + ".ids", "missing");
                    r.array(*ids, dp + ".ids");
                    if (ids->size() > 1024) r.fail(dp + ".ids", "more than 1024 ids");
                    for (std::size_t k = 0; k < ids->size(); ++k)
                        (seen_sequence ? after : before)
                            .push_back(static_cast<std::int32_t>(
                                r.integer((*ids)[k], dp + ".ids[" + std::to_string(k) + "]", 0, max_token_id)));
                } else {
                    r.fail(p, "must be {\"Sequence\": ...} or {\"SpecialToken\": ...}");
                }
            }
            if (!seen_sequence) r.fail(path + ".single", "has no Sequence A");
            post_.before.insert(post_.before.end(), before.begin(), before.end());
            post_.after.insert(post_.after.begin(), after.begin(), after.end());
        }
    }

    void read_config(const std::string& text, const std::string& file) {
        using namespace hf_detail;
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
                    const json& e = r.object((*t)[i], "chat_template[" + std::to_string(i) + "]");
                    if (r.opt_string(e, "chat_template[" + std::to_string(i) + "]", "name", "") == "default")
                        chat_template_ = r.req_string(e, "chat_template[" + std::to_string(i) + "]", "template");
                }
            } else {
                r.fail("chat_template", "must be a string or a list of named templates, got " + Reader::type_name(*t));
            }
        }
    }

    // ------------------------------------------------------------ encoding

    static std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
        return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
    }

    static bool is_word_char(char32_t c) { return c == '_' || hf_detail::is_alphanumeric(c) || hf_detail::is_mark(c); }

    /// Splits `text` at the added tokens found in it (leftmost-longest, as tokenizers' Aho-Corasick
    /// matcher), honouring single_word, lstrip and rstrip. `normalized` picks the tokens matched after
    /// normalization or those matched in the raw text.
    void find_added(const std::string& text, bool at_start, bool normalized, std::vector<hf_detail::Piece>& out) const {
        using namespace hf_detail;
        const auto& candidates = normalized ? by_first_byte_normalized_ : by_first_byte_raw_;
        std::size_t start_offset = 0, pos = 0;
        auto piece = [&](std::size_t b, std::size_t e) {
            out.push_back({text.substr(b, e - b), at_start && b == 0, -1});
        };
        while (pos < text.size()) {
            // the leftmost match, the longest there (Aho-Corasick's leftmost-longest)
            const AddedToken* best = nullptr;
            std::size_t at = pos;
            for (; at < text.size() && best == nullptr; ++at) {
                for (std::size_t k : candidates[static_cast<unsigned char>(text[at])]) {
                    const AddedToken& t = added_list_[k];
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
        return hf_detail::next_utf8(text, k);
    }

    /// Added-token extraction and normalization (tokenizers' extract_and_normalize).
    std::vector<hf_detail::Piece> split_added(const std::string& text) const {
        using namespace hf_detail;
        std::vector<Piece> raw;
        find_added(text, true, false, raw);
        std::vector<Piece> out;
        for (auto& p : raw) {
            if (p.token >= 0) {
                out.push_back(std::move(p));
                continue;
            }
            const std::string n = normalizer_ ? normalizer_->apply(p.text) : p.text;
            std::vector<Piece> sub;
            find_added(n, p.at_start, true, sub);
            for (auto& s : sub)
                if (s.token >= 0 || !s.text.empty()) out.push_back(std::move(s));
        }
        return out;
    }

    void tokenize(const std::string& word, std::vector<std::int32_t>& ids) const {
        if (model_type_ == "BPE")
            bpe(word, ids);
        else if (model_type_ == "WordPiece")
            wordpiece(word, ids);
        else
            ids.push_back(vocab_lookup(word).value_or(unk_model_id_));
    }

    std::optional<std::int32_t> vocab_lookup(std::string_view s) const {
        const auto it = vocab_.find(s);
        if (it == vocab_.end()) return std::nullopt;
        return it->second;
    }

    void wordpiece(const std::string& word, std::vector<std::int32_t>& ids) const {
        using namespace hf_detail;
        std::size_t chars = 0;
        for (std::size_t i = 0; i < word.size(); ++i) chars += (static_cast<unsigned char>(word[i]) & 0xC0) != 0x80;
        if (chars > max_chars_) {
            ids.push_back(unk_model_id_);
            return;
        }
        std::vector<std::int32_t> sub;
        std::size_t start = 0;
        std::string candidate;
        while (start < word.size()) {
            std::size_t end = word.size();
            std::optional<std::int32_t> found;
            while (start < end) {
                candidate.clear();
                if (start > 0) candidate = prefix_;
                candidate.append(word, start, end - start);
                if ((found = vocab_lookup(candidate))) break;
                --end;  // back off one character
                while (end > start && (static_cast<unsigned char>(word[end]) & 0xC0) == 0x80) --end;
            }
            if (!found) {
                ids.push_back(unk_model_id_);
                return;
            }
            sub.push_back(*found);
            start = end;
        }
        ids.insert(ids.end(), sub.begin(), sub.end());
    }

    struct Symbol {
        std::int32_t id;
        std::int32_t prev, next;
        bool removed;
    };

    /// BPE on one word: the characters (with prefix/suffix, byte fallback and unk handling), then the
    /// merges by rank, leftmost first, exactly as tokenizers' Word::merge_all.
    void bpe(const std::string& word, std::vector<std::int32_t>& ids) const {
        using namespace hf_detail;
        if (word.empty()) return;
        if (ignore_merges_)
            if (const auto id = vocab_lookup(word)) {
                ids.push_back(*id);
                return;
            }
        std::vector<Symbol> syms;
        syms.reserve(word.size());
        auto add = [&](std::int32_t id) {
            syms.push_back(
                {id, static_cast<std::int32_t>(syms.size()) - 1, static_cast<std::int32_t>(syms.size()) + 1, false});
        };
        std::int32_t pending_unk = -1;
        std::string s;
        for (std::size_t i = 0; i < word.size();) {
            const std::size_t b = i;
            next_utf8(word, i);
            s.clear();
            if (b > 0) s = prefix_;
            s.append(word, b, i - b);
            if (i == word.size()) s += suffix_;
            if (const auto id = vocab_lookup(s)) {
                if (pending_unk >= 0) {
                    add(pending_unk);
                    pending_unk = -1;
                }
                add(*id);
                continue;
            }
            if (byte_fallback_) {
                std::vector<std::int32_t> bytes;
                bool all = true;
                for (unsigned char c : s) {
                    static constexpr char hex[] = "0123456789ABCDEF";
                    const char name[7] = {'<', '0', 'x', hex[c >> 4], hex[c & 15], '>', 0};
                    const auto id = vocab_lookup(std::string_view(name, 6));
                    if (!id) {
                        all = false;
                        break;
                    }
                    bytes.push_back(*id);
                }
                if (all) {
                    // tokenizers adds the byte tokens without flushing a pending unknown first
                    for (std::int32_t id : bytes) add(id);
                    continue;
                }
            }
            if (unk_model_id_ >= 0) {
                if (pending_unk >= 0 && !fuse_unk_) add(pending_unk);
                if (!(pending_unk >= 0 && fuse_unk_)) pending_unk = unk_model_id_;
            } else if (!model_unk_.empty()) {
                throw error("tokenizer " + id_ + ": the unknown token \"" + model_unk_ + "\" is not in the vocabulary");
            }
        }
        if (pending_unk >= 0) add(pending_unk);
        if (syms.empty()) return;
        syms.back().next = -1;
        merge_all(syms);
        for (const auto& sym : syms)
            if (!sym.removed) ids.push_back(sym.id);
    }

    struct Merge {
        std::int32_t pos, rank, new_id;
        bool operator<(const Merge& o) const {  // a max-heap: the lowest rank, then the leftmost, on top
            return rank != o.rank ? rank > o.rank : pos > o.pos;
        }
    };

    const std::pair<std::int32_t, std::int32_t>* find_merge(std::int32_t a, std::int32_t b) const {
        const auto it = merges_.find(pair_key(a, b));
        return it == merges_.end() ? nullptr : &it->second;
    }

    void merge_all(std::vector<Symbol>& syms) const {
        std::priority_queue<Merge> queue;
        for (std::size_t i = 0; i + 1 < syms.size(); ++i)
            if (const auto* m = find_merge(syms[i].id, syms[i + 1].id))
                queue.push({static_cast<std::int32_t>(i), m->first, m->second});
        while (!queue.empty()) {
            const Merge top = queue.top();
            queue.pop();
            Symbol& cur = syms[static_cast<std::size_t>(top.pos)];
            if (cur.removed || cur.next < 0) continue;
            const auto next_pos = static_cast<std::size_t>(cur.next);
            const Symbol right = syms[next_pos];
            const auto* m = find_merge(cur.id, right.id);
            if (m == nullptr || m->second != top.new_id) continue;  // an expired entry
            cur.id = top.new_id;
            cur.next = right.next;
            syms[next_pos].removed = true;
            if (right.next >= 0) syms[static_cast<std::size_t>(right.next)].prev = top.pos;
            if (cur.prev >= 0)
                if (const auto* pm = find_merge(syms[static_cast<std::size_t>(cur.prev)].id, cur.id))
                    queue.push({cur.prev, pm->first, pm->second});
            if (cur.next >= 0)
                if (const auto* nm = find_merge(cur.id, syms[static_cast<std::size_t>(cur.next)].id))
                    queue.push({top.pos, nm->first, nm->second});
        }
    }

    // model
    std::string model_type_{};
    hf_detail::Vocab vocab_{};
    std::unordered_map<std::uint64_t, std::pair<std::int32_t, std::int32_t>> merges_{};  // pair -> (rank, new id)
    std::string model_unk_{}, prefix_{}, suffix_{};
    std::int32_t unk_model_id_ = -1;
    bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
    std::size_t max_chars_ = 100;
    // pipeline
    std::optional<hf_detail::Normalizer> normalizer_{};
    std::optional<hf_detail::PreTokenizer> pre_tokenizer_{};
    std::optional<hf_detail::Decoder> decoder_{};
    hf_detail::PostProcessor post_{};
    // added tokens
    std::vector<AddedToken> added_list_{};
    hf_detail::Vocab added_{};
    std::unordered_set<std::int32_t> special_ids_{};
    std::array<std::vector<std::size_t>, 256> by_first_byte_raw_{}, by_first_byte_normalized_{};  // indexes
    // ids
    std::vector<std::string> id_to_token_{};
    std::vector<bool> has_token_{};
    std::string id_{}, pipeline_{};
    // tokenizer_config.json
    std::optional<std::int32_t> bos_{}, eos_{}, pad_{}, unk_{};
    std::string bos_token_{}, eos_token_{}, chat_template_{};
};

/// A published tokenizer's chat format for the pipeline (`data::ChatTemplate`): prompts rendered by
/// the model's template (data/chat_template.hpp) and encoded without added special tokens, as
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
              ";default_system=" + detail::sha256_hex(chat_.default_system).substr(0, 16);
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
inline ChatTemplate hf_chat_template(std::shared_ptr<const HfTokenizer> tokenizer, ChatTemplateConfig config = {}) {
    config.validate();
    HfChatTemplate chat = config.format.empty()
                              ? tokenizer->chat()
                              : HfChatTemplate::named(config.format, tokenizer->bos_token(), tokenizer->eos_token());
    auto format = std::make_shared<const HfChatFormat>(std::move(tokenizer), std::move(chat));
    return ChatTemplate(std::move(config), std::move(format));
}

namespace hf_detail {

inline ChatTemplate load_published_template(const std::filesystem::path& file, const ChatTemplateConfig& config) {
    return hf_chat_template(std::make_shared<const HfTokenizer>(file), config);
}

// A program that includes this header loads published tokenizers through data::load_chat_template.
inline const bool published_loader_registered = (published_loader() = &load_published_template, true);

}  // namespace hf_detail

}  // namespace distill::data
