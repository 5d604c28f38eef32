#pragma once
// The small tasks the training tests (and the SIGKILL helper program, which must build exactly the
// same run) train on.

#include <cstdint>
#include <string>
#include <vector>

#include "distill/data/dataset.hpp"
#include "distill/detail/rng.hpp"
#include "distill/student/transformer.hpp"

namespace distill::testing {

/// A task on which the validation loss provably turns up: every target is drawn uniformly from the
/// same k = 8 tokens, independently of everything, in training and validation alike. The best
/// possible validation predictor is the uniform distribution over those k tokens (loss ln 8, by
/// Gibbs' inequality); the model first learns that marginal (validation loss falls from about
/// ln 16 towards ln 8), then memorizes the training sequences' noise, which makes its predictions
/// input-dependent and so, on independent validation targets, strictly worse: the loss turns up.
struct NoiseTask {
    static constexpr int vocab = 16, length = 8, k = 8;
    data::SequenceDataset train{0, length}, validation{0, length};

    explicit NoiseTask(int train_examples = 24, int validation_examples = 32, std::uint64_t seed = 5) {
        Rng rng(seed);
        auto fill = [&](data::SequenceDataset& d, int n, int len_jitter) {
            for (int i = 0; i < n; ++i) {
                const int len = length - static_cast<int>(rng.below(static_cast<std::uint64_t>(len_jitter + 1)));
                std::vector<std::int32_t> tokens{1};  // a fixed <bos>
                for (int t = 1; t < len; ++t) tokens.push_back(2 + static_cast<std::int32_t>(rng.below(k)));
                std::vector<std::uint8_t> mask(tokens.size(), 1);
                mask[0] = 0;
                d.add(tokens, mask);
            }
        };
        fill(train, train_examples, 2);  // ragged lengths: batches are padded
        fill(validation, validation_examples, 0);
    }

    static student::TransformerConfig model_config() {
        return {.vocab_size = vocab, .context_length = length, .d_model = 32, .n_layers = 1, .n_heads = 2, .d_ff = 64};
    }
};

}  // namespace distill::testing
