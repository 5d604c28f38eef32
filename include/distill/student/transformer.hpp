#pragma once
/// @file transformer.hpp
/// `student::Transformer`: a GPT-2-layout decoder (learned positions, pre-LayerNorm blocks, tanh
/// GELU MLP, causal multi-head attention, LM head tied to the token embedding), llm.c style: one
/// forward and one backward function, every tensor a view into three arenas laid out once.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <boost/hana/adapt_struct.hpp>

#include "distill/detail/arena.hpp"
#include "distill/detail/rng.hpp"
#include "distill/device.hpp"
#include "distill/error.hpp"
#include "distill/nn/attention.hpp"
#include "distill/nn/linear.hpp"
#include "distill/parameter.hpp"
#include "distill/tensor.hpp"

namespace distill::student {

/// Shape of a `Transformer`. Keys are the JSON keys of the job's `student` object.
struct TransformerConfig {
    int vocab_size = 263;      ///< tokens the model knows (the byte tokenizer has 263)
    int context_length = 256;  ///< longest sequence (rows of the position embedding)
    int d_model = 128;         ///< residual stream width C
    int n_layers = 4;          ///< transformer blocks L
    int n_heads = 4;           ///< attention heads H; d_model must be a multiple
    int d_ff = 512;            ///< MLP hidden width F

    /// Throws `config_error` naming the first field that is out of range. The upper bounds are far
    /// beyond any published model; they exist because configs come from downloaded files, and they
    /// keep every size computed from a config (parameter_count, arena layouts) far from overflow.
    void validate(const std::string& path = "student") const {
        auto in_range = [&](int v, const char* key, int max) {
            if (v < 1 || v > max)
                throw config_error(path + "." + key,
                                   "must be in [1, " + std::to_string(max) + "], got " + std::to_string(v));
        };
        in_range(vocab_size, "vocab_size", 1 << 21);
        in_range(context_length, "context_length", 1 << 18);
        in_range(d_model, "d_model", 1 << 16);
        in_range(n_layers, "n_layers", 1 << 10);
        in_range(n_heads, "n_heads", 1 << 10);
        in_range(d_ff, "d_ff", 1 << 18);
        if (d_model % n_heads != 0)
            throw config_error(path + ".n_heads",
                               "must divide d_model = " + std::to_string(d_model) + ", got " + std::to_string(n_heads));
    }

    /// Number of trainable parameters.
    std::int64_t parameter_count() const {
        const std::int64_t C = d_model, F = d_ff;
        const std::int64_t block = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (F * C + F) + (C * F + C);
        return std::int64_t(vocab_size) * C + std::int64_t(context_length) * C + n_layers * block + 2 * C;
    }
};

/// What a `Transformer` keeps of a forward: everything the backward and the transfer losses read
/// (`training`), or only the logits, one layer's working memory reused by every layer, no gradient
/// arena and no backward buffers (`inference`: a teacher whose loss reads logits alone, generation).
enum class activations { training, inference };

template <class T, class Device>
class Transformer;

/// Keys and values of every layer for up to `max_batch` sequences of up to `context_length`
/// tokens, for incremental decoding (`Transformer::prefill` / `decode`). One arena, laid out once.
template <class T, class Device>
class KvCache {
public:
    KvCache(const TransformerConfig& cfg, int max_batch, Device device = Device{})
        : max_batch_(max_batch),
          n_layers_(cfg.n_layers),
          layer_size_(std::size_t(max_batch) * cfg.context_length * cfg.d_model),
          lengths_(std::size_t(max_batch), 0) {
        if (max_batch < 1) throw config_error("max_batch", "must be >= 1, got " + std::to_string(max_batch));
        arena_ = detail::Arena<T, Device>(device, 2 * layer_size_ * std::size_t(cfg.n_layers));
    }
    /// Tokens held for sequence b.
    int length(int b) const { return lengths_.at(std::size_t(b)); }
    int max_batch() const noexcept { return max_batch_; }
    /// Forgets every sequence (the memory is reused).
    void reset() { std::fill(lengths_.begin(), lengths_.end(), 0); }
    /// Bytes of key/value storage.
    std::size_t bytes() const noexcept { return sizeof(T) * arena_.size(); }

private:
    friend class Transformer<T, Device>;
    // (max_batch, H, Tmax, hs) keys, then values, of layer l
    T* keys(int l) const noexcept { return arena_.data() + 2 * std::size_t(l) * layer_size_; }
    T* values(int l) const noexcept { return keys(l) + layer_size_; }

