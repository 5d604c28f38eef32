#pragma once
/// @file transformer.hpp
/// `student::Transformer`: a pre-norm causal decoder whose blocks are configuration: GPT-2's
/// (LayerNorm, learned positions, tanh GELU, multi-head attention, tied LM head) or Llama's, Qwen2's
/// and Phi-3's (RMSNorm, rotary positions with their scaling variants, SwiGLU, grouped-query
/// attention, optional biases, untied head). llm.c style: one forward and one backward function,
/// every tensor a view into three arenas laid out once.

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <boost/hana/adapt_struct.hpp>

#include "distill/detail/arena.hpp"
#include "distill/detail/hash.hpp"
#include "distill/detail/parallel.hpp"
#include "distill/detail/rng.hpp"
#include "distill/device.hpp"
#include "distill/error.hpp"
#include "distill/io/quant.hpp"
#include "distill/nn/attention.hpp"
#include "distill/nn/linear.hpp"
#include "distill/parameter.hpp"
#include "distill/student/lora.hpp"
#include "distill/student/parameters.hpp"
#include "distill/tensor.hpp"

namespace distill::student {

/// How rotary positions stretch beyond the context a model was trained on (transformers'
/// `rope_scaling`): `none`; `linear` (positions divided by `factor`); `dynamic` (NTK-aware: the base
/// grows with the sequence once it is longer than `original_context_length`); `llama3` (Llama 3.1's
/// per-frequency interpolation between `low_freq_factor` and `high_freq_factor`).
struct RopeScaling {
    std::string type = "none";        ///< none | linear | dynamic | llama3
    double factor = 1;                ///< stretch factor (linear, dynamic, llama3)
    double low_freq_factor = 1;       ///< llama3
    double high_freq_factor = 4;      ///< llama3
    int original_context_length = 0;  ///< dynamic, llama3: the context the model was trained with
};

/// Shape and block kinds of a `Transformer`. Keys are the JSON keys of the job's `student` object.
/// The defaults are GPT-2's blocks; Llama, Qwen2 and Phi-3 are other settings of the same keys
/// (`io::hf` reads them from a checkpoint's config.json).
struct TransformerConfig {
    int vocab_size = 263;               ///< tokens the model knows (the byte tokenizer has 263)
    int context_length = 256;           ///< longest sequence (rows of a learned position embedding)
    int d_model = 128;                  ///< residual stream width C
    int n_layers = 4;                   ///< transformer blocks L
    int n_heads = 4;                    ///< attention (query) heads H; d_model must be a multiple
    int n_kv_heads = 0;                 ///< key/value heads (grouped-query attention); 0 = n_heads; divides n_heads
    int d_ff = 512;                     ///< MLP hidden width F
    std::string norm = "layernorm";     ///< layernorm (GPT-2) | rmsnorm (Llama, Qwen2, Phi-3)
    double norm_eps = 1e-5;             ///< epsilon of every norm
    std::string positions = "learned";  ///< learned (GPT-2) | rope (rotary, rotate-half convention)
    double rope_theta = 10000;          ///< rotary base
    RopeScaling rope_scaling{};         ///< rotary scaling variant
    std::string mlp = "gelu";           ///< gelu (tanh GELU, F wide) | swiglu (silu(gate) * up, gate|up 2F wide)
    bool qkv_bias = true;               ///< biases on the q, k, v projections
    bool proj_bias = true;              ///< bias on the attention output projection
    bool mlp_bias = true;               ///< biases on the MLP projections
    bool tie_embeddings = true;         ///< LM head = token embedding (else its own `lm_head.weight`)
    /// Low-rank adapters (student/lora.hpp); off by default. Not a key of the `student` object: the
    /// job's top-level `lora` sets it, and it is not part of the config saved with weights.
    LoraConfig lora{};
    /// Under `precision::bf16` on a device that multiplies by stored bf16 weights (`device::Cpu` with
    /// oneDNN, `device::Cuda`): the GEMM matrices (token embedding, q|k|v, o, MLP, head) are stored in
    /// bf16 — alone when frozen (activations::inference, the LoRA base, `frozen`), else beside the fp32
    /// master the optimizer updates. false keeps fp32 storage and rounds each weight in every GEMM (the
    /// same products; tests compare the two). Not a key of the `student` object.
    bool bf16_weights = true;
    /// No optimizer updates this model's weights (a teacher, in any activations mode): under bf16
    /// storage its matrices are kept in bf16 alone, as those of activations::inference are. Not a key.
    bool frozen = false;

    /// Key/value heads actually used.
    int kv_heads() const noexcept { return n_kv_heads ? n_kv_heads : n_heads; }
    int head_size() const noexcept { return d_model / n_heads; }
    /// Width of a q|k|v row: (H + 2 Hkv) hs.
    int qkv_width() const noexcept { return (n_heads + 2 * kv_heads()) * head_size(); }
    /// Width of the MLP's first projection: F, or 2F (gate | up) for SwiGLU.
    int fc_width() const noexcept { return swiglu() ? 2 * d_ff : d_ff; }
    bool rms() const noexcept { return norm == "rmsnorm"; }
    bool rope() const noexcept { return positions == "rope"; }
    bool swiglu() const noexcept { return mlp == "swiglu"; }

    /// Throws `config_error` naming the first field that is out of range. The upper bounds are far
    /// beyond any published model; they exist because configs come from downloaded files, and they
    /// keep every size computed from a config (parameter_count, arena layouts) far from overflow.
    void validate(const std::string& path = "student") const {
        auto fail = [&](const char* key, const std::string& what) { throw config_error(path + "." + key, what); };
        auto in_range = [&](int v, const char* key, int max) {
            if (v < 1 || v > max) fail(key, "must be in [1, " + std::to_string(max) + "], got " + std::to_string(v));
        };
        auto one_of = [&](const std::string& v, const char* key, std::initializer_list<const char*> options) {
            std::string list;
            for (const char* o : options) {
                if (v == o) return;
                list += std::string(list.empty() ? "" : ", ") + o;
            }
            fail(key, "must be one of " + list + ", got \"" + v + "\"");
        };
        in_range(vocab_size, "vocab_size", 1 << 21);
        in_range(context_length, "context_length", 1 << 18);
        in_range(d_model, "d_model", 1 << 16);
        in_range(n_layers, "n_layers", 1 << 10);
        in_range(n_heads, "n_heads", 1 << 10);
        in_range(d_ff, "d_ff", 1 << 18);
        if (d_model % n_heads != 0)
            fail("n_heads", "must divide d_model = " + std::to_string(d_model) + ", got " + std::to_string(n_heads));
        if (n_kv_heads < 0 || n_kv_heads > n_heads || n_heads % kv_heads() != 0)
            fail("n_kv_heads", "must divide n_heads = " + std::to_string(n_heads) + " (0 = n_heads), got " +
                                   std::to_string(n_kv_heads));
        one_of(norm, "norm", {"layernorm", "rmsnorm"});
        one_of(positions, "positions", {"learned", "rope"});
        one_of(mlp, "mlp", {"gelu", "swiglu"});
        if (!(norm_eps > 0 && norm_eps < 1)) fail("norm_eps", "must be in (0, 1), got " + std::to_string(norm_eps));
        if (rope()) {
            if (head_size() % 2) fail("positions", "rope needs an even head size, got " + std::to_string(head_size()));
            if (!(rope_theta > 1)) fail("rope_theta", "must be > 1, got " + std::to_string(rope_theta));
            const auto& s = rope_scaling;
            one_of(s.type, "rope_scaling.type", {"none", "linear", "dynamic", "llama3"});
            if (s.type != "none" && !(s.factor >= 1 && s.factor <= 1024))
                fail("rope_scaling.factor", "must be in [1, 1024], got " + std::to_string(s.factor));
            if ((s.type == "dynamic" || s.type == "llama3") &&
                (s.original_context_length < 1 || s.original_context_length > (1 << 24)))
                fail("rope_scaling.original_context_length",
                     "must be in [1, 2^24] for " + s.type + ", got " + std::to_string(s.original_context_length));
            if (s.type == "llama3" && !(s.low_freq_factor > 0 && s.high_freq_factor > s.low_freq_factor))
                fail("rope_scaling.high_freq_factor", "llama3 needs 0 < low_freq_factor < high_freq_factor");
        }
        lora.validate(swiglu(), tie_embeddings);
    }

