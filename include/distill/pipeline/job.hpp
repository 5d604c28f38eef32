#pragma once
/// @file pipeline/job.hpp
/// The job file: one JSON object holding a whole distillation run — the teacher, the student, the
/// data, the task, sampling, hyperparameters, loss terms, the baseline and the output directory.
/// `docs/job-format.md` lists every key with its default.
///
/// Reading is strict everywhere: an unknown key is a `config_error` naming its JSON path and the
/// closest valid key; a value of the wrong type or out of range names its path and what was
/// expected. The sections whose keys depend on the policies chosen at compile time (`teacher`,
/// `student`, `optimizer`, `loss`) are kept as JSON here and read, just as strictly, into the
/// policies' own config structs by the `Distiller` that uses them.
///
/// @code
/// distill::Job job = distill::load_job("job.json");   // config_error / io_error / format_error
/// @endcode

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <boost/hana/adapt_adt.hpp>
#include <boost/hana/adapt_struct.hpp>
#include <nlohmann/json.hpp>

#include "distill/error.hpp"
#include "distill/eval/cost.hpp"
#include "distill/io/quant.hpp"
#include "distill/io/reflect.hpp"
#include "distill/optim/schedule.hpp"
#include "distill/student/lora.hpp"
#include "distill/teacher.hpp"
#include "distill/teacher/ensemble.hpp"
#include "distill/train/finetune.hpp"
#include "distill/train/on_policy.hpp"

namespace distill {

/// The task a data set poses; it decides the metrics (see `eval/task_metrics.hpp`).
/// "embedding" is the sentence-embedding task: a `student::Encoder` learns a teacher's embeddings
/// (pipeline/embedding.hpp).
inline constexpr std::string_view task_types[] = {"conversation", "qa", "math", "summarization", "nli", "embedding"};

/// Training settings shared by the distilled student and the baseline. Keys of the job's
/// `hyperparameters` object. The section holds the configs the stages read — the finetune loop's
/// (`train::FinetuneConfig`) and the learning-rate schedule's (`optim::ScheduleConfig`) — and the two
/// values the job passes on to its policies: the loss terms' temperature and the optimizer's weight
/// decay (`loss_config_of`, `optimizer_config_of` in pipeline/finetune_stage.hpp). Which job key sets
/// which field is listed once, in the reflection below the namespace (`warmup` is the schedule's
/// `warmup_steps`); the loop's other settings are not job keys: the finetune stage sets `output_dir`
/// and `quiet`, and a job runs with the loop's defaults for the rest.
struct Hyperparameters {
    /// The loop's settings; its defaults are the loop's, except where a job's differ from a program's
    /// that calls `train::finetune` itself — decided here, once. `batch_size` 16: the in-process
    /// teacher's `max_batch` and `evaluation.batch_size` default to 16 too, so a job that sets none of
    /// them runs (online distillation needs the teacher to take a whole batch). `checkpoint_every` 50:
    /// a job is an unattended run that resumes after a kill and should lose at most 50 steps; a
    /// program decides its own checkpointing (the loop's 0: at validations and the end).
    train::FinetuneConfig loop{.batch_size = 16, .checkpoint_every = 50};
    /// The schedule; its defaults are the schedule's, except the peak rate: 1e-3 for a job, whose
    /// student usually starts from random weights, against the schedule's 3e-4, a fine-tuning rate.
    optim::ScheduleConfig schedule{.learning_rate = 1e-3};
    /// The temperature of every loss term that has one and whose job entry does not set its own
    /// (except terms reading cached top-k log-probabilities, which stay at 1); a term built in code
    /// has its config's default, 1 (loss::TemperatureConfig).
    double temperature = 2.0;
    /// The optimizer's weight decay unless the job's `optimizer` object sets its own; an optimizer
    /// built in code has its config's default (AdamW 0.01, Adam and Sgd 0).
    double weight_decay = 0.01;

    /// Throws config_error naming the first invalid key under `path` ("hyperparameters.warmup: ...").
    void validate(const std::string& path = "hyperparameters") const;
};

/// How the baseline student — same architecture, same step budget, no teacher — is trained.
/// Keys of the job's `baseline` object.
struct BaselineConfig {
    bool enabled = true;  ///< train and evaluate a baseline
    /// "labeled": the training examples that carry a reference (ground truth); or the path of a
    /// JSONL file whose examples all carry one.
    std::string data = "labeled";

