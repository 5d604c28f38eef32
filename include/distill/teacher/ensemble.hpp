#pragma once
/// @file ensemble.hpp
/// `teacher::Ensemble<T>`: several teachers of one type (a job's `teachers`), each with a name and a
/// weight, seen by the pipeline as one teacher.
///
/// **Text (the generate stage).** Each prompt is answered by one teacher, chosen by the route:
/// - `"mix"` (the default) and `"example"`: in proportion to the weights, by a hash of the example's
///   id and the route's seed — the same example goes to the same teacher in every run, resumed or not,
///   whatever the batching;
/// - `{"field": F, "map": {value: name, ...}, "default": name}`: by the example's field F (a top-level
///   string or number of its JSONL line, `data::Example::fields`).
/// The answer records its teacher (`Response::answered_by`, `"teacher": {"answered_by": ...}` in
/// synthetic.jsonl).
///
/// **Logits (online losses).** The ensemble's `forward` runs the teachers and gives, per position,
/// the log of the mixture in probability space, log Σ_k w_k softmax(z_k), with weights per row of the
/// batch: the normalized job weights under `"mix"`; under `"example"` and `"field"` all weight on the
/// teacher that answered that example (`set_rows`, from synthetic.jsonl). Probability space keeps
/// each teacher's modes: where teachers disagree the student is taught both answers with their
/// weights; a log-space mixture (normalized geometric mean, a product of experts) would put the mass
/// where the teachers agree and, for teachers that each know one operation and are confidently wrong
/// on the other's, teach neither (docs/training.md, "Several teachers"). The loss terms then read
/// these log-probabilities as logits; their temperature tempers the mixture (softmax(log p / τ)), which
/// for τ = 1 is the mixture itself. Only logits are mixed: hidden states, attention maps and q|k|v are
/// not provided (`provides` has no such signal, so a loss reading them fails to compile).
///
/// The teachers are kept by pointer and must outlive the ensemble.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <vector>

#include <boost/hana/intersection.hpp>
#include <boost/hana/set.hpp>
#include <nlohmann/json.hpp>

#include "distill/detail/hash.hpp"
#include "distill/detail/rng.hpp"
#include "distill/error.hpp"
#include "distill/signals.hpp"
#include "distill/teacher.hpp"

namespace distill::teacher {

/// How a multi-teacher job picks a teacher per example (a job's `route`; see the file comment).
struct Route {
    enum class by { mix, example, field };
    by mode = by::mix;
    std::string field{};                       ///< the example field (`by::field`)
    std::map<std::string, std::string> map{};  ///< field value → teacher name (`by::field`)
    std::string fallback{};                    ///< teacher of unmapped values ("" = refused)
    std::uint64_t seed = 0;                    ///< the hash seed (`by::mix`, `by::example`)

