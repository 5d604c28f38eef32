#pragma once
/// @file metrics.hpp
/// Task metrics, each defined to agree with the package users compare against:
/// - `corpus_bleu`: sacreBLEU's corpus BLEU (13a tokenizer, 4-grams, 'exp' smoothing, one reference
///   per hypothesis), 0–100; golden-tested against the `sacrebleu` package to 0.01.
/// - `rouge_l`: the `rouge-score` package's ROUGE-L (its default tokenizer, no stemmer): precision,
///   recall and F1 of one pair, 0–1; `mean_rouge_l_f1` averages F1 over pairs.
/// - `exact_match` and `token_f1` (SQuAD's normalization and token F1), `macro_f1` (scikit-learn's
///   macro-averaged F1 over the references' classes), `numeric_match` (the final number of a math
///   answer), `perplexity` from summed negative log-likelihood.

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "distill/error.hpp"

namespace distill::eval {

namespace detail {

// Decodes the UTF-8 sequence at s[i] (advancing i); invalid bytes decode as themselves (one byte).
inline std::uint32_t next_code_point(std::string_view s, std::size_t& i) {
    const auto c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
    if (i + len > s.size()) len = 1;
    std::uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k < len; ++k) {
        const auto cc = static_cast<unsigned char>(s[i + k]);
        if ((cc >> 6) != 0x2) {
            len = 1;
            cp = c;
            break;
        }
        cp = (cp << 6) | (cc & 0x3F);
    }
    i += len;
    return cp;
}

// Python's str.isspace() (what str.split() and str.rstrip() split on).
inline bool is_python_space(std::uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

// Python's str.split() with no argument.
inline std::vector<std::string> split_python(std::string_view s) {
    std::vector<std::string> out;
    std::string cur;
    for (std::size_t i = 0; i < s.size();) {
        const std::size_t start = i;
        const std::uint32_t cp = next_code_point(s, i);
        if (is_python_space(cp)) {
            if (!cur.empty()) out.push_back(std::move(cur));
            cur.clear();
        } else {
            cur.append(s.substr(start, i - start));
        }
    }
    if (!cur.empty()) out.push_back(std::move(cur));
    return out;
}

// Python's str.rstrip() with no argument.
inline std::string_view rstrip_python(std::string_view s) {
    std::size_t keep = 0;
    for (std::size_t i = 0; i < s.size();) {
        const std::uint32_t cp = next_code_point(s, i);
        if (!is_python_space(cp)) keep = i;
    }
    return s.substr(0, keep);
}

inline void replace_all(std::string& s, std::string_view from, std::string_view to) {
    for (std::size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos; pos += to.size())
        s.replace(pos, from.size(), to);
}

inline bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

}  // namespace detail

/// sacreBLEU's 13a tokenization (mteval-v13a) of one segment, tokens joined by single spaces.
inline std::string tokenize_13a(std::string_view segment) {
    using namespace detail;
    std::string line(segment);
    replace_all(line, "<skipped>", "");
    replace_all(line, "-\n", "");
    replace_all(line, "\n", " ");
    if (line.find('&') != std::string::npos) {
        replace_all(line, "&quot;", "\"");
        replace_all(line, "&amp;", "&");
        replace_all(line, "&lt;", "<");
        replace_all(line, "&gt;", ">");
    }
    line = " " + line + " ";
    // Each pass is one re.sub of sacreBLEU's TokenizerRegexp: leftmost, non-overlapping matches.
    auto punct = [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return (u >= '{' && u <= '~') || (u >= '[' && u <= '`') || (u >= ' ' && u <= '&') || (u >= '(' && u <= '+') ||
               (u >= ':' && u <= '@') || u == '/';
    };
    std::string out;
    for (char c : line) {  // ([\{-\~\[-\` -\&\(-\+\:-\@\/]) -> ' \1 '
        if (punct(c)) {
            out += ' ';
            out += c;
            out += ' ';
        } else {
            out += c;
        }
    }
    line.swap(out);
    out.clear();
    for (std::size_t i = 0; i < line.size();) {  // ([^0-9])([\.,]) -> '\1 \2 '
        if (i + 1 < line.size() && !is_digit(line[i]) && (line[i + 1] == '.' || line[i + 1] == ',')) {
            out += line[i];
            out += ' ';
            out += line[i + 1];
            out += ' ';
            i += 2;
        } else {
            out += line[i++];
        }
    }
    line.swap(out);
    out.clear();
    for (std::size_t i = 0; i < line.size();) {  // ([\.,])([^0-9]) -> ' \1 \2'
        if (i + 1 < line.size() && (line[i] == '.' || line[i] == ',') && !is_digit(line[i + 1])) {
            out += ' ';
            out += line[i];
            out += ' ';
            out += line[i + 1];
            i += 2;
        } else {
            out += line[i++];
        }
    }
    line.swap(out);
    out.clear();
    for (std::size_t i = 0; i < line.size();) {  // ([0-9])(-) -> '\1 \2 '
        if (i + 1 < line.size() && is_digit(line[i]) && line[i + 1] == '-') {
            out += line[i];
            out += " - ";
            i += 2;
        } else {
            out += line[i++];
        }
    }
    std::string joined;
    for (const auto& t : split_python(out)) {
        if (!joined.empty()) joined += ' ';
        joined += t;
    }
    return joined;
}

/// The sufficient statistics and score of a corpus BLEU.
struct BleuResult {
    double score = 0;           ///< 0–100
    double precisions[4] = {};  ///< n-gram precisions, 0–100
    double brevity_penalty = 1;
    std::int64_t sys_len = 0, ref_len = 0;
};

/// Corpus BLEU of `hypotheses` against one reference each, exactly as `sacrebleu.corpus_bleu(hyps, [refs])`.
inline BleuResult corpus_bleu(const std::vector<std::string>& hypotheses, const std::vector<std::string>& references) {
    using namespace detail;
    if (hypotheses.size() != references.size())
        throw error("corpus_bleu: " + std::to_string(hypotheses.size()) + " hypotheses but " +
                    std::to_string(references.size()) + " references");
    constexpr int order = 4;
    std::int64_t correct[order] = {}, total[order] = {};
    BleuResult r;
    for (std::size_t s = 0; s < hypotheses.size(); ++s) {
        const auto hyp = split_python(tokenize_13a(rstrip_python(hypotheses[s])));
        const auto ref = split_python(tokenize_13a(rstrip_python(references[s])));
        r.sys_len += std::int64_t(hyp.size());
        r.ref_len += std::int64_t(ref.size());
        for (int n = 1; n <= order; ++n) {
            std::map<std::vector<std::string>, std::int64_t> ref_counts, hyp_counts;
            for (std::size_t i = 0; i + n <= ref.size(); ++i) ++ref_counts[{ref.begin() + i, ref.begin() + i + n}];
            for (std::size_t i = 0; i + n <= hyp.size(); ++i) ++hyp_counts[{hyp.begin() + i, hyp.begin() + i + n}];
            for (const auto& [gram, count] : hyp_counts) {
                total[n - 1] += count;
                if (auto it = ref_counts.find(gram); it != ref_counts.end())
                    correct[n - 1] += std::min(count, it->second);
            }
        }
    }
    if (r.sys_len < r.ref_len)
        r.brevity_penalty = r.sys_len > 0 ? std::exp(1.0 - double(r.ref_len) / double(r.sys_len)) : 0.0;
    if (std::all_of(correct, correct + order, [](std::int64_t c) { return c == 0; })) return r;
    double smooth = 1, log_sum = 0;
    for (int n = 0; n < order; ++n) {
        if (total[n] == 0) break;
        if (correct[n] == 0) {
            smooth *= 2;
            r.precisions[n] = 100.0 / (smooth * double(total[n]));
        } else {
            r.precisions[n] = 100.0 * double(correct[n]) / double(total[n]);
        }
    }
    for (int n = 0; n < order; ++n) log_sum += r.precisions[n] > 0 ? std::log(r.precisions[n]) : -9999999999.0;
    r.score = r.brevity_penalty * std::exp(log_sum / order);
    return r;
}

/// The `rouge-score` package's default tokenization (lowercase, runs of anything but [a-z0-9] split).
inline std::vector<std::string> tokenize_rouge(std::string_view text) {
    using namespace detail;
    std::vector<std::string> tokens;
    std::string cur;
    auto flush = [&] {
        if (!cur.empty()) tokens.push_back(std::move(cur));
        cur.clear();
    };
    for (std::size_t i = 0; i < text.size();) {
        const std::uint32_t cp = next_code_point(text, i);
        // str.lower() maps exactly two non-ASCII code points onto [a-z]: U+212A (Kelvin sign -> k)
        // and U+0130 (İ -> i + U+0307, whose combining dot then splits the word).
        if (cp == 0x130) {
            cur += 'i';
            flush();
            continue;
        }
        const char c = cp == 0x212A ? 'k' : cp < 0x80 ? static_cast<char>(std::tolower(int(cp))) : '\0';
        if ((c >= 'a' && c <= 'z') || is_digit(c))
            cur += c;
        else
            flush();
    }
    flush();
    return tokens;
}

/// ROUGE-L of one prediction against one target.
struct RougeScore {
    double precision = 0, recall = 0, f1 = 0;
};

/// ROUGE-L (longest common subsequence) as `rouge_scorer.RougeScorer(['rougeL']).score(target, prediction)`.
inline RougeScore rouge_l(std::string_view target, std::string_view prediction) {
    const auto t = tokenize_rouge(target), p = tokenize_rouge(prediction);
    if (t.empty() || p.empty()) return {};
    std::vector<std::int64_t> prev(p.size() + 1, 0), cur(p.size() + 1, 0);
    for (std::size_t i = 1; i <= t.size(); ++i) {
        for (std::size_t j = 1; j <= p.size(); ++j)
            cur[j] = t[i - 1] == p[j - 1] ? prev[j - 1] + 1 : std::max(prev[j], cur[j - 1]);
        std::swap(prev, cur);
    }
    const double lcs = double(prev[p.size()]);
    RougeScore s{lcs / double(p.size()), lcs / double(t.size()), 0};
    s.f1 = s.precision + s.recall > 0 ? 2 * s.precision * s.recall / (s.precision + s.recall) : 0.0;
    return s;
}

/// Mean ROUGE-L F1 over pairs (0 for an empty corpus).
inline double mean_rouge_l_f1(const std::vector<std::string>& predictions, const std::vector<std::string>& targets) {
    if (predictions.size() != targets.size())
        throw error("rouge_l: " + std::to_string(predictions.size()) + " predictions but " +
                    std::to_string(targets.size()) + " targets");
    double sum = 0;
    for (std::size_t i = 0; i < predictions.size(); ++i) sum += rouge_l(targets[i], predictions[i]).f1;
    return predictions.empty() ? 0.0 : sum / double(predictions.size());
}

/// SQuAD answer normalization: lowercase, drop ASCII punctuation and the articles a/an/the, collapse whitespace.
inline std::string normalize_answer(std::string_view s) {
    std::string lowered;
    for (char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x80 && std::ispunct(u)) continue;
        lowered += u < 0x80 ? static_cast<char>(std::tolower(u)) : c;
    }
    std::string out;
    for (const auto& w : detail::split_python(lowered)) {
        if (w == "a" || w == "an" || w == "the") continue;
        if (!out.empty()) out += ' ';
        out += w;
    }
    return out;
}

