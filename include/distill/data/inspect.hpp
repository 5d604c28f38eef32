#pragma once
/// @file inspect.hpp
/// `data::inspect`: what to know about a data set before paying a teacher to answer it. It reads a
/// JSONL file in any format `data::read_examples` reads (data/chat.hpp) and reports:
/// - counts: physical lines, blank lines, examples, examples per format, chat messages per role;
/// - malformed lines: line number and defect, exactly as training would reject them (the read goes on);
/// - lengths per field (chat: per role, over every turn; else "prompt"/"completion", "input"/"label",
///   "text"), in characters (Unicode code points) and in tokens (the byte tokenizer's: UTF-8 bytes;
///   or any counter given), with min, mean, p50, p95, max and an equal-width histogram;
/// - distinct-1/2/3 over words of the prompts and of the references;
/// - exact duplicate prompts after normalization (ASCII lowercase, runs of whitespace collapsed to
///   one space, trimmed), as groups of line numbers;
/// - near-duplicate prompts: MinHash over character 5-grams of the normalized prompt, LSH banding to
///   find candidates, then the exact Jaccard similarity of the candidates' 5-gram sets, so every
///   reported pair has Jaccard >= the threshold (5-grams are compared by 64-bit hashes);
/// - label counts and the imbalance ratio (largest / smallest count), for classification data;
/// - contamination: training prompts equal (normalized) or near (same MinHash machinery) to a prompt
///   of a test file.
/// A prompt's text is the content of its turns joined with newlines. `to_json`, `to_markdown`,
/// `histogram_charts` and `write_inspection` turn an `Inspection` into the report files.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/data/chat.hpp"
#include "distill/data/jsonl.hpp"
#include "distill/error.hpp"
#include "distill/eval/svg.hpp"
#include "distill/io/durable.hpp"

namespace distill::data {

/// Settings of `inspect`.
struct InspectOptions {
    std::filesystem::path test{};  ///< a test file to check for contamination ("" = none)
    double near_threshold = 0.8;   ///< near duplicate: Jaccard of the prompts' 5-gram sets >= this
    /// MinHash signature: `bands` × `rows` hashes. 32 × 4 makes a pair of Jaccard 0.8 a candidate with
    /// probability 1 - (1 - 0.8^4)^32 > 0.9999999, of Jaccard 0.6 with 0.988; candidates are verified.
    int bands = 32;
    int rows = 4;
    int shingle = 5;  ///< characters per shingle
    int histogram_bins = 20;
    /// Tokens of a text; empty = the byte tokenizer (one token per UTF-8 byte). The count is of the
    /// text alone, without chat-template tokens.
    std::function<std::size_t(std::string_view)> count_tokens{};
    std::string tokenizer_name = "byte";  ///< how the report names the token counter

