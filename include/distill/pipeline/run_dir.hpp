#pragma once
/// @file pipeline/run_dir.hpp
/// The run directory: where each stage writes under the job's `output_dir`, how a stage's output is
/// stamped with the fingerprint of the configuration that produced it, when a stage is skipped (its
/// output is complete under the same fingerprint) or refused (output of another configuration is
/// there), and `run_status`, which reads all of it back for `distill status`.
///
/// | stage | writes | complete when |
/// |---|---|---|
/// | generate | `generate/synthetic{,.validation}.jsonl` (+ `.topk`, `.rejected.jsonl`, `.report.json`) | every prompt
/// answered under the same generation fingerprint |
/// | finetune | `student/` and `baseline/` (fingerprint.json, checkpoints, metrics.jsonl, done.json),
/// `student.safetensors`, `baseline.safetensors`, `student_hf/`, `student_adapter/` | done.json holds the same
/// fingerprint | | evaluate | `eval/<model>.answers.jsonl`, `report.json`, `report.md`, `loss.svg`, `models.svg` |
/// report.json holds the same fingerprint |
///
/// `job.json` is the job as the last stage read it.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "distill/detail/hash.hpp"
#include "distill/error.hpp"
#include "distill/io/durable.hpp"
#include "distill/io/reflect.hpp"
#include "distill/pipeline/job.hpp"

