#pragma once
/// @file pipeline/evaluate.hpp
/// The evaluate stage: the same test prompts through the teacher, the baseline student and the
/// distilled student — each one's answers (`eval/<model>.answers.jsonl`), the task's metrics against
/// the references (and against the teacher's answers), reference perplexity, latency percentiles,
/// throughput, peak memory, parameters and checkpoint size — written as `report.json`, `report.md`,
/// `loss.svg` and `models.svg`. The stage is skipped when report.json holds the fingerprint of the
/// same models, test set and settings; otherwise it runs from scratch, deterministically.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/data/dataset.hpp"
#include "distill/detail/hash.hpp"
#include "distill/error.hpp"
#include "distill/eval/memory.hpp"
#include "distill/eval/metrics.hpp"
#include "distill/eval/report.hpp"
#include "distill/eval/task_metrics.hpp"
#include "distill/io/durable.hpp"
#include "distill/io/quant.hpp"
#include "distill/io/reflect.hpp"
#include "distill/parallel.hpp"
#include "distill/pipeline/run_dir.hpp"
#include "distill/pipeline/setup.hpp"
#include "distill/teacher.hpp"
#include "distill/teacher/ensemble.hpp"
#include "distill/teacher/model.hpp"
#include "distill/teacher/synthetic.hpp"
#include "distill/version.hpp"

namespace distill {

namespace detail {

/// The bytes of a checkpoint: a weights file, or the safetensors files of a Hugging Face directory.
inline std::uintmax_t checkpoint_bytes(const std::filesystem::path& weights) {
    if (!std::filesystem::is_directory(weights)) return std::filesystem::file_size(weights);
    std::uintmax_t bytes = 0;
    for (const auto& e : std::filesystem::directory_iterator(weights))
        if (e.is_regular_file() && e.path().extension() == ".safetensors") bytes += e.file_size();
    return bytes;
}

}  // namespace detail

/// The evaluate stage of a run (see the file comment); the template parameters are the Distiller's.
template <class Teacher, template <class, class> class Student, class Loss, template <class, class> class Optimizer,
          class Device>
class EvaluateStage {
    using types = RunTypes<Student, Loss, Optimizer, Device>;

public:
    /// Runs a trained student (or the baseline) for evaluation: the in-process teacher over `Student`.
    using runner_type = teacher::Model<Student, float, Device>;

    /// `setup` and `teacher` are kept by reference.
    EvaluateStage(const typename types::setup_type& setup, Teacher& teacher, Device device)
        : s_(setup), teacher_(teacher), device_(device) {}

