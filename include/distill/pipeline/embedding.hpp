#pragma once
/// @file pipeline/embedding.hpp
/// The `embedding` task's stages: a sentence-embedding student (`student::Encoder`, an
/// `embedding_model`) learns an in-process sentence-embedding teacher (`teacher::EncoderModel`, an
/// `embedding_teacher`) through the same loss terms, finetune loop, checkpoints and run directory as
/// the language tasks.
///
/// - **Data**: every example's text (`{"text": ...}` lines, or any input format's last user turn),
///   tokenized by the teacher — student and teacher read the same ids — and truncated to the teacher's
///   `max_length()`, keeping the closing special token.
/// - **Generate**: nothing to generate: the teacher embeds each training batch during finetune (online).
/// - **Finetune**: per batch, the student's and the teacher's forward over the same right-padded rows,
///   the job's loss (pooled-embedding terms such as `cosine_embedding` and `embedding_mse`, and
///   `attention_kl` / `hidden_mse` over the unpadded tokens), the student's backward; the loop is
///   `train::finetune`, so checkpoints, resume, validation and early stopping are the language tasks'.
///   The trained student is `student.safetensors` and, in transformers' BertModel layout with the
///   teacher's tokenizer and sentence-transformers files, `student_hf/`. There is no baseline to train
///   (there are no labels): the baseline is the student as initialized, measured by evaluate.
/// - **Evaluate**: on the test sentences, each model's embeddings against the teacher's — mean and
///   minimum cosine, recall@k (`eval::agreement`) — and latency at batch 1, throughput, parameters and
///   checkpoint size: `report.json` and `report.md`. Skipped when report.json holds the same fingerprint.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <numeric>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/data/dataset.hpp"
#include "distill/detail/hash.hpp"
#include "distill/error.hpp"
#include "distill/eval/embedding.hpp"
#include "distill/io/durable.hpp"
#include "distill/io/hf.hpp"
#include "distill/io/reflect.hpp"
#include "distill/io/weights.hpp"
#include "distill/loss.hpp"
#include "distill/optim/schedule.hpp"
#include "distill/optimizer.hpp"
#include "distill/pipeline/finetune_stage.hpp"
#include "distill/pipeline/run_dir.hpp"
#include "distill/pipeline/setup.hpp"
#include "distill/student.hpp"
#include "distill/student/encoder.hpp"
#include "distill/teacher.hpp"
#include "distill/train/finetune.hpp"
#include "distill/version.hpp"

