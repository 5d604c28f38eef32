#pragma once
/// @file pipeline/finetune_stage.hpp
/// The finetune stage: the teacher's answers (generate/synthetic.jsonl) become training sequences
/// in the student's tokenizer; the distilled student trains on them with the job's loss — a live
/// teacher forward per batch (online) or the cached top-k log-probabilities (offline) — and the
/// baseline, the same student and step budget without the teacher, on the ground-truth answers.
/// With the job's `on_policy` settings a training batch keeps its prompts and gets responses the
/// student (or, `seq_kd`, the teacher) samples now, which the online teacher then scores
/// (train/on_policy.hpp).
/// Each run goes through `train::finetune` (train/finetune.hpp: the loop only) into its own
/// directory of the run (see `RunDir`): skipped when complete under the same fingerprint, resumed
/// from its latest checkpoint after a crash, refused when another configuration wrote it. The best
/// (or last) checkpoint's weights become `student.safetensors` / `baseline.safetensors`; a student
/// that started from a Hugging Face directory also leaves as one (`student_hf/`).
///
/// The job's sections are read here into the policies' configs (`loss_config_of`,
/// `optimizer_config_of`) and the loop's (`finetune_config_of`, `schedule_config_of`), so that every
/// value a training run uses is visibly the job's.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/hana/for_each.hpp>
#include <nlohmann/json.hpp>

#include "distill/data/dataset.hpp"
#include "distill/detail/arena.hpp"
#include "distill/detail/hash.hpp"
#include "distill/device.hpp"
#include "distill/error.hpp"
#include "distill/eval/memory_plan.hpp"
#include "distill/io/durable.hpp"
#include "distill/io/gguf_export.hpp"
#include "distill/io/hf.hpp"
#include "distill/io/peft.hpp"
#include "distill/io/reflect.hpp"
#include "distill/io/topk_cache.hpp"
#include "distill/io/weights.hpp"
#include "distill/loss.hpp"
#include "distill/loss/sum.hpp"
#include "distill/optim/common.hpp"
#include "distill/optim/schedule.hpp"
#include "distill/optimizer.hpp"
#include "distill/pipeline/job.hpp"
#include "distill/pipeline/run_dir.hpp"
#include "distill/pipeline/setup.hpp"
#include "distill/signals.hpp"
#include "distill/student.hpp"
#include "distill/student/transformer_memory.hpp"
#include "distill/teacher.hpp"
#include "distill/teacher/synthetic.hpp"
#include "distill/train/finetune.hpp"
#include "distill/train/on_policy.hpp"

