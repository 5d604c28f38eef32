#pragma once
/// @file pipeline/generate.hpp
/// The generate stage: the teacher answers every example, and its answers become the student's
/// training data.
///
/// **Output** (in `output_dir`, file names starting with `name`, "synthetic" by default; give the
/// validation set another name, e.g. "synthetic.validation", to keep both in one directory):
/// - `synthetic.jsonl` — one record per accepted answer (format in `teacher/synthetic.hpp`), in the
///   order of the input data, each appended and fsynced before the next;
/// - `synthetic.topk` — the answers' top-k log-probabilities (`io/topk_cache.hpp`), when the teacher
///   provides them and `generation.top_logprobs > 0`; record i there belongs to line i of synthetic.jsonl;
/// - `synthetic.rejected.jsonl` — answers dropped by validation (empty; truncated by max_new_tokens
///   unless `keep_truncated`; exact duplicates of an earlier prompt and answer), with the reason;
/// - `synthetic.report.json` — the report: counts of each outcome, failures, throughput, and for an API
///   teacher how its tokens mapped onto the tokenizer (`token_mapping`) (written atomically).
/// `generate_stage` also writes `synthetic.inspect/` (data/inspect.hpp) for the training set's answers.
///
/// **Resume.** Every record carries the generation fingerprint (teacher + sampling settings). A
/// rerun refuses output with another fingerprint (`fingerprint_error`, naming both), cuts off a
/// record torn by a crash, skips every example already answered or rejected, and asks the teacher
/// only for the rest, so a crash loses at most the answers in flight and never duplicates a record.
/// Examples are handed to the teacher in fixed windows of the input order; when the teacher's answers
/// may depend on their batch (`teacher_batch_invariant` is false), a partly answered window is
/// re-run whole and only its missing answers are kept, so a resumed run writes exactly the bytes an
/// uninterrupted run writes.
///
/// **Failures.** A request the teacher could not answer (after its own retries) is counted, listed
/// in the report and left for the next run. When fewer than `min_success_ratio` of this run's
/// requests were answered, the stage throws `generate_error` after writing the report.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <boost/hana/adapt_struct.hpp>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include "distill/data/chat.hpp"
#include "distill/data/inspect.hpp"
#include "distill/data/jsonl.hpp"
#include "distill/detail/hash.hpp"
#include "distill/error.hpp"
#include "distill/io/durable.hpp"
#include "distill/io/topk_cache.hpp"
#include "distill/parallel.hpp"
#include "distill/signals.hpp"
#include "distill/teacher.hpp"
#include "distill/teacher/synthetic.hpp"

namespace distill {

/// Settings of the generate stage (not part of a job file: the Distiller sets them from the run
/// directory and its options; errors name them under `generate`).
struct GenerateConfig {
    std::string output_dir = "out";    ///< where synthetic.jsonl and its companions go (created if absent)
    std::string name = "synthetic";    ///< the output files' common name: <name>.jsonl, <name>.topk, ...
    bool keep_truncated = false;       ///< keep answers cut off by max_new_tokens (finish_reason "length")
    bool deduplicate = true;           ///< drop an answer whose prompt and text equal an earlier record's
    bool write_topk = true;            ///< write synthetic.topk when the teacher gives top-k log-probabilities
    double min_success_ratio = 0.7;    ///< fail the stage when fewer of this run's requests were answered
    bool progress = true;              ///< print a progress line to stderr
    double progress_interval_s = 1.0;  ///< seconds between progress lines

