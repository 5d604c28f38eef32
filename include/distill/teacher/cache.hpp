#pragma once
/// @file cache.hpp
/// `teacher::Cache`: teacher outputs computed earlier, read back. Two sources:
/// - our own `synthetic.jsonl` (see `teacher/synthetic.hpp`) and its top-k cache file
///   (`synthetic.topk`, see `io/topk_cache.hpp`), as the generate stage writes them;
/// - JSONL as OpenAI-compatible APIs return it: one chat completion per line
///   (`choices[0].message.content`, `choices[0].logprobs.content[].top_logprobs`), or batch-API output
///   lines (`{"custom_id": ..., "response": {"status_code": 200, "body": {...}}}`). A line with a
///   `custom_id` answers the example of that id; a line without one answers the example at its
///   position (the n-th response line answers the n-th example).
///
/// A cache is refused, with an error naming both fingerprints, when `expected_fingerprint` is set and
/// differs from the fingerprint its records carry.

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <boost/hana/adapt_struct.hpp>
#include <boost/hana/set.hpp>

#include "distill/data/byte_tokenizer.hpp"
#include "distill/data/jsonl.hpp"
#include "distill/detail/hash.hpp"
#include "distill/io/topk_cache.hpp"
#include "distill/signals.hpp"
#include "distill/teacher.hpp"
#include "distill/teacher/openai_format.hpp"
#include "distill/teacher/synthetic.hpp"

namespace distill::teacher {

/// Where cached answers are. Keys are the JSON keys of a job's `teacher` object of kind "cache".
struct CacheConfig {
    std::string path{};                  ///< synthetic.jsonl or an OpenAI responses JSONL file
    std::string format = "auto";         ///< "synthetic", "openai", or "auto" (decided by the first record)
    std::string topk{};                  ///< top-k cache file; "" = `<path without .jsonl>.topk` next to `path`
    std::string expected_fingerprint{};  ///< when set, a cache with another fingerprint is refused
    std::string tokenizer{};             ///< OpenAI files: the tokenizer of their logprob tokens ("" = unknown)

    void validate(const std::string& where = "teacher") const {
        if (path.empty()) throw config_error(where + ".path", "is required");
        if (format != "auto" && format != "synthetic" && format != "openai")
            throw config_error(where + ".format",
                               "expected \"auto\", \"synthetic\" or \"openai\", got \"" + format + "\"");
    }
};

/// A teacher that answers from cached outputs.
/// @tparam TopK whether it provides top-k log-probabilities; then every answer must have them (a
///         synthetic.jsonl needs its top-k file; an OpenAI file needs logprobs whose tokenizer is
///         `Tokenizer`), checked when the cache is opened.
/// @tparam Tokenizer the student's tokenizer, onto which OpenAI logprob tokens are mapped.
template <bool TopK = false, class Tokenizer = data::ByteTokenizer>
class Cache {
public:
    static constexpr auto provides = signal::sampled_tokens<TopK>;
    static constexpr bool batch_invariant = true;
    using tokenizer_type = Tokenizer;

    /// One cached answer with its top-k data (views into the mapped top-k file, empty when none).
    struct Entry {
        SyntheticRecord record;
        const io::topk_record* topk = nullptr;
    };

    /// Opens and validates the cache. Throws format_error naming `file:line`, fingerprint_error, or
    /// config_error when top-k data is required but absent.
    explicit Cache(CacheConfig config) : cfg_(std::move(config)) {
        cfg_.validate();
        std::string format = cfg_.format;
        data::read_jsonl(cfg_.path, {}, [&](std::uint64_t line, const nlohmann::json& j) {
            if (format == "auto") format = j.contains("choices") || j.contains("custom_id") ? "openai" : "synthetic";
            if (format == "synthetic")
                add_synthetic(line, j);
            else
                add_openai(line, j);
        });
        openai_ = format == "openai";
        if (openai_) {
            fingerprint_ = "cache:sha256=" + detail::sha256_file(cfg_.path).substr(0, 32);
        } else {
            open_topk();
        }
        if (!cfg_.expected_fingerprint.empty() && fingerprint_ != cfg_.expected_fingerprint)
            throw fingerprint_error(cfg_.path, fingerprint_, cfg_.expected_fingerprint);
    }