    /// Measures the teacher, the baseline and the distilled student on the test set and writes the
    /// report (report.json, report.md, loss.svg, models.svg). Returns report.json's object.
    /// Over several ranks every rank runs it: each answers its share of the test prompts (see
    /// `answer`), rank 0 measures latency alone and writes the report; the others return {}.
    nlohmann::ordered_json run() {
        parallel::Communicator& comm = s_.options.comm();
        const RunDir& out = s_.dir;
        if (!s_.test)
            throw config_error("test_data", "is not set; the evaluate stage needs a test set with references");
        const auto student_file = out.weights("student"), baseline_file = out.weights("baseline");
        if (!std::filesystem::exists(student_file))
            throw error("evaluate: " + student_file.string() + " does not exist; run the finetune stage first");
        const bool with_baseline = s_.job.baseline.enabled && std::filesystem::exists(baseline_file);
        // "sha256:" + 32 hex digits of each weights file: the report's fingerprints and the stage's
        const auto digest = [](const std::filesystem::path& f) {
            return "sha256:" + detail::sha256_file(f).substr(0, 32);
        };
        const std::string student_digest = digest(student_file),
                          baseline_digest = with_baseline ? digest(baseline_file) : std::string();
        const std::string fp = evaluation_fingerprint(student_digest, baseline_digest);
        bool complete = comm.root() && detail::stored_fingerprint(out.report_json()) == fp;
        comm.broadcast(&complete, sizeof complete, 0);
        if (complete && !comm.root()) return {};
        if (complete) {
            s_.say("evaluate: report.json is complete for these models; skipped");
            nlohmann::ordered_json report = detail::read_json_file(out.report_json());
            // prices change no measurement: a job with new ones gets its cost table, not a new evaluation
            if (auto cost = cost_section(report); report.value("cost", nlohmann::ordered_json()) != cost) {
                report["cost"] = std::move(cost);
                if (report.contains("job")) report["job"]["cost"] = io::to_json(s_.job.cost);
                report["summary"] = eval::report_summary(report);
                write_report(report);
            }
            return report;
        }
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<teacher::Request> requests;
        std::vector<std::string> references;
        for (const auto& ex : s_.test->examples) {
            if (s_.job.evaluation.max_examples > 0 && std::int64_t(requests.size()) >= s_.job.evaluation.max_examples)
                break;
            requests.push_back({ex.id, ex.line, ex.prompt, ex.fields});
            references.push_back(*ex.reference);
        }
        teacher::Sampling sampling = s_.job.generation;
        sampling.top_logprobs = 0;
        if (s_.job.evaluation.max_new_tokens > 0) sampling.max_new_tokens = s_.job.evaluation.max_new_tokens;

        nlohmann::ordered_json models = nlohmann::ordered_json::object();
        teacher_answers_.clear();
        if (s_.job.evaluation.evaluate_teacher) {
            s_.say("evaluate: teacher on " + std::to_string(requests.size()) + " test prompts");
            models["teacher"] = measure_teacher(requests, references, sampling);
            if constexpr (detail::is_ensemble<Teacher>)  // and each of several teachers alone
                for (std::size_t i = 0; i < teacher_.size(); ++i) {
                    const std::string name = "teacher_" + teacher_.member_name(i);
                    s_.say("evaluate: " + name);
                    eval::PeakMemory memory;
                    nlohmann::ordered_json m =
                        measure(teacher_.member(i), name, requests, references, sampling, memory);
                    if (m["parameters"].is_number())  // loaded before the measurement: its weights added
                        m["peak_rss_bytes"] =
                            m["peak_rss_bytes"].get<std::int64_t>() + 4 * m["parameters"].get<std::int64_t>();
                    models[name] = std::move(m);
                }
        }
        if (with_baseline) {
            s_.say("evaluate: baseline student");
            models["baseline"] = measure_student(baseline_file, "baseline", requests, references, sampling);
        }
        s_.say("evaluate: distilled student");
        models["student"] = measure_student(student_file, "student", requests, references, sampling);
        for (const std::string& type : quantized_types()) {
            s_.say("evaluate: distilled student in " + type);
            models["student_" + type] =
                measure_student(student_file, "student_" + type, requests, references, sampling, quant::parse(type));
        }
        if (!comm.root()) return {};

        nlohmann::ordered_json report;
        report["distill_version"] = version();
        report["fingerprint"] = fp;
        report["task_type"] = s_.job.task_type;
        report["primary_metric"] = s_.job.primary_metric();
        report["test_examples"] = requests.size();
        report["models"] = models;
        report["fingerprints"] = {{"teacher", teacher_.fingerprint()},
                                  {"generation", generation_fingerprint(teacher_, s_.job.generation)},
                                  {"student", student_digest}};
        if (with_baseline) report["fingerprints"]["baseline"] = baseline_digest;
        if constexpr (detail::is_ensemble<Teacher>) teachers_section(report);
        report["training"] = out.training_summary();
        report["timings"] = stage_timings(report["training"]);
        report["timings"]["evaluate_s"] = detail::seconds_since(t0);
        report["job"] = io::to_json(s_.job);
        report["cost"] = cost_section(report);
        report["summary"] = eval::report_summary(report);
        write_report(report);
        return report;
    }

private:
    std::string evaluation_fingerprint(const std::string& student_digest, const std::string& baseline_digest) const {
        nlohmann::json fp{{"stage", "evaluate"},
                          {"student", student_digest},
                          {"baseline", baseline_digest},
                          {"teacher", s_.job.evaluation.evaluate_teacher ? teacher_.fingerprint() : ""},
                          {"test", detail::sha256_file(s_.job.test_data)},
                          {"template", s_.chat_template.id()},
                          {"evaluation", io::to_json(s_.job.evaluation)},
                          {"generation", io::to_json(s_.job.generation)},
                          {"task_type", s_.job.task_type}};
        if (s_.job.precision != "fp32") fp["precision"] = s_.job.precision;   // fp32 runs keep their fingerprints
        if (!quantized_types().empty()) fp["quantized"] = quantized_types();  // so do runs without export.gguf
        return detail::sha(fp.dump());
    }

