#pragma once
/// @file train/on_policy.hpp
/// On-policy distillation (GKD, Agarwal et al. 2024; TRL's `GKDTrainer`): with probability λ a
/// training micro-batch keeps its prompts and replaces its responses by ones the *student* samples
/// on the fly, which the teacher then scores token by token; otherwise, with `seq_kd`, the teacher
/// samples them (sequence-level KD on fresh samples); otherwise the data's responses stay. The
/// divergence itself is the job's loss term (jsd with β, soft_kl, reverse_kl) on the response
/// positions.
///
/// Everything random is seeded from the run's seed, the optimizer step and the micro-batch
/// (`data::Batch::step`, `micro`), never from a generator that advances across steps: a resumed run
/// draws exactly the coins and samples of the uninterrupted one. Sampling runs the network's own
/// decoding path (`make_cache` / `prefill` / `decode` / `next_logits`, the device's kernels) and
/// `teacher::Sampler`, the in-process teacher's sampler; the cache and every buffer are made once
/// and reused.

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <boost/hana/adapt_struct.hpp>

#include "distill/data/dataset.hpp"
#include "distill/detail/hash.hpp"
#include "distill/detail/rng.hpp"
#include "distill/device.hpp"
#include "distill/error.hpp"
#include "distill/teacher.hpp"
#include "distill/teacher/sampler.hpp"

namespace distill::train {

/// Keys of the job's `on_policy` object (TRL's `GKDConfig.lmbda`, `seq_kd`, `temperature` and
/// `max_new_tokens`).
struct OnPolicyConfig {
    /// Fraction of training micro-batches whose responses the student samples (TRL's `lmbda`); 0: none.
    double lambda = 0.0;
    /// The other training micro-batches' responses are sampled by the teacher instead of read from
    /// the data (TRL's `seq_kd`).
    bool seq_kd = false;
    /// How samples are drawn where it differs from the job's `generation` (which sets how the teacher
    /// answers in the generate stage): unset keys take `generation`'s. TRL samples at 0.9, top_k 0.
    std::optional<double> temperature{};
    std::optional<double> top_p{};
    std::optional<int> top_k{};
    std::optional<int> max_new_tokens{};

    /// Whether any batch is sampled.
    bool enabled() const noexcept { return lambda > 0 || seq_kd; }

    /// The sampling settings of on-policy samples: `generation` with the keys set here replaced.
    teacher::Sampling sampling(teacher::Sampling generation) const {
        if (temperature) generation.temperature = *temperature;
        if (top_p) generation.top_p = *top_p;
        if (top_k) generation.top_k = *top_k;
        if (max_new_tokens) generation.max_new_tokens = *max_new_tokens;
        return generation;
    }