    int max_batch_, n_layers_;
    std::size_t layer_size_;
    std::vector<int> lengths_;
    detail::Arena<T, Device> arena_;
};

/// A GPT-2-layout causal transformer.
/// @tparam T scalar type (`float`; `double` for gradient checks).
/// @tparam Device a `device_policy` whose kernels accept `T`.
template <class T, class Device>
class Transformer {
public:
    using scalar_type = T;
    using device_type = Device;
    using config_type = TransformerConfig;

    /// Lays out and allocates all three arenas for batches of up to `max_batch` sequences of up to
    /// `config.context_length` tokens. Parameters start at zero; call `init` or load weights. With
    /// `activations::inference` the model only runs forwards: `backward` throws, `hidden_state(i)`
    /// exists for i = 0 and L only, `attention` and `qkv` not at all, and gradients are empty.
    Transformer(const TransformerConfig& config, int max_batch, Device device = Device{},
                activations mode = activations::training)
        : cfg_(config), dev_(device), max_batch_(max_batch), mode_(mode) {
        cfg_.validate();
        if (max_batch < 1) throw config_error("max_batch", "must be >= 1, got " + std::to_string(max_batch));
        layout_parameters();
        layout_activations();
    }

    const TransformerConfig& config() const noexcept { return cfg_; }
    const Device& device() const noexcept { return dev_; }
    int max_batch() const noexcept { return max_batch_; }

    /// Every parameter in checkpoint order (names as in `tests/reference/gpt.py`).
    const std::vector<Parameter<T>>& parameters() const noexcept { return params_; }
    /// The parameter and gradient arenas as flat arrays (same layout), for optimizers and checkpoints.
    T* parameter_data() const noexcept { return param_arena_.data(); }
    T* gradient_data() const noexcept { return grad_arena_.data(); }
    std::size_t arena_size() const noexcept { return param_arena_.size(); }

    /// GPT-2 initialization: weights ~ N(0, 0.02), residual output projections scaled by
    /// 1/sqrt(2 L), position embedding ~ N(0, 0.01), biases 0, LayerNorm gain 1. The same values on
    /// every device (drawn on the host, copied once where the device has its own memory).
    void init(std::uint64_t seed) {
        Rng rng(seed);
        const double proj_std = 0.02 / std::sqrt(2.0 * cfg_.n_layers);
        std::vector<T> staged;  // a host image of the parameter arena for devices with their own memory
        T* base = param_arena_.data();
        if constexpr (Device::memory != memory_space::host) {
            staged.assign(param_arena_.size(), T(0));
            base = staged.data();
        }
        for (auto& p : params_) {
            T* d = base + (p.value.data() - param_arena_.data());
            const std::int64_t n = p.value.numel();
            const bool residual_proj = p.name.ends_with("c_proj.weight");
            const double std = p.name == "wpe.weight" ? 0.01 : residual_proj ? proj_std : 0.02;
            for (std::int64_t i = 0; i < n; ++i) {
                switch (p.kind) {
                    case parameter_kind::bias:
                        d[i] = T(0);
                        break;
                    case parameter_kind::norm:
                        d[i] = p.name.ends_with(".weight") ? T(1) : T(0);
                        break;
                    default:
                        d[i] = static_cast<T>(rng.normal() * std);
                }
            }
        }
        if constexpr (Device::memory != memory_space::host)
            dev_.copy(param_arena_.data(), staged.data(), sizeof(T) * staged.size());
    }

    /// Runs the model on tokens(B,T) (row-major, B <= max_batch, T <= context_length, every id in
    /// [0, vocab_size)). Afterwards `logits()`, `hidden_state(i)` and `attention(l)` hold the results.
    void forward(const std::int32_t* tokens, int B, int Tn) {
        forward_layers(tokens, B, Tn, [](int) {});
    }

