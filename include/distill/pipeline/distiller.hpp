#pragma once
/// @file distiller.hpp
/// `Distiller<Teacher, Student, Loss, Optimizer, Device>`: the whole generate → finetune → evaluate
/// pipeline of one job, composed at compile time from one policy per kind.
///
/// @code
/// using MyDistiller = distill::Distiller<
///     distill::teacher::Model<distill::student::Transformer>,    // where answers and soft labels come from
///     distill::student::Transformer,                             // what is trained
///     distill::loss::Sum<distill::loss::SoftKL, distill::loss::HiddenMSE, distill::loss::AttentionKL>,
///     distill::optim::AdamW,
///     distill::device::Cpu>;
/// distill::Job job = distill::load_job("job.json");
/// distill::teacher::Model<distill::student::Transformer> teacher(teacher_config);
/// MyDistiller d(job, teacher);
/// nlohmann::ordered_json report = d.run();                      // or generate(), finetune(), evaluate()
/// @endcode
///
/// **Compile-time checks**, one readable `static_assert` per slot, in dependency order: the device
/// is a `device_policy`, the teacher a `teacher_source`, `Student<float, Device>` a `student_model`,
/// the loss a `loss_policy`, `Optimizer<float, Device>` an `optimizer_policy`; then every loss term's
/// needs ⊆ the teacher's provides (`loss::check_needs`), and an `online_teacher` when a term reads
/// logits, hidden states, attention maps or q|k|v.
///
/// **Online or offline** follows from the types: a loss that reads the teacher's logits, hidden
/// states or attention maps runs the teacher's forward on every batch (online); a loss that reads
/// only top-k log-probabilities takes them from the generate stage's `synthetic.topk` (offline);
/// token-level terms read the teacher's answers, which are the training sequences either way.
///
/// **Stages and their outputs** (all under the job's `output_dir`):
/// | stage | writes | complete when |
/// |---|---|---|
/// | generate | `generate/synthetic{,.validation}.jsonl` (+ `.topk`, `.report.json`) | every prompt answered under the
/// same generation fingerprint | | finetune | `student/` and `baseline/` (checkpoints, metrics.jsonl, done.json),
/// `student.safetensors`, `baseline.safetensors` | done.json holds the same fingerprint | | evaluate |
/// `eval/<model>.answers.jsonl`, `report.json`, `report.md`, `loss.svg`, `models.svg` | report.json holds the same
/// fingerprint |
///
/// Each stage resumes after a crash (generate by record, finetune from its latest checkpoint,
/// evaluate from scratch, deterministically) and is skipped when complete. Output of another
/// configuration in the same directory is refused with an error naming the file, never reused.

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/hana/contains.hpp>
#include <nlohmann/json.hpp>

#include "distill/data/chat.hpp"
#include "distill/data/dataset.hpp"
#include "distill/data/load_chat_template.hpp"
#include "distill/data/vocab_alignment.hpp"
#include "distill/detail/arena.hpp"
#include "distill/detail/hash.hpp"
#include "distill/device.hpp"
#include "distill/error.hpp"
#include "distill/eval/memory.hpp"
#include "distill/eval/metrics.hpp"
#include "distill/eval/report.hpp"
#include "distill/eval/task_metrics.hpp"
#include "distill/generate.hpp"
#include "distill/io/durable.hpp"
#include "distill/io/hf.hpp"
#include "distill/io/reflect.hpp"
#include "distill/io/topk_cache.hpp"
#include "distill/io/weights.hpp"
#include "distill/job.hpp"
#include "distill/loss.hpp"
#include "distill/loss/sum.hpp"
#include "distill/optim/schedule.hpp"
#include "distill/optimizer.hpp"
#include "distill/signals.hpp"
#include "distill/student.hpp"
#include "distill/teacher.hpp"
#include "distill/teacher/model.hpp"
#include "distill/teacher/synthetic.hpp"
#include "distill/train/finetune.hpp"
#include "distill/version.hpp"

