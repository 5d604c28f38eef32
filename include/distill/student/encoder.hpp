#pragma once
/// @file encoder.hpp
/// `student::Encoder`: a BERT-layout bidirectional encoder (BertModel without its pooler, as
/// sentence-transformers uses it): word + learned position + token-type embeddings, an embedding
/// LayerNorm, post-LayerNorm blocks (attention → add → LayerNorm, erf-GELU MLP → add → LayerNorm), a
/// key padding mask, and a pooling head (mean over the valid tokens, or the first token) giving one
/// (B,C) embedding per sequence. llm.c style like `student::Transformer`: three arenas laid out
/// once, no allocation in `forward` or `backward`, hidden states and attention maps exposed for
/// transfer losses.
///
/// Every kernel is the device's, found by argument-dependent lookup: the layer kernels (GEMMs,
/// LayerNorms) and the encoder kernels (`device::encoder_device`: embeddings, erf-GELU, masked
/// softmax, pooling; `device/<name>/encoder`), with the attention core of
/// `nn/bidirectional_attention.hpp` built from them. The model writes its masks and initial weights
/// from the host, so it runs on devices with host memory (`device::Reference`, `device::Cpu`).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <boost/hana/adapt_struct.hpp>

#include "distill/detail/arena.hpp"
#include "distill/detail/rng.hpp"
#include "distill/device.hpp"
#include "distill/error.hpp"
#include "distill/nn/bidirectional_attention.hpp"
#include "distill/nn/linear.hpp"
#include "distill/parameter.hpp"
#include "distill/student/parameters.hpp"
#include "distill/tensor.hpp"

namespace distill::student {

/// Shape of an `Encoder`. Keys are the JSON keys of a job's `student` object; `io::hf::encoder_config`
/// maps transformers' BERT config.json onto it.
struct EncoderConfig {
    int vocab_size = 30522;         ///< word-piece ids the model knows
    int context_length = 512;       ///< longest sequence (max_position_embeddings)
    int type_vocab_size = 2;        ///< token types (segment A/B)
    int d_model = 384;              ///< hidden size C
    int n_layers = 6;               ///< encoder blocks L
    int n_heads = 12;               ///< attention heads H; d_model must be a multiple
    int d_ff = 1536;                ///< MLP hidden width F (intermediate_size)
    double layer_norm_eps = 1e-12;  ///< every LayerNorm's epsilon (BERT: 1e-12)
    std::string pooling = "mean";   ///< "mean" (over valid tokens) or "cls" (the first token)
    /// Queries attend to every valid key (bidirectional), not only to earlier ones: read by
    /// `loss::model_dims_of_config` (attention terms sum over every key of a counted query).
    static constexpr bool causal = false;

    /// Throws `config_error` naming the first field out of range. The upper bounds are far beyond any
    /// published encoder; configs come from downloaded files, and the bounds keep every size computed
    /// from one (parameter_count, arena layouts) far from overflow.
    void validate(const std::string& path = "student") const {
        auto in_range = [&](int v, const char* key, int max) {
            if (v < 1 || v > max)
                throw config_error(path + "." + key,
                                   "must be in [1, " + std::to_string(max) + "], got " + std::to_string(v));
        };
        in_range(vocab_size, "vocab_size", 1 << 21);
        in_range(context_length, "context_length", 1 << 18);
        in_range(type_vocab_size, "type_vocab_size", 1 << 10);
        in_range(d_model, "d_model", 1 << 16);
        in_range(n_layers, "n_layers", 1 << 10);
        in_range(n_heads, "n_heads", 1 << 10);
        in_range(d_ff, "d_ff", 1 << 18);
        if (d_model % n_heads != 0)
            throw config_error(path + ".n_heads",
                               "must divide d_model = " + std::to_string(d_model) + ", got " + std::to_string(n_heads));
        if (!(layer_norm_eps > 0) || !(layer_norm_eps <= 1e-1))
            throw config_error(path + ".layer_norm_eps", "must be in (0, 0.1], got " + std::to_string(layer_norm_eps));
        if (pooling != "mean" && pooling != "cls")
            throw config_error(path + ".pooling", "must be \"mean\" or \"cls\", got \"" + pooling + "\"");
    }

