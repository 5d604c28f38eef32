#pragma once
/// @file dataset.hpp
/// `data::SequenceDataset`: token sequences with a per-token loss mask (prompt tokens are context, not
/// targets), batched with right padding into (B,T) tokens and next-token targets with -1 where a
/// position does not count, and `shuffled_order`, the per-epoch permutation the training loop uses.

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "distill/detail/rng.hpp"
#include "distill/error.hpp"

namespace distill::data {

/// One training sequence: token ids and, per token, whether predicting it counts in the loss.
struct Sequence {
    std::vector<std::int32_t> tokens{};
    std::vector<std::uint8_t> loss_mask{};  ///< 1: token t is a target (predicted at position t-1)
};

/// A batch of `batch` sequences right-padded to `length`: row-major (B,T) `tokens`, and `targets`
/// where targets[b,t] = tokens[b,t+1] if that token is a target, else -1 (prompt, padding, last
/// position). `indices` are the dataset rows, for losses that look up per-example data (a teacher
/// cache).
struct Batch {
    int batch = 0;
    int length = 0;
    std::vector<std::int32_t> tokens{};
    std::vector<std::int32_t> targets{};
    std::vector<std::int64_t> indices{};
    std::int64_t loss_tokens = 0;  ///< targets that are not -1
    std::int64_t real_tokens = 0;  ///< tokens that are not padding
    /// Where the training loop drew it: the optimizer step (0-based) and the micro-batch within it;
    /// -1 outside a training step. A loss that draws random numbers (on-policy sampling) seeds them
    /// from these, so a resumed run draws what the uninterrupted one did.
    std::int64_t step = -1;
    int micro = 0;
};

/// An in-memory list of `Sequence`s, validated as they are added.
class SequenceDataset {
public:
    /// `pad_id` fills short rows of a batch; `max_length` (> 0) is the longest sequence accepted
    /// (the student's context length), 0 for no limit.
    explicit SequenceDataset(std::int32_t pad_id = 0, int max_length = 0) : pad_(pad_id), limit_(max_length) {
        if (max_length < 0) throw config_error("max_length", "must be >= 0, got " + std::to_string(max_length));
    }

    /// Adds a sequence. Throws shape_error naming the example's index when it is empty, longer than
    /// `max_length`, holds a negative id, has a mask of another length, or marks token 0 as a target
    /// (nothing precedes it to predict it).
    void add(std::vector<std::int32_t> tokens, std::vector<std::uint8_t> loss_mask) {
        const std::string where = "dataset example " + std::to_string(rows_.size()) + ": ";
        if (tokens.empty()) throw shape_error(where + "has no tokens");
        if (limit_ > 0 && tokens.size() > static_cast<std::size_t>(limit_))
            throw shape_error(where + "has " + std::to_string(tokens.size()) + " tokens, more than max_length " +
                              std::to_string(limit_) + " (truncate it or raise the student's context_length)");
        if (loss_mask.size() != tokens.size())
            throw shape_error(where + "loss_mask has " + std::to_string(loss_mask.size()) + " entries for " +
                              std::to_string(tokens.size()) + " tokens");
        if (loss_mask[0])
            throw shape_error(where + "loss_mask[0] is set, but no position precedes token 0 to predict it");
        for (std::size_t t = 0; t < tokens.size(); ++t)
            if (tokens[t] < 0)
                throw shape_error(where + "token " + std::to_string(t) + " is negative (" + std::to_string(tokens[t]) +
                                  ")");
        longest_ = std::max<int>(longest_, static_cast<int>(tokens.size()));
        rows_.push_back({std::move(tokens), std::move(loss_mask)});
    }