    /// The fingerprint of the teacher that produced the answers (synthetic.jsonl), or a hash of the
    /// file (OpenAI JSONL).
    std::string fingerprint() const { return fingerprint_; }
    std::string name() const { return "cache:" + std::filesystem::path(cfg_.path).filename().string(); }
    int batch_size() const noexcept { return 256; }

    /// Number of cached answers.
    std::size_t size() const noexcept { return entries_.size(); }
    /// Answer i in file order.
    const Entry& operator[](std::size_t i) const { return entries_.at(i); }
    /// The answer for example `id`, or nullptr.
    const Entry* find(const std::string& id) const {
        auto it = by_id_.find(id);
        return it == by_id_.end() ? nullptr : &entries_[it->second];
    }
    /// The top-k file, when one was opened.
    const io::topk_file* topk_file() const noexcept { return topk_.get(); }

    /// Answers each request from the cache (by id; OpenAI lines without custom_id by position). A
    /// request with no cached answer fails with a message naming its id.
    void generate(std::span<const Request> requests, const Sampling& sampling, const response_sink& sink) {
        for (std::size_t i = 0; i < requests.size(); ++i) {
            const Entry* e = find(requests[i].id);
            if (!e && requests[i].index < by_position_.size() && by_position_[requests[i].index] != npos)
                e = &entries_[by_position_[requests[i].index]];
            if (!e) {
                sink(i, Response::failure("no cached answer for example '" + requests[i].id + "' in " + cfg_.path));
                continue;
            }
            Response r = e->record.response;
            if constexpr (TopK) attach_topk(r, *e, sampling.top_logprobs);
            sink(i, std::move(r));
        }
    }

private:
    static constexpr std::size_t npos = std::size_t(-1);

    void add_synthetic(std::uint64_t line, const nlohmann::json& j) {
        SyntheticRecord r = parse_synthetic(j);
        if (fingerprint_.empty())
            fingerprint_ = r.fingerprint;
        else if (r.fingerprint != fingerprint_)
            throw data::bad_line("teacher fingerprint " + r.fingerprint + " differs from the file's first record's " +
                                 fingerprint_ + " (records of two teachers mixed in one file)");
        add(line, std::move(r), npos);
    }

    void add_openai(std::uint64_t line, const nlohmann::json& j) {
        openai::Completion c;
        try {
            c = openai::parse_completion(j);
        } catch (const openai::protocol_error& e) {
            throw data::bad_line(e.what());
        }
        SyntheticRecord r;
        r.response = std::move(c.response);
        r.source_line = line;
        const bool same_tokenizer = cfg_.tokenizer == Tokenizer::id();
        if constexpr (TopK) {
            if (!same_tokenizer)
                throw config_error("teacher.tokenizer",
                                   "is \"" + cfg_.tokenizer + "\": the logprob tokens of " + cfg_.path +
                                       " can be mapped onto the student tokenizer " + std::string(Tokenizer::id()) +
                                       " only when they come from that tokenizer; use Cache<false> for text only");
            if (c.logprobs.empty() && !r.response.text.empty())
                throw data::bad_line("no choices[0].logprobs.content, but top-k log-probabilities are required");
        }
        if (same_tokenizer && !c.logprobs.empty()) {
            const int k = c.logprobs.front().top.empty() ? 0 : int(c.logprobs.front().top.size());
            try {
                openai::map_logprobs(r.response, c.logprobs, k, Tokenizer{});
            } catch (const openai::protocol_error& e) {
                throw data::bad_line(e.what());
            }
            r.topk = k;
        }
        const std::size_t position = ordinal_++;
        if (!c.custom_id.empty()) {
            r.id = c.custom_id;
            add(line, std::move(r), npos);
        } else {
            r.id = "#" + std::to_string(position);
            add(line, std::move(r), position);
        }
    }