    /// Number of trainable parameters.
    std::int64_t parameter_count() const {
        const std::int64_t C = d_model, F = d_ff;
        const std::int64_t block = 4 * (C * C + C) + 2 * C + (F * C + F) + (C * F + C) + 2 * C;
        return (std::int64_t(vocab_size) + context_length + type_vocab_size) * C + 2 * C + n_layers * block;
    }
};

/// A BERT-layout bidirectional encoder with a pooling head.
/// @tparam T scalar type (`float`; `double` for gradient checks).
/// @tparam Device a `device_policy` with host memory and the layer and encoder kernels for `T`
/// (`device::layer_device`, `device::encoder_device`).
template <class T, class Device>
class Encoder : public parameter_store<T, Device> {
    using store = parameter_store<T, Device>;
    using store::grad;
    using store::val;

    static_assert(device::require_layer_kernels<Device, T>::value);    // one line per missing kernel
    static_assert(device::require_encoder_kernels<Device, T>::value);  // likewise
    static_assert(Device::memory == memory_space::host,
                  "student::Encoder writes its masks and initial weights from the host: run it on a device "
                  "with host memory (device::Reference, device::Cpu); see docs/students.md");

public:
    using scalar_type = T;
    using device_type = Device;
    using config_type = EncoderConfig;

    /// Lays out and allocates all three arenas for batches of up to `max_batch` sequences of up to
    /// `config.context_length` tokens. Parameters start at zero; call `init` or load weights.
    /// `activations::checkpointed` trains in less memory, without `attention` (activations).
    Encoder(const EncoderConfig& config, int max_batch, Device device = Device{},
            activations mode = activations::training)
        : Encoder(config, max_batch, config.context_length, device, mode) {}

    /// As above for sequences of up to `max_length` (<= context_length) tokens: the activations
    /// (attention maps are max_batch·H·max_length² per layer) are laid out for that length, so a
    /// model with 512 positions embedding short sentences does not hold 512² maps.
    Encoder(const EncoderConfig& config, int max_batch, int max_length, Device device = Device{},
            activations mode = activations::training)
        : cfg_(config), dev_(device), max_batch_(max_batch), max_length_(max_length), mode_(mode) {
        cfg_.validate();
        if (mode == activations::inference)
            throw config_error("student", "student::Encoder has no activations::inference mode (it always trains)");
        if (mode == activations::training_fused)
            throw config_error("student",
                               "student::Encoder has no activations::training_fused mode (its "
                               "bidirectional attention keeps its maps); use training or checkpointed");
        if (max_batch < 1) throw config_error("max_batch", "must be >= 1, got " + std::to_string(max_batch));
        if (max_length < 1 || max_length > cfg_.context_length)
            throw config_error("max_length", "must be in [1, context_length = " + std::to_string(cfg_.context_length) +
                                                 "], got " + std::to_string(max_length));
        cls_ = cfg_.pooling == "cls";
        layout_parameters();
        layout_activations();
    }

    const EncoderConfig& config() const noexcept { return cfg_; }
    const Device& device() const noexcept { return dev_; }
    int max_batch() const noexcept { return max_batch_; }
    /// Longest sequence a forward takes (the constructor's max_length, else context_length).
    int max_length() const noexcept { return max_length_; }

    // parameters() lists every parameter in checkpoint order, under transformers' BertModel names
    // (`embeddings.word_embeddings.weight`, `encoder.layer.N.attention.self.query.weight`, ...);
    // parameter_data(), gradient_data() and arena_size() are the flat arenas (see parameter_store).