    /// What this model keeps of a forward.
    activations mode() const noexcept { return mode_; }

private:
    // The forward; `after_qkv(l)` runs once layer l's q|k|v projections are in act(layer_acts_[l].qkv)
    // (prefill stores the keys and values there, before an inference model reuses the buffer).
    template <class AfterQkv>
    void forward_layers(const std::int32_t* tokens, int B, int Tn, AfterQkv&& after_qkv) {
        check_batch(tokens, B, Tn);
        B_ = B;
        T_ = Tn;
        const int C = cfg_.d_model, F = cfg_.d_ff, H = cfg_.n_heads, V = cfg_.vocab_size;
        const int N = B * Tn;
        dev_.copy(tokens_, tokens, sizeof(std::int32_t) * N);
        embedding_forward(dev_, act(encoded_), tokens_, wte(), wpe(), B, Tn, C);
        const T* x = act(encoded_);
        for (int l = 0; l < cfg_.n_layers; ++l) {
            const auto& w = layer_params_[l];
            const auto& a = layer_acts_[l];
            layernorm_forward(dev_, act(a.ln1), act(a.ln1_mean), act(a.ln1_rstd), x, val(w.ln1_w), val(w.ln1_b), N, C,
                              eps);
            nn::linear_forward(dev_, act(a.qkv), act(a.ln1), val(w.attn_w), val(w.attn_b), N, C, 3 * C);
            after_qkv(l);
            nn::attention_forward(dev_, act(a.atty), act(a.att), act(a.qkv), B, Tn, C, H);
            dev_.copy(act(a.res_attn), x, sizeof(T) * N * C);
            nn::linear_forward(dev_, act(a.res_attn), act(a.atty), val(w.proj_w), val(w.proj_b), N, C, C, true);
            layernorm_forward(dev_, act(a.ln2), act(a.ln2_mean), act(a.ln2_rstd), act(a.res_attn), val(w.ln2_w),
                              val(w.ln2_b), N, C, eps);
            nn::linear_forward(dev_, act(a.fc), act(a.ln2), val(w.fc_w), val(w.fc_b), N, C, F);
            gelu_forward(dev_, act(a.fc_gelu), act(a.fc), std::int64_t(N) * F);
            dev_.copy(act(a.res_out), act(a.res_attn), sizeof(T) * N * C);
            nn::linear_forward(dev_, act(a.res_out), act(a.fc_gelu), val(w.mlp_proj_w), val(w.mlp_proj_b), N, F, C,
                               true);
            x = act(a.res_out);
        }
        layernorm_forward(dev_, act(lnf_), act(lnf_mean_), act(lnf_rstd_), x, val(lnf_w_), val(lnf_b_), N, C, eps);
        // logits (N,V) = lnf (N,C) · wte^T — the tied LM head
        gemm(dev_, false, true, N, V, C, T(1), act(lnf_), C, wte(), C, T(0), act(logits_), V);
    }

public:
    /// Batch and length of the last forward.
    int batch() const noexcept { return B_; }
    int length() const noexcept { return T_; }

    /// (B,T,V) logits of the last forward.
    Tensor<T> logits() const { return Tensor<T>(act(logits_), {B_, T_, cfg_.vocab_size}, Device::memory); }
    /// (B,T,V) gradient of the loss w.r.t. the logits: losses write it, `backward` reads it.
    Tensor<T> grad_logits() const {
        require_training("grad_logits");
        return Tensor<T>(act(dlogits_), {B_, T_, cfg_.vocab_size}, Device::memory);
    }
    /// Number of hidden states: n_layers + 1.
    int hidden_state_count() const noexcept { return cfg_.n_layers + 1; }
    /// (B,T,C) hidden state i of the last forward, Hugging Face convention: 0 is the embedding
    /// output, i in [1, L) the output of block i-1, L the output of the final LayerNorm.
    Tensor<T> hidden_state(int i) const {
        if (i < 0 || i > cfg_.n_layers)
            throw shape_error("hidden_state(" + std::to_string(i) + "): valid indices are 0.." +
                              std::to_string(cfg_.n_layers));
        if (mode_ == activations::inference && i != 0 && i != cfg_.n_layers)
            throw shape_error("hidden_state(" + std::to_string(i) +
                              "): this model keeps only the embedding output "
                              "and the final hidden state (activations::inference)");
        const std::size_t block = i == 0 ? encoded_ : i == cfg_.n_layers ? lnf_ : layer_acts_[i - 1].res_out;
        return Tensor<T>(act(block), {B_, T_, cfg_.d_model}, Device::memory);
    }
    /// (B,H,T,T) attention probabilities of layer l of the last forward (zeros above the diagonal).
    Tensor<T> attention(int l) const {
        if (l < 0 || l >= cfg_.n_layers)
            throw shape_error("attention(" + std::to_string(l) + "): valid layers are 0.." +
                              std::to_string(cfg_.n_layers - 1));
        require_training("attention");
        return Tensor<T>(act(layer_acts_[l].att), {B_, cfg_.n_heads, T_, T_}, Device::memory);
    }

    /// (B,T,3C) query | key | value projections of layer l of the last forward (head h in columns
    /// [h*hs, (h+1)*hs) of each third), for relation losses (MiniLMv2).
    Tensor<T> qkv(int l) const {
        if (l < 0 || l >= cfg_.n_layers)
            throw shape_error("qkv(" + std::to_string(l) + "): valid layers are 0.." +
                              std::to_string(cfg_.n_layers - 1));
        require_training("qkv");
        return Tensor<T>(act(layer_acts_[l].qkv), {B_, T_, 3 * cfg_.d_model}, Device::memory);
    }

