#pragma once
/// @file util.hpp
/// What the built-in loss terms share: their config's home (`term_base`), the checks of their
/// configs and inputs, the run of a tempered full-vocabulary divergence, and the reductions.

#include <cmath>
#include <cstdint>
#include <string>

#include <boost/hana/adapt_struct.hpp>

#include "distill/device.hpp"
#include "distill/error.hpp"
#include "distill/loss.hpp"
#include "distill/tensor.hpp"

namespace distill::loss {

/// Keys of the job's `loss.soft_kl`, `loss.topk_soft_kl` and `loss.reverse_kl` objects: the
/// temperature of a divergence between tempered distributions. The default is a term's built in
/// code; in a job, a term whose entry does not set `temperature` runs at the job's
/// `hyperparameters.temperature` (its own default, 2), except `topk_soft_kl`, which stays at 1
/// (`loss_config_of`, pipeline/finetune_stage.hpp).
struct TemperatureConfig {
    double temperature = 1.0;         ///< τ > 0; both distributions are softmax(logits/τ)
    bool temperature_squared = true;  ///< multiply the value (and gradient) by τ²
};

}  // namespace distill::loss

namespace distill::loss::util {

/// The base of every built-in term: it holds the term's config, which the term's constructor has
/// validated, and gives it back through `settings()`.
template <class Config>
class term_base {
public:
    using config = Config;

    const config& settings() const noexcept { return cfg_; }

protected:
    explicit term_base(const config& c) : cfg_(c) {}

    config cfg_;
};

/// Throws config_error at `path` unless tau is a finite number > 0.
inline void check_temperature(const std::string& path, double tau) {
    if (!(tau > 0) || !std::isfinite(tau))
        throw config_error(path, "must be a finite number > 0, got " + std::to_string(tau));
}

/// Throws config_error at `term` when both models' vocabulary sizes are known and differ; `why`,
/// when given, ends the message after "; ".
inline void check_same_vocab(const char* term, const dims& d, const char* why = nullptr) {
    if (d.student.vocab_size && d.teacher.vocab_size && d.student.vocab_size != d.teacher.vocab_size)
        throw config_error(term, "the teacher's vocabulary (" + std::to_string(d.teacher.vocab_size) +
                                     ") differs from the student's (" + std::to_string(d.student.vocab_size) + ")" +
                                     (why ? std::string("; ") + why : std::string()));
}

/// Throws config_error at `term` when both models' widths (d_model) are known and differ: the
/// term compares the two models' vectors element by element and has no projection between them.
inline void check_same_width(const char* term, const dims& d) {
    if (d.student.d_model && d.teacher.d_model && d.student.d_model != d.teacher.d_model)
        throw config_error(term, "the teacher's width (d_model " + std::to_string(d.teacher.d_model) +
                                     ") differs from the student's (" + std::to_string(d.student.d_model) +
                                     "); this term has no projection, so both embeddings must be equally wide");
}

/// Throws shape_error unless `t` is a non-empty (B,T,·) tensor matching `like` in its first two
/// dimensions and, when `last` >= 0, with `last` as its last dimension.
template <class A, class B>
void check_btx(const char* term, const char* what, const Tensor<A>& t, const Tensor<B>& like, std::int64_t last = -1) {
    if (t.empty())
        throw shape_error(std::string(term) + ": " + what + " is missing (the teacher source filled no such tensor)");
    if (t.rank() != 3 || t.size(0) != like.size(0) || t.size(1) != like.size(1) || (last >= 0 && t.size(2) != last) ||
        !t.contiguous())
        throw shape_error(std::string(term) + ": " + what + " has shape " + t.shape_string() + ", expected [" +
                          std::to_string(like.size(0)) + ", " + std::to_string(like.size(1)) + ", " +
                          (last >= 0 ? std::to_string(last) : std::string("·")) + "] (contiguous)");
}

/// Σ rows[0..n) / count, summed in order in double (deterministic, and exact enough that a
/// value made of many fp32 rows does not drift with n); 0 when count is 0.
template <class T>
T mean_rows(const T* rows, std::int64_t n, std::int64_t count) {
    if (count == 0) return T(0);
    double sum = 0;
    for (std::int64_t i = 0; i < n; ++i) sum += static_cast<double>(rows[i]);
    return static_cast<T>(sum / static_cast<double>(count));
}

/// `mean_rows` of per-row values in `dev`'s memory, read through `distill::detail::read_on_host`: in place on
/// a host device, after one copy of the n values on a device with its own memory (same order, same
/// result).
template <class Device, class T>
T mean_rows(const Device& dev, const T* rows, std::int64_t n, std::int64_t count) {
    if (count == 0) return T(0);
    const auto host = ::distill::detail::read_on_host(dev, rows, static_cast<std::size_t>(n));
    return mean_rows(host.data(), n, count);
}

/// The run of a term over the pooled embeddings, one (B,C) row per sequence (`CosineEmbedding`,
/// `EmbeddingMSE`): checks the student's and the teacher's pooled embeddings, calls
/// `kernel(d, accumulate, losses, student, teacher, B, C, grad_scale)` with the pooled sink and
/// grad_scale = weight / B, and returns the mean of the per-row values over the B rows (every row
/// counts: the mask is per position, and each sequence has one embedding).
template <class T, class Device, class Kernel>
T pooled_rows(const char* term, const context<T, Device>& ctx, Kernel&& kernel) {
    const auto& s = ctx.student->pooled;
    const auto& t = ctx.teacher->pooled;
    if (s.empty()) throw shape_error(std::string(term) + ": the student has no pooled embeddings");
    if (t.empty())
        throw shape_error(std::string(term) +
                          ": the teacher's pooled embeddings are missing (the teacher source filled no such tensor)");
    if (s.rank() != 2 || !s.contiguous())
        throw shape_error(std::string(term) + ": the student's pooled embeddings have shape " + s.shape_string() +
                          ", expected (B,C) (contiguous)");
    if (t.rank() != 2 || t.size(0) != s.size(0) || t.size(1) != s.size(1) || !t.contiguous())
        throw shape_error(std::string(term) + ": the teacher's pooled embeddings have shape " + t.shape_string() +
                          ", expected " + s.shape_string() + " (contiguous)");
    const int B = static_cast<int>(s.size(0)), C = static_cast<int>(s.size(1));
    const auto sink = ctx.d_pooled();
    kernel(sink.tensor.data(), sink.accumulate, ctx.rows(), s.data(), t.data(), B, C, ctx.weight / T(B ? B : 1));
    return mean_rows(ctx.device, ctx.rows(), B, B);
}

/// The run of a divergence between the student's and the teacher's logits at temperature τ
/// (`SoftKL`, `ReverseKL`, `JSD`): checks the teacher's logits against the student's (B,T,V), calls
/// `kernel(d, accumulate, student, teacher, N, V, 1/τ, grad_scale)` with the logits' sink, N = B·T
/// and grad_scale = weight · s / count, s = τ² when `squared` (else 1), and returns s · the mean of
/// the per-row values over the counted positions.
template <class T, class Device, class Kernel>
T tempered_logits(const char* term, const context<T, Device>& ctx, double temperature, bool squared, Kernel&& kernel) {
    const auto& s = ctx.student->logits;
    const auto& t = ctx.teacher->logits;
    check_btx(term, "the teacher's logits", t, s, s.size(2));
    const std::int64_t N = s.size(0) * s.size(1), count = ctx.count();
    const T tau = static_cast<T>(temperature);
    const T factor = squared ? tau * tau : T(1);
    const auto sink = ctx.d_logits();
    kernel(sink.tensor.data(), sink.accumulate, s.data(), t.data(), N, static_cast<int>(s.size(2)), T(1) / tau,
           ctx.weight * factor / T(count ? count : 1));
    return factor * mean_rows(ctx.device, ctx.rows(), N, count);
}

/// The base of the pooled-embedding terms (`CosineEmbedding`, `EmbeddingMSE`): the constructor
/// checks that both widths agree when known (`check_same_width`); the call runs `pooled_rows` with
/// `Derived::kernel(dev, d, accumulate, losses, student, teacher, B, C, grad_scale)`, the term's
/// kernel.
template <class Derived, class Config>
class pooled_embedding_term : public term_base<Config> {
public:
    explicit pooled_embedding_term(const Config& c = {}, const dims& d = {}) : term_base<Config>(c) {
        check_same_width(Derived::name, d);
    }

