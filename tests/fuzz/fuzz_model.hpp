#pragma once
// The small model, extra parameters and optimizer that the checkpoint fuzz target restores into and
// that the seed generator saves, so seeds match what the target expects.

#include <cstdint>
#include <span>
#include <vector>

#include "distill/detail/rng.hpp"
#include "distill/device/cpu.hpp"
#include "distill/optim/adam.hpp"
#include "distill/optim/common.hpp"
#include "distill/parameter.hpp"
#include "distill/student/transformer.hpp"
#include "distill/tensor.hpp"

namespace distill::fuzz {

inline student::TransformerConfig tiny_config() {
    return {.vocab_size = 16, .context_length = 4, .d_model = 4, .n_layers = 1, .n_heads = 1, .d_ff = 4};
}

/// A 224-parameter transformer, a 3-element extra owner ("proj.w") and AdamW over both.
struct TinyTrained {
    student::Transformer<float, device::Cpu> model{tiny_config(), 1, device::Cpu(1)};
    std::vector<float> extra_value = std::vector<float>(3, 0.5f), extra_grad = std::vector<float>(3, 0.0f);
    std::vector<Parameter<float>> extra = {{"proj.w", Tensor<float>(extra_value.data(), {3}),
                                            Tensor<float>(extra_grad.data(), {3}), parameter_kind::weight}};
    optim::AdamW<float, device::Cpu> opt{
        optim::gather(model.parameters(), std::span<const Parameter<float>>(extra)), {}, device::Cpu(1)};

    TinyTrained() { model.init(1); }
    std::span<const Parameter<float>> extra_params() const { return extra; }

    /// Two optimizer steps with random gradients, so the state is not all zeros.
    void train(std::uint64_t seed) {
        Rng rng(seed);
        for (int s = 0; s < 2; ++s) {
            for (const auto& p : opt.parameters())
                for (std::int64_t i = 0; i < p.grad.numel(); ++i) p.grad.data()[i] = static_cast<float>(rng.normal());
            opt.step(1e-2);
        }
    }
};

}  // namespace distill::fuzz