    /// Mean cross-entropy of the last forward's logits against targets(B,T); a target of -1 masks
    /// its position (prompt or padding) out of the mean. Writes d(loss)/d(logits) to `grad_logits()`.
    /// Returns 0 (and zero gradient) when every position is masked.
    T cross_entropy(const std::int32_t* targets) {
        require_training("cross_entropy");
        const int N = B_ * T_, V = cfg_.vocab_size;
        int count = 0;
        for (int n = 0; n < N; ++n) {
            if (targets[n] < -1 || targets[n] >= V)
                throw shape_error("cross_entropy: target " + std::to_string(targets[n]) + " at position " +
                                  std::to_string(n) + " is outside [-1, " + std::to_string(V) + ")");
            count += targets[n] >= 0;
        }
        const T dloss = count ? T(1) / T(count) : T(0);
        cross_entropy_forward_backward(dev_, act(dlogits_), act(losses_), act(logits_), targets, N, V, dloss);
        const auto losses = detail::read_on_host(dev_, static_cast<const T*>(act(losses_)), std::size_t(N));
        T sum = 0;
        for (int n = 0; n < N; ++n) sum += losses[std::size_t(n)];
        return count ? sum / T(count) : T(0);
    }

    // ---- incremental decoding ---------------------------------------------------------------------

    /// A KV cache for up to `max_batch` (<= this model's max_batch) sequences.
    KvCache<T, Device> make_cache(int max_batch) const {
        if (max_batch > max_batch_)
            throw config_error("max_batch", "a cache for " + std::to_string(max_batch) +
                                                " sequences needs a model built for as many, this one takes " +
                                                std::to_string(max_batch_));
        return KvCache<T, Device>(cfg_, max_batch, dev_);
    }

    /// Runs prompts tokens(B,T), right-padded, `lengths[b]` valid tokens each, fills `cache` with
    /// their keys and values and leaves the next-token logits in `next_logits()`. Overwrites the
    /// last forward's activations.
    void prefill(KvCache<T, Device>& cache, const std::int32_t* tokens, const int* lengths, int B, int Tn) {
        if (B > cache.max_batch())
            throw shape_error("prefill: batch " + std::to_string(B) + " exceeds the cache's " +
                              std::to_string(cache.max_batch()));
        for (int b = 0; b < B; ++b)
            if (lengths[b] < 1 || lengths[b] > Tn)
                throw shape_error("prefill: length " + std::to_string(lengths[b]) + " of sequence " +
                                  std::to_string(b) + " outside [1, " + std::to_string(Tn) + "]");
        const int C = cfg_.d_model, V = cfg_.vocab_size;
        std::vector<std::int32_t> rows;  // devices with their own memory: (row of qkv, sequence, position)
        if constexpr (Device::memory != memory_space::host)
            for (int b = 0; b < B; ++b)
                for (int t = 0; t < lengths[b]; ++t) rows.insert(rows.end(), {b * Tn + t, b, t});
        // each layer's keys and values go to the cache as soon as they exist (an inference model
        // reuses the buffer for the next layer)
        forward_layers(tokens, B, Tn, [&](int l) {
            const T* qkv = act(layer_acts_[l].qkv);
            if constexpr (Device::memory != memory_space::host)
                kv_cache_store(dev_, cache.keys(l), cache.values(l), qkv, rows.data(),
                               static_cast<int>(rows.size() / 3), cfg_.n_heads, C / cfg_.n_heads, cfg_.context_length);
            else
                for (int b = 0; b < B; ++b)
                    for (int t = 0; t < lengths[b]; ++t)
                        store_kv(cache, l, qkv + (std::int64_t(b) * Tn + t) * 3 * C, b, t);
        });
        for (int b = 0; b < B; ++b) {
            dev_.copy(act(next_logits_) + std::int64_t(b) * V,
                      act(logits_) + (std::int64_t(b) * Tn + lengths[b] - 1) * V, sizeof(T) * V);
            cache.lengths_[std::size_t(b)] = lengths[b];
        }
        decode_batch_ = B;
    }

