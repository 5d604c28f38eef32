// docs/devices.md, "Writing your own device": a device that counts kernel calls and runs each on
// the CPU device. Kernels are found by argument-dependent lookup, so the library is not touched.
#include <distill/distill.hpp>

#include <cstdio>
#include <map>
#include <string>

namespace my {

struct Counting : distill::device::HostMemory {  // host memory, 64-byte aligned
    static constexpr const char* name = "counting";
    int threads() const { return 1; }
};

inline std::map<std::string, long> calls;

// Every kernel: count it, then run the CPU device's version.
#define MY_FORWARD(kernel)                                                                    \
    template <class... Args>                                                                  \
    auto kernel(const Counting&, Args&&... args) {                                            \
        ++calls[#kernel];                                                                     \
        return distill::device::kernel(distill::device::Cpu(1), std::forward<Args>(args)...); \
    }
MY_FORWARD(gemm)
MY_FORWARD(gemm_strided_batched)
MY_FORWARD(add_bias)
MY_FORWARD(bias_grad)
MY_FORWARD(add)
MY_FORWARD(accumulate)
MY_FORWARD(layernorm_forward)
MY_FORWARD(layernorm_backward)
MY_FORWARD(gelu_forward)
MY_FORWARD(gelu_backward)
MY_FORWARD(rmsnorm_forward)
MY_FORWARD(rmsnorm_backward)
MY_FORWARD(swiglu_forward)
MY_FORWARD(swiglu_backward)
MY_FORWARD(rope_rotate)
MY_FORWARD(causal_softmax_forward)
MY_FORWARD(causal_softmax_backward)
MY_FORWARD(embedding_forward)
MY_FORWARD(embedding_backward)
MY_FORWARD(cross_entropy_forward_backward)
#undef MY_FORWARD

}  // namespace my

int main() {
    static_assert(distill::device_policy<my::Counting>);
    const distill::student::TransformerConfig cfg{
        .vocab_size = 263, .context_length = 11, .d_model = 32, .n_layers = 2, .n_heads = 2, .d_ff = 64};
    distill::student::Transformer<float, my::Counting> counted(cfg, 4);
    distill::student::Transformer<float, distill::device::Cpu> cpu(cfg, 4, distill::device::Cpu(1));
    counted.init(1);
    cpu.init(1);
    distill::Rng rng(2);
    auto batch = distill::data::make_reversal_batch(rng, 4, 2, 4);
    counted.forward(batch.tokens.data(), 4, batch.length);
    cpu.forward(batch.tokens.data(), 4, batch.length);
    const float a = counted.cross_entropy(batch.targets.data()), b = cpu.cross_entropy(batch.targets.data());
    counted.backward();
    for (const auto& [kernel, n] : my::calls) std::printf("%-32s %ld calls\n", kernel.c_str(), n);
    std::printf("loss %.6f on the counting device, %.6f on device::Cpu\n", a, b);
    return a == b ? 0 : 1;
}
