// Must not compile: a user's own loss term needs a user-defined teacher signal (a reward model's
// per-position scores, `my::reward_t`, declared here and not by the library), and the teacher
// does not provide it. The needs ⊆ provides check compares the Hana sets element by element, so
// a signal the library has never heard of is checked like its own. tests/CMakeLists.txt pins the
// first error line: "Loss: my::RewardMatch needs a signal that the teacher does not provide (the
// note below names the signal and the teacher); see docs/losses.md", and checks that the
// diagnostic names the signal type and the teacher. Built with DISTILL_COMPILE_FAIL_CONTROL the
// teacher also provides the reward and the file must compile, so the failure is known to come
// from the check and nothing else.

#include <boost/hana/adapt_struct.hpp>
#include <boost/hana/set.hpp>
#include <boost/hana/type.hpp>

#include "distill/loss.hpp"
#include "distill/loss/soft_kl.hpp"
#include "distill/loss/sum.hpp"

namespace my {

/// A teacher signal the library does not know: per-position scores of a reward model.
struct reward_t {
    static constexpr const char* name = "reward";
};
inline constexpr auto reward = boost::hana::type_c<reward_t>;

struct RewardMatchConfig {
    double scale = 1.0;
};

/// A user's term that reads the teacher's logits and its rewards (the body is beside the point).
class RewardMatch {
public:
    using config = RewardMatchConfig;
    static constexpr char name[] = "reward_match";
    static constexpr auto needs = boost::hana::make_set(distill::signal::logits, reward);

    RewardMatch(const config& = {}, const distill::loss::dims& = {}) {}

    template <class T, class Device>
    T operator()(const distill::loss::context<T, Device>&) {
        return T(0);
    }

    DISTILL_LOSS_TERM_CHECKS(my::RewardMatch)
};

/// An in-process teacher with logits, and (in the control build) the rewards.
struct logits_teacher {
#if defined(DISTILL_COMPILE_FAIL_CONTROL)
    static constexpr auto provides = boost::hana::make_set(distill::signal::tokens, distill::signal::logits, reward);
#else
    static constexpr auto provides = boost::hana::make_set(distill::signal::tokens, distill::signal::logits);
#endif
};

}  // namespace my

BOOST_HANA_ADAPT_STRUCT(my::RewardMatchConfig, scale);

int main() {
    using Loss = distill::loss::Sum<distill::loss::SoftKL, my::RewardMatch>;
    constexpr bool checked = distill::loss::check_needs<my::logits_teacher, Loss>();
    return checked ? 0 : 1;
}
