#pragma once
/// @file task_metrics.hpp
/// The metrics of each task type, computed from a model's answers, the references and the
/// teacher's answers. Every metric is "higher is better" except perplexity.
///
/// | task_type | metrics (the first is the primary one) |
/// |---|---|
/// | nli | accuracy (normalized exact match of the label) |
/// | qa | exact_match (SQuAD normalization) |
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
    } else if (task_type == "qa" || task_type == "math") {
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

}  // namespace distill::eval
