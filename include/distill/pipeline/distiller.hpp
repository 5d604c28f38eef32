#pragma once
/// @file pipeline/distiller.hpp
/// `Distiller<Teacher, Student, Loss, Optimizer, Device>`: the whole generate → finetune → evaluate
/// pipeline of one job, composed at compile time from one policy per kind. Start reading here.
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
/// **Two kinds of run**, chosen by the student: a `sequence_model` (`student::Transformer`) learns a
/// `teacher_source`'s answers through the stages below; an `embedding_model` (`student::Encoder`)
/// learns an `embedding_teacher`'s sentence embeddings (`task_type` "embedding",
/// pipeline/embedding.hpp: the same job file, loss terms, finetune loop and run directory).
///
/// **The rooms.** The constructor reads and checks the whole job into a `RunSetup`
/// (pipeline/setup.hpp); each stage is its own header and reads only that: `generate_stage`
/// (pipeline/generate.hpp), `FinetuneStage` (pipeline/finetune_stage.hpp, over the loop in
/// train/finetune.hpp), `EvaluateStage` (pipeline/evaluate.hpp). Where each writes, and when a stage is
/// skipped, resumed or refused, is pipeline/run_dir.hpp: each stage resumes after a crash (generate
/// by record, finetune from its latest checkpoint, evaluate from scratch, deterministically) and is
/// skipped when complete; output of another configuration in the same directory is refused with an
/// error naming the file, never reused.

#include <algorithm>
#include <filesystem>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include <nlohmann/json.hpp>

#include "distill/data/chat.hpp"
#include "distill/data/dataset.hpp"
#include "distill/data/load_chat_tokenizer.hpp"
#include "distill/data/vocab_alignment.hpp"
#include "distill/device.hpp"
#include "distill/error.hpp"
#include "distill/io/hf.hpp"
#include "distill/io/reflect.hpp"
#include "distill/io/safetensors.hpp"
#include "distill/io/weights.hpp"
#include "distill/loss.hpp"
#include "distill/optimizer.hpp"
#include "distill/pipeline/embedding.hpp"
#include "distill/pipeline/evaluate.hpp"
#include "distill/pipeline/finetune_stage.hpp"
#include "distill/pipeline/generate.hpp"
#include "distill/pipeline/job.hpp"
#include "distill/pipeline/run_dir.hpp"
#include "distill/pipeline/setup.hpp"
#include "distill/student.hpp"
#include "distill/teacher.hpp"
#include "distill/teacher/ensemble.hpp"
#include "distill/teacher/model.hpp"

namespace distill {

/// The generate → finetune → evaluate pipeline of one job (see the file comment).
/// @tparam Teacher a `teacher_source` (e.g. `teacher::Model<student::Transformer>`, `teacher::OpenAI<>`), or
///         for an embedding student an `embedding_teacher` (`teacher::EncoderModel<>`).
/// @tparam Student a class template `Student<T, Device>` that is a `student_model` (`student::Transformer`,
///         `student::Encoder`).
/// @tparam Loss a `loss_policy` (a term or a `loss::Sum`); rebound to float on `Device`.
/// @tparam Optimizer a class template `Optimizer<T, Device>` that is an `optimizer_policy` (`optim::AdamW`).
/// @tparam Device a `device_policy` (`device::Cpu`).
template <class Teacher, template <class, class> class Student, class Loss, template <class, class> class Optimizer,
          class Device = device::Cpu>
class Distiller {
    static_assert(device_policy<Device>,
                  "Device: not a distill::device_policy (memory, name, allocate, deallocate, fill_zero, copy); see "
                  "docs/devices.md");
    static_assert(student_model<Student<float, Device>>,
                  "Student: Student<float, Device> is not a distill::student_model (a sequence_model or an "
                  "embedding_model); see docs/students.md");
    static constexpr bool embedding = embedding_model<Student<float, Device>>;
    static_assert(embedding || teacher_source<Teacher>,
                  "Teacher: not a distill::teacher_source (provides, fingerprint(), name(), generate(...)); see "
                  "docs/teachers.md");
    static_assert(!embedding || embedding_teacher<Teacher>,
                  "Teacher: an embedding student learns from a distill::embedding_teacher (provides pooled, "
                  "encode(text, limit), forward(tokens, B, T, lengths), e.g. teacher::EncoderModel); see "
                  "docs/teachers.md");
    static_assert(loss::loss_policy<loss::rebind_t<Loss, float, Device>, float, Device>,
                  "Loss: not a distill::loss::loss_policy (name, needs, config, constructor from (config, dims), "
                  "operator()(context)); see docs/losses.md");
    static_assert(optimizer_policy<Optimizer<float, Device>>,
                  "Optimizer: Optimizer<float, Device> is not a distill::optimizer_policy; see docs/training.md");
    static_assert(loss::check_needs<Teacher, Loss>());
    static_assert(embedding || !detail::needs_online<Loss> || online_teacher<Teacher>,
                  "Teacher: the loss reads the teacher's logits, hidden states or attention maps, so the teacher must "
                  "run in-process (distill::online_teacher, e.g. teacher::Model); see docs/teachers.md");