namespace distill {

namespace detail {

/// A stage fingerprint: "sha256:" and 32 hex digits of `text` (a configuration's canonical JSON).
inline std::string sha(const std::string& text) {
    return "sha256:" + detail::sha256_hex(text).substr(0, 32);
}

/// The JSON object in `path`; a damaged file is a format_error telling to delete it.
inline nlohmann::ordered_json read_json_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw io_error(path, "cannot open");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto j = nlohmann::ordered_json::parse(text, nullptr, false);
    if (j.is_discarded()) throw format_error(path, 0, "not valid JSON (a damaged file: delete it to redo its stage)");
    return j;
}

/// The fingerprint stored in `path` (a JSON object with "fingerprint"), or "" when there is no file.
inline std::string stored_fingerprint(const std::filesystem::path& path) {
    if (!std::filesystem::exists(path)) return "";
    const auto j = read_json_file(path);
    return j.is_object() ? j.value("fingerprint", "") : "";
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace detail

/// The layout of one run's output directory (see the file comment), and the skip/refuse rules of
/// its stages.
class RunDir {
public:
    RunDir() = default;
    explicit RunDir(std::filesystem::path root) : root_(std::move(root)) {}

    const std::filesystem::path& root() const noexcept { return root_; }

    // ---- generate ----
    std::filesystem::path generate_dir() const { return root_ / "generate"; }
    /// The teacher's answers to the training prompts.
    std::filesystem::path synthetic() const { return generate_dir() / "synthetic.jsonl"; }
    /// The teacher's answers to the validation prompts.
    std::filesystem::path synthetic_validation() const { return generate_dir() / "synthetic.validation.jsonl"; }
    std::filesystem::path rejected() const { return generate_dir() / "synthetic.rejected.jsonl"; }
    std::filesystem::path generate_report() const { return generate_dir() / "synthetic.report.json"; }

    // ---- finetune: one training run ("student" or "baseline") ----
    std::filesystem::path training_dir(const std::string& run) const { return root_ / run; }
    /// The run's final weights, copied from its best (or last) checkpoint.
    std::filesystem::path weights(const std::string& run) const { return root_ / (run + ".safetensors"); }
    /// The run's summary; its presence under the same fingerprint means the run is complete.
    std::filesystem::path done(const std::string& run) const { return training_dir(run) / "done.json"; }
    /// The fingerprint the run's directory was claimed with.
    std::filesystem::path marker(const std::string& run) const { return training_dir(run) / "fingerprint.json"; }
    std::filesystem::path metrics(const std::string& run) const { return training_dir(run) / "metrics.jsonl"; }
    /// The trained student in transformers' layout (a student that started from a Hugging Face directory).
    std::filesystem::path student_hf() const { return root_ / "student_hf"; }
    /// The trained student's LoRA adapter in PEFT's format (a job with `lora`).
    std::filesystem::path student_adapter() const { return root_ / "student_adapter"; }
    /// The student as a GGUF file of tensor type `type` ("q8_0", ...) for llama.cpp.
    std::filesystem::path gguf(std::string_view type) const {
        return root_ / "gguf" / ("student-" + std::string(type) + ".gguf");
    }

    // ---- evaluate ----
    std::filesystem::path answers(const std::string& model) const {
        return root_ / "eval" / (model + ".answers.jsonl");
    }
    std::filesystem::path report_json() const { return root_ / "report.json"; }
    std::filesystem::path report_md() const { return root_ / "report.md"; }
    std::filesystem::path loss_svg() const { return root_ / "loss.svg"; }
    std::filesystem::path models_svg() const { return root_ / "models.svg"; }

    /// Writes `job.json`: the job as read (every default filled in).
    void write_job_copy(const Job& job) const {
        std::filesystem::create_directories(root_);
        io::write_file_atomic(root_ / "job.json", io::to_json(job).dump(2) + "\n");
    }

    /// Whether training run `run` is complete under fingerprint `fp`: done.json holds it and the
    /// weights are there.
    bool training_complete(const std::string& run, const std::string& fp) const {
        return detail::stored_fingerprint(done(run)) == fp && std::filesystem::exists(weights(run));
    }

    /// Claims the directory of training run `run` for fingerprint `fp`: refuses (fingerprint_error)
    /// a directory claimed by another configuration, else creates it and writes its marker.
    void claim_training(const std::string& run, const std::string& fp) const {
        const std::string found = detail::stored_fingerprint(marker(run));
        if (!found.empty() && found != fp) throw teacher::fingerprint_error(training_dir(run).string(), found, fp);
        std::filesystem::create_directories(training_dir(run));
        if (found.empty()) io::write_file_atomic(marker(run), nlohmann::json{{"fingerprint", fp}}.dump() + "\n");
    }

    /// The summaries the stages wrote: done.json of each training run, the generate report.
    nlohmann::ordered_json training_summary() const {
        nlohmann::ordered_json t = nlohmann::ordered_json::object();
        for (const char* run : {"student", "baseline"})
            if (std::filesystem::exists(done(run))) t[run] = detail::read_json_file(done(run));
        if (std::filesystem::exists(generate_report())) t["generate"] = detail::read_json_file(generate_report());
        return t;
    }

private:
    std::filesystem::path root_;
};

/// Which stages of the run in `output_dir` are done, how far training got and the last metrics,
/// read from the files the stages write (nothing is loaded or computed).
inline nlohmann::ordered_json run_status(const std::filesystem::path& output_dir) {
    namespace fs = std::filesystem;
    if (!fs::is_directory(output_dir)) throw io_error(output_dir, "is not a directory (no run there)");
    const RunDir dir(output_dir);
    nlohmann::ordered_json s;
    s["output_dir"] = output_dir.string();
    const fs::path job = output_dir / "job.json";
    s["task_type"] = fs::exists(job) ? detail::read_json_file(job).value("task_type", "conversation") : "";
    const bool embedding = s["task_type"] == "embedding";
    if (embedding) {  // the teacher embeds each batch during finetune: no generate stage, no baseline run
        s["generate"] = {{"done", true}, {"skipped", "nothing to generate for the embedding task"}};
    } else if (fs::exists(dir.generate_report())) {
        const auto r = detail::read_json_file(dir.generate_report());
        // the report counts one invocation; the files count every run
        auto count_lines = [&](const fs::path& path) {
            std::ifstream in(path);
            std::int64_t n = 0;
            for (std::string line; std::getline(in, line);) n += line.empty() ? 0 : 1;
            return n;
        };
        const std::int64_t kept = count_lines(dir.synthetic()), rejected = count_lines(dir.rejected());
        s["generate"] = {{"done", r.value("failed", 1) == 0},
                         {"examples", r.value("examples", 0)},
                         {"kept", kept},
                         {"rejected", rejected},
                         {"failed", r.value("failed", 0)}};
    } else {
        s["generate"] = {{"done", false}};
    }
    for (const char* name : {"student", "baseline"}) {
        if (embedding && std::string_view(name) == "baseline") {
            s[name] = {{"done", true}, {"skipped", "the embedding task's baseline is the student as initialized"}};
            continue;
        }
        nlohmann::ordered_json f = {{"done", fs::exists(dir.done(name))}};
        if (std::ifstream in(dir.metrics(name)); in) {
            std::string line, last_train, last_val;
            while (std::getline(in, line)) {
                const auto j = nlohmann::json::parse(line, nullptr, false);
                if (!j.is_object()) continue;
                if (j.value("kind", "") == "validation")
                    last_val = line;
                else
                    last_train = line;
            }
            if (!last_train.empty()) {
                const auto j = nlohmann::json::parse(last_train);
                f["step"] = j.value("step", 0);
                f["loss"] = j.value("loss", 0.0);
            }
            if (!last_val.empty()) f["validation_loss"] = nlohmann::json::parse(last_val).value("loss", 0.0);
        }
        s[name] = f;
    }
    if (fs::exists(dir.report_json())) {
        const auto r = detail::read_json_file(dir.report_json());
        nlohmann::ordered_json e = {{"done", true}, {"primary_metric", r.value("primary_metric", "")}};
        const std::string primary = r.value("primary_metric", "");
        for (const auto& item : r["models"].items())
            if (item.value().contains("metrics") && item.value()["metrics"].contains(primary))
                e[item.key()] = item.value()["metrics"][primary];
        e["summary"] = r.value("summary", "");
        s["evaluate"] = e;
    } else {
        s["evaluate"] = {{"done", false}};
    }
    return s;
}

}  // namespace distill