    // Answers, latency and throughput of `model` on `requests`; metrics against the references (and
    // the teacher's answers, which the teacher's own measurement keeps in teacher_answers_).
    template <class Model>
    nlohmann::ordered_json measure(Model& model, const std::string& name, const std::vector<teacher::Request>& requests,
                                   const std::vector<std::string>& references, const teacher::Sampling& sampling,
                                   const eval::PeakMemory& memory) {
        using clock = std::chrono::steady_clock;
        std::vector<double> latencies;
        const std::size_t samples =
            std::min<std::size_t>(std::size_t(s_.job.evaluation.latency_samples), requests.size());
        for (std::size_t i = 0; i < samples && s_.options.comm().root(); ++i) {  // one process, as deployed
            const auto t0 = clock::now();
            generate_all(model, std::span<const teacher::Request>(&requests[i], 1), sampling);
            latencies.push_back(1e3 * detail::seconds_since(t0));
        }
        const auto t0 = clock::now();
        const auto responses = answer(model, requests, sampling);
        const double seconds = detail::seconds_since(t0);
        if (!s_.options.comm().root()) return {};
        std::vector<std::string> answers;
        std::int64_t tokens = 0, prompt_tokens = 0, failed = 0;
        std::string jsonl, first_error;
        for (std::size_t i = 0; i < responses.size(); ++i) {
            const auto& r = responses[i];
            failed += r.ok() ? 0 : 1;
            if (!r.ok() && first_error.empty()) first_error = requests[i].id + ": " + r.error;
            answers.push_back(r.ok() ? r.text : std::string());
            tokens += r.usage.completion_tokens > 0 ? r.usage.completion_tokens : std::int64_t(r.tokens.size());
            prompt_tokens += std::max<std::int64_t>(0, r.usage.prompt_tokens);
            nlohmann::ordered_json line = {{"id", requests[i].id},
                                           {"answer", answers.back()},
                                           {"reference", references[i]},
                                           {"finish_reason", teacher::finish_reason_name(r.finish)}};
            if (!r.ok()) line["error"] = r.error;
            jsonl += line.dump() + "\n";
        }
        std::filesystem::create_directories(s_.dir.answers(name).parent_path());
        io::write_file_atomic(s_.dir.answers(name), jsonl);
        nlohmann::ordered_json m;
        m["name"] = model.name();
        m["parameters"] = nullptr;
        m["checkpoint_bytes"] = nullptr;
        if constexpr (requires { model.network().config().parameter_count(); })
            m["parameters"] = model.network().config().parameter_count();
        if constexpr (requires {
                          model.member(0).network().config().parameter_count();
                          model.member(0).config().weights;
                      }) {
            // several teachers: all of them are loaded to answer
            std::int64_t parameters = 0;
            std::uintmax_t bytes = 0;
            for (std::size_t i = 0; i < model.size(); ++i) {
                parameters += model.member(i).network().config().parameter_count();
                const auto& w = model.member(i).config().weights;
                if (!w.empty() && std::filesystem::exists(w)) bytes += detail::checkpoint_bytes(w);
            }
            m["parameters"] = parameters;
            if (bytes > 0) m["checkpoint_bytes"] = bytes;
        }
        if constexpr (requires { model.config().weights; })
            if (!model.config().weights.empty() && std::filesystem::exists(model.config().weights))
                m["checkpoint_bytes"] = detail::checkpoint_bytes(model.config().weights);
        m["peak_rss_bytes"] = memory.peak_bytes();
        m["latency_ms_p50"] = eval::percentile(latencies, 0.5);
        m["latency_ms_p95"] = eval::percentile(latencies, 0.95);
        m["requests"] = responses.size();
        m["prompt_tokens"] = prompt_tokens;
        m["completion_tokens"] = tokens;
        m["responses_per_s"] = seconds > 0 ? double(responses.size()) / seconds : 0.0;
        m["tokens_per_s"] = seconds > 0 ? double(tokens) / seconds : 0.0;
        m["failed"] = failed;
        if (failed) m["first_failure"] = first_error;  // report.md names it: failures count as wrong answers
        const bool is_teacher = name == "teacher";
        m["metrics"] = eval::task_metrics(s_.job.task_type, answers, references,
                                          is_teacher ? std::vector<std::string>{} : teacher_answers_);
        if (is_teacher) teacher_answers_ = std::move(answers);
        if constexpr (requires {
                          model.network();
                          model.chat_template();
                      })
            m["metrics"]["perplexity"] = reference_perplexity(model.network(), requests, references);
        return m;
    }

