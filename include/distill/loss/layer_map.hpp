#pragma once
/// @file layer_map.hpp
/// Which student layer is matched with which teacher layer, for the transfer terms (HiddenMSE,
/// AttentionKL, AttentionRelation): an explicit list of pairs, "uniform" spacing, or "last".
/// Every index is validated against the models' shapes when the term is built, with an error
/// naming the config field, the index and the valid range.

#include <string>
#include <utility>
#include <vector>

#include <boost/hana/adapt_struct.hpp>

#include "distill/error.hpp"

namespace distill::loss {

/// One matched pair: a student index and a teacher index (hidden states or attention layers,
/// depending on the term).
struct layer_pair {
    int student = 0;
    int teacher = 0;
    friend bool operator==(const layer_pair&, const layer_pair&) = default;
};

/// What a layer map indexes: hidden states (0..L, 0 the embeddings, L after the final norm) or
/// attention layers (0..L-1).
enum class layer_kind { hidden_state, attention };

/// Resolves a layer map for a student with `student_layers` and a teacher with `teacher_layers`
/// transformer blocks.
/// - "uniform": every student block is matched with the teacher block at the same relative depth,
///   hidden state i (1..Ls) ↔ round(i·Lt/Ls), attention layer l (0..Ls-1) ↔ round((l+1)·Lt/Ls) - 1
///   (TinyBERT's g(m) = m·N/M, rounded when the depths do not divide): the last matches the last,
///   the embeddings are not matched;
/// - "last": the one pair (last, last);
/// - "explicit": exactly `pairs`, which must be non-empty.
/// `path` is the config path of the term (e.g. "hidden_mse") for the error messages.
inline std::vector<layer_pair> resolve_layer_map(const std::string& path, const std::string& map,
                                                 const std::vector<layer_pair>& pairs, layer_kind kind,
                                                 int student_layers, int teacher_layers) {
    const bool hidden = kind == layer_kind::hidden_state;
    const char* what = hidden ? "hidden state" : "attention layer";
    for (const auto& [who, n] : {std::pair<const char*, int>{"student", student_layers}, {"teacher", teacher_layers}})
        if (n < 1)
            throw config_error(path, std::string("the ") + who + "'s layer count is unknown or zero (n_layers = " +
                                         std::to_string(n) + "); layer maps need it");
    const int s_max = hidden ? student_layers : student_layers - 1;
    const int t_max = hidden ? teacher_layers : teacher_layers - 1;
    std::vector<layer_pair> out;
    if (map == "uniform") {
        if (!pairs.empty())
            throw config_error(path + ".layers",
                               "pairs are given but layer_map is \"uniform\"; set layer_map to \"explicit\"");
        for (int i = 1; i <= student_layers; ++i) {
            const int j = (i * teacher_layers + student_layers / 2) / student_layers;
            out.push_back(hidden ? layer_pair{i, j} : layer_pair{i - 1, j - 1});
        }
    } else if (map == "last") {
        if (!pairs.empty())
            throw config_error(path + ".layers",
                               "pairs are given but layer_map is \"last\"; set layer_map to \"explicit\"");
        out.push_back({s_max, t_max});
    } else if (map == "explicit") {
        if (pairs.empty()) throw config_error(path + ".layers", "layer_map is \"explicit\" but no pairs are given");
        for (std::size_t k = 0; k < pairs.size(); ++k) {
            const std::string at = path + ".layers[" + std::to_string(k) + "]";
            if (pairs[k].student < 0 || pairs[k].student > s_max)
                throw config_error(at + ".student", std::string(what) + " " + std::to_string(pairs[k].student) +
                                                        " is out of range; the student has " + what + "s 0.." +
                                                        std::to_string(s_max));
            if (pairs[k].teacher < 0 || pairs[k].teacher > t_max)
                throw config_error(at + ".teacher", std::string(what) + " " + std::to_string(pairs[k].teacher) +
                                                        " is out of range; the teacher has " + what + "s 0.." +
                                                        std::to_string(t_max));
        }
        out = pairs;
    } else {
        throw config_error(path + ".layer_map", "expected \"uniform\", \"last\" or \"explicit\", got \"" + map + "\"");
    }
    return out;
}

/// Pair k of `term`, p, once checked against the outputs: throws shape_error unless the student has
/// a p.student-th of its `student_count` tensors (`student_what`, e.g. "student hidden state") and
/// the teacher a p.teacher-th of its `teacher_count` (`teacher_what`).
inline layer_pair checked_pair(const char* term, std::size_t k, layer_pair p, const char* student_what,
                               const char* teacher_what, std::size_t student_count, std::size_t teacher_count) {
    if (p.student >= int(student_count) || p.teacher >= int(teacher_count))
        throw shape_error(std::string(term) + ": pair " + std::to_string(k) + " needs " + student_what + " " +
                          std::to_string(p.student) + " and " + teacher_what + " " + std::to_string(p.teacher) +
                          "; the outputs hold " + std::to_string(student_count) + " and " +
                          std::to_string(teacher_count));
    return p;
}

}  // namespace distill::loss

BOOST_HANA_ADAPT_STRUCT(distill::loss::layer_pair, student, teacher);
