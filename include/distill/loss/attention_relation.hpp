#pragma once
/// @file attention_relation.hpp
/// `AttentionRelation`: MiniLMv2's multi-head self-attention relation distillation — the student
/// imitates the teacher's query–query, key–key and value–value relations, with a number of
/// relation heads chosen independently of either model's attention heads.

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <boost/hana/adapt_struct.hpp>
#include <boost/hana/set.hpp>

#include "distill/device.hpp"
#include "distill/loss.hpp"
#include "distill/loss/layer_map.hpp"
#include "distill/loss/util.hpp"

namespace distill::loss {

/// Keys of the job's `loss.attention_relation` object.
struct AttentionRelationConfig {
    int relation_heads = 0;                                          ///< R; 0 = the student's n_heads
    std::vector<std::string> relations = {"query", "key", "value"};  ///< which relation matrices
    std::string layer_map = "last";                                  ///< "last", "uniform" or "explicit"
    std::vector<layer_pair> layers{};                                ///< attention-layer pairs when "explicit"
};

/// Self-attention relation KL (Wang et al. 2021, MiniLMv2) over mapped layers (l_s, l_t). For each
/// relation x ∈ {query, key, value}, the layer's x projection (B,T,C) is split into R relation
/// heads of width d = C/R (the student's and the teacher's own d); per head, with X (T,d),
///
///   Rel = softmax(X Xᵀ / √d, causal: keys j ≤ t)          (T,T), for the teacher and the student;
///   value = mean over layer pairs, relations, relation heads and counted query positions t of
///           KL(Rel_teacher[t] ‖ Rel_student[t]);
///   ∂/∂X_student = (dS + dSᵀ) X / √d, dS[t] = (Rel_s[t] − Rel_t[t]) / (pairs · relations · R · count),
///
/// written to the student's q|k|v sink of layer l_s. Relation heads need not match either model's
/// attention heads — which is what lets teachers and students of any widths be paired (both widths
/// must be multiples of R). Needs `qkv`. Config: `relation_heads` (R; 0 = the student's n_heads),
/// `relations` (any of "query", "key", "value"; default all three), `layer_map` ("last" default,
/// as MiniLMv2 transfers one layer; "uniform", "explicit") and `layers`. Causal students only (the
/// relations are causal): a bidirectional student (`model_dims::causal` false) is a `config_error`.
class AttentionRelation : public util::term_base<AttentionRelationConfig> {
public:
    static constexpr char name[] = "attention_relation";
    static constexpr auto needs = boost::hana::make_set(signal::qkv);

    /// Resolves the layer map and checks the relation heads against both widths.
    explicit AttentionRelation(const config& c = {}, const dims& d = {})
        : term_base(c),
          Cs_(d.student.d_model),
          Ct_(d.teacher.d_model),
          R_(c.relation_heads ? c.relation_heads : d.student.n_heads) {
        if (Cs_ < 1 || Ct_ < 1)
            throw config_error("attention_relation", "the student's and the teacher's d_model must be known (got " +
                                                         std::to_string(Cs_) + " and " + std::to_string(Ct_) + ")");
        if (!d.student.causal)
            throw config_error("attention_relation",
                               "the student is bidirectional (not causal); the relation rows are causal (keys j <= t), "
                               "so this term supports causal students only (use attention_kl for encoders)");
        if (R_ < 1) throw config_error("attention_relation.relation_heads", "must be >= 1, got " + std::to_string(R_));
        for (const auto& [who, m] :
             {std::pair<const char*, const model_dims&>{"student", d.student}, {"teacher", d.teacher}})
            if (m.qkv() != 3 * m.d_model)
                throw config_error("attention_relation",
                                   std::string("the ") + who + " has grouped-query attention (q|k|v " +
                                       std::to_string(m.qkv()) +
                                       " wide, not 3 x d_model = " + std::to_string(3 * m.d_model) +
                                       "): relations need keys and values as wide as the queries");
        for (const auto& [who, C] : {std::pair<const char*, int>{"student", Cs_}, {"teacher", Ct_}})
            if (C % R_ != 0)
                throw config_error("attention_relation.relation_heads",
                                   std::to_string(R_) + " relation heads do not divide the " + who + "'s width " +
                                       std::to_string(C) + "; both widths must be multiples of relation_heads");
        if (c.relations.empty()) throw config_error("attention_relation.relations", "must name at least one relation");
        for (std::size_t i = 0; i < c.relations.size(); ++i) {
            const auto& r = c.relations[i];
            const int which = r == "query" ? 0 : r == "key" ? 1 : r == "value" ? 2 : -1;
            if (which < 0)
                throw config_error("attention_relation.relations[" + std::to_string(i) + "]",
                                   "expected \"query\", \"key\" or \"value\", got \"" + r + "\"");
            for (int w : which_)
                if (w == which)
                    throw config_error("attention_relation.relations[" + std::to_string(i) + "]",
                                       "\"" + r + "\" is listed twice");
            which_.push_back(which);
        }
        pairs_ = resolve_layer_map("attention_relation", c.layer_map, c.layers, layer_kind::attention,
                                   d.student.n_layers, d.teacher.n_layers);
        scratch_ = 3 * std::size_t(R_) * std::size_t(d.max_length) * std::size_t(d.max_length);
    }

