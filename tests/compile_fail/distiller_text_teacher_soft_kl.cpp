// Must not compile: a Distiller whose loss reads the teacher's logits (SoftKL) over a teacher that
// gives answers only (a cache of text answers, like an HTTP API teacher). The first error line is
// pinned by tests/CMakeLists.txt: "Loss: distill::loss::SoftKL needs logits, which the teacher does
// not provide; see docs/losses.md". Built with DISTILL_COMPILE_FAIL_CONTROL the teacher is an
// in-process model and the file must compile, so the failure is known to come from the check.

#include "distill/distill.hpp"

#if defined(DISTILL_COMPILE_FAIL_CONTROL)
using Teacher = distill::teacher::Model<distill::student::Transformer>;
#else
using Teacher = distill::teacher::Cache<false>;
#endif

using D = distill::Distiller<Teacher, distill::student::Transformer,
                             distill::loss::Sum<distill::loss::SoftKL, distill::loss::HardCE>, distill::optim::AdamW,
                             distill::device::Cpu>;

int main() {
    return sizeof(D) > 0 ? 0 : 1;
}
