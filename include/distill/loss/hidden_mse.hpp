#pragma once
/// @file hidden_mse.hpp
/// `HiddenMSE`: intermediate-layer matching (FitNets, TinyBERT): the student's hidden states,
/// through a learned linear projection when the widths differ, regressed onto the teacher's.

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <boost/hana/adapt_struct.hpp>
#include <boost/hana/set.hpp>

#include "distill/detail/arena.hpp"
#include "distill/detail/rng.hpp"
#include "distill/device.hpp"
#include "distill/loss.hpp"
#include "distill/loss/layer_map.hpp"
#include "distill/loss/util.hpp"

namespace distill::loss {

/// Keys of the job's `loss.hidden_mse` object.
struct HiddenMSEConfig {
    std::string layer_map = "uniform";  ///< "uniform", "last" or "explicit" (see resolve_layer_map)
    std::vector<layer_pair> layers{};   ///< hidden-state pairs when "explicit": 0 embeddings .. L final norm
    std::string form = "mse";           ///< "mse" or "cosine"
    std::string projection = "auto";    ///< "auto" (when the widths differ), "always" or "none"
    std::uint64_t seed = 0;             ///< seeds the projections' initialization
};

/// Hidden-state matching over mapped pairs (i, j) of student hidden state h_i (B,T,Cs) and teacher
/// hidden state g_j (B,T,Ct), with y = h_i Wᵀ + b when projected (W (Ct,Cs), b (Ct), one per pair)
/// and y = h_i otherwise:
///
///   mse:    value = mean over pairs, counted positions and the Ct channels of (y − g)²;
///   cosine: value = mean over pairs and counted positions of 1 − y·g / (max(|y|,ε) max(|g|,ε)), ε = 1e-8.
///
/// Gradients flow to the student's hidden states (through W) and to W and b, which are trained
/// with the student: `parameters()` lists them (`hidden_mse.proj.{pair}.weight|bias`) for the
/// optimizer and checkpoints; their values and gradients live in arenas of the term's own. They
/// start like `torch.nn.Linear`: U(−1/√Cs, 1/√Cs) from `seed`. Use it with an in-process teacher
/// when the student should imitate how the teacher computes, not only what it outputs. Needs
/// `hidden_states`. A projection is needed whenever the widths differ ("none" is then an error).
/// @tparam T scalar type of the projections. @tparam Device where they live.
template <class T = float, class Device = device::Cpu>
class BasicHiddenMSE : public util::term_base<HiddenMSEConfig> {
public:
    using scalar_type = T;
    using device_type = Device;
    /// The same term in another scalar type or on another device (see loss::rebind_t).
    template <class T2, class Device2>
    using rebind = BasicHiddenMSE<T2, Device2>;

    static constexpr char name[] = "hidden_mse";
    static constexpr auto needs = boost::hana::make_set(signal::hidden_states);

    /// Resolves and validates the layer map, and lays out and initializes the projections.
    explicit BasicHiddenMSE(const config& c = {}, const dims& d = {}, Device device = Device{})
        : term_base(c), dev_(device), Cs_(d.student.d_model), Ct_(d.teacher.d_model) {
        if (c.form != "mse" && c.form != "cosine")
            throw config_error("hidden_mse.form", "expected \"mse\" or \"cosine\", got \"" + c.form + "\"");
        if (c.projection != "auto" && c.projection != "always" && c.projection != "none")
            throw config_error("hidden_mse.projection",
                               "expected \"auto\", \"always\" or \"none\", got \"" + c.projection + "\"");
        if (Cs_ < 1 || Ct_ < 1)
            throw config_error("hidden_mse", "the student's and the teacher's d_model must be known (got " +
                                                 std::to_string(Cs_) + " and " + std::to_string(Ct_) + ")");
        pairs_ = resolve_layer_map("hidden_mse", c.layer_map, c.layers, layer_kind::hidden_state, d.student.n_layers,
                                   d.teacher.n_layers);
        projected_ = c.projection == "always" || (c.projection == "auto" && Cs_ != Ct_);
        if (!projected_ && Cs_ != Ct_)
            throw config_error("hidden_mse.projection", "is \"none\" but the widths differ (student " +
                                                            std::to_string(Cs_) + ", teacher " + std::to_string(Ct_) +
                                                            "); use \"auto\"");
        scratch_ = std::size_t(d.max_batch) * std::size_t(d.max_length) * std::size_t(Ct_);
        if (projected_) layout_projections();
    }

    /// The resolved (student, teacher) hidden-state pairs.
    const std::vector<layer_pair>& pairs() const noexcept { return pairs_; }
    bool projected() const noexcept { return projected_; }
    /// The projections' weights and biases with their gradients (empty when not projected).
    std::vector<Parameter<T>> parameters() const { return params_; }
    /// Zeroes the projections' gradients (they accumulate like the student's).
    void zero_grad() {
        if (projected_) dev_.fill_zero(grads_.data(), sizeof(T) * grads_.size());
    }
    /// Scratch for one pair's projected states and their gradient: max_batch · max_length · Ct.
    std::size_t scratch_elements() const noexcept { return scratch_; }