namespace distill {

namespace detail {

/// The sentences of a data set as rows for the finetune loop.
struct SentenceRows {
    /// One row per sentence. Only its last position is marked in the loss mask, so a batch's
    /// `loss_tokens` counts its sentences (the loop weighs validation batches by it).
    data::SequenceDataset data;
    std::vector<int> length{};  ///< tokens of row i
    std::int64_t truncated = 0;
    int longest = 1;
};

/// The text an example poses: its last user turn.
inline const std::string& sentence_of(const data::Example& ex) {
    return ex.prompt.back().content;
}

/// The first `limit` (0: all) examples of `ds`, tokenized by `teacher` and truncated to `max_length`.
template <class Teacher>
SentenceRows sentence_rows(const Teacher& teacher, const data::Dataset& ds, int max_length, std::int64_t limit = 0) {
    // padding id 0: any valid id does, the models mask padded positions by the rows' lengths
    SentenceRows rows{data::SequenceDataset(0, max_length)};
    for (const auto& ex : ds.examples) {
        if (limit > 0 && std::int64_t(rows.length.size()) >= limit) break;
        const std::string& text = sentence_of(ex);
        std::vector<std::int32_t> ids = teacher.encode(text, 0);
        if (int(ids.size()) > max_length) {
            ids = teacher.encode(text, max_length);
            ++rows.truncated;
        }
        std::vector<std::uint8_t> mask(ids.size(), 0);
        if (ids.size() > 1) mask.back() = 1;
        rows.longest = std::max(rows.longest, int(ids.size()));
        rows.length.push_back(int(ids.size()));
        rows.data.add(std::move(ids), std::move(mask));
    }
    return rows;
}

/// The config of a student initialized from the Hugging Face BERT directory `dir` (the job's
/// `student_weights`): its architecture, with as many layers as the job's `student_layers` takes.
inline student::EncoderConfig student_encoder_config(const io::hf::Directory& dir, const Job& job) {
    auto c = io::hf::encoder_config(dir);
    const auto& layers = job.student_layers;
    for (std::size_t i = 0; i < layers.size(); ++i)
        if (layers[i] >= c.n_layers)
            throw config_error("student_layers[" + std::to_string(i) + "]",
                               "is " + std::to_string(layers[i]) + ", but " + job.student_weights + " has " +
                                   std::to_string(c.n_layers) + " layers");
    if (!layers.empty()) c.n_layers = int(layers.size());
    return c;
}

/// Copies `from`'s parameters into `to`, student layer i from `from`'s layer `layers[i]` (names
/// `encoder.layer.<i>.…`, BERT's); every other parameter by name.
template <class Model>
void copy_selected_layers(const Model& from, Model& to, const std::vector<int>& layers) {
    const std::string prefix = "encoder.layer.";
    for (const auto& p : to.parameters()) {
        std::string name = p.name;
        if (name.starts_with(prefix)) {
            const auto dot = name.find('.', prefix.size());
            const auto l = std::size_t(std::stoi(name.substr(prefix.size(), dot - prefix.size())));
            name = prefix + std::to_string(layers.at(l)) + name.substr(dot);
        }
        const auto& params = from.parameters();
        const auto src = std::find_if(params.begin(), params.end(), [&](const auto& q) { return q.name == name; });
        if (src == params.end() || src->value.numel() != p.value.numel())
            throw shape_error("student_layers: the checkpoint has no parameter " + name + " of " +
                              std::to_string(p.value.numel()) + " elements");
        to.device().copy(p.value.data(), src->value.data(), sizeof(*p.value.data()) * std::size_t(p.value.numel()));
    }
}

/// Pooled embeddings (N,C) of every row of `rows` under `model`, in batches of up to `batch` rows of
/// similar length (less padding).
template <class Model>
eval::embeddings embed_rows(Model& model, const SentenceRows& rows, int batch) {
    const std::size_t n = rows.length.size(), C = std::size_t(model.config().d_model);
    std::vector<std::int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](auto a, auto b) { return rows.length[std::size_t(a)] < rows.length[std::size_t(b)]; });
    eval::embeddings out({n, C});
    data::Batch b;
    std::vector<int> lengths;
    const auto step = std::size_t(std::max(1, std::min(batch, model.max_batch())));
    for (std::size_t s = 0; s < n; s += step) {
        const auto idx = std::span(order).subspan(s, std::min(step, n - s));
        rows.data.make_batch(idx, b);
        lengths.clear();
        for (const auto i : idx) lengths.push_back(rows.length[std::size_t(i)]);
        model.forward(b.tokens.data(), b.batch, b.length, lengths.data());
        const auto pooled = model.pooled();
        for (int r = 0; r < b.batch; ++r)
            std::copy_n(pooled.data() + std::int64_t(r) * std::int64_t(C), C,
                        &out(std::size_t(idx[std::size_t(r)]), 0));
    }
    return out;
}

