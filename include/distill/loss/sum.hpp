#pragma once
/// @file sum.hpp
/// `loss::Sum<Terms...>`: a weighted sum of loss terms fixed at compile time, with the weights
/// and every term's config read from the job at run time.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/hana/accessors.hpp>
#include <boost/hana/at.hpp>
#include <boost/hana/first.hpp>
#include <boost/hana/fold_left.hpp>
#include <boost/hana/for_each.hpp>
#include <boost/hana/pair.hpp>
#include <boost/hana/prepend.hpp>
#include <boost/hana/second.hpp>
#include <boost/hana/set.hpp>
#include <boost/hana/string.hpp>
#include <boost/hana/transform.hpp>
#include <boost/hana/tuple.hpp>
#include <boost/hana/union.hpp>

#include "distill/error.hpp"
#include "distill/loss.hpp"

namespace distill::loss {

/// A term's config plus its weight in a `Sum`: in JSON, one object holding `weight` and the term's
/// own keys, e.g. `{"weight": 0.5, "temperature": 2}`.
/// @tparam Config a reflected config struct.
template <class Config>
struct weighted {
    double weight = 1.0;  ///< the term's weight (>= 0; 0 skips the term)
    Config config{};
};

/// The config of `Sum<Terms...>`: one `weighted<Term::config>` per term, keyed by the term's
/// `name` in JSON: `{"soft_kl": {"weight": 1, "temperature": 2}, "hidden_mse": {"weight": 0.1}}`.
/// Terms missing from the JSON keep weight 1 and their defaults.
template <class... Terms>
struct SumConfig {
    boost::hana::tuple<weighted<typename Terms::config>...> terms;

    /// The entry of term I.
    template <std::size_t I>
    auto& get() noexcept {
        return boost::hana::at_c<I>(terms);
    }
    template <std::size_t I>
    const auto& get() const noexcept {
        return boost::hana::at_c<I>(terms);
    }
};

namespace detail {

// A compile-time Hana string with the characters of the static array S.
template <const auto& S, std::size_t... I>
constexpr auto hana_string(std::index_sequence<I...>) {
    return boost::hana::string_c<S[I]...>;
}
template <const auto& S>
constexpr auto hana_string() {
    return hana_string<S>(std::make_index_sequence<sizeof(S) - 1>{});
}

template <class First, class... Rest>
constexpr bool distinct_names() {
    if constexpr (sizeof...(Rest) == 0)
        return true;
    else
        return ((std::string_view(First::name) != std::string_view(Rest::name)) && ...) && distinct_names<Rest...>();
}

// The scalar type of the first term that has one (learned parameters), else float.
template <class... Terms>
struct parameter_scalar {
    using type = float;
};
template <class First, class... Rest>
struct parameter_scalar<First, Rest...> {
    using type = typename parameter_scalar<Rest...>::type;
};
template <class First, class... Rest>
requires requires {
    typename First::scalar_type;
}
struct parameter_scalar<First, Rest...> {
    using type = typename First::scalar_type;
};

}  // namespace detail

/// The weighted sum Σ_i w_i · term_i of loss terms, itself a loss term (so sums nest).
///
/// `needs` is the union of the terms' needs; `parameters()` the concatenation of theirs, each
/// name prefixed with "loss."; the scratch it asks the `Workspace` for is the largest of theirs
/// (terms run one after the other). Each term's gradient is scaled by its weight through
/// `context::weight`; a term of weight 0 is skipped (not computed; its value reads 0). After a
/// call, `values()` holds each term's unweighted value for logging.
/// @tparam Terms the terms, each a `loss_policy` with a distinct `name`.
template <class... Terms>
class Sum {
    static_assert(sizeof...(Terms) >= 1, "Loss: loss::Sum needs at least one term");
    static_assert(detail::distinct_names<Terms...>(),
                  "Loss: the terms of a loss::Sum must have distinct names (each names its config in the job)");

public:
    using config = SumConfig<Terms...>;
    /// The same sum with every term rebound (see loss::rebind_t).
    template <class T, class Device>
    using rebind = Sum<rebind_t<Terms, T, Device>...>;

    static constexpr std::size_t size = sizeof...(Terms);
    static constexpr char name[] = "sum";
    static constexpr auto needs =
        boost::hana::fold_left(boost::hana::make_tuple(Terms::needs...), boost::hana::make_set(), boost::hana::union_);

    /// Builds every term from its config and `d`; weights must be finite and >= 0.
    explicit Sum(const config& c = {}, const dims& d = {}) : Sum(c, d, std::index_sequence_for<Terms...>{}) {}

    /// Each term's key, in order.
    static constexpr std::array<const char*, size> names() noexcept { return {Terms::name...}; }
    /// Each term's unweighted value at the last call.
    const std::array<double, size>& values() const noexcept { return values_; }
    const std::array<double, size>& weights() const noexcept { return weights_; }
    /// Whether a term of nonzero weight reads the teacher's activations (`loss::needs_activations`):
    /// the run-time refinement of `needs`.
    bool reads_activations() const noexcept { return any_weighted({needs_activations<Terms>...}); }
    /// Whether a term of nonzero weight reads attention maps or q|k|v (`loss::needs_attention`).
    bool reads_attention() const noexcept { return any_weighted({needs_attention<Terms>...}); }
    /// Changes term i's weight (e.g. a schedule); finite and >= 0.
    void set_weight(std::size_t i, double w) {
        if (i >= size) throw config_error("loss", "term index " + std::to_string(i) + " out of range");
        check_weight(names()[i], w);
        weights_[i] = w;
    }
    /// Term I.
    template <std::size_t I>
    auto& term() noexcept {
        return boost::hana::at_c<I>(terms_);
    }
    template <std::size_t I>
    const auto& term() const noexcept {
        return boost::hana::at_c<I>(terms_);
    }