    using types = RunTypes<Student, Loss, Optimizer, Device>;

public:
    using scalar_type = float;
    using teacher_type = Teacher;
    using student_type = typename types::student_type;
    using student_config = typename types::student_config;
    using loss_type = typename types::loss_type;
    using optimizer_type = typename types::optimizer_type;
    using device_type = Device;
    /// What every stage reads: the job as the constructor read and checked it.
    using setup_type = typename types::setup_type;
    /// The stages, chosen by the student: the language tasks' for a `sequence_model`, the
    /// `embedding` task's (pipeline/embedding.hpp) for an `embedding_model`.
    using finetune_stage_type = std::conditional_t<embedding, EmbeddingFinetune<Teacher, types, Device>,
                                                   FinetuneStage<Teacher, Student, Loss, Optimizer, Device>>;
    using evaluate_stage_type = std::conditional_t<embedding, EmbeddingEvaluate<Teacher, types, Device>,
                                                   EvaluateStage<Teacher, Student, Loss, Optimizer, Device>>;

    /// Online distillation (a teacher forward per batch) when the loss reads in-process signals.
    static constexpr bool online = types::online;
    /// Whether the loss reads cached top-k log-probabilities.
    static constexpr bool uses_topk = types::uses_topk;

    /// Validates everything that can be validated before work starts — every section of `job`
    /// against the policies' configs, the data files (read and parsed), the teacher's shape against
    /// the student's — so a bad job fails here (config_error, io_error, format_error naming the key,
    /// file or line), never hours later. `teacher` is kept by reference and must outlive the Distiller.
    Distiller(Job job, Teacher& teacher, Device device = Device{}, DistillerOptions options = {})
        : teacher_(teacher), device_(device) {
        s_.job = std::move(job);
        s_.dir = RunDir(s_.job.output_dir);
        s_.options = options;
        s_.job.validate();
        check_precision();
        train::check_data_parallel(s_.job.hyperparameters.loop, s_.options.comm().size(), "hyperparameters");
        s_.student = read_student_config();
        if constexpr (embedding) {
            prepare_embedding();
        } else {
            prepare_sequences();
            finetune_stage_type(s_, teacher_, device_).check_gguf_export();
            finetune_stage_type(s_, teacher_, device_).check_lora_export();
            check_memory();
        }
    }

    /// The distilled student's run, part by part, computed without allocating (see
    /// `FinetuneStage::memory_plan`); the constructor refuses a job whose plan exceeds the memory
    /// it may use (`memory_limit_gib`, else the machine's).
    eval::MemoryPlan memory_plan() const
        requires(!embedding && std::is_same_v<student_config, student::TransformerConfig>) {
        return finetune_stage_type(s_, teacher_, device_).memory_plan();
    }

    Distiller(const Distiller&) = delete;
    Distiller& operator=(const Distiller&) = delete;