/// Latency of single sentences (the first `samples` rows, batch 1: p50 and p95 in ms) and the
/// throughput of embedding every row in batches of `batch` (sentences per second).
template <class Model>
nlohmann::ordered_json embedding_speed(Model& model, const SentenceRows& rows, int samples, int batch) {
    std::vector<double> ms;
    data::Batch b;
    for (std::int64_t i = 0; i < std::min<std::int64_t>(samples, std::int64_t(rows.length.size())); ++i) {
        const std::int64_t one[1] = {i};
        rows.data.make_batch(one, b);
        const int len = rows.length[std::size_t(i)];
        const auto t0 = std::chrono::steady_clock::now();
        model.forward(b.tokens.data(), 1, b.length, &len);
        ms.push_back(1000 * seconds_since(t0));
    }
    nlohmann::ordered_json j;
    if (!ms.empty()) {
        std::sort(ms.begin(), ms.end());
        j["latency_p50_ms"] = ms[ms.size() / 2];
        j["latency_p95_ms"] = ms[std::min(ms.size() - 1, ms.size() * 95 / 100)];
    }
    const auto t0 = std::chrono::steady_clock::now();
    (void)embed_rows(model, rows, batch);
    j["sentences_per_s"] = double(rows.length.size()) / std::max(seconds_since(t0), 1e-9);
    j["batch"] = batch;
    return j;
}

/// Parameters of an encoder config, those outside its embedding tables, and the bytes of its
/// checkpoint (0: none written, left out).
template <class Config>
nlohmann::ordered_json encoder_size(const Config& c, std::uintmax_t checkpoint_bytes) {
    const std::int64_t embedding = (std::int64_t(c.vocab_size) + c.context_length + c.type_vocab_size) * c.d_model;
    nlohmann::ordered_json j = {{"layers", c.n_layers},
                                {"parameters", c.parameter_count()},
                                {"non_embedding_parameters", c.parameter_count() - embedding}};
    if (checkpoint_bytes > 0) j["checkpoint_bytes"] = checkpoint_bytes;
    return j;
}

}  // namespace detail

/// The `embedding` task's stages of a run (see the file comment). @tparam Teacher an
/// `embedding_teacher`. @tparam Types the Distiller's `RunTypes` (its student an `embedding_model`).
/// @tparam Device the Distiller's device.
template <class Teacher, class Types, class Device>
class EmbeddingStages {
public:
    /// `setup` and `teacher` are kept by reference.
    EmbeddingStages(const typename Types::setup_type& setup, Teacher& teacher, Device device)
        : s_(setup), teacher_(teacher), device_(device) {}

    /// The longest input a student of `setup` reads: the teacher's max_length, at most the student's
    /// context_length.
    static int input_limit(const typename Types::setup_type& setup, const Teacher& teacher) {
        return std::min(teacher.max_length(), setup.student.context_length);
    }

    /// The shapes the loss is built for: the student's and the teacher network's, for batches of up
    /// to `max_batch` rows of up to `max_length` tokens.
    static loss::dims dims(const typename Types::setup_type& setup, const Teacher& teacher, int max_batch,
                           int max_length) {
        return {loss::model_dims_of_config(setup.student), loss::model_dims_of(teacher.network()), max_batch,
                max_length};
    }

    /// The Distiller's constructor for the embedding task: reads the job's loss, optimizer and data
    /// into `s` (its student config already read) and checks them against `teacher` — the task type,
    /// one tokenizer (the teacher's), equal vocabularies, a teacher batch that takes a training batch,
    /// the loss's layer maps and widths. Throws config_error / format_error naming the key or file.
    static void prepare(typename Types::setup_type& s, const Teacher& teacher) {
        const Job& job = s.job;
        if (job.task_type != "embedding")
            throw config_error("task_type",
                               "is \"" + job.task_type + "\", but the student embeds sentences: set \"embedding\"");
        if (!job.tokenizer.empty())
            throw config_error("tokenizer",
                               "must be empty for the embedding task: student and teacher read the "
                               "teacher's tokenizer's ids");
        s.loss = loss_config_of<loss_type>(job);
        s.optimizer = optimizer_config_of<optimizer_type>(job);
        s.train = read_data("training_data", job.training_data);
        if (s.train.examples.empty())
            throw format_error(job.training_data, 0, "has no examples (training_data must not be empty)");
        if (!job.validation_data.empty()) s.validation = read_data("validation_data", job.validation_data);
        if (!job.test_data.empty()) s.test = read_data("test_data", job.test_data);
        const int V = teacher.network().config().vocab_size;
        if (s.student.vocab_size != V)
            throw config_error("student.vocab_size", "is " + std::to_string(s.student.vocab_size) +
                                                         ", but the teacher's is " + std::to_string(V) +
                                                         " (both read the teacher's tokenizer's ids)");
        const int B = job.hyperparameters.loop.batch_size;
        if (teacher.max_batch() < B)
            throw config_error("teacher.max_batch", "is " + std::to_string(teacher.max_batch()) +
                                                        ", smaller than hyperparameters.batch_size " +
                                                        std::to_string(B) +
                                                        " (the teacher embeds every training batch)");
        const auto probe = checked_loss<loss_type>(s.loss, dims(s, teacher, B, input_limit(s, teacher)));
        check_activation_checkpointing<student_type, Device>(job, probe);
    }