/// Exact match after `normalize_answer`.
inline bool exact_match(std::string_view prediction, std::string_view reference) {
    return normalize_answer(prediction) == normalize_answer(reference);
}

/// SQuAD's token F1 of one answer: the harmonic mean of precision and recall of the
/// `normalize_answer` tokens shared with the reference (a multiset intersection); when either side
/// normalizes to no tokens, 1 if both do and 0 otherwise (the official evaluate-v2.0 script).
inline double token_f1(std::string_view prediction, std::string_view reference) {
    auto pred = detail::split_python(normalize_answer(prediction));
    auto ref = detail::split_python(normalize_answer(reference));
    if (pred.empty() || ref.empty()) return pred.empty() && ref.empty() ? 1.0 : 0.0;
    std::sort(pred.begin(), pred.end());
    std::sort(ref.begin(), ref.end());
    std::vector<std::string> common;
    std::set_intersection(pred.begin(), pred.end(), ref.begin(), ref.end(), std::back_inserter(common));
    if (common.empty()) return 0.0;
    const double precision = double(common.size()) / double(pred.size());
    const double recall = double(common.size()) / double(ref.size());
    return 2 * precision * recall / (precision + recall);
}

/// Mean `token_f1` over pairs (0 for an empty corpus).
inline double mean_token_f1(const std::vector<std::string>& predictions, const std::vector<std::string>& references) {
    double sum = 0;
    for (std::size_t i = 0; i < predictions.size() && i < references.size(); ++i)
        sum += token_f1(predictions[i], references[i]);
    return predictions.empty() ? 0.0 : sum / double(predictions.size());
}