    /// Number of parameters of the model's own weights (without LoRA adapters: all trainable).
    std::int64_t parameter_count() const {
        const std::int64_t C = d_model, F = d_ff, Q = qkv_width(), F1 = fc_width(), norm_size = rms() ? C : 2 * C;
        const std::int64_t block = 2 * norm_size + Q * C + (qkv_bias ? Q : 0) + C * C + (proj_bias ? C : 0) + F1 * C +
                                   (mlp_bias ? F1 : 0) + C * F + (mlp_bias ? C : 0);
        return std::int64_t(vocab_size) * C * (tie_embeddings ? 1 : 2) +
               (rope() ? 0 : std::int64_t(context_length) * C) + n_layers * block + norm_size;
    }
};

template <class T, class Device>
class Transformer;

/// Whether a `Transformer<T, Device>` built in `mode` attends fused (`flash_attention_forward` /
/// `backward`: key tiles streamed through an online softmax, no (T,T) map, the tiles above the
/// diagonal skipped): every mode but `training` (the one that keeps the maps), on a device with the
/// fused kernels (`device::fused_attention_device`, e.g. device::Cpu). `checkpointed` attends fused in
/// its forward and in its backward's recomputation alike, so its gradients are those of
/// `training_fused`, bit for bit, where this holds, and those of `training` elsewhere.
template <class T, class Device>
constexpr bool attends_fused(activations mode) noexcept {
    if constexpr (device::fused_attention_device<Device, T>)
        return mode != activations::training;
    else
        return false;
}

/// The mode a `Transformer<T, Device>` trains in, one rule for every caller that builds a training
/// student (the `distill` command's finetune stage, its memory plan): `checkpointed` with activation
/// checkpointing; else `training_fused` where the device has the fused attention kernels and the loss
/// reads no attention map or q|k|v (`loss::reads_attention`); else `training`. A loss that reads them
/// cannot take activation checkpointing (the Distiller refuses the pair).
template <class T, class Device>
constexpr activations training_activations(bool checkpointing, bool reads_attention) noexcept {
    if (checkpointing) return activations::checkpointed;
    return !reads_attention && device::fused_attention_device<Device, T> ? activations::training_fused
                                                                         : activations::training;
}

/// The attention path of a `Transformer<T, Device>` built in `mode`, for plans and logs: "fused
/// attention" or "unfused attention".
template <class T, class Device>
constexpr const char* attention_path(activations mode) noexcept {
    return attends_fused<T, Device>(mode) ? "fused attention" : "unfused attention";
}

/// Whether a `Transformer<T, Device>` built with `config` on `dev` stores its GEMM matrices in bf16
/// (`TransformerConfig::bf16_weights`, under precision::bf16, on a device that multiplies by stored
/// bf16 weights: device::Cpu with oneDNN, device::Cuda).
template <class T, class Device>
bool stores_bf16_weights(const TransformerConfig& config, const Device& dev) {
    if constexpr (bf16_weight_device<Device> && std::is_same_v<T, float>)
        return config.bf16_weights && device::compute_precision_of(dev) == device::precision::bf16;
    else
        return false;
}

/// The inverse frequencies (hs/2) of a rotary config's pairs for a sequence of `seq_len` positions,
/// as transformers' ROPE_INIT_FUNCTIONS compute them: theta^(-2i/hs), then the scaling variant
/// (`dynamic` depends on seq_len once it exceeds the original context).
inline std::vector<double> rope_inverse_frequencies(const TransformerConfig& c, int seq_len) {
    const int dim = c.head_size(), half = dim / 2;
    const RopeScaling& s = c.rope_scaling;
    double base = c.rope_theta;
    if (s.type == "dynamic" && seq_len > s.original_context_length)
        base *= std::pow(s.factor * seq_len / s.original_context_length - (s.factor - 1), double(dim) / (dim - 2));
    std::vector<double> inv(std::size_t(half), 0.0);
    for (int i = 0; i < half; ++i) inv[std::size_t(i)] = 1.0 / std::pow(base, double(2 * i) / dim);
    if (s.type == "linear")
        for (auto& f : inv) f /= s.factor;
    if (s.type == "llama3") {  // long wavelengths slowed by `factor`, short ones kept, smooth in between
        const double pi = 3.14159265358979323846, old = s.original_context_length;
        const double low_wavelen = old / s.low_freq_factor, high_wavelen = old / s.high_freq_factor;
        for (auto& f : inv) {
            const double wavelen = 2 * pi / f;
            if (wavelen > low_wavelen) {
                f /= s.factor;
            } else if (wavelen >= high_wavelen) {
                const double smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                f = (1 - smooth) * f / s.factor + smooth * f;
            }
        }
    }
    return inv;
}

/// A model's GEMM matrices copied into the layout the device's products read (`device::pack_weight`),
/// each as the model first multiplies by it: what a `KvCache` holds for decoding, and a `Transformer`
/// for its forwards after `pack_matrices()`. A snapshot of one model's weights: empty where the device
/// does not pack (`device::weight_packing_device`: device::Cpu with oneDNN; scalar type float).
template <class T, class Device>
class PackedMatrices {
public:
    /// Bytes of the copies held.
    std::size_t bytes() const noexcept {
        std::size_t n = 0;
        if constexpr (packs)
            for (const auto& p : slots_)
                if (p) n += p->bytes();
        return n;
    }
    /// Frees the copies.
    void release() noexcept {
        slots_.clear();
        owner_ = 0;
    }

private:
    friend class Transformer<T, Device>;
    using packed_type = std::conditional_t<std::is_same_v<T, float>, device::packed_weight_t<Device>, std::monostate>;
    static constexpr bool packs = !std::is_same_v<packed_type, std::monostate>;
    // Frees the copies and, where the device packs, makes room for `parameters` of the model `owner`.
    void restart(std::size_t parameters, std::uint64_t owner) {
        release();
        if constexpr (packs) {
            slots_.resize(parameters);
            owner_ = owner;
        }
    }
    // by parameter index: not packed yet (nullopt), or the copy (empty where packing gains nothing);
    // the weights of the model whose identity is owner_ (0: none)
    std::vector<std::optional<packed_type>> slots_;
    std::uint64_t owner_ = 0;
};

/// Keys and values of every layer for up to `max_batch` sequences of up to `context_length`
/// tokens, for incremental decoding (`Transformer::prefill` / `decode`). One arena, laid out once.
/// Where the device packs weights it also holds the model's matrices as of the last `prefill`,
/// packed in the layout the device's products read (`pack_weights`).
template <class T, class Device>
class KvCache {
public:
    KvCache(const TransformerConfig& cfg, int max_batch, Device device = Device{})
        : max_batch_(max_batch),
          n_layers_(cfg.n_layers),
          layer_size_(std::size_t(max_batch) * cfg.context_length * cfg.kv_heads() * cfg.head_size()),
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
    /// Whether `prefill` packs the model's matrices into this cache (on by default; a no-op where the
    /// device does not pack, and where the model's forwards already read packed matrices,
    /// `Transformer::pack_matrices`). Each prefill copies each matrix once, as it first multiplies by
    /// it; that prefill and the `decode` calls after it multiply by the copies, which hold the weights
    /// as they were at that prefill (as the cached keys and values do): weights changed later are read
    /// from the next prefill on. The copies take the matrices' size again (`packed_bytes`); off, the
    /// products read the weights themselves, which the device copies into its layout at every call.
    void pack_weights(bool on) {
        pack_weights_ = on;
        if (!on) release_packed();
    }
    bool packs_weights() const noexcept { return pack_weights_; }
    /// Frees the packed matrices (generation is over; the next prefill packs again).
    void release_packed() noexcept { packed_.release(); }
    /// Bytes of the packed matrices held.
    std::size_t packed_bytes() const noexcept { return packed_.bytes(); }

private:
    friend class Transformer<T, Device>;
    // (max_batch, Hkv, Tmax, hs) keys, then values, of layer l
    T* keys(int l) const noexcept { return arena_.data() + 2 * std::size_t(l) * layer_size_; }
    T* values(int l) const noexcept { return keys(l) + layer_size_; }

    int max_batch_, n_layers_;
    std::size_t layer_size_;
    std::vector<int> lengths_;
    detail::Arena<T, Device> arena_;
    PackedMatrices<T, Device> packed_;
    bool pack_weights_ = true;
};

/// A pre-norm causal transformer whose blocks `TransformerConfig` chooses: GPT-2 (LayerNorm, learned
/// positions, GELU, tied head) by default; Llama, Qwen2 and Phi-3 (RMSNorm, rotary positions, SwiGLU,
/// grouped-query attention, optional biases, untied head) by setting its keys.
/// @tparam T scalar type (`float`; `double` for gradient checks).
/// @tparam Device a `device_policy` with the layer and Llama-block kernels for `T`
/// (`device::layer_device`, `device::llama_device`; `prefill`/`decode` also `device::decoding_device`).
template <class T, class Device>
class Transformer : public parameter_store<T, Device> {
    using store = parameter_store<T, Device>;
    using store::grad;
    using store::none;
    using store::val;

    static_assert(device::require_layer_kernels<Device, T>::value);  // one line per missing kernel
    static_assert(device::require_llama_kernels<Device, T>::value);  // likewise

public:
    using scalar_type = T;
    using device_type = Device;
    using config_type = TransformerConfig;

    /// Lays out and allocates all three arenas for batches of up to `max_batch` sequences of up to
    /// `config.context_length` tokens. Parameters start at zero; call `init` or load weights. With
    /// `activations::inference` the model only runs forwards: `backward` throws, `hidden_state(i)`
    /// exists for i = 0 and L only, `attention` and `qkv` not at all, and gradients are empty. With
    /// `activations::checkpointed` it trains in less memory, without `attention` and `qkv`, attending
    /// fused where the device has the fused attention kernels (`attends_fused`); with
    /// `activations::training_fused` it keeps what `training` keeps but the maps, without a (B,H,T,T)
    /// buffer per layer where the device has the fused attention kernels (`fused_attention()`).
    Transformer(const TransformerConfig& config, int max_batch, Device device = Device{},
                activations mode = activations::training)
        : cfg_(config), dev_(device), max_batch_(max_batch), mode_(mode) {
        cfg_.validate();
        if (max_batch < 1) throw config_error("max_batch", "must be >= 1, got " + std::to_string(max_batch));
        eps_ = static_cast<T>(cfg_.norm_eps);
        if constexpr (Device::memory != memory_space::host)
            if (cfg_.lora.enabled() && cfg_.lora.dropout > 0)
                throw config_error("lora.dropout", "is applied on the host; this device keeps its own memory (use 0)");
        layout_parameters();
        layout_activations();
        init_lora(0);
    }

    const TransformerConfig& config() const noexcept { return cfg_; }
    const Device& device() const noexcept { return dev_; }
    int max_batch() const noexcept { return max_batch_; }

    // parameters() lists every parameter in checkpoint order (names as in `tests/reference/gpt.py`;
    // an untied head is `lm_head.weight`, last); parameter_data(), gradient_data() and arena_size()
    // are the flat arenas (see parameter_store).