    /// Trains the student on the teacher's embeddings of the training sentences. Returns a summary.
    nlohmann::ordered_json finetune() {
        const int limit = input_limit(s_, teacher_);
        const auto train = detail::sentence_rows(teacher_, s_.train, limit);
        std::optional<detail::SentenceRows> val;
        if (s_.validation) val = detail::sentence_rows(teacher_, *s_.validation, limit);
        const std::int64_t truncated = train.truncated + (val ? val->truncated : 0);
        if (truncated > 0)
            s_.say("finetune: " + std::to_string(truncated) + " sentences longer than " + std::to_string(limit) +
                   " tokens are truncated (teacher.max_length)");
        const int max_length = std::max(train.longest, val ? val->longest : 1);
        const auto& h = s_.job.hyperparameters;
        const std::int64_t steps = train::total_steps(finetune_config_of(h, "", true), train.data.size());
        nlohmann::json fp_fields{{"stage", "student"},
                                 {"task_type", "embedding"},
                                 {"teacher", teacher_.fingerprint()},
                                 {"student", io::to_json(s_.student)},
                                 {"loss", io::to_json(s_.loss)},
                                 {"optimizer", io::to_json(s_.optimizer)},
                                 {"hyperparameters", io::to_json(h)},
                                 {"data", train.data.fingerprint()},
                                 {"validation", val ? val->data.fingerprint() : 0}};
        add_initialization(s_.job, fp_fields);
        const std::string fp = detail::sha(fp_fields.dump());
        s_.say("finetune: distilling " + teacher_.name() + " into a " + std::to_string(s_.student.n_layers) +
               "-layer student of " + std::to_string(s_.student.parameter_count()) + " parameters for " +
               std::to_string(steps) + " steps (" + std::to_string(train.data.size()) + " sentences)");
        nlohmann::ordered_json summary;
        summary["student"] = run_training(s_, "student", fp, [&](const std::string& dir) {
            const int B = h.loop.batch_size;
            student_type s = make_student(B, max_length);
            loss_type loss(s_.loss, dims(s_, teacher_, B, max_length));
            loss::Workspace<float, Device> ws(loss, dims(s_, teacher_, B, max_length), device_);
            std::vector<Parameter<float>> extra;
            if constexpr (requires { loss.parameters(); }) extra = loss.parameters();
            optimizer_type opt = make_optimizer<optimizer_type>(
                optim::gather(trainable_parameters(s.parameters(), s_.job.frozen_parameters), extra), s_.optimizer, s_);
            optim::Schedule schedule(schedule_config_of(h), steps);
            train::FinetuneOptions<float> options = loop_options_of(s_);
            options.stop_at = 0;  // the embedding task does not pause (distill sweep refuses it)
            options.extra = extra;
            return train::finetune(s, opt, schedule, train.data, val ? &val->data : nullptr,
                                   finetune_config_of(h, dir, s_.options.quiet),
                                   Step(teacher_, train, val ? &*val : nullptr, loss, ws), std::move(options));
        });
        if (s_.options.comm().root()) export_student_hf(max_length);
        if (s_.job.baseline.enabled)
            summary["baseline"] = {{"skipped",
                                    "the embedding task has no labels to train a baseline on; evaluate "
                                    "measures the student as initialized instead"}};
        return summary;
    }

