#pragma once
/// @file pipeline/setup.hpp
/// `RunSetup`: what the Distiller's constructor reads and checks once, before any work starts — the
/// job, the student's config and tokenizer, the loss and optimizer configs read against the chosen
/// policies, the data sets — and what every stage (generate, finetune, evaluate) then reads. The
/// stages hold it by const reference: a stage computes from it and writes files, it never changes it.

#include <array>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>

#include "distill/data/dataset.hpp"
#include "distill/data/load_chat_tokenizer.hpp"
#include "distill/data/vocab_alignment.hpp"
#include "distill/loss.hpp"
#include "distill/loss/sum.hpp"
#include "distill/parallel.hpp"
#include "distill/pipeline/job.hpp"
#include "distill/pipeline/run_dir.hpp"
#include "distill/student.hpp"

namespace distill {

namespace detail {

// Per term of a loss (one entry for a single term), whether it reads cached top-k log-probabilities.
template <class L>
inline constexpr std::array<bool, 1> reads_topk = {loss::term_needs<L, signal::topk_logprobs_t>};
template <class... Terms>
inline constexpr std::array<bool, sizeof...(Terms)> reads_topk<loss::Sum<Terms...>> = {
    loss::term_needs<Terms, signal::topk_logprobs_t>...};

/// Whether loss `L` reads any signal only an in-process teacher has.
template <class L>
inline constexpr bool needs_online =
    loss::term_needs<L, signal::logits_t> || loss::term_needs<L, signal::hidden_states_t> ||
    loss::term_needs<L, signal::attentions_t> || loss::term_needs<L, signal::qkv_t>;

}  // namespace detail

/// A data file of the job; its io and format errors become config errors of the key that names it
/// ("training_data: train.jsonl:7: ...").
inline data::Dataset read_data(const char* key, const std::string& path) {
    try {
        return data::read_examples(path);
    } catch (const io_error& e) {
        throw config_error(key, e.what());
    } catch (const format_error& e) {
        throw config_error(key, e.what());
    }
}

/// `LossT` built from `config` for `dims`, once, to check the config against both models (layer maps,
/// widths, head counts); a term's config error is named by its path in the job
/// ("loss.soft_kl.temperature").
template <class LossT>
LossT checked_loss(const typename LossT::config& config, const loss::dims& dims) {
    try {
        return LossT(config, dims);
    } catch (const config_error& e) {
        if (e.field().starts_with("loss")) throw;
        throw config_error("loss." + e.field(), std::string(e.what()).substr(e.field().size() + 2));
    }
}

/// Settings of a Distiller that are not part of the job (how it talks, not what it computes).
struct DistillerOptions {
    bool quiet = false;       ///< no progress output
    std::FILE* log = stderr;  ///< where stage messages and progress go
    /// The ranks of a data-parallel run (null: this process alone; parallel.hpp). Every rank answers
    /// its share of the prompts (generate, evaluate) and trains its share of each step; rank 0 merges,
    /// measures latency, exports and writes the run's files (each rank writes its own shards).
    parallel::Communicator* communicator = nullptr;
    /// > 0: the student's training pauses after this step, unfinished, and a later finetune continues
    /// it (train::FinetuneOptions::stop_at; `distill sweep`'s rungs). No part of any fingerprint.
    std::int64_t stop_at = 0;

    parallel::Communicator& comm() const { return communicator ? *communicator : parallel::single(); }
};

/// The prepared inputs of one run (see the file comment).
/// @tparam StudentConfig the student architecture's config. @tparam LossConfig the loss's config.
/// @tparam OptimizerConfig the optimizer's config.
template <class StudentConfig, class LossConfig, class OptimizerConfig>
struct RunSetup {
    Job job;     ///< validated
    RunDir dir;  ///< the job's output_dir
    DistillerOptions options{};
    StudentConfig student{};                   ///< the job's `student` or the `student_weights` architecture
    data::ChatTokenizer chat_template{};       ///< the student's tokenizer and chat format
    std::filesystem::path tokenizer_source{};  ///< its tokenizer.json ("" = the byte tokenizer)
    bool answer_tokens_reusable = true;        ///< the teacher's answer ids are the student tokenizer's
    /// The id of a tokenizer whose vocabulary the Distiller found equal to the student's (an endpoint's
    /// published tokenizer read from another file): its ids are the student's too ("" = none).
    std::string same_vocabulary_tokenizer{};

    /// Whether ids of tokenizer `id` are the student tokenizer's.
    bool student_ids(const std::string& id) const {
        return id == chat_template.tokenizer_id() ||
               (!same_vocabulary_tokenizer.empty() && id == same_vocabulary_tokenizer);
    }
    data::VocabAlignment alignment{};              ///< teacher and student vocabularies (logit-level losses)
    LossConfig loss{};                             ///< the job's `loss` read into the loss's config
    OptimizerConfig optimizer{};                   ///< the job's `optimizer` read into the optimizer's config
    data::Dataset train{};                         ///< training_data
    std::optional<data::Dataset> validation{};     ///< validation_data
    std::optional<data::Dataset> test{};           ///< test_data (every example with a reference)
    std::optional<data::Dataset> baseline_data{};  ///< baseline.data when it is a file

    /// Whether the student starts from a Hugging Face directory.
    bool student_from_hf() const { return std::filesystem::is_directory(job.student_weights); }

    /// Prints a stage message unless quiet.
    void say(const std::string& message) const {
        if (!options.quiet && options.log && options.comm().root()) std::fprintf(options.log, "%s\n", message.c_str());
    }
};

/// The types a run computes with, from the Distiller's policies (see `Distiller`).
template <template <class, class> class Student, class Loss, template <class, class> class Optimizer, class Device>
struct RunTypes {
    using student_type = Student<float, Device>;
    using student_config = typename student_type::config_type;
    using loss_type = loss::rebind_t<Loss, float, Device>;
    using optimizer_type = Optimizer<float, Device>;
    using setup_type = RunSetup<student_config, typename loss_type::config, typename optimizer_type::config_type>;
    /// Online distillation (a teacher forward per batch) when the loss reads in-process signals.
    static constexpr bool online = detail::needs_online<Loss>;
    /// Whether the loss reads cached top-k log-probabilities.
    static constexpr bool uses_topk = loss::term_needs<Loss, signal::topk_logprobs_t>;
    /// The `embedding` task: the student embeds sentences (pipeline/embedding.hpp).
    static constexpr bool embedding = embedding_model<student_type>;
};

}  // namespace distill