namespace distill {

namespace detail {

// Sets `c.temperature` to `t` when the config has one.
template <class Config>
void set_temperature(Config& c, double t) {
    if constexpr (requires { c.temperature = t; }) c.temperature = t;
}

}  // namespace detail

/// The job's `loss` object read into `LossT`'s config; then, on the typed config, what the job adds:
/// terms the job does not name get weight 0, and a named term whose entry has no `temperature` runs
/// at `hyperparameters.temperature` — except one that reads cached top-k log-probabilities: those
/// are at the teacher's temperature, 1, and cannot be re-tempered, so the term keeps its config's
/// default (1). Throws config_error naming `loss.<term>.<key>`.
template <class LossT>
typename LossT::config loss_config_of(const Job& job) {
    typename LossT::config cfg;
    const double temperature = job.hyperparameters.temperature;
    if constexpr (requires { LossT::names(); }) {
        io::from_json(job.loss, cfg, "loss");
        std::size_t i = 0;  // the term's index in LossT::names()
        boost::hana::for_each(cfg.terms, [&](auto& term) {
            const char* name = LossT::names()[i];
            if (!job.loss.contains(name))
                term.weight = 0.0;
            else if (!job.loss[name].contains("temperature") && !detail::reads_topk<LossT>[i])
                detail::set_temperature(term.config, temperature);
            ++i;
        });
    } else {
        // a single term: the job's loss object is {"<name>": {...}}
        if (job.loss.size() != 1 || !job.loss.contains(LossT::name))
            throw config_error("loss", std::string("this distiller's loss is the single term \"") + LossT::name +
                                           "\"; the job's loss object must name exactly it");
        const nlohmann::json& term = job.loss[LossT::name];
        io::from_json(term, cfg, std::string("loss.") + LossT::name);
        if (!term.contains("temperature") && !detail::reads_topk<LossT>[0]) detail::set_temperature(cfg, temperature);
    }
    return cfg;
}

/// The job's `optimizer` object read into `OptimizerT`'s config; its weight decay is
/// `hyperparameters.weight_decay` unless the optimizer object sets its own. Throws config_error
/// naming `optimizer.<key>`.
template <class OptimizerT>
typename OptimizerT::config_type optimizer_config_of(const Job& job) {
    typename OptimizerT::config_type cfg;
    io::from_json(job.optimizer, cfg, "optimizer");
    if constexpr (requires { cfg.weight_decay = 0.0; })
        if (!job.optimizer.contains("weight_decay")) cfg.weight_decay = job.hyperparameters.weight_decay;
    if constexpr (requires { cfg.validate(std::string()); }) cfg.validate("optimizer");
    return cfg;
}

/// The finetune loop's settings of a job's training run into `dir`: the hyperparameters' loop
/// settings, writing into `dir`, progress shown unless `quiet`.
inline train::FinetuneConfig finetune_config_of(const Hyperparameters& h, const std::string& dir, bool quiet) {
    train::FinetuneConfig c = h.loop;
    c.output_dir = dir;
    c.quiet = quiet;
    return c;
}

/// The learning-rate schedule of a job's training runs.
inline optim::ScheduleConfig schedule_config_of(const Hyperparameters& h) {
    return h.schedule;
}

/// The shapes the loss is built for: the student's, and the teacher's when it runs in process
/// (`Online`), its logit columns cut to the student's (padding rows past them are trimmed).
template <bool Online, class Teacher, class StudentConfig>
loss::dims loss_dims_of(Teacher& teacher, const StudentConfig& student, int max_batch) {
    loss::dims d;
    d.student = loss::model_dims_of_config(student);
    if constexpr (Online) {
        if constexpr (detail::is_ensemble<Teacher>)  // mixed logits only: the first member's shapes
            d.teacher = loss::model_dims_of(teacher.member(0).network());
        else
            d.teacher = loss::model_dims_of(teacher.network());
        d.teacher.vocab_size = student.vocab_size;
    } else
        d.teacher = {student.vocab_size, 0, 0, 0};
    d.max_batch = max_batch;
    d.max_length = student.context_length;
    return d;
}

/// The parameters of `params` the optimizer updates: all but those the job's `frozen_parameters`
/// name (an exact name, or a prefix ending in "."). Throws config_error naming the entry that matches
/// no parameter.
template <class T>
std::vector<Parameter<T>> trainable_parameters(const std::vector<Parameter<T>>& params,
                                               const std::vector<std::string>& frozen) {
    auto matches = [](const std::string& pattern, const std::string& name) {
        return pattern.ends_with('.') ? name.starts_with(pattern) : name == pattern;
    };
    for (std::size_t i = 0; i < frozen.size(); ++i)
        if (std::none_of(params.begin(), params.end(), [&](const auto& p) { return matches(frozen[i], p.name); }))
            throw config_error("frozen_parameters[" + std::to_string(i) + "]",
                               "\"" + frozen[i] + "\" names no parameter of the student (e.g. \"" +
                                   (params.empty() ? std::string() : params.front().name) + "\")");
    std::vector<Parameter<T>> out;
    for (const auto& p : params)
        if (std::none_of(frozen.begin(), frozen.end(), [&](const auto& f) { return matches(f, p.name); }))
            out.push_back(p);
    return out;
}

/// Whether `Student` has a checkpointed mode (a constructor taking `student::activations`).
template <class Student, class Device>
concept checkpointable =
    std::is_constructible_v<Student, const typename Student::config_type&, int, Device, student::activations>;

/// A job's `activation_checkpointing` with the student type and the loss (`probe`, built from the
/// job): refused, naming the key, for a student without the mode and for a loss that reads attention
/// maps or q|k|v, which a checkpointed student does not keep.
template <class Student, class Device, class Loss>
void check_activation_checkpointing(const Job& job, const Loss& probe) {
    if (!job.activation_checkpointing) return;
    if constexpr (!checkpointable<Student, Device>)
        throw config_error("activation_checkpointing",
                           "is true, but this student type has no checkpointed mode (student::Transformer and "
                           "student::Encoder have); set it to false");
    else if (loss::reads_attention(probe))
        throw config_error("activation_checkpointing",
                           "is true, but the loss reads the student's attention maps or q|k|v (attention_kl, "
                           "attention_relation), which a checkpointed student does not keep; set it to false "
                           "(or drop those terms)");
}

/// What a training run starts from, added to its fingerprint fields: the bytes of `student_weights`
/// (nothing for a random initialization, whose seed is among the hyperparameters), the layers taken
/// from it and the frozen parameters (each only when set).
inline void add_initialization(const Job& job, nlohmann::json& fp) {
    if (!job.frozen_parameters.empty()) fp["frozen_parameters"] = job.frozen_parameters;
    if (job.lora.enabled()) fp["lora"] = io::to_json(job.lora);
    if (job.student_weights.empty()) return;
    std::string digests;
    if (std::filesystem::is_directory(job.student_weights)) {
        for (const auto& e : std::filesystem::directory_iterator(job.student_weights))
            if (e.path().extension() == ".safetensors" || e.path().filename() == "config.json")
                digests += e.path().filename().string() + "=" + detail::sha256_file(e.path()) + ";";
    } else {
        digests = detail::sha256_file(job.student_weights);
    }
    fp["initialization"] = detail::sha256_hex(digests);
    if (!job.student_layers.empty()) fp["student_layers"] = job.student_layers;
}

/// Trains run `name` ("student", "baseline") into its directory of `setup.dir` unless it is complete
/// under fingerprint `fp` (see RunDir); `train(dir)` runs the loop there and returns its result. The
/// best (or last) checkpoint's weights become `<name>.safetensors` (`publish(checkpoint, file)` writes
/// them when given: a LoRA run's merged weights). Returns the run's summary.
template <class Setup, class Train>
nlohmann::ordered_json run_training(
    const Setup& setup, const std::string& name, const std::string& fp, Train&& train,
    const std::function<void(const std::filesystem::path&, const std::filesystem::path&)>& publish = {}) {
    const RunDir& out = setup.dir;
    if (out.training_complete(name, fp)) {
        setup.say("finetune: " + name + " is complete for this configuration; skipped");
        return detail::read_json_file(out.done(name));
    }
    auto& comm = setup.options.comm();
    if (comm.root()) out.claim_training(name, fp);
    const auto t0 = std::chrono::steady_clock::now();
    const train::FinetuneResult r = train(out.training_dir(name).string());
    if (r.paused) {  // DistillerOptions::stop_at: no weights and no done.json until the run ends
        comm.barrier();
        return {{"fingerprint", fp}, {"paused_at", r.steps}};
    }
    if (!comm.root()) {  // every rank trained its share; rank 0 writes the results
        comm.barrier();
        return detail::read_json_file(out.done(name));
    }
    const auto& from = !r.best_checkpoint.empty() ? r.best_checkpoint : r.last_checkpoint;
    if (from.empty()) throw error("finetune: the " + name + " run wrote no checkpoint");
    if (publish)
        publish(from, out.weights(name));
    else
        io::copy_file_atomic(from / "student.safetensors", out.weights(name));
    nlohmann::ordered_json result = {{"fingerprint", fp},
                                     {"steps", r.steps},
                                     {"epochs_completed", r.epochs_completed},
                                     {"early_stopped", r.early_stopped},
                                     {"final_loss", r.last_loss},
                                     {"weights_from", from.filename().string()},
                                     {"seconds", detail::seconds_since(t0)}};
    if (r.best_step >= 0) {
        result["best_step"] = r.best_step;
        result["best_validation_loss"] = r.best_validation_loss;
    }
    io::write_file_atomic(out.done(name), result.dump(2) + "\n");
    comm.barrier();
    return result;
}

/// The loss callback's result for one micro-batch: the total and, for a `Sum`, each term of nonzero
/// weight by name.
template <class LossT>
train::LossValues loss_values(const LossT& loss, double total) {
    train::LossValues v{total, {}};
    if constexpr (requires { loss.values(); }) {
        const auto names = LossT::names();
        for (std::size_t i = 0; i < names.size(); ++i)
            if (loss.weights()[i] != 0) v.terms.emplace_back(names[i], loss.values()[i]);
    }
    return v;
}

/// The loop's options of a job's training run: progress to the setup's log, errors naming the job's
/// keys.
template <class Setup>
train::FinetuneOptions<float> loop_options_of(const Setup& setup) {
    train::FinetuneOptions<float> options;
    options.job_config = io::to_json(setup.job);
    options.progress = setup.options.quiet ? nullptr : setup.options.log;
    options.config_path = "hyperparameters";
    options.output_dir_key = "output_dir";
    options.communicator = setup.options.communicator;
    options.stop_at = setup.options.stop_at;
    options.zero = setup.job.zero;
    return options;
}

/// The optimizer of a job's training run over `params`: under ZeRO-1 (`"zero": 1`, several ranks)
/// built over this rank's shard of them.
template <class Optimizer, class Setup, class Config>
Optimizer make_optimizer(std::vector<Parameter<float>> params, const Config& config, const Setup& setup) {
    parallel::Communicator& comm = setup.options.comm();
    if (setup.job.zero != 1 || comm.size() == 1) return Optimizer(std::move(params), config);
    using device_type = typename Optimizer::device_type;
    if constexpr (std::is_constructible_v<Optimizer, std::vector<Parameter<float>>, const Config&, device_type,
                                          optim::Shard>) {
        const optim::Shard shard = optim::Shard::of(optim::total_elements<float>(params), comm.rank(), comm.size());
        return Optimizer(std::move(params), config, device_type{}, shard);
    } else {
        throw config_error("zero", "is 1, but this optimizer cannot be built over a shard of the parameters");
    }
}

/// The finetune stage of a run (see the file comment); the template parameters are the Distiller's.
template <class Teacher, template <class, class> class Student, class Loss, template <class, class> class Optimizer,
          class Device>
class FinetuneStage {
    using types = RunTypes<Student, Loss, Optimizer, Device>;
    using student_type = typename types::student_type;
    using student_config = typename types::student_config;
    using loss_type = typename types::loss_type;
    using optimizer_type = typename types::optimizer_type;
    static constexpr bool online = types::online;
    static constexpr bool uses_topk = types::uses_topk;
    // the network a teacher samples with (seq_kd); the student's type for a teacher without one
    template <class T>
    struct network_of {
        using type = student_type;
    };
    template <class T>
    requires requires(T& t) { t.network(); }
    struct network_of<T> {
        using type = std::remove_cvref_t<decltype(std::declval<T&>().network())>;
    };
    using teacher_network = typename network_of<Teacher>::type;

public:
    /// `setup` and `teacher` are kept by reference.
    FinetuneStage(const typename types::setup_type& setup, Teacher& teacher, Device device)
        : s_(setup), teacher_(teacher), device_(device) {}

