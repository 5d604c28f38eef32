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
class CosineEmbedding : public util::term_base<CosineEmbeddingConfig> {
public:
    static constexpr char name[] = "cosine_embedding";
    static constexpr auto needs = boost::hana::make_set(signal::pooled);

    /// Checks that the two widths agree where both are known.
    explicit CosineEmbedding(const config& c = {}, const dims& d = {}) : term_base(c) {
        util::check_same_width(name, d);
    }

    /// The value; adds its gradient (times `ctx.weight`) to the pooled sink.
    template <class T, class Device>
    T operator()(const context<T, Device>& ctx) {
        return util::pooled_rows(name, ctx,
                                 [&](auto&&... args) { cosine_embedding_forward_backward(ctx.device, args...); });
    }

    DISTILL_LOSS_TERM_CHECKS(distill::loss::CosineEmbedding)
};

}  // namespace distill::loss

BOOST_HANA_ADAPT_STRUCT(distill::loss::CosineEmbeddingConfig);
