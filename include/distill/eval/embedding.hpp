#pragma once
/// @file embedding.hpp
/// How close a student's sentence embeddings stay to its teacher's, on the same sentences:
/// - mean and min cosine similarity of each sentence's two embeddings;
/// - recall@k: for each sentence, the share of the teacher's k nearest neighbours (cosine, among the
///   same sentences, itself excluded) that are also among the student's k nearest, averaged over
///   sentences — whether the student keeps the teacher's geometry, which is what retrieval uses.
/// Embeddings are (N, C) xtensor arrays, one row per sentence; they need not be normalized.

#include <algorithm>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <nlohmann/json.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include "distill/error.hpp"

namespace distill::eval {

/// (N, C) sentence embeddings, one row each.
using embeddings = xt::xtensor<float, 2>;

/// `e` in double with every row scaled to unit L2 norm (a zero row stays zero).
inline xt::xtensor<double, 2> normalized_rows(const embeddings& e) {
    xt::xtensor<double, 2> out = xt::cast<double>(e);
    const xt::xtensor<double, 1> norms = xt::sqrt(xt::sum(out * out, {1}));
    out /= xt::view(xt::maximum(norms, 1e-12), xt::all(), xt::newaxis());
    return out;
}

/// For each row of `e`, the indices of its `k` nearest other rows by cosine similarity, nearest first
/// (ties: lower index first); min(k, N−1) of them.
inline std::vector<std::vector<std::size_t>> nearest_neighbours(const embeddings& e, std::size_t k) {
    const xt::xtensor<double, 2> u = normalized_rows(e);
    const auto n = static_cast<Eigen::Index>(u.shape()[0]), c = static_cast<Eigen::Index>(u.shape()[1]);
    using RowMajor = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    const Eigen::Map<const RowMajor> m(u.data(), n, c);
    const RowMajor sim = m * m.transpose();  // (N, N) cosine similarities
    std::vector<std::vector<std::size_t>> out(static_cast<std::size_t>(n));
    std::vector<std::size_t> order;
    for (Eigen::Index i = 0; i < n; ++i) {
        order.clear();
        for (Eigen::Index j = 0; j < n; ++j)
            if (j != i) order.push_back(static_cast<std::size_t>(j));
        const std::size_t kk = std::min(k, order.size());
        std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(kk), order.end(),
                          [&](std::size_t a, std::size_t b) {
                              const double sa = sim(i, Eigen::Index(a)), sb = sim(i, Eigen::Index(b));
                              return sa != sb ? sa > sb : a < b;
                          });
        order.resize(kk);
        out[static_cast<std::size_t>(i)] = order;
    }
    return out;
}

/// The agreement of a student's embeddings with its teacher's (see the file comment).
struct embedding_agreement {
    double mean_cosine = 0;  ///< mean over sentences of cos(student_i, teacher_i)
    double min_cosine = 0;   ///< the least of them
    double recall_at_k = 0;  ///< mean over sentences of |NN_k(student) ∩ NN_k(teacher)| / |NN_k(teacher)|
    std::size_t k = 0;       ///< the k of recall_at_k
};

/// Compares `student` with `teacher`, both (N, C) for the same N sentences in the same order.
/// Throws error if the shapes differ, N < 2 or k = 0.
inline embedding_agreement agreement(const embeddings& student, const embeddings& teacher, std::size_t k = 10) {
    const std::size_t n = student.shape()[0];
    if (teacher.shape()[0] != n)
        throw error("embedding agreement: " + std::to_string(n) + " student embeddings but " +
                    std::to_string(teacher.shape()[0]) + " teacher embeddings");
    if (student.shape()[1] != teacher.shape()[1])
        throw error("embedding agreement: student embeddings are " + std::to_string(student.shape()[1]) +
                    " wide, the teacher's " + std::to_string(teacher.shape()[1]));
    if (n < 2) throw error("embedding agreement: needs at least 2 sentences, got " + std::to_string(n));
    if (k == 0) throw error("embedding agreement: k must be at least 1");
    embedding_agreement a;
    a.k = k;
    const xt::xtensor<double, 1> cos = xt::sum(normalized_rows(student) * normalized_rows(teacher), {1});
    a.mean_cosine = xt::mean(cos)();
    a.min_cosine = xt::amin(cos)();
    const auto s_nn = nearest_neighbours(student, k), t_nn = nearest_neighbours(teacher, k);
    for (std::size_t i = 0; i < n; ++i) {
        std::size_t hits = 0;
        for (std::size_t j : s_nn[i]) hits += std::count(t_nn[i].begin(), t_nn[i].end(), j) ? 1 : 0;
        a.recall_at_k += double(hits) / double(t_nn[i].size());
    }
    a.recall_at_k /= double(n);
    return a;
}

/// {"mean_cosine", "min_cosine", "recall_at_<k>"} for a report.
inline nlohmann::ordered_json to_json(const embedding_agreement& a) {
    return {{"mean_cosine", a.mean_cosine},
            {"min_cosine", a.min_cosine},
            {"recall_at_" + std::to_string(a.k), a.recall_at_k}};
}

}  // namespace distill::eval