    /// Appends tokens[b] to sequence b of `cache` (at position cache.length(b)), runs one decoding step
    /// and leaves the next-token logits in `next_logits()`. Overwrites the last forward's activations.
    void decode(KvCache<T, Device>& cache, const std::int32_t* tokens, int B) {
        const int C = cfg_.d_model, F = cfg_.d_ff, H = cfg_.n_heads, hs = C / H, V = cfg_.vocab_size,
                  Tmax = cfg_.context_length;
        if (B < 1 || B > cache.max_batch())
            throw shape_error("decode: batch " + std::to_string(B) + " outside [1, " +
                              std::to_string(cache.max_batch()) + "]");
        for (int b = 0; b < B; ++b) {
            if (cache.length(b) >= Tmax)
                throw shape_error("decode: sequence " + std::to_string(b) +
                                  " already holds context_length = " + std::to_string(Tmax) + " tokens");
            if (tokens[b] < 0 || tokens[b] >= V)
                throw shape_error("decode: token " + std::to_string(tokens[b]) + " of sequence " + std::to_string(b) +
                                  " is outside the vocabulary [0, " + std::to_string(V) + ")");
        }
        // x (B,C) = wte[token] + wpe[position]
        T* x = act(encoded_);
        for (int b = 0; b < B; ++b)
            add(dev_, x + std::int64_t(b) * C, wte() + std::int64_t(tokens[b]) * C,
                wpe() + std::int64_t(cache.length(b)) * C, C);
        for (int b = 0; b < B; ++b) ++cache.lengths_[std::size_t(b)];
        std::vector<std::int32_t> rows;  // devices with their own memory: (row of qkv, sequence, position)
        if constexpr (Device::memory != memory_space::host)
            for (int b = 0; b < B; ++b) rows.insert(rows.end(), {b, b, cache.length(b) - 1});
        for (int l = 0; l < cfg_.n_layers; ++l) {
            const auto& w = layer_params_[l];
            const auto& a = layer_acts_[l];
            layernorm_forward(dev_, act(a.ln1), act(a.ln1_mean), act(a.ln1_rstd), x, val(w.ln1_w), val(w.ln1_b), B, C,
                              eps);
            nn::linear_forward(dev_, act(a.qkv), act(a.ln1), val(w.attn_w), val(w.attn_b), B, C, 3 * C);
            if constexpr (Device::memory != memory_space::host)
                kv_cache_store(dev_, cache.keys(l), cache.values(l), static_cast<const T*>(act(a.qkv)), rows.data(), B,
                               H, hs, Tmax);
            else
                for (int b = 0; b < B; ++b)
                    store_kv(cache, l, act(a.qkv) + std::int64_t(b) * 3 * C, b, cache.length(b) - 1);
            attention_decode(dev_, act(a.atty), act(a.att), act(a.qkv), cache.keys(l), cache.values(l),
                             cache.lengths_.data(), B, H, hs, Tmax);
            dev_.copy(act(a.res_attn), x, sizeof(T) * B * C);
            nn::linear_forward(dev_, act(a.res_attn), act(a.atty), val(w.proj_w), val(w.proj_b), B, C, C, true);
            layernorm_forward(dev_, act(a.ln2), act(a.ln2_mean), act(a.ln2_rstd), act(a.res_attn), val(w.ln2_w),
                              val(w.ln2_b), B, C, eps);
            nn::linear_forward(dev_, act(a.fc), act(a.ln2), val(w.fc_w), val(w.fc_b), B, C, F);
            gelu_forward(dev_, act(a.fc_gelu), act(a.fc), std::int64_t(B) * F);
            dev_.copy(act(a.res_out), act(a.res_attn), sizeof(T) * B * C);
            nn::linear_forward(dev_, act(a.res_out), act(a.fc_gelu), val(w.mlp_proj_w), val(w.mlp_proj_b), B, F, C,
                               true);
            x = act(a.res_out);
        }
        layernorm_forward(dev_, act(lnf_), act(lnf_mean_), act(lnf_rstd_), x, val(lnf_w_), val(lnf_b_), B, C, eps);
        gemm(dev_, false, true, B, V, C, T(1), act(lnf_), C, wte(), C, T(0), act(next_logits_), V);
        decode_batch_ = B;
        B_ = T_ = 0;  // the training-forward views are no longer valid
    }

    /// (B,V) next-token logits of the last `prefill` or `decode`.
    Tensor<T> next_logits() const {
        return Tensor<T>(act(next_logits_), {decode_batch_, cfg_.vocab_size}, Device::memory);
    }

    /// Sets every gradient to zero (gradients accumulate across `backward` calls).
    void zero_grad() {
        if (grad_arena_.size()) dev_.fill_zero(grad_arena_.data(), sizeof(T) * grad_arena_.size());
    }