/// Macro-averaged F1 of a classification: labels compared after `normalize_answer`; the classes
/// are the labels the references use, so a prediction outside them counts as a miss of its true
/// class and a false positive of none (scikit-learn's `f1_score(y_true, y_pred, average="macro",
/// labels=sorted(set(y_true)))`; a class with no true and no predicted positive scores 0 there too).
inline double macro_f1(const std::vector<std::string>& predictions, const std::vector<std::string>& references) {
    std::vector<std::string> pred, ref;
    for (std::size_t i = 0; i < predictions.size() && i < references.size(); ++i) {
        pred.push_back(normalize_answer(predictions[i]));
        ref.push_back(normalize_answer(references[i]));
    }
    std::vector<std::string> classes = ref;
    std::sort(classes.begin(), classes.end());
    classes.erase(std::unique(classes.begin(), classes.end()), classes.end());
    if (classes.empty()) return 0.0;
    double sum = 0;
    for (const auto& c : classes) {
        std::size_t tp = 0, fp = 0, fn = 0;
        for (std::size_t i = 0; i < ref.size(); ++i) {
            tp += pred[i] == c && ref[i] == c;
            fp += pred[i] == c && ref[i] != c;
            fn += pred[i] != c && ref[i] == c;
        }
        if (tp > 0) sum += 2.0 * double(tp) / double(2 * tp + fp + fn);
    }
    return sum / double(classes.size());
}