    const Job& job() const noexcept { return s_.job; }
    const std::filesystem::path& output_dir() const noexcept { return s_.dir.root(); }
    /// The student's tokenizer and chat format (see `Job::tokenizer`).
    const data::ChatTokenizer& chat_template() const noexcept { return s_.chat_template; }
    /// How the teacher's and the student's vocabularies line up, decided at construction for losses
    /// that compare them (online terms, top-k); `different` otherwise.
    const data::VocabAlignment& alignment() const noexcept { return s_.alignment; }
    /// Everything the stages read (see pipeline/setup.hpp).
    const setup_type& setup() const noexcept { return s_; }

    /// The teacher answers every training (and validation) prompt; see `generate_stage`. Resumes
    /// and skips what is done. Returns the training set's report.
    GenerateReport generate() {
        auto& comm = s_.options.comm();
        const auto done = [&](GenerateReport r) {
            comm.barrier();
            return r;
        };
        if (comm.root()) s_.dir.write_job_copy(s_.job);
        if constexpr (embedding) {
            s_.say(
                "generate: nothing to generate for the embedding task; the teacher embeds each training batch "
                "during finetune");
            return done(GenerateReport{.teacher = teacher_.name(), .examples = s_.train.examples.size()});
        } else {  // each rank answers its share of the prompts; rank 0 merges (generate_sharded)
            return done(generate_stage(teacher_, s_));
        }
    }

    /// Trains the distilled student and the baseline; see `FinetuneStage` (`EmbeddingStages` for an
    /// embedding student). Needs the generate stage's output. Returns a summary of both runs.
    nlohmann::ordered_json finetune() {
        if (s_.options.comm().root()) s_.dir.write_job_copy(s_.job);
        return finetune_stage_type(s_, teacher_, device_).run();
    }

    /// Measures the teacher, the baseline and the distilled student on the test set and writes the
    /// report; see `EvaluateStage` (`EmbeddingStages`). Returns report.json's object.
    nlohmann::ordered_json evaluate() {
        auto& comm = s_.options.comm();
        if (comm.root()) s_.dir.write_job_copy(s_.job);
        if constexpr (embedding) {  // rank 0 measures alone
            if (!comm.root()) {
                comm.barrier();
                return detail::read_json_file(s_.dir.report_json());
            }
        }
        // every rank answers its share of the test prompts; rank 0 measures latency and writes the report
        auto report = evaluate_stage_type(s_, teacher_, device_).run();
        comm.barrier();
        if (!comm.root()) return detail::read_json_file(s_.dir.report_json());
        return report;
    }

    /// Writes the job's GGUF files (`export.gguf`) from the trained student; see
    /// `FinetuneStage::export_gguf` (finetune() writes them too). Returns the files.
    std::vector<std::filesystem::path> export_gguf() {
        if constexpr (requires(finetune_stage_type & f) { f.export_gguf(); }) {
            if (!s_.options.comm().root()) return {};
            return finetune_stage_type(s_, teacher_, device_).export_gguf();
        } else {
            return {};  // embedding students: the job refuses export.gguf
        }
    }

    /// generate(), finetune(), evaluate() (the last only when the job has test data).
    nlohmann::ordered_json run() {
        generate();
        finetune();
        if (s_.test) return evaluate();
        return nlohmann::ordered_json::object();
    }

private:
    // ---- reading the job against the policies -------------------------------------------------------