    /// GPT-2 initialization: weights ~ N(0, 0.02), residual output projections scaled by
    /// 1/sqrt(2 L), position embedding ~ N(0, 0.01), biases 0, norm gains 1. The same values on
    /// every device (drawn on the host, copied once where the device has its own memory).
    void init(std::uint64_t seed) {
        Rng rng(seed);
        const double proj_std = 0.02 / std::sqrt(2.0 * cfg_.n_layers);
        // values are drawn into the fp32 arena where they live on the host, else through a host
        // chunk written with write_base (bf16 storage, devices with their own memory): no fp32 image
        constexpr std::int64_t chunk = 1 << 16;
        std::vector<T> staged;
        const auto& params = this->base_parameters();
        for (std::size_t k = 0; k < params.size(); ++k) {
            const auto& p = params[k];
            const std::int64_t n = p.value.numel();
            const bool direct = Device::memory == memory_space::host && this->base_storage(k) == storage::fp32;
            if (!direct) staged.assign(std::size_t(std::min(n, chunk)), T(0));
            const bool residual_proj = p.name.ends_with("c_proj.weight");
            const double std = p.name == "wpe.weight" ? 0.01 : residual_proj ? proj_std : 0.02;
            for (std::int64_t first = 0; first < n; first += direct ? n : chunk) {
                const std::int64_t m = direct ? n : std::min(chunk, n - first);
                T* d = direct ? p.value.data() : staged.data();
                for (std::int64_t i = 0; i < m; ++i) {
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
                if (!direct) this->write_base(k, d, std::size_t(first), std::size_t(m));
            }
        }
        init_lora(seed);
    }

    /// PEFT's adapter initialization: every A (r, in) ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform
    /// with a = sqrt(5)), every B zeros, so a fresh adapter leaves the model's output unchanged.
    /// `init` calls it; a model whose base weights were loaded calls it alone. Without LoRA, nothing.
    void init_lora(std::uint64_t seed) {
        Rng rng(detail::mix64(seed, 0x4c6f5241));  // a stream of its own: `init`'s base draws are unchanged
        for (const auto& p : this->adapter_parameters()) {
            const std::int64_t n = p.value.numel(), in = p.value.shape()[1];
            const bool is_a = p.name.ends_with("lora_A");
            const double bound = 1.0 / std::sqrt(double(in));
            std::vector<T> host(std::size_t(n), T(0));
            if (is_a)
                for (auto& x : host) x = static_cast<T>((2 * rng.uniform() - 1) * bound);
            dev_.copy(p.value.data(), host.data(), sizeof(T) * host.size());
        }
    }

    /// Turns LoRA dropout on for the following training forwards (`forward`, and the recomputation
    /// of activations::checkpointed), its masks a function of `key` (the caller derives it from the
    /// run's seed and step, so that a resumed run draws the same masks); `lora_eval` turns it off
    /// (the default). `prefill` and `decode` never drop.
    void lora_dropout(std::uint64_t key) noexcept {
        lora_dropout_on_ = true;
        lora_key_ = key;
    }
    void lora_eval() noexcept { lora_dropout_on_ = false; }

    /// A host image of the base parameter arena (`parameter_data()`'s layout) with every adapter
    /// merged, W += (alpha / r) · B · A on its rows: the weights PEFT's merge_and_unload gives.
    /// Its layout is `image_offset`'s (bf16-stored weights converted, exactly).
    std::vector<T> merged_parameters() const {
        std::vector<T> host = this->base_image();
        const double s = cfg_.lora.scaling();
        auto merge = [&](const LoraAdapter& ad, std::size_t w) {
            const int r = cfg_.lora.rank;
            std::vector<T> a(std::size_t(r) * ad.in), b(std::size_t(ad.out) * r);
            dev_.copy(a.data(), val(ad.a), sizeof(T) * a.size());
            dev_.copy(b.data(), val(ad.b), sizeof(T) * b.size());
            T* W = host.data() + this->image_offset(w) + std::size_t(ad.offset) * ad.in;
            for (int i = 0; i < ad.out; ++i)
                for (int j = 0; j < ad.in; ++j) {
                    double d = 0;
                    for (int k = 0; k < r; ++k) d += double(b[std::size_t(i) * r + k]) * a[std::size_t(k) * ad.in + j];
                    W[std::size_t(i) * ad.in + j] += static_cast<T>(s * d);
                }
        };
        for (std::size_t l = 0; l < lora_.size(); ++l)
            for (const auto& ad : lora_[l]) {
                const auto& w = layer_params_[l];
                merge(ad, ad.linear == 0   ? w.attn_w
                          : ad.linear == 1 ? w.proj_w
                          : ad.linear == 2 ? w.fc_w
                                           : w.mlp_proj_w);
            }
        if (head_lora_.a != none) merge(head_lora_, head_);
        return host;
    }

    /// Runs the model on tokens(B,T) (row-major, B <= max_batch, T <= context_length, every id in
    /// [0, vocab_size)). Afterwards `logits()`, `hidden_state(i)` and `attention(l)` hold the results.
    void forward(const std::int32_t* tokens, int B, int Tn) {
        forward_layers(tokens, B, Tn, [](int) {});
    }

    /// What this model keeps of a forward.
    activations mode() const noexcept { return mode_; }
    /// Whether every hidden state of a forward is kept (activations::training, checkpointed, training_fused).
    bool keeps_activations() const noexcept { return mode_ != activations::inference; }
    /// Whether attention maps and q|k|v of a forward are kept (activations::training).
    bool keeps_attention() const noexcept { return mode_ == activations::training; }
    /// Whether attention runs fused, streaming key tiles through an online softmax with no (T,T)
    /// map (`flash_attention_forward`/`backward`): activations::inference, training_fused and
    /// checkpointed, on a device with the fused kernels (`attends_fused`).
    bool fused_attention() const noexcept { return attends_fused<T, Device>(mode_); }
    /// Whether `backward` runs (activations::training, checkpointed, training_fused).
    bool trains() const noexcept { return mode_ != activations::inference; }

private:
    // The forward; `after_qkv(l)` runs once layer l's q|k|v projections (keys rotated) are in
    // act(layer_acts_[l].qkv) (prefill stores the keys and values there, before an inference model
    // reuses the buffer).
    template <class AfterQkv>
    void forward_layers(const std::int32_t* tokens, int B, int Tn, AfterQkv&& after_qkv, bool is_forward = true) {
        check_batch(tokens, B, Tn);
        B_ = B;
        T_ = Tn;
        lora_drop_now_ = lora_dropout_on_ && is_forward && trains() && cfg_.lora.dropout > 0;
        const int C = cfg_.d_model, V = cfg_.vocab_size;
        const int N = B * Tn;
        dev_.copy(tokens_, tokens, sizeof(std::int32_t) * N);
        if (cfg_.rope()) {
            for (int n = 0; n < N; ++n) positions_[std::size_t(n)] = n % Tn;
            update_rope(Tn);
        }
        // trainable bf16 weights: their bf16 copies follow the fp32 masters (which the optimizer and
        // loaders write between forwards), rounded once here rather than in every product
        if (bf16_masters_) this->refresh_bf16();
        if (bf16_only_wte())
            embedding_bf16(tokens, B, Tn);
        else
            embedding_forward(dev_, act(encoded_), tokens_, wte(), wpe(), B, Tn, C);
        const T* x = act(encoded_);
        for (int l = 0; l < cfg_.n_layers; ++l) {
            block_forward(l, x, N, [&] {
                after_qkv(l);
                attend(l, B, Tn);
            });
            x = act(layer_acts_[l].res_out);
        }
        norm_forward(act(lnf_), act(lnf_mean_), act(lnf_rstd_), x, lnf_w_, lnf_b_, N);
        // logits (N,V) = lnf (N,C) · head^T — the LM head (the token embedding when tied)
        linear(act(logits_), act(lnf_), head_, none, N, C, V);
        if (head_lora_.a != none) lora_forward(head_lora_, -1, act(logits_), act(lnf_), N);
    }

    // atty = attention(qkv) of the rows of a forward: fused when the maps are not kept (att then holds
    // the (B,H,T) log-sum-exp the fused backward reads, or nothing for inference), else the map in att.
    void attend(int l, int B, int Tn) {
        const auto& a = layer_acts_[std::size_t(l)];
        if constexpr (device::fused_attention_device<Device, T>)
            if (fused_attention())
                return flash_attention_forward(dev_, act(a.atty),
                                               mode_ == activations::inference ? nullptr : act(a.att), act(a.qkv), B,
                                               Tn, cfg_.n_heads, cfg_.kv_heads(), cfg_.head_size());
        nn::attention_forward(dev_, act(a.atty), act(a.att), act(a.qkv), B, Tn, cfg_.n_heads, cfg_.kv_heads(),
                              cfg_.head_size());
    }

    // out(N,OC) = [out +] in(N,C) · W(OC,C)ᵀ + b: nn::linear_forward, the quantized product when
    // `quantize` stored W as ggml blocks, W's packed copy while packed matrices are in use, or W's
    // stored bf16 copy. With `gelu` out = gelu_forward(that): in the product's epilogue where the
    // device has one (`gemm_bias`'s trailing `gelu`: device::Cpu), else a pass after it.
    void linear(T* out, const T* in, std::size_t w, std::size_t b, int N, int C, int OC, bool add_to_out = false,
                bool gelu = false) {
        if (!linear_product(out, in, w, b, N, C, OC, add_to_out, gelu) && gelu)
            gelu_forward(dev_, out, out, std::int64_t(N) * OC);
    }
    // linear()'s product; whether it applied the GELU too.
    bool linear_product(T* out, const T* in, std::size_t w, std::size_t b, int N, int C, int OC, bool add_to_out,
                        bool gelu) {
        const T beta = add_to_out ? T(1) : T(0), *bias = b != none ? val(b) : nullptr;
        if constexpr (std::is_same_v<T, float> && device::quant_device<Device>) {
            if (const auto it = quantized_.find(w); it != quantized_.end()) {
                const std::size_t n = std::size_t(N) * std::size_t(OC);
                if (add_to_out && quant_scratch_.size() < n) quant_scratch_.resize(n);
                T* y = add_to_out ? quant_scratch_.data() : out;
                quant_matmul(dev_, in, it->second.rows.data(), it->second.type, y, N, C, OC);
                if (add_to_out) accumulate(dev_, out, y, std::int64_t(n));
                if (bias) add_bias(dev_, out, bias, N, OC);
                return false;
            }
        }
        // decoding, or forwards after pack_matrices(): the packed copy (made here on first use)
        if constexpr (PackedMatrices<T, Device>::packs) {
            if (const auto* packed = packed_matrix(w, OC, C)) {
                if (const std::uint16_t* w16 = this->bf16_value(w)) {
                    if constexpr (requires { gemm_packed(dev_, N, OC, C, in, C, w16, *packed, beta, out, OC, bias); }) {
                        gemm_packed(dev_, N, OC, C, in, C, w16, *packed, beta, out, OC, bias, gelu);
                        return true;
                    }
                } else {
                    gemm_packed(dev_, N, OC, C, in, C, val(w), *packed, beta, out, OC, bias, gelu);
                    return true;
                }
            }
        }
        if constexpr (bf16_weight_device<Device> && std::is_same_v<T, float>) {
            if (const std::uint16_t* w16 = this->bf16_value(w)) {
                if constexpr (requires {
                                  gemm_bf16_weight(dev_, false, true, N, OC, C, T(1), in, C, w16, C, beta, out, OC,
                                                   bias, gelu);
                              }) {
                    gemm_bf16_weight(dev_, false, true, N, OC, C, T(1), in, C, w16, C, beta, out, OC, bias, gelu);
                    return true;
                } else {
                    gemm_bf16_weight(dev_, false, true, N, OC, C, T(1), in, C, w16, C, beta, out, OC);
                    if (bias) add_bias(dev_, out, bias, N, OC);
                    return false;
                }
            }
        }
        if constexpr (requires {
                          gemm_bias(dev_, false, true, N, OC, C, in, C, val(w), C, beta, out, OC, bias, gelu);
                      }) {
            if (gelu) {
                gemm_bias(dev_, false, true, N, OC, C, in, C, val(w), C, beta, out, OC, bias, true);
                return true;
            }
        }
        nn::linear_forward(dev_, out, in, val(w), bias, N, C, OC, add_to_out);  // the bias: gemm_bias where it exists
        return false;
    }

    // Decoding, or forwards after pack_matrices(): W(OC,C)'s packed copy (from its bf16 copy where it
    // has one), made here on first use; else null.
    const typename PackedMatrices<T, Device>::packed_type* packed_matrix(std::size_t w, int OC, int C) {
        if constexpr (PackedMatrices<T, Device>::packs) {
            PackedMatrices<T, Device>* packs = packed_matrices();
            if (!packs || w >= packs->slots_.size()) return nullptr;
            auto& packed = packs->slots_[w];
            if (!packed) {
                if (const std::uint16_t* w16 = this->bf16_value(w)) {
                    if constexpr (requires { pack_weight(dev_, w16, OC, C); }) packed = pack_weight(dev_, w16, OC, C);
                } else {
                    packed = pack_weight(dev_, val(w), OC, C);
                }
            }
            if (packed) return &*packed;
        }
        (void)w, (void)OC, (void)C;
        return nullptr;
    }

    // res_out(N,C) = res_attn + mlp(ln2) of block l in an inference forward whose MLP matrices are
    // stored bf16, with bf16 hidden rows (device::Cpu's mlp_bf16); whether it ran (else `linear` does).
    bool mlp_bf16_rows(int l, int N) {
        const auto& w = layer_params_[std::size_t(l)];
        const auto& a = layer_acts_[std::size_t(l)];
        const int C = cfg_.d_model, F = cfg_.d_ff;
        const std::uint16_t *w1 = this->bf16_value(w.fc_w), *w2 = this->bf16_value(w.mlp_proj_w);
        if constexpr (PackedMatrices<T, Device>::packs) {
            using packed_type = typename PackedMatrices<T, Device>::packed_type;
            if constexpr (requires(const packed_type& p) {
                              mlp_bf16(dev_, N, C, F, act(a.ln2), w1, p, val(w.fc_b), w2, p, val(w.mlp_proj_b),
                                       act(a.fc_act), act(a.res_out));
                          }) {
                if (!w1 || !w2) return false;
                dev_.copy(act(a.res_out), act(a.res_attn), sizeof(T) * N * C);
                const packed_type unpacked;
                const packed_type* p1 = packed_matrix(w.fc_w, F, C);
                const packed_type* p2 = packed_matrix(w.mlp_proj_w, C, F);
                mlp_bf16(dev_, N, C, F, act(a.ln2), w1, p1 ? *p1 : unpacked, val(w.fc_b), w2, p2 ? *p2 : unpacked,
                         val(w.mlp_proj_b), act(a.fc_act), act(a.res_out));
                return true;
            }
        }
        (void)w1, (void)w2, (void)N, (void)a;
        return false;
    }

    // nn::linear_backward of out = in · Wᵀ + b, din from W's bf16 copy where it has one.
    void linear_backward(T* din, std::size_t w, std::size_t b, const T* dout, const T* in, int N, int C, int OC) {
        if constexpr (bf16_weight_device<Device> && std::is_same_v<T, float>) {
            if (const std::uint16_t* w16 = this->bf16_value(w)) {
                // din(N,C) = dout(N,OC) · W(OC,C), dW += doutᵀ · in: dout rounded once where the device can
                if constexpr (requires { linear_backward_bf16(dev_, din, grad(w), dout, in, w16, N, C, OC); }) {
                    linear_backward_bf16(dev_, din, grad(w), dout, in, w16, N, C, OC);
                    if (T* db = grad(b)) bias_grad(dev_, db, dout, N, OC);
                } else {
                    gemm_bf16_weight(dev_, false, false, N, C, OC, T(1), dout, OC, w16, C, T(0), din, C);
                    nn::linear_backward(dev_, static_cast<T*>(nullptr), grad(w), grad(b), dout, in, val(w), N, C, OC);
                }
                return;
            }
        }
        nn::linear_backward(dev_, din, grad(w), grad(b), dout, in, val(w), N, C, OC);
    }

    // Whether the token embedding is stored in bf16 alone (its rows are widened where read).
    bool bf16_only_wte() const noexcept { return this->base_storage(wte_) == storage::bf16; }
    // encoded(N,C) = wte[token] (widened from bf16) + wpe[position]: embedding_forward's sum.
    void embedding_bf16(const std::int32_t* tokens, int B, int Tn) {
        if constexpr (bf16_weight_device<Device> && Device::memory == memory_space::host) {  // device::Cpu
            const int C = cfg_.d_model;
            T* out = act(encoded_);
            distill::detail::parallel_for(dev_.threads(), std::int64_t(B) * Tn, [&](std::int64_t n) {
                embedding_row(out + n * C, tokens[n], cfg_.rope() ? nullptr : wpe() + (n % Tn) * C);
            });
        } else if constexpr (bf16_weight_device<Device>) {  // device memory (device::Cuda): its kernel
            embedding_forward_bf16(dev_, act(encoded_), tokens_, this->bf16_value(wte_), wpe(), B, Tn, cfg_.d_model);
        }
    }
    // out(C) = wte[token] widened (+ pos(C)).
    void embedding_row(T* out, std::int32_t token, const T* pos) const {
        const int C = cfg_.d_model;
        const std::uint16_t* e = this->bf16_value(wte_) + std::int64_t(token) * C;
        for (int c = 0; c < C; ++c) {
            const T v = static_cast<T>(quant::bf16_to_fp32(e[c]));
            out[c] = pos ? v + pos[c] : v;
        }
    }

    // One block on rows x(N,C): res_out = res_attn + mlp(norm2(res_attn)), res_attn = x +
    // proj(attention(rope(qkv(norm1(x))))). `attend()` fills atty from the rotated qkv.
    template <class Attend>
    void block_forward(int l, const T* x, int N, Attend&& attend) {
        const int C = cfg_.d_model, F = cfg_.d_ff, Q = cfg_.qkv_width();
        const auto& w = layer_params_[l];
        const auto& a = layer_acts_[l];
        norm_forward(act(a.ln1), act(a.ln1_mean), act(a.ln1_rstd), x, w.ln1_w, w.ln1_b, N);
        linear(act(a.qkv), act(a.ln1), w.attn_w, w.attn_b, N, C, Q);
        lora_linear_forward(l, 0, act(a.qkv), act(a.ln1), N);
        if (cfg_.rope())
            rope_rotate(dev_, act(a.qkv), rope_cos(), rope_sin(), positions_.data(), N, Q,
                        cfg_.n_heads + cfg_.kv_heads(), cfg_.head_size(), false);
        attend();
        dev_.copy(act(a.res_attn), x, sizeof(T) * N * C);
        linear(act(a.res_attn), act(a.atty), w.proj_w, w.proj_b, N, C, C, true);
        lora_linear_forward(l, 1, act(a.res_attn), act(a.atty), N);
        norm_forward(act(a.ln2), act(a.ln2_mean), act(a.ln2_rstd), act(a.res_attn), w.ln2_w, w.ln2_b, N);
        const bool gelu_epilogue = mode_ == activations::inference && N >= 64 && !cfg_.swiglu() && !has_lora(l, 2);
        if (gelu_epilogue && !has_lora(l, 3) && mlp_bf16_rows(l, N)) return;
        if (gelu_epilogue) {
            // nothing reads the GELU's input: the GELU in the product's epilogue, where it saves a pass
            // over a product of many rows (a decoding step's few rows measured no faster, up to 4% slower at 1)
            linear(act(a.fc_act), act(a.ln2), w.fc_w, w.fc_b, N, C, F, false, true);
        } else {
            linear(act(a.fc), act(a.ln2), w.fc_w, w.fc_b, N, C, cfg_.fc_width());
            lora_linear_forward(l, 2, act(a.fc), act(a.ln2), N);
            if (cfg_.swiglu())
                swiglu_forward(dev_, act(a.fc_act), act(a.fc), N, F);
            else
                gelu_forward(dev_, act(a.fc_act), act(a.fc), std::int64_t(N) * F);
        }
        dev_.copy(act(a.res_out), act(a.res_attn), sizeof(T) * N * C);
        linear(act(a.res_out), act(a.fc_act), w.mlp_proj_w, w.mlp_proj_b, N, F, C, true);
        lora_linear_forward(l, 3, act(a.res_out), act(a.fc_act), N);
    }

    // ---- LoRA ------------------------------------------------------------------------------------
    // One adapter: B (out, r) · A (r, in) added, scaled, to rows [offset, offset + out) of the
    // outputs of base linear `linear` (0 q|k|v, 1 attention output, 2 MLP fc, 3 MLP proj; -1 the head).
    struct LoraAdapter {
        int linear = -1, index = 0;  // index: position among its layer's adapters (activation slots)
        std::size_t a = none, b = none;
        int in = 0, out = 0, offset = 0, width = 0;  // width: the base linear's output width
    };

    // Whether layer l has an adapter on `linear`.
    bool has_lora(int l, int linear) const {
        if (lora_.empty()) return false;
        for (const auto& ad : lora_[std::size_t(l)])
            if (ad.linear == linear) return true;
        return false;
    }
    // out(N, width) += s · B(A(drop(in))) for each of layer l's adapters on `linear`.
    void lora_linear_forward(int l, int linear, T* out, const T* in, int N) {
        if (lora_.empty()) return;
        for (const auto& ad : lora_[std::size_t(l)])
            if (ad.linear == linear) lora_forward(ad, l, out, in, N);
    }
    void lora_forward(const LoraAdapter& ad, int l, T* out, const T* in, int N) {
        const int r = cfg_.lora.rank;
        const T s = static_cast<T>(cfg_.lora.scaling());
        const auto [h, xd] = lora_slots(ad, l);
        const T* x = in;
        if (lora_drop_now_) {
            if constexpr (Device::memory == memory_space::host) {
                T* d = act(xd);
                const std::int64_t n = std::int64_t(N) * ad.in;
                const std::uint64_t stream = lora_stream(ad, l);
                const T keep_scale = static_cast<T>(1.0 / (1.0 - cfg_.lora.dropout));
                for (std::int64_t i = 0; i < n; ++i) d[i] = lora_keep(stream, i) ? in[i] * keep_scale : T(0);
                x = d;
            }
        }
        // h (N,r) = x (N,in) · Aᵀ;  out[:, offset:offset+out] += s · h · Bᵀ
        gemm(dev_, false, true, N, r, ad.in, T(1), x, ad.in, val(ad.a), ad.in, T(0), act(h), r);
        gemm(dev_, false, true, N, ad.out, r, s, act(h), r, val(ad.b), r, T(1), out + ad.offset, ad.width);
    }
    // Gradients of each of layer l's adapters on `linear` from the base linear's output gradient
    // dout (N, width); din (N, in), the base linear's input gradient, gains the adapters' share.
    void lora_linear_backward(int l, int linear, const T* dout, const T* in, T* din, int N) {
        if (lora_.empty()) return;
        for (const auto& ad : lora_[std::size_t(l)])
            if (ad.linear == linear) lora_backward(ad, l, dout, in, din, N);
    }
    void lora_backward(const LoraAdapter& ad, int l, const T* dout, const T* in, T* din, int N) {
        const int r = cfg_.lora.rank;
        const T s = static_cast<T>(cfg_.lora.scaling());
        const auto [h, xd] = lora_slots(ad, l);
        const T* dy = dout + ad.offset;  // (N, out), rows `width` apart
        const T* x = lora_drop_now_ ? act(xd) : in;
        T* g = act(lora_g_);
        gemm(dev_, false, false, N, r, ad.out, T(1), dy, ad.width, val(ad.b), r, T(0), g, r);    // g = dy · B
        gemm(dev_, true, false, ad.out, r, N, s, dy, ad.width, act(h), r, T(1), grad(ad.b), r);  // dB += s dyᵀ h
        gemm(dev_, true, false, r, ad.in, N, s, g, r, x, ad.in, T(1), grad(ad.a), ad.in);        // dA += s gᵀ x
        if (!lora_drop_now_) {
            gemm(dev_, false, false, N, ad.in, r, s, g, r, val(ad.a), ad.in, T(1), din, ad.in);  // din += s g A
            return;
        }
        if constexpr (Device::memory == memory_space::host) {
            T* t = act(lora_tmp_);
            gemm(dev_, false, false, N, ad.in, r, s, g, r, val(ad.a), ad.in, T(0), t, ad.in);
            const std::int64_t n = std::int64_t(N) * ad.in;
            const std::uint64_t stream = lora_stream(ad, l);
            const T keep_scale = static_cast<T>(1.0 / (1.0 - cfg_.lora.dropout));
            for (std::int64_t i = 0; i < n; ++i)
                if (lora_keep(stream, i)) din[i] += t[i] * keep_scale;
        }
    }
    // The activation slots (h, dropped input) of an adapter: a layer's, or the head's (l = -1).
    std::pair<std::size_t, std::size_t> lora_slots(const LoraAdapter& ad, int l) const {
        if (l < 0) return {head_lora_h_, head_lora_x_};
        const auto& a = layer_acts_[std::size_t(l)];
        return {a.lora_h[std::size_t(ad.index)], a.lora_x[std::size_t(ad.index)]};
    }
    std::uint64_t lora_stream(const LoraAdapter& ad, int l) const noexcept {
        return detail::mix64(lora_key_, std::uint64_t(l + 1) * 64 + std::uint64_t(ad.index));
    }
    // Whether element i of a dropout mask is kept: uniform(stream, i) >= p.
    bool lora_keep(std::uint64_t stream, std::int64_t i) const noexcept {
        return double(detail::mix64(stream, std::uint64_t(i)) >> 11) * 0x1.0p-53 >= cfg_.lora.dropout;
    }

    void norm_forward(T* out, T* mean, T* rstd, const T* in, std::size_t w, std::size_t b, int N) {
        if (cfg_.rms())
            rmsnorm_forward(dev_, out, rstd, in, val(w), N, cfg_.d_model, eps_);
        else
            layernorm_forward(dev_, out, mean, rstd, in, val(w), val(b), N, cfg_.d_model, eps_);
    }
    void norm_backward(T* din, const T* dout, const T* in, std::size_t w, std::size_t b, const T* mean, const T* rstd,
                       int N) {
        // frozen norms (LoRA): the kernels' dW/db go to one scratch row pair, no gradient memory
        T* dw = this->frozen_base() ? act(norm_sink_) : grad(w);
        T* db = this->frozen_base() ? act(norm_sink_) + cfg_.d_model : grad(b);
        if (cfg_.rms())
            rmsnorm_backward(dev_, din, dw, dout, in, val(w), rstd, N, cfg_.d_model);
        else
            layernorm_backward(dev_, din, dw, db, dout, in, val(w), mean, rstd, N, cfg_.d_model);
    }

    // The cos/sin tables for positions [0, seq_len): recomputed only when the frequencies change
    // (once, or per length past the original context for `dynamic` scaling).
    void update_rope(int seq_len) {
        const auto& s = cfg_.rope_scaling;
        const int key = s.type == "dynamic" && seq_len > s.original_context_length ? seq_len : 0;
        if (rope_key_ == key && rope_rows_ >= seq_len) return;
        const int half = cfg_.head_size() / 2, rows = key ? seq_len : cfg_.context_length;
        const std::vector<double> inv = rope_inverse_frequencies(cfg_, seq_len);
        std::vector<T> table(2 * std::size_t(rows) * half);  // cos (rows, half), then sin
        for (int p = 0; p < rows; ++p)
            for (int i = 0; i < half; ++i) {
                const double angle = double(p) * inv[std::size_t(i)];
                table[std::size_t(p) * half + i] = static_cast<T>(std::cos(angle));
                table[(std::size_t(rows) + p) * half + i] = static_cast<T>(std::sin(angle));
            }
        dev_.copy(act(rope_), table.data(), sizeof(T) * table.size());
        rope_key_ = key;
        rope_rows_ = rows;
    }
    const T* rope_cos() const noexcept { return act(rope_); }
    const T* rope_sin() const noexcept { return act(rope_) + std::size_t(rope_rows_) * (cfg_.head_size() / 2); }

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
    /// output, i in [1, L) the output of block i-1, L the output of the final norm.
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
        require_kept("attention");
        return Tensor<T>(act(layer_acts_[l].att), {B_, cfg_.n_heads, T_, T_}, Device::memory);
    }

