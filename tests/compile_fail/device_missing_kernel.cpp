// Must not compile: a user's device that provides every optimizer kernel but `adam_update`, used
// with optim::AdamW. tests/compile_fail/run_compile_fail.cmake pins the first error line, the
// device contract's "device lacks kernel: adam_update(...)" (include/distill/device.hpp), and checks
// that the diagnostic names the device. Built with DISTILL_COMPILE_FAIL_CONTROL, the device also has
// `adam_update` and the file must compile, so the failure is known to come from the check.

#include <utility>
#include <vector>

#include "distill/device/cpu.hpp"
#include "distill/optim/adam.hpp"

namespace my {

struct Incomplete : distill::device::HostMemory {  // host memory, 64-byte aligned
    static constexpr const char* name = "incomplete";
};

// The optimizer kernels, each run by device::Cpu on one thread.
#define MY_FORWARD(kernel)                                                                    \
    template <class... Args>                                                                  \
    auto kernel(const Incomplete&, Args&&... args) {                                          \
        return distill::device::kernel(distill::device::Cpu(1), std::forward<Args>(args)...); \
    }
#if defined(DISTILL_COMPILE_FAIL_CONTROL)
MY_FORWARD(adam_update)
#endif
MY_FORWARD(sgd_update)
MY_FORWARD(sum_of_squares)
MY_FORWARD(scale_in_place)
#undef MY_FORWARD

}  // namespace my

int main() {
    std::vector<float> value(4, 1.0f), grad(4, 0.5f);
    std::vector<distill::Parameter<float>> params{{"w", distill::Tensor<float>(value.data(), {4}),
                                                   distill::Tensor<float>(grad.data(), {4}),
                                                   distill::parameter_kind::weight}};
    distill::optim::AdamW<float, my::Incomplete> opt(params);
    opt.step(1e-3);
    return value[0] < 1.0f ? 0 : 1;
}
