#pragma once
/// @file student/transformer_memory.hpp
/// What a `student::Transformer` (and its `KvCache`) will allocate, computed from the config, the
/// largest batch and the activation mode alone, without allocating: the parameter, gradient and
/// activation arenas as the Transformer's constructor lays them out (every block on a 64-byte
/// boundary, detail::ArenaLayout), so that `transformer_memory(...)` equals the constructed model's
/// `parameter_bytes()`, `activation_bytes()` and `backward_buffer_bytes()` exactly
/// (tests/unit-memory-plan.cpp). A change to `Transformer::layout_activations` must be mirrored here.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "distill/detail/arena.hpp"
#include "distill/device.hpp"
#include "distill/device/cpu/layers.hpp"
#include "distill/error.hpp"
#include "distill/student/lora.hpp"
#include "distill/student/parameters.hpp"
#include "distill/student/transformer.hpp"

namespace distill::student {

/// Bytes of each arena of a `Transformer<T, Device>` built with the same config, max_batch and mode.
struct TransformerMemory {
    std::size_t base_weights = 0;       ///< the model's own weights (frozen with LoRA), bf16 copies included
    std::size_t base_weights_bf16 = 0;  ///< of which bf16 (the GEMM matrices under bf16 storage)
    bool base_weights_fp32 = true;      ///< whether every base weight has an fp32 value (false: bf16 alone)
    std::size_t base_gradients = 0;     ///< their gradients: 0 with LoRA or activations::inference
    std::size_t adapter_weights = 0;    ///< LoRA's A and B matrices
    std::size_t adapter_gradients = 0;  ///< their gradients (0 for activations::inference)
    std::size_t activations = 0;        ///< the activation arena: `activation_bytes()`
    std::size_t backward_buffers = 0;   ///< its backward part: `backward_buffer_bytes()`
    std::size_t tokens = 0;             ///< the token ids of a batch (max_batch × context, int32)
    /// The trainable parameters in checkpoint order (name, elements): every weight, or the adapters.
    std::vector<std::pair<std::string, std::int64_t>> trainable;