    // The language tasks: the student's tokenizer and chat format, the data (test examples with
    // references), the vocabularies and shapes the loss compares.
    void prepare_sequences() {
        if (s_.job.task_type == "embedding")
            throw config_error("task_type", "is \"embedding\", which needs an embedding student (student::Encoder)");
        if (!s_.job.student_layers.empty())
            throw config_error("student_layers", "selects checkpoint layers for embedding students only");
        s_.chat_template = student_template();
        if (s_.student.vocab_size < s_.chat_template.vocab_size())
            throw config_error("student.vocab_size", "is " + std::to_string(s_.student.vocab_size) +
                                                         ", but the student's tokenizer " +
                                                         s_.chat_template.tokenizer_id() + " has " +
                                                         std::to_string(s_.chat_template.vocab_size()) + " ids");
        s_.answer_tokens_reusable = teacher_tokenizer_id(teacher_) == s_.chat_template.tokenizer_id();
        s_.loss = loss_config_of<loss_type>(s_.job);
        s_.optimizer = optimizer_config_of<optimizer_type>(s_.job);
        s_.train = read_data("training_data", s_.job.training_data);
        if (s_.train.examples.empty())
            throw format_error(s_.job.training_data, 0, "has no examples (training_data must not be empty)");
        if (!s_.job.validation_data.empty()) s_.validation = read_data("validation_data", s_.job.validation_data);
        if (!s_.job.test_data.empty()) {
            s_.test = read_data("test_data", s_.job.test_data);
            for (const auto& ex : s_.test->examples)
                if (!ex.reference)
                    throw format_error(s_.job.test_data, ex.line,
                                       "test example has no reference answer (the evaluation compares against it)");
        }
        if (s_.job.baseline.enabled && s_.job.baseline.data != "labeled")
            s_.baseline_data = read_data("baseline.data", s_.job.baseline.data);
        if constexpr (uses_topk) {
            if (s_.job.generation.top_logprobs == 0)
                throw config_error("generation.top_logprobs",
                                   "is 0, but the loss reads the teacher's top-k log-probabilities; set 1..20");
        }
        check_on_policy();
        if constexpr (
            online || uses_topk || requires { teacher_.chat_template(); } ||
            requires { teacher_.vocab_info(std::string()); })
            align_vocabularies();
        check_teachers();
        if constexpr (online) {
            for_each_network([&](const auto& net, const std::string& who) {
                const auto& t = net.config();
                if (t.context_length < s_.student.context_length)
                    throw config_error("student.context_length", "is " + std::to_string(s_.student.context_length) +
                                                                     ", longer than " + who + "'s " +
                                                                     std::to_string(t.context_length) +
                                                                     " (the teacher forwards the same sequences)");
            });
            if (teacher_batch_size(teacher_) < s_.job.hyperparameters.loop.batch_size)
                throw config_error("teacher.max_batch",
                                   "is " + std::to_string(teacher_batch_size(teacher_)) +
                                       ", smaller than hyperparameters.batch_size " +
                                       std::to_string(s_.job.hyperparameters.loop.batch_size) +
                                       " (online distillation forwards the teacher on every batch)");
        }
        const int B = s_.job.hyperparameters.loop.batch_size;
        const auto probe = checked_loss<loss_type>(s_.loss, loss_dims_of<online>(teacher_, s_.student, B));
        if constexpr (online && requires { teacher_.keeps_activations(); })
            if (!teacher_.keeps_activations() && loss::reads_activations(probe))
                throw config_error("teacher.keep_activations",
                                   "is false, but the loss reads the teacher's hidden states, attention maps or "
                                   "q|k|v; set it to true (or drop those terms)");
        check_activation_checkpointing<student_type, Device>(s_.job, probe);
    }

    // On-policy batches (train/on_policy.hpp) are scored by a live teacher forward, position by
    // position: the loss must read the teacher's logits, in process, and nothing cached per example;
    // the sampling model must decode with a KV cache.
    void check_on_policy() const {
        const auto& op = s_.job.on_policy;
        if (!op.enabled()) return;
        const std::string key = op.lambda > 0 ? "on_policy.lambda" : "on_policy.seq_kd";
        if constexpr (!online || !loss::term_needs<Loss, signal::logits_t>)
            throw config_error(key,
                               "samples responses that only a teacher running in process can score: the loss "
                               "must read the teacher's logits (jsd, soft_kl, reverse_kl) with teacher.kind "
                               "\"model\"; this job's loss does not");
        if constexpr (uses_topk)
            throw config_error(key,
                               "samples responses, but the loss reads cached top-k log-probabilities, which "
                               "exist only for the teacher's answers; use a full-logit term (jsd, soft_kl, "
                               "reverse_kl)");
        if constexpr (!requires(student_type & st) { st.make_cache(1); })
            throw config_error("on_policy.lambda",
                               "needs a student that decodes with a KV cache (make_cache, "
                               "prefill, decode)");
        if constexpr (detail::is_ensemble<Teacher>)
            if (op.seq_kd)
                throw config_error("on_policy.seq_kd",
                                   "samples responses from one teacher; a job with several teachers cannot "
                                   "(on_policy.lambda, the student sampling, works: the teachers' mixture scores it)");
        if constexpr (!requires(Teacher & t) { t.network().make_cache(1); })
            if (op.seq_kd)
                throw config_error("on_policy.seq_kd",
                                   "needs a teacher whose network decodes with a KV cache "
                                   "(teacher::Model)");
    }