    /// Trains the distilled student on the teacher's answers and the baseline on the ground truth,
    /// with the same architecture and step budget. Needs the generate stage's output. Returns a
    /// summary of both runs.
    nlohmann::ordered_json run() {
        const RunDir& out = s_.dir;
        if (!std::filesystem::exists(out.synthetic())) {
            if (std::filesystem::exists(out.rejected()))
                throw error("finetune: the teacher's answers were all rejected (see " + out.rejected().string() +
                            "); nothing to train on (answers cut off by generation.max_new_tokens are rejected)");
            throw error("finetune: " + out.synthetic().string() + " does not exist; run the generate stage first");
        }
        Sequences train = sequences_from_synthetic(out.synthetic(), "training");
        std::optional<Sequences> val;
        if (s_.validation) val = sequences_from_synthetic(out.synthetic_validation(), "validation");
        const std::int64_t steps = train::total_steps(finetune_config(""), train.data.size());
        if constexpr (std::is_same_v<student_config, student::TransformerConfig>)
            if (std::string table = memory_plan().table(); !table.empty()) {
                table.pop_back();  // say() ends the line
                s_.say("finetune: memory plan (the distilled student's run):\n" + table);
            }
        nlohmann::ordered_json summary;
        summary["student"] = train_student(train, val ? &*val : nullptr, steps);
        if (summary["student"].contains("paused_at")) return summary;  // DistillerOptions::stop_at
        if (s_.options.comm().root()) {
            if (s_.student_from_hf()) export_student_hf();
            export_gguf();
        }
        if (s_.job.baseline.enabled) summary["baseline"] = train_baseline(steps);
        return summary;
    }

    /// Writes the trained student as the job's GGUF files (`export.gguf`): OUTPUT_DIR/gguf/
    /// student-<type>.gguf, each atomically, with the student's tokenizer (io::gguf::save). A file
    /// newer than student.safetensors is kept. Returns the files. Needs the finetune stage's output.
    std::vector<std::filesystem::path> export_gguf() {
        std::vector<std::filesystem::path> files;
        if constexpr (std::is_same_v<student_config, student::TransformerConfig>) {
            const auto weights = s_.dir.weights("student");
            if (!s_.job.exports.gguf.empty() && !std::filesystem::exists(weights))
                throw error("export: " + weights.string() + " does not exist; run the finetune stage first");
            std::optional<student_type> s;
            for (const std::string& name : s_.job.exports.gguf) {
                const quant::type type = quant::parse(name);
                const auto file = s_.dir.gguf(quant::name(type));
                files.push_back(file);
                if (std::filesystem::exists(file) &&
                    std::filesystem::last_write_time(file) >= std::filesystem::last_write_time(weights))
                    continue;
                if (!s) {
                    s.emplace(s_.student, 1, device_);
                    io::load_weights(io::safetensors_file(weights), *s);
                }
                io::gguf::save(file, *s, gguf_options(type));
                s_.say("finetune: the student for llama.cpp: " + file.string());
            }
        }
        return files;
    }

