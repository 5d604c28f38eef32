#pragma once
/// @file cosine_embedding.hpp
/// `CosineEmbedding`: sentence-embedding distillation — one minus the cosine similarity between
/// the student's and the teacher's pooled embedding of each sequence.

#include <boost/hana/adapt_struct.hpp>
#include <boost/hana/set.hpp>

#include "distill/device.hpp"
#include "distill/loss.hpp"
#include "distill/loss/util.hpp"

namespace distill::loss {

/// Keys of the job's `loss.cosine_embedding` object: none (the object is `{}`).
struct CosineEmbeddingConfig {};

/// Cosine distance between pooled embeddings s_b (student) and t_b (teacher), (B,C):
///
///   value = mean over the B rows of 1 − cos(s_b, t_b),
///   cos = s·t / (max(|s|, ε) max(|t|, ε)), ε = 1e-8;
///   ∂value/∂s_b = −(t_b / (n_s n_t) − cos s_b / (n_s |s_b|)) / B, n = max(|·|, ε)
///
/// (the second part 0 where s_b = 0) — `1 − F.cosine_similarity(s, t, dim=-1).mean()` and its
/// autograd in torch 2.x, written to the student's pooled sink. Every row counts: the mask is per
/// position and each sequence has exactly one embedding. Scale-free: only the directions are
/// matched (use `EmbeddingMSE` to match the vectors themselves). Needs `pooled`. Both models' widths
/// must agree when known (a `config_error` otherwise: there is no projection). Config: no keys.
class CosineEmbedding : public util::pooled_embedding_term<CosineEmbedding, CosineEmbeddingConfig> {
public:
    static constexpr char name[] = "cosine_embedding";
    static constexpr auto needs = boost::hana::make_set(signal::pooled);

    using pooled_embedding_term::pooled_embedding_term;

    /// The kernel of the call (see util::pooled_embedding_term).
    template <class Device, class... Args>
    static void kernel(const Device& dev, Args... args) {
        cosine_embedding_forward_backward(dev, args...);
    }

    DISTILL_LOSS_TERM_CHECKS(distill::loss::CosineEmbedding)
};

}  // namespace distill::loss

BOOST_HANA_ADAPT_STRUCT(distill::loss::CosineEmbeddingConfig);