namespace distill {

namespace distiller_detail {

/// Whether loss `L` reads any signal only an in-process teacher has.
// Per term of a loss (one entry for a single term), whether it reads cached top-k log-probabilities.
template <class L>
inline constexpr std::array<bool, 1> reads_topk = {loss::term_needs<L, signal::topk_logprobs_t>};
template <class... Terms>
inline constexpr std::array<bool, sizeof...(Terms)> reads_topk<loss::Sum<Terms...>> = {
    loss::term_needs<Terms, signal::topk_logprobs_t>...};

template <class L>
inline constexpr bool needs_online =
    loss::term_needs<L, signal::logits_t> || loss::term_needs<L, signal::hidden_states_t> ||
    loss::term_needs<L, signal::attentions_t> || loss::term_needs<L, signal::qkv_t>;

inline std::string sha(const std::string& text) {
    return "sha256:" + detail::sha256_hex(text).substr(0, 32);
}

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

inline void copy_file_atomic(const std::filesystem::path& from, const std::filesystem::path& to) {
    std::ifstream in(from, std::ios::binary);
    if (!in) throw io_error(from, "cannot open");
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    io::write_file_atomic(to, bytes);
}

/// The bytes of a checkpoint: a weights file, or the safetensors files of a Hugging Face directory.
inline std::uintmax_t checkpoint_bytes(const std::filesystem::path& weights) {
    if (!std::filesystem::is_directory(weights)) return std::filesystem::file_size(weights);
    std::uintmax_t bytes = 0;
    for (const auto& e : std::filesystem::directory_iterator(weights))
        if (e.is_regular_file() && e.path().extension() == ".safetensors") bytes += e.file_size();
    return bytes;
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace distiller_detail

/// Settings of a Distiller that are not part of the job (how it talks, not what it computes).
struct DistillerOptions {
    bool quiet = false;       ///< no progress output
    std::FILE* log = stderr;  ///< where stage messages and progress go
};

/// The generate → finetune → evaluate pipeline of one job (see the file comment).
/// @tparam Teacher a `teacher_source` (e.g. `teacher::Model<student::Transformer>`, `teacher::OpenAI<>`).
/// @tparam Student a class template `Student<T, Device>` that is a `student_model` (`student::Transformer`).
/// @tparam Loss a `loss_policy` (a term or a `loss::Sum`); rebound to float on `Device`.
/// @tparam Optimizer a class template `Optimizer<T, Device>` that is an `optimizer_policy` (`optim::AdamW`).
/// @tparam Device a `device_policy` (`device::Cpu`).
template <class Teacher, template <class, class> class Student, class Loss, template <class, class> class Optimizer,
          class Device = device::Cpu>
class Distiller {
    static_assert(device_policy<Device>,
                  "Device: not a distill::device_policy (memory, name, allocate, deallocate, fill_zero, copy); see "
                  "docs/devices.md");
    static_assert(teacher_source<Teacher>,
                  "Teacher: not a distill::teacher_source (provides, fingerprint(), name(), generate(...)); see "
                  "docs/teachers.md");
    static_assert(student_model<Student<float, Device>>,
                  "Student: Student<float, Device> is not a distill::student_model; see docs/students.md");
    static_assert(loss::loss_policy<loss::rebind_t<Loss, float, Device>, float, Device>,
                  "Loss: not a distill::loss::loss_policy (name, needs, config, constructor from (config, dims), "
                  "operator()(context)); see docs/losses.md");
    static_assert(optimizer_policy<Optimizer<float, Device>>,
                  "Optimizer: Optimizer<float, Device> is not a distill::optimizer_policy; see docs/training.md");
    static_assert(loss::check_needs<Teacher, Loss>());
    static_assert(!distiller_detail::needs_online<Loss> || online_teacher<Teacher>,
                  "Teacher: the loss reads the teacher's logits, hidden states or attention maps, so the teacher must "
                  "run in-process (distill::online_teacher, e.g. teacher::Model); see docs/teachers.md");

public:
    using scalar_type = float;
    using teacher_type = Teacher;
    using student_type = Student<float, Device>;
    using student_config = typename student_type::config_type;
    using loss_type = loss::rebind_t<Loss, float, Device>;
    using optimizer_type = Optimizer<float, Device>;
    using device_type = Device;
    /// Runs a trained student (or the baseline) for evaluation: the in-process teacher over `Student`.
    using runner_type = teacher::Model<Student, float, Device>;

    /// Online distillation (a teacher forward per batch) when the loss reads in-process signals.
    static constexpr bool online = distiller_detail::needs_online<Loss>;
    /// Whether the loss reads cached top-k log-probabilities.
    static constexpr bool uses_topk = loss::term_needs<Loss, signal::topk_logprobs_t>;

    /// Validates everything that can be validated before work starts — every section of `job`
    /// against the policies' configs, the data files (read and parsed), the teacher's shape against
    /// the student's — so a bad job fails here (config_error, io_error, format_error naming the key,
    /// file or line), never hours later. `teacher` is kept by reference and must outlive the Distiller.
    Distiller(Job job, Teacher& teacher, Device device = Device{}, DistillerOptions options = {})
        : job_(std::move(job)), teacher_(teacher), device_(device), opt_(options), out_(job_.output_dir) {
        job_.validate();
        check_precision();
        student_cfg_ = read_student_config();
        template_ = student_template();
        if (student_cfg_.vocab_size < template_.vocab_size())
            throw config_error("student.vocab_size", "is " + std::to_string(student_cfg_.vocab_size) +
                                                         ", but the student's tokenizer " + template_.tokenizer_id() +
                                                         " has " + std::to_string(template_.vocab_size()) + " ids");
        answer_tokens_reusable_ = teacher_tokenizer_id(teacher_) == template_.tokenizer_id();
        loss_cfg_ = parse_loss_config();
        optimizer_cfg_ = parse_optimizer_config();
        train_ = read_data("training_data", job_.training_data);
        if (train_.examples.empty())
            throw format_error(job_.training_data, 0, "has no examples (training_data must not be empty)");
        if (!job_.validation_data.empty()) validation_ = read_data("validation_data", job_.validation_data);
        if (!job_.test_data.empty()) {
            test_ = read_data("test_data", job_.test_data);
            for (const auto& ex : test_->examples)
                if (!ex.reference)
                    throw format_error(job_.test_data, ex.line,
                                       "test example has no reference answer (the evaluation compares against it)");
        }
        if (job_.baseline.enabled && job_.baseline.data != "labeled")
            baseline_data_ = read_data("baseline.data", job_.baseline.data);
        sampling_ = job_.generation;
        if constexpr (uses_topk) {
            if (sampling_.top_logprobs == 0)
                throw config_error("generation.top_logprobs",
                                   "is 0, but the loss reads the teacher's top-k log-probabilities; set 1..20");
        }
        if constexpr (online || uses_topk || requires { teacher_.chat_template(); }) align_vocabularies();
        if constexpr (online) {
            const auto& t = teacher_.network().config();
            if (t.context_length < student_cfg_.context_length)
                throw config_error("student.context_length", "is " + std::to_string(student_cfg_.context_length) +
                                                                 ", longer than the teacher's " +
                                                                 std::to_string(t.context_length) +
                                                                 " (the teacher forwards the same sequences)");
            if (teacher_batch_size(teacher_) < job_.hyperparameters.batch_size)
                throw config_error("teacher.max_batch",
                                   "is " + std::to_string(teacher_batch_size(teacher_)) +
                                       ", smaller than hyperparameters.batch_size " +
                                       std::to_string(job_.hyperparameters.batch_size) +
                                       " (online distillation forwards the teacher on every batch)");
        }
        const loss_type probe(loss_cfg_, dims(job_.hyperparameters.batch_size));  // checks layer maps and widths
        if constexpr (online && requires { teacher_.keeps_activations(); })
            if (!teacher_.keeps_activations() && loss::reads_activations(probe))
                throw config_error("teacher.keep_activations",
                                   "is false, but the loss reads the teacher's hidden states, attention maps or "
                                   "q|k|v; set it to true (or drop those terms)");
    }

    Distiller(const Distiller&) = delete;
    Distiller& operator=(const Distiller&) = delete;

    const Job& job() const noexcept { return job_; }
    const std::filesystem::path& output_dir() const noexcept { return out_; }
    /// The student's tokenizer and chat format (see `Job::tokenizer`).
    const data::ChatTemplate& chat_template() const noexcept { return template_; }
    /// How the teacher's and the student's vocabularies line up, decided at construction for losses
    /// that compare them (online terms, top-k); `different` otherwise.
    const data::VocabAlignment& alignment() const noexcept { return alignment_; }

    // ---- generate ----------------------------------------------------------------------------------

    /// The teacher answers every training (and validation) prompt; see `distill::generate`. Resumes
    /// and skips what is done. Returns the training set's report.
    GenerateReport generate() {
        write_job_copy();
        GenerateConfig g;
        g.output_dir = (out_ / "generate").string();
        g.progress = !opt_.quiet;
        say("generate: " + teacher_.name() + " answers " + std::to_string(train_.examples.size()) +
            " training prompts");
        GenerateReport r = distill::generate(teacher_, train_, sampling_, g);
        if (validation_) {
            g.name = "synthetic.validation";
            distill::generate(teacher_, *validation_, sampling_, g);
        }
        const auto rejected = r.rejected_empty + r.rejected_truncated + r.rejected_duplicate;
        if (rejected > 0)
            say("generate: " + std::to_string(rejected) + " answers rejected (" + std::to_string(r.rejected_truncated) +
                " cut off by generation.max_new_tokens, " + std::to_string(r.rejected_duplicate) + " duplicates, " +
                std::to_string(r.rejected_empty) + " empty); see generate/synthetic.rejected.jsonl");
        if (r.failed > 0) say("generate: " + std::to_string(r.failed) + " prompts unanswered (rerun to retry them)");
        return r;
    }

    // ---- finetune ----------------------------------------------------------------------------------

    /// Trains the distilled student on the teacher's answers and the baseline on the ground truth,
    /// with the same architecture and step budget. Needs the generate stage's output. Returns a
    /// summary of both runs.
    nlohmann::ordered_json finetune() {
        write_job_copy();
        const auto synthetic = out_ / "generate" / "synthetic.jsonl";
        if (!std::filesystem::exists(synthetic)) {
            if (std::filesystem::exists(out_ / "generate" / "synthetic.rejected.jsonl"))
                throw error("finetune: the teacher's answers were all rejected (see " +
                            (out_ / "generate" / "synthetic.rejected.jsonl").string() +
                            "); nothing to train on (answers cut off by generation.max_new_tokens are rejected)");
            throw error("finetune: " + synthetic.string() + " does not exist; run the generate stage first");
        }
        Sequences train = sequences_from_synthetic(synthetic, "training");
        std::optional<Sequences> val;
        if (validation_) val = sequences_from_synthetic(out_ / "generate" / "synthetic.validation.jsonl", "validation");
        const std::int64_t steps = train::total_steps(finetune_config(""), train.data.size());
        nlohmann::ordered_json summary;
        summary["student"] = train_student(train, val ? &*val : nullptr, steps);
        if (student_from_hf()) export_student_hf();
        if (job_.baseline.enabled) summary["baseline"] = train_baseline(steps);
        return summary;
    }

    // ---- evaluate ----------------------------------------------------------------------------------

    /// Measures the teacher, the baseline and the distilled student on the test set and writes the
    /// report (report.json, report.md, loss.svg, models.svg). Returns report.json's object.
    nlohmann::ordered_json evaluate() {
        write_job_copy();
        if (!test_) throw config_error("test_data", "is not set; the evaluate stage needs a test set with references");
        const auto student_file = out_ / "student.safetensors", baseline_file = out_ / "baseline.safetensors";
        if (!std::filesystem::exists(student_file))
            throw error("evaluate: " + student_file.string() + " does not exist; run the finetune stage first");
        const bool with_baseline = job_.baseline.enabled && std::filesystem::exists(baseline_file);
        // "sha256:" + 32 hex digits of each weights file: the report's fingerprints and the stage's
        const auto digest = [](const std::filesystem::path& f) {
            return "sha256:" + detail::sha256_file(f).substr(0, 32);
        };
        const std::string student_digest = digest(student_file),
                          baseline_digest = with_baseline ? digest(baseline_file) : std::string();
        const std::string fp = evaluation_fingerprint(student_digest, baseline_digest);
        if (distiller_detail::stored_fingerprint(out_ / "report.json") == fp) {
            say("evaluate: report.json is complete for these models; skipped");
            return distiller_detail::read_json_file(out_ / "report.json");
        }
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<teacher::Request> requests;
        std::vector<std::string> references;
        for (const auto& ex : test_->examples) {
            if (job_.evaluation.max_examples > 0 && std::int64_t(requests.size()) >= job_.evaluation.max_examples)
                break;
            requests.push_back({ex.id, ex.line, ex.prompt});
            references.push_back(*ex.reference);
        }
        teacher::Sampling sampling = sampling_;
        sampling.top_logprobs = 0;
        if (job_.evaluation.max_new_tokens > 0) sampling.max_new_tokens = job_.evaluation.max_new_tokens;

        nlohmann::ordered_json models = nlohmann::ordered_json::object();
        teacher_answers_.clear();
        if (job_.evaluation.evaluate_teacher) {
            say("evaluate: teacher on " + std::to_string(requests.size()) + " test prompts");
            models["teacher"] = measure_teacher(requests, references, sampling);
        }
        if (with_baseline) {
            say("evaluate: baseline student");
            models["baseline"] = measure_student(baseline_file, "baseline", requests, references, sampling);
        }
        say("evaluate: distilled student");
        models["student"] = measure_student(student_file, "student", requests, references, sampling);

        nlohmann::ordered_json report;
        report["distill_version"] = version();
        report["fingerprint"] = fp;
        report["task_type"] = job_.task_type;
        report["primary_metric"] = job_.primary_metric();
        report["test_examples"] = requests.size();
        report["models"] = models;
        report["fingerprints"] = {{"teacher", teacher_.fingerprint()},
                                  {"generation", generation_fingerprint(teacher_, sampling_)},
                                  {"student", student_digest}};
        if (with_baseline) report["fingerprints"]["baseline"] = baseline_digest;
        report["training"] = training_summary();
        report["timings"] = stage_timings(report["training"]);
        report["timings"]["evaluate_s"] = distiller_detail::seconds_since(t0);
        report["job"] = io::to_json(job_);
        report["summary"] = eval::report_summary(report);
        write_report(report);
        return report;
    }

    /// generate(), finetune(), evaluate() (the last only when the job has test data).
    nlohmann::ordered_json run() {
        generate();
        finetune();
        if (test_) return evaluate();
        return nlohmann::ordered_json::object();
    }

private:
    // The training sequences of one data set, with each row's prompt length and top-k record.
    struct Sequences {
        data::SequenceDataset data;
        std::vector<std::int32_t> prompt_length{};
        std::vector<const io::topk_record*> topk{};
        std::shared_ptr<io::topk_file> topk_file{};
        std::int64_t skipped_too_long = 0;
    };

    // ---- configuration -----------------------------------------------------------------------------

    // A data file of the job; its io/format errors become config errors of the key that names it
    // ("training_data: train.jsonl:7: ...").
    static data::Dataset read_data(const char* key, const std::string& path) {
        try {
            return data::read_examples(path);
        } catch (const io_error& e) {
            throw config_error(key, e.what());
        } catch (const format_error& e) {
            throw config_error(key, e.what());
        }
    }

    bool student_from_hf() const { return std::filesystem::is_directory(job_.student_weights); }

    // The job's `student` section, or the architecture of `student_weights` (the section must then be
    // empty or describe the same one).
    student_config read_student_config() const {
        student_config c{};
        if (job_.student_weights.empty() || !job_.student.empty()) {
            io::from_json(job_.student, c, "student");
            c.validate("student");
        }
        if (job_.student_weights.empty()) return c;
        student_config init{};
        if (student_from_hf()) {
            if constexpr (std::is_same_v<student_config, student::TransformerConfig>)
                init = io::hf::checked_transformer_config(io::hf::Directory(job_.student_weights));
            else
                throw config_error("student_weights",
                                   "is a Hugging Face directory, which initializes "
                                   "student::Transformer only");
        } else {
            init = io::load_weights_config<student_config>(io::safetensors_file(job_.student_weights));
        }
        if (job_.student.empty()) return init;
        const nlohmann::json want = io::to_json(init), have = io::to_json(c);
        for (const auto& item : want.items())
            if (have.value(item.key(), nlohmann::json()) != item.value())
                throw config_error("student." + item.key(),
                                   "is " + have.value(item.key(), nlohmann::json()).dump() + ", but student_weights " +
                                       job_.student_weights + " has " + item.value().dump() +
                                       " (leave \"student\" empty to take the checkpoint's architecture)");
        return c;
    }

    // The student's tokenizer and chat format (`Job::tokenizer`): the job's, else the one beside
    // `student_weights`, else the in-process teacher's own, else the byte tokenizer. Chat-template
    // settings come from the teacher's, the format recognized anew for another tokenizer. Notes
    // the tokenizer.json it came from, which the transformers-layout student is given.
    data::ChatTemplate student_template() {
        std::string tokenizer = job_.tokenizer;
        const char* field = "tokenizer";
        if (tokenizer.empty() && student_from_hf() &&
            std::filesystem::exists(std::filesystem::path(job_.student_weights) / "tokenizer.json")) {
            tokenizer = job_.student_weights;
            field = "student_weights";
        }
        data::ChatTemplateConfig settings{};
        if constexpr (requires { teacher_.chat_template(); }) {
            if (tokenizer.empty()) {
                if constexpr (requires { teacher_.tokenizer_file(); }) tokenizer_source_ = teacher_.tokenizer_file();
                return teacher_.chat_template();
            }
            settings = teacher_.chat_template().config();
            settings.format.clear();
        }
        tokenizer_source_ = data::tokenizer_file(tokenizer, field);
        return data::load_chat_template(tokenizer, settings, field);
    }

    // Losses that compare the two models position by position and column by column (online terms,
    // top-k) need one tokenizer: the teacher's padding rows past the student's are trimmed (with a
    // notice); different tokenizers are refused with the advice to distill through the text, which
    // works across tokenizers (the teacher's answers are then re-encoded with the student's).
    void align_vocabularies() {
        const std::int64_t student_rows = student_cfg_.vocab_size;
        data::VocabInfo teacher_vocab;
        if constexpr (requires { teacher_.chat_template(); }) {
            teacher_vocab = teacher_.chat_template().vocab_info("teacher", teacher_vocab_size(teacher_));
        } else {  // a cache or an endpoint, known by its tokenizer's name
            teacher_vocab = template_.vocab_info("teacher");
            if (!answer_tokens_reusable_) teacher_vocab.tokens = {"(tokenizer " + teacher_tokenizer_id(teacher_) + ")"};
        }
        alignment_ = data::align_vocabularies(teacher_vocab, template_.vocab_info("student", student_rows));
        if constexpr (!online && !uses_topk) return;  // text distillation works across tokenizers
        data::require_logit_compatible(alignment_);
        if constexpr (online) {
            const std::int64_t teacher_rows = teacher_.network().config().vocab_size;
            if (teacher_rows < student_rows)
                throw config_error("student.vocab_size",
                                   "is " + std::to_string(student_rows) + ", more rows than the teacher's " +
                                       std::to_string(teacher_rows) +
                                       ": online losses compare the teacher's logits column by column; give the "
                                       "student at most the teacher's rows (and at least the tokenizer's " +
                                       std::to_string(template_.vocab_size()) + " ids)");
        }
        if (alignment_.match == data::vocab_match::padded) say("tokenizer: " + alignment_.message);
    }

    loss::dims dims(int max_batch) const {
        loss::dims d;
        d.student = loss::model_dims_of_config(student_cfg_);
        if constexpr (online) {
            d.teacher = loss::model_dims_of(teacher_.network());
            d.teacher.vocab_size = student_cfg_.vocab_size;  // padding rows past it are trimmed
        } else
            d.teacher = {student_cfg_.vocab_size, 0, 0, 0};
        d.max_batch = max_batch;
        d.max_length = student_cfg_.context_length;
        return d;
    }

    // The job's loss object read into the loss's config: terms the job does not name get weight 0;
    // a term without its own temperature takes hyperparameters.temperature, except one that reads
    // cached top-k log-probabilities: those are at the teacher's temperature, 1, and cannot be
    // re-tempered, so the term keeps its default (1).
    typename loss_type::config parse_loss_config() const {
        typename loss_type::config cfg;
        nlohmann::json j = job_.loss;
        if constexpr (requires { loss_type::names(); }) {
            const nlohmann::json defaults = io::to_json(cfg);
            for (std::size_t i = 0; i < loss_type::names().size(); ++i) {
                const char* name = loss_type::names()[i];
                if (!j.contains(name)) {
                    j[name] = {{"weight", 0.0}};
                } else if (j[name].is_object() && !j[name].contains("temperature") &&
                           defaults[name].contains("temperature") && !distiller_detail::reads_topk<loss_type>[i]) {
                    j[name]["temperature"] = job_.hyperparameters.temperature;
                }
            }
        } else {
            // a single term: the job's loss object is {"<name>": {...}}
            if (j.size() != 1 || !j.contains(loss_type::name))
                throw config_error("loss", std::string("this distiller's loss is the single term \"") +
                                               loss_type::name + "\"; the job's loss object must name exactly it");
            nlohmann::json term = j[loss_type::name];
            if (term.is_object() && !term.contains("temperature") && io::to_json(cfg).contains("temperature") &&
                !distiller_detail::reads_topk<loss_type>[0])
                term["temperature"] = job_.hyperparameters.temperature;
            io::from_json(term, cfg, std::string("loss.") + loss_type::name);
            return cfg;
        }
        io::from_json(j, cfg, "loss");
        return cfg;
    }

    // The job's optimizer object read into the optimizer's config; weight_decay from the
    // hyperparameters unless the optimizer object sets it.
    typename optimizer_type::config_type parse_optimizer_config() const {
        typename optimizer_type::config_type cfg;
        nlohmann::json j = job_.optimizer;
        if (!j.contains("weight_decay") && io::to_json(cfg).contains("weight_decay"))
            j["weight_decay"] = job_.hyperparameters.weight_decay;
        io::from_json(j, cfg, "optimizer");
        if constexpr (requires { cfg.validate(std::string()); }) cfg.validate("optimizer");
        return cfg;
    }

    train::FinetuneConfig finetune_config(const std::string& dir) const {
        const auto& h = job_.hyperparameters;
        train::FinetuneConfig c;
        c.num_epochs = h.num_epochs;
        c.max_steps = h.max_steps;
        c.batch_size = h.batch_size;
        c.grad_accum = h.grad_accum;
        c.grad_clip = h.grad_clip;
        c.seed = h.seed;
        c.eval_every = h.eval_every;
        c.patience = h.patience;
        c.checkpoint_every = h.checkpoint_every;
        c.log_every = h.log_every;
        c.output_dir = dir;
        c.quiet = opt_.quiet;
        return c;
    }

    optim::ScheduleConfig schedule_config() const {
        const auto& h = job_.hyperparameters;
        return {h.learning_rate, h.warmup, h.decay, h.min_lr_ratio};
    }

    // ---- generate → training sequences -------------------------------------------------------------

    Sequences sequences_from_synthetic(const std::filesystem::path& path, const char* what) const {
        if (!std::filesystem::exists(path))
            throw error("finetune: " + path.string() + " does not exist; run the generate stage first");
        const std::string fp = generation_fingerprint(teacher_, sampling_);
        Sequences s{data::SequenceDataset(template_.pad(), student_cfg_.context_length)};
        if constexpr (uses_topk) {
            auto topk_path = path;
            topk_path.replace_extension(".topk");
            s.topk_file = std::make_shared<io::topk_file>(topk_path);
            if (s.topk_file->header().tokenizer != template_.tokenizer_id())
                throw config_error("tokenizer",
                                   "the top-k ids of " + topk_path.string() + " belong to tokenizer " +
                                       s.topk_file->header().tokenizer + ", the student's is " +
                                       template_.tokenizer_id() +
                                       ": top-k losses need the teacher's tokenizer (data/vocab_alignment.hpp)");
        }
        const auto records = teacher::read_synthetic(path);
        // In input order, not file order: answers retried by a later run (an endpoint that failed
        // some requests) are appended after the others, and training must not depend on that.
        std::vector<std::size_t> order(records.size());
        for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::stable_sort(order.begin(), order.end(),
                         [&](std::size_t a, std::size_t b) { return records[a].source_line < records[b].source_line; });
        for (const std::size_t i : order) {
            const auto& r = records[i];
            if (r.fingerprint != fp) throw teacher::fingerprint_error(path.string(), r.fingerprint, fp);
            const auto prompt = template_.encode_prompt(r.prompt);
            // the teacher's own ids when they are the student tokenizer's, else its text re-encoded
            const bool same_tokenizer =
                r.tokenizer.empty() ? answer_tokens_reusable_ : r.tokenizer == template_.tokenizer_id();
            const bool reuse = same_tokenizer && !r.response.tokens.empty() &&
                               std::all_of(r.response.tokens.begin(), r.response.tokens.end(),
                                           [&](std::int32_t id) { return id >= 0 && id < student_cfg_.vocab_size; });
            const auto response = reuse ? r.response.tokens : template_.encode_response(r.response.text);
            if (prompt.size() + response.size() > std::size_t(student_cfg_.context_length)) {
                ++s.skipped_too_long;
                continue;
            }
            s.data.add_prompt_response(prompt, response);
            s.prompt_length.push_back(std::int32_t(prompt.size()));
            if constexpr (uses_topk) {
                const io::topk_record* t = i < s.topk_file->size() ? &(*s.topk_file)[i] : nullptr;
                if (!t || t->id != r.id || t->positions() != response.size())
                    throw format_error(s.topk_file->path(), 0,
                                       "has no matching top-k record for line " + std::to_string(i + 1) + " of " +
                                           path.string() + " (id \"" + r.id + "\"); delete both to generate anew");
                s.topk.push_back(t);
            }
        }
        if (s.skipped_too_long > 0)
            say(std::string("finetune: ") + std::to_string(s.skipped_too_long) + " " + what +
                " examples longer than the student's context_length " + std::to_string(student_cfg_.context_length) +
                " are left out");
        if (s.data.empty()) throw error(std::string("finetune: no usable ") + what + " example in " + path.string());
        return s;
    }

    data::SequenceDataset reference_sequences(const data::Dataset& ds, std::int64_t* skipped) const {
        data::SequenceDataset seqs(template_.pad(), student_cfg_.context_length);
        for (const auto& ex : ds.examples) {
            if (!ex.reference) continue;
            const auto prompt = template_.encode_prompt(ex.prompt);
            const auto response = template_.encode_response(*ex.reference);
            if (prompt.size() + response.size() > std::size_t(student_cfg_.context_length)) {
                ++*skipped;
                continue;
            }
            seqs.add_prompt_response(prompt, response);
        }
        return seqs;
    }

    // ---- the distillation loss as the finetune loop's callback -------------------------------------

    // One micro-batch: student forward, teacher signals (live forward or cached top-k), the loss
    // terms, and for training the student's backward.
    class Step {
    public:
        Step(Distiller& d, const Sequences& train, const Sequences* val, loss_type& loss,
             loss::Workspace<float, Device>& ws)
            : d_(&d), train_(&train), val_(val), loss_(&loss), ws_(&ws) {}

        train::LossValues operator()(student_type& s, const data::Batch& batch, train::pass p) {
            const int B = batch.batch, T = batch.length;
            const std::size_t N = std::size_t(B) * std::size_t(T);
            s.forward(batch.tokens.data(), B, T);
            mask_.resize(N);
            for (std::size_t n = 0; n < N; ++n) mask_[n] = batch.targets[n] >= 0;
            out_.tokens = Tensor<const std::int32_t>(batch.targets.data(), {B, T});
            if constexpr (online) {
                d_->teacher_.forward(batch.tokens.data(), B, T);
                loss::collect_outputs(d_->teacher_, out_);
                if (out_.logits.size(2) > d_->student_cfg_.vocab_size) trim_teacher_logits(B, T);
            }
            if constexpr (uses_topk) fill_topk(p == train::pass::train ? *train_ : *val_, batch);
            auto ctx = ws_->begin(s, out_, Tensor<const std::uint8_t>(mask_.data(), {B, T}),
                                  Tensor<const std::int32_t>(batch.targets.data(), {B, T}));
            const double total = static_cast<double>((*loss_)(ctx));
            ws_->finish();
            if (p == train::pass::train) s.backward(ws_->d_hidden(), ws_->d_attention(), ws_->d_qkv());
            train::LossValues v{total, {}};
            if constexpr (requires { loss_->values(); }) {
                const auto names = loss_type::names();
                for (std::size_t i = 0; i < names.size(); ++i)
                    if (loss_->weights()[i] != 0) v.terms.emplace_back(names[i], loss_->values()[i]);
            }
            return v;
        }

    private:
        // The teacher's (B,T,Vt) logits cut to the student's (B,T,Vs) columns, Vt > Vs: the same
        // tokens, the teacher's embedding padded further (data/vocab_alignment.hpp).
        void trim_teacher_logits(int B, int T) {
            const std::int64_t Vt = out_.logits.size(2), Vs = d_->student_cfg_.vocab_size, rows = std::int64_t(B) * T;
            const std::size_t need = std::size_t(rows * Vs);
            if (trimmed_.size() < need) trimmed_ = detail::Arena<float, Device>(d_->device_, need);
            const float* from = out_.logits.data();
            for (std::int64_t r = 0; r < rows; ++r)  // one copy per row: Vs of every Vt values
                d_->device_.copy(trimmed_.data() + r * Vs, from + r * Vt, sizeof(float) * std::size_t(Vs));
            out_.logits = Tensor<const float>(trimmed_.data(), {B, T, Vs}, Device::memory);
        }

        // (B,T,k) ids and log-probabilities: the teacher's distribution over response token j sits
        // at the position that predicts it, prompt_length + j - 1; -1 ids elsewhere.
        void fill_topk(const Sequences& seqs, const data::Batch& batch) {
            const int B = batch.batch, T = batch.length, k = d_->sampling_.top_logprobs,
                      V = d_->student_cfg_.vocab_size;
            ids_.assign(std::size_t(B) * T * k, -1);
            lps_.assign(ids_.size(), 0.0f);
            for (int b = 0; b < B; ++b) {
                const auto row = std::size_t(batch.indices[std::size_t(b)]);
                const io::topk_record& r = *seqs.topk[row];
                const int rk = int(r.top_ids.size() / std::max<std::size_t>(r.positions(), 1));
                const int use = std::min(k, rk);
                for (std::size_t j = 0; j < r.positions(); ++j) {
                    const std::int64_t pos = seqs.prompt_length[row] + std::int64_t(j) - 1;
                    if (pos < 0 || pos >= T) continue;
                    const std::size_t dst = (std::size_t(b) * T + std::size_t(pos)) * k;
                    for (int c = 0; c < use; ++c) {
                        const std::int32_t id = r.top_ids[j * rk + c];
                        if (id >= V) continue;  // a padding row of a teacher with more rows: not a token
                        ids_[dst + c] = id;
                        lps_[dst + c] = r.top_logprobs[j * rk + c];
                    }
                }
            }
            out_.topk_ids = Tensor<const std::int32_t>(ids_.data(), {B, T, k});
            out_.topk_logprobs = Tensor<const float>(lps_.data(), {B, T, k});
            out_.topk_temperature = 1.0;
        }

        Distiller* d_;
        const Sequences* train_;
        const Sequences* val_;
        loss_type* loss_;
        loss::Workspace<float, Device>* ws_;
        loss::teacher_outputs<float> out_{};
        std::vector<std::uint8_t> mask_{};
        std::vector<std::int32_t> ids_{};
        std::vector<float> lps_{};
        detail::Arena<float, Device> trimmed_{};  // the teacher's logits on the student's columns
    };

    // ---- training runs ----------------------------------------------------------------------------

    // Trains into out/<name>/ unless done.json there holds `fp`; refuses a directory of another
    // configuration. `train` runs the loop and returns its result.
    template <class Train>
    nlohmann::ordered_json run_stage(const std::string& name, const std::string& fp, Train&& train) {
        const auto dir = out_ / name, done = dir / "done.json", marker = dir / "fingerprint.json",
                   weights = out_ / (name + ".safetensors");
        if (distiller_detail::stored_fingerprint(done) == fp && std::filesystem::exists(weights)) {
            say("finetune: " + name + " is complete for this configuration; skipped");
            return distiller_detail::read_json_file(done);
        }
        const std::string found = distiller_detail::stored_fingerprint(marker);
        if (!found.empty() && found != fp) throw teacher::fingerprint_error(dir.string(), found, fp);
        std::filesystem::create_directories(dir);
        if (found.empty()) io::write_file_atomic(marker, nlohmann::json{{"fingerprint", fp}}.dump() + "\n");
        const auto t0 = std::chrono::steady_clock::now();
        const train::FinetuneResult r = train(dir.string());
        const auto& from = !r.best_checkpoint.empty() ? r.best_checkpoint : r.last_checkpoint;
        if (from.empty()) throw error("finetune: the " + name + " run wrote no checkpoint");
        distiller_detail::copy_file_atomic(from / "student.safetensors", weights);
        nlohmann::ordered_json result = {{"fingerprint", fp},
                                         {"steps", r.steps},
                                         {"epochs_completed", r.epochs_completed},
                                         {"early_stopped", r.early_stopped},
                                         {"final_loss", r.last_loss},
                                         {"weights_from", from.filename().string()},
                                         {"seconds", distiller_detail::seconds_since(t0)}};
        if (r.best_step >= 0) {
            result["best_step"] = r.best_step;
            result["best_validation_loss"] = r.best_validation_loss;
        }
        io::write_file_atomic(done, result.dump(2) + "\n");
        return result;
    }

    student_type make_student() const {
        student_type s(student_cfg_, std::max(job_.hyperparameters.batch_size, 1), device_);
        if (job_.student_weights.empty())
            s.init(job_.hyperparameters.seed);
        else if (student_from_hf())
            io::hf::load(io::hf::Directory(job_.student_weights), s);
        else
            io::load_weights(io::safetensors_file(job_.student_weights), s);
        return s;
    }

    // What the student and the baseline start from, for their fingerprints: the checkpoint's bytes
    // (nothing is added for a random initialization, whose seed is among the hyperparameters).
    void add_initialization(nlohmann::json& fp) const {
        if (job_.student_weights.empty()) return;
        std::string digests;
        if (student_from_hf()) {
            for (const auto& e : std::filesystem::directory_iterator(job_.student_weights))
                if (e.path().extension() == ".safetensors" || e.path().filename() == "config.json")
                    digests += e.path().filename().string() + "=" + detail::sha256_file(e.path()) + ";";
        } else {
            digests = detail::sha256_file(job_.student_weights);
        }
        fp["initialization"] = detail::sha256_hex(digests);
    }

    // The trained student in transformers' layout beside student.safetensors, with its tokenizer's
    // files: a student that started from a Hugging Face directory leaves as one.
    void export_student_hf() {
        if constexpr (std::is_same_v<student_config, student::TransformerConfig>) {
            const auto dir = out_ / "student_hf";
            student_type s(student_cfg_, 1, device_);
            io::load_weights(io::safetensors_file(out_ / "student.safetensors"), s);
            const io::hf::Directory init(job_.student_weights);
            nlohmann::json extra = nlohmann::json::object();
            for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"})
                if (init.config().contains(key)) extra[key] = init.config()[key];
            io::hf::save(dir, s, io::dtype::F32, extra, init.model_type() == "phi3" ? "phi3" : "");
            if (!tokenizer_source_.empty())
                for (const char* name : {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"})
                    if (const auto from = tokenizer_source_.parent_path() / name; std::filesystem::exists(from))
                        distiller_detail::copy_file_atomic(from, dir / name);
            say("finetune: the student in transformers' layout: " + dir.string());
        }
    }

    nlohmann::ordered_json train_student(const Sequences& train, const Sequences* val, std::int64_t steps) {
        nlohmann::json fp_fields{{"stage", "student"},
                                 {"student", io::to_json(student_cfg_)},
                                 {"loss", io::to_json(loss_cfg_)},
                                 {"optimizer", io::to_json(optimizer_cfg_)},
                                 {"hyperparameters", io::to_json(job_.hyperparameters)},
                                 {"generation", generation_fingerprint(teacher_, sampling_)},
                                 {"data", train.data.fingerprint()},
                                 {"validation", val ? val->data.fingerprint() : 0}};
        add_initialization(fp_fields);
        if (job_.precision != "fp32") fp_fields["precision"] = job_.precision;
        const std::string fp = distiller_detail::sha(fp_fields.dump());
        say("finetune: distilling into a student of " + std::to_string(student_cfg_.parameter_count()) +
            " parameters for " + std::to_string(steps) + " steps (" + (online ? "online" : "offline") + ")");
        return run_stage("student", fp, [&](const std::string& dir) {
            student_type s = make_student();
            const int B = job_.hyperparameters.batch_size;
            loss_type loss(loss_cfg_, dims(B));
            loss::Workspace<float, Device> ws(loss, dims(B), device_);
            std::vector<Parameter<float>> extra;
            if constexpr (requires { loss.parameters(); }) extra = loss.parameters();
            optimizer_type opt(optim::gather(s.parameters(), extra), optimizer_cfg_);
            optim::Schedule schedule(schedule_config(), steps);
            train::FinetuneOptions<float> options;
            options.extra = extra;
            options.job_config = io::to_json(job_);
            options.progress = opt_.quiet ? nullptr : opt_.log;
            return train::finetune(s, opt, schedule, train.data, val ? &val->data : nullptr, finetune_config(dir),
                                   Step(*this, train, val, loss, ws), std::move(options));
        });
    }

    nlohmann::ordered_json train_baseline(std::int64_t steps) {
        std::int64_t skipped = 0;
        const data::Dataset& source = baseline_data_ ? *baseline_data_ : train_;
        data::SequenceDataset train = reference_sequences(source, &skipped);
        if (train.empty()) {
            say("finetune: no training example carries a reference; the baseline is not trained");
            return {{"skipped", "no labeled training example"}};
        }
        std::optional<data::SequenceDataset> val;
        if (validation_) {
            val = reference_sequences(*validation_, &skipped);
            if (val->empty()) val.reset();
        }
        nlohmann::json fp_fields{{"stage", "baseline"},
                                 {"student", io::to_json(student_cfg_)},
                                 {"optimizer", io::to_json(optimizer_cfg_)},
                                 {"hyperparameters", io::to_json(job_.hyperparameters)},
                                 {"steps", steps},
                                 {"data", train.fingerprint()},
                                 {"validation", val ? val->fingerprint() : 0}};
        add_initialization(fp_fields);
        if (job_.precision != "fp32") fp_fields["precision"] = job_.precision;
        const std::string fp = distiller_detail::sha(fp_fields.dump());
        say("finetune: baseline on " + std::to_string(train.size()) + " labeled examples for " + std::to_string(steps) +
            " steps");
        return run_stage("baseline", fp, [&](const std::string& dir) {
            student_type s = make_student();
            optimizer_type opt(s.parameters(), optimizer_cfg_);
            optim::Schedule schedule(schedule_config(), steps);
            train::FinetuneConfig cfg = finetune_config(dir);
            cfg.max_steps = steps;  // the distilled student's budget, whatever the data size
            train::FinetuneOptions<float> options;
            options.job_config = io::to_json(job_);
            options.progress = opt_.quiet ? nullptr : opt_.log;
            return train::finetune(s, opt, schedule, train, val ? &*val : nullptr, cfg, train::CrossEntropy{},
                                   std::move(options));
        });
    }

    // ---- evaluation -------------------------------------------------------------------------------

    // The job's precision is the device's: a device with a precision (device::Cpu) must compute in the
    // job's; any other device computes in fp32.
    void check_precision() const {
        const std::string has = device::compute_precision_of(device_) == device::precision::bf16 ? "bf16" : "fp32";
        if (has != job_.precision)
            throw config_error("precision", "is \"" + job_.precision + "\", but the " + Device::name +
                                                " device given to the Distiller computes in " + has +
                                                " (construct it with the job's precision)");
    }

    std::string evaluation_fingerprint(const std::string& student_digest, const std::string& baseline_digest) const {
        nlohmann::json fp{{"stage", "evaluate"},
                          {"student", student_digest},
                          {"baseline", baseline_digest},
                          {"teacher", job_.evaluation.evaluate_teacher ? teacher_.fingerprint() : ""},
                          {"test", detail::sha256_file(job_.test_data)},
                          {"template", template_.id()},
                          {"evaluation", io::to_json(job_.evaluation)},
                          {"generation", io::to_json(sampling_)},
                          {"task_type", job_.task_type}};
        if (job_.precision != "fp32") fp["precision"] = job_.precision;  // fp32 runs keep their fingerprints
        return distiller_detail::sha(fp.dump());
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
            std::min<std::size_t>(std::size_t(job_.evaluation.latency_samples), requests.size());
        for (std::size_t i = 0; i < samples; ++i) {
            const auto t0 = clock::now();
            generate_all(model, std::span<const teacher::Request>(&requests[i], 1), sampling);
            latencies.push_back(1e3 * distiller_detail::seconds_since(t0));
        }
        const auto t0 = clock::now();
        const auto responses = generate_all(model, std::span<const teacher::Request>(requests), sampling);
        const double seconds = distiller_detail::seconds_since(t0);
        std::vector<std::string> answers;
        std::int64_t tokens = 0, failed = 0;
        std::string jsonl;
        for (std::size_t i = 0; i < responses.size(); ++i) {
            const auto& r = responses[i];
            failed += r.ok() ? 0 : 1;
            answers.push_back(r.ok() ? r.text : std::string());
            tokens += r.usage.completion_tokens > 0 ? r.usage.completion_tokens : std::int64_t(r.tokens.size());
            nlohmann::ordered_json line = {{"id", requests[i].id},
                                           {"answer", answers.back()},
                                           {"reference", references[i]},
                                           {"finish_reason", teacher::finish_reason_name(r.finish)}};
            if (!r.ok()) line["error"] = r.error;
            jsonl += line.dump() + "\n";
        }
        std::filesystem::create_directories(out_ / "eval");
        io::write_file_atomic(out_ / "eval" / (name + ".answers.jsonl"), jsonl);
        nlohmann::ordered_json m;
        m["name"] = model.name();
        m["parameters"] = nullptr;
        m["checkpoint_bytes"] = nullptr;
        if constexpr (requires { model.network().config().parameter_count(); })
            m["parameters"] = model.network().config().parameter_count();
        if constexpr (requires { model.config().weights; })
            if (!model.config().weights.empty() && std::filesystem::exists(model.config().weights))
                m["checkpoint_bytes"] = distiller_detail::checkpoint_bytes(model.config().weights);
        m["peak_rss_bytes"] = memory.peak_bytes();
        m["latency_ms_p50"] = eval::percentile(latencies, 0.5);
        m["latency_ms_p95"] = eval::percentile(latencies, 0.95);
        m["responses_per_s"] = seconds > 0 ? double(responses.size()) / seconds : 0.0;
        m["tokens_per_s"] = seconds > 0 ? double(tokens) / seconds : 0.0;
        m["failed"] = failed;
        const bool is_teacher = name == "teacher";
        m["metrics"] = eval::task_metrics(job_.task_type, answers, references,
                                          is_teacher ? std::vector<std::string>{} : teacher_answers_);
        if (is_teacher) teacher_answers_ = std::move(answers);
        if constexpr (requires {
                          model.network();
                          model.chat_template();
                      })
            m["metrics"]["perplexity"] = reference_perplexity(model.network(), requests, references);
        return m;
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

    nlohmann::ordered_json measure_student(const std::filesystem::path& weights, const std::string& name,
                                           const std::vector<teacher::Request>& requests,
                                           const std::vector<std::string>& references,
                                           const teacher::Sampling& sampling) {
        eval::PeakMemory memory;
        teacher::ModelConfig cfg;
        cfg.weights = weights.string();
        cfg.max_batch = job_.evaluation.batch_size;
        runner_type model(cfg, template_, device_);
        return measure(model, name, requests, references, sampling, memory);
    }

    // exp(mean NLL) of the reference answers given their prompts, teacher-forced.
    template <class Net>
    double reference_perplexity(Net& net, const std::vector<teacher::Request>& requests,
                                const std::vector<std::string>& references) const {
        data::SequenceDataset seqs(template_.pad(), net.config().context_length);
        for (std::size_t i = 0; i < requests.size(); ++i) {
            const auto prompt = template_.encode_prompt(requests[i].messages);
            const auto response = template_.encode_response(references[i]);
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

    nlohmann::ordered_json training_summary() const {
        nlohmann::ordered_json t = nlohmann::ordered_json::object();
        for (const char* name : {"student", "baseline"})
            if (const auto done = out_ / name / "done.json"; std::filesystem::exists(done))
                t[name] = distiller_detail::read_json_file(done);
        if (const auto g = out_ / "generate" / "synthetic.report.json"; std::filesystem::exists(g))
            t["generate"] = distiller_detail::read_json_file(g);
        return t;
    }

    // Seconds per stage, from the stages' own records (`training_summary()`).
    static nlohmann::ordered_json stage_timings(const nlohmann::ordered_json& s) {
        nlohmann::ordered_json t;
        if (s.contains("generate")) t["generate_s"] = s["generate"].value("seconds", 0.0);
        double finetune = 0;
        for (const char* name : {"student", "baseline"})
            if (s.contains(name)) finetune += s[name].value("seconds", 0.0);
        t["finetune_s"] = finetune;
        return t;
    }

    void write_report(const nlohmann::ordered_json& report) {
        io::write_file_atomic(out_ / "report.md", eval::render_markdown(report));
        std::vector<std::pair<std::string, std::filesystem::path>> runs;
        for (const char* name : {"student", "baseline"})
            if (const auto p = out_ / name / "metrics.jsonl"; std::filesystem::exists(p)) runs.emplace_back(name, p);
        io::write_file_atomic(out_ / "loss.svg", eval::loss_chart(runs));
        io::write_file_atomic(out_ / "models.svg", eval::models_chart(report));
        io::write_file_atomic(out_ / "report.json", report.dump(2) + "\n");  // last: its presence means complete
    }

    void write_job_copy() {
        std::filesystem::create_directories(out_);
        io::write_file_atomic(out_ / "job.json", io::to_json(job_).dump(2) + "\n");
    }

    void say(const std::string& message) const {
        if (!opt_.quiet && opt_.log) std::fprintf(opt_.log, "%s\n", message.c_str());
    }

    Job job_;
    Teacher& teacher_;
    Device device_;
    DistillerOptions opt_;
    std::filesystem::path out_;
    student_config student_cfg_{};
    data::ChatTemplate template_{};             // the student's tokenizer and chat format
    std::filesystem::path tokenizer_source_{};  // its tokenizer.json ("" = the byte tokenizer)
    bool answer_tokens_reusable_ = true;        // the teacher's answer ids are the student tokenizer's
    data::VocabAlignment alignment_{};          // teacher and student vocabularies (logit-level losses)
    typename loss_type::config loss_cfg_{};
    typename optimizer_type::config_type optimizer_cfg_{};
    teacher::Sampling sampling_{};
    data::Dataset train_{};
    std::optional<data::Dataset> validation_{}, test_{}, baseline_data_{};
    std::vector<std::string> teacher_answers_{};
};

/// Which stages of the run in `output_dir` are done, how far training got and the last metrics,
/// read from the files the stages write (nothing is loaded or computed).
inline nlohmann::ordered_json run_status(const std::filesystem::path& output_dir) {
    namespace fs = std::filesystem;
    if (!fs::is_directory(output_dir)) throw io_error(output_dir, "is not a directory (no run there)");
    nlohmann::ordered_json s;
    s["output_dir"] = output_dir.string();
    const auto g = output_dir / "generate" / "synthetic.report.json";
    if (fs::exists(g)) {
        const auto r = distiller_detail::read_json_file(g);
        // the report counts one invocation; the files count every run
        auto count_lines = [&](const char* name) {
            std::ifstream in(output_dir / "generate" / name);
            std::int64_t n = 0;
            for (std::string line; std::getline(in, line);) n += line.empty() ? 0 : 1;
            return n;
        };
        const std::int64_t kept = count_lines("synthetic.jsonl"), rejected = count_lines("synthetic.rejected.jsonl");
        s["generate"] = {{"done", r.value("failed", 1) == 0},
                         {"examples", r.value("examples", 0)},
                         {"kept", kept},
                         {"rejected", rejected},
                         {"failed", r.value("failed", 0)}};
    } else {
        s["generate"] = {{"done", false}};
    }
    for (const char* name : {"student", "baseline"}) {
        nlohmann::ordered_json f = {{"done", fs::exists(output_dir / name / "done.json")}};
        if (std::ifstream in(output_dir / name / "metrics.jsonl"); in) {
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
    const auto report = output_dir / "report.json";
    if (fs::exists(report)) {
        const auto r = distiller_detail::read_json_file(report);
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