    /// Refuses (config_error naming export.gguf and the cause) a job whose `export.gguf` files
    /// io::gguf::save would refuse for the student's architecture, layout or tokenizer, so that the
    /// job fails when the Distiller is constructed, not after finetune. Reads the tokenizer's files.
    void check_gguf_export() const {
        if constexpr (std::is_same_v<student_config, student::TransformerConfig>) {
            if (s_.job.exports.gguf.empty()) return;
            try {
                io::gguf::check_exportable(s_.student, gguf_options(quant::type::F32));
            } catch (const config_error& e) {
                throw config_error("export.gguf", std::string("cannot be written for this student: ") + e.what());
            }
        }
    }

private:
    // The training sequences of one data set, with each row's prompt length and top-k record.
    struct Sequences {
        data::SequenceDataset data;
        std::vector<std::int32_t> prompt_length{};
        std::vector<const io::topk_record*> topk{};
        /// Per row, the ensemble member whose logits it reads (teacher::Ensemble::set_rows; -1: the mixture).
        std::vector<int> teacher_row{};
        std::shared_ptr<io::topk_file> topk_file{};
        std::int64_t skipped_too_long = 0;
    };

    // ---- generate → training sequences -------------------------------------------------------------

    Sequences sequences_from_synthetic(const std::filesystem::path& path, const char* what) const {
        if (!std::filesystem::exists(path))
            throw error("finetune: " + path.string() + " does not exist; run the generate stage first");
        const std::string fp = generation_fingerprint(teacher_, s_.job.generation);
        Sequences s{data::SequenceDataset(s_.chat_template.pad(), s_.student.context_length)};
        if constexpr (uses_topk) {
            auto topk_path = path;
            topk_path.replace_extension(".topk");
            s.topk_file = std::make_shared<io::topk_file>(topk_path);
            if (!s_.student_ids(s.topk_file->header().tokenizer))
                throw config_error("tokenizer",
                                   "the top-k ids of " + topk_path.string() + " belong to tokenizer " +
                                       s.topk_file->header().tokenizer + ", the student's is " +
                                       s_.chat_template.tokenizer_id() +
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
            const auto prompt = s_.chat_template.encode_prompt(r.prompt);
            // the teacher's own ids when they are the student tokenizer's, else its text re-encoded
            const bool same_tokenizer = r.tokenizer.empty() ? s_.answer_tokens_reusable : s_.student_ids(r.tokenizer);
            const bool reuse = same_tokenizer && !r.response.tokens.empty() &&
                               std::all_of(r.response.tokens.begin(), r.response.tokens.end(),
                                           [&](std::int32_t id) { return id >= 0 && id < s_.student.vocab_size; });
            const auto response = reuse ? r.response.tokens : s_.chat_template.encode_response(r.response.text);
            if (prompt.size() + response.size() > std::size_t(s_.student.context_length)) {
                ++s.skipped_too_long;
                continue;
            }
            s.data.add_prompt_response(prompt, response);
            s.prompt_length.push_back(std::int32_t(prompt.size()));
            if constexpr (detail::is_ensemble<Teacher>) {
                // "example" and "field" routes: the logits of the teacher that answered; "mix": all of them
                int row = -1;
                if (teacher_.route().mode != teacher::Route::by::mix) {
                    row = teacher_.index_of(r.response.answered_by);
                    if (row < 0)
                        throw format_error(
                            path, i + 1, "answered_by \"" + r.response.answered_by + "\" names no teacher of the job");
                }
                s.teacher_row.push_back(row);
            }
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
            s_.say(std::string("finetune: ") + std::to_string(s.skipped_too_long) + " " + what +
                   " examples longer than the student's context_length " + std::to_string(s_.student.context_length) +
                   " are left out");
        if (s.data.empty()) throw error(std::string("finetune: no usable ") + what + " example in " + path.string());
        return s;
    }

    data::SequenceDataset reference_sequences(const data::Dataset& ds, std::int64_t* skipped) const {
        data::SequenceDataset seqs(s_.chat_template.pad(), s_.student.context_length);
        for (const auto& ex : ds.examples) {
            if (!ex.reference) continue;
            const auto prompt = s_.chat_template.encode_prompt(ex.prompt);
            const auto response = s_.chat_template.encode_response(*ex.reference);
            if (prompt.size() + response.size() > std::size_t(s_.student.context_length)) {
                ++*skipped;
                continue;
            }
            seqs.add_prompt_response(prompt, response);
        }
        return seqs;
    }

    // ---- the distillation loss as the finetune loop's callback -------------------------------------

    // One micro-batch: on-policy responses sampled when the job asks, student forward, teacher
    // signals (live forward or cached top-k), the loss terms, and for training the student's backward.
    class Step {
    public:
        Step(FinetuneStage& d, const Sequences& train, const Sequences* val, loss_type& loss,
             loss::Workspace<float, Device>& ws)
            : d_(&d), train_(&train), val_(val), loss_(&loss), ws_(&ws) {}

        train::LossValues operator()(student_type& s, const data::Batch& given, train::pass p) {
            const data::Batch& batch = responses(s, given);
            const int B = batch.batch, T = batch.length;
            const std::size_t N = std::size_t(B) * std::size_t(T);
            s.forward(batch.tokens.data(), B, T);
            mask_.resize(N);
            for (std::size_t n = 0; n < N; ++n) mask_[n] = batch.targets[n] >= 0;
            out_.tokens = Tensor<const std::int32_t>(batch.targets.data(), {B, T});
            if constexpr (online) {
                if constexpr (detail::is_ensemble<Teacher>) {
                    const Sequences& seqs = p == train::pass::train ? *train_ : *val_;
                    rows_.resize(std::size_t(B));
                    for (int b = 0; b < B; ++b)
                        rows_[std::size_t(b)] = seqs.teacher_row[std::size_t(batch.indices[std::size_t(b)])];
                    d_->teacher_.set_rows(rows_);
                }
                d_->teacher_.forward(batch.tokens.data(), B, T);
                loss::collect_outputs(d_->teacher_, out_);
                if (out_.logits.size(2) > d_->s_.student.vocab_size) trim_teacher_logits(B, T);
            }
            if constexpr (uses_topk) fill_topk(p == train::pass::train ? *train_ : *val_, batch);
            auto ctx = ws_->begin(s, out_, Tensor<const std::uint8_t>(mask_.data(), {B, T}),
                                  Tensor<const std::int32_t>(batch.targets.data(), {B, T}));
            const double total = static_cast<double>((*loss_)(ctx));
            ws_->finish();
            if (p == train::pass::train) s.backward(ws_->d_hidden(), ws_->d_attention(), ws_->d_qkv());
            return loss_values(*loss_, total);
        }

    private:
        // `given` itself, or (on-policy, train/on_policy.hpp) its prompts with responses the student
        // or the teacher samples now; the samplers' caches are made at their first use.
        const data::Batch& responses(student_type& s, const data::Batch& given) {
            if constexpr (online && requires { s.make_cache(1); }) {
                const Job& job = d_->s_.job;
                const std::uint64_t seed = detail::mix64(job.hyperparameters.loop.seed, job.generation.seed);
                const train::response_source from = train::source_of(job.on_policy, seed, given);
                if (from == train::response_source::data) return given;
                prompt_length_.resize(std::size_t(given.batch));
                for (int b = 0; b < given.batch; ++b)
                    prompt_length_[std::size_t(b)] = train_->prompt_length[std::size_t(given.indices[std::size_t(b)])];
                const auto& tmpl = d_->s_.chat_template;
                const teacher::Sampling sampling = job.on_policy.sampling(job.generation);
                auto complete = [&](std::vector<std::int32_t>& response) {
                    return train::response_complete(response, tmpl, sampling.stop);
                };
                const int max_batch = std::max(job.hyperparameters.loop.batch_size, given.batch);
                const int limit = d_->s_.student.context_length;
                if (from == train::response_source::student) {
                    if (!student_sampler_) student_sampler_.emplace(s, max_batch);
                    student_sampler_->sample(s, given, prompt_length_, sampling, seed, limit, 0, tmpl.pad(), complete,
                                             sampled_);
                } else if constexpr (requires { d_->teacher_.network().make_cache(1); }) {
                    auto& net = d_->teacher_.network();
                    if (!teacher_sampler_) teacher_sampler_.emplace(net, max_batch);
                    // only ids the student has: the teacher's embedding may have padding rows past them
                    teacher_sampler_->sample(net, given, prompt_length_, sampling, seed, limit,
                                             d_->s_.student.vocab_size, tmpl.pad(), complete, sampled_);
                } else {
                    throw config_error("on_policy.seq_kd", "needs a teacher whose network decodes with a KV cache");
                }
                return sampled_;
            } else {
                return given;
            }
        }

        // The teacher's (B,T,Vt) logits cut to the student's (B,T,Vs) columns, Vt > Vs: the same
        // tokens, the teacher's embedding padded further (data/vocab_alignment.hpp).
        void trim_teacher_logits(int B, int T) {
            const std::int64_t Vt = out_.logits.size(2), Vs = d_->s_.student.vocab_size, rows = std::int64_t(B) * T;
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
            const int B = batch.batch, T = batch.length, k = d_->s_.job.generation.top_logprobs,
                      V = d_->s_.student.vocab_size;
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

        std::vector<int> rows_{};  // the batch rows' ensemble members (teacher::Ensemble)
        FinetuneStage* d_;
        const Sequences* train_;
        const Sequences* val_;
        loss_type* loss_;
        loss::Workspace<float, Device>* ws_;
        loss::teacher_outputs<float> out_{};
        std::vector<std::uint8_t> mask_{};
        std::vector<std::int32_t> ids_{};
        std::vector<float> lps_{};
        detail::Arena<float, Device> trimmed_{};  // the teacher's logits on the student's columns
        // on-policy sampling: the batch with sampled responses, its prompt lengths, the samplers
        data::Batch sampled_{};
        std::vector<std::int32_t> prompt_length_{};
        std::optional<train::ResponseSampler<student_type>> student_sampler_{};
        std::optional<train::ResponseSampler<teacher_network>> teacher_sampler_{};
    };

    // ---- training runs ----------------------------------------------------------------------------

    // The activations mode a training run builds its student in (make_student, memory_plan): for a
    // student::Transformer, student::training_activations — checkpointed under activation_checkpointing,
    // else training_fused where the device has the fused attention kernels and the run's loss reads no
    // attention map or q|k|v (`reads_attention`: the distilled student's loss, loss::reads_attention;
    // the baseline's cross-entropy reads none), else training; for another student type with modes,
    // checkpointed under activation_checkpointing; nullopt: the type's own default.
    std::optional<student::activations> training_mode(bool reads_attention) const {
        if constexpr (std::is_same_v<student_config, student::TransformerConfig> &&
                      checkpointable<student_type, Device>) {
            return student::training_activations<typename student_type::scalar_type, Device>(
                s_.job.activation_checkpointing, reads_attention);
        } else if constexpr (checkpointable<student_type, Device>) {
            if (s_.job.activation_checkpointing) return student::activations::checkpointed;
        }
        return std::nullopt;
    }
    // The distilled student's mode: training_mode of the job's loss.
    std::optional<student::activations> distilled_mode() const {
        return training_mode(
            loss::reads_attention(loss_type(s_.loss, dims(std::max(s_.job.hyperparameters.loop.batch_size, 1)))));
    }

    // The student a training run starts from, built in `mode` (training_mode; nullopt: the type's
    // default); with the job's `lora`, the adapted one (base frozen).
    student_type make_student(std::optional<student::activations> mode, int max_batch = 0) const {
        const int batch = max_batch ? max_batch : std::max(s_.job.hyperparameters.loop.batch_size, 1);
        student_config cfg = s_.student;
        if constexpr (std::is_same_v<student_config, student::TransformerConfig>) cfg.lora = s_.job.lora;
        student_type s = [&] {
            if constexpr (checkpointable<student_type, Device>)
                if (mode) return student_type(cfg, batch, device_, *mode);
            return student_type(cfg, batch, device_);
        }();
        if (s_.job.student_weights.empty())
            s.init(s_.job.hyperparameters.loop.seed);
        else if (s_.student_from_hf())
            io::hf::load(io::hf::Directory(s_.job.student_weights), s);
        else
            io::load_weights(io::safetensors_file(s_.job.student_weights), s);
        if constexpr (requires { s.init_lora(std::uint64_t(0)); })
            if (!s_.job.student_weights.empty()) s.init_lora(s_.job.hyperparameters.loop.seed);
        return s;
    }

    // A LoRA run's weights file: the checkpoint's adapters merged into the base, as a student
    // without adapters loads them (`adapter`: the student's PEFT-format adapter too, student_adapter/).
    std::function<void(const std::filesystem::path&, const std::filesystem::path&)> lora_publish(bool adapter) const {
        if (!s_.job.lora.enabled()) return {};
        return [this, adapter](const std::filesystem::path& checkpoint, const std::filesystem::path& file) {
            if constexpr (std::is_same_v<student_config, student::TransformerConfig>) {
                student_type s = make_student(training_mode(false), 1);
                io::load_weights(io::safetensors_file(checkpoint / "student.safetensors"), s);
                auto fp32_stored = s_.student;  // the merged weights in fp32 (a bf16 base widened exactly)
                fp32_stored.bf16_weights = false;
                student_type plain(fp32_stored, 1, device_, student::activations::inference);
                const std::vector<float> merged = s.merged_parameters();
                device_.copy(plain.parameter_data(), merged.data(), sizeof(float) * merged.size());
                io::save_weights(file, plain);
                if (adapter) {
                    io::peft::save_adapter(s_.dir.student_adapter(), s, lora_family(), s_.job.student_weights);
                    s_.say("finetune: the student's LoRA adapter in PEFT's format: " +
                           s_.dir.student_adapter().string());
                }
            }
        };
    }

public:
    /// The distilled student's training run, part by part, computed from the job without allocating
    /// (eval/memory_plan.hpp): the student's weights (frozen base and adapters with LoRA), gradients
    /// (trainable parameters only), the optimizer's state, the student's activations in the job's
    /// mode, the KV caches of on-policy sampling, the in-process teacher (loaded already: weights and
    /// its activations at its max_batch), the loss's buffers. A student::Transformer run only.
    eval::MemoryPlan memory_plan() const requires std::is_same_v<student_config, student::TransformerConfig> {
        using student::activations;
        const int B = std::max(s_.job.hyperparameters.loop.batch_size, 1);
        student_config cfg = s_.student;
        cfg.lora = s_.job.lora;
        const activations mode = distilled_mode().value_or(activations::training);
        const bool bf16_storage = student::stores_bf16_weights<float>(cfg, device_);
        const student::TransformerMemory m = student::transformer_memory<float, Device>(cfg, B, mode, bf16_storage);
        auto count = [](std::int64_t n) {
            std::string s = std::to_string(n);
            for (int i = int(s.size()) - 3; i > 0; i -= 3) s.insert(std::size_t(i), ",");
            return s;
        };
        // trainable elements as the optimizer receives them (`frozen_parameters` removed)
        std::int64_t trainable = 0;
        std::vector<std::int64_t> kept;
        for (const auto& [name, n] : m.trainable) {
            bool frozen = false;
            for (const auto& f : s_.job.frozen_parameters)
                frozen = frozen || (f.ends_with('.') ? name.starts_with(f) : name == f);
            if (!frozen) {
                trainable += n;
                kept.push_back(n);
            }
        }
        eval::MemoryPlan plan;
        // in the order the run allocates: the teacher (loaded already), the student, its weights file
        // read (transient), then the optimizer, the samplers' caches and the loss's buffers
        std::int64_t teacher_bytes = 0;
        std::string teacher_note = "not in process";
        auto add_network = [&](const auto& net) {
            if constexpr (requires { net.mode(); }) {
                using net_device = typename std::decay_t<decltype(net)>::device_type;
                const bool bf16 = student::stores_bf16_weights<float>(net.config(), net.device());
                teacher_bytes += std::int64_t(
                    student::transformer_memory<float, net_device>(net.config(), net.max_batch(), net.mode(), bf16)
                        .total());
                teacher_note = "in process, batch " + std::to_string(net.max_batch()) +
                               (net.mode() == activations::inference ? ", inference" : ", keeps activations") +
                               (bf16 ? ", bf16 weights" : "");
            }
        };
        if constexpr (detail::is_ensemble<Teacher>) {
            if constexpr (requires { teacher_.member(0).network(); })
                for (std::size_t i = 0; i < teacher_.size(); ++i) add_network(teacher_.member(i).network());
        } else if constexpr (requires { teacher_.network(); }) {
            add_network(teacher_.network());
        }
        plan.add("teacher", teacher_bytes, teacher_note, teacher_bytes > 0);
        const bool lora = cfg.lora.enabled();
        plan.add(lora ? "student weights (frozen)" : "student weights", std::int64_t(m.base_weights),
                 count(cfg.parameter_count()) + (!bf16_storage         ? " fp32"
                                                 : m.base_weights_fp32 ? " fp32 masters + bf16 copies of the matrices"
                                                                       : " bf16 matrices, fp32 norms and biases"));
        if (lora)
            plan.add("student LoRA adapters", std::int64_t(m.adapter_weights),
                     "rank " + std::to_string(cfg.lora.rank) + " on " + std::to_string(cfg.lora.targets.size()) +
                         " target(s)");
        plan.add("student gradients", std::int64_t(m.gradients()), lora ? "adapters only" : "every weight");
        plan.add("student activations", std::int64_t(m.activations + m.tokens),
                 std::string(student::activations_name(mode)) + ", " + student::attention_path<float, Device>(mode) +
                     ", batch " + std::to_string(B) + " x " + std::to_string(cfg.context_length) +
                     " (backward buffers " + eval::format_bytes(std::int64_t(m.backward_buffers)) + ")");
        if (!s_.job.student_weights.empty()) {
            // one tensor at a time: its mapped pages and the loader's host buffers
            const bool hf = s_.student_from_hf();
            plan.add_transient("reading student_weights",
                               io::hf::load_transient_bytes(cfg, hf                    ? 2
                                                                 : m.base_weights_fp32 ? 0
                                                                                       : 1),
                               "one tensor at a time");
        }
        const int slots = optimizer_slots();
        detail::ArenaLayout state;  // optim::detail::StateArena's layout: slot by slot, parameter by parameter
        for (int k = 0; k < slots; ++k)
            for (std::int64_t n : kept) state.add<float>("", {n});
        plan.add("optimizer state", std::int64_t(sizeof(float) * state.size()),
                 std::to_string(slots) + " x " + count(trainable) + " trainable elements");
        const auto& op = s_.job.on_policy;
        std::int64_t kv = 0;
        // keys and values, and the matrices each prefill packs for decoding (where the device packs)
        std::int64_t packed = 0;
        if (op.lambda > 0) {
            kv += std::int64_t(student::kv_cache_bytes<float>(cfg, B));
            packed += std::int64_t(student::kv_cache_packed_bytes<float>(cfg, device_));
        }
        if constexpr (requires { teacher_.network().config(), teacher_.network().device(); })
            if (op.seq_kd) {
                const auto& net = teacher_.network();
                kv += std::int64_t(student::kv_cache_bytes<float>(net.config(), B));
                packed += std::int64_t(student::kv_cache_packed_bytes<float>(net.config(), net.device()));
            }
        plan.add("KV cache (on-policy sampling)", kv + packed,
                 !op.enabled() ? "not used"
                               : "batch " + std::to_string(B) + (packed > 0 ? ", with the packed matrices" : ""));
        loss_type loss(s_.loss, dims(B));
        std::int64_t ws = std::int64_t(loss::Workspace<float, Device>::planned_bytes(loss, dims(B)));
        if constexpr (online && requires { teacher_.network(); })  // the teacher's logits cut to the student's
            if (teacher_.network().config().vocab_size > cfg.vocab_size)
                ws += std::int64_t(sizeof(float)) * B * cfg.context_length * cfg.vocab_size;
        plan.add("loss workspace", ws, "gradient sinks and scratch");
        return plan;
    }

    // The transformers family a LoRA adapter is exported for: the export layout, else the blocks'.
    std::string lora_family() const {
        if constexpr (std::is_same_v<student_config, student::TransformerConfig>) {
            const std::string layout = export_layout();
            return layout.empty() ? io::hf::family_of(s_.student) : layout;
        }
        return "";
    }

    /// Refuses (config_error naming lora.targets) a job whose LoRA targets have no PEFT module in the
    /// student's transformers family (io/peft.hpp), so that the job fails when the Distiller is made.
    void check_lora_export() const {
        if constexpr (std::is_same_v<student_config, student::TransformerConfig>) {
            if (!s_.job.lora.enabled()) return;
            s_.job.lora.validate(s_.student.swiglu(), s_.student.tie_embeddings);
            const std::string family = lora_family();
            for (const auto& t : s_.job.lora.targets) (void)io::peft::module_name(family, t, 0);
        } else {
            if (s_.job.lora.enabled())
                throw config_error("lora.rank", "adapts student::Transformer; this student is not one");
        }
    }

private:
    // How the student is exported as a GGUF file of `type`: its layout and tokenizer.
    io::gguf::ExportOptions gguf_options(quant::type type) const {
        return {.type = type,
                .model_type = export_layout(),
                .tokenizer = s_.tokenizer_source,
                .add_bos = s_.chat_template.config().add_bos};
    }

    // The layout a trained student leaves in: "phi3" (fused projections) for one that started from a
    // Phi-3 directory, else "" (the family its blocks imply).
    std::string export_layout() const {
        return s_.student_from_hf() && io::hf::Directory(s_.job.student_weights).model_type() == "phi3" ? "phi3" : "";
    }

    // The trained student in transformers' layout beside student.safetensors, with its tokenizer's
    // files: a student that started from a Hugging Face directory leaves as one.
    void export_student_hf() {
        if constexpr (std::is_same_v<student_config, student::TransformerConfig>) {
            const auto dir = s_.dir.student_hf();
            student_type s(s_.student, 1, device_);
            io::load_weights(io::safetensors_file(s_.dir.weights("student")), s);
            const io::hf::Directory init(s_.job.student_weights);
            nlohmann::json extra = nlohmann::json::object();
            for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"})
                if (init.config().contains(key)) extra[key] = init.config()[key];
            io::hf::save(dir, s, io::dtype::F32, extra, export_layout());
            if (!s_.tokenizer_source.empty())
                for (const char* name : {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"})
                    if (const auto from = s_.tokenizer_source.parent_path() / name; std::filesystem::exists(from))
                        io::copy_file_atomic(from, dir / name);
            s_.say("finetune: the student in transformers' layout: " + dir.string());
        }
    }

    nlohmann::ordered_json train_student(const Sequences& train, const Sequences* val, std::int64_t steps) {
        nlohmann::json fp_fields{{"stage", "student"},
                                 {"student", io::to_json(s_.student)},
                                 {"loss", io::to_json(s_.loss)},
                                 {"optimizer", io::to_json(s_.optimizer)},
                                 {"hyperparameters", io::to_json(s_.job.hyperparameters)},
                                 {"generation", generation_fingerprint(teacher_, s_.job.generation)},
                                 {"data", train.data.fingerprint()},
                                 {"validation", val ? val->data.fingerprint() : 0}};
        add_initialization(s_.job, fp_fields);
        if (s_.job.precision != "fp32") fp_fields["precision"] = s_.job.precision;
        if (s_.job.on_policy.enabled()) {
            nlohmann::json op = io::to_json(s_.job.on_policy);
            for (auto it = op.begin(); it != op.end();) it = it->is_null() ? op.erase(it) : std::next(it);
            fp_fields["on_policy"] = op;  // unset sampling keys left out: they are generation's
        }
        const std::string fp = detail::sha(fp_fields.dump());
        const std::string lora_note = s_.job.lora.enabled() ? " (LoRA rank " + std::to_string(s_.job.lora.rank) +
                                                                  ": its adapters train, these weights stay frozen)"
                                                            : "";
        s_.say("finetune: distilling into a student of " + std::to_string(s_.student.parameter_count()) +
               " parameters" + lora_note + " for " + std::to_string(steps) + " steps (" +
               (online ? "online" : "offline") + on_policy_note() + ")");
        return run_training(
            s_, "student", fp,
            [&](const std::string& dir) {
                student_type s = make_student(distilled_mode());
                const int B = s_.job.hyperparameters.loop.batch_size;
                loss_type loss(s_.loss, dims(B));
                loss::Workspace<float, Device> ws(loss, dims(B), device_);
                std::vector<Parameter<float>> extra;
                if constexpr (requires { loss.parameters(); }) extra = loss.parameters();
                optimizer_type opt = make_optimizer<optimizer_type>(
                    optim::gather(trainable_parameters(s.parameters(), s_.job.frozen_parameters), extra), s_.optimizer,
                    s_);
                optim::Schedule schedule(schedule_config(), steps);
                train::FinetuneOptions<float> options = loop_options();
                options.extra = extra;
                return train::finetune(s, opt, schedule, train.data, val ? &val->data : nullptr, finetune_config(dir),
                                       Step(*this, train, val, loss, ws), std::move(options));
            },
            lora_publish(true));
    }

    nlohmann::ordered_json train_baseline(std::int64_t steps) {
        std::int64_t skipped = 0;
        const data::Dataset& source = s_.baseline_data ? *s_.baseline_data : s_.train;
        data::SequenceDataset train = reference_sequences(source, &skipped);
        if (train.empty()) {
            s_.say("finetune: no training example carries a reference; the baseline is not trained");
            return {{"skipped", "no labeled training example"}};
        }
        std::optional<data::SequenceDataset> val;
        if (s_.validation) {
            val = reference_sequences(*s_.validation, &skipped);
            if (val->empty()) val.reset();
        }
        nlohmann::json fp_fields{{"stage", "baseline"},
                                 {"student", io::to_json(s_.student)},
                                 {"optimizer", io::to_json(s_.optimizer)},
                                 {"hyperparameters", io::to_json(s_.job.hyperparameters)},
                                 {"steps", steps},
                                 {"data", train.fingerprint()},
                                 {"validation", val ? val->fingerprint() : 0}};
        add_initialization(s_.job, fp_fields);
        if (s_.job.precision != "fp32") fp_fields["precision"] = s_.job.precision;
        const std::string fp = detail::sha(fp_fields.dump());
        s_.say("finetune: baseline on " + std::to_string(train.size()) + " labeled examples for " +
               std::to_string(steps) + " steps");
        return run_training(
            s_, "baseline", fp,
            [&](const std::string& dir) {
                student_type s = make_student(training_mode(false));  // cross-entropy reads no attention
                optimizer_type opt = make_optimizer<optimizer_type>(
                    trainable_parameters(s.parameters(), s_.job.frozen_parameters), s_.optimizer, s_);
                optim::Schedule schedule(schedule_config(), steps);
                train::FinetuneConfig cfg = finetune_config(dir);
                cfg.max_steps = steps;  // the distilled student's budget, whatever the data size
                train::FinetuneOptions<float> options = loop_options();
                options.stop_at = 0;  // a pause is the student's (DistillerOptions::stop_at)
                return train::finetune(s, opt, schedule, train, val ? &*val : nullptr, cfg, train::CrossEntropy{},
                                       std::move(options));
            },
            lora_publish(false));
    }

    // ", on-policy lambda = 0.5, seq_kd" when the job samples responses.
    std::string on_policy_note() const {
        const auto& op = s_.job.on_policy;
        if (!op.enabled()) return "";
        char buf[64];
        std::snprintf(buf, sizeof buf, ", on-policy lambda = %g%s", op.lambda, op.seq_kd ? ", seq_kd" : "");
        return buf;
    }

    train::FinetuneConfig finetune_config(const std::string& dir) const {
        return finetune_config_of(s_.job.hyperparameters, dir, s_.options.quiet);
    }
    optim::ScheduleConfig schedule_config() const { return schedule_config_of(s_.job.hyperparameters); }
    loss::dims dims(int max_batch) const { return loss_dims_of<online>(teacher_, s_.student, max_batch); }

    train::FinetuneOptions<float> loop_options() const { return loop_options_of(s_); }

    // State tensors per trainable element: AdamW's and Adam's two moments, SGD's momentum buffer
    // (none without momentum); two for an optimizer of the user's own.
    int optimizer_slots() const {
        if constexpr (requires { s_.optimizer.momentum; })
            return s_.optimizer.momentum != 0 ? 1 : 0;
        else
            return 2;
    }

    const typename types::setup_type& s_;
    Teacher& teacher_;
    Device device_;
};

}  // namespace distill