    /// Backpropagates `grad_logits()` through the last forward, accumulating into the gradients.
    /// `d_hidden[i]` (B,T,C) adds a gradient on hidden state i and `d_attention[l]` (B,H,T,T) one on
    /// attention map l (transfer losses), `d_qkv[l]` (B,T,3C) one on the q|k|v projections of
    /// layer l (relation losses); any span may be shorter than the count or hold empty tensors for
    /// "none".
    void backward(std::span<const Tensor<const T>> d_hidden = {}, std::span<const Tensor<const T>> d_attention = {},
                  std::span<const Tensor<const T>> d_qkv = {}) {
        require_training("backward");
        const int B = B_, Tn = T_, C = cfg_.d_model, F = cfg_.d_ff, H = cfg_.n_heads, V = cfg_.vocab_size,
                  L = cfg_.n_layers;
        const int N = B * Tn;
        auto extra = [&](std::span<const Tensor<const T>> list, int i, std::int64_t numel) -> const T* {
            if (i >= static_cast<int>(list.size()) || list[i].empty()) return nullptr;
            if (list[i].numel() != numel || !list[i].contiguous())
                throw shape_error("backward: extra gradient " + std::to_string(i) + " has shape " +
                                  list[i].shape_string() + ", expected " + std::to_string(numel) +
                                  " contiguous elements");
            return list[i].data();
        };
        T* d_res = act(d_res_);
        T* d_ln = act(d_ln_);
        // LM head: d_lnf (N,C) = dlogits (N,V) · wte (V,C);  dwte (V,C) += dlogits^T · lnf
        gemm(dev_, false, false, N, C, V, T(1), act(dlogits_), V, wte(), C, T(0), d_ln, C);
        gemm(dev_, true, false, V, C, N, T(1), act(dlogits_), V, act(lnf_), C, T(1), grad(wte_), C);
        if (const T* e = extra(d_hidden, L, std::int64_t(N) * C)) accumulate(dev_, d_ln, e, std::int64_t(N) * C);
        dev_.fill_zero(d_res, sizeof(T) * N * C);
        const T* x_last = L ? act(layer_acts_[L - 1].res_out) : act(encoded_);
        layernorm_backward(dev_, d_res, grad(lnf_w_), grad(lnf_b_), d_ln, x_last, val(lnf_w_), act(lnf_mean_),
                           act(lnf_rstd_), N, C);
        for (int l = L - 1; l >= 0; --l) {
            const auto& w = layer_params_[l];
            const auto& a = layer_acts_[l];
            const T* x_in = l ? act(layer_acts_[l - 1].res_out) : act(encoded_);
            if (l + 1 < L)
                if (const T* e = extra(d_hidden, l + 1, std::int64_t(N) * C))
                    accumulate(dev_, d_res, e, std::int64_t(N) * C);
            // MLP branch: res_out = res_attn + proj(gelu(fc(ln2(res_attn))))
            nn::linear_backward(dev_, act(d_fc_), grad(w.mlp_proj_w), grad(w.mlp_proj_b), d_res, act(a.fc_gelu),
                                val(w.mlp_proj_w), N, F, C);
            gelu_backward(dev_, act(d_fc_), act(a.fc), act(d_fc_), std::int64_t(N) * F);
            nn::linear_backward(dev_, d_ln, grad(w.fc_w), grad(w.fc_b), act(d_fc_), act(a.ln2), val(w.fc_w), N, C, F);
            layernorm_backward(dev_, d_res, grad(w.ln2_w), grad(w.ln2_b), d_ln, act(a.res_attn), val(w.ln2_w),
                               act(a.ln2_mean), act(a.ln2_rstd), N, C);
            // attention branch: res_attn = x_in + proj(attention(qkv(ln1(x_in))))
            nn::linear_backward(dev_, act(d_atty_), grad(w.proj_w), grad(w.proj_b), d_res, act(a.atty), val(w.proj_w),
                                N, C, C);
            nn::attention_backward(dev_, act(d_qkv_), act(d_att_), act(d_atty_), act(a.qkv), act(a.att),
                                   extra(d_attention, l, std::int64_t(B) * H * Tn * Tn), B, Tn, C, H);
            if (const T* e = extra(d_qkv, l, std::int64_t(N) * 3 * C))
                accumulate(dev_, act(d_qkv_), e, std::int64_t(N) * 3 * C);
            nn::linear_backward(dev_, d_ln, grad(w.attn_w), grad(w.attn_b), act(d_qkv_), act(a.ln1), val(w.attn_w), N,
                                C, 3 * C);
            layernorm_backward(dev_, d_res, grad(w.ln1_w), grad(w.ln1_b), d_ln, x_in, val(w.ln1_w), act(a.ln1_mean),
                               act(a.ln1_rstd), N, C);
        }
        if (const T* e = extra(d_hidden, 0, std::int64_t(N) * C)) accumulate(dev_, d_res, e, std::int64_t(N) * C);
        embedding_backward(dev_, grad(wte_), grad(wpe_), d_res, tokens_, B, Tn, C);
    }

    /// Bytes held by the parameter, gradient and activation arenas.
    std::size_t arena_bytes() const noexcept {
        return sizeof(T) * (param_arena_.size() + grad_arena_.size() + act_arena_.size()) + tokens_bytes();
    }

    static constexpr T eps = T(1e-5);  ///< LayerNorm epsilon (GPT-2, PyTorch default)

private:
    struct LayerParams {
        std::size_t ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, mlp_proj_w, mlp_proj_b;
    };
    struct LayerActs {
        std::size_t ln1, ln1_mean, ln1_rstd, qkv, att, atty, res_attn, ln2, ln2_mean, ln2_rstd, fc, fc_gelu, res_out;
    };