    /// The route as JSON, canonical (part of the ensemble's fingerprint).
    nlohmann::json to_json() const {
        if (mode == by::field) {
            nlohmann::json j{{"field", field}, {"map", map}};
            if (!fallback.empty()) j["default"] = fallback;
            return j;
        }
        return {{"by", mode == by::mix ? "mix" : "example"}, {"seed", seed}};
    }
};

/// Reads a job's `route` (`path` names it in errors) for the teachers `names`: "mix", "example",
/// {"by": "mix"|"example", "seed": N}, or {"field": F, "map": {value: name}, "default": name}.
/// Throws config_error naming the key.
inline Route parse_route(const nlohmann::json& j, const std::vector<std::string>& names,
                         const std::string& path = "route") {
    Route r;
    auto known = [&](const std::string& name, const std::string& at) {
        if (std::find(names.begin(), names.end(), name) == names.end()) {
            std::string list;
            for (const auto& n : names) list += (list.empty() ? "\"" : ", \"") + n + "\"";
            throw config_error(at, "names no teacher: \"" + name + "\" (the teachers are " + list + ")");
        }
    };
    auto mode_of = [&](const std::string& s, const std::string& at) {
        if (s == "mix") return Route::by::mix;
        if (s == "example") return Route::by::example;
        throw config_error(
            at, "expected \"mix\", \"example\" or an object {\"field\": ..., \"map\": {...}}, got \"" + s + "\"");
    };
    if (j.is_null()) return r;
    if (j.is_string()) {
        r.mode = mode_of(j.get<std::string>(), path);
        return r;
    }
    if (!j.is_object())
        throw config_error(path, "expected \"mix\", \"example\" or an object {\"field\": ..., \"map\": {...}}");
    for (const auto& item : j.items())
        if (item.key() != "by" && item.key() != "seed" && item.key() != "field" && item.key() != "map" &&
            item.key() != "default")
            throw config_error(path + "." + item.key(), "unknown key (expected by, seed, field, map, default)");
    if (j.contains("field")) {
        if (j.contains("by") && j["by"] != "field")
            throw config_error(path + ".by", "must be \"field\" (or absent) when route.field is given");
        if (j.contains("seed")) throw config_error(path + ".seed", "is for \"mix\" and \"example\" routes");
        r.mode = Route::by::field;
        if (!j["field"].is_string() || j["field"].get<std::string>().empty())
            throw config_error(path + ".field", "expected the name of an example field, e.g. \"op\"");
        r.field = j["field"].get<std::string>();
        if (!j.contains("map") || !j["map"].is_object() || j["map"].empty())
            throw config_error(path + ".map", "is required: an object {field value: teacher name, ...}");
        for (const auto& item : j["map"].items()) {
            const std::string at = path + ".map." + item.key();
            if (!item.value().is_string()) throw config_error(at, "expected a teacher name (a string)");
            known(item.value().get<std::string>(), at);
            r.map[item.key()] = item.value().get<std::string>();
        }
        if (j.contains("default")) {
            if (!j["default"].is_string()) throw config_error(path + ".default", "expected a teacher name");
            r.fallback = j["default"].get<std::string>();
            known(r.fallback, path + ".default");
        }
        return r;
    }
    if (j.contains("map") || j.contains("default"))
        throw config_error(path + ".field", "is required with route.map and route.default");
    if (j.contains("by")) {
        if (!j["by"].is_string()) throw config_error(path + ".by", "expected \"mix\" or \"example\"");
        r.mode = mode_of(j["by"].get<std::string>(), path + ".by");
    }
    if (j.contains("seed")) {
        if (!j["seed"].is_number_integer() || j["seed"].get<std::int64_t>() < 0)
            throw config_error(path + ".seed", "expected an integer >= 0");
        r.seed = j["seed"].get<std::uint64_t>();
    }
    return r;
}

/// Several teachers of type `T` as one teacher (see the file comment).
template <teacher_source T>
class Ensemble {
public:
    /// One teacher with its job name and weight (> 0; normalized over the ensemble).
    struct Member {
        std::string name{};
        double weight = 1.0;
        T* teacher = nullptr;
    };

    using member_type = T;
    /// Only what can be combined: answers, the answering teacher's top-k, mixed logits.
    static constexpr auto provides = boost::hana::intersection(
        T::provides, boost::hana::make_set(signal::tokens, signal::topk_logprobs, signal::logits));
    static constexpr bool batch_invariant = teacher_batch_invariant<T>;

    /// Throws config_error ("teachers[i].name" / ".weight") for an empty or repeated name, a weight
    /// that is not finite and > 0, or no member; and for a field route naming an unknown teacher.
    Ensemble(std::vector<Member> members, Route route = {}) : members_(std::move(members)), route_(std::move(route)) {
        if (members_.empty()) throw config_error("teachers", "names no teacher");
        double total = 0;
        for (std::size_t i = 0; i < members_.size(); ++i) {
            const std::string at = "teachers[" + std::to_string(i) + "]";
            if (!members_[i].teacher) throw config_error(at, "has no teacher");
            if (members_[i].name.empty()) throw config_error(at + ".name", "must not be empty");
            for (std::size_t j = 0; j < i; ++j)
                if (members_[j].name == members_[i].name)
                    throw config_error(at + ".name", "\"" + members_[i].name + "\" is also teachers[" +
                                                         std::to_string(j) + "]'s name");
            if (!(members_[i].weight > 0) || !std::isfinite(members_[i].weight))
                throw config_error(at + ".weight",
                                   "must be a finite number > 0, got " + std::to_string(members_[i].weight));
            total += members_[i].weight;
        }
        for (const auto& m : members_) weights_.push_back(m.weight / total);
        std::vector<std::string> names;
        for (const auto& m : members_) names.push_back(m.name);
        (void)parse_route(route_.to_json(), names);  // a route built in code names known teachers too
    }

    std::size_t size() const noexcept { return members_.size(); }
    T& member(std::size_t i) { return *members_.at(i).teacher; }
    const T& member(std::size_t i) const { return *members_.at(i).teacher; }
    const std::string& member_name(std::size_t i) const { return members_.at(i).name; }
    /// The normalized weights (summing to 1), in member order.
    const std::vector<double>& weights() const noexcept { return weights_; }
    const Route& route() const noexcept { return route_; }
    /// The member called `name`, or -1.
    int index_of(const std::string& name) const {
        for (std::size_t i = 0; i < members_.size(); ++i)
            if (members_[i].name == name) return int(i);
        return -1;
    }

