#pragma once
/// @file task_metrics.hpp
/// The metrics of each task type, computed from a model's answers, the references and the
/// teacher's answers. Every metric is "higher is better" except perplexity.
///
/// | task_type | metrics (the first is the primary one) |
/// |---|---|
/// | nli | accuracy (normalized exact match of the label), macro_f1 |
/// | qa | exact_match, f1 (SQuAD's normalization and token F1) |
/// | math | exact_match (the final number of the answer equals the reference's, numerically) |
/// | summarization | rouge_l (mean F1, as rouge-score), bleu (corpus, as sacreBLEU) |
/// | conversation | bleu, rouge_l |
///
/// Every type also has `teacher_agreement`: the same comparison as the primary metric, made against
/// the teacher's answers instead of the references (for text tasks, mean ROUGE-L F1 against them).
/// Perplexity is added by the caller for models it can score.

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/error.hpp"
#include "distill/eval/metrics.hpp"

namespace distill::eval {

/// The share of pairs for which `match(prediction, reference)` holds (0 for none).
template <class Match>
double match_rate(const std::vector<std::string>& predictions, const std::vector<std::string>& references,
                  Match match) {
    if (predictions.size() != references.size())
        throw error("metrics: " + std::to_string(predictions.size()) + " predictions but " +
                    std::to_string(references.size()) + " references");
    std::size_t hits = 0;
    for (std::size_t i = 0; i < predictions.size(); ++i) hits += match(predictions[i], references[i]) ? 1 : 0;
    return predictions.empty() ? 0.0 : double(hits) / double(predictions.size());
}

/// The primary-metric comparison of `task_type` between two answer lists (see the file comment).
inline double agreement(std::string_view task_type, const std::vector<std::string>& predictions,
                        const std::vector<std::string>& others) {
    if (task_type == "math")
        return match_rate(predictions, others, [](const auto& p, const auto& r) { return numeric_match(p, r); });
    if (task_type == "qa" || task_type == "nli")
        return match_rate(predictions, others, [](const auto& p, const auto& r) { return exact_match(p, r); });
    return mean_rouge_l_f1(predictions, others);
}

/// The metrics of `task_type` (see the file comment), in report order; `teacher` may be empty
/// (no teacher answers: no teacher_agreement).
inline nlohmann::ordered_json task_metrics(std::string_view task_type, const std::vector<std::string>& predictions,
                                           const std::vector<std::string>& references,
                                           const std::vector<std::string>& teacher = {}) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    if (task_type == "nli") {
        m["accuracy"] = agreement(task_type, predictions, references);
        m["macro_f1"] = macro_f1(predictions, references);
    } else if (task_type == "qa") {
        m["exact_match"] = agreement(task_type, predictions, references);
        m["f1"] = mean_token_f1(predictions, references);
    } else if (task_type == "math") {
        m["exact_match"] = agreement(task_type, predictions, references);
    } else if (task_type == "summarization") {
        m["rouge_l"] = mean_rouge_l_f1(predictions, references);
        m["bleu"] = corpus_bleu(predictions, references).score;
    } else if (task_type == "conversation") {
        m["bleu"] = corpus_bleu(predictions, references).score;
        m["rouge_l"] = mean_rouge_l_f1(predictions, references);
    } else {
        throw config_error("task_type", "unknown task type \"" + std::string(task_type) + "\"");
    }
    if (!teacher.empty()) m["teacher_agreement"] = agreement(task_type, predictions, teacher);
    return m;
}

/// What a metric `task_metrics` (or the evaluation: perplexity) reports measures, in one sentence
/// for the report; empty for a name it does not know.
inline std::string metric_definition(std::string_view task_type, std::string_view metric) {
    if (metric == "accuracy") return "share of answers equal to the reference label after SQuAD normalization";
    if (metric == "macro_f1")
        return "F1 of each label the references use, averaged with equal weight (scikit-learn's macro F1)";
    if (metric == "exact_match")
        return task_type == "math" ? "share of answers whose final number equals the reference's"
                                   : "share of answers equal to the reference after SQuAD normalization (lowercase, "
                                     "no punctuation or articles)";
    if (metric == "f1") return "SQuAD token F1: overlap of normalized answer tokens with the reference's, averaged";
    if (metric == "bleu") return "corpus BLEU against the references as sacreBLEU computes it (13a tokens, 0-100)";
    if (metric == "rouge_l")
        return "mean ROUGE-L F1 (longest common subsequence) against the references, as rouge-score";
    if (metric == "teacher_agreement")
        return task_type == "math" || task_type == "qa" || task_type == "nli"
                   ? "the primary metric's comparison made against the teacher's answers instead of the references"
                   : "mean ROUGE-L F1 against the teacher's answers";
    if (metric == "perplexity") return "exp of the mean negative log-likelihood of the reference responses' tokens";
    return {};
}

}  // namespace distill::eval