    /// Throws `config_error` naming the field.
    void validate(const std::string& path = "generate") const {
        if (output_dir.empty()) throw config_error(path + ".output_dir", "must not be empty");
        if (name.empty() || name.find('/') != std::string::npos)
            throw config_error(path + ".name", "must be a non-empty file name without '/', got \"" + name + "\"");
        if (!(min_success_ratio >= 0.0 && min_success_ratio <= 1.0))
            throw config_error(path + ".min_success_ratio",
                               "must be in [0, 1], got " + std::to_string(min_success_ratio));
        if (!(progress_interval_s > 0.0)) throw config_error(path + ".progress_interval_s", "must be > 0");
    }
};

/// A request the teacher could not answer.
struct GenerateFailure {
    std::string id{};
    std::uint64_t line = 0;
    std::string error{};
};

/// What the generate stage did (also written to `<name>.report.json`).
struct GenerateReport {
    std::string fingerprint{};       ///< generation fingerprint stamped on every record
    std::string teacher{};           ///< the teacher's name
    std::uint64_t examples = 0;      ///< examples in the input
    std::uint64_t already_done = 0;  ///< answered or rejected by an earlier run (skipped)
    std::uint64_t requested = 0;     ///< answers requested in this run (re-run window members excluded)
    std::uint64_t accepted = 0;      ///< records appended to synthetic.jsonl in this run
    std::uint64_t rejected_empty = 0;
    std::uint64_t rejected_truncated = 0;
    std::uint64_t rejected_duplicate = 0;
    std::uint64_t failed = 0;  ///< not answered; retried by the next run
    std::uint64_t completion_tokens = 0;
    std::uint64_t skipped_input_lines = 0;  ///< bad input lines skipped under on_bad_line = "skip"
    std::uint64_t repaired_bytes = 0;       ///< bytes of torn records cut off before resuming
    double seconds = 0;
    std::vector<GenerateFailure> failures{};
    /// How an API teacher's tokens mapped onto the tokenizer, summed over this run's answers
    /// (teacher/openai_format.hpp); all zero for other teachers.
    teacher::TokenMapping token_mapping{};

