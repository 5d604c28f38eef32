#pragma once
/// @file callable.hpp
/// `teacher::Callable<F>`: any user function as a teacher — a rule-based oracle, a solver with exact
/// answers, another library's model. It provides answer text only.

#include <concepts>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/hana/set.hpp>

#include "distill/detail/hash.hpp"
#include "distill/signals.hpp"
#include "distill/teacher.hpp"

namespace distill::teacher {

/// A teacher whose answers come from `F`, called as one of (tried in this order):
/// `Response f(const Request&, const Sampling&)`, `std::string f(const Request&)`,
/// `std::string f(std::span<const Message>)` or `std::string f(std::string_view last_user_turn)`.
/// An exception of the `distill::error` family from `f` fails that request (counted by the
/// generate stage); any other exception propagates.
/// @tparam F the function object type; it must be deterministic for a resumed run to equal an
///         uninterrupted one.
template <class F>
class Callable {
public:
    static constexpr auto provides = boost::hana::make_set(signal::tokens);
    /// Each request is answered on its own.
    static constexpr bool batch_invariant = true;

    /// `name` identifies the function in logs; `version` goes into the fingerprint — change it when
    /// the function's answers change, so stale generated data is refused.
    Callable(F f, std::string name, std::string version = "1")
        : f_(std::move(f)), name_(std::move(name)), version_(std::move(version)) {}

    std::string fingerprint() const { return "callable:" + name_ + ";version=" + version_; }
    std::string name() const { return "callable:" + name_; }
    int batch_size() const noexcept { return 64; }

    /// Calls the function once per request, in order.
    void generate(std::span<const Request> requests, const Sampling& sampling, const response_sink& sink) {
        for (std::size_t i = 0; i < requests.size(); ++i) {
            Response r;
            try {
                r = call(requests[i], sampling);
            } catch (const error& e) {
                r = Response::failure(e.what());
            }
            sink(i, std::move(r));
        }
    }

private:
    Response call(const Request& q, const Sampling& s) {
        if constexpr (std::is_invocable_r_v<Response, F&, const Request&, const Sampling&>) {
            return f_(q, s);
        } else {
            Response r;
            if constexpr (std::is_invocable_r_v<std::string, F&, const Request&>) {
                r.text = f_(q);
            } else if constexpr (std::is_invocable_r_v<std::string, F&, std::span<const Message>>) {
                r.text = f_(std::span<const Message>(q.messages));
            } else {
                static_assert(std::is_invocable_r_v<std::string, F&, std::string_view>,
                              "teacher::Callable: F must be callable as Response(const Request&, const Sampling&), "
                              "std::string(const Request&), std::string(std::span<const Message>) or "
                              "std::string(std::string_view)");
                std::string_view last;
                for (const auto& m : q.messages)
                    if (m.role == "user") last = m.content;
                r.text = f_(last);
            }
            r.finish = finish_reason::stop;
            return r;
        }
    }

    F f_;
    std::string name_;
    std::string version_;
};

}  // namespace distill::teacher