    /// The member that answers the example `id` with `fields` (see the file comment). Throws
    /// config_error naming route.field when the example lacks the field or its value is unmapped.
    std::size_t route_of(const std::string& id, const std::map<std::string, std::string>& fields) const {
        if (route_.mode == Route::by::field) {
            auto f = fields.find(route_.field);
            std::string name = route_.fallback;
            if (f != fields.end())
                if (auto m = route_.map.find(f->second); m != route_.map.end()) name = m->second;
            if (name.empty())
                throw config_error("route.field",
                                   f == fields.end()
                                       ? "example \"" + id + "\" has no field \"" + route_.field + "\""
                                       : "example \"" + id + "\" has " + route_.field + " \"" + f->second +
                                             "\", which route.map does not name (and there is no route.default)");
            return std::size_t(index_of(name));
        }
        // a uniform draw in [0, 1) from the id alone: the same teacher however the examples are batched
        const std::uint64_t h = detail::mix64(route_.seed, detail::fnv1a64(id));
        const double u = double(h >> 11) * 0x1.0p-53;
        double cum = 0;
        for (std::size_t i = 0; i + 1 < weights_.size(); ++i) {
            cum += weights_[i];
            if (u < cum) return i;
        }
        return weights_.size() - 1;
    }

    /// "ensemble:v1" with the route and each member's name, weight and fingerprint.
    std::string fingerprint() const {
        nlohmann::json j{{"route", route_.to_json()}, {"teachers", nlohmann::json::array()}};
        for (const auto& m : members_)
            j["teachers"].push_back(
                {{"name", m.name}, {"weight", m.weight}, {"fingerprint", m.teacher->fingerprint()}});
        return "ensemble:v1:sha256=" + detail::sha256_hex(j.dump()).substr(0, 32);
    }

    /// "ensemble(name: teacher, ...)".
    std::string name() const {
        std::string s = "ensemble(";
        for (std::size_t i = 0; i < members_.size(); ++i)
            s += (i ? ", " : "") + members_[i].name + ": " + members_[i].teacher->name();
        return s + ")";
    }

    /// The members' common tokenizer, or "mixed(...)" when they differ (then no answer tokens are
    /// reused: every answer is re-encoded with the student's tokenizer).
    std::string tokenizer_id() const {
        const std::string first = teacher_tokenizer_id(*members_[0].teacher);
        std::string all;
        bool same = true;
        for (const auto& m : members_) {
            const std::string id = teacher_tokenizer_id(*m.teacher);
            same = same && id == first;
            all += (all.empty() ? "" : ",") + id;
        }
        return same ? first : "mixed(" + all + ")";
    }
    /// The smallest of the members' vocabularies (ids every member can give).
    int vocab_size() const {
        int v = std::numeric_limits<int>::max();
        for (const auto& m : members_) v = std::min(v, teacher_vocab_size(*m.teacher));
        return v;
    }
    /// The largest batch every member takes.
    int batch_size() const {
        int b = std::numeric_limits<int>::max();
        for (const auto& m : members_) b = std::min(b, teacher_batch_size(*m.teacher));
        return b;
    }
    /// The first member's chat template (the student's tokenizer when the job names none).
    decltype(auto) chat_template() const requires requires(const T& t) { t.chat_template(); }
    { return members_[0].teacher->chat_template(); }

    /// Each request goes to its routed member (in input order within each member); the answer
    /// carries the member's name in `answered_by`.
    void generate(std::span<const Request> requests, const Sampling& sampling, const response_sink& sink) {
        std::vector<std::vector<std::size_t>> of(members_.size());
        for (std::size_t i = 0; i < requests.size(); ++i) of[route_of(requests[i].id, requests[i].fields)].push_back(i);
        for (std::size_t k = 0; k < members_.size(); ++k) {
            if (of[k].empty()) continue;
            std::vector<Request> sub;
            for (std::size_t i : of[k]) sub.push_back(requests[i]);
            members_[k].teacher->generate(std::span<const Request>(sub), sampling, [&](std::size_t j, Response&& r) {
                if (j >= of[k].size())
                    throw error("teacher " + members_[k].name + " answered request " + std::to_string(j) +
                                ", out of range");
                r.answered_by = members_[k].name;
                sink(of[k][j], std::move(r));
            });
        }
    }

    // ---- online: mixed logits --------------------------------------------------------------------

    /// The teacher whose distribution row b of the next `forward` takes (a member index), or -1 for
    /// the weighted mixture of all; rows past `rows.size()` mix. The finetune stage sets it per batch
    /// from the answers' `answered_by` under the "example" and "field" routes.
    void set_rows(std::span<const int> rows) { rows_.assign(rows.begin(), rows.end()); }