    void layout_parameters() {
        const std::int64_t V = cfg_.vocab_size, C = cfg_.d_model, F = cfg_.d_ff;
        auto add = [&](std::string name, std::initializer_list<std::int64_t> shape, parameter_kind kind) {
            kinds_.push_back(kind);
            return param_layout_.add<T>(std::move(name), shape);
        };
        wte_ = add("wte.weight", {V, C}, parameter_kind::embedding);
        wpe_ = add("wpe.weight", {cfg_.context_length, C}, parameter_kind::embedding);
        for (int l = 0; l < cfg_.n_layers; ++l) {
            const std::string p = "h." + std::to_string(l) + ".";
            LayerParams w;
            w.ln1_w = add(p + "ln_1.weight", {C}, parameter_kind::norm);
            w.ln1_b = add(p + "ln_1.bias", {C}, parameter_kind::norm);
            w.attn_w = add(p + "attn.c_attn.weight", {3 * C, C}, parameter_kind::weight);
            w.attn_b = add(p + "attn.c_attn.bias", {3 * C}, parameter_kind::bias);
            w.proj_w = add(p + "attn.c_proj.weight", {C, C}, parameter_kind::weight);
            w.proj_b = add(p + "attn.c_proj.bias", {C}, parameter_kind::bias);
            w.ln2_w = add(p + "ln_2.weight", {C}, parameter_kind::norm);
            w.ln2_b = add(p + "ln_2.bias", {C}, parameter_kind::norm);
            w.fc_w = add(p + "mlp.c_fc.weight", {F, C}, parameter_kind::weight);
            w.fc_b = add(p + "mlp.c_fc.bias", {F}, parameter_kind::bias);
            w.mlp_proj_w = add(p + "mlp.c_proj.weight", {C, F}, parameter_kind::weight);
            w.mlp_proj_b = add(p + "mlp.c_proj.bias", {C}, parameter_kind::bias);
            layer_params_.push_back(w);
        }
        lnf_w_ = add("ln_f.weight", {C}, parameter_kind::norm);
        lnf_b_ = add("ln_f.bias", {C}, parameter_kind::norm);
        param_arena_ = detail::Arena<T, Device>(dev_, param_layout_.size());
        if (mode_ == activations::training) grad_arena_ = detail::Arena<T, Device>(dev_, param_layout_.size());
        const auto& blocks = param_layout_.blocks();
        for (std::size_t i = 0; i < blocks.size(); ++i)
            params_.push_back({blocks[i].name, param_arena_.view(blocks[i]),
                               grad_arena_.size() ? grad_arena_.view(blocks[i]) : Tensor<T>{}, kinds_[i]});
    }

    void layout_activations() {
        const std::int64_t N = std::int64_t(max_batch_) * cfg_.context_length, C = cfg_.d_model, F = cfg_.d_ff;
        const std::int64_t att = std::int64_t(max_batch_) * cfg_.n_heads * cfg_.context_length * cfg_.context_length;
        auto add = [&](const char* name, std::int64_t n) { return act_layout_.add<T>(name, {n}); };
        encoded_ = add("encoded", N * C);
        const bool training = mode_ == activations::training;
        for (int l = 0; l < cfg_.n_layers; ++l) {
            if (!training && l > 0) {  // inference: every layer works in layer 0's buffers
                layer_acts_.push_back(layer_acts_.front());
                continue;
            }
            LayerActs a;
            a.ln1 = add("ln1", N * C);
            a.ln1_mean = add("ln1_mean", N);
            a.ln1_rstd = add("ln1_rstd", N);
            a.qkv = add("qkv", N * 3 * C);
            a.att = add("att", att);
            a.atty = add("atty", N * C);
            a.res_attn = add("res_attn", N * C);
            a.ln2 = add("ln2", N * C);
            a.ln2_mean = add("ln2_mean", N);
            a.ln2_rstd = add("ln2_rstd", N);
            a.fc = add("fc", N * F);
            a.fc_gelu = add("fc_gelu", N * F);
            a.res_out = add("res_out", N * C);
            layer_acts_.push_back(a);
        }
        lnf_ = add("lnf", N * C);
        lnf_mean_ = add("lnf_mean", N);
        lnf_rstd_ = add("lnf_rstd", N);
        logits_ = add("logits", N * cfg_.vocab_size);
        next_logits_ = add("next_logits", std::int64_t(max_batch_) * cfg_.vocab_size);
        if (training) {
            dlogits_ = add("dlogits", N * cfg_.vocab_size);
            losses_ = add("losses", N);
            d_res_ = add("d_res", N * C);
            d_ln_ = add("d_ln", N * C);
            d_qkv_ = add("d_qkv", N * 3 * C);
            d_att_ = add("d_att", att);
            d_atty_ = add("d_atty", N * C);
            d_fc_ = add("d_fc", N * F);
        }
        act_arena_ = detail::Arena<T, Device>(dev_, act_layout_.size());
        tokens_ = static_cast<std::int32_t*>(dev_.allocate(tokens_bytes()));
        tokens_owner_ = {tokens_, TokenFree{dev_, tokens_bytes()}};
    }

