#pragma once
/// @file reversal.hpp
/// A small deterministic sequence task for smoke tests and the first demo: reverse a short string.
/// Each example is `<bos> s <sep> reverse(s) <eos>` in byte-tokenizer ids; only the positions that
/// predict the answer (reverse(s) and <eos>) count in the loss, the prompt and padding are masked.

#include <cstdint>
#include <vector>

#include "distill/data/byte_tokenizer.hpp"
#include "distill/detail/rng.hpp"

namespace distill::data {

/// A batch of token ids (B,T) and next-token targets (B,T), -1 where masked.
struct TokenBatch {
    int batch = 0, length = 0;
    std::vector<std::int32_t> tokens, targets;
};

/// `batch` reversal examples of strings of `min_len`..`max_len` letters from the first `alphabet`
/// lowercase letters; sequences are right-padded with <pad> to length 2 * max_len + 3.
inline TokenBatch make_reversal_batch(Rng& rng, int batch, int min_len, int max_len, int alphabet = 8) {
    TokenBatch b;
    b.batch = batch;
    b.length = 2 * max_len + 3;
    b.tokens.assign(std::size_t(batch) * b.length, ByteTokenizer::pad);
    b.targets.assign(b.tokens.size(), -1);
    for (int i = 0; i < batch; ++i) {
        const int len = min_len + static_cast<int>(rng.below(std::uint64_t(max_len - min_len + 1)));
        std::vector<std::int32_t> s(len);
        for (auto& c : s) c = 'a' + static_cast<std::int32_t>(rng.below(std::uint64_t(alphabet)));
        std::vector<std::int32_t> seq{ByteTokenizer::bos};
        seq.insert(seq.end(), s.begin(), s.end());
        seq.push_back(ByteTokenizer::end_of_turn);  // the separator
        seq.insert(seq.end(), s.rbegin(), s.rend());
        seq.push_back(ByteTokenizer::eos);
        std::int32_t* tok = b.tokens.data() + std::size_t(i) * b.length;
        std::int32_t* tgt = b.targets.data() + std::size_t(i) * b.length;
        for (std::size_t t = 0; t < seq.size(); ++t) tok[t] = seq[t];
        // position t predicts token t+1; the answer starts after the separator at index len+1
        for (int t = len + 1; t + 1 < static_cast<int>(seq.size()); ++t) tgt[t] = seq[t + 1];
    }
    return b;
}

}  // namespace distill::data