    /// Σ_i w_i · value_i; each term adds w_i · ctx.weight times its gradient to the sinks.
    template <class T, class Device>
    T operator()(const context<T, Device>& ctx) {
        static_assert((std::is_invocable_v<Terms&, const context<T, Device>&> && ...),
                      "Loss: a term of this loss::Sum cannot run in this scalar type or on this device (its learned "
                      "parts are typed, e.g. HiddenMSE is fp32 on the CPU); use loss::rebind_t<Loss, T, Device>");
        double total = 0;
        std::size_t i = 0;
        boost::hana::for_each(terms_, [&](auto& term) {
            const double w = weights_[i];
            values_[i] = 0;
            if (w != 0) {
                context<T, Device> sub = ctx;
                sub.weight = ctx.weight * static_cast<T>(w);
                values_[i] = static_cast<double>(term(sub));
                total += w * values_[i];
            }
            ++i;
        });
        return static_cast<T>(total);
    }

    /// Every term's learned parameters, names prefixed with "loss.".
    /// @tparam T their scalar type (by default that of the first term that has parameters).
    template <class T = typename detail::parameter_scalar<Terms...>::type>
    std::vector<Parameter<T>> parameters() const {
        std::vector<Parameter<T>> out;
        boost::hana::for_each(terms_, [&](const auto& term) {
            for (auto p : parameters_of<T>(term)) {
                p.name = "loss." + p.name;
                out.push_back(std::move(p));
            }
        });
        return out;
    }
    /// Zeroes every term's parameter gradients.
    void zero_grad() {
        boost::hana::for_each(terms_, [](auto& term) { zero_grad_of(term); });
    }
    /// The largest scratch any term asks for.
    std::size_t scratch_elements() const {
        std::size_t n = 0;
        boost::hana::for_each(terms_, [&](const auto& term) { n = std::max(n, scratch_elements_of(term)); });
        return n;
    }

    /// `check_needs` for every term, in order.
    template <class Teacher>
    static constexpr bool check_teacher() {
        return (check_needs<Teacher, Terms>() && ...);
    }

private:
    template <std::size_t... I>
    Sum(const config& c, const dims& d, std::index_sequence<I...>)
        : terms_(Terms(c.template get<I>().config, d)...), weights_{c.template get<I>().weight...} {
        for (std::size_t i = 0; i < size; ++i) check_weight(names()[i], weights_[i]);
    }
    bool any_weighted(const std::array<bool, size>& reads) const noexcept {
        for (std::size_t i = 0; i < size; ++i)
            if (reads[i] && weights_[i] != 0) return true;
        return false;
    }
    static void check_weight(const char* term, double w) {
        if (!(w >= 0) || !std::isfinite(w))
            throw config_error(std::string(term) + ".weight", "must be a finite number >= 0, got " + std::to_string(w));
    }

    boost::hana::tuple<Terms...> terms_;
    std::array<double, size> weights_{};
    std::array<double, size> values_{};
};

}  // namespace distill::loss

namespace boost::hana {

// weighted<C> is a Hana Struct: "weight" first, then C's own keys, so io::to_json/from_json
// read and write one flat object per term.
template <class Config>
struct accessors_impl<distill::loss::weighted<Config>> {
    static constexpr auto apply() {
        auto weight = hana::make_pair(BOOST_HANA_STRING("weight"), [](auto&& w) -> decltype(auto) {
            return (static_cast<decltype(w)&&>(w).weight);
        });
        auto own = hana::transform(hana::accessors<Config>(), [](auto pair) {
            return hana::make_pair(hana::first(pair), [](auto&& w) -> decltype(auto) {
                return hana::second(decltype(pair){})(static_cast<decltype(w)&&>(w).config);
            });
        });
        return hana::prepend(own, weight);
    }
};

// SumConfig<Terms...> is a Hana Struct keyed by the terms' names.
template <class... Terms>
struct accessors_impl<distill::loss::SumConfig<Terms...>> {
    static constexpr auto apply() { return apply_(std::index_sequence_for<Terms...>{}); }

private:
    // A named accessor rather than a lambda inside the pack expansion: nvcc's front end rejects the
    // lambda form ("parameter pack was referenced but not expanded").
    template <std::size_t I>
    struct term_accessor {
        template <class S>
        constexpr decltype(auto) operator()(S&& s) const {
            return hana::at_c<I>(static_cast<S&&>(s).terms);
        }
    };
    template <std::size_t... I>
    static constexpr auto apply_(std::index_sequence<I...>) {
        return hana::make_tuple(
            hana::make_pair(distill::loss::detail::hana_string<std::tuple_element_t<I, std::tuple<Terms...>>::name>(),
                            term_accessor<I>{})...);
    }
};

}  // namespace boost::hana
