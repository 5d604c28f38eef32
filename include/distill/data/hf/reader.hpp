#pragma once
/// @file reader.hpp
/// What every component of a tokenizer.json is read with: `Reader`, whose errors name the file, the
/// JSON path and the expectation; the bounds a file may ask for; Sequence components and component
/// types without settings; the `{"String": ...}` / `{"Regex": ...}` pattern of Split and Replace; and
/// what a normalizer and a decoder, or a pre-tokenizer and a decoder, share (Replace, Metaspace).

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/data/hf/regex.hpp"
#include "distill/data/hf/unicode.hpp"
#include "distill/error.hpp"

namespace distill::data::hf {

using json = nlohmann::json;

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

/// Matches and gaps of a literal string (all non-overlapping occurrences).
inline std::vector<std::pair<std::size_t, std::size_t>> literal_matches(std::string_view s, std::string_view lit) {
    std::vector<std::pair<std::size_t, std::size_t>> out;
    if (lit.empty()) return out;
    for (std::size_t at = 0, f; (f = s.find(lit, at)) != std::string_view::npos; at = f + lit.size())
        out.emplace_back(f, f + lit.size());
    return out;
}

/// Reads a tokenizer.json, naming the file and the JSON path in every error.
class Reader {
public:
    /// Nesting bound for Sequence components, so a hostile file cannot exhaust the stack.
    static constexpr int max_nesting = 16;

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
    /// A required field: absent or null is an error naming it.
    const json& required(const json& obj, const std::string& path, const char* key) const {
        const json* v = find(obj, key);
        if (!v) fail(path + "." + key, "missing");
        return *v;
    }
    std::string req_string(const json& obj, const std::string& path, const char* key) const {
        return string(required(obj, path, key), path + "." + key);
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

    /// Fails when a Sequence component at `path` is nested `depth` levels deep, past max_nesting.
    void nesting(const std::string& path, int depth) const {
        if (depth > max_nesting) fail(path, "nested too deeply (at most " + std::to_string(max_nesting) + " levels)");
    }

    /// Reads a Sequence component: its fields are exactly `type` and the list `key`, whose elements are
    /// read by `read_one(element, its path)` in order.
    template <class ReadOne>
    void sequence(const json& j, const std::string& path, const char* key, ReadOne read_one) const {
        only(j, path, {"type", key});
        const std::string at = path + "." + key;
        const json& list = array(required(j, path, key), at);
        for (std::size_t i = 0; i < list.size(); ++i) read_one(list[i], at + "[" + std::to_string(i) + "]");
    }

private:
    std::string file_;
};

// Bounds on what a file may ask for.
inline constexpr std::int64_t max_token_id = (std::int64_t{1} << 24) - 1;
inline constexpr std::size_t max_token_bytes = 1 << 16;

/// The kind that `name`, a component type without settings (no field but `type`), stands for, when it
/// is one of `bare`; a further field is an error.
template <class Kind>
std::optional<Kind> bare_kind(const Reader& r, const json& j, const std::string& path, std::string_view name,
                              std::initializer_list<std::pair<std::string_view, Kind>> bare) {
    for (const auto& [type, kind] : bare) {
        if (type != name) continue;
        r.only(j, path, {"type"});
        return kind;
    }
    return std::nullopt;
}

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

/// The pattern in the field `key` of `obj` (required).
inline Pattern read_pattern(const Reader& r, const json& obj, const std::string& parent, const char* key) {
    const std::string path = parent + "." + key;
    const json& j = r.object(r.required(obj, parent, key), path);
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

/// What the Replace normalizer and the Replace decoder do: every match of `pattern` becomes `content`.
struct Replace {
    Pattern pattern{};
    std::string content{};

    std::string apply(std::string_view s) const { return pattern.replace(s, content); }
};

/// Reads a Replace component's fields.
inline Replace read_replace(const Reader& r, const json& j, const std::string& path) {
    r.only(j, path, {"type", "pattern", "content"});
    return {read_pattern(r, j, path, "pattern"), r.req_string(j, path, "content")};
}

/// Where Metaspace puts its replacement character before a piece (tokenizers' PrependScheme).
enum class Prepend : std::uint8_t { always, first, never };

/// The settings the Metaspace pre-tokenizer and the Metaspace decoder share.
struct Metaspace {
    std::string replacement{};  ///< UTF-8 of the character that stands for a space
    Prepend prepend = Prepend::always;
};

/// Reads a Metaspace component's fields (its `split` is the pre-tokenizer's alone).
inline Metaspace read_metaspace(const Reader& r, const json& j, const std::string& path) {
    r.only(j, path, {"type", "replacement", "prepend_scheme", "split", "add_prefix_space", "str_rep"});
    Metaspace m;
    append_utf8(m.replacement, r.character(j, path, "replacement", 0x2581));
    if (const json* v = Reader::find(j, "prepend_scheme")) {
        const std::string s = r.string(*v, path + ".prepend_scheme");
        if (s == "always")
            m.prepend = Prepend::always;
        else if (s == "first")
            m.prepend = Prepend::first;
        else if (s == "never")
            m.prepend = Prepend::never;
        else
            r.fail(path + ".prepend_scheme", "unknown prepend_scheme \"" + s + "\" (supported: always, first, never)");
    } else {  // the older form
        m.prepend = r.opt_bool(j, path, "add_prefix_space", true) ? Prepend::always : Prepend::never;
    }
    return m;
}

}  // namespace distill::data::hf