    void validate(const std::string& path = "baseline") const {
        if (data.empty()) throw config_error(path + ".data", "must be \"labeled\" or a JSONL path");
    }
};

/// How models are measured. Keys of the job's `evaluation` object.
struct EvaluationConfig {
    int batch_size = 16;            ///< responses generated at once for the metrics and throughput
    int latency_samples = 32;       ///< responses generated one at a time for the latency percentiles
    std::int64_t max_examples = 0;  ///< evaluate the first N test examples (0: all)
    int max_new_tokens = 0;         ///< answer length limit (0: generation.max_new_tokens)
    bool evaluate_teacher = true;   ///< measure the teacher too (costs API calls for a remote one)
    int recall_at = 10;             ///< the embedding task's recall@k: k nearest neighbours compared

    void validate(const std::string& path = "evaluation") const {
        if (batch_size < 1) throw config_error(path + ".batch_size", "must be >= 1, got " + std::to_string(batch_size));
        if (latency_samples < 0)
            throw config_error(path + ".latency_samples", "must be >= 0, got " + std::to_string(latency_samples));
        if (max_examples < 0)
            throw config_error(path + ".max_examples", "must be >= 0, got " + std::to_string(max_examples));
        if (max_new_tokens < 0)
            throw config_error(path + ".max_new_tokens", "must be >= 0, got " + std::to_string(max_new_tokens));
        if (recall_at < 1) throw config_error(path + ".recall_at", "must be >= 1, got " + std::to_string(recall_at));
    }
};

/// What leaves the run besides student.safetensors. Keys of the job's `export` object.
struct ExportConfig {
    /// GGUF files for llama.cpp, one per tensor type ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_k"):
    /// OUTPUT_DIR/gguf/student-<type>.gguf, written after finetune (docs/deployment.md).
    std::vector<std::string> gguf{};