    // Every answer of `model` to `requests`, in their order. Over N ranks the model's batches of the
    // test set (teacher_batch_size prompts, as one process forms them) are dealt round-robin, batch b
    // to rank b mod N, and rank 0 gathers the answers (text, finish reason, usage, tokens, error).
    template <class Model>
    std::vector<teacher::Response> answer(Model& model, const std::vector<teacher::Request>& requests,
                                          const teacher::Sampling& sampling) {
        parallel::Communicator& comm = s_.options.comm();
        if (comm.size() == 1) return generate_all(model, std::span<const teacher::Request>(requests), sampling);
        const std::size_t window = std::size_t(teacher_batch_size(model)), size = std::size_t(comm.size());
        auto owner = [&](std::size_t i) { return int((i / window) % size); };
        std::vector<teacher::Request> mine;
        for (std::size_t i = 0; i < requests.size(); ++i)
            if (owner(i) == comm.rank()) mine.push_back(requests[i]);
        const auto got = generate_all(model, std::span<const teacher::Request>(mine), sampling);
        nlohmann::json sent = nlohmann::json::array();
        for (const auto& r : got)
            sent.push_back(
                {r.text, int(r.finish), r.usage.prompt_tokens, r.usage.completion_tokens, r.tokens, r.error});
        std::vector<teacher::Response> all(requests.size());
        for (int rank = 0; rank < comm.size(); ++rank) {
            const std::string text = comm.broadcast_string(
                rank == comm.rank() ? sent.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) : "", rank);
            if (!comm.root()) continue;
            const auto j = nlohmann::json::parse(text);
            std::size_t k = 0;
            for (std::size_t i = 0; i < requests.size(); ++i) {
                if (owner(i) != rank) continue;
                const auto& a = j.at(k++);
                auto& r = all[i];
                r.text = a[0].get<std::string>();
                r.finish = teacher::finish_reason(a[1].get<int>());
                r.usage = {a[2].get<std::int64_t>(), a[3].get<std::int64_t>()};
                r.tokens = a[4].get<std::vector<std::int32_t>>();
                r.error = a[5].get<std::string>();
            }
        }
        return all;
    }

