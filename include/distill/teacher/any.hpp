#pragma once
/// @file teacher/any.hpp
/// `teacher::Any`: any teacher seen through its answers — what lets one job combine teachers of
/// different kinds (a model running here, an API endpoint, a cache) as a
/// `teacher::Ensemble<teacher::Any>`. The teacher's type is erased behind one virtual call per
/// `generate` (a batch of requests, where an answer costs milliseconds to seconds), so text-level
/// distillation draws answers from each. What cannot cross the erasure is dropped: an `Any` provides
/// `signal::tokens` only — no logits, hidden states or top-k log-probabilities, whose losses compare
/// distributions column by column and need each teacher's type (several in-process teachers mix their
/// logits in a `teacher::Ensemble` of their own type instead).

#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#include <boost/hana/set.hpp>

#include "distill/signals.hpp"
#include "distill/teacher.hpp"

namespace distill::teacher {

/// A teacher of any `teacher_source` type, by its answers alone (see the file comment).
class Any {
public:
    static constexpr auto provides = boost::hana::make_set(signal::tokens);

    /// Owns `teacher`.
    template <teacher_source T>
    explicit Any(std::unique_ptr<T> teacher) : self_(std::make_unique<Holder<T>>(std::move(teacher))) {
        if (!static_cast<Holder<T>&>(*self_).teacher) throw error("teacher::Any: no teacher given");
    }

    /// The wrapped teacher's fingerprint: its answers are the same whether it is wrapped or not.
    std::string fingerprint() const { return self_->fingerprint(); }
    std::string name() const { return self_->name(); }
    void generate(std::span<const Request> requests, const Sampling& sampling, const response_sink& sink) {
        self_->generate(requests, sampling, sink);
    }
    /// The tokenizer the wrapped teacher's answer ids belong to ("" when unknown: text only), which
    /// decides whether the student reuses them or re-encodes the text.
    std::string tokenizer_id() const { return self_->tokenizer_id(); }
    int vocab_size() const { return self_->vocab_size(); }
    int batch_size() const { return self_->batch_size(); }

private:
    struct Concept {
        virtual ~Concept() = default;
        virtual std::string fingerprint() const = 0;
        virtual std::string name() const = 0;
        virtual void generate(std::span<const Request>, const Sampling&, const response_sink&) = 0;
        virtual std::string tokenizer_id() const = 0;
        virtual int vocab_size() const = 0;
        virtual int batch_size() const = 0;
    };
    template <class T>
    struct Holder final : Concept {
        explicit Holder(std::unique_ptr<T> t) : teacher(std::move(t)) {}
        std::string fingerprint() const override { return teacher->fingerprint(); }
        std::string name() const override { return teacher->name(); }
        void generate(std::span<const Request> requests, const Sampling& sampling, const response_sink& sink) override {
            teacher->generate(requests, sampling, sink);
        }
        std::string tokenizer_id() const override { return teacher_tokenizer_id(*teacher); }
        int vocab_size() const override { return teacher_vocab_size(*teacher); }
        int batch_size() const override { return teacher_batch_size(*teacher); }
        std::unique_ptr<T> teacher;
    };
    std::unique_ptr<Concept> self_;
};

static_assert(teacher_source<Any>);

}  // namespace distill::teacher