    /// BERT initialization (transformers' `_init_weights`): weights and embeddings ~ N(0, 0.02),
    /// biases 0, LayerNorm gain 1 and shift 0.
    void init(std::uint64_t seed) {
        Rng rng(seed);
        for (const auto& p : this->parameters()) {
            T* d = p.value.data();
            for (std::int64_t i = 0; i < p.value.numel(); ++i) {
                switch (p.kind) {
                    case parameter_kind::bias:
                        d[i] = T(0);
                        break;
                    case parameter_kind::norm:
                        d[i] = p.name.ends_with(".weight") ? T(1) : T(0);
                        break;
                    default:
                        d[i] = static_cast<T>(rng.normal() * 0.02);
                }
            }
        }
    }

    /// Runs the encoder on tokens(B,T) (row-major, right-padded; B <= max_batch, T <= context_length,
    /// ids in [0, vocab_size)). `lengths[b]` in [1, T] valid tokens per sequence (null: all T valid);
    /// `token_types`(B,T) in [0, type_vocab_size) (null: all 0). Afterwards `pooled()`,
    /// `hidden_state(i)` and `attention(l)` hold the results and `grad_pooled()` is zero.
    void forward(const std::int32_t* tokens, int B, int Tn, const int* lengths = nullptr,
                 const std::int32_t* token_types = nullptr) {
        check_batch(tokens, token_types, B, Tn);
        T* mask = act(mask_);
        for (int b = 0; b < B; ++b) {
            const int n = lengths ? lengths[b] : Tn;
            if (n < 1 || n > Tn)
                throw shape_error("forward: length " + std::to_string(n) + " of sequence " + std::to_string(b) +
                                  " outside [1, " + std::to_string(Tn) + "]");
            for (int t = 0; t < Tn; ++t) mask[std::int64_t(b) * Tn + t] = t < n ? T(1) : T(0);
        }
        run(tokens, token_types, B, Tn);
    }

    /// As `forward`, with transformers' attention_mask(B,T) (1 = token, 0 = padding, anywhere in
    /// the sequence) instead of lengths; every sequence needs at least one token.
    void forward_masked(const std::int32_t* tokens, const std::int32_t* attention_mask, int B, int Tn,
                        const std::int32_t* token_types = nullptr) {
        check_batch(tokens, token_types, B, Tn);
        T* mask = act(mask_);
        for (int b = 0; b < B; ++b) {
            int n = 0;
            for (int t = 0; t < Tn; ++t) {
                const std::int32_t m = attention_mask[std::int64_t(b) * Tn + t];
                if (m != 0 && m != 1)
                    throw shape_error("forward: attention_mask value " + std::to_string(m) + " at position " +
                                      std::to_string(std::int64_t(b) * Tn + t) + " is not 0 or 1");
                mask[std::int64_t(b) * Tn + t] = T(m);
                n += m;
            }
            if (n == 0) throw shape_error("forward: sequence " + std::to_string(b) + " has no unmasked token");
        }
        run(tokens, token_types, B, Tn);
    }

    /// Batch and length of the last forward.
    int batch() const noexcept { return B_; }
    int length() const noexcept { return T_; }