    nlohmann::ordered_json measure_teacher(const std::vector<teacher::Request>& requests,
                                           const std::vector<std::string>& references,
                                           const teacher::Sampling& sampling) {
        nlohmann::ordered_json m;
        bool fresh = false;
        if constexpr (requires {
                          Teacher(teacher_.config(), device_);
                          teacher_.config().weights;
                      }) {
            // a teacher loaded from a file is loaded again, so its memory is measured like the students'
            if (!teacher_.config().weights.empty()) {
                eval::PeakMemory memory;
                Teacher t(teacher_.config(), device_);
                m = measure(t, "teacher", requests, references, sampling, memory);
                fresh = true;
            }
        }
        if (!fresh) {
            eval::PeakMemory memory;
            m = measure(teacher_, "teacher", requests, references, sampling, memory);
            if (m["parameters"].is_number())
                m["peak_rss_bytes"] = m["peak_rss_bytes"].get<std::int64_t>() + 4 * m["parameters"].get<std::int64_t>();
        }
        return m;
    }

    // The export.gguf types the student is also measured in: those that change its weights (not f32),
    // for students that can be quantized on this device.
    std::vector<std::string> quantized_types() const {
        std::vector<std::string> types;
        if constexpr (requires(typename runner_type::network_type & n) { n.quantize(quant::type::Q8_0); })
            for (const std::string& name : s_.job.exports.gguf)
                if (quant::parse(name) != quant::type::F32) types.emplace_back(quant::name(quant::parse(name)));
        return types;
    }

    // `weights` through the runner; with `quantized`, its matrices in that ggml type (the student of
    // OUTPUT_DIR/gguf/student-<type>.gguf, through the device's quantized kernels).
    nlohmann::ordered_json measure_student(const std::filesystem::path& weights, const std::string& name,
                                           const std::vector<teacher::Request>& requests,
                                           const std::vector<std::string>& references,
                                           const teacher::Sampling& sampling,
                                           std::optional<quant::type> quantized = std::nullopt) {
        eval::PeakMemory memory;
        teacher::ModelConfig cfg;
        cfg.weights = weights.string();
        cfg.max_batch = s_.job.evaluation.batch_size;
        // a quantized student multiplies its ggml blocks, never a bf16 GEMM: built in fp32 so that its
        // matrices keep fp32 values to quantize (precision bf16 would store them in bf16 alone)
        Device dev = device_;
        if constexpr (requires { dev.compute = device::precision::fp32; })
            if (quantized) dev.compute = device::precision::fp32;
        runner_type model(cfg, s_.chat_template, dev);
        if constexpr (requires { model.network().quantize(quant::type::Q8_0); }) {
            if (!quantized) return measure(model, name, requests, references, sampling, memory);
            model.network().quantize(*quantized);
            auto m = measure(model, name, requests, references, sampling, memory);
            const auto file = s_.dir.gguf(quant::name(*quantized));
            m["name"] = m["name"].template get<std::string>() + " (" + std::string(quant::name(*quantized)) + ")";
            m["checkpoint_bytes"] = std::filesystem::exists(file)
                                        ? nlohmann::ordered_json(std::filesystem::file_size(file))
                                        : nlohmann::ordered_json(nullptr);
            return m;
        }
        return measure(model, name, requests, references, sampling, memory);
    }

    // exp(mean NLL) of the reference answers given their prompts, teacher-forced.
    template <class Net>
    double reference_perplexity(Net& net, const std::vector<teacher::Request>& requests,
                                const std::vector<std::string>& references) const {
        data::SequenceDataset seqs(s_.chat_template.pad(), net.config().context_length);
        for (std::size_t i = 0; i < requests.size(); ++i) {
            const auto prompt = s_.chat_template.encode_prompt(requests[i].messages);
            const auto response = s_.chat_template.encode_response(references[i]);
            if (prompt.size() + response.size() <= std::size_t(net.config().context_length))
                seqs.add_prompt_response(prompt, response);
        }
        double nll = 0;
        std::int64_t tokens = 0;
        data::Batch batch;
        std::vector<std::int64_t> rows;
        const std::size_t step = std::size_t(std::max(1, net.max_batch()));
        for (std::size_t first = 0; first < seqs.size(); first += step) {
            rows.clear();
            for (std::size_t i = first; i < std::min(seqs.size(), first + step); ++i) rows.push_back(std::int64_t(i));
            seqs.make_batch(rows, batch);
            net.forward(batch.tokens.data(), batch.batch, batch.length);
            nll += double(net.cross_entropy(batch.targets.data())) * double(batch.loss_tokens);
            tokens += batch.loss_tokens;
        }
        return eval::perplexity(nll, tokens);
    }