    /// Throws config_error naming the option when a value is out of range.
    void validate() const {
        if (!(near_threshold > 0.0 && near_threshold <= 1.0))
            throw config_error("near_threshold", "must be in (0, 1], got " + std::to_string(near_threshold));
        if (bands < 1 || rows < 1 || bands * rows > 4096)
            throw config_error("bands", "bands and rows must be >= 1 with bands * rows <= 4096");
        if (shingle < 1 || shingle > 64) throw config_error("shingle", "must be in 1..64");
        if (histogram_bins < 1 || histogram_bins > 1000) throw config_error("histogram_bins", "must be in 1..1000");
    }
};

/// A distribution of lengths: summary and an equal-width histogram from min to max.
struct LengthStats {
    std::size_t count = 0;
    double min = 0, mean = 0, p50 = 0, p95 = 0, max = 0;
    std::vector<double> edges{};        ///< bins + 1 boundaries; bin i is [edges[i], edges[i+1]) (last closed)
    std::vector<std::size_t> counts{};  ///< values per bin
};

/// The lengths of one field (a chat role, or a key of the line).
struct FieldLengths {
    std::string field;
    LengthStats chars, tokens;
};

/// distinct-n: distinct word n-grams / all word n-grams (n-grams do not cross texts); 0 where the
/// texts have no n-gram (`ngrams[n - 1]` = 0; the reports show it as null / "-").
struct DistinctN {
    std::size_t words = 0;
    double distinct1 = 0, distinct2 = 0, distinct3 = 0;
    std::array<std::size_t, 3> ngrams{};  ///< all 1-, 2- and 3-grams counted
};

/// Two lines with similar prompts (`b` is in the test file for contamination).
struct NearPair {
    std::uint64_t a = 0, b = 0;
    double jaccard = 0;
};

/// Lines whose normalized prompts are equal.
struct DuplicateGroup {
    std::vector<std::uint64_t> lines{};
    std::string text{};  ///< the normalized prompt (its first 120 bytes)
};

/// The phrases that mark an answer as a refusal when the first 120 bytes of its normalized text
/// (lowercase, whitespace collapsed; ’ read as ') contain one. A heuristic: short, English-only, and blind to a refusal
/// worded otherwise.
inline constexpr std::array<std::string_view, 12> refusal_phrases = {
    "i'm sorry",  "i am sorry",  "i apologize", "i cannot",   "i can't",  "i can not",
    "i'm unable", "i am unable", "i won't",     "i will not", "as an ai", "as a language model"};

/// What a teacher produced in the generate stage (`teacher_output`): its synthetic.jsonl answers and
/// the answers the stage rejected.
struct TeacherOutput {
    std::uint64_t answers = 0;                   ///< records of synthetic.jsonl
    std::uint64_t refusals = 0;                  ///< answers containing a `refusal_phrases` entry near the start
    std::vector<std::uint64_t> refusal_lines{};  ///< their lines in synthetic.jsonl
    std::uint64_t truncated_kept = 0;            ///< answers with finish_reason "length" (kept under keep_truncated)
    std::uint64_t rejected_empty = 0, rejected_truncated = 0, rejected_duplicate = 0;  ///< from rejected.jsonl
    int max_new_tokens = 0;                                                            ///< the generation limit
    LengthStats completion_tokens{};  ///< the teacher's completion_tokens of each answer
    std::uint64_t at_limit = 0;       ///< answers whose completion_tokens >= max_new_tokens
};

/// Everything `inspect` found.
struct Inspection {
    std::filesystem::path file{}, test{};
    std::string tokenizer{};
    InspectOptions options{};
    std::uint64_t lines = 0, blank_lines = 0, examples = 0;
    std::map<std::string, std::uint64_t> formats{};  ///< examples per input format
    std::map<std::string, std::uint64_t> roles{};    ///< chat messages per role (final assistant turn included)
    std::vector<BadLine> malformed{};
    std::vector<FieldLengths> lengths{};
    DistinctN prompt_diversity{}, reference_diversity{};
    std::vector<DuplicateGroup> exact_duplicates{};
    std::uint64_t duplicate_examples = 0;           ///< examples beyond the first of each group (what dedup removes)
    std::vector<NearPair> near_duplicates{};        ///< between first lines of distinct normalized prompts
    std::map<std::string, std::uint64_t> labels{};  ///< empty unless examples are input/label
    double label_imbalance = 0;                     ///< largest / smallest label count
    // contamination (when a test file is given)
    std::uint64_t test_examples = 0;
    std::vector<BadLine> test_malformed{};
    std::vector<NearPair> test_exact{};       ///< (training line, test line), Jaccard 1
    std::vector<NearPair> test_near{};        ///< (training line, test line, Jaccard), not exact matches
    std::uint64_t contaminated_examples = 0;  ///< training examples with an exact or near test match
    std::optional<TeacherOutput> teacher{};   ///< set by the generate stage for its synthetic set
};

namespace inspect_detail {

/// ASCII lowercase, runs of whitespace to one space, trimmed.
inline std::string normalize(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    bool space = false;
    for (char c : s) {
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
            space = !out.empty();
            continue;
        }
        if (space) out.push_back(' ');
        space = false;
        out.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c);
    }
    return out;
}

/// Unicode code points of UTF-8 text (bytes that are not continuation bytes).
inline std::size_t code_points(std::string_view s) {
    std::size_t n = 0;
    for (unsigned char c : s) n += (c & 0xc0) != 0x80;
    return n;
}

inline std::uint64_t fnv1a(std::string_view s, std::uint64_t h = 0xcbf29ce484222325ULL) {
    for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
    return h;
}