    const std::vector<layer_pair>& pairs() const noexcept { return pairs_; }
    int relation_heads() const noexcept { return R_; }
    /// Scratch for one sequence's relation logits, teacher and student, and their gradient: 3·R·T².
    std::size_t scratch_elements() const noexcept { return scratch_; }

    /// The value; adds its gradient (times `ctx.weight`) to the q|k|v sinks.
    template <class T, class Device>
    T operator()(const context<T, Device>& ctx) {
        const int B = ctx.batch(), Tn = ctx.length();
        const std::int64_t count = ctx.count(), tt = std::int64_t(Tn) * Tn;
        const auto& S = ctx.student->qkv;
        const auto& Q = ctx.teacher->qkv;
        const int ds = Cs_ / R_, dt = Ct_ / R_;
        const T s_scale = T(1) / std::sqrt(T(ds)), t_scale = T(1) / std::sqrt(T(dt));
        const double terms = double(pairs_.size()) * double(which_.size()) * R_;
        const T grad_scale = ctx.weight / T(count ? count : 1) / T(terms);
        T* Ss = ctx.scratch();
        T* St = Ss + R_ * tt;
        T* dS = St + R_ * tt;
        T* losses = ctx.rows();
        double total = 0;
        for (std::size_t k = 0; k < pairs_.size(); ++k) {
            const auto [ls, lt] =
                checked_pair("attention_relation", k, pairs_[k], "student q|k|v", "teacher q|k|v", S.size(), Q.size());
            util::check_btx("attention_relation", "a student q|k|v", S[std::size_t(ls)], ctx.student->logits, 3 * Cs_);
            util::check_btx("attention_relation", "a teacher q|k|v", Q[std::size_t(lt)], ctx.student->logits, 3 * Ct_);
            const Tensor<T> dx = ctx.d_qkv_accumulate(ls);
            for (int which : which_) {
                for (int b = 0; b < B; ++b) {
                    const T* xs = S[std::size_t(ls)].data() + std::int64_t(b) * Tn * 3 * Cs_ + which * Cs_;
                    const T* xt = Q[std::size_t(lt)].data() + std::int64_t(b) * Tn * 3 * Ct_ + which * Ct_;
                    T* dxs = dx.data() + std::int64_t(b) * Tn * 3 * Cs_ + which * Cs_;
                    // relation logits per head r: S_r (T,T) = X_r (T,d) · X_rᵀ, head r in columns [r·d, (r+1)·d)
                    gemm_strided_batched(ctx.device, false, true, Tn, Tn, ds, T(1), xs, 3 * Cs_, ds, xs, 3 * Cs_, ds,
                                         T(0), Ss, Tn, tt, R_);
                    gemm_strided_batched(ctx.device, false, true, Tn, Tn, dt, T(1), xt, 3 * Ct_, dt, xt, 3 * Ct_, dt,
                                         T(0), St, Tn, tt, R_);
                    relation_kl_forward_backward(ctx.device, dS, losses + std::int64_t(b) * Tn, Ss, St,
                                                 ctx.mask.empty() ? nullptr : ctx.mask.data() + std::int64_t(b) * Tn,
                                                 R_, Tn, s_scale, t_scale, grad_scale);
                    // dX_r += dS_r · X_r + dS_rᵀ · X_r   (S = X Xᵀ is symmetric in X)
                    gemm_strided_batched(ctx.device, false, false, Tn, ds, Tn, T(1), dS, Tn, tt, xs, 3 * Cs_, ds, T(1),
                                         dxs, 3 * Cs_, ds, R_);
                    gemm_strided_batched(ctx.device, true, false, Tn, ds, Tn, T(1), dS, Tn, tt, xs, 3 * Cs_, ds, T(1),
                                         dxs, 3 * Cs_, ds, R_);
                }
                // each relation overwrites the per-position losses: sum them now, in order, in double
                const auto rows = ::distill::detail::read_on_host(ctx.device, static_cast<const T*>(losses),
                                                                  std::size_t(B) * std::size_t(Tn));
                for (std::int64_t n = 0; n < std::int64_t(B) * Tn; ++n) total += double(rows[std::size_t(n)]);
            }
        }
        return count ? static_cast<T>(total / (double(count) * terms)) : T(0);
    }

    DISTILL_LOSS_TERM_CHECKS(distill::loss::AttentionRelation)

private:
    int Cs_, Ct_, R_;
    std::vector<int> which_;
    std::vector<layer_pair> pairs_;
    std::size_t scratch_ = 0;
};

}  // namespace distill::loss

BOOST_HANA_ADAPT_STRUCT(distill::loss::AttentionRelationConfig, relation_heads, relations, layer_map, layers);