    /// Measures the teacher, the student as initialized (the baseline) and the distilled student on
    /// the test sentences and writes report.json and report.md. Returns report.json's object.
    nlohmann::ordered_json evaluate() {
        const RunDir& out = s_.dir;
        if (!s_.test) throw config_error("test_data", "is not set; the evaluate stage needs test sentences");
        const auto student_file = out.weights("student");
        if (!std::filesystem::exists(student_file))
            throw error("evaluate: " + student_file.string() + " does not exist; run the finetune stage first");
        const auto& e = s_.job.evaluation;
        const auto test = detail::sentence_rows(teacher_, *s_.test, input_limit(s_, teacher_), e.max_examples);
        if (test.length.size() < 2) throw config_error("test_data", "needs at least 2 sentences to compare neighbours");
        const nlohmann::json fp_fields{{"teacher", teacher_.fingerprint()},
                                       {"student", "sha256:" + detail::sha256_file(student_file).substr(0, 32)},
                                       {"baseline", s_.job.baseline.enabled},
                                       {"initialization", initialization()},
                                       {"test", test.data.fingerprint()},
                                       {"evaluation", io::to_json(e)},
                                       {"version", version()}};
        const std::string fp = detail::sha(fp_fields.dump());
        if (detail::stored_fingerprint(out.report_json()) == fp) {
            s_.say("evaluate: report.json is complete for these models and this test set; skipped");
            return detail::read_json_file(out.report_json());
        }
        const std::size_t k = std::min<std::size_t>(std::size_t(e.recall_at), test.length.size() - 1);
        const int B = e.batch_size;
        s_.say("evaluate: " + std::to_string(test.length.size()) + " test sentences");

        nlohmann::ordered_json report;
        report["fingerprint"] = fp;
        report["task_type"] = "embedding";
        report["primary_metric"] = "mean_cosine";
        report["teacher"] = teacher_.name();
        report["test_examples"] = test.length.size();
        report["recall_at"] = k;
        nlohmann::ordered_json models;
        const eval::embeddings reference = detail::embed_rows(teacher_.network(), test, B);
        auto measure = [&](auto& model, std::uintmax_t bytes, bool speed) {
            nlohmann::ordered_json m;
            const auto a = eval::agreement(detail::embed_rows(model, test, B), reference, k);
            m["metrics"] = {{"mean_cosine", a.mean_cosine},
                            {"min_cosine", a.min_cosine},
                            {"recall_at_" + std::to_string(k), a.recall_at_k}};
            if (speed) m["speed"] = detail::embedding_speed(model, test, e.latency_samples, B);
            m["size"] = detail::encoder_size(model.config(), bytes);
            return m;
        };
        if (e.evaluate_teacher) {
            std::error_code ec;
            const auto bytes = std::filesystem::file_size(teacher_.directory() / "model.safetensors", ec);
            models["teacher"] = measure(teacher_.network(), ec ? 0 : bytes, true);
        }
        if (s_.job.baseline.enabled) {
            student_type base = make_student(B, test.longest);
            models["baseline"] = measure(base, 0, false);
            models["baseline"]["description"] = "the student as initialized, before distillation";
        }
        {
            student_type s(s_.student, B, test.longest, device_);
            io::load_weights(io::safetensors_file(student_file), s);
            models["student"] = measure(s, std::filesystem::file_size(student_file), true);
        }
        report["models"] = models;
        report["training"] = out.training_summary();
        report["summary"] = summary(report);
        io::write_file_atomic(out.report_md(), markdown(report));
        io::write_file_atomic(out.report_json(), report.dump(2) + "\n");
        s_.say("evaluate: " + report["summary"].get<std::string>());
        return report;
    }

private:
    using student_type = typename Types::student_type;
    using loss_type = typename Types::loss_type;
    using optimizer_type = typename Types::optimizer_type;