    void add(std::uint64_t line, SyntheticRecord r, std::size_t position) {
        if (!by_id_.emplace(r.id, entries_.size()).second)
            throw data::bad_line("a second answer for example '" + r.id + "'");
        if (position != npos) {
            if (by_position_.size() <= position) by_position_.resize(position + 1, npos);
            by_position_[position] = entries_.size();
        }
        (void)line;
        entries_.push_back({std::move(r), nullptr});
    }

    void open_topk() {
        std::filesystem::path topk = cfg_.topk;
        if (topk.empty()) topk = std::filesystem::path(cfg_.path).replace_extension(".topk");
        const bool needed =
            std::any_of(entries_.begin(), entries_.end(), [](const Entry& e) { return e.record.topk > 0; });
        if (!std::filesystem::exists(topk)) {
            if (TopK && !entries_.empty())
                throw config_error("teacher.topk",
                                   "top-k log-probabilities are required but " + topk.string() + " does not exist");
            if (needed)
                throw format_error(
                    topk, 0,
                    "missing: " + cfg_.path + " has records with top-k data, but their top-k cache file is gone");
            return;
        }
        topk_ = std::make_unique<io::topk_file>(topk);
        const auto& h = topk_->header();
        if (!fingerprint_.empty() && h.fingerprint != fingerprint_)
            throw fingerprint_error(topk.string(), h.fingerprint, fingerprint_);
        if (h.tokenizer != Tokenizer::id())
            throw format_error(
                topk, 0, "top-k ids belong to tokenizer " + h.tokenizer + ", not " + std::string(Tokenizer::id()));
        for (auto& e : entries_) {
            e.topk = topk_->find(e.record.id);
            if (e.record.topk > 0 && !e.topk)
                throw format_error(topk, 0, "no record for example '" + e.record.id + "' of " + cfg_.path);
            if (TopK && !e.topk) throw format_error(topk, 0, "no top-k record for example '" + e.record.id + "'");
            if (e.topk && !e.record.response.tokens.empty() &&
                !std::equal(e.topk->tokens.begin(), e.topk->tokens.end(), e.record.response.tokens.begin(),
                            e.record.response.tokens.end()))
                throw format_error(topk, 0,
                                   "the tokens of example '" + e.record.id + "' differ from " + cfg_.path + "'s");
        }
    }

    // Copies the answer's top-k data into r, truncated to the k asked for (all of it when 0).
    void attach_topk(Response& r, const Entry& e, int want) const {
        if (e.topk) {
            const int k = int(topk_->header().k);
            const int use = want > 0 ? std::min(want, k) : k;
            const std::size_t n = e.topk->positions();
            r.tokens.assign(e.topk->tokens.begin(), e.topk->tokens.end());
            r.k = use;
            r.top_ids.clear();
            r.top_logprobs.clear();
            for (std::size_t i = 0; i < n; ++i)
                for (int j = 0; j < use; ++j) {
                    r.top_ids.push_back(e.topk->top_ids[i * std::size_t(k) + std::size_t(j)]);
                    r.top_logprobs.push_back(e.topk->top_logprobs[i * std::size_t(k) + std::size_t(j)]);
                }
        } else if (want > 0 && r.k > want) {
            // OpenAI records carry their own top-k arrays; keep the first `want` of each position.
            std::vector<std::int32_t> ids;
            std::vector<float> lps;
            for (std::size_t i = 0; i < r.tokens.size(); ++i)
                for (int j = 0; j < want; ++j) {
                    ids.push_back(r.top_ids[i * std::size_t(r.k) + std::size_t(j)]);
                    lps.push_back(r.top_logprobs[i * std::size_t(r.k) + std::size_t(j)]);
                }
            r.top_ids = std::move(ids);
            r.top_logprobs = std::move(lps);
            r.k = want;
        }
    }

    CacheConfig cfg_;
    bool openai_ = false;
    std::string fingerprint_{};
    std::vector<Entry> entries_{};
    std::map<std::string, std::size_t> by_id_;
    std::vector<std::size_t> by_position_{};
    std::size_t ordinal_ = 0;
    std::unique_ptr<io::topk_file> topk_;
};

}  // namespace distill::teacher

BOOST_HANA_ADAPT_STRUCT(distill::teacher::CacheConfig, path, format, topk, expected_fingerprint, tokenizer);