    void validate(const std::string& path = "export") const {
        for (std::size_t i = 0; i < gguf.size(); ++i) {
            const std::string at = path + ".gguf[" + std::to_string(i) + "]";
            (void)quant::parse(gguf[i], at);
            for (std::size_t j = 0; j < i; ++j)
                if (quant::parse(gguf[j]) == quant::parse(gguf[i]))
                    throw config_error(at, "\"" + gguf[i] + "\" is listed twice");
        }
    }
};

/// A whole distillation run (see the file comment; every key in docs/job-format.md).
struct Job {
    /// `{"kind": "model" | "openai" | "cache" | "custom", ...}`: the kind's own keys
    /// (teacher::ModelConfig, teacher::OpenAIConfig, teacher::CacheConfig) beside "kind"; "custom" is a
    /// teacher constructed in code and handed to the Distiller (its keys are the program's business).
    nlohmann::json teacher = nlohmann::json::object();
    /// Several teachers instead of `teacher` (the two are exclusive): `[{"name": ..., "weight": 1,
    /// "kind": ..., <the kind's keys>}, ...]`; `route` picks or mixes them (teacher/ensemble.hpp,
    /// docs/job-format.md); teachers of different kinds combine through their answers (teacher/any.hpp).
    /// Empty: the single `teacher`.
    nlohmann::json teachers = nlohmann::json::array();
    /// How several `teachers` share the examples: "mix" (default), "example", or {"field": F, "map":
    /// {value: name}, "default": name} (teacher::parse_route). Only with `teachers`.
    nlohmann::json route = nullptr;
    /// The student architecture's config (for student::Transformer: TransformerConfig's keys).
    nlohmann::json student = nlohmann::json::object();
    /// A checkpoint the student and the baseline start from instead of random weights: a safetensors
    /// file distill wrote, or a Hugging Face directory (then the trained student is also written in
    /// transformers' layout, `student_hf/`). `student` may then be {} (the checkpoint's architecture);
    /// otherwise it must describe the same one.
    std::string student_weights{};
    /// The layers of a `student_weights` Hugging Face directory the student's layers start from, in
    /// order (e.g. [0, 5]: a 2-layer student from a 6-layer checkpoint's first and last); empty: all
    /// of them. The student then has as many layers, the checkpoint's architecture otherwise.
    /// Embedding students (`student::Encoder`) only.
    std::vector<int> student_layers{};
    /// Student parameters kept at their initial values: exact parameter names (e.g.
    /// "embeddings.word_embeddings.weight"), or prefixes ending in "." ("encoder.layer.0.").
    std::vector<std::string> frozen_parameters{};
    /// LoRA adapters on the student's linear layers (student/lora.hpp; `student::Transformer` only):
    /// with `rank` > 0 the student's weights are frozen and only the adapters train, for the
    /// distilled student and the baseline alike; student.safetensors then holds the merged weights
    /// and OUTPUT_DIR/student_adapter/ the adapter in PEFT's format.
    student::LoraConfig lora{};
    /// The student's tokenizer: "byte", a tokenizer.json or a directory holding one; "" = the one in
    /// the `student_weights` directory, else the teacher's when it runs in process, else the byte
    /// tokenizer. A tokenizer other than the teacher's allows only sequence-level (text) distillation
    /// (data/vocab_alignment.hpp).
    std::string tokenizer{};
    std::string training_data{};             ///< JSONL prompts (chat, prompt/completion or text); required
    std::string validation_data{};           ///< JSONL prompts for the validation loss ("" = none)
    std::string test_data{};                 ///< JSONL prompts with references for the evaluation ("" = no evaluation)
    std::string task_type = "conversation";  ///< one of task_types; decides the metrics
    teacher::Sampling generation{.temperature = 0.0, .top_p = 1.0};  ///< how the teacher answers
    Hyperparameters hyperparameters{};
    /// On-policy distillation (GKD): the fraction `lambda` of training batches whose responses the
    /// student samples with the `generation` settings, the teacher scoring them; `seq_kd`: the teacher
    /// samples the others. Needs an in-process teacher and a logit-level loss (train/on_policy.hpp).
    train::OnPolicyConfig on_policy{};
    /// The optimizer's own keys besides the learning rate and weight decay (e.g. AdamW's beta1).
    nlohmann::json optimizer = nlohmann::json::object();
    /// Loss terms by name with weights and configs: {"soft_kl": {"weight": 1, "temperature": 2}, ...}.
    /// Terms the chosen loss type has but the job does not name get weight 0.
    nlohmann::json loss = nlohmann::json::object();
    BaselineConfig baseline{};
    EvaluationConfig evaluation{};
    ExportConfig exports{};  ///< the job's "export" object (`export` is a C++ keyword)
    /// Prices for the report's cost table (eval/cost.hpp); they change no measurement.
    eval::CostConfig cost{};
    std::string output_dir = "out";  ///< every output of the run
    int threads = 0;                 ///< CPU threads (0: DISTILL_NUM_THREADS or all cores)
    /// Train the student and the baseline with activation checkpointing (student::activations::
    /// checkpointed): each block's activations recomputed in backward, for less memory; the weights
    /// are the same bit for bit, so it is no part of any fingerprint and a run may resume either way.
    bool activation_checkpointing = false;
    /// The arithmetic of the device's matrix products: "fp32", or "bf16" (bf16 operands, fp32
    /// accumulation, fp32 master weights; needs oneDNN and a CPU with its bf16 matmul). The device the
    /// Distiller is given must compute in it.
    std::string precision = "fp32";
    /// 1: ZeRO-1 in a data-parallel run — each rank keeps the optimizer state of its shard of the
    /// parameters only (docs/scaling.md). The weights are the same bit for bit, so it is no part of
    /// any fingerprint; with one process it changes nothing.
    int zero = 0;
    /// The memory the run may use, in GiB; 0: what the machine has (MemAvailable and the cgroup v2
    /// limit). A run whose memory plan (eval/memory_plan.hpp) exceeds it is refused before it
    /// allocates, the plan in the message.
    double memory_limit_gib = 0;