    /// (B,C) pooled embeddings of the last forward (not normalized).
    Tensor<T> pooled() const { return Tensor<T>(act(pooled_), {B_, cfg_.d_model}, Device::memory); }
    /// (B,C) gradient of the loss w.r.t. `pooled()`: losses write it, `backward` reads it.
    Tensor<T> grad_pooled() const { return Tensor<T>(act(d_pooled_), {B_, cfg_.d_model}, Device::memory); }
    /// (B,T) the last forward's mask: 1 at tokens, 0 at padding.
    Tensor<T> mask() const { return Tensor<T>(act(mask_), {B_, T_}, Device::memory); }
    /// Number of hidden states: n_layers + 1.
    int hidden_state_count() const noexcept { return cfg_.n_layers + 1; }
    /// (B,T,C) hidden state i of the last forward, transformers' convention: 0 is the embeddings'
    /// output (after their LayerNorm), i >= 1 the output of block i-1 (after its output LayerNorm);
    /// `hidden_state(n_layers)` is BertModel's last_hidden_state.
    Tensor<T> hidden_state(int i) const {
        if (i < 0 || i > cfg_.n_layers)
            throw shape_error("hidden_state(" + std::to_string(i) + "): valid indices are 0.." +
                              std::to_string(cfg_.n_layers));
        return Tensor<T>(act(hidden_block(i)), {B_, T_, cfg_.d_model}, Device::memory);
    }
    /// Whether attention maps of a forward are kept (not with activations::checkpointed).
    bool keeps_attention() const noexcept { return mode_ == activations::training; }
    /// (B,H,T,T) attention probabilities of layer l of the last forward (0 at padded keys).
    Tensor<T> attention(int l) const {
        if (l < 0 || l >= cfg_.n_layers)
            throw shape_error("attention(" + std::to_string(l) + "): valid layers are 0.." +
                              std::to_string(cfg_.n_layers - 1));
        if (!keeps_attention())
            throw config_error("student",
                               "attention: this model recomputes attention maps in backward "
                               "(activations::checkpointed) and keeps none; a loss that reads them "
                               "needs activations::training");
        return Tensor<T>(act(layer_acts_[l].att), {B_, cfg_.n_heads, T_, T_}, Device::memory);
    }

    /// Sets every gradient to zero (gradients accumulate across `backward` calls).
    void zero_grad() { this->zero_gradients(dev_); }