    /// The value; adds its gradient (times `ctx.weight`) to the hidden-state sinks and the projections.
    T operator()(const context<T, Device>& ctx) {
        const auto& S = ctx.student->hidden_states;
        const auto& H = ctx.teacher->hidden_states;
        const int B = ctx.batch(), Tn = ctx.length();
        const std::int64_t N = std::int64_t(B) * Tn, count = ctx.count();
        T* y = ctx.scratch();
        double total = 0;
        for (std::size_t k = 0; k < pairs_.size(); ++k) {
            const auto [i, j] = checked_pair("hidden_mse", k, pairs_[k], "student hidden state", "teacher hidden state",
                                             S.size(), H.size());
            const auto& hs = S[std::size_t(i)];
            const auto& ht = H[std::size_t(j)];
            util::check_btx("hidden_mse", "a student hidden state", hs, ctx.student->logits, Cs_);
            util::check_btx("hidden_mse", "a teacher hidden state", ht, ctx.student->logits, Ct_);
            // y (N,Ct) = hs (N,Cs) · Wᵀ + b, or hs itself
            if (projected_) {
                gemm(dev_, false, true, int(N), Ct_, Cs_, T(1), hs.data(), Cs_, val(k, 0), Cs_, T(0), y, Ct_);
                add_bias(dev_, y, val(k, 1), int(N), Ct_);
            } else {
                dev_.copy(y, hs.data(), sizeof(T) * std::size_t(N) * std::size_t(Ct_));
            }
            const T scale = ctx.weight / T(count ? count : 1) / T(pairs_.size());
            // the rows' values (summed in double) and dy (N,Ct) in place of y: rows that do not count get 0
            const double value = hidden_match_forward_backward(dev_, y, ctx.rows(), ht.data(), ctx.mask_data(), N, Ct_,
                                                               scale, cfg_.form == "cosine");
            total += count ? value / double(count) : 0.0;
            const auto sink = ctx.d_hidden(i);
            if (projected_) {
                // dW (Ct,Cs) += dyᵀ · hs;  db += Σ_n dy;  d_hs (N,Cs) (+)= dy · W
                gemm(dev_, true, false, Ct_, Cs_, int(N), T(1), y, Ct_, hs.data(), Cs_, T(1), grad(k, 0), Cs_);
                bias_grad(dev_, grad(k, 1), y, int(N), Ct_);
                gemm(dev_, false, false, int(N), Cs_, Ct_, T(1), y, Ct_, val(k, 0), Cs_, sink.accumulate ? T(1) : T(0),
                     sink.tensor.data(), Cs_);
            } else if (sink.accumulate) {
                accumulate(dev_, sink.tensor.data(), y, N * Ct_);
            } else {
                dev_.copy(sink.tensor.data(), y, sizeof(T) * std::size_t(N) * std::size_t(Ct_));
            }
        }
        return static_cast<T>(total / double(pairs_.size()));
    }

    DISTILL_LOSS_TERM_CHECKS(distill::loss::HiddenMSE)

private:
    void layout_projections() {
        for (std::size_t k = 0; k < pairs_.size(); ++k) {
            const std::string p = "hidden_mse.proj." + std::to_string(k) + ".";
            layout_.add<T>(p + "weight", {Ct_, Cs_});
            layout_.add<T>(p + "bias", {Ct_});
        }
        values_ = ::distill::detail::Arena<T, Device>(dev_, layout_.size());
        grads_ = ::distill::detail::Arena<T, Device>(dev_, layout_.size());
        // nn.Linear's default: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias, written on the host
        std::vector<T> init(layout_.size(), T(0));
        Rng rng(cfg_.seed);
        const double bound = 1.0 / std::sqrt(double(Cs_));
        for (const auto& b : layout_.blocks())
            for (std::size_t e = 0; e < b.numel; ++e)
                init[b.offset + e] = static_cast<T>((2 * rng.uniform() - 1) * bound);
        dev_.copy(values_.data(), init.data(), sizeof(T) * init.size());
        for (std::size_t i = 0; i < layout_.blocks().size(); ++i) {
            const auto& b = layout_.blocks()[i];
            params_.push_back(
                {b.name, values_.view(b), grads_.view(b), i % 2 ? parameter_kind::bias : parameter_kind::weight});
        }
    }
    T* val(std::size_t pair, int which) const noexcept {
        return values_.data() + layout_.blocks()[2 * pair + which].offset;
    }
    T* grad(std::size_t pair, int which) const noexcept {
        return grads_.data() + layout_.blocks()[2 * pair + which].offset;
    }

    Device dev_;
    int Cs_, Ct_;
    std::vector<layer_pair> pairs_;
    bool projected_ = false;
    std::size_t scratch_ = 0;
    ::distill::detail::ArenaLayout layout_;
    ::distill::detail::Arena<T, Device> values_, grads_;
    std::vector<Parameter<T>> params_;
};

/// `BasicHiddenMSE` in fp32 on the CPU, the name jobs and `Sum` use (`loss::rebind_t` changes both).
using HiddenMSE = BasicHiddenMSE<float, device::Cpu>;

}  // namespace distill::loss

BOOST_HANA_ADAPT_STRUCT(distill::loss::HiddenMSEConfig, layer_map, layers, form, projection, seed);