    /// Checks the fixed part (the policy sections are checked by the Distiller); throws config_error.
    void validate() const {
        if (!teacher.is_object()) throw config_error("teacher", "expected an object");
        if (!teachers.is_array()) throw config_error("teachers", "expected an array of teacher objects");
        if (!teachers.empty()) {
            validate_teachers();
        } else {
            if (!route.is_null())
                throw config_error("route", "routes several teachers; this job names one (\"teacher\")");
            validate_kind(teacher, "teacher");
        }
        if (!student.is_object()) throw config_error("student", "expected an object");
        if (!optimizer.is_object()) throw config_error("optimizer", "expected an object");
        if (!loss.is_object()) throw config_error("loss", "expected an object");
        if (loss.empty()) throw config_error("loss", "names no term; give at least one, e.g. {\"soft_kl\": {}}");
        if (training_data.empty()) throw config_error("training_data", "is required (a JSONL file)");
        bool known = false;
        for (auto t : task_types) known = known || task_type == t;
        if (!known)
            throw config_error("task_type",
                               "expected \"conversation\", \"qa\", \"math\", \"summarization\", \"nli\" or "
                               "\"embedding\", got \"" +
                                   task_type + "\"");
        for (std::size_t i = 0; i < student_layers.size(); ++i)
            if (student_layers[i] < 0)
                throw config_error("student_layers[" + std::to_string(i) + "]",
                                   "must be a layer index >= 0, got " + std::to_string(student_layers[i]));
        if (!student_layers.empty() && student_weights.empty())
            throw config_error("student_layers", "selects layers of student_weights, which is not set");
        for (std::size_t i = 0; i < frozen_parameters.size(); ++i)
            if (frozen_parameters[i].empty())
                throw config_error("frozen_parameters[" + std::to_string(i) + "]", "must not be empty");
        lora.validate("lora");
        if (lora.enabled() && task_type == "embedding")
            throw config_error("lora.rank", "adapts student::Transformer; an embedding task trains a student::Encoder");
        generation.validate("generation");
        hyperparameters.validate();
        on_policy.validate();
        if (on_policy.enabled() && task_type == "embedding")
            throw config_error(on_policy.lambda > 0 ? "on_policy.lambda" : "on_policy.seq_kd",
                               "samples responses, which an embedding task has none of");
        baseline.validate();
        evaluation.validate();
        exports.validate();
        cost.validate();
        if (task_type == "embedding" && !exports.gguf.empty())
            throw config_error("export.gguf", "is for decoder students; an embedding student leaves as student_hf/");
        if (output_dir.empty()) throw config_error("output_dir", "must not be empty");
        if (threads < 0 || threads > 4096) throw config_error("threads", "must be in [0, 4096]");
        if (precision != "fp32" && precision != "bf16")
            throw config_error("precision", "expected \"fp32\" or \"bf16\", got \"" + precision + "\"");
        if (zero != 0 && zero != 1)
            throw config_error("zero", "expected 0 or 1 (ZeRO-1: optimizer state sharded over the ranks), got " +
                                           std::to_string(zero));
        if (!(memory_limit_gib >= 0 && memory_limit_gib < 1e9))
            throw config_error("memory_limit_gib",
                               "must be >= 0 (0 = the machine's memory), got " + std::to_string(memory_limit_gib));
    }

    /// The teacher's kind ("model", "openai", "cache"); with `teachers`, the first one's.
    std::string teacher_kind() const {
        if (!teachers.empty()) return teachers[0].value("kind", "");
        return teacher.value("kind", "");
    }
    /// The teacher section without "kind": the kind's config object.
    nlohmann::json teacher_config() const {
        nlohmann::json c = teacher;
        c.erase("kind");
        return c;
    }
    /// Whether the job names several `teachers`.
    bool multi_teacher() const { return !teachers.empty(); }
    /// `teachers[i]` without "kind", "name" and "weight": the kind's config object.
    nlohmann::json teacher_config(std::size_t i) const {
        nlohmann::json c = teachers.at(i);
        for (const char* k : {"kind", "name", "weight"}) c.erase(k);
        return c;
    }
    /// `teachers[i]`'s name and weight.
    std::string teacher_name(std::size_t i) const { return teachers.at(i).value("name", ""); }
    double teacher_weight(std::size_t i) const { return teachers.at(i).value("weight", 1.0); }
    /// Checks one teacher object's kind (`path`: "teacher" or "teachers[i]").
    static void validate_kind(const nlohmann::json& t, const std::string& path) {
        if (!t.contains("kind") || !t["kind"].is_string())
            throw config_error(path + ".kind", "is required: \"model\", \"openai\", \"cache\" or \"custom\"");
        const std::string kind = t["kind"];
        if (kind != "model" && kind != "openai" && kind != "cache" && kind != "custom")
            throw config_error(path + ".kind",
                               "expected \"model\", \"openai\", \"cache\" or \"custom\" (a teacher built in code), "
                               "got \"" +
                                   kind + "\"");
    }