    /// Backpropagates `grad_pooled()` through the last forward, accumulating into the gradients.
    /// `d_hidden[i]` (B,T,C) adds a gradient on hidden state i and `d_attention[l]` (B,H,T,T) one on
    /// attention map l (transfer losses); either span may be shorter than the count or hold empty
    /// tensors for "none". Gradients on padded positions flow as the forward computed them (a padded
    /// query's hidden state depends on the tokens; a padded key gets none through attention).
    void backward(std::span<const Tensor<const T>> d_hidden = {}, std::span<const Tensor<const T>> d_attention = {}) {
        const int B = B_, Tn = T_, C = cfg_.d_model, F = cfg_.d_ff, H = cfg_.n_heads, L = cfg_.n_layers;
        const int N = B * Tn;
        const std::int64_t NC = std::int64_t(N) * C;
        if (B == 0) throw shape_error("backward: no forward to backpropagate through");
        auto extra = [&](std::span<const Tensor<const T>> list, int i, std::int64_t numel) -> const T* {
            if (i >= static_cast<int>(list.size()) || list[i].empty()) return nullptr;
            if (list[i].numel() != numel || !list[i].contiguous())
                throw shape_error("backward: extra gradient " + std::to_string(i) + " has shape " +
                                  list[i].shape_string() + ", expected " + std::to_string(numel) +
                                  " contiguous elements");
            return list[i].data();
        };
        T* d_cur = act(d_cur_);  // gradient w.r.t. the current hidden state
        T* d_tmp = act(d_tmp_);
        dev_.fill_zero(d_cur, sizeof(T) * NC);
        if (cls_)
            cls_pool_backward(dev_, d_cur, act(d_pooled_), B, Tn, C);
        else
            mean_pool_backward(dev_, d_cur, act(d_pooled_), act(mask_), B, Tn, C);
        if (const T* e = extra(d_hidden, L, NC)) accumulate(dev_, d_cur, e, NC);
        for (int l = L - 1; l >= 0; --l) {
            const auto& w = layer_params_[l];
            const auto& a = layer_acts_[l];
            const T* x_in = act(hidden_block(l));
            // checkpointed: the blocks share one working memory, which holds the last block's
            // activations after the forward; the others are recomputed from their kept input
            if (mode_ == activations::checkpointed && l + 1 < L) block_forward(l, B, Tn);
            // y = LN2(o):  d_tmp = d_o
            dev_.fill_zero(d_tmp, sizeof(T) * NC);
            layernorm_backward(dev_, d_tmp, grad(w.ln2_w), grad(w.ln2_b), d_cur, act(a.res_out), val(w.ln2_w),
                               act(a.ln2_mean), act(a.ln2_rstd), N, C);
            // o = h1 + W2 gelu(W1 h1 + b1) + b2:  d_tmp = d_h1 = d_o + W1^T gelu'(f) (W2^T d_o)
            nn::linear_backward(dev_, act(d_fc_), grad(w.out_w), grad(w.out_b), d_tmp, act(a.fc_gelu), val(w.out_w), N,
                                F, C);
            gelu_erf_backward(dev_, act(d_fc_), act(a.fc), act(d_fc_), std::int64_t(N) * F);
            nn::linear_backward(dev_, static_cast<T*>(nullptr), grad(w.fc_w), grad(w.fc_b), act(d_fc_), act(a.ln1),
                                val(w.fc_w), N, C, F);
            gemm(dev_, false, false, N, C, F, T(1), act(d_fc_), F, val(w.fc_w), C, T(1), d_tmp, C);
            // h1 = LN1(a):  d_cur = d_a
            dev_.fill_zero(d_cur, sizeof(T) * NC);
            layernorm_backward(dev_, d_cur, grad(w.ln1_w), grad(w.ln1_b), d_tmp, act(a.res_attn), val(w.ln1_w),
                               act(a.ln1_mean), act(a.ln1_rstd), N, C);
            // a = x + Wo attention(Wq x, Wk x, Wv x) + bo:  d_cur = d_x
            nn::linear_backward(dev_, act(d_ctx_), grad(w.o_w), grad(w.o_b), d_cur, act(a.ctx), val(w.o_w), N, C, C);
            nn::bidirectional_attention_backward(dev_, act(d_q_), act(d_k_), act(d_v_), act(d_att_), act(d_ctx_),
                                                 act(a.q), act(a.k), act(a.v), act(a.att), act(mask_),
                                                 extra(d_attention, l, std::int64_t(B) * H * Tn * Tn), B, Tn, C, H);
            const std::size_t dqkv[3] = {d_q_, d_k_, d_v_};
            const std::size_t wqkv[3] = {w.q_w, w.k_w, w.v_w}, bqkv[3] = {w.q_b, w.k_b, w.v_b};
            for (int j = 0; j < 3; ++j) {
                nn::linear_backward(dev_, static_cast<T*>(nullptr), grad(wqkv[j]), grad(bqkv[j]), act(dqkv[j]), x_in,
                                    val(wqkv[j]), N, C, C);
                gemm(dev_, false, false, N, C, C, T(1), act(dqkv[j]), C, val(wqkv[j]), C, T(1), d_cur, C);
            }
            if (const T* e = extra(d_hidden, l, NC)) accumulate(dev_, d_cur, e, NC);
        }
        // hidden 0 = LN(word + pos + type)
        dev_.fill_zero(d_tmp, sizeof(T) * NC);
        layernorm_backward(dev_, d_tmp, grad(emb_ln_w_), grad(emb_ln_b_), d_cur, act(emb_), val(emb_ln_w_),
                           act(emb_mean_), act(emb_rstd_), N, C);
        bert_embedding_backward(dev_, grad(word_), grad(pos_), grad(type_), d_tmp, tokens_.data(),
                                has_types_ ? types_.data() : nullptr, B, Tn, C);
    }

    /// Bytes held by the parameter, gradient and activation arenas and the token buffers.
    std::size_t arena_bytes() const noexcept {
        return this->parameter_bytes() + activation_bytes() + sizeof(std::int32_t) * (tokens_.size() + types_.size());
    }
    /// Bytes of the activation arena: what a forward keeps and the backward's buffers.
    std::size_t activation_bytes() const noexcept { return sizeof(T) * act_arena_.size(); }

private:
    struct LayerParams {
        std::size_t q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln1_w, ln1_b, fc_w, fc_b, out_w, out_b, ln2_w, ln2_b;
    };
    struct LayerActs {
        std::size_t q, k, v, att, ctx, res_attn, ln1, ln1_mean, ln1_rstd, fc, fc_gelu, res_out, ln2, ln2_mean, ln2_rstd;
    };

