// Builds against the installed distill and trains a tiny student for a few steps: if the package
// config or its dependencies are wrong, this does not build or does not run.
#include <distill/distill.hpp>

#include <cstdio>

int main() {
    using namespace distill;
    student::Transformer<float, device::Cpu> m({.vocab_size = 263, .context_length = 11, .d_model = 32, .n_layers = 1,
                                                .n_heads = 2, .d_ff = 64},
                                               8);
    m.init(1);
    Rng rng(2);
    float first = 0, last = 0;
    for (int step = 0; step < 30; ++step) {
        auto batch = data::make_reversal_batch(rng, 8, 2, 4);
        m.forward(batch.tokens.data(), 8, batch.length);
        last = m.cross_entropy(batch.targets.data());
        if (step == 0) first = last;
        m.zero_grad();
        m.backward();
        for (std::size_t i = 0; i < m.arena_size(); ++i) m.parameter_data()[i] -= 0.3f * m.gradient_data()[i];
    }
    std::printf("distill %s consumer: loss %.3f -> %.3f\n", version(), first, last);
    return last < first ? 0 : 1;
}