    std::size_t weights() const noexcept { return base_weights + adapter_weights; }
    std::size_t gradients() const noexcept { return base_gradients + adapter_gradients; }
    /// `Transformer::arena_bytes()`: weights, gradients, activations and tokens.
    std::size_t total() const noexcept { return weights() + gradients() + activations + tokens; }
};

/// The arenas a `Transformer<T, Device>(config, max_batch, device, mode)` allocates, without allocating
/// (the device matters where it has the fused attention kernels: no (T,T) buffers in activations::
/// inference, training_fused and checkpointed, `attends_fused`). `bf16_storage`: whether that device stores the GEMM
/// matrices in bf16 (`stores_bf16_weights(config, device)`: precision::bf16 on device::Cpu with oneDNN or
/// device::Cuda) — then they take
/// 2 bytes an element, beside their fp32 masters when they train, alone when frozen
/// (activations::inference, LoRA, `frozen`). Throws `config_error` as the constructor does for a config
/// out of range or max_batch < 1.
template <class T = float, class Device = device::Cpu>
TransformerMemory transformer_memory(const TransformerConfig& config, int max_batch,
                                     activations mode = activations::training, bool bf16_storage = false) {
    config.validate();
    if (max_batch < 1) throw config_error("max_batch", "must be >= 1, got " + std::to_string(max_batch));
    const TransformerConfig& c = config;
    const LoraConfig& lc = c.lora;
    const bool trains = mode != activations::inference, ln = !c.rms();
    const std::int64_t V = c.vocab_size, C = c.d_model, F = c.d_ff, Q = c.qkv_width(), F1 = c.fc_width(), H = c.n_heads,
                       Hkv = c.kv_heads(), hs = c.head_size(), r = lc.rank;
    TransformerMemory m;

    // parameters, in Transformer::layout_parameters' order (names only where the trainable list needs them)
    // params: every base weight (the gradient arena's layout); fp32: those with an fp32 value (the
    // value arena); bf16: the bf16 copies of the GEMM matrices
    detail::ArenaLayout params, fp32, bf16, adapters;
    const bool matrices_bf16 = bf16_storage && c.bf16_weights;
    const bool bf16_alone = matrices_bf16 && (!trains || lc.enabled() || c.frozen);
    auto add = [&](std::string name, std::int64_t n, bool matrix = false) {
        if (!(matrix && bf16_alone)) fp32.add<T>(name, {n});
        if (matrix && matrices_bf16) bf16.add<std::uint16_t>(name, {n});
        params.add<T>(std::move(name), {n});
    };
    add("wte.weight", V * C, true);
    if (!c.rope()) add("wpe.weight", std::int64_t(c.context_length) * C);
    for (int l = 0; l < c.n_layers; ++l) {
        const std::string p = "h." + std::to_string(l) + ".";
        add(p + "ln_1.weight", C);
        if (ln) add(p + "ln_1.bias", C);
        add(p + "attn.c_attn.weight", Q * C, true);
        if (c.qkv_bias) add(p + "attn.c_attn.bias", Q);
        add(p + "attn.c_proj.weight", C * C, true);
        if (c.proj_bias) add(p + "attn.c_proj.bias", C);
        add(p + "ln_2.weight", C);
        if (ln) add(p + "ln_2.bias", C);
        add(p + "mlp.c_fc.weight", F1 * C, true);
        if (c.mlp_bias) add(p + "mlp.c_fc.bias", F1);
        add(p + "mlp.c_proj.weight", C * F, true);
        if (c.mlp_bias) add(p + "mlp.c_proj.bias", C);
    }
    add("ln_f.weight", C);
    if (ln) add("ln_f.bias", C);
    if (!c.tie_embeddings) add("lm_head.weight", V * C, true);

    // adapters, in Transformer::layout_adapters' order; `ins` (per block) the inputs of each
    std::vector<std::int64_t> ins;
    if (lc.enabled()) {
        auto adapter = [&](const std::string& name, std::int64_t in, std::int64_t out) {
            adapters.add<T>(name + ".lora_A", {r * in});
            adapters.add<T>(name + ".lora_B", {out * r});
        };
        for (int l = 0; l < c.n_layers; ++l) {
            const std::string p = "h." + std::to_string(l) + ".";
            auto one = [&](const char* t, std::int64_t in, std::int64_t out) {
                if (!lc.has(t)) return;
                adapter(p + t, in, out);
                if (l == 0) ins.push_back(in);
            };
            one("q", C, H * hs);
            one("k", C, Hkv * hs);
            one("v", C, Hkv * hs);
            one("qkv", C, Q);
            one("o", C, C);
            one("up", C, F);
            one("gate", C, F);
            one("down", F, C);
        }
        if (lc.has("head")) adapter("lm_head", C, V);
    }
    const bool frozen = !adapters.blocks().empty();
    m.base_weights_bf16 = sizeof(std::uint16_t) * bf16.size();
    m.base_weights = sizeof(T) * fp32.size() + m.base_weights_bf16;
    m.base_weights_fp32 = !bf16_alone;
    m.base_gradients = trains && !frozen ? sizeof(T) * params.size() : 0;
    m.adapter_weights = sizeof(T) * adapters.size();
    m.adapter_gradients = trains ? m.adapter_weights : 0;
    for (const auto& b : (frozen ? adapters : params).blocks()) m.trainable.emplace_back(b.name, std::int64_t(b.numel));

    // activations, in Transformer::layout_activations' order
    detail::ArenaLayout acts;
    const std::int64_t N = std::int64_t(max_batch) * c.context_length;
    const std::int64_t rows_h = std::int64_t(max_batch) * H * c.context_length, att = rows_h * c.context_length;
    // Transformer::fused_attention(): a layer's att holds B·H·T (log-sum-exp or decode scratch)
    const bool fused = attends_fused<T, Device>(mode);
    const std::int64_t att_layer = fused ? rows_h : att;
    auto act = [&](std::int64_t n) { return acts.add<T>("", {n}); };
    act(N * C);  // encoded
    for (int l = 0; l < c.n_layers; ++l) {
        if ((mode == activations::inference || mode == activations::checkpointed) && l > 0) {  // layer 0's, reused
            if (mode == activations::checkpointed) act(N * C);
            continue;
        }
        for (std::int64_t n : {N * C, N, N, N * Q, att_layer, N * C, N * C, N * C, N, N, N * F1, N * F, N * C}) act(n);
        for (std::int64_t in : ins) {
            act(N * r);
            if (trains && lc.dropout > 0) act(N * in);
        }
    }
    for (std::int64_t n : {N * C, N, N, N * V, std::int64_t(max_batch) * V}) act(n);  // lnf, stats, logits, next
    if (c.rope()) act(std::int64_t(c.context_length) * hs);
    std::size_t dlogits = 0;
    if (trains) {
        dlogits = act(N * V);
        for (std::int64_t n : {N, N * C, N * C, N * Q}) act(n);
        if (!fused) act(att);  // d_att
        for (std::int64_t n : {N * C, N * F1}) act(n);
        if (F1 != F) act(N * F);
    }
    if (lc.enabled()) {
        act(N * r);
        if (trains && lc.dropout > 0) act(N * C);
        if (trains) {
            act(N * r);
            if (lc.dropout > 0) act(N * std::max(C, F));
            act(2 * C);
        }
    }
    m.activations = sizeof(T) * acts.size();
    m.backward_buffers = trains ? sizeof(T) * (acts.size() - acts.blocks()[dlogits].offset) : 0;
    m.tokens = sizeof(std::int32_t) * std::size_t(max_batch) * std::size_t(c.context_length);
    return m;
}

/// Bytes of a `KvCache<T, Device>(config, max_batch)`: keys and values of every layer for
/// max_batch sequences of context_length tokens.
template <class T = float>
std::size_t kv_cache_bytes(const TransformerConfig& config, int max_batch) {
    return sizeof(T) * 2 * std::size_t(max_batch) * std::size_t(config.context_length) *
           std::size_t(config.kv_heads()) * std::size_t(config.head_size()) * std::size_t(config.n_layers);
}

/// Bytes of the packed matrices a `KvCache` holds after a prefill of a `Transformer<T, Device>` built
/// with `config` on `dev` (`KvCache::packed_bytes()`), and the model itself after `pack_matrices()`
/// and a forward (`Transformer::packed_bytes()`); see `device::pack_weight`: 0 where the device does
/// not pack.
template <class T, class Device>
std::size_t kv_cache_packed_bytes(const TransformerConfig& c, const Device& dev) {
    if constexpr (std::is_same_v<T, float> && requires { packed_weight_bytes(dev, 1, 1, true); }) {
        const bool bf16 = stores_bf16_weights<T>(c, dev);
        const int C = c.d_model;
        auto packed = [&](int N, int K) { return packed_weight_bytes(dev, N, K, bf16); };
        return packed(c.vocab_size, C) + std::size_t(c.n_layers) * (packed(c.qkv_width(), C) + packed(C, C) +
                                                                    packed(c.fc_width(), C) + packed(C, c.d_ff));
    } else {
        return 0;
    }
}

}  // namespace distill::student