    // A multi-teacher job's `route` and `teachers`: each one's name, normalized weight, fingerprint and
    // the training answers it gave (synthetic.jsonl's answered_by) with their share.
    void teachers_section(nlohmann::ordered_json& report) const {
        std::vector<std::int64_t> answers(teacher_.size(), 0);
        std::int64_t total = 0;
        const auto synthetic = s_.dir.generate_dir() / "synthetic.jsonl";
        if (std::filesystem::exists(synthetic))
            for (const auto& r : teacher::read_synthetic(synthetic))
                if (const int k = teacher_.index_of(r.response.answered_by); k >= 0) {
                    ++answers[std::size_t(k)];
                    ++total;
                }
        report["route"] = teacher_.route().to_json();
        nlohmann::ordered_json list = nlohmann::ordered_json::array();
        for (std::size_t i = 0; i < teacher_.size(); ++i)
            list.push_back({{"name", teacher_.member_name(i)},
                            {"weight", teacher_.weights()[i]},
                            {"fingerprint", teacher_.member(i).fingerprint()},
                            {"answers", answers[i]},
                            {"share", total > 0 ? double(answers[i]) / double(total) : 0.0}});
        report["teachers"] = std::move(list);
    }

    // The report's cost table from its measurements and the job's prices (eval/cost.hpp).
    nlohmann::ordered_json cost_section(const nlohmann::ordered_json& report) const {
        const std::string kind = s_.job.teacher_kind();
        return eval::cost_section(report, eval::count_generated_tokens(s_.dir.generate_dir()), s_.job.cost,
                                  kind == "openai" || kind == "cache");
    }

    // Seconds per stage, from the stages' own records (`RunDir::training_summary()`; the validation
    // set's generate report beside the training set's).
    nlohmann::ordered_json stage_timings(const nlohmann::ordered_json& s) const {
        nlohmann::ordered_json t;
        if (s.contains("generate")) {
            double generate = s["generate"].value("seconds", 0.0);
            const auto validation = s_.dir.generate_dir() / "synthetic.validation.report.json";
            if (std::filesystem::exists(validation))
                generate += detail::read_json_file(validation).value("seconds", 0.0);
            t["generate_s"] = generate;
        }
        double finetune = 0;
        for (const char* name : {"student", "baseline"})
            if (s.contains(name)) finetune += s[name].value("seconds", 0.0);
        t["finetune_s"] = finetune;
        return t;
    }

    void write_report(const nlohmann::ordered_json& report) {
        io::write_file_atomic(s_.dir.report_md(), eval::render_markdown(report));
        std::vector<std::pair<std::string, std::filesystem::path>> runs;
        for (const char* name : {"student", "baseline"})
            if (const auto p = s_.dir.metrics(name); std::filesystem::exists(p)) runs.emplace_back(name, p);
        io::write_file_atomic(s_.dir.loss_svg(), eval::loss_chart(runs));
        io::write_file_atomic(s_.dir.models_svg(), eval::models_chart(report));
        io::write_file_atomic(s_.dir.report_json(), report.dump(2) + "\n");  // last: its presence means complete
    }

    const typename types::setup_type& s_;
    Teacher& teacher_;
    Device device_;
    std::vector<std::string> teacher_answers_{};  // what the student's agreement with the teacher is measured on
};

}  // namespace distill