    /// `teachers` and `route` (see their comments); throws config_error naming the key.
    void validate_teachers() const {
        if (!teacher.empty())
            throw config_error("teachers", "and \"teacher\" are exclusive: give one teacher or a list of them");
        std::vector<std::string> names;
        for (std::size_t i = 0; i < teachers.size(); ++i) {
            const std::string at = "teachers[" + std::to_string(i) + "]";
            const auto& t = teachers[i];
            if (!t.is_object()) throw config_error(at, "expected a teacher object");
            validate_kind(t, at);
            if (!t.contains("name") || !t["name"].is_string() || t["name"].get<std::string>().empty())
                throw config_error(at + ".name", "is required: a non-empty string the route and the report use");
            const std::string name = t["name"];
            for (std::size_t j = 0; j < names.size(); ++j)
                if (names[j] == name)
                    throw config_error(at + ".name", "\"" + name + "\" is also teachers[" + std::to_string(j) + "]'s");
            names.push_back(name);
            if (t.contains("weight")) {
                const auto& w = t["weight"];
                if (!w.is_number() || !(w.get<double>() > 0) || !std::isfinite(w.get<double>()))
                    throw config_error(at + ".weight", "must be a finite number > 0, got " + w.dump());
            }
        }
        (void)teacher::parse_route(route, names, "route");
    }

    /// The primary metric of the task type (the report's leading column).
    std::string primary_metric() const {
        if (task_type == "nli") return "accuracy";
        if (task_type == "qa" || task_type == "math") return "exact_match";
        if (task_type == "summarization") return "rouge_l";
        if (task_type == "embedding") return "mean_cosine";
        return "bleu";
    }
};

}  // namespace distill

// The keys of the job's `hyperparameters` object, each with the field of the stage config it sets.
// clang-format off
BOOST_HANA_ADAPT_ADT(distill::Hyperparameters,
    (learning_rate,    [](auto& h) -> auto& { return h.schedule.learning_rate; }),
    (batch_size,       [](auto& h) -> auto& { return h.loop.batch_size; }),
    (num_epochs,       [](auto& h) -> auto& { return h.loop.num_epochs; }),
    (max_steps,        [](auto& h) -> auto& { return h.loop.max_steps; }),
    (temperature,      [](auto& h) -> auto& { return h.temperature; }),
    (warmup,           [](auto& h) -> auto& { return h.schedule.warmup_steps; }),
    (decay,            [](auto& h) -> auto& { return h.schedule.decay; }),
    (min_lr_ratio,     [](auto& h) -> auto& { return h.schedule.min_lr_ratio; }),
    (weight_decay,     [](auto& h) -> auto& { return h.weight_decay; }),
    (grad_clip,        [](auto& h) -> auto& { return h.loop.grad_clip; }),
    (grad_accum,       [](auto& h) -> auto& { return h.loop.grad_accum; }),
    (seed,             [](auto& h) -> auto& { return h.loop.seed; }),
    (eval_every,       [](auto& h) -> auto& { return h.loop.eval_every; }),
    (patience,         [](auto& h) -> auto& { return h.loop.patience; }),
    (checkpoint_every, [](auto& h) -> auto& { return h.loop.checkpoint_every; }),
    (log_every,        [](auto& h) -> auto& { return h.loop.log_every; }));