    // One micro-batch: the student's and the teacher's forward over the same rows, the loss terms and,
    // for training, the student's backward.
    class Step {
    public:
        Step(Teacher& teacher, const detail::SentenceRows& train, const detail::SentenceRows* val, loss_type& loss,
             loss::Workspace<float, Device>& ws)
            : teacher_(&teacher), train_(&train), val_(val), loss_(&loss), ws_(&ws) {}

        train::LossValues operator()(student_type& s, const data::Batch& batch, train::pass p) {
            const detail::SentenceRows& rows = p == train::pass::train ? *train_ : *val_;
            const int B = batch.batch, T = batch.length;
            lengths_.resize(std::size_t(B));
            mask_.assign(std::size_t(B) * std::size_t(T), 0);
            for (int b = 0; b < B; ++b) {
                lengths_[std::size_t(b)] = rows.length[std::size_t(batch.indices[std::size_t(b)])];
                std::fill_n(mask_.begin() + std::ptrdiff_t(b) * T, lengths_[std::size_t(b)], std::uint8_t{1});
            }
            s.forward(batch.tokens.data(), B, T, lengths_.data());
            teacher_->forward(batch.tokens.data(), B, T, lengths_.data());
            loss::collect_outputs(teacher_->network(), out_);
            auto ctx = ws_->begin(s, out_, Tensor<const std::uint8_t>(mask_.data(), {B, T}));
            const double total = static_cast<double>((*loss_)(ctx));
            ws_->finish();
            if (p == train::pass::train) s.backward(ws_->d_hidden(), ws_->d_attention());
            return loss_values(*loss_, total);
        }

    private:
        Teacher* teacher_;
        const detail::SentenceRows* train_;
        const detail::SentenceRows* val_;
        loss_type* loss_;
        loss::Workspace<float, Device>* ws_;
        loss::teacher_outputs<float> out_{};
        std::vector<int> lengths_{};
        std::vector<std::uint8_t> mask_{};
    };

    // The student as initialized: random (hyperparameters.seed), a safetensors checkpoint, or a
    // Hugging Face directory, whole or the layers `student_layers` names.
    student_type make_student(int max_batch, int max_length) const {
        student_type s(
            s_.student, max_batch, max_length, device_,
            s_.job.activation_checkpointing ? student::activations::checkpointed : student::activations::training);
        const Job& job = s_.job;
        if (job.student_weights.empty()) {
            s.init(job.hyperparameters.loop.seed);
        } else if (!s_.student_from_hf()) {
            io::load_weights(io::safetensors_file(job.student_weights), s);
        } else if (job.student_layers.empty()) {
            io::hf::load(io::hf::Directory(job.student_weights), s);
        } else {
            const io::hf::Directory dir(job.student_weights);
            auto whole_config = io::hf::encoder_config(dir);
            whole_config.pooling = s_.student.pooling;
            student_type whole(whole_config, 1, 1, device_);
            io::hf::load(dir, whole);
            detail::copy_selected_layers(whole, s, job.student_layers);
        }
        return s;
    }

    std::string initialization() const {
        nlohmann::json fp = nlohmann::json::object();
        add_initialization(s_.job, fp);
        fp["seed"] = s_.job.hyperparameters.loop.seed;
        return fp.dump();
    }