    /// The value; adds its gradient (times `ctx.weight`) to the pooled sink.
    template <class T, class Device>
    T operator()(const context<T, Device>& ctx) {
        return pooled_rows(Derived::name, ctx, [&](auto&&... args) { Derived::kernel(ctx.device, args...); });
    }
};

/// The base of the divergences between the student's and the teacher's logits at temperature τ
/// (`SoftKL`, `ReverseKL`, `JSD`): the constructor checks the temperature (`<name>.temperature`)
/// and that both vocabularies agree when known (`Derived::vocab_note`, when not null, ends that
/// message); the call runs `tempered_logits` with `Derived::rows(ctx, d, accumulate, student,
/// teacher, N, V, inv_tau, grad_scale)`, the term's kernel. Config: `temperature`,
/// `temperature_squared` (and the term's own keys).
template <class Derived, class Config>
class logits_divergence : public term_base<Config> {
public:
    explicit logits_divergence(const Config& c = {}, const dims& d = {}) : term_base<Config>(c) {
        check_temperature(std::string(Derived::name) + ".temperature", c.temperature);
        check_same_vocab(Derived::name, d, Derived::vocab_note);
    }

    /// The value; adds its gradient (times `ctx.weight`) to the logits' sink.
    template <class T, class Device>
    T operator()(const context<T, Device>& ctx) {
        return tempered_logits(Derived::name, ctx, this->cfg_.temperature, this->cfg_.temperature_squared,
                               [&](auto&&... args) { static_cast<const Derived&>(*this).rows(ctx, args...); });
    }
};

}  // namespace distill::loss::util

BOOST_HANA_ADAPT_STRUCT(distill::loss::TemperatureConfig, temperature, temperature_squared);
