#pragma once
/// @file pre_tokenizers.hpp
/// The `pre_tokenizer` of a tokenizer.json: Sequence, ByteLevel, Split, Metaspace, Digits,
/// BertPreTokenizer, Whitespace, WhitespaceSplit and Punctuation, splitting the pieces of a text as
/// the `tokenizers` package's PreTokenizedString does, with its five delimiter behaviours.

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "distill/data/hf/reader.hpp"
#include "distill/data/hf/regex.hpp"
#include "distill/data/hf/unicode.hpp"

namespace distill::data::hf {

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
    // Walks spans in order; a span that `joins` the one before it (given whether that was a match)
    // grows the last part kept, any other span starts a part of its own.
    auto merge = [&acc](auto first, auto last, auto joins) {
        bool previous_match = false;
        for (; first != last; ++first) {
            if (joins(*first, previous_match) && !acc.empty()) {
                acc.back().begin = std::min(acc.back().begin, first->begin);
                acc.back().end = std::max(acc.back().end, first->end);
            } else {
                acc.push_back(*first);
            }
            previous_match = first->match;
        }
    };
    const auto first_match_of_run = [](const Span& s, bool previous_match) { return s.match && !previous_match; };
    switch (behavior) {
        case Behavior::removed:
            for (const auto& s : spans)
                if (!s.match) acc.push_back(s);
            break;
        case Behavior::isolated:
            acc = std::move(spans);
            break;
        case Behavior::merged_with_previous:
            merge(spans.begin(), spans.end(), first_match_of_run);
            break;
        case Behavior::merged_with_next:  // the same, walking backwards
            merge(spans.rbegin(), spans.rend(), first_match_of_run);
            std::reverse(acc.begin(), acc.end());
            break;
        case Behavior::contiguous:
            merge(spans.begin(), spans.end(),
                  [](const Span& s, bool previous_match) { return s.match == previous_match; });
            break;
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

/// A piece of the text on its way through the pipeline: its (normalized) text, whether it begins at
/// offset 0 of the original text (Metaspace's prepend_scheme "first"), and the id when it is an added
/// token (then it skips the rest of the pipeline).
struct Piece {
    std::string text;
    bool at_start = false;
    std::int32_t token = -1;
};

/// GPT-2's pre-tokenizer pattern, which ByteLevel applies when `use_regex` is set.
inline const char* gpt2_pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

/// One pre-tokenizer (a Sequence holds its children).
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
    Metaspace metaspace{};

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
                const std::string& replacement = metaspace.replacement;
                text = replace_all(text, " ", replacement);
                const bool starts = text.compare(0, replacement.size(), replacement) == 0;
                if (!starts &&
                    (metaspace.prepend == Prepend::always || (metaspace.prepend == Prepend::first && p.at_start)))
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

/// The `behavior` field of a Split or Punctuation pre-tokenizer (`dflt` when absent).
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

/// Reads the pre-tokenizer at `path`; `depth` counts the Sequence components around it.
inline PreTokenizer read_pre_tokenizer(const Reader& r, const json& j, const std::string& path, int depth = 0) {
    r.nesting(path, depth);
    const std::string t = r.type(j, path, "pre-tokenizer",
                                 {"Sequence", "ByteLevel", "Split", "Metaspace", "Digits", "BertPreTokenizer",
                                  "Whitespace", "WhitespaceSplit", "Punctuation"});
    PreTokenizer p;
    using K = PreTokenizer::Kind;
    if (const auto bare = bare_kind<K>(
            r, j, path, t,
            {{"BertPreTokenizer", K::bert}, {"Whitespace", K::whitespace}, {"WhitespaceSplit", K::whitespace_split}})) {
        p.kind = *bare;
        if (p.kind == K::whitespace)
            p.regex = Regex(R"([\p{L}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}]+|[^\p{L}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}\s]+)",
                            "Whitespace");
    } else if (t == "Sequence") {
        r.sequence(j, path, "pretokenizers", [&](const json& e, const std::string& at) {
            p.children.push_back(read_pre_tokenizer(r, e, at, depth + 1));
        });
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
        p.pattern = read_pattern(r, j, path, "pattern");
        p.behavior = read_behavior(r, j, path, Behavior::removed);
        if (!Reader::find(j, "behavior")) r.fail(path + ".behavior", "missing");
        p.invert = r.opt_bool(j, path, "invert", false);
    } else if (t == "Metaspace") {
        p.kind = K::metaspace;
        p.metaspace = read_metaspace(r, j, path);
        p.split = r.opt_bool(j, path, "split", true);
    } else if (t == "Digits") {
        r.only(j, path, {"type", "individual_digits"});
        p.kind = K::digits;
        p.individual_digits = r.opt_bool(j, path, "individual_digits", false);
    } else {  // Punctuation
        r.only(j, path, {"type", "behavior"});
        p.kind = K::punctuation;
        p.behavior = read_behavior(r, j, path, Behavior::isolated);
    }
    return p;
}

}  // namespace distill::data::hf