inline std::uint64_t mix(std::uint64_t x) {  // splitmix64's finalizer
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/// Sorted distinct hashes of the `k`-code-point substrings of `s` (the whole text when shorter).
inline std::vector<std::uint64_t> shingles(std::string_view s, int k) {
    std::vector<std::size_t> starts;  // byte offset of each code point, then the end
    for (std::size_t i = 0; i < s.size(); ++i)
        if ((static_cast<unsigned char>(s[i]) & 0xc0) != 0x80) starts.push_back(i);
    std::vector<std::uint64_t> out;
    if (starts.empty()) return out;
    starts.push_back(s.size());
    const std::size_t points = starts.size() - 1, kk = static_cast<std::size_t>(k);
    if (points <= kk) {
        out.push_back(fnv1a(s));
    } else {
        for (std::size_t i = 0; i + kk <= points; ++i)
            out.push_back(fnv1a(s.substr(starts[i], starts[i + kk] - starts[i])));
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

/// |a ∩ b| / |a ∪ b| of two sorted distinct sets (1 for two empty sets).
inline double jaccard(const std::vector<std::uint64_t>& a, const std::vector<std::uint64_t>& b) {
    std::size_t i = 0, j = 0, common = 0;
    while (i < a.size() && j < b.size()) {
        if (a[i] < b[j])
            ++i;
        else if (b[j] < a[i])
            ++j;
        else
            ++common, ++i, ++j;
    }
    const std::size_t all = a.size() + b.size() - common;
    return all == 0 ? 1.0 : double(common) / double(all);
}

/// The LSH band keys of a shingle set: MinHash with bands × rows hash functions, each band's rows
/// hashed into one key (the band index mixed in, so equal rows in different bands never collide).
inline std::vector<std::uint64_t> band_keys(const std::vector<std::uint64_t>& set, int bands, int rows) {
    const int n = bands * rows;
    std::vector<std::uint64_t> sig(static_cast<std::size_t>(n), ~0ULL);
    for (std::uint64_t x : set)
        for (int h = 0; h < n; ++h)
            sig[static_cast<std::size_t>(h)] =
                std::min(sig[static_cast<std::size_t>(h)], mix(x ^ mix(0x9e3779b97f4a7c15ULL * std::uint64_t(h + 1))));
    std::vector<std::uint64_t> keys(static_cast<std::size_t>(bands));
    for (int b = 0; b < bands; ++b) {
        std::uint64_t k = mix(std::uint64_t(b) + 1);
        for (int r = 0; r < rows; ++r) k = mix(k ^ sig[static_cast<std::size_t>(b * rows + r)]);
        keys[static_cast<std::size_t>(b)] = k;
    }
    return keys;
}

/// Pairs (i, j) with Jaccard(left[i], right[j]) >= threshold among LSH candidates; with `right` null,
/// pairs i < j within `left`. Empty sets take no part.
inline std::vector<std::tuple<std::size_t, std::size_t, double>> similar_pairs(
    const std::vector<std::vector<std::uint64_t>>& left, const std::vector<std::vector<std::uint64_t>>* right,
    const InspectOptions& o) {
    const auto& index_sets = right ? *right : left;
    std::unordered_map<std::uint64_t, std::vector<std::size_t>> buckets;  // band key -> indices into index_sets
    std::vector<std::vector<std::uint64_t>> left_keys(left.size());
    for (std::size_t i = 0; i < index_sets.size(); ++i) {
        if (index_sets[i].empty()) continue;
        auto keys = band_keys(index_sets[i], o.bands, o.rows);
        for (std::uint64_t k : keys) buckets[k].push_back(i);
        if (!right) left_keys[i] = std::move(keys);
    }
    std::set<std::pair<std::size_t, std::size_t>> candidates;
    for (std::size_t i = 0; i < left.size(); ++i) {
        if (left[i].empty()) continue;
        const auto keys = right ? band_keys(left[i], o.bands, o.rows) : left_keys[i];
        for (std::uint64_t k : keys) {
            auto it = buckets.find(k);
            if (it == buckets.end()) continue;
            for (std::size_t j : it->second)
                if (right || j > i) candidates.emplace(i, j);
        }
    }
    std::vector<std::tuple<std::size_t, std::size_t, double>> out;
    for (auto [i, j] : candidates) {
        const double s = jaccard(left[i], index_sets[j]);
        if (s >= o.near_threshold) out.emplace_back(i, j, s);
    }
    return out;
}

inline std::vector<std::string> words(std::string_view normalized) {
    std::vector<std::string> w;
    std::size_t at = 0;
    while (at < normalized.size()) {
        const std::size_t end = std::min(normalized.find(' ', at), normalized.size());
        if (end > at) w.emplace_back(normalized.substr(at, end - at));
        at = end + 1;
    }
    return w;
}

/// The prompt's text: its turns' content joined with newlines.
inline std::string prompt_text(const Example& ex) {
    std::string s;
    for (const auto& m : ex.prompt) {
        if (!s.empty()) s += '\n';
        s += m.content;
    }
    return s;
}

}  // namespace inspect_detail

/// The p-th percentile (0..100) of ascending `sorted` by linear interpolation between the closest
/// ranks (numpy's default): position p/100 × (n - 1). 0 for an empty list.
inline double percentile(const std::vector<double>& sorted, double p) {
    if (sorted.empty()) return 0;
    const double pos = p / 100.0 * double(sorted.size() - 1);
    const auto lo = static_cast<std::size_t>(std::floor(pos));
    const std::size_t hi = std::min(lo + 1, sorted.size() - 1);
    return sorted[lo] + (pos - double(lo)) * (sorted[hi] - sorted[lo]);
}

/// Summary and `bins`-bin histogram of `values`.
inline LengthStats length_stats(std::vector<double> values, int bins) {
    LengthStats s;
    s.count = values.size();
    if (values.empty()) return s;
    std::sort(values.begin(), values.end());
    s.min = values.front();
    s.max = values.back();
    double sum = 0;
    for (double v : values) sum += v;
    s.mean = sum / double(values.size());
    s.p50 = percentile(values, 50);
    s.p95 = percentile(values, 95);
    const double width = s.max > s.min ? (s.max - s.min) / bins : 1.0;
    for (int i = 0; i <= bins; ++i) s.edges.push_back(s.min + width * i);
    s.counts.assign(static_cast<std::size_t>(bins), 0);
    for (double v : values)
        ++s.counts[std::min<std::size_t>(static_cast<std::size_t>((v - s.min) / width), std::size_t(bins) - 1)];
    return s;
}

/// distinct-1/2/3 over the words of `texts` (normalized as duplicates are: lowercase, whitespace-split).
inline DistinctN distinct_n(const std::vector<std::string>& texts) {
    DistinctN d;
    std::array<std::unordered_set<std::string>, 3> seen;
    std::array<std::size_t, 3> total{};
    for (const auto& t : texts) {
        const auto w = inspect_detail::words(inspect_detail::normalize(t));
        d.words += w.size();
        for (std::size_t n = 1; n <= 3; ++n)
            for (std::size_t i = 0; i + n <= w.size(); ++i) {
                std::string gram = w[i];
                for (std::size_t k = 1; k < n; ++k) gram += ' ' + w[i + k];
                seen[n - 1].insert(std::move(gram));
                ++total[n - 1];
            }
    }
    auto ratio = [&](std::size_t n) { return total[n] ? double(seen[n].size()) / double(total[n]) : 0.0; };
    d.distinct1 = ratio(0);
    d.distinct2 = ratio(1);
    d.distinct3 = ratio(2);
    d.ngrams = total;
    return d;
}

/// Inspects the JSONL file `path` (see the file comment). Malformed lines are reported, never thrown;
/// throws io_error when a file cannot be read, config_error for bad options.
inline Inspection inspect(const std::filesystem::path& path, const InspectOptions& options = {}) {
    using namespace inspect_detail;
    options.validate();
    Inspection r;
    r.file = path;
    r.test = options.test;
    r.options = options;
    r.tokenizer = options.tokenizer_name;
    JsonlConfig skip;
    skip.on_bad_line = "skip";
    const Dataset ds = read_examples(path, skip);
    r.lines = ds.stats.lines;
    r.blank_lines = ds.stats.blank_lines;
    r.examples = ds.examples.size();
    r.malformed = ds.stats.skipped;

    // lengths per field, in first-seen order
    std::vector<std::string> order;
    std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> values;
    auto add = [&](const std::string& field, std::string_view text) {
        if (!values.count(field)) order.push_back(field);
        auto& v = values[field];
        v.first.push_back(double(code_points(text)));
        v.second.push_back(double(options.count_tokens ? options.count_tokens(text) : text.size()));
    };
    std::vector<std::string> prompts, references;
    for (const auto& ex : ds.examples) {
        ++r.formats[std::string(format_name(ex.format))];
        prompts.push_back(prompt_text(ex));
        if (ex.reference) references.push_back(*ex.reference);
        switch (ex.format) {
            case input_format::chat:
                for (const auto& m : ex.prompt) {
                    ++r.roles[m.role];
                    add(m.role, m.content);
                }
                if (ex.reference) {
                    ++r.roles["assistant"];
                    add("assistant", *ex.reference);
                }
                break;
            case input_format::prompt_completion:
                add("prompt", ex.prompt[0].content);
                if (ex.reference) add("completion", *ex.reference);
                break;
            case input_format::input_label:
                add("input", ex.prompt[0].content);
                if (ex.reference) ++r.labels[*ex.reference];
                break;
            case input_format::text:
                add("text", ex.prompt[0].content);
                break;
        }
    }
    if (!r.labels.empty()) {
        std::uint64_t lo = ~0ULL, hi = 0;
        for (const auto& [label, n] : r.labels) lo = std::min(lo, n), hi = std::max(hi, n);
        r.label_imbalance = double(hi) / double(lo);
    }
    for (const auto& f : order)
        r.lengths.push_back({f, length_stats(values[f].first, options.histogram_bins),
                             length_stats(values[f].second, options.histogram_bins)});
    r.prompt_diversity = distinct_n(prompts);
    r.reference_diversity = distinct_n(references);

    // exact duplicates: groups of equal normalized prompts; near duplicates among one line per group
    std::vector<std::string> normalized(prompts.size());
    std::map<std::string, std::vector<std::size_t>> groups;
    std::vector<std::size_t> firsts;  // example index of each distinct normalized prompt, in file order
    for (std::size_t i = 0; i < prompts.size(); ++i) {
        normalized[i] = normalize(prompts[i]);
        auto& g = groups[normalized[i]];
        if (g.empty()) firsts.push_back(i);
        g.push_back(i);
    }
    for (std::size_t first : firsts) {
        const auto& g = groups[normalized[first]];
        if (g.size() < 2) continue;
        DuplicateGroup d;
        for (std::size_t i : g) d.lines.push_back(ds.examples[i].line);
        d.text = normalized[first].substr(0, 120);
        r.duplicate_examples += g.size() - 1;
        r.exact_duplicates.push_back(std::move(d));
    }
    std::vector<std::vector<std::uint64_t>> sets(firsts.size());
    for (std::size_t k = 0; k < firsts.size(); ++k) sets[k] = shingles(normalized[firsts[k]], options.shingle);
    for (auto [i, j, s] : similar_pairs(sets, nullptr, options))
        r.near_duplicates.push_back({ds.examples[firsts[i]].line, ds.examples[firsts[j]].line, s});
    std::sort(r.near_duplicates.begin(), r.near_duplicates.end(),
              [](const NearPair& x, const NearPair& y) { return std::tie(x.a, x.b) < std::tie(y.a, y.b); });

    if (!options.test.empty()) {
        const Dataset test = read_examples(options.test, skip);
        r.test_examples = test.examples.size();
        r.test_malformed = test.stats.skipped;
        std::vector<std::vector<std::uint64_t>> test_sets;
        std::unordered_map<std::string, std::uint64_t> test_exact;  // normalized prompt -> first test line
        for (const auto& ex : test.examples) {
            const std::string n = normalize(prompt_text(ex));
            test_exact.emplace(n, ex.line);
            test_sets.push_back(shingles(n, options.shingle));
        }
        std::set<std::uint64_t> contaminated;
        std::vector<std::vector<std::uint64_t>> train_sets(prompts.size());
        for (std::size_t i = 0; i < prompts.size(); ++i) {
            if (auto it = test_exact.find(normalized[i]); it != test_exact.end()) {
                r.test_exact.push_back({ds.examples[i].line, it->second, 1.0});
                contaminated.insert(ds.examples[i].line);
            } else {
                train_sets[i] = shingles(normalized[i], options.shingle);  // exact matches need no near search
            }
        }
        for (auto [i, j, s] : similar_pairs(train_sets, &test_sets, options)) {
            r.test_near.push_back({ds.examples[i].line, test.examples[j].line, s});
            contaminated.insert(ds.examples[i].line);
        }
        std::sort(r.test_near.begin(), r.test_near.end(),
                  [](const NearPair& x, const NearPair& y) { return std::tie(x.a, x.b) < std::tie(y.a, y.b); });
        r.contaminated_examples = contaminated.size();
    }
    return r;
}

/// What the teacher produced: reads `synthetic` (the generate stage's synthetic.jsonl, see
/// teacher/synthetic.hpp) and, when it exists, `rejected` (its rejected.jsonl); `max_new_tokens` is
/// the generation limit. Lines that are not such records are skipped. Throws io_error.
inline TeacherOutput teacher_output(const std::filesystem::path& synthetic, const std::filesystem::path& rejected,
                                    int max_new_tokens, int bins = 20) {
    TeacherOutput t;
    t.max_new_tokens = max_new_tokens;
    JsonlConfig skip;
    skip.on_bad_line = "skip";
    std::vector<double> tokens;
    read_jsonl(synthetic, skip, [&](std::uint64_t line, const nlohmann::json& j) {
        const auto& msgs = j.at("messages");
        const auto& meta = j.at("teacher");
        if (msgs.empty() || msgs.back().value("role", "") != "assistant") throw bad_line("no assistant answer");
        ++t.answers;
        std::string head = inspect_detail::normalize(msgs.back().at("content").get<std::string>());
        for (std::size_t at; (at = head.find("\xE2\x80\x99")) != std::string::npos;) head.replace(at, 3, "'");
        head = head.substr(0, 120);
        for (std::string_view p : refusal_phrases)
            if (head.find(p) != std::string::npos) {
                ++t.refusals;
                t.refusal_lines.push_back(line);
                break;
            }
        if (meta.value("finish_reason", "") == "length") ++t.truncated_kept;
        const double n = meta.contains("usage") ? meta["usage"].value("completion_tokens", 0.0) : 0.0;
        tokens.push_back(n);
        if (max_new_tokens > 0 && n >= max_new_tokens) ++t.at_limit;
    });
    t.completion_tokens = length_stats(std::move(tokens), bins);
    std::error_code ec;
    if (std::filesystem::exists(rejected, ec))
        read_jsonl(rejected, skip, [&](std::uint64_t, const nlohmann::json& j) {
            const std::string reason = j.value("reason", "");
            t.rejected_empty += reason == "empty";
            t.rejected_truncated += reason == "truncated";
            t.rejected_duplicate += reason == "duplicate";
        });
    return t;
}

namespace inspect_detail {

inline nlohmann::ordered_json stats_json(const LengthStats& s) {
    return {{"count", s.count}, {"min", s.min}, {"mean", s.mean},   {"p50", s.p50},
            {"p95", s.p95},     {"max", s.max}, {"edges", s.edges}, {"counts", s.counts}};
}

inline nlohmann::ordered_json pairs_json(const std::vector<NearPair>& pairs, const char* a, const char* b) {
    auto out = nlohmann::ordered_json::array();
    for (const auto& p : pairs) out.push_back({{a, p.a}, {b, p.b}, {"jaccard", p.jaccard}});
    return out;
}

inline nlohmann::ordered_json bad_json(const std::vector<BadLine>& bad) {
    auto out = nlohmann::ordered_json::array();
    for (const auto& b : bad) out.push_back({{"line", b.line}, {"reason", b.defect}});
    return out;
}

inline std::string fmt(double v, const char* f = "%.4g") {
    char buf[64];
    std::snprintf(buf, sizeof buf, f, v);
    return buf;
}

/// `s` fit for a Markdown table cell: '|' escaped, line breaks as spaces.
inline std::string table_cell(std::string_view s) {
    std::string out;
    for (char c : s) {
        if (c == '|') out += '\\';
        out += c == '\n' || c == '\r' ? ' ' : c;
    }
    return out;
}

/// A file name part from a field name: [A-Za-z0-9_-], others become '_'.
inline std::string file_part(std::string s) {
    for (char& c : s)
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
            c = '_';
    return s;
}

}  // namespace inspect_detail

/// The inspection as JSON (inspect.json): every finding, none truncated.
inline nlohmann::ordered_json to_json(const Inspection& r) {
    using namespace inspect_detail;
    nlohmann::ordered_json j;
    j["file"] = r.file.string();
    j["tokenizer"] = r.tokenizer;
    j["lines"] = r.lines;
    j["blank_lines"] = r.blank_lines;
    j["examples"] = r.examples;
    j["formats"] = r.formats;
    if (!r.roles.empty()) j["messages_per_role"] = r.roles;
    j["malformed"] = bad_json(r.malformed);
    auto& lengths = j["lengths"] = nlohmann::ordered_json::object();
    for (const auto& f : r.lengths)
        lengths[f.field] = {{"chars", stats_json(f.chars)}, {"tokens", stats_json(f.tokens)}};
    auto div = [](const DistinctN& d) {
        auto v = [&](std::size_t n, double x) {
            return d.ngrams[n] ? nlohmann::ordered_json(x) : nlohmann::ordered_json();
        };
        return nlohmann::ordered_json{{"words", d.words},
                                      {"distinct_1", v(0, d.distinct1)},
                                      {"distinct_2", v(1, d.distinct2)},
                                      {"distinct_3", v(2, d.distinct3)}};
    };
    j["diversity"] = {{"prompt", div(r.prompt_diversity)}, {"reference", div(r.reference_diversity)}};
    auto groups = nlohmann::ordered_json::array();
    for (const auto& g : r.exact_duplicates) groups.push_back({{"lines", g.lines}, {"text", g.text}});
    j["duplicates"] = {{"exact_groups", groups},
                       {"duplicate_examples", r.duplicate_examples},
                       {"near_threshold", r.options.near_threshold},
                       {"near_method",
                        {{"shingle", "character " + std::to_string(r.options.shingle) + "-grams"},
                         {"bands", r.options.bands},
                         {"rows", r.options.rows}}},
                       {"near_pairs", pairs_json(r.near_duplicates, "line_a", "line_b")}};
    if (!r.labels.empty()) j["labels"] = {{"counts", r.labels}, {"imbalance_ratio", r.label_imbalance}};
    if (!r.test.empty())
        j["contamination"] = {{"test_file", r.test.string()},
                              {"test_examples", r.test_examples},
                              {"test_malformed", bad_json(r.test_malformed)},
                              {"contaminated_examples", r.contaminated_examples},
                              {"exact", pairs_json(r.test_exact, "line", "test_line")},
                              {"near", pairs_json(r.test_near, "line", "test_line")}};
    if (r.teacher) {
        const TeacherOutput& t = *r.teacher;
        j["teacher_output"] = {
            {"answers", t.answers},
            {"refusals", t.refusals},
            {"refusal_lines", t.refusal_lines},
            {"truncated_kept", t.truncated_kept},
            {"rejected",
             {{"empty", t.rejected_empty}, {"truncated", t.rejected_truncated}, {"duplicate", t.rejected_duplicate}}},
            {"max_new_tokens", t.max_new_tokens},
            {"completion_tokens", stats_json(t.completion_tokens)},
            {"at_max_new_tokens", t.at_limit}};
    }
    return j;
}

/// A few lines for a terminal: counts, defects, duplicates, contamination.
inline std::string summary(const Inspection& r) {
    using inspect_detail::fmt;
    std::string s = r.file.string() + ": " + std::to_string(r.examples) + " examples in " + std::to_string(r.lines) +
                    " lines, " + std::to_string(r.malformed.size()) + " malformed\n";
    if (!r.lengths.empty()) s += "  tokens (" + r.tokenizer + ") per field, p50 / p95 / max:";
    for (const auto& f : r.lengths)
        s += " " + f.field + " " + fmt(f.tokens.p50) + " / " + fmt(f.tokens.p95) + " / " + fmt(f.tokens.max) + ";";
    if (!r.lengths.empty()) s.back() = '\n';
    s += "  prompts: distinct-2 " + fmt(r.prompt_diversity.distinct2, "%.3f") + "; " +
         std::to_string(r.exact_duplicates.size()) + " exact duplicate groups (" +
         std::to_string(r.duplicate_examples) + " extra examples), " + std::to_string(r.near_duplicates.size()) +
         " near-duplicate pairs (Jaccard >= " + fmt(r.options.near_threshold) + ")\n";
    if (!r.labels.empty())
        s += "  labels: " + std::to_string(r.labels.size()) + ", imbalance ratio " + fmt(r.label_imbalance, "%.2f") +
             "\n";
    if (!r.test.empty())
        s += "  contamination: " + std::to_string(r.contaminated_examples) + " training examples match " +
             r.test.string() + " (" + std::to_string(r.test_exact.size()) + " exact, " +
             std::to_string(r.test_near.size()) + " near pairs)\n";
    if (r.teacher) {
        const TeacherOutput& t = *r.teacher;
        s += "  teacher: " + std::to_string(t.answers) + " answers, " + std::to_string(t.refusals) + " refusals, " +
             std::to_string(t.rejected_empty) + " empty and " + std::to_string(t.rejected_truncated) +
             " truncated rejected; completion tokens p50 " + fmt(t.completion_tokens.p50) + ", max " +
             fmt(t.completion_tokens.max) + " of max_new_tokens " + std::to_string(t.max_new_tokens) + "\n";
    }
    return s;
}

/// The inspection as Markdown (inspect.md); long lists show their first 20 entries.
inline std::string to_markdown(const Inspection& r) {
    using inspect_detail::fmt;
    constexpr std::size_t shown = 20;
    auto more = [&](std::size_t n) {
        return n > shown ? "\n… and " + std::to_string(n - shown) + " more (inspect.json lists all)\n" : std::string();
    };
    std::string md = "# Data inspection: " + r.file.string() + "\n\n";
    md += "- lines: " + std::to_string(r.lines) + " (" + std::to_string(r.blank_lines) + " blank)\n";
    md += "- examples: " + std::to_string(r.examples);
    for (const auto& [f, n] : r.formats) md += ", " + f + " " + std::to_string(n);
    md += "\n";
    if (!r.roles.empty()) {
        md += "- chat messages per role:";
        for (const auto& [role, n] : r.roles) md += " " + role + " " + std::to_string(n);
        md += "\n";
    }
    md += "- malformed lines: " + std::to_string(r.malformed.size()) + "\n";
    if (!r.malformed.empty()) {
        md += "\n| line | defect |\n|---:|---|\n";
        for (std::size_t i = 0; i < std::min(shown, r.malformed.size()); ++i)
            md += "| " + std::to_string(r.malformed[i].line) + " | " +
                  inspect_detail::table_cell(r.malformed[i].defect) + " |\n";
        md += more(r.malformed.size());
    }
    md += "\n## Lengths (" + r.tokenizer + " tokens and characters)\n\n";
    md += "| field | unit | count | min | mean | p50 | p95 | max |\n|---|---|---:|---:|---:|---:|---:|---:|\n";
    for (const auto& f : r.lengths)
        for (const auto* u : {&f.tokens, &f.chars})
            md += "| " + f.field + " | " + (u == &f.tokens ? "tokens" : "chars") + " | " + std::to_string(u->count) +
                  " | " + fmt(u->min) + " | " + fmt(u->mean) + " | " + fmt(u->p50) + " | " + fmt(u->p95) + " | " +
                  fmt(u->max) + " |\n";
    md +=
        "\n## Diversity (distinct word n-grams / all)\n\n| text | words | distinct-1 | distinct-2 | distinct-3 |\n"
        "|---|---:|---:|---:|---:|\n";
    for (const auto& [name, diversity] :
         {std::pair{"prompts", r.prompt_diversity}, std::pair{"references", r.reference_diversity}}) {
        const DistinctN& d = diversity;  // clang 14 cannot capture a structured binding in a lambda
        auto v = [&](std::size_t n, double x) { return d.ngrams[n] ? fmt(x, "%.4f") : std::string("-"); };
        md += std::string("| ") + name + " | " + std::to_string(d.words) + " | " + v(0, d.distinct1) + " | " +
              v(1, d.distinct2) + " | " + v(2, d.distinct3) + " |\n";
    }
    md += "\n## Duplicate prompts\n\n" + std::to_string(r.exact_duplicates.size()) +
          " groups of equal prompts after normalization (lowercase, whitespace collapsed); " +
          std::to_string(r.duplicate_examples) + " examples beyond the first of their group.\n\n";
    for (std::size_t i = 0; i < std::min(shown, r.exact_duplicates.size()); ++i) {
        md += "- lines";
        for (auto l : r.exact_duplicates[i].lines) md += " " + std::to_string(l);
        md += ": `" + r.exact_duplicates[i].text + "`\n";
    }
    md += more(r.exact_duplicates.size());
    md += "\n" + std::to_string(r.near_duplicates.size()) + " near-duplicate pairs (Jaccard of character " +
          std::to_string(r.options.shingle) + "-grams >= " + fmt(r.options.near_threshold) + "):\n\n";
    for (std::size_t i = 0; i < std::min(shown, r.near_duplicates.size()); ++i)
        md += "- lines " + std::to_string(r.near_duplicates[i].a) + " and " + std::to_string(r.near_duplicates[i].b) +
              ": " + fmt(r.near_duplicates[i].jaccard, "%.3f") + "\n";
    md += more(r.near_duplicates.size());
    if (!r.labels.empty()) {
        md += "\n## Labels\n\n| label | examples |\n|---|---:|\n";
        for (const auto& [label, n] : r.labels)
            md += "| " + inspect_detail::table_cell(label) + " | " + std::to_string(n) + " |\n";
        md += "\nimbalance ratio (largest / smallest): " + fmt(r.label_imbalance, "%.2f") + "\n";
    }
    if (!r.test.empty()) {
        md += "\n## Contamination with " + r.test.string() + "\n\n" + std::to_string(r.contaminated_examples) + " of " +
              std::to_string(r.examples) + " training examples have a prompt equal or near to one of the " +
              std::to_string(r.test_examples) + " test examples.\n\n";
        for (std::size_t i = 0; i < std::min(shown, r.test_exact.size()); ++i)
            md += "- line " + std::to_string(r.test_exact[i].a) + " = test line " + std::to_string(r.test_exact[i].b) +
                  "\n";
        md += more(r.test_exact.size());
        for (std::size_t i = 0; i < std::min(shown, r.test_near.size()); ++i)
            md += "- line " + std::to_string(r.test_near[i].a) + " ~ test line " + std::to_string(r.test_near[i].b) +
                  " (Jaccard " + fmt(r.test_near[i].jaccard, "%.3f") + ")\n";
        md += more(r.test_near.size());
        if (!r.test_malformed.empty())
            md += "\nThe test file has " + std::to_string(r.test_malformed.size()) + " malformed lines.\n";
    }
    if (r.teacher) {
        const TeacherOutput& t = *r.teacher;
        md += "\n## What the teacher produced\n\n";
        md += "- answers kept: " + std::to_string(t.answers) + " (" + std::to_string(t.truncated_kept) +
              " of them cut off by max_new_tokens)\n";
        md += "- rejected: " + std::to_string(t.rejected_empty) + " empty, " + std::to_string(t.rejected_truncated) +
              " truncated (hit max_new_tokens), " + std::to_string(t.rejected_duplicate) + " duplicates\n";
        md += "- refusals (a refusal phrase in the first 120 bytes): " + std::to_string(t.refusals);
        for (std::size_t i = 0; i < std::min(shown, t.refusal_lines.size()); ++i)
            md += (i ? ", " : "; lines ") + std::to_string(t.refusal_lines[i]);
        md += "\n- completion tokens: p50 " + fmt(t.completion_tokens.p50) + ", p95 " + fmt(t.completion_tokens.p95) +
              ", max " + fmt(t.completion_tokens.max) + " of max_new_tokens " + std::to_string(t.max_new_tokens) +
              "; " + std::to_string(t.at_limit) + " answers reached it\n";
    }
    md += "\n## Length histograms\n\n";
    for (const auto& f : r.lengths) {
        const std::string p = inspect_detail::file_part(f.field);
        md += "![" + f.field + " tokens](lengths-" + p + "-tokens.svg) ![" + f.field + " chars](lengths-" + p +
              "-chars.svg)\n";
    }
    if (r.teacher) md += "![teacher completion tokens](teacher-completion-tokens.svg)\n";
    return md;
}

/// The histogram charts: (file name, SVG) for every field, in tokens and in characters.
inline std::vector<std::pair<std::string, std::string>> histogram_charts(const Inspection& r) {
    std::vector<std::pair<std::string, std::string>> out;
    auto chart = [&](std::string file, const std::string& title, const LengthStats& u) {
        std::vector<std::string> groups;
        std::vector<double> counts;
        for (std::size_t i = 0; i < u.counts.size(); ++i) {
            groups.push_back(inspect_detail::fmt(u.edges[i], "%.0f"));
            counts.push_back(double(u.counts[i]));
        }
        out.emplace_back(std::move(file), eval::bar_chart(title + ", bins from their lower edge", groups, {"examples"},
                                                          {counts}, 960, 400));
    };
    for (const auto& f : r.lengths) {
        const std::string p = "lengths-" + inspect_detail::file_part(f.field);
        chart(p + "-tokens.svg", f.field + " length (" + r.tokenizer + " tokens)", f.tokens);
        chart(p + "-chars.svg", f.field + " length (chars)", f.chars);
    }
    if (r.teacher)
        chart("teacher-completion-tokens.svg",
              "teacher completion tokens (max_new_tokens " + std::to_string(r.teacher->max_new_tokens) + ")",
              r.teacher->completion_tokens);
    return out;
}

/// Writes inspect.json, inspect.md and the histogram SVGs into `dir` (created if absent), each file
/// atomically. Throws io_error.
inline void write_inspection(const Inspection& r, const std::filesystem::path& dir) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) throw io_error(dir, "cannot create the directory: " + ec.message());
    io::write_file_atomic(dir / "inspect.json", to_json(r).dump(2) + "\n");
    io::write_file_atomic(dir / "inspect.md", to_markdown(r));
    for (const auto& [name, svg] : histogram_charts(r)) io::write_file_atomic(dir / name, svg);
}

}  // namespace distill::data