    /// Every example has a record or a rejection.
    bool complete() const noexcept { return failed == 0; }
    /// Share of this run's requests that were answered (1 when none were needed).
    double success_ratio() const noexcept { return requested ? double(requested - failed) / double(requested) : 1.0; }
};

namespace detail {

// std::filesystem reports failures as filesystem_error; the stage reports io_error naming the file.
template <class F>
auto fs_call(const std::filesystem::path& path, const char* what, F&& f) {
    try {
        return f();
    } catch (const std::filesystem::filesystem_error& e) {
        throw io_error(path, std::string(what) + ": " + e.code().message());
    }
}

inline std::string answer_key(const std::vector<data::Message>& prompt, const std::string& text) {
    return detail::sha256_hex(data::messages_to_json(prompt).dump() + '\x1f' + text).substr(0, 32);
}

inline nlohmann::ordered_json report_json(const GenerateReport& r) {
    nlohmann::ordered_json j;
    j["fingerprint"] = r.fingerprint;
    j["teacher"] = r.teacher;
    j["complete"] = r.complete();
    j["examples"] = r.examples;
    j["already_done"] = r.already_done;
    j["requested"] = r.requested;
    j["accepted"] = r.accepted;
    j["rejected"] = {
        {"empty", r.rejected_empty}, {"truncated", r.rejected_truncated}, {"duplicate", r.rejected_duplicate}};
    j["failed"] = r.failed;
    j["success_ratio"] = r.success_ratio();
    j["completion_tokens"] = r.completion_tokens;
    j["skipped_input_lines"] = r.skipped_input_lines;
    j["repaired_bytes"] = r.repaired_bytes;
    j["seconds"] = r.seconds;
    nlohmann::ordered_json f = nlohmann::ordered_json::array();
    for (const auto& x : r.failures) f.push_back({{"id", x.id}, {"line", x.line}, {"error", x.error}});
    j["failures"] = std::move(f);
    const auto& m = r.token_mapping;
    if (m.tokens > 0)
        j["token_mapping"] = {{"top_entries", m.top_entries},
                              {"top_without_id", m.top_lost()},
                              {"top_unmapped", m.top_unmapped},
                              {"top_ambiguous", m.top_ambiguous},
                              {"top_duplicate", m.top_duplicate},
                              {"top_missing", m.top_missing},
                              {"tokens", m.tokens},
                              {"tokens_unmapped", m.tokens_unmapped},
                              {"retokenize_mismatches", m.retokenize_mismatches}};
    return j;
}

inline std::string duration(double s) {
    if (!(s >= 0) || s > 1e7) return "?";
    const long t = long(s + 0.5);
    char buf[32];
    if (t >= 3600)
        std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else if (t >= 60)
        std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
    else
        std::snprintf(buf, sizeof buf, "%lds", t);
    return buf;
}

}  // namespace detail

/// Runs the generate stage (see the file comment): `teacher` answers every example of `data` under
/// `sampling`; the results go to `config.output_dir`. Returns the report. Throws fingerprint_error
/// for output of another teacher, generate_error when the success ratio falls below the minimum,
/// io_error/format_error for unreadable or unwritable files, config_error for bad settings.
/// `indices`: each example's position in the whole data set (`teacher::Request::index`, which a
/// sampling teacher seeds from) when `data` is a shard of it; empty: their positions in `data`.
template <teacher_source Teacher>
GenerateReport generate(Teacher& teacher, const data::Dataset& data, const teacher::Sampling& sampling,
                        const GenerateConfig& config = {}, std::span<const std::uint64_t> indices = {}) {
    using clock = std::chrono::steady_clock;
    namespace fs = std::filesystem;
    config.validate();
    sampling.validate();
    const auto t0 = clock::now();
    detail::fs_call(config.output_dir, "cannot create the output directory",
                    [&] { return fs::create_directories(config.output_dir); });
    const fs::path dir = config.output_dir;
    const fs::path synthetic = dir / (config.name + ".jsonl"), topk_path = dir / (config.name + ".topk"),
                   rejected_path = dir / (config.name + ".rejected.jsonl"),
                   report_path = dir / (config.name + ".report.json");

    GenerateReport report;
    report.fingerprint = generation_fingerprint(teacher, sampling);
    const std::string tokenizer_id = teacher_tokenizer_id(teacher);  // of the answers' ids
    report.teacher = teacher.name();
    report.examples = data.examples.size();
    report.skipped_input_lines = data.stats.skipped.size();
    const bool with_topk =
        config.write_topk && teacher_provides<Teacher, signal::topk_logprobs_t> && sampling.top_logprobs > 0;

    // ---- what earlier runs left --------------------------------------------------------------------
    std::set<std::string> done;     // ids with a record or a rejection
    std::set<std::string> answers;  // answer keys, for deduplication
    std::set<std::string> with_record;
    report.repaired_bytes += io::truncate_to_last_line(synthetic);
    report.repaired_bytes += io::truncate_to_last_line(rejected_path);
    if (fs::exists(synthetic)) {
        data::read_jsonl(synthetic, {}, [&](std::uint64_t, const nlohmann::json& j) {
            auto r = teacher::parse_synthetic(j);
            if (r.fingerprint != report.fingerprint)
                throw teacher::fingerprint_error(synthetic.string(), r.fingerprint, report.fingerprint);
            answers.insert(detail::answer_key(r.prompt, r.response.text));
            with_record.insert(r.id);
            done.insert(r.id);
        });
    }
    if (fs::exists(rejected_path)) {
        data::read_jsonl(rejected_path, {}, [&](std::uint64_t, const nlohmann::json& j) {
            const std::string fp = j.value("fingerprint", "");
            if (fp != report.fingerprint)
                throw teacher::fingerprint_error(rejected_path.string(), fp, report.fingerprint);
            if (!j.contains("id") || !j["id"].is_string()) throw data::bad_line("missing field \"id\"");
            done.insert(j["id"].get<std::string>());
        });
    }
    std::uint32_t topk_version = io::detail::current_version;
    if (with_topk) {
        if (fs::exists(topk_path)) {
            const std::uint64_t size = std::filesystem::file_size(topk_path),
                                keep = io::topk_complete_prefix(topk_path);
            if (keep == 0) throw format_error(topk_path, 0, "top-k cache: not a distill top-k cache file (bad header)");
            if (keep < size) {
                io::truncate_durably(topk_path, keep);
                report.repaired_bytes += size - keep;
            }
            // A crash between the two appends of one answer leaves a top-k record without its line:
            // drop such trailing records, so record i is line i again.
            std::uint64_t cut = 0;
            {
                io::topk_file f(topk_path);
                topk_version = f.header().version;  // appends keep the file's format
                if (f.header().fingerprint != report.fingerprint)
                    throw teacher::fingerprint_error(topk_path.string(), f.header().fingerprint, report.fingerprint);
                std::size_t n = f.size();
                while (n > 0 && !with_record.count(std::string(f[n - 1].id))) --n;
                if (n < f.size()) cut = f[n].offset;
                for (std::size_t i = 0; i < n; ++i)
                    if (!with_record.count(std::string(f[i].id)))
                        throw format_error(
                            topk_path, 0,
                            "top-k record '" + std::string(f[i].id) + "' has no line in " + synthetic.string());
                if (n != with_record.size())
                    throw format_error(topk_path, 0,
                                       "holds " + std::to_string(n) + " records for the " +
                                           std::to_string(with_record.size()) + " lines of " + synthetic.string() +
                                           "; delete both to generate anew");
            }
            if (cut) {
                report.repaired_bytes += std::filesystem::file_size(topk_path) - cut;
                io::truncate_durably(topk_path, cut);
            }
        } else {
            if (!with_record.empty())
                throw format_error(topk_path, 0,
                                   "missing, but " + synthetic.string() + " has " + std::to_string(with_record.size()) +
                                       " records; delete it to generate anew");
            if constexpr (teacher_provides<Teacher, signal::topk_logprobs_t>) {
                io::write_file_atomic(topk_path,
                                      io::encode_topk_header({.version = io::detail::current_version,
                                                              .k = std::uint32_t(sampling.top_logprobs),
                                                              .vocab_size = std::uint32_t(teacher_vocab_size(teacher)),
                                                              .fingerprint = report.fingerprint,
                                                              .tokenizer = tokenizer_id}));
            }
        }
    }
    for (const auto& ex : data.examples) report.already_done += done.count(ex.id);
    if (config.progress) {
        // What answers and what it gives, stated once at the start (a text-only teacher says so here).
        std::fprintf(stderr, "generate: teacher %s, fingerprint %s, %llu examples (%llu already answered)%s\n",
                     report.teacher.c_str(), report.fingerprint.c_str(), (unsigned long long)report.examples,
                     (unsigned long long)report.already_done, with_topk ? ", with top-k log-probabilities" : "");
    }

    // ---- progress ----------------------------------------------------------------------------------
    const bool tty = ::isatty(2);
    auto last_print = clock::now();
    std::uint64_t answered_now = 0;
    auto progress = [&](bool final) {
        if (!config.progress) return;
        const auto now = clock::now();
        if (!final && std::chrono::duration<double>(now - last_print).count() < config.progress_interval_s) return;
        last_print = now;
        const double s = std::max(1e-9, std::chrono::duration<double>(now - t0).count());
        const std::uint64_t total = report.examples, finished = report.already_done + answered_now;
        const double rate = double(answered_now) / s;
        const double eta = rate > 0 ? double(total - std::min(total, finished)) / rate : -1;
        std::fprintf(stderr, "%sgenerate: %llu/%llu (%.0f%%)  %.2f req/s  %.0f tok/s  failures %llu  ETA %s%s",
                     tty ? "\r" : "", (unsigned long long)finished, (unsigned long long)total,
                     total ? 100.0 * double(finished) / double(total) : 100.0, rate,
                     double(report.completion_tokens) / s, (unsigned long long)report.failed,
                     final ? "0s" : detail::duration(eta).c_str(), tty && !final ? "" : "\n");
        std::fflush(stderr);
    };

    // ---- one answer, in input order ----------------------------------------------------------------
    auto reject = [&](const data::Example& ex, const teacher::Response& r, const char* reason) {
        nlohmann::ordered_json j;
        j["id"] = ex.id;
        j["source_line"] = ex.line;
        j["reason"] = reason;
        j["finish_reason"] = std::string(teacher::finish_reason_name(r.finish));
        j["text"] = r.text;
        j["usage"] = {{"prompt_tokens", r.usage.prompt_tokens}, {"completion_tokens", r.usage.completion_tokens}};
        j["fingerprint"] = report.fingerprint;
        io::append_durably(rejected_path,
                           j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n");
    };
    auto consume = [&](const data::Example& ex, teacher::Response&& r) {
        ++answered_now;
        if (!r.ok()) {
            ++report.failed;
            report.failures.push_back({ex.id, ex.line, r.error});
            return;
        }
        report.completion_tokens += std::uint64_t(std::max<std::int64_t>(0, r.usage.completion_tokens));
        report.token_mapping += r.mapping;
        const bool blank = r.text.find_first_not_of(" \t\r\n") == std::string::npos;
        if (blank) {
            ++report.rejected_empty;
            return reject(ex, r, "empty");
        }
        if (r.finish == teacher::finish_reason::length && !config.keep_truncated) {
            ++report.rejected_truncated;
            return reject(ex, r, "truncated");
        }
        const std::string key = detail::answer_key(ex.prompt, r.text);
        if (config.deduplicate && !answers.insert(key).second) {
            ++report.rejected_duplicate;
            return reject(ex, r, "duplicate");
        }
        teacher::SyntheticRecord rec;
        rec.id = ex.id;
        rec.source_line = ex.line;
        rec.format = ex.format;
        rec.prompt = ex.prompt;
        rec.reference = ex.reference;
        rec.fingerprint = report.fingerprint;
        rec.tokenizer = tokenizer_id;
        if (with_topk) {
            if (r.k != sampling.top_logprobs || r.tokens.empty() ||
                r.top_ids.size() != r.tokens.size() * std::size_t(r.k)) {
                ++report.failed;
                report.failures.push_back(
                    {ex.id, ex.line, "the teacher returned no top-k log-probabilities for the answer"});
                return;
            }
            io::append_durably(topk_path, io::encode_topk_record(ex.id, std::uint32_t(r.k), r.tokens, r.top_ids,
                                                                 r.top_logprobs, topk_version));
            rec.topk = r.k;
        }
        rec.response = std::move(r);
        io::append_durably(synthetic, teacher::to_line(rec));
        ++report.accepted;
    };

    // ---- the windows -------------------------------------------------------------------------------
    const std::size_t window = std::size_t(teacher_batch_size(teacher));
    const auto& examples = data.examples;
    for (std::size_t first = 0; first < examples.size(); first += window) {
        const std::size_t n = std::min(window, examples.size() - first);
        std::vector<std::size_t> members;  // indices into examples handed to the teacher
        std::size_t pending = 0;
        for (std::size_t i = first; i < first + n; ++i) pending += !done.count(examples[i].id);
        if (pending == 0) continue;
        for (std::size_t i = first; i < first + n; ++i)
            if (!teacher_batch_invariant<Teacher> || !done.count(examples[i].id)) members.push_back(i);
        std::vector<teacher::Request> requests;
        for (std::size_t i : members)
            requests.push_back(
                {examples[i].id, indices.empty() ? i : indices[i], examples[i].prompt, examples[i].fields});
        report.requested += pending;

        // Answers arrive in any order; they are written in input order as soon as the prefix is complete.
        std::vector<std::optional<teacher::Response>> got(members.size());
        std::size_t next = 0;
        auto flush = [&] {
            while (next < members.size() && got[next]) {
                const auto& ex = examples[members[next]];
                if (!done.count(ex.id)) consume(ex, std::move(*got[next]));
                got[next].reset();
                ++next;
            }
        };
        teacher.generate(std::span<const teacher::Request>(requests), sampling,
                         [&](std::size_t i, teacher::Response&& r) {
                             if (i >= got.size() || got[i] || i < next)
                                 throw error("teacher " + teacher.name() + " answered request " + std::to_string(i) +
                                             " twice or out of range");
                             got[i] = std::move(r);
                             flush();
                             progress(false);
                         });
        for (std::size_t i = next; i < members.size(); ++i)
            if (!got[i]) got[i] = teacher::Response::failure("the teacher returned no answer");
        flush();
        for (std::size_t i : members) done.insert(examples[i].id);
    }

    report.seconds = std::chrono::duration<double>(clock::now() - t0).count();
    progress(true);
    if (config.progress && report.token_mapping.tokens > 0) {
        // Nothing of an API's tokens is dropped unsaid: what did not map onto the tokenizer is stated.
        const auto& m = report.token_mapping;
        std::fprintf(stderr,
                     "generate: tokens mapped onto tokenizer %s: %llu top-k entries, %llu without an id (%llu unknown, "
                     "%llu ambiguous, %llu duplicate, %llu missing; their mass stays in the tail); %llu sampled "
                     "tokens, %llu recovered from the text's ids; %llu answers whose ids differ from their text's\n",
                     tokenizer_id.c_str(), (unsigned long long)m.top_entries, (unsigned long long)m.top_lost(),
                     (unsigned long long)m.top_unmapped, (unsigned long long)m.top_ambiguous,
                     (unsigned long long)m.top_duplicate, (unsigned long long)m.top_missing,
                     (unsigned long long)m.tokens, (unsigned long long)m.tokens_unmapped,
                     (unsigned long long)m.retokenize_mismatches);
    }
    io::write_file_atomic(report_path, detail::report_json(report).dump(2) + "\n");
    if (report.success_ratio() < config.min_success_ratio) {
        std::string what = "generate: only " + std::to_string(report.requested - report.failed) + " of " +
                           std::to_string(report.requested) + " requests were answered (success ratio " +
                           std::to_string(report.success_ratio()) + " < min_success_ratio " +
                           std::to_string(config.min_success_ratio) + "); report: " + report_path.string();
        for (std::size_t i = 0; i < report.failures.size() && i < 5; ++i)
            what += "\n  " + report.failures[i].id + " (line " + std::to_string(report.failures[i].line) +
                    "): " + report.failures[i].error;
        if (report.failures.size() > 5) what += "\n  ... and " + std::to_string(report.failures.size() - 5) + " more";
        throw generate_error(what, std::make_shared<const GenerateReport>(report));
    }
    return report;
}

namespace detail {

// The lines of a JSONL file, newline included ("" when absent).
inline std::vector<std::string> raw_lines(const std::filesystem::path& path) {
    std::vector<std::string> out;
    if (!std::filesystem::exists(path)) return out;
    std::ifstream in(path, std::ios::binary);
    if (!in) throw io_error(path, "cannot open for reading");
    std::string line;
    while (std::getline(in, line))
        if (!line.empty()) out.push_back(line + "\n");
    return out;
}

inline std::string file_bytes(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw io_error(path, "cannot open for reading");
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Rank 0 of a sharded generate: the shards' outputs merged in input order into `config`'s files,
// deduplicated there (as one process deduplicates, in input order); see `generate_sharded`.
inline GenerateReport merge_shards(const data::Dataset& data, const GenerateConfig& config,
                                   const std::vector<std::filesystem::path>& shard_dirs,
                                   const std::vector<GenerateReport>& reports) {
    namespace fs = std::filesystem;
    const fs::path dir = config.output_dir;
    struct Answer {
        std::string line;
        teacher::SyntheticRecord record;
    };
    std::map<std::string, Answer> records;
    std::map<std::string, std::string> rejections, topk;
    std::string topk_header;
    for (std::size_t r = 0; r < shard_dirs.size(); ++r) {
        const fs::path base = shard_dirs[r] / config.name;
        for (auto& line : raw_lines(base.string() + ".jsonl")) {
            auto rec = teacher::parse_synthetic(nlohmann::json::parse(line));
            const std::string id = rec.id;
            records[id] = {std::move(line), std::move(rec)};
        }
        for (auto& line : raw_lines(base.string() + ".rejected.jsonl")) {
            const auto j = nlohmann::json::parse(line);
            rejections[j.at("id").get<std::string>()] = std::move(line);
        }
        const fs::path topk_path = base.string() + ".topk";
        if (fs::exists(topk_path)) {
            const std::string bytes = file_bytes(topk_path);
            io::topk_file f(topk_path);
            const std::size_t n = f.size();
            const std::size_t first = n ? std::size_t(f[0].offset) : bytes.size();
            if (topk_header.empty()) topk_header = bytes.substr(0, first);
            for (std::size_t i = 0; i < n; ++i) {
                const std::size_t a = std::size_t(f[i].offset),
                                  b = i + 1 < n ? std::size_t(f[i + 1].offset) : bytes.size();
                topk[std::string(f[i].id)] = bytes.substr(a, b - a);
            }
        }
    }
    GenerateReport report;
    for (const auto& r : reports) {
        report.already_done += r.already_done;
        report.requested += r.requested;
        report.accepted += r.accepted;
        report.rejected_empty += r.rejected_empty;
        report.rejected_truncated += r.rejected_truncated;
        report.failed += r.failed;
        report.completion_tokens += r.completion_tokens;
        report.repaired_bytes += r.repaired_bytes;
        report.token_mapping += r.token_mapping;
        report.failures.insert(report.failures.end(), r.failures.begin(), r.failures.end());
    }
    report.fingerprint = reports.front().fingerprint;
    report.teacher = reports.front().teacher;
    report.examples = data.examples.size();
    report.skipped_input_lines = data.stats.skipped.size();
    std::string lines, rejected, topk_out = topk_header;
    std::set<std::string> answers;
    for (const auto& ex : data.examples) {
        if (auto it = records.find(ex.id); it != records.end()) {
            const auto& rec = it->second.record;
            if (config.deduplicate && !answers.insert(answer_key(rec.prompt, rec.response.text)).second) {
                ++report.rejected_duplicate;  // as one process writes it (generate's reject)
                if (report.accepted > 0) --report.accepted;
                nlohmann::ordered_json j;
                j["id"] = ex.id;
                j["source_line"] = ex.line;
                j["reason"] = "duplicate";
                j["finish_reason"] = std::string(teacher::finish_reason_name(rec.response.finish));
                j["text"] = rec.response.text;
                j["usage"] = {{"prompt_tokens", rec.response.usage.prompt_tokens},
                              {"completion_tokens", rec.response.usage.completion_tokens}};
                j["fingerprint"] = rec.fingerprint;
                rejected += j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
                continue;
            }
            lines += it->second.line;
            if (auto t = topk.find(ex.id); t != topk.end()) topk_out += t->second;
        } else if (auto r = rejections.find(ex.id); r != rejections.end()) {
            rejected += r->second;
        }
    }
    io::write_file_atomic(dir / (config.name + ".jsonl"), lines);
    if (!rejected.empty() || fs::exists(dir / (config.name + ".rejected.jsonl")))
        io::write_file_atomic(dir / (config.name + ".rejected.jsonl"), rejected);
    if (!topk_header.empty()) io::write_file_atomic(dir / (config.name + ".topk"), topk_out);
    return report;
}

// A shard's report as it travels to rank 0: report_json's fields plus the token mapping's raw counts
// (report_json writes some of them summed), read back by report_from_json.
inline nlohmann::json report_to_json(const GenerateReport& r) {
    nlohmann::json j = nlohmann::json::parse(report_json(r).dump());
    j["token_mapping_raw"] = {r.token_mapping.top_entries,     r.token_mapping.top_unmapped,
                              r.token_mapping.top_ambiguous,   r.token_mapping.top_duplicate,
                              r.token_mapping.top_missing,     r.token_mapping.tokens,
                              r.token_mapping.tokens_unmapped, r.token_mapping.retokenize_mismatches};
    return j;
}

inline GenerateReport report_from_json(const nlohmann::json& j) {
    GenerateReport r;
    r.fingerprint = j.at("fingerprint").get<std::string>();
    r.teacher = j.at("teacher").get<std::string>();
    r.already_done = j.at("already_done").get<std::uint64_t>();
    r.requested = j.at("requested").get<std::uint64_t>();
    r.accepted = j.at("accepted").get<std::uint64_t>();
    r.rejected_empty = j.at("rejected").at("empty").get<std::uint64_t>();
    r.rejected_truncated = j.at("rejected").at("truncated").get<std::uint64_t>();
    r.failed = j.at("failed").get<std::uint64_t>();
    r.completion_tokens = j.at("completion_tokens").get<std::uint64_t>();
    r.repaired_bytes = j.at("repaired_bytes").get<std::uint64_t>();
    for (const auto& f : j.at("failures"))
        r.failures.push_back(
            {f.at("id").get<std::string>(), f.at("line").get<std::uint64_t>(), f.at("error").get<std::string>()});
    const auto& m = j.at("token_mapping_raw");
    auto& t = r.token_mapping;
    t.top_entries = m[0];
    t.top_unmapped = m[1];
    t.top_ambiguous = m[2];
    t.top_duplicate = m[3];
    t.top_missing = m[4];
    t.tokens = m[5];
    t.tokens_unmapped = m[6];
    t.retokenize_mismatches = m[7];
    return r;
}

}  // namespace detail

/// The generate stage over the ranks of `comm` (docs/scaling.md): the teacher's windows of the input
/// (`teacher_batch_size` examples each, as one process forms them) are dealt out round-robin —
/// window w to rank w mod N — and each rank answers its windows into its own files under
/// `<output_dir>/<name>.shards/rank-R-of-N/` (resumable per shard, as `generate` resumes); after a
/// barrier rank 0 merges them in input order into `<name>.jsonl` (and `.rejected.jsonl`, `.topk`),
/// deduplicating there, each written atomically: with a teacher whose answer depends only on its
/// prompt and index (greedy decoding) the files are the bytes one process writes. `<name>.report.json`
/// sums the shards' reports. A directory where a one-process run has begun (a `<name>.jsonl` and no
/// shards) is finished by rank 0 alone. Returns the report on rank 0 (a rank's own elsewhere).
template <teacher_source Teacher>
GenerateReport generate_sharded(Teacher& teacher, const data::Dataset& data, const teacher::Sampling& sampling,
                                GenerateConfig config, parallel::Communicator& comm) {
    namespace fs = std::filesystem;
    const int size = comm.size(), rank = comm.rank();
    if (size == 1) return generate(teacher, data, sampling, config);
    const fs::path dir = config.output_dir;
    const fs::path shards = dir / (config.name + ".shards");
    bool alone = false;
    if (comm.root())
        alone = !fs::exists(shards) &&
                (fs::exists(dir / (config.name + ".jsonl")) || fs::exists(dir / (config.name + ".rejected.jsonl")));
    comm.broadcast(&alone, sizeof alone, 0);
    if (alone) {  // a one-process run's files: finished as it would
        GenerateReport r;
        if (comm.root()) r = generate(teacher, data, sampling, config);
        comm.barrier();
        return r;
    }
    const auto t0 = std::chrono::steady_clock::now();
    const std::size_t window = std::size_t(teacher_batch_size(teacher));
    data::Dataset part;
    part.path = data.path;
    std::vector<std::uint64_t> indices;
    for (std::size_t i = 0; i < data.examples.size(); ++i)
        if (int((i / window) % std::size_t(size)) == rank) {
            part.examples.push_back(data.examples[i]);
            indices.push_back(i);
        }
    std::vector<fs::path> dirs;
    for (int r = 0; r < size; ++r)
        dirs.push_back(shards / ("rank-" + std::to_string(r) + "-of-" + std::to_string(size)));
    GenerateConfig mine = config;
    mine.output_dir = dirs[std::size_t(rank)].string();
    mine.deduplicate = false;  // across shards: rank 0's merge deduplicates in input order
    mine.progress = config.progress && comm.root();
    const GenerateReport own = generate(teacher, part, sampling, mine, indices);
    std::vector<GenerateReport> reports;
    for (int r = 0; r < size; ++r) {
        const std::string text = comm.broadcast_string(r == rank ? detail::report_to_json(own).dump() : "", r);
        reports.push_back(detail::report_from_json(nlohmann::json::parse(text)));
    }
    if (!comm.root()) {
        comm.barrier();
        return own;
    }
    GenerateReport report = detail::merge_shards(data, config, dirs, reports);
    report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    io::write_file_atomic(dir / (config.name + ".report.json"), detail::report_json(report).dump(2) + "\n");
    comm.barrier();
    return report;
}

/// The generate stage of a run: the teacher answers every training (and validation) prompt of
/// `setup` (a `RunSetup`) into the run directory's `generate/` (see `distill::generate`); resumes and
/// skips what is done; over several ranks each answers its share (`generate_sharded`), rank 0 merges
/// and inspects. Returns the training set's report.
template <teacher_source Teacher, class Setup>
GenerateReport generate_stage(Teacher& teacher, const Setup& setup) {
    GenerateConfig g;
    g.output_dir = setup.dir.generate_dir().string();
    g.progress = !setup.options.quiet;
    setup.say("generate: " + teacher.name() + " answers " + std::to_string(setup.train.examples.size()) +
              " training prompts");
    parallel::Communicator& comm = setup.options.comm();
    GenerateReport r = distill::generate_sharded(teacher, setup.train, setup.job.generation, g, comm);
    if (setup.validation) {
        g.name = "synthetic.validation";
        distill::generate_sharded(teacher, *setup.validation, setup.job.generation, g, comm);
    }
    if (!comm.root()) return r;
    const auto rejected = r.rejected_empty + r.rejected_truncated + r.rejected_duplicate;
    if (rejected > 0)
        setup.say("generate: " + std::to_string(rejected) + " answers rejected (" +
                  std::to_string(r.rejected_truncated) + " cut off by generation.max_new_tokens, " +
                  std::to_string(r.rejected_duplicate) + " duplicates, " + std::to_string(r.rejected_empty) +
                  " empty); see generate/synthetic.rejected.jsonl");
    if (r.failed > 0) setup.say("generate: " + std::to_string(r.failed) + " prompts unanswered (rerun to retry them)");
    // The synthetic set inspected as `distill inspect` would, with what the teacher produced
    // (docs/data.md), into generate/synthetic.inspect/. A report, so its failure does not fail the stage.
    const std::filesystem::path synthetic = setup.dir.generate_dir() / "synthetic.jsonl";
    if (std::filesystem::exists(synthetic)) {
        try {
            data::Inspection ins = data::inspect(synthetic);
            ins.teacher = data::teacher_output(synthetic, setup.dir.generate_dir() / "synthetic.rejected.jsonl",
                                               setup.job.generation.max_new_tokens);
            data::write_inspection(ins, setup.dir.generate_dir() / "synthetic.inspect");
            std::string summary = data::summary(ins);
            if (!summary.empty() && summary.back() == '\n') summary.pop_back();
            setup.say("generate: " + summary);
        } catch (const distill::error& e) {
            setup.say(std::string("generate: the synthetic set's inspection failed: ") + e.what());
        }
    }
    return r;
}

}  // namespace distill

BOOST_HANA_ADAPT_STRUCT(distill::GenerateConfig, output_dir, name, keep_truncated, deduplicate, write_topk,
                        min_success_ratio, progress, progress_interval_s);