    void run(const std::int32_t* tokens, const std::int32_t* token_types, int B, int Tn) {
        B_ = B;
        T_ = Tn;
        const int C = cfg_.d_model;
        const int N = B * Tn;
        const T eps = static_cast<T>(cfg_.layer_norm_eps);
        std::copy_n(tokens, N, tokens_.data());
        has_types_ = token_types != nullptr;
        if (has_types_) std::copy_n(token_types, N, types_.data());
        bert_embedding_forward(dev_, act(emb_), tokens_.data(), has_types_ ? types_.data() : nullptr, val(word_),
                               val(pos_), val(type_), B, Tn, C);
        layernorm_forward(dev_, act(emb_ln_), act(emb_mean_), act(emb_rstd_), act(emb_), val(emb_ln_w_), val(emb_ln_b_),
                          N, C, eps);
        for (int l = 0; l < cfg_.n_layers; ++l) block_forward(l, B, Tn);
        const T* last = act(hidden_block(cfg_.n_layers));
        if (cls_)
            cls_pool_forward(dev_, act(pooled_), last, B, Tn, C);
        else
            mean_pool_forward(dev_, act(pooled_), last, act(mask_), B, Tn, C);
        dev_.fill_zero(act(d_pooled_), sizeof(T) * B * C);
    }

    // Block l on its input hidden_state(l) (B,Tn,C): its activations, and its output hidden_state(l+1).
    void block_forward(int l, int B, int Tn) {
        const int C = cfg_.d_model, F = cfg_.d_ff, H = cfg_.n_heads;
        const int N = B * Tn;
        const T eps = static_cast<T>(cfg_.layer_norm_eps);
        const auto& w = layer_params_[l];
        const auto& a = layer_acts_[l];
        const T* x = act(hidden_block(l));
        nn::linear_forward(dev_, act(a.q), x, val(w.q_w), val(w.q_b), N, C, C);
        nn::linear_forward(dev_, act(a.k), x, val(w.k_w), val(w.k_b), N, C, C);
        nn::linear_forward(dev_, act(a.v), x, val(w.v_w), val(w.v_b), N, C, C);
        nn::bidirectional_attention_forward(dev_, act(a.ctx), act(a.att), act(a.q), act(a.k), act(a.v), act(mask_), B,
                                            Tn, C, H);
        dev_.copy(act(a.res_attn), x, sizeof(T) * N * C);
        nn::linear_forward(dev_, act(a.res_attn), act(a.ctx), val(w.o_w), val(w.o_b), N, C, C, true);
        layernorm_forward(dev_, act(a.ln1), act(a.ln1_mean), act(a.ln1_rstd), act(a.res_attn), val(w.ln1_w),
                          val(w.ln1_b), N, C, eps);
        nn::linear_forward(dev_, act(a.fc), act(a.ln1), val(w.fc_w), val(w.fc_b), N, C, F);
        gelu_erf_forward(dev_, act(a.fc_gelu), act(a.fc), std::int64_t(N) * F);
        dev_.copy(act(a.res_out), act(a.ln1), sizeof(T) * N * C);
        nn::linear_forward(dev_, act(a.res_out), act(a.fc_gelu), val(w.out_w), val(w.out_b), N, F, C, true);
        layernorm_forward(dev_, act(a.ln2), act(a.ln2_mean), act(a.ln2_rstd), act(a.res_out), val(w.ln2_w),
                          val(w.ln2_b), N, C, eps);
    }