    /// (B,T,(H+2Hkv)hs) query | key | value projections of layer l of the last forward (query head h
    /// in columns [h*hs, (h+1)*hs), then the key heads, then the value heads; with rotary positions
    /// q and k are the rotated ones attention used), for relation losses (MiniLMv2).
    Tensor<T> qkv(int l) const {
        if (l < 0 || l >= cfg_.n_layers)
            throw shape_error("qkv(" + std::to_string(l) + "): valid layers are 0.." +
                              std::to_string(cfg_.n_layers - 1));
        require_kept("qkv");
        return Tensor<T>(act(layer_acts_[l].qkv), {B_, T_, cfg_.qkv_width()}, Device::memory);
    }

    /// Mean cross-entropy of the last forward's logits against targets(B,T); a target of -1 masks
    /// its position (prompt or padding) out of the mean. Writes d(loss)/d(logits) to `grad_logits()`.
    /// Returns 0 (and zero gradient) when every position is masked. A model built with
    /// `activations::inference` has no gradient buffers: it returns the value alone (evaluation's
    /// perplexity of a teacher that keeps only its logits).
    T cross_entropy(const std::int32_t* targets) {
        const int N = B_ * T_, V = cfg_.vocab_size;
        int count = 0;
        for (int n = 0; n < N; ++n) {
            if (targets[n] < -1 || targets[n] >= V)
                throw shape_error("cross_entropy: target " + std::to_string(targets[n]) + " at position " +
                                  std::to_string(n) + " is outside [-1, " + std::to_string(V) + ")");
            count += targets[n] >= 0;
        }
        if (mode_ == activations::inference) {
            // log_softmax(z)[t] = (z_t - max) - log(sum exp(z - max)), per row, in double
            const auto logits =
                detail::read_on_host(dev_, static_cast<const T*>(act(logits_)), std::size_t(N) * std::size_t(V));
            double nll = 0;
            for (int n = 0; n < N; ++n) {
                if (targets[n] < 0) continue;
                const T* z = logits.data() + std::size_t(n) * std::size_t(V);
                double m = -INFINITY, s = 0;
                for (int v = 0; v < V; ++v) m = std::max(m, double(z[v]));
                for (int v = 0; v < V; ++v) s += std::exp(double(z[v]) - m);
                nll -= (double(z[targets[n]]) - m) - std::log(s);
            }
            return count ? T(nll / count) : T(0);
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
        static_assert(device::require_decoding_kernels<Device, T>::value);  // one line per missing kernel
        if (B > cache.max_batch())
            throw shape_error("prefill: batch " + std::to_string(B) + " exceeds the cache's " +
                              std::to_string(cache.max_batch()));
        for (int b = 0; b < B; ++b)
            if (lengths[b] < 1 || lengths[b] > Tn)
                throw shape_error("prefill: length " + std::to_string(lengths[b]) + " of sequence " +
                                  std::to_string(b) + " outside [1, " + std::to_string(Tn) + "]");
        const int V = cfg_.vocab_size;
        std::vector<std::int32_t> rows;  // per token kept: (row of qkv, sequence, position)
        for (int b = 0; b < B; ++b)
            for (int t = 0; t < lengths[b]; ++t) rows.insert(rows.end(), {b * Tn + t, b, t});
        // the matrices are packed afresh, each as `linear` first reads it (see KvCache::pack_weights)
        // (none where the forwards already read packed matrices: pack_matrices())
        if (cache.pack_weights_ && frozen_.owner_ != identity_)
            cache.packed_.restart(this->base_parameters().size(), identity_);
        else
            cache.release_packed();
        const decoding_scope decoding(*this, cache);
        // each layer's keys and values go to the cache as soon as they exist (an inference model
        // reuses the buffer for the next layer)
        forward_layers(
            tokens, B, Tn,
            [&](int l) {
                kv_cache_store(dev_, cache.keys(l), cache.values(l), static_cast<const T*>(act(layer_acts_[l].qkv)),
                               rows.data(), static_cast<int>(rows.size() / 3), cfg_.n_heads, cfg_.kv_heads(),
                               cfg_.head_size(), cfg_.context_length);
            },
            false);
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
        static_assert(device::require_decoding_kernels<Device, T>::value);  // one line per missing kernel
        const int C = cfg_.d_model, V = cfg_.vocab_size, Tmax = cfg_.context_length;
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
        // x (B,C) = wte[token] (+ wpe[position])
        T* x = act(encoded_);
        for (int b = 0; b < B; ++b) {
            if (bf16_only_wte()) {
                const T* pos = cfg_.rope() ? nullptr : wpe() + std::int64_t(cache.length(b)) * C;
                if constexpr (Device::memory == memory_space::host)
                    embedding_row(x + std::int64_t(b) * C, tokens[b], pos);
                else if constexpr (bf16_weight_device<Device>)
                    embedding_forward_bf16(dev_, x + std::int64_t(b) * C, &tokens[b], this->bf16_value(wte_), pos, 1, 1,
                                           C);
                continue;
            }
            const T* e = wte() + std::int64_t(tokens[b]) * C;
            if (cfg_.rope())
                dev_.copy(x + std::int64_t(b) * C, e, sizeof(T) * C);
            else
                add(dev_, x + std::int64_t(b) * C, e, wpe() + std::int64_t(cache.length(b)) * C, C);
        }
        int longest = 0;
        for (int b = 0; b < B; ++b) {
            positions_[std::size_t(b)] = cache.lengths_[std::size_t(b)]++;
            longest = std::max(longest, cache.length(b));
        }
        if (cfg_.rope()) update_rope(longest);
        lora_drop_now_ = false;
        const decoding_scope decoding(*this, cache);
        std::vector<std::int32_t> rows;  // per sequence: (row of qkv, sequence, position)
        for (int b = 0; b < B; ++b) rows.insert(rows.end(), {b, b, cache.length(b) - 1});
        for (int l = 0; l < cfg_.n_layers; ++l) {
            const auto& a = layer_acts_[l];
            block_forward(l, x, B, [&] {
                kv_cache_store(dev_, cache.keys(l), cache.values(l), static_cast<const T*>(act(a.qkv)), rows.data(), B,
                               cfg_.n_heads, cfg_.kv_heads(), cfg_.head_size(), Tmax);
                attention_decode(dev_, act(a.atty), act(a.att), act(a.qkv), cache.keys(l), cache.values(l),
                                 cache.lengths_.data(), B, cfg_.n_heads, cfg_.kv_heads(), cfg_.head_size(), Tmax);
            });
            x = act(a.res_out);
        }
        norm_forward(act(lnf_), act(lnf_mean_), act(lnf_rstd_), x, lnf_w_, lnf_b_, B);
        linear(act(next_logits_), act(lnf_), head_, none, B, C, V);
        if (head_lora_.a != none) lora_forward(head_lora_, -1, act(next_logits_), act(lnf_), B);
        decode_batch_ = B;
        B_ = T_ = 0;  // the training-forward views are no longer valid
    }

    /// (B,V) next-token logits of the last `prefill` or `decode`.
    Tensor<T> next_logits() const {
        return Tensor<T>(act(next_logits_), {decode_batch_, cfg_.vocab_size}, Device::memory);
    }

    /// For a model whose weights stay unchanged over many forwards (a teacher while a student trains):
    /// from now on every forward, prefill and decode multiplies by copies of its GEMM matrices packed in
    /// the layout the device's products read (`device::pack_weight`), each made as it is first read,
    /// until `unpack_matrices()`. The products' bits are unchanged; the copies do not follow later writes
    /// to the weights: unpack (or pack again) after changing them. A no-op where the device does not
    /// pack (`PackedMatrices`). The copies take the matrices' size again (`packed_bytes()`).
    void pack_matrices() { frozen_.restart(this->base_parameters().size(), identity_); }
    /// Frees the copies `pack_matrices` made: the products read the weights themselves again.
    void unpack_matrices() noexcept { frozen_.release(); }
    /// Bytes of the copies `pack_matrices` has made so far.
    std::size_t packed_bytes() const noexcept { return frozen_.bytes(); }

    /// Sets every gradient to zero (gradients accumulate across `backward` calls).
    void zero_grad() { this->zero_gradients(dev_); }

    /// Runs inference with weights stored as ggml blocks of `type` (io/quant.hpp),
    /// as a GGUF export of the same type stores them (io/gguf_export.hpp): the token embedding, the LM
    /// head and every block's four matrices, each as `quant::storable` allows its rows; norms, biases
    /// and learned positions stay fp32. Each matrix's values become its dequantized values (which the
    /// embedding lookup reads) and its products run through the device's `quant_matmul` (ggml's CPU
    /// semantics: what llama.cpp computes from the file). The model then generates and scores; `backward` refuses it.
    /// Quantizing twice quantizes the dequantized values again, so call it once, on the trained weights.
    void quantize(quant::type type) requires(std::is_same_v<T, float>&& device::quant_device<Device>) {
        if (this->bf16_only_weights())
            throw config_error("device.precision",
                               "quantize: this model stores its weights in bf16 alone (precision bf16, frozen); "
                               "quantize one built with precision fp32");
        const std::int64_t V = cfg_.vocab_size, C = cfg_.d_model, F = cfg_.d_ff;
        auto matrix = [&](std::size_t w, std::int64_t rows, std::int64_t cols) {
            QuantizedMatrix q{quant::storable(type, cols), {}};
            const std::size_t stride = quant::row_bytes(q.type, cols);
            q.rows.resize(stride * std::size_t(rows));
            T* values = val(w);
            for (std::int64_t r = 0; r < rows; ++r) {
                quant::quantize_row(q.type, values + r * cols, cols, q.rows.data() + std::size_t(r) * stride);
                quant::dequantize_row(q.type, q.rows.data() + std::size_t(r) * stride, cols, values + r * cols);
            }
            quantized_.insert_or_assign(w, std::move(q));
        };
        matrix(wte_, V, C);  // also the head when tied
        if (head_ != wte_) matrix(head_, V, C);
        for (const auto& w : layer_params_) {
            matrix(w.attn_w, cfg_.qkv_width(), C);
            matrix(w.proj_w, C, C);
            matrix(w.fc_w, cfg_.fc_width(), C);
            matrix(w.mlp_proj_w, C, F);
        }
    }
    /// Whether `quantize` was called.
    bool quantized() const noexcept { return !quantized_.empty(); }

    /// Backpropagates `grad_logits()` through the last forward, accumulating into the gradients.
    /// `d_hidden[i]` (B,T,C) adds a gradient on hidden state i and `d_attention[l]` (B,H,T,T) one on
    /// attention map l (transfer losses), `d_qkv[l]` (B,T,(H+2Hkv)hs) one on the q|k|v projections
    /// of layer l as `qkv(l)` holds them (relation losses); any span may be shorter than the count or
    /// hold empty tensors for "none".
    void backward(std::span<const Tensor<const T>> d_hidden = {}, std::span<const Tensor<const T>> d_attention = {},
                  std::span<const Tensor<const T>> d_qkv = {}) {
        require_training("backward");
        const int B = B_, Tn = T_, C = cfg_.d_model, F = cfg_.d_ff, H = cfg_.n_heads, V = cfg_.vocab_size,
                  L = cfg_.n_layers, Q = cfg_.qkv_width(), F1 = cfg_.fc_width();
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
        if (this->frozen_base()) dev_.fill_zero(act(norm_sink_), sizeof(T) * 2 * C);
        // LM head: d_lnf (N,C) = dlogits (N,V) · head (V,C);  dhead (V,C) += dlogits^T · lnf
        linear_backward(d_ln, head_, none, act(dlogits_), act(lnf_), N, C, V);  // dhead: linear_backward's dW
        if (head_lora_.a != none) lora_backward(head_lora_, -1, act(dlogits_), act(lnf_), d_ln, N);
        if (const T* e = extra(d_hidden, L, std::int64_t(N) * C)) accumulate(dev_, d_ln, e, std::int64_t(N) * C);
        dev_.fill_zero(d_res, sizeof(T) * N * C);
        const T* x_last = L ? act(layer_acts_[L - 1].res_out) : act(encoded_);
        norm_backward(d_res, d_ln, x_last, lnf_w_, lnf_b_, act(lnf_mean_), act(lnf_rstd_), N);
        for (int l = L - 1; l >= 0; --l) {
            const auto& w = layer_params_[l];
            const auto& a = layer_acts_[l];
            const T* x_in = l ? act(layer_acts_[l - 1].res_out) : act(encoded_);
            // checkpointed: the blocks share one working memory, which holds the last block's
            // activations after the forward; the others are recomputed from their kept input
            // through the forward's own attention path (fused where the device has it: no map, and the
            // log-sum-exp the fused backward reads), so that the recomputed activations are the forward's
            if (mode_ == activations::checkpointed && l + 1 < L) block_forward(l, x_in, N, [&] { attend(l, B, Tn); });
            if (l + 1 < L)
                if (const T* e = extra(d_hidden, l + 1, std::int64_t(N) * C))
                    accumulate(dev_, d_res, e, std::int64_t(N) * C);
            // MLP branch: res_out = res_attn + proj(act(fc(norm2(res_attn))))
            linear_backward(act(d_act_), w.mlp_proj_w, w.mlp_proj_b, d_res, act(a.fc_act), N, F, C);
            lora_linear_backward(l, 3, d_res, act(a.fc_act), act(d_act_), N);
            if (cfg_.swiglu())
                swiglu_backward(dev_, act(d_fc_), act(a.fc), act(d_act_), N, F);
            else
                gelu_backward(dev_, act(d_fc_), act(a.fc), act(d_act_), std::int64_t(N) * F);
            linear_backward(d_ln, w.fc_w, w.fc_b, act(d_fc_), act(a.ln2), N, C, F1);
            lora_linear_backward(l, 2, act(d_fc_), act(a.ln2), d_ln, N);
            norm_backward(d_res, d_ln, act(a.res_attn), w.ln2_w, w.ln2_b, act(a.ln2_mean), act(a.ln2_rstd), N);
            // attention branch: res_attn = x_in + proj(attention(rope(qkv(norm1(x_in)))))
            linear_backward(act(d_atty_), w.proj_w, w.proj_b, d_res, act(a.atty), N, C, C);
            lora_linear_backward(l, 1, d_res, act(a.atty), act(d_atty_), N);
            const T* d_map = extra(d_attention, l, std::int64_t(B) * H * Tn * Tn);
            if (d_map && !keeps_attention())  // on every device, as attention(l) is refused
                throw config_error("student",
                                   "backward: a gradient on attention map " + std::to_string(l) +
                                       " needs the map, which activations::" + std::string(activations_name(mode_)) +
                                       " does not keep; build the model with activations::training");
            if (fused_attention()) {
                if constexpr (device::fused_attention_device<Device, T>)
                    flash_attention_backward(dev_, act(d_qkv_), act(d_atty_), act(a.qkv), act(a.atty), act(a.att), B,
                                             Tn, H, cfg_.kv_heads(), cfg_.head_size());
            } else {
                nn::attention_backward(dev_, act(d_qkv_), act(d_att_), act(d_atty_), act(a.qkv), act(a.att), d_map, B,
                                       Tn, H, cfg_.kv_heads(), cfg_.head_size());
            }
            if (const T* e = extra(d_qkv, l, std::int64_t(N) * Q))
                accumulate(dev_, act(d_qkv_), e, std::int64_t(N) * Q);
            if (cfg_.rope())
                rope_rotate(dev_, act(d_qkv_), rope_cos(), rope_sin(), positions_.data(), N, Q, H + cfg_.kv_heads(),
                            cfg_.head_size(), true);
            linear_backward(d_ln, w.attn_w, w.attn_b, act(d_qkv_), act(a.ln1), N, C, Q);
            lora_linear_backward(l, 0, act(d_qkv_), act(a.ln1), d_ln, N);
            norm_backward(d_res, d_ln, x_in, w.ln1_w, w.ln1_b, act(a.ln1_mean), act(a.ln1_rstd), N);
        }
        if (const T* e = extra(d_hidden, 0, std::int64_t(N) * C)) accumulate(dev_, d_res, e, std::int64_t(N) * C);
        if (T* dwte = grad(wte_)) embedding_backward(dev_, dwte, grad(wpe_), d_res, tokens_, B, Tn, C);
    }

    /// Bytes held by the parameter, gradient and activation arenas.
    std::size_t arena_bytes() const noexcept { return this->parameter_bytes() + activation_bytes() + tokens_bytes(); }
    /// Bytes of the activation arena: what a forward keeps and the backward's buffers.
    std::size_t activation_bytes() const noexcept { return sizeof(T) * act_arena_.size(); }
    /// Bytes of the backward's own buffers (the logits' gradient, the per-layer gradient scratch),
    /// the same in every training mode on the same attention path (fused attention: no attention map
    /// gradient); the rest of `activation_bytes()` is what a forward keeps for the backward and the
    /// losses.
    std::size_t backward_buffer_bytes() const noexcept {
        return trains() ? sizeof(T) * (act_arena_.size() - act_layout_.blocks()[dlogits_].offset) : 0;
    }

private:
    struct LayerParams {
        std::size_t ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, mlp_proj_w, mlp_proj_b;
    };
    struct LayerActs {
        std::size_t ln1, ln1_mean, ln1_rstd, qkv, att, atty, res_attn, ln2, ln2_mean, ln2_rstd, fc, fc_act, res_out;
        std::array<std::size_t, 8> lora_h{}, lora_x{};  // per adapter of the layer: A x (N,r); dropped x (N,in)
    };

    void layout_parameters() {
        const std::int64_t V = cfg_.vocab_size, C = cfg_.d_model, F = cfg_.d_ff, Q = cfg_.qkv_width(),
                           F1 = cfg_.fc_width();
        auto add = [&](std::string name, std::initializer_list<std::int64_t> shape, parameter_kind kind) {
            return this->add_parameter(std::move(name), shape, kind);
        };
        auto add_if = [&](bool on, std::string name, std::int64_t n, parameter_kind kind) {
            return on ? add(std::move(name), {n}, kind) : none;
        };
        const bool ln = !cfg_.rms();
        // the GEMM matrices' storage (see TransformerConfig::bf16_weights)
        storage matrix = storage::fp32;
        if (stores_bf16_weights<T>(cfg_, dev_))
            matrix = !trains() || cfg_.lora.enabled() || cfg_.frozen ? storage::bf16 : storage::fp32_bf16;
        bf16_masters_ = matrix == storage::fp32_bf16;
        auto add_matrix = [&](std::string name, std::initializer_list<std::int64_t> shape, parameter_kind kind) {
            return this->add_parameter(std::move(name), shape, kind, matrix);
        };
        wte_ = add_matrix("wte.weight", {V, C}, parameter_kind::embedding);
        wpe_ = cfg_.rope() ? none : add("wpe.weight", {cfg_.context_length, C}, parameter_kind::embedding);
        for (int l = 0; l < cfg_.n_layers; ++l) {
            const std::string p = "h." + std::to_string(l) + ".";
            LayerParams w;
            w.ln1_w = add(p + "ln_1.weight", {C}, parameter_kind::norm);
            w.ln1_b = add_if(ln, p + "ln_1.bias", C, parameter_kind::norm);
            w.attn_w = add_matrix(p + "attn.c_attn.weight", {Q, C}, parameter_kind::weight);
            w.attn_b = add_if(cfg_.qkv_bias, p + "attn.c_attn.bias", Q, parameter_kind::bias);
            w.proj_w = add_matrix(p + "attn.c_proj.weight", {C, C}, parameter_kind::weight);
            w.proj_b = add_if(cfg_.proj_bias, p + "attn.c_proj.bias", C, parameter_kind::bias);
            w.ln2_w = add(p + "ln_2.weight", {C}, parameter_kind::norm);
            w.ln2_b = add_if(ln, p + "ln_2.bias", C, parameter_kind::norm);
            w.fc_w = add_matrix(p + "mlp.c_fc.weight", {F1, C}, parameter_kind::weight);
            w.fc_b = add_if(cfg_.mlp_bias, p + "mlp.c_fc.bias", F1, parameter_kind::bias);
            w.mlp_proj_w = add_matrix(p + "mlp.c_proj.weight", {C, F}, parameter_kind::weight);
            w.mlp_proj_b = add_if(cfg_.mlp_bias, p + "mlp.c_proj.bias", C, parameter_kind::bias);
            layer_params_.push_back(w);
        }
        lnf_w_ = add("ln_f.weight", {C}, parameter_kind::norm);
        lnf_b_ = add_if(ln, "ln_f.bias", C, parameter_kind::norm);
        head_ = cfg_.tie_embeddings ? wte_ : add_matrix("lm_head.weight", {V, C}, parameter_kind::weight);
        layout_adapters();
        this->allocate_parameters(dev_, trains());
    }

    // LoRA: each block's adapters in LoraConfig::all_targets order, then the head's.
    void layout_adapters() {
        const auto& lc = cfg_.lora;
        if (!lc.enabled()) return;
        const int C = cfg_.d_model, F = cfg_.d_ff, hs = cfg_.head_size(), H = cfg_.n_heads, Hkv = cfg_.kv_heads(),
                  Q = cfg_.qkv_width(), F1 = cfg_.fc_width(), r = lc.rank;
        auto make = [&](const std::string& name, int linear, int index, int in, int out, int offset, int width) {
            LoraAdapter ad{linear, index, none, none, in, out, offset, width};
            ad.a = this->add_adapter(name + ".lora_A", {r, in});
            ad.b = this->add_adapter(name + ".lora_B", {out, r});
            return ad;
        };
        lora_.resize(std::size_t(cfg_.n_layers));
        for (int l = 0; l < cfg_.n_layers; ++l) {
            const std::string p = "h." + std::to_string(l) + ".";
            auto& list = lora_[std::size_t(l)];
            auto add = [&](const char* t, int linear, int in, int out, int offset, int width) {
                if (lc.has(t))
                    list.push_back(make(p + t, linear, static_cast<int>(list.size()), in, out, offset, width));
            };
            add("q", 0, C, H * hs, 0, Q);
            add("k", 0, C, Hkv * hs, H * hs, Q);
            add("v", 0, C, Hkv * hs, (H + Hkv) * hs, Q);
            add("qkv", 0, C, Q, 0, Q);
            add("o", 1, C, C, 0, C);
            add("up", 2, C, F, cfg_.swiglu() ? F : 0, F1);  // swiglu: fc rows are gate | up
            add("gate", 2, C, F, 0, F1);
            add("down", 3, F, C, 0, C);
        }
        if (lc.has("head")) head_lora_ = make("lm_head", -1, 0, C, cfg_.vocab_size, 0, cfg_.vocab_size);
    }

    void layout_activations() {
        const std::int64_t N = std::int64_t(max_batch_) * cfg_.context_length, C = cfg_.d_model, F = cfg_.d_ff,
                           Q = cfg_.qkv_width(), F1 = cfg_.fc_width();
        const std::int64_t rows_h = std::int64_t(max_batch_) * cfg_.n_heads * cfg_.context_length;
        const std::int64_t att = rows_h * cfg_.context_length;
        // a layer's "att": the (B,H,T,T) map, or with fused attention the (B,H,T) log-sum-exp (training_fused,
        // checkpointed) or attention_decode's scratch (inference), both B·H·T
        const std::int64_t att_layer = fused_attention() ? rows_h : att;
        auto add = [&](const char* name, std::int64_t n) { return act_layout_.add<T>(name, {n}); };
        encoded_ = add("encoded", N * C);
        const bool training = trains();
        for (int l = 0; l < cfg_.n_layers; ++l) {
            const bool shared = mode_ == activations::inference || mode_ == activations::checkpointed;
            if (shared && l > 0) {  // every layer works in layer 0's buffers
                layer_acts_.push_back(layer_acts_.front());
                // checkpointed: but keeps its output, the next block's input (and a hidden state)
                if (mode_ == activations::checkpointed) layer_acts_.back().res_out = add("res_out", N * C);
                continue;
            }
            LayerActs a;
            a.ln1 = add("ln1", N * C);
            a.ln1_mean = add("ln1_mean", N);
            a.ln1_rstd = add("ln1_rstd", N);
            a.qkv = add("qkv", N * Q);
            a.att = add("att", att_layer);
            a.atty = add("atty", N * C);
            a.res_attn = add("res_attn", N * C);
            a.ln2 = add("ln2", N * C);
            a.ln2_mean = add("ln2_mean", N);
            a.ln2_rstd = add("ln2_rstd", N);
            a.fc = add("fc", N * F1);
            a.fc_act = add("fc_act", N * F);
            a.res_out = add("res_out", N * C);
            if (!lora_.empty())
                for (const auto& ad : lora_[std::size_t(l)]) {
                    a.lora_h[std::size_t(ad.index)] = add("lora_h", N * cfg_.lora.rank);
                    if (training && cfg_.lora.dropout > 0) a.lora_x[std::size_t(ad.index)] = add("lora_x", N * ad.in);
                }
            layer_acts_.push_back(a);
        }
        lnf_ = add("lnf", N * C);
        lnf_mean_ = add("lnf_mean", N);
        lnf_rstd_ = add("lnf_rstd", N);
        logits_ = add("logits", N * cfg_.vocab_size);
        next_logits_ = add("next_logits", std::int64_t(max_batch_) * cfg_.vocab_size);
        if (cfg_.rope()) rope_ = add("rope", std::int64_t(cfg_.context_length) * cfg_.head_size());  // cos | sin
        positions_.assign(std::size_t(N), 0);
        if (training) {
            dlogits_ = add("dlogits", N * cfg_.vocab_size);
            losses_ = add("losses", N);
            d_res_ = add("d_res", N * C);
            d_ln_ = add("d_ln", N * C);
            d_qkv_ = add("d_qkv", N * Q);
            if (!fused_attention()) d_att_ = add("d_att", att);
            d_atty_ = add("d_atty", N * C);
            d_fc_ = add("d_fc", N * F1);
            d_act_ = F1 == F ? d_fc_ : add("d_act", N * F);  // GELU's backward runs in place
        }
        if (cfg_.lora.enabled()) {
            head_lora_h_ = add("lora_h", N * cfg_.lora.rank);
            if (training && cfg_.lora.dropout > 0) head_lora_x_ = add("lora_x", N * C);
            if (training) {
                lora_g_ = add("lora_g", N * cfg_.lora.rank);
                if (cfg_.lora.dropout > 0) lora_tmp_ = add("lora_tmp", N * std::max(C, F));
                norm_sink_ = add("norm_sink", 2 * C);
            }
        }
        act_arena_ = detail::Arena<T, Device>(dev_, act_layout_.size());
        tokens_ = static_cast<std::int32_t*>(dev_.allocate(tokens_bytes()));
        tokens_owner_ = {tokens_, TokenFree{dev_, tokens_bytes()}};
    }

    void require_training(const char* what) const {
        if (!quantized_.empty())
            throw config_error("student", std::string(what) + ": this model was quantized for inference (quantize)");
        if (!trains())
            throw config_error("student", std::string(what) +
                                              ": this model was built for inference (activations::inference) and "
                                              "keeps only its logits; build it with activations::training");
    }
    // attention maps and q|k|v: kept by activations::training only
    void require_kept(const char* what) const {
        require_training(what);
        if (mode_ == activations::training_fused)
            throw config_error("student", std::string(what) +
                                              ": this model runs attention fused (activations::training_fused) and "
                                              "keeps no attention maps or q|k|v; a loss that reads them needs "
                                              "activations::training");
        if (mode_ == activations::checkpointed)
            throw config_error("student", std::string(what) +
                                              ": this model recomputes each block's activations in backward "
                                              "(activations::checkpointed) and keeps no attention maps or q|k|v; a "
                                              "loss that reads them needs activations::training");
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
    T* act(std::size_t i) const noexcept { return act_arena_.data() + act_layout_.blocks()[i].offset; }
    const T* wte() const noexcept { return val(wte_); }
    const T* wpe() const noexcept { return val(wpe_); }
    const T* head() const noexcept { return val(head_); }

    struct TokenFree {
        Device dev;
        std::size_t bytes;
        void operator()(std::int32_t* p) const noexcept { dev.deallocate(p, bytes); }
    };

    TransformerConfig cfg_;
    Device dev_;
    int max_batch_;
    activations mode_;
    T eps_ = T(1e-5);
    int B_ = 0, T_ = 0;

    detail::ArenaLayout act_layout_;
    detail::Arena<T, Device> act_arena_;
    std::vector<LayerParams> layer_params_;
    std::vector<LayerActs> layer_acts_;
    std::size_t wte_ = 0, wpe_ = none, lnf_w_ = 0, lnf_b_ = none, head_ = 0;
    std::size_t encoded_ = 0, lnf_ = 0, lnf_mean_ = 0, lnf_rstd_ = 0, logits_ = 0, dlogits_ = 0, losses_ = 0,
                next_logits_ = 0, rope_ = 0;
    int decode_batch_ = 0;
    // this model among every one built in the process (packed matrices name the model they copy)
    std::uint64_t identity_ = [] {
        static std::atomic<std::uint64_t> built{0};
        return ++built;
    }();
    PackedMatrices<T, Device> frozen_;               // pack_matrices()
    PackedMatrices<T, Device>* decoding_ = nullptr;  // during prefill and decode: the cache's
    // The packed matrices `linear` reads, or null: the cache's while decoding (if they are this
    // model's), else frozen_ after pack_matrices().
    PackedMatrices<T, Device>* packed_matrices() noexcept {
        if (decoding_ && decoding_->owner_ == identity_) return decoding_;
        return frozen_.owner_ == identity_ ? &frozen_ : nullptr;
    }
    // Points decoding_ at a cache's packed matrices until the scope ends.
    struct decoding_scope {
        Transformer& model;
        decoding_scope(Transformer& m, KvCache<T, Device>& cache) : model(m) { m.decoding_ = &cache.packed_; }
        ~decoding_scope() { model.decoding_ = nullptr; }
        decoding_scope(const decoding_scope&) = delete;
        decoding_scope& operator=(const decoding_scope&) = delete;
    };
    int rope_key_ = -1, rope_rows_ = 0;    // what the rotary tables hold (see update_rope)
    std::vector<std::int32_t> positions_;  // position of each row of the last forward or decode (rope)
    std::size_t d_res_ = 0, d_ln_ = 0, d_qkv_ = 0, d_att_ = 0, d_atty_ = 0, d_fc_ = 0, d_act_ = 0;
    // LoRA (cfg_.lora): each block's adapters, the head's, their shared slots, dropout state
    std::vector<std::vector<LoraAdapter>> lora_;
    LoraAdapter head_lora_{};
    std::size_t head_lora_h_ = 0, head_lora_x_ = 0, lora_g_ = 0, lora_tmp_ = 0, norm_sink_ = 0;
    bool lora_dropout_on_ = false, lora_drop_now_ = false;
    bool bf16_masters_ = false;  // GEMM matrices stored as fp32 masters + bf16 copies (refresh_bf16)
    std::uint64_t lora_key_ = 0;
    std::int32_t* tokens_ = nullptr;
    std::unique_ptr<std::int32_t, TokenFree> tokens_owner_{nullptr, TokenFree{}};
    struct QuantizedMatrix {
        quant::type type;
        std::vector<std::byte> rows;  // ggml blocks, row by row
    };
    std::map<std::size_t, QuantizedMatrix> quantized_;  // by parameter index (`quantize`)
    std::vector<T> quant_scratch_;                      // a product to add to the residual stream
};

}  // namespace distill::student

BOOST_HANA_ADAPT_STRUCT(distill::student::RopeScaling, type, factor, low_freq_factor, high_freq_factor,
                        original_context_length);
BOOST_HANA_ADAPT_STRUCT(distill::student::TransformerConfig, vocab_size, context_length, d_model, n_layers, n_heads,
                        n_kv_heads, d_ff, norm, norm_eps, positions, rope_theta, rope_scaling, mlp, qkv_bias, proj_bias,
                        mlp_bias, tie_embeddings);