/// The last number in `text` (optional sign, thousands separators, decimals; "1,234.5" -> 1234.5),
/// the convention for the final answer of a math solution. nullopt when there is none.
inline std::optional<double> final_number(std::string_view text) {
    using detail::is_digit;
    auto digit_at = [&](std::size_t k) { return k < text.size() && is_digit(text[k]); };
    // a comma between digits with exactly three digits after it is a thousands separator
    auto thousands_at = [&](std::size_t k) {
        return text[k] == ',' && digit_at(k + 1) && digit_at(k + 2) && digit_at(k + 3) && !digit_at(k + 4);
    };
    std::optional<double> last;
    for (std::size_t i = 0; i < text.size();) {
        if (!is_digit(text[i])) {
            ++i;
            continue;
        }
        const bool negative = i > 0 && text[i - 1] == '-' && !(i >= 2 && is_digit(text[i - 2]));
        std::string digits;
        bool seen_point = false;
        std::size_t j = i;
        for (; j < text.size(); ++j) {
            if (is_digit(text[j])) {
                digits += text[j];
            } else if (thousands_at(j) && !seen_point) {
                continue;
            } else if (text[j] == '.' && !seen_point && digit_at(j + 1)) {
                seen_point = true;
                digits += '.';
            } else {
                break;
            }
        }
        last = (negative ? -1.0 : 1.0) * std::stod(digits);
        i = j;
    }
    return last;
}

/// True when both texts have a final number and they agree to 1e-6 (relative, or absolute near 0).
inline bool numeric_match(std::string_view prediction, std::string_view reference) {
    const auto p = final_number(prediction), r = final_number(reference);
    return p && r && std::abs(*p - *r) <= 1e-6 * std::max(1.0, std::abs(*r));
}

/// exp(total negative log-likelihood / tokens); +inf for zero tokens.
inline double perplexity(double total_nll, std::int64_t tokens) {
    return tokens > 0 ? std::exp(total_nll / double(tokens)) : std::numeric_limits<double>::infinity();
}

/// The q-quantile (0..1) of `values` by linear interpolation (numpy's default); 0 for none.
inline double percentile(std::vector<double> values, double q) {
    if (values.empty()) return 0;
    std::sort(values.begin(), values.end());
    const double pos = q * double(values.size() - 1);
    const auto lo = static_cast<std::size_t>(pos);
    const std::size_t hi = std::min(lo + 1, values.size() - 1);
    return values[lo] + (pos - double(lo)) * (values[hi] - values[lo]);
}

}  // namespace distill::eval