    void layout_parameters() {
        const std::int64_t V = cfg_.vocab_size, C = cfg_.d_model, F = cfg_.d_ff;
        auto add = [&](std::string name, std::initializer_list<std::int64_t> shape, parameter_kind kind) {
            return this->add_parameter(std::move(name), shape, kind);
        };
        word_ = add("embeddings.word_embeddings.weight", {V, C}, parameter_kind::embedding);
        pos_ = add("embeddings.position_embeddings.weight", {cfg_.context_length, C}, parameter_kind::embedding);
        type_ = add("embeddings.token_type_embeddings.weight", {cfg_.type_vocab_size, C}, parameter_kind::embedding);
        emb_ln_w_ = add("embeddings.LayerNorm.weight", {C}, parameter_kind::norm);
        emb_ln_b_ = add("embeddings.LayerNorm.bias", {C}, parameter_kind::norm);
        for (int l = 0; l < cfg_.n_layers; ++l) {
            const std::string p = "encoder.layer." + std::to_string(l) + ".";
            LayerParams w;
            w.q_w = add(p + "attention.self.query.weight", {C, C}, parameter_kind::weight);
            w.q_b = add(p + "attention.self.query.bias", {C}, parameter_kind::bias);
            w.k_w = add(p + "attention.self.key.weight", {C, C}, parameter_kind::weight);
            w.k_b = add(p + "attention.self.key.bias", {C}, parameter_kind::bias);
            w.v_w = add(p + "attention.self.value.weight", {C, C}, parameter_kind::weight);
            w.v_b = add(p + "attention.self.value.bias", {C}, parameter_kind::bias);
            w.o_w = add(p + "attention.output.dense.weight", {C, C}, parameter_kind::weight);
            w.o_b = add(p + "attention.output.dense.bias", {C}, parameter_kind::bias);
            w.ln1_w = add(p + "attention.output.LayerNorm.weight", {C}, parameter_kind::norm);
            w.ln1_b = add(p + "attention.output.LayerNorm.bias", {C}, parameter_kind::norm);
            w.fc_w = add(p + "intermediate.dense.weight", {F, C}, parameter_kind::weight);
            w.fc_b = add(p + "intermediate.dense.bias", {F}, parameter_kind::bias);
            w.out_w = add(p + "output.dense.weight", {C, F}, parameter_kind::weight);
            w.out_b = add(p + "output.dense.bias", {C}, parameter_kind::bias);
            w.ln2_w = add(p + "output.LayerNorm.weight", {C}, parameter_kind::norm);
            w.ln2_b = add(p + "output.LayerNorm.bias", {C}, parameter_kind::norm);
            layer_params_.push_back(w);
        }
        this->allocate_parameters(dev_, true);
    }

    void layout_activations() {
        const std::int64_t N = std::int64_t(max_batch_) * max_length_, C = cfg_.d_model, F = cfg_.d_ff;
        const std::int64_t att = std::int64_t(max_batch_) * cfg_.n_heads * max_length_ * max_length_;
        auto add = [&](const char* name, std::int64_t n) { return act_layout_.add<T>(name, {n}); };
        mask_ = add("mask", N);
        emb_ = add("emb", N * C);
        emb_ln_ = add("emb_ln", N * C);
        emb_mean_ = add("emb_mean", N);
        emb_rstd_ = add("emb_rstd", N);
        for (int l = 0; l < cfg_.n_layers; ++l) {
            if (mode_ == activations::checkpointed && l > 0) {  // layer 0's working memory, its own output
                layer_acts_.push_back(layer_acts_.front());
                layer_acts_.back().ln2 = add("ln2", N * C);
                continue;
            }
            LayerActs a;
            a.q = add("q", N * C);
            a.k = add("k", N * C);
            a.v = add("v", N * C);
            a.att = add("att", att);
            a.ctx = add("ctx", N * C);
            a.res_attn = add("res_attn", N * C);
            a.ln1 = add("ln1", N * C);
            a.ln1_mean = add("ln1_mean", N);
            a.ln1_rstd = add("ln1_rstd", N);
            a.fc = add("fc", N * F);
            a.fc_gelu = add("fc_gelu", N * F);
            a.res_out = add("res_out", N * C);
            a.ln2 = add("ln2", N * C);
            a.ln2_mean = add("ln2_mean", N);
            a.ln2_rstd = add("ln2_rstd", N);
            layer_acts_.push_back(a);
        }
        pooled_ = add("pooled", std::int64_t(max_batch_) * C);
        d_pooled_ = add("d_pooled", std::int64_t(max_batch_) * C);
        d_cur_ = add("d_cur", N * C);
        d_tmp_ = add("d_tmp", N * C);
        d_fc_ = add("d_fc", N * F);
        d_ctx_ = add("d_ctx", N * C);
        d_q_ = add("d_q", N * C);
        d_k_ = add("d_k", N * C);
        d_v_ = add("d_v", N * C);
        d_att_ = add("d_att", att);
        act_arena_ = detail::Arena<T, Device>(dev_, act_layout_.size());
        tokens_.assign(std::size_t(N), 0);
        types_.assign(std::size_t(N), 0);
    }

