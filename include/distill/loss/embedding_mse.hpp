#pragma once
/// @file embedding_mse.hpp
/// `EmbeddingMSE`: sentence-embedding distillation — the mean squared error between the student's
/// and the teacher's pooled embedding of each sequence.

#include <boost/hana/adapt_struct.hpp>
#include <boost/hana/set.hpp>

#include "distill/device.hpp"
#include "distill/loss.hpp"
#include "distill/loss/util.hpp"

namespace distill::loss {

/// Keys of the job's `loss.embedding_mse` object: none (the object is `{}`).
struct EmbeddingMSEConfig {};

/// Mean squared error between pooled embeddings s (student) and t (teacher), (B,C):
///
///   value = mean over the B·C elements of (s − t)²,
///   ∂value/∂s = 2 (s − t) / (B·C)
///
/// — `F.mse_loss(s, t)`, written to the student's pooled sink (the sentence-embedding distillation
/// of Reimers & Gurevych 2020). Every row counts: the mask is per position and each sequence has
/// exactly one embedding. Needs `pooled`. Both models' widths must agree when known (a
/// `config_error` otherwise: there is no projection). Config: no keys.
class EmbeddingMSE : public util::pooled_embedding_term<EmbeddingMSE, EmbeddingMSEConfig> {
public:
    static constexpr char name[] = "embedding_mse";
    static constexpr auto needs = boost::hana::make_set(signal::pooled);

    using pooled_embedding_term::pooled_embedding_term;

    /// The kernel of the call (see util::pooled_embedding_term).
    template <class Device, class... Args>
    static void kernel(const Device& dev, Args... args) {
        embedding_mse_forward_backward(dev, args...);
    }

    DISTILL_LOSS_TERM_CHECKS(distill::loss::EmbeddingMSE)
};

}  // namespace distill::loss

BOOST_HANA_ADAPT_STRUCT(distill::loss::EmbeddingMSEConfig);