    /// Throws config_error naming `<path>.<key>` for the first value out of range.
    void validate(const std::string& path = "on_policy") const {
        if (!(lambda >= 0 && lambda <= 1))
            throw config_error(path + ".lambda", "must be in [0, 1], got " + std::to_string(lambda));
        sampling({}).validate(path);  // the defaults are valid: only the keys set here can fail
    }
};

/// Where a micro-batch's responses come from.
enum class response_source { data, student, teacher };

/// The seed of micro-batch `micro` of optimizer step `step` of a run seeded `seed`; `row` 0 draws
/// the batch's coin, row b+1 sequence b's tokens.
constexpr std::uint64_t batch_seed(std::uint64_t seed, std::int64_t step, int micro, int row) noexcept {
    return detail::mix64(detail::mix64(detail::mix64(seed, std::uint64_t(step)), std::uint64_t(micro)),
                         std::uint64_t(row));
}

/// The source of `batch`'s responses under `cfg`: validation batches (step < 0) keep the data's;
/// a training batch is the student's with probability λ (one uniform draw seeded by `batch_seed`),
/// else the teacher's when `seq_kd`, else the data's — TRL's `training_step` order.
inline response_source source_of(const OnPolicyConfig& cfg, std::uint64_t seed, const data::Batch& batch) noexcept {
    if (batch.step < 0 || !cfg.enabled()) return response_source::data;
    Rng coin(batch_seed(seed, batch.step, batch.micro, 0));
    if (coin.uniform() < cfg.lambda) return response_source::student;
    return cfg.seq_kd ? response_source::teacher : response_source::data;
}

/// `out` as `in` with row b's tokens past its first `prompt_length[b]` replaced by `responses[b]`:
/// right-padded with `pad`, every response token a target (predicted at the position before it),
/// nothing else; `indices`, `step` and `micro` copied. Throws shape_error when a row would exceed
/// `max_length` or a prompt length is outside [1, in.length].
inline void batch_with_responses(const data::Batch& in, std::span<const std::int32_t> prompt_length,
                                 std::span<const std::vector<std::int32_t>> responses, std::int32_t pad, int max_length,
                                 data::Batch& out) {
    const int B = in.batch;
    if (int(prompt_length.size()) != B || int(responses.size()) != B)
        throw shape_error("on-policy batch: " + std::to_string(prompt_length.size()) + " prompt lengths and " +
                          std::to_string(responses.size()) + " responses for " + std::to_string(B) + " rows");
    int length = 1;
    for (int b = 0; b < B; ++b) {
        const int P = prompt_length[std::size_t(b)];
        if (P < 1 || P > in.length)
            throw shape_error("on-policy batch: prompt length " + std::to_string(P) + " of row " + std::to_string(b) +
                              " outside [1, " + std::to_string(in.length) + "]");
        const int n = P + int(responses[std::size_t(b)].size());
        if (n > max_length)
            throw shape_error("on-policy batch: row " + std::to_string(b) + " holds " + std::to_string(n) +
                              " tokens, more than " + std::to_string(max_length));
        length = std::max(length, n);
    }
    out.batch = B;
    out.length = length;
    const std::size_t N = std::size_t(B) * std::size_t(length);
    out.tokens.assign(N, pad);
    out.targets.assign(N, -1);
    out.indices.assign(in.indices.begin(), in.indices.end());
    out.step = in.step;
    out.micro = in.micro;
    out.loss_tokens = 0;
    out.real_tokens = 0;
    for (int b = 0; b < B; ++b) {
        const int P = prompt_length[std::size_t(b)];
        const auto& r = responses[std::size_t(b)];
        std::int32_t* tok = out.tokens.data() + std::size_t(b) * std::size_t(length);
        std::int32_t* tgt = out.targets.data() + std::size_t(b) * std::size_t(length);
        std::copy_n(in.tokens.data() + std::size_t(b) * std::size_t(in.length), P, tok);
        std::copy(r.begin(), r.end(), tok + P);
        for (std::size_t j = 0; j < r.size(); ++j) tgt[std::size_t(P) - 1 + j] = r[j];
        out.loss_tokens += std::int64_t(r.size());
        out.real_tokens += P + std::int64_t(r.size());
    }
}

/// Whether the sampled `response` is complete under `format`'s rules, as the teacher's generation
/// applies them (teacher/model.hpp): its last id is a stop token of the template (kept, as the data's
/// answers keep their end-of-turn token); or its text holds one of the `stop` sequences — it then
/// becomes the ids of its text before the first of them, encoded as an answer is
/// (`format.encode_response`: the text and the end-of-turn token), so the student learns to end there.
/// @tparam Format `data::ChatTokenizer` or anything with its `is_stop_token`, `decode` and `encode_response`.
template <class Format>
bool response_complete(std::vector<std::int32_t>& response, const Format& format, std::span<const std::string> stop) {
    if (response.empty()) return false;
    if (format.is_stop_token(response.back())) return true;
    if (stop.empty()) return false;
    // The whole response is decoded again: a character may span several ids.
    const std::string text = format.decode(response);
    std::size_t at = std::string::npos;
    for (const auto& s : stop) at = std::min(at, text.find(s));
    if (at == std::string::npos) return false;
    response = format.encode_response(std::string_view(text).substr(0, at));
    return true;
}

/// Samples responses to a batch's prompts from a network with a KV cache, as the in-process teacher
/// generates: prefill the prompts, then one `decode` per token, each row drawing from its logits
/// with `teacher::Sampler` until `complete(response)` says it is done (`response_complete`: a stop
/// token or a stop sequence) or it reaches `max_new_tokens` or the length limit. Rows that finished
/// are fed padding; when one would overrun the context, the rows still sampling are prefilled again
/// into a smaller batch (the teacher's rule, teacher/model.hpp). The cache and the buffers are sized once.
/// @tparam Network `student::Transformer<T, Device>` or anything with its decoding interface.
template <class Network>
class ResponseSampler {
public:
    using scalar_type = typename Network::scalar_type;
    using device_type = typename Network::device_type;

    /// A cache for `max_batch` rows of `net`.
    ResponseSampler(Network& net, int max_batch) : cache_(net.make_cache(max_batch)) {}