    void check_batch(const std::int32_t* tokens, const std::int32_t* types, int B, int Tn) const {
        if (B < 1 || B > max_batch_)
            throw shape_error("forward: batch " + std::to_string(B) + " outside [1, " + std::to_string(max_batch_) +
                              "]");
        if (Tn < 1 || Tn > max_length_)
            throw shape_error("forward: length " + std::to_string(Tn) + " outside [1, " +
                              (max_length_ == cfg_.context_length ? "context_length" : "max_length") + " = " +
                              std::to_string(max_length_) + "]");
        for (std::int64_t i = 0; i < std::int64_t(B) * Tn; ++i) {
            if (tokens[i] < 0 || tokens[i] >= cfg_.vocab_size)
                throw shape_error("forward: token " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                                  " is outside the vocabulary [0, " + std::to_string(cfg_.vocab_size) + ")");
            if (types && (types[i] < 0 || types[i] >= cfg_.type_vocab_size))
                throw shape_error("forward: token type " + std::to_string(types[i]) + " at position " +
                                  std::to_string(i) +
                                  " is outside [0, type_vocab_size = " + std::to_string(cfg_.type_vocab_size) + ")");
        }
    }

    std::size_t hidden_block(int i) const noexcept { return i == 0 ? emb_ln_ : layer_acts_[i - 1].ln2; }
    T* act(std::size_t i) const noexcept { return act_arena_.data() + act_layout_.blocks()[i].offset; }

    EncoderConfig cfg_;
    Device dev_;
    int max_batch_, max_length_;
    activations mode_;
    bool cls_ = false;
    int B_ = 0, T_ = 0;
    bool has_types_ = false;

    detail::ArenaLayout act_layout_;
    detail::Arena<T, Device> act_arena_;
    std::vector<LayerParams> layer_params_;
    std::vector<LayerActs> layer_acts_;
    std::size_t word_ = 0, pos_ = 0, type_ = 0, emb_ln_w_ = 0, emb_ln_b_ = 0;
    std::size_t mask_ = 0, emb_ = 0, emb_ln_ = 0, emb_mean_ = 0, emb_rstd_ = 0, pooled_ = 0, d_pooled_ = 0;
    std::size_t d_cur_ = 0, d_tmp_ = 0, d_fc_ = 0, d_ctx_ = 0, d_q_ = 0, d_k_ = 0, d_v_ = 0, d_att_ = 0;
    std::vector<std::int32_t> tokens_, types_;  // host copies of the last forward's ids (laid out once)
};

}  // namespace distill::student

BOOST_HANA_ADAPT_STRUCT(distill::student::EncoderConfig, vocab_size, context_length, type_vocab_size, d_model, n_layers,
                        n_heads, d_ff, layer_norm_eps, pooling);
