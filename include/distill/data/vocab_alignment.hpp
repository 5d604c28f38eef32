#pragma once
/// @file vocab_alignment.hpp
/// Whether a teacher's and a student's vocabularies line up, decided once at startup: logit-level
/// losses (SoftKL, TopKSoftKL, ReverseKL, JSD, ...) compare the two models' distributions column by
/// column, so column `i` must be the same token in both.
///
/// | case | result |
/// |---|---|
/// | same tokens, same tokenization pipeline, same embedding rows | `identical`: logit losses allowed on all rows |
/// | same tokens and pipeline, different embedding rows (padding, e.g. 151 936 vs 152 064) | `padded`: logit losses on
/// the first min(rows) columns, with a notice | | anything else | `different`: logit losses refused; sequence-level
/// (text) distillation still works |
///
/// A pure function over plain data (`VocabInfo`), so it needs no tokenizer library;
/// `HfTokenizer::vocab_info()` (data/hf_tokenizer.hpp) fills one from a tokenizer.json.

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "distill/error.hpp"

namespace distill::data {

/// What the alignment check needs to know of one side.
struct VocabInfo {
    std::string name{};                 ///< for messages, e.g. "teacher (Qwen2.5-7B)"
    std::vector<std::string> tokens{};  ///< the token of every id, in id order ("" for an unused id)
    std::string pipeline{};             ///< fingerprint of normalizer, pre-tokenizer and model ("" = unknown)
    std::int64_t embedding_rows = 0;    ///< rows of the model's embedding / LM head (0 = tokens.size())
};

/// How two vocabularies relate.
enum class vocab_match : std::uint8_t { identical, padded, different };

/// The decision: whether logit-level losses are allowed, on how many columns, and the text to show.
struct VocabAlignment {
    vocab_match match = vocab_match::different;
    bool logit_losses_allowed = false;
    std::int64_t logit_columns = 0;  ///< the leading logit columns both models share (0 when different)
    std::string message{};           ///< the notice (padded) or the refusal (different); "" when identical
};

/// Compares `teacher` and `student` (see the file comment). Throws config_error when a model has
/// fewer embedding rows than its tokenizer has ids (that model cannot be used with that tokenizer).
inline VocabAlignment align_vocabularies(const VocabInfo& teacher, const VocabInfo& student) {
    auto rows = [](const VocabInfo& v) {
        const auto n = static_cast<std::int64_t>(v.tokens.size());
        if (v.embedding_rows != 0 && v.embedding_rows < n)
            throw config_error(v.name.empty() ? "model" : v.name, "the model has " + std::to_string(v.embedding_rows) +
                                                                      " embedding rows but its tokenizer has " +
                                                                      std::to_string(n) + " ids");
        return v.embedding_rows == 0 ? n : v.embedding_rows;
    };
    const std::int64_t t_rows = rows(teacher), s_rows = rows(student);
    VocabAlignment a;
    std::string why;
    if (teacher.tokens.size() != student.tokens.size()) {
        why = "the teacher's tokenizer has " + std::to_string(teacher.tokens.size()) + " tokens, the student's " +
              std::to_string(student.tokens.size());
    } else {
        const auto diff = std::mismatch(teacher.tokens.begin(), teacher.tokens.end(), student.tokens.begin());
        if (diff.first != teacher.tokens.end()) {
            why = "token id " + std::to_string(diff.first - teacher.tokens.begin()) + " is \"" +
                  diff.first->substr(0, 40) + "\" for the teacher but \"" + diff.second->substr(0, 40) +
                  "\" for the student";
        } else if (!teacher.pipeline.empty() && !student.pipeline.empty() && teacher.pipeline != student.pipeline) {
            why =
                "the tokens are the same but the tokenizers split text differently (normalizer, pre-tokenizer or "
                "merges differ)";
        }
    }
    if (!why.empty()) {
        a.message = "the teacher's and the student's vocabularies differ (" + why +
                    "): logit-level losses (SoftKL, TopKSoftKL, ReverseKL, JSD, ...) are refused because their "
                    "columns would compare different tokens; use sequence-level distillation instead (train the "
                    "student on the teacher's generated text with HardCE), which works across tokenizers";
        return a;
    }
    a.logit_losses_allowed = true;
    if (t_rows == s_rows) {
        a.match = vocab_match::identical;
        a.logit_columns = t_rows;
        return a;
    }
    a.match = vocab_match::padded;
    a.logit_columns = std::min(t_rows, s_rows);
    a.message = "the teacher has " + std::to_string(t_rows) + " embedding rows and the student " +
                std::to_string(s_rows) + " for the same " + std::to_string(teacher.tokens.size()) +
                " tokens (padding rows): logits are compared on the first " + std::to_string(a.logit_columns) +
                " columns";
    return a;
}

/// Throws config_error (field `loss`) with the alignment's refusal when logit-level losses are not
/// allowed.
inline void require_logit_compatible(const VocabAlignment& a) {
    if (!a.logit_losses_allowed) throw config_error("loss", a.message);
}

}  // namespace distill::data