    // Copies the key and value of every head of one token, qkv_row (3C) = q | k | v, into `cache`
    // at sequence b, position t: (max_batch, H, Tmax, hs) per layer.
    void store_kv(KvCache<T, Device>& cache, int l, const T* qkv_row, int b, int t) const {
        const int C = cfg_.d_model, H = cfg_.n_heads, hs = C / H;
        for (int h = 0; h < H; ++h) {
            const std::int64_t dst = ((std::int64_t(b) * H + h) * cfg_.context_length + t) * hs;
            dev_.copy(cache.keys(l) + dst, qkv_row + C + h * hs, sizeof(T) * hs);
            dev_.copy(cache.values(l) + dst, qkv_row + 2 * C + h * hs, sizeof(T) * hs);
        }
    }

    void require_training(const char* what) const {
        if (mode_ != activations::training)
            throw config_error("student", std::string(what) +
                                              ": this model was built for inference (activations::inference) and "
                                              "keeps only its logits; build it with activations::training");
    }

    void check_batch(const std::int32_t* tokens, int B, int Tn) const {
        if (B < 1 || B > max_batch_)
            throw shape_error("forward: batch " + std::to_string(B) + " outside [1, " + std::to_string(max_batch_) +
                              "]");
        if (Tn < 1 || Tn > cfg_.context_length)
            throw shape_error("forward: length " + std::to_string(Tn) +
                              " outside [1, context_length = " + std::to_string(cfg_.context_length) + "]");
        if constexpr (Device::memory == memory_space::host) {
            for (std::int64_t i = 0; i < std::int64_t(B) * Tn; ++i)
                if (tokens[i] < 0 || tokens[i] >= cfg_.vocab_size)
                    throw shape_error("forward: token " + std::to_string(tokens[i]) + " at position " +
                                      std::to_string(i) + " is outside the vocabulary [0, " +
                                      std::to_string(cfg_.vocab_size) + ")");
        }
    }

    std::size_t tokens_bytes() const noexcept {
        return sizeof(std::int32_t) * std::size_t(max_batch_) * std::size_t(cfg_.context_length);
    }
    T* val(std::size_t i) const noexcept { return param_arena_.data() + param_layout_.blocks()[i].offset; }
    T* grad(std::size_t i) const noexcept { return grad_arena_.data() + param_layout_.blocks()[i].offset; }
    T* act(std::size_t i) const noexcept { return act_arena_.data() + act_layout_.blocks()[i].offset; }
    const T* wte() const noexcept { return val(wte_); }
    const T* wpe() const noexcept { return val(wpe_); }

    struct TokenFree {
        Device dev;
        std::size_t bytes;
        void operator()(std::int32_t* p) const noexcept { dev.deallocate(p, bytes); }
    };

    TransformerConfig cfg_;
    Device dev_;
    int max_batch_;
    activations mode_;
    int B_ = 0, T_ = 0;

    detail::ArenaLayout param_layout_, act_layout_;
    std::vector<parameter_kind> kinds_;
    detail::Arena<T, Device> param_arena_, grad_arena_, act_arena_;
    std::vector<Parameter<T>> params_;
    std::vector<LayerParams> layer_params_;
    std::vector<LayerActs> layer_acts_;
    std::size_t wte_ = 0, wpe_ = 0, lnf_w_ = 0, lnf_b_ = 0;
    std::size_t encoded_ = 0, lnf_ = 0, lnf_mean_ = 0, lnf_rstd_ = 0, logits_ = 0, dlogits_ = 0, losses_ = 0,
                next_logits_ = 0;
    int decode_batch_ = 0;
    std::size_t d_res_ = 0, d_ln_ = 0, d_qkv_ = 0, d_att_ = 0, d_atty_ = 0, d_fc_ = 0;
    std::int32_t* tokens_ = nullptr;
    std::unique_ptr<std::int32_t, TokenFree> tokens_owner_{nullptr, TokenFree{}};
};

}  // namespace distill::student

BOOST_HANA_ADAPT_STRUCT(distill::student::TransformerConfig, vocab_size, context_length, d_model, n_layers, n_heads,
                        d_ff);