    // Refuses (config_error naming memory_limit_gib, or "memory" for the machine's own limit) a run
    // whose memory plan exceeds what it may use, before anything of the run is allocated or written.
    void check_memory() const {
        if constexpr (std::is_same_v<student_config, student::TransformerConfig>) {
            const eval::MemoryPlan plan = memory_plan();
            std::string advice = "What lowers it: a smaller hyperparameters.batch_size";
            if (!s_.job.activation_checkpointing) advice += ", activation_checkpointing";
            if (!s_.job.lora.enabled()) advice += ", lora";
            eval::check_fits(plan, eval::memory_budget(s_.job.memory_limit_gib, plan),
                             s_.job.memory_limit_gib > 0 ? "memory_limit_gib" : "memory", advice + ".");
        }
    }

    // The embedding task: see `EmbeddingStages::prepare`.
    void prepare_embedding() { EmbeddingStages<Teacher, types, Device>::prepare(s_, teacher_); }

    // The job's `student` section, or the architecture of `student_weights`: the section may then give
    // some of its keys, each equal to the checkpoint's, but a rotary student's context_length may be less.
    student_config read_student_config() const {
        student_config c{};
        if (s_.job.student_weights.empty()) {
            io::from_json(s_.job.student, c, "student");
            c.validate("student");
            return c;
        }
        student_config init{};
        if (s_.student_from_hf()) {
            if constexpr (std::is_same_v<student_config, student::TransformerConfig>)
                init = io::hf::checked_transformer_config(io::hf::Directory(s_.job.student_weights));
            else if constexpr (std::is_same_v<student_config, student::EncoderConfig>)
                init = detail::student_encoder_config(io::hf::Directory(s_.job.student_weights), s_.job);
            else
                throw config_error("student_weights",
                                   "is a Hugging Face directory, which initializes "
                                   "student::Transformer and student::Encoder only");
        } else {
            init = io::load_weights_config<student_config>(io::safetensors_file(s_.job.student_weights));
        }
        // the job's keys must be the checkpoint's, but a rotary student may be built for fewer positions
        // (a checkpoint of 32 768, trained on answers of a few hundred tokens)
        nlohmann::json merged = io::to_json(init);
        bool rope = false;
        if constexpr (requires { init.rope(); }) rope = init.rope();
        for (const auto& item : s_.job.student.items()) {
            if (!merged.contains(item.key())) {  // not a key of the config: io::from_json names it
                merged[item.key()] = item.value();
                continue;
            }
            const nlohmann::json& theirs = merged[item.key()];
            if (item.key() == "context_length" && rope && item.value().is_number_integer() &&
                item.value().template get<std::int64_t>() >= 1 && item.value() <= theirs) {
                merged[item.key()] = item.value();
                continue;
            }
            if (item.value() != theirs)
                throw config_error("student." + item.key(),
                                   "is " + item.value().dump() + ", but student_weights " + s_.job.student_weights +
                                       " has " + theirs.dump() +
                                       (item.key() == "context_length" && rope
                                            ? " (a rotary student may be built for fewer positions, not more)"
                                            : " (give only the keys to change, or leave \"student\" empty to take "
                                              "the checkpoint's architecture)"));
        }
        io::from_json(merged, c, "student");
        c.validate("student");
        return c;
    }