    // The trained student in BertModel's layout with the teacher's tokenizer and sentence-transformers
    // files beside it, so transformers and SentenceTransformer load it as they load the teacher.
    void export_student_hf(int max_length) const {
        const auto dir = s_.dir.student_hf();
        student_type s(s_.student, 1, max_length, device_);
        io::load_weights(io::safetensors_file(s_.dir.weights("student")), s);
        io::hf::save(dir, s);
        for (const char* name : {"tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                                 "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"})
            if (const auto from = teacher_.directory() / name; std::filesystem::exists(from))
                io::copy_file_atomic(from, dir / name);
        s_.say("finetune: the student in transformers' layout: " + dir.string());
    }

    static std::string summary(const nlohmann::ordered_json& r) {
        const auto& m = r["models"];
        const std::string recall = "recall_at_" + std::to_string(r["recall_at"].get<std::size_t>());
        std::ostringstream s;
        s.precision(3);
        s << "student: mean cosine " << m["student"]["metrics"]["mean_cosine"].get<double>() << " to the teacher, "
          << recall << " " << m["student"]["metrics"][recall].get<double>();
        if (m.contains("baseline"))
            s << " (as initialized: " << m["baseline"]["metrics"]["mean_cosine"].get<double>() << ", "
              << m["baseline"]["metrics"][recall].get<double>() << ")";
        if (m.contains("teacher") && m["teacher"]["speed"].contains("latency_p50_ms") &&
            m["student"]["speed"].contains("latency_p50_ms"))
            s << "; "
              << m["teacher"]["speed"]["latency_p50_ms"].get<double>() /
                     m["student"]["speed"]["latency_p50_ms"].get<double>()
              << "x the teacher's speed at batch 1";
        return s.str();
    }

    static std::string markdown(const nlohmann::ordered_json& r) {
        const std::size_t k = r["recall_at"];
        const std::string recall = "recall_at_" + std::to_string(k);
        std::ostringstream md;
        md.precision(4);
        md << "# Embedding distillation report\n\nTeacher: " << r["teacher"].get<std::string>() << ". "
           << r["test_examples"].get<std::size_t>() << " test sentences. recall@" << k
           << ": for each test sentence, the fraction of the teacher's " << k
           << " nearest test sentences (cosine) that are among the model's " << k << " nearest.\n\n"
           << "| model | mean cosine to teacher | min cosine | recall@" << k
           << " | latency p50 / p95 (batch 1) | sentences/s | layers | parameters | checkpoint bytes |\n"
           << "|---|---|---|---|---|---|---|---|---|\n";
        for (const auto& item : r["models"].items()) {
            const nlohmann::ordered_json& m = item.value();
            const nlohmann::ordered_json& x = m["metrics"];
            md << "| " << item.key() << " | " << x["mean_cosine"].get<double>() << " | "
               << x["min_cosine"].get<double>() << " | " << x[recall].get<double>() << " | ";
            if (m.contains("speed") && m["speed"].contains("latency_p50_ms"))
                md << m["speed"]["latency_p50_ms"].get<double>() << " / " << m["speed"]["latency_p95_ms"].get<double>()
                   << " ms | " << m["speed"]["sentences_per_s"].get<double>();
            else
                md << "– | –";
            md << " | " << m["size"]["layers"] << " | " << m["size"]["parameters"] << " | ";
            if (m["size"].contains("checkpoint_bytes"))
                md << m["size"]["checkpoint_bytes"];
            else
                md << "–";
            md << " |\n";
        }
        md << "\n" << r["summary"].get<std::string>() << "\n";
        return md.str();
    }

    const typename Types::setup_type& s_;
    Teacher& teacher_;
    Device device_;
};

/// The embedding task's finetune stage, run as the Distiller runs its stages (`run()`).
template <class Teacher, class Types, class Device>
struct EmbeddingFinetune : EmbeddingStages<Teacher, Types, Device> {
    using EmbeddingStages<Teacher, Types, Device>::EmbeddingStages;
    nlohmann::ordered_json run() { return this->finetune(); }
};

/// The embedding task's evaluate stage, run as the Distiller runs its stages (`run()`).
template <class Teacher, class Types, class Device>
struct EmbeddingEvaluate : EmbeddingStages<Teacher, Types, Device> {
    using EmbeddingStages<Teacher, Types, Device>::EmbeddingStages;
    nlohmann::ordered_json run() { return this->evaluate(); }
};

}  // namespace distill
