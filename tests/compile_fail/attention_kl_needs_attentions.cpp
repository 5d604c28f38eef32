// Must not compile: AttentionKL needs the teacher's attention maps, and this teacher (like an HTTP
// API teacher) does not provide them. tests/compile_fail/run_compile_fail.cmake pins the first
// error line: "Loss: distill::loss::AttentionKL needs attentions, which the teacher does not
// provide; see docs/losses.md", and checks that the diagnostic names the teacher. Built with
// DISTILL_COMPILE_FAIL_CONTROL, the teacher also provides attentions and the file must compile,
// so the failure is known to come from the check and nothing else.

#include <boost/hana/set.hpp>

#include "distill/loss.hpp"
#include "distill/loss/attention_kl.hpp"
#include "distill/loss/soft_kl.hpp"
#include "distill/loss/sum.hpp"

struct minimal_teacher {
#if defined(DISTILL_COMPILE_FAIL_CONTROL)
    static constexpr auto provides =
        boost::hana::make_set(distill::signal::tokens, distill::signal::logits, distill::signal::attentions);
#else
    static constexpr auto provides = boost::hana::make_set(distill::signal::tokens, distill::signal::logits);
#endif
};

int main() {
    using Loss = distill::loss::Sum<distill::loss::SoftKL, distill::loss::AttentionKL>;
    constexpr bool checked = distill::loss::check_needs<minimal_teacher, Loss>();
    return checked ? 0 : 1;
}