    // The student's tokenizer and chat format (`Job::tokenizer`): the job's, else the one beside
    // `student_weights`, else the in-process teacher's own, else the byte tokenizer. Chat-template
    // settings come from the teacher's, the format recognized anew for another tokenizer. Notes
    // the tokenizer.json it came from, which the transformers-layout student is given.
    data::ChatTokenizer student_template() {
        std::string tokenizer = s_.job.tokenizer;
        const char* field = "tokenizer";
        if (tokenizer.empty() && s_.student_from_hf() &&
            std::filesystem::exists(std::filesystem::path(s_.job.student_weights) / "tokenizer.json")) {
            tokenizer = s_.job.student_weights;
            field = "student_weights";
        }
        data::ChatTemplateConfig settings{};
        if constexpr (requires { teacher_.chat_template(); }) {
            if (tokenizer.empty()) {
                if constexpr (requires { teacher_.tokenizer_file(); }) s_.tokenizer_source = teacher_.tokenizer_file();
                return teacher_.chat_template();
            }
            settings = teacher_.chat_template().config();
            settings.format.clear();
        }
        s_.tokenizer_source = data::tokenizer_file(tokenizer, field);
        return data::load_chat_tokenizer(tokenizer, settings, field);
    }

    // Losses that compare the two models position by position and column by column (online terms,
    // top-k) need one tokenizer: the teacher's padding rows past the student's are trimmed (with a
    // notice); different tokenizers are refused with the advice to distill through the text, which
    // works across tokenizers (the teacher's answers are then re-encoded with the student's).
    void align_vocabularies() {
        if constexpr (detail::is_ensemble<Teacher>) {
            // each teacher as a single teacher would be: the same alignment, the same refusal
            for (std::size_t i = 0; i < teacher_.size(); ++i) align_vocabularies(teacher_.member(i));
        } else {
            align_vocabularies(teacher_);
        }
    }

    template <class One>
    void align_vocabularies(One& one) {
        const std::int64_t student_rows = s_.student.vocab_size;
        data::VocabInfo teacher_vocab;
        if constexpr (requires { one.chat_template(); }) {
            teacher_vocab = one.chat_template().vocab_info("teacher", teacher_vocab_size(one));
        } else if constexpr (requires { one.vocab_info(std::string()); }) {
            // an endpoint that declares its published tokenizer: the vocabularies are compared, not the files
            teacher_vocab = one.vocab_info("teacher");
            const auto a =
                data::align_vocabularies(teacher_vocab, s_.chat_template.vocab_info("student", student_rows));
            if (!a.logit_losses_allowed) {
                if constexpr (uses_topk)
                    throw config_error("teacher.tokenizer",
                                       "names the endpoint's tokenizer " + teacher_tokenizer_id(one) +
                                           ", which is not the student's tokenizer " + s_.chat_template.tokenizer_id() +
                                           ": the endpoint's top-k log-probabilities cannot be mapped onto the "
                                           "student's ids (" +
                                           a.message + ")");
            } else {
                s_.answer_tokens_reusable = true;
                s_.same_vocabulary_tokenizer = teacher_tokenizer_id(one);
            }
        } else {  // a cache or an endpoint, known by its tokenizer's name
            teacher_vocab = s_.chat_template.vocab_info("teacher");
            if (!s_.answer_tokens_reusable) teacher_vocab.tokens = {"(tokenizer " + teacher_tokenizer_id(one) + ")"};
        }
        s_.alignment = data::align_vocabularies(teacher_vocab, s_.chat_template.vocab_info("student", student_rows));
        if constexpr (!online && !uses_topk) return;  // text distillation works across tokenizers
        data::require_logit_compatible(s_.alignment);
        if constexpr (online) {
            const std::int64_t teacher_rows = one.network().config().vocab_size;
            if (teacher_rows < student_rows)
                throw config_error("student.vocab_size",
                                   "is " + std::to_string(student_rows) + ", more rows than the teacher's " +
                                       std::to_string(teacher_rows) +
                                       ": online losses compare the teacher's logits column by column; give the "
                                       "student at most the teacher's rows (and at least the tokenizer's " +
                                       std::to_string(s_.chat_template.vocab_size()) + " ids)");
        }
        if (s_.alignment.match == data::vocab_match::padded) s_.say("tokenizer: " + s_.alignment.message);
    }