// clang-format on
BOOST_HANA_ADAPT_STRUCT(distill::BaselineConfig, enabled, data);
BOOST_HANA_ADAPT_STRUCT(distill::ExportConfig, gguf);
BOOST_HANA_ADAPT_STRUCT(distill::EvaluationConfig, batch_size, latency_samples, max_examples, max_new_tokens,
                        evaluate_teacher, recall_at);
// The job's keys, each with the field it sets.
// clang-format off
BOOST_HANA_ADAPT_ADT(distill::Job,
    (teacher,            [](auto& j) -> auto& { return j.teacher; }),
    (teachers,           [](auto& j) -> auto& { return j.teachers; }),
    (route,              [](auto& j) -> auto& { return j.route; }),
    (student,            [](auto& j) -> auto& { return j.student; }),
    (student_weights,    [](auto& j) -> auto& { return j.student_weights; }),
    (student_layers,     [](auto& j) -> auto& { return j.student_layers; }),
    (frozen_parameters,  [](auto& j) -> auto& { return j.frozen_parameters; }),
    (lora,               [](auto& j) -> auto& { return j.lora; }),
    (tokenizer,          [](auto& j) -> auto& { return j.tokenizer; }),
    (training_data,      [](auto& j) -> auto& { return j.training_data; }),
    (validation_data,    [](auto& j) -> auto& { return j.validation_data; }),
    (test_data,          [](auto& j) -> auto& { return j.test_data; }),
    (task_type,          [](auto& j) -> auto& { return j.task_type; }),
    (generation,         [](auto& j) -> auto& { return j.generation; }),
    (hyperparameters,    [](auto& j) -> auto& { return j.hyperparameters; }),
    (on_policy,          [](auto& j) -> auto& { return j.on_policy; }),
    (optimizer,          [](auto& j) -> auto& { return j.optimizer; }),
    (loss,               [](auto& j) -> auto& { return j.loss; }),
    (baseline,           [](auto& j) -> auto& { return j.baseline; }),
    (evaluation,         [](auto& j) -> auto& { return j.evaluation; }),
    (export,             [](auto& j) -> auto& { return j.exports; }),
    (cost,               [](auto& j) -> auto& { return j.cost; }),
    (output_dir,         [](auto& j) -> auto& { return j.output_dir; }),
    (threads,            [](auto& j) -> auto& { return j.threads; }),
    (activation_checkpointing, [](auto& j) -> auto& { return j.activation_checkpointing; }),
    (precision,          [](auto& j) -> auto& { return j.precision; }),
    (zero,               [](auto& j) -> auto& { return j.zero; }),
    (memory_limit_gib,   [](auto& j) -> auto& { return j.memory_limit_gib; }));
// clang-format on

namespace distill {

inline void Hyperparameters::validate(const std::string& path) const {
    // each check once, in the config that owns the value; the errors name the job's keys
    io::validate_part(*this, loop, path);
    io::validate_part(*this, schedule, path);
    if (!(temperature > 0) || !std::isfinite(temperature))
        throw config_error(path + ".temperature", "must be a finite number > 0, got " + std::to_string(temperature));
    if (!(weight_decay >= 0) || !std::isfinite(weight_decay))
        throw config_error(path + ".weight_decay", "must be a finite number >= 0, got " + std::to_string(weight_decay));
}

/// Reads and validates a job from JSON. Relative data paths stay relative to the working directory.
inline Job parse_job(const nlohmann::json& j) {
    if (!j.is_object()) throw config_error("(job)", "expected a JSON object at the top level");
    Job job;
    io::from_json(j, job, "");
    job.validate();
    return job;
}

/// Reads `path` (io_error when unreadable, format_error naming line and column when not JSON) and
/// validates it (config_error naming the key).
/// The JSON of a job file (io_error when unreadable, format_error naming the line of a syntax error).
inline nlohmann::json read_job_json(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw io_error(path, "cannot open the job file");
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    try {
        return nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
        // the byte offset → line for the message
        std::uint64_t line = 1;
        for (std::size_t i = 0; i < text.size() && i + 1 < e.byte; ++i) line += text[i] == '\n';
        throw format_error(path, line, std::string("not valid JSON: ") + e.what());
    }
}

inline Job load_job(const std::filesystem::path& path) {
    return parse_job(read_job_json(path));
}

}  // namespace distill