    /// Teacher-forced forward of every member a row needs, then per position log Σ_k w_k softmax(z_k)
    /// over the first `vocab_size()` columns (each softmax over its member's own columns). Host memory.
    void forward(const std::int32_t* tokens, int B, int T_) requires online_teacher<T> {
        static_assert(T::device_type::memory == memory_space::host,
                      "teacher::Ensemble mixes logits on the host: its teachers must run on a host device");
        const std::size_t K = members_.size();
        std::vector<std::vector<double>> w(std::size_t(B), weights_);  // per row, per member
        for (int b = 0; b < B; ++b) {
            const int r = std::size_t(b) < rows_.size() ? rows_[std::size_t(b)] : -1;
            if (r >= 0) {
                if (std::size_t(r) >= K) throw error("ensemble: row teacher " + std::to_string(r) + " out of range");
                std::fill(w[std::size_t(b)].begin(), w[std::size_t(b)].end(), 0.0);
                w[std::size_t(b)][std::size_t(r)] = 1.0;
            }
        }
        int V = std::numeric_limits<int>::max();
        for (const auto& m : members_) V = std::min(V, int(m.teacher->network().config().vocab_size));
        mixed_.assign(std::size_t(B) * std::size_t(T_) * std::size_t(V), -std::numeric_limits<float>::infinity());
        std::vector<double> acc(mixed_.size(), -std::numeric_limits<double>::infinity());
        std::vector<bool> touched(std::size_t(B), false);
        for (std::size_t k = 0; k < K; ++k) {
            bool used = false;
            for (int b = 0; b < B; ++b) used = used || w[std::size_t(b)][k] > 0;
            if (!used) continue;
            T& t = *members_[k].teacher;
            t.forward(tokens, B, T_);
            const auto logits = t.logits();
            const std::int64_t Vk = logits.size(2);
            const auto host =
                ::distill::detail::read_on_host(t.network().device(), logits.data(), std::size_t(logits.numel()));
            const float* z = &host[0];
            for (int b = 0; b < B; ++b) {
                const double wk = w[std::size_t(b)][k];
                if (!(wk > 0)) continue;
                const double lw = std::log(wk);
                for (int p = 0; p < T_; ++p) {
                    const float* row = z + (std::int64_t(b) * T_ + p) * Vk;
                    mix_row(row, Vk, V, lw, acc.data() + (std::size_t(b) * std::size_t(T_) + std::size_t(p)) * V);
                }
            }
        }
        for (std::size_t i = 0; i < mixed_.size(); ++i) mixed_[i] = float(acc[i]);
        B_ = B;
        T__ = T_;
        V_ = V;
        rows_.clear();  // set_rows holds for one forward
    }

    /// The mixed log-probabilities of the last `forward`, (B, T, vocab) on the host.
    Tensor<float> logits() const { return Tensor<float>(const_cast<float*>(mixed_.data()), {B_, T__, V_}); }
    /// Only logits are mixed (see the file comment).
    bool keeps_activations() const noexcept { return false; }
    int hidden_state_count() const noexcept { return 0; }
    Tensor<float> hidden_state(int) const { throw error("teacher::Ensemble mixes logits only"); }
    Tensor<float> attention(int) const { throw error("teacher::Ensemble mixes logits only"); }
    Tensor<float> qkv(int) const { throw error("teacher::Ensemble mixes logits only"); }
    using scalar_type = float;

    /// acc[v] = logaddexp(acc[v], lw + z[v] - logsumexp(z)) for v < V (z has Vk ≥ V columns): one
    /// member's weighted log-probabilities added into the running log-mixture, stably.
    static void mix_row(const float* z, std::int64_t Vk, std::int64_t V, double lw, double* acc) {
        double mx = -std::numeric_limits<double>::infinity();
        for (std::int64_t v = 0; v < Vk; ++v) mx = std::max(mx, double(z[v]));
        double s = 0;
        for (std::int64_t v = 0; v < Vk; ++v) s += std::exp(double(z[v]) - mx);
        const double lse = mx + std::log(s);
        for (std::int64_t v = 0; v < V; ++v) {
            const double a = lw + double(z[v]) - lse, b = acc[v];
            if (std::isinf(b) && b < 0)
                acc[v] = a;
            else
                acc[v] = std::max(a, b) + std::log1p(std::exp(-std::abs(a - b)));
        }
    }

private:
    std::vector<Member> members_;
    Route route_;
    std::vector<double> weights_{};
    std::vector<int> rows_{};
    std::vector<float> mixed_{};
    std::int64_t B_ = 0, T__ = 0, V_ = 0;
};

}  // namespace distill::teacher

namespace distill::detail {
template <class T>
inline constexpr bool is_ensemble = false;
template <class T>
inline constexpr bool is_ensemble<teacher::Ensemble<T>> = true;
}  // namespace distill::detail