    /// Adds `prompt` (context only; at least one token, e.g. <bos>) followed by `response` (targets).
    void add_prompt_response(std::span<const std::int32_t> prompt, std::span<const std::int32_t> response) {
        if (prompt.empty())
            throw shape_error("dataset example " + std::to_string(rows_.size()) +
                              ": the prompt needs at least one token (e.g. <bos>)");
        std::vector<std::int32_t> tokens(prompt.begin(), prompt.end());
        tokens.insert(tokens.end(), response.begin(), response.end());
        std::vector<std::uint8_t> mask(tokens.size(), 0);
        std::fill(mask.begin() + static_cast<std::ptrdiff_t>(prompt.size()), mask.end(), std::uint8_t{1});
        add(std::move(tokens), std::move(mask));
    }

    /// Number of examples.
    std::size_t size() const noexcept { return rows_.size(); }
    /// Whether it holds no example.
    bool empty() const noexcept { return rows_.empty(); }
    /// Example `i` (throws std::out_of_range past the end).
    const Sequence& operator[](std::size_t i) const { return rows_.at(i); }
    /// The id that pads short rows of a batch.
    std::int32_t pad_id() const noexcept { return pad_; }
    /// Tokens of the longest example.
    int longest() const noexcept { return longest_; }

    /// FNV-1a 64 over every length, token and mask byte: two datasets with the same fingerprint hold
    /// the same examples in the same order. Checkpoints record it to refuse resuming on other data.
    std::uint64_t fingerprint() const noexcept {
        std::uint64_t h = 0xcbf29ce484222325ULL;
        auto mix = [&](const void* p, std::size_t n) {
            const auto* b = static_cast<const unsigned char*>(p);
            for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ULL;
        };
        for (const auto& r : rows_) {
            const std::uint64_t n = r.tokens.size();
            mix(&n, sizeof n);
            mix(r.tokens.data(), r.tokens.size() * sizeof(std::int32_t));
            mix(r.loss_mask.data(), r.loss_mask.size());
        }
        return h;
    }

    /// Fills `out` with the rows `indices`, padded to the longest of them. Reuses `out`'s buffers, so a
    /// training loop batches without allocating once the buffers have grown.
    void make_batch(std::span<const std::int64_t> indices, Batch& out) const {
        int length = 1;
        for (std::int64_t i : indices) length = std::max<int>(length, static_cast<int>(row(i).tokens.size()));
        out.batch = static_cast<int>(indices.size());
        out.length = length;
        const std::size_t n = indices.size() * static_cast<std::size_t>(length);
        out.tokens.assign(n, pad_);
        out.targets.assign(n, -1);
        out.indices.assign(indices.begin(), indices.end());
        out.loss_tokens = 0;
        out.real_tokens = 0;
        for (std::size_t b = 0; b < indices.size(); ++b) {
            const Sequence& s = row(indices[b]);
            std::int32_t* tok = out.tokens.data() + b * static_cast<std::size_t>(length);
            std::int32_t* tgt = out.targets.data() + b * static_cast<std::size_t>(length);
            std::copy(s.tokens.begin(), s.tokens.end(), tok);
            for (std::size_t t = 0; t + 1 < s.tokens.size(); ++t)
                if (s.loss_mask[t + 1]) {
                    tgt[t] = s.tokens[t + 1];
                    ++out.loss_tokens;
                }
            out.real_tokens += static_cast<std::int64_t>(s.tokens.size());
        }
    }

private:
    const Sequence& row(std::int64_t i) const {
        if (i < 0 || static_cast<std::size_t>(i) >= rows_.size())
            throw shape_error("dataset: index " + std::to_string(i) + " outside [0, " + std::to_string(rows_.size()) +
                              ")");
        return rows_[static_cast<std::size_t>(i)];
    }

    std::vector<Sequence> rows_{};
    std::int32_t pad_;
    int limit_;
    int longest_ = 0;
};

/// A uniformly random permutation of [0, n) (Fisher–Yates driven by `rng`, so it is the same on every
/// platform for the same generator state).
inline std::vector<std::int64_t> shuffled_order(std::size_t n, Rng& rng) {
    std::vector<std::int64_t> order(n);
    for (std::size_t i = 0; i < n; ++i) order[i] = static_cast<std::int64_t>(i);
    for (std::size_t i = n; i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
    return order;
}

}  // namespace distill::data