    /// Fills `out` with `in`'s prompts (row b: its first `prompt_length[b]` tokens) and responses
    /// `net` samples under `s` (temperature, top_k, top_p, max_new_tokens), seeded per row by
    /// `batch_seed(seed, in.step, in.micro, b + 1)`; each row at most `max_length` tokens in all.
    /// Tokens are drawn from the first `vocab` ids only (a teacher's embedding may have padding rows
    /// past the student's vocabulary; 0: all). After each token `complete(response)` says whether
    /// a row's response is done; it may rewrite it (a stop sequence cut off), never past the row's limit.
    template <class Complete>
    void sample(Network& net, const data::Batch& in, std::span<const std::int32_t> prompt_length,
                const teacher::Sampling& s, std::uint64_t seed, int max_length, int vocab, std::int32_t pad,
                Complete&& complete, data::Batch& out) {
        const int B = in.batch, V = net.config().vocab_size, Tmax = net.config().context_length;
        const int drawn = vocab > 0 ? std::min(vocab, V) : V;
        if (B > cache_.max_batch())
            throw shape_error("on-policy sampling: batch of " + std::to_string(B) + " rows exceeds " +
                              std::to_string(cache_.max_batch()));
        responses_.resize(std::size_t(B));
        limit_.resize(std::size_t(B));
        complete_.assign(std::size_t(B), false);
        rngs_.resize(std::size_t(B));
        rows_.clear();
        for (int b = 0; b < B; ++b) {
            responses_[std::size_t(b)].clear();
            const int P = prompt_length[std::size_t(b)];
            limit_[std::size_t(b)] = std::max(0, std::min(s.max_new_tokens, std::min(max_length, Tmax) - P));
            rngs_[std::size_t(b)] = Rng(batch_seed(seed, in.step, in.micro, b + 1));
            if (limit_[std::size_t(b)] > 0) rows_.push_back(b);
        }
        if (!rows_.empty()) prefill(net, in, prompt_length);
        while (!rows_.empty()) {
            const scalar_type* logits = next_logits_on_host(net);  // (rows, V)
            bool all_done = true;
            for (std::size_t r = 0; r < rows_.size(); ++r) {
                const auto b = std::size_t(rows_[r]);
                auto& resp = responses_[b];
                if (done(b)) continue;
                resp.push_back(sampler_.sample(logits + std::int64_t(r) * V, drawn, s, rngs_[b]));
                if (complete(resp)) {
                    complete_[b] = true;
                    if (int(resp.size()) > limit_[b]) resp.resize(std::size_t(limit_[b]));
                }
                all_done = all_done && done(b);
            }
            if (all_done) break;
            bool overflow = false;
            for (std::size_t r = 0; r < rows_.size(); ++r)
                overflow = overflow || (done(std::size_t(rows_[r])) && cache_.length(int(r)) >= Tmax);
            if (overflow) {
                std::erase_if(rows_, [&](int b) { return done(std::size_t(b)); });
                prefill(net, in, prompt_length);
                continue;
            }
            next_.resize(rows_.size());
            for (std::size_t r = 0; r < rows_.size(); ++r) {
                const auto b = std::size_t(rows_[r]);
                next_[r] = done(b) ? pad : responses_[b].back();
            }
            net.decode(cache_, next_.data(), int(rows_.size()));
        }
        if constexpr (requires { cache_.release_packed(); }) cache_.release_packed();  // held while sampling only
        batch_with_responses(in, prompt_length, responses_, pad, max_length, out);
    }

private:
    bool done(std::size_t b) const { return complete_[b] || int(responses_[b].size()) >= limit_[b]; }

    // Prefills the cache with rows_' prompts and what they sampled so far (the last sampled token is
    // then fed here, not by decode).
    void prefill(Network& net, const data::Batch& in, std::span<const std::int32_t> prompt_length) {
        int Tn = 0;
        lengths_.resize(rows_.size());
        for (std::size_t r = 0; r < rows_.size(); ++r) {
            const auto b = std::size_t(rows_[r]);
            lengths_[r] = prompt_length[b] + int(responses_[b].size());
            Tn = std::max(Tn, lengths_[r]);
        }
        tokens_.assign(rows_.size() * std::size_t(Tn), 0);
        for (std::size_t r = 0; r < rows_.size(); ++r) {
            const auto b = std::size_t(rows_[r]);
            std::int32_t* row = tokens_.data() + r * std::size_t(Tn);
            std::copy_n(in.tokens.data() + b * std::size_t(in.length), prompt_length[b], row);
            std::copy(responses_[b].begin(), responses_[b].end(), row + prompt_length[b]);
        }
        cache_.reset();
        net.prefill(cache_, tokens_.data(), lengths_.data(), int(rows_.size()), Tn);
    }

    // The (rows, V) next-token logits where the sampler reads them: in place on a host-memory device,
    // else copied into a buffer sized once (one transfer per step, as the teacher's generation).
    const scalar_type* next_logits_on_host(Network& net) {
        const auto logits = net.next_logits();
        if constexpr (device_type::memory == memory_space::host) {
            return logits.data();
        } else {
            host_logits_.resize(std::size_t(cache_.max_batch()) * std::size_t(net.config().vocab_size));
            net.device().copy(host_logits_.data(), logits.data(), sizeof(scalar_type) * std::size_t(logits.numel()));
            return host_logits_.data();
        }
    }

    decltype(std::declval<Network&>().make_cache(1)) cache_;
    teacher::Sampler sampler_{};
    std::vector<std::vector<std::int32_t>> responses_{};  // per row of the batch
    std::vector<int> limit_{};                            // per row: most tokens it may sample
    std::vector<bool> complete_{};                        // per row: its response is done
    std::vector<Rng> rngs_{};
    std::vector<int> rows_{};  // the batch rows in the cache, in cache order
    std::vector<int> lengths_{};
    std::vector<std::int32_t> tokens_{};
    std::vector<std::int32_t> next_{};
    std::vector<scalar_type> host_logits_{};
};

}  // namespace distill::train

BOOST_HANA_ADAPT_STRUCT(distill::train::OnPolicyConfig, lambda, seq_kd, temperature, top_p, top_k, max_new_tokens);
