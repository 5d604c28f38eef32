// Must not compile: CosineEmbedding needs the teacher's pooled sentence embeddings, and this teacher
// (a text-generating one) does not provide them. tests/compile_fail/run_compile_fail.cmake pins the
// first error line: "Loss: distill::loss::CosineEmbedding needs pooled, which the teacher does not
// provide; see docs/losses.md", and checks that the diagnostic names the teacher. Built with
// DISTILL_COMPILE_FAIL_CONTROL, the teacher also provides pooled embeddings and the file must
// compile, so the failure is known to come from the check and nothing else.

#include <boost/hana/set.hpp>

#include "distill/loss.hpp"
#include "distill/loss/cosine_embedding.hpp"
#include "distill/loss/embedding_mse.hpp"
#include "distill/loss/sum.hpp"

struct text_teacher {
#if defined(DISTILL_COMPILE_FAIL_CONTROL)
    static constexpr auto provides = boost::hana::make_set(distill::signal::tokens, distill::signal::pooled);
#else
    static constexpr auto provides = boost::hana::make_set(distill::signal::tokens);
#endif
};

int main() {
    using Loss = distill::loss::Sum<distill::loss::CosineEmbedding, distill::loss::EmbeddingMSE>;
    constexpr bool checked = distill::loss::check_needs<text_teacher, Loss>();
    return checked ? 0 : 1;
}
