#pragma once
/// @file regex.hpp
/// PCRE2 (UTF + UCP mode) for the Hugging Face tokenizer: the pre-tokenizer and Split/Replace patterns
/// of tokenizer.json, rewritten to Oniguruma's (the `tokenizers` package's engine) `\s` and `\w`, with
/// bounds on one match; and the Unicode general categories BERT and the Digits pre-tokenizer ask about
/// (punctuation, other, number, marks), asked of PCRE2 instead of carrying their tables.

#if !__has_include(<pcre2.h>)
#error \
    "distill/data/hf_tokenizer.hpp needs PCRE2: install libpcre2-dev (Debian) and link the CMake target distill::text"
#endif
#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "distill/data/utf8.hpp"
#include "distill/error.hpp"

namespace distill::data::hf {

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
                utf8::next_utf8(s, next);
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

// ---------------------------------------------------------------- Unicode general categories

/// Whether `c` has the Unicode general category `pattern` (`\p{P}`, ...), asked of PCRE2.
inline bool has_category(const Regex& category, char32_t c) {
    std::string s;
    utf8::append_utf8(s, c);
    return category.matches_at_start(s);
}

inline const Regex& category_regex(int which) {
    static const std::array<Regex, 4> regexes = {Regex(R"(\p{P})", "category"), Regex(R"(\p{C})", "category"),
                                                 Regex(R"(\p{Mn})", "category"), Regex(R"(\p{M})", "category")};
    return regexes[static_cast<std::size_t>(which)];
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

}  // namespace distill::data::hf