    // Calls f(network, "the teacher" | "teacher <name>") for the in-process teacher, or for each
    // member of an ensemble.
    template <class F>
    void for_each_network(F&& f) const {
        if constexpr (detail::is_ensemble<Teacher>) {
            for (std::size_t i = 0; i < teacher_.size(); ++i)
                f(teacher_.member(i).network(), "teacher \"" + teacher_.member_name(i) + "\"");
        } else {
            f(teacher_.network(), std::string("the teacher"));
        }
    }

    // A job with `teachers` needs a teacher::Ensemble built from them (same names, weights and route,
    // so that the report and the fingerprints say what the job says); a single-teacher job refuses one.
    // Under a field route every training and validation example must reach a teacher.
    void check_teachers() const {
        if constexpr (detail::is_ensemble<Teacher>) {
            if (!s_.job.multi_teacher())
                throw config_error("teachers", "is empty, but the Distiller was given a teacher::Ensemble");
            if (s_.job.teachers.size() != teacher_.size())
                throw config_error("teachers", "names " + std::to_string(s_.job.teachers.size()) +
                                                   " teachers, but the ensemble holds " +
                                                   std::to_string(teacher_.size()));
            double total = 0;
            for (std::size_t i = 0; i < teacher_.size(); ++i) total += s_.job.teacher_weight(i);
            for (std::size_t i = 0; i < teacher_.size(); ++i) {
                const std::string at = "teachers[" + std::to_string(i) + "]";
                if (s_.job.teacher_name(i) != teacher_.member_name(i))
                    throw config_error(at + ".name", "is \"" + s_.job.teacher_name(i) + "\", but the ensemble's " +
                                                         std::to_string(i) + "th teacher is \"" +
                                                         teacher_.member_name(i) + "\"");
                if (std::abs(s_.job.teacher_weight(i) / total - teacher_.weights()[i]) > 1e-12)
                    throw config_error(at + ".weight",
                                       "differs from the ensemble's weight of \"" + teacher_.member_name(i) + "\"");
            }
            std::vector<std::string> names;
            for (std::size_t i = 0; i < teacher_.size(); ++i) names.push_back(teacher_.member_name(i));
            if (teacher::parse_route(s_.job.route, names).to_json() != teacher_.route().to_json())
                throw config_error("route", "differs from the ensemble's route " + teacher_.route().to_json().dump());
            if (teacher_.route().mode == teacher::Route::by::field) {
                auto check = [&](const data::Dataset& d, const std::string& file) {
                    for (const auto& ex : d.examples) try {
                            (void)teacher_.route_of(ex.id, ex.fields);
                        } catch (const config_error& e) {
                            throw format_error(file, ex.line, e.what());
                        }
                };
                check(s_.train, s_.job.training_data);
                if (s_.validation) check(*s_.validation, s_.job.validation_data);
            }
        } else {
            if (s_.job.multi_teacher())
                throw config_error("teachers",
                                   "names several teachers; give the Distiller a teacher::Ensemble of them "
                                   "(examples/multi_teacher.cpp)");
        }
    }

    // The job's precision is the device's: a device with a precision (device::Cpu) must compute in the
    // job's; any other device computes in fp32.
    void check_precision() const {
        const std::string has = device::compute_precision_of(device_) == device::precision::bf16 ? "bf16" : "fp32";
        if (has != s_.job.precision)
            throw config_error("precision", "is \"" + s_.job.precision + "\", but the " + Device::name +
                                                " device given to the Distiller computes in " + has +
                                                " (construct it with the job's precision)");
    }

    Teacher& teacher_;
    Device device_;
    setup_type s_{};
};

}  // namespace distill
