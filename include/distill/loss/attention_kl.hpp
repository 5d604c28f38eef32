#pragma once
/// @file attention_kl.hpp
/// `AttentionKL`: attention transfer (TinyBERT, MiniLM): per mapped layer and head, the KL from
/// the teacher's attention distribution of each query to the student's.

#include <cstdint>
#include <string>
#include <vector>

#include <boost/hana/adapt_struct.hpp>
#include <boost/hana/set.hpp>

#include "distill/device.hpp"
#include "distill/loss.hpp"
#include "distill/loss/layer_map.hpp"
#include "distill/loss/util.hpp"

namespace distill::loss {

/// Keys of the job's `loss.attention_kl` object.
struct AttentionKLConfig {
    std::string layer_map = "uniform";  ///< "uniform", "last" or "explicit"
    std::vector<layer_pair> layers{};   ///< attention-layer pairs when "explicit"
};

/// Attention-map KL over mapped attention layers (l_s, l_t). Student head h (of Hs) is matched
/// with the average of teacher heads [h·g, (h+1)·g), g = Ht/Hs — an average of distributions is a
/// distribution, and grouping adjacent heads keeps each student head's target a blend of heads
/// that shared a projection block. Ht must be a multiple of Hs (a `config_error` otherwise). With
/// ā the grouped teacher row and a the student row of query t, over the keys j of t — j ≤ t for a
/// causal student (`model_dims::causal`, a decoder), every j < T for a bidirectional one (an
/// encoder; a padded key has probability 0 in both maps, so it adds 0 and gets gradient 0):
///
///   value = mean over layer pairs, student heads and counted query positions of
///           KL(ā‖a) = Σ_j ā_j (log ā_j − log a_j);
///   ∂value/∂a_j = −ā_j / a_j / (pairs · Hs · count),
///
/// written to the student's attention-map sink (gradients w.r.t. the probabilities, which the
/// student's softmax backward turns into a_j·(g_j − Σ a g) = a_j − ā_j). a is clamped below at the
/// smallest normal number so an underflowed probability gives a large finite value, never Inf/NaN.
/// Needs `attentions`. Config: `layer_map` ("uniform" default, "last", "explicit") and `layers`
/// (attention layer indices 0..L−1).
class AttentionKL : public util::term_base<AttentionKLConfig> {
public:
    static constexpr char name[] = "attention_kl";
    static constexpr auto needs = boost::hana::make_set(signal::attentions);

    /// Resolves the layer map and checks the head counts.
    explicit AttentionKL(const config& c = {}, const dims& d = {})
        : term_base(c), Hs_(d.student.n_heads), Ht_(d.teacher.n_heads), causal_(d.student.causal) {
        if (Hs_ < 1 || Ht_ < 1)
            throw config_error("attention_kl", "the student's and the teacher's n_heads must be known (got " +
                                                   std::to_string(Hs_) + " and " + std::to_string(Ht_) + ")");
        if (Ht_ % Hs_ != 0)
            throw config_error("attention_kl", "the teacher's " + std::to_string(Ht_) +
                                                   " heads cannot be grouped onto the student's " +
                                                   std::to_string(Hs_) +
                                                   ": the teacher's head count must be a multiple of the student's");
        pairs_ = resolve_layer_map("attention_kl", c.layer_map, c.layers, layer_kind::attention, d.student.n_layers,
                                   d.teacher.n_layers);
    }

    /// The resolved (student, teacher) attention-layer pairs.
    const std::vector<layer_pair>& pairs() const noexcept { return pairs_; }

    /// The value; adds its gradient (times `ctx.weight`) to the attention-map sinks.
    template <class T, class Device>
    T operator()(const context<T, Device>& ctx) {
        const int B = ctx.batch(), Tn = ctx.length();
        const std::int64_t N = std::int64_t(B) * Tn, count = ctx.count();
        const auto& S = ctx.student->attentions;
        const auto& A = ctx.teacher->attentions;
        const T grad_scale = ctx.weight / T(count ? count : 1) / T(Hs_) / T(pairs_.size());
        double total = 0;
        for (std::size_t k = 0; k < pairs_.size(); ++k) {
            const auto [ls, lt] = checked_pair("attention_kl", k, pairs_[k], "student attention layer", "teacher layer",
                                               S.size(), A.size());
            check_map("a student attention map", S[std::size_t(ls)], B, Hs_, Tn);
            check_map("a teacher attention map", A[std::size_t(lt)], B, Ht_, Tn);
            const auto sink = ctx.d_attention(ls);
            attention_kl_forward_backward(ctx.device, sink.tensor.data(), sink.accumulate, ctx.rows(),
                                          S[std::size_t(ls)].data(), A[std::size_t(lt)].data(), ctx.mask_data(), B, Hs_,
                                          Ht_, Tn, grad_scale, causal_);
            total += double(util::mean_rows(ctx.device, ctx.rows(), N, count)) / Hs_;
        }
        return static_cast<T>(total / double(pairs_.size()));
    }

    DISTILL_LOSS_TERM_CHECKS(distill::loss::AttentionKL)

private:
    template <class T>
    static void check_map(const char* what, const Tensor<const T>& a, int B, int H, int Tn) {
        if (a.rank() != 4 || a.size(0) != B || a.size(1) != H || a.size(2) != Tn || a.size(3) != Tn || !a.contiguous())
            throw shape_error(std::string("attention_kl: ") + what + " has shape " + a.shape_string() + ", expected [" +
                              std::to_string(B) + ", " + std::to_string(H) + ", " + std::to_string(Tn) + ", " +
                              std::to_string(Tn) + "]");
    }

    int Hs_, Ht_;
    bool causal_;  // the student's: keys j ≤ t, or every key
    std::vector<layer_pair> pairs_;
};

}  // namespace distill::loss

BOOST_HANA_ADAPT_STRUCT(distill::loss::AttentionKLConfig, layer_map, layers);
