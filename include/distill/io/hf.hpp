#pragma once
/// @file hf.hpp
/// Hugging Face checkpoints: a directory with `config.json` and `model.safetensors`, or shards listed
/// by `model.safetensors.index.json`, as transformers' `save_pretrained` writes them. F32, F16 and
/// BF16 tensors load into a float or double model; `save` writes a directory transformers loads back
/// with `from_pretrained`.
///
/// A family maps transformers' `config.json` onto the student's config and transformers' tensor
/// names and layouts onto its parameters:
/// - `gpt2` (GPT-2, distilgpt2): `GPT2LMHeadModel` / `GPT2Model`, with or without the `transformer.`
///   prefix. GPT-2's `Conv1D` stores its weights as (in, out); the student's linear layers are
///   (out, in), so those four weights per block are transposed on the way in and out. The attention
///   mask buffers old checkpoints carry (`attn.bias`, `attn.masked_bias`) are skipped; an
///   `lm_head.weight` must equal the tied embedding.
/// - `bert` (BERT, MiniLM, all-MiniLM-L6-v2 and other sentence-transformers encoders): `BertModel`, or
///   the encoder inside `BertFor*` (names with the `bert.` prefix), loads as `student::Encoder`
///   (`encoder_config`). Linear weights are (out, in) as the Encoder's, so nothing is transposed. The
///   pooler (`pooler.dense.*`), task heads (`cls.*`) and the `embeddings.position_ids` buffer are not
///   part of the Encoder and are skipped. A sentence-transformers directory's `1_Pooling/config.json`
///   chooses mean or CLS pooling (mean without it).
/// - `llama` (Llama 2/3.x, SmolLM, TinyLlama), `qwen2` (Qwen2, Qwen2.5) and `phi3` (Phi-3, Phi-4-mini):
///   `*ForCausalLM` (names with the `model.` prefix) or the bare `*Model`, as `student::Transformer`
///   with RMSNorm, rotary positions (plain, linear, dynamic NTK or llama3 scaling), SwiGLU and
///   grouped-query attention. The student keeps q|k|v and gate|up in one weight each (rows stacked:
///   q, k, v; gate, up); Llama's and Qwen2's separate `q_proj`/`k_proj`/`v_proj` and
///   `gate_proj`/`up_proj` are stacked on the way in and split on the way out, Phi-3's fused
///   `qkv_proj`/`gate_up_proj` are the student's as they are. Llama's `attention_bias` covers q, k, v
///   and o; Qwen2 has q/k/v biases only; Phi-3 none. Old checkpoints' `rotary_emb.inv_freq` buffers
///   are skipped. A rotary model may be built with a shorter `context_length` than the checkpoint's
///   (nothing in it depends on the length), which keeps a 128k-context model's activations small.
///
/// Every file is bounded before it is parsed; a missing, extra or misshapen tensor is a `format_error`
/// listing what was expected, checked before any parameter is written.

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/device.hpp"
#include "distill/error.hpp"
#include "distill/io/durable.hpp"
#include "distill/io/reflect.hpp"
#include "distill/io/safetensors.hpp"
#include "distill/student/encoder.hpp"
#include "distill/student/transformer.hpp"

namespace distill::io::hf {

/// Largest `config.json` / index file read (they are a few KiB; the bound keeps a hostile file from
/// exhausting memory before it is parsed).
inline constexpr std::uintmax_t max_json_bytes = std::uintmax_t(16) << 20;
/// Most shards an index may list.
inline constexpr std::size_t max_shards = 4096;

namespace detail {

inline nlohmann::json read_json(const std::filesystem::path& path) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    if (ec) throw io_error(path, "cannot read: " + ec.message());
    if (size > max_json_bytes)
        throw format_error(
            path, 0, "is " + std::to_string(size) + " bytes; at most " + std::to_string(max_json_bytes) + " expected");
    std::ifstream in(path, std::ios::binary);
    if (!in) throw io_error(path, "cannot open for reading");
    nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
    if (j.is_discarded() || !j.is_object()) throw format_error(path, 0, "not a JSON object");
    return j;
}

}  // namespace detail

/// A Hugging Face model directory (what `save_pretrained` writes) opened for reading: its
/// config.json and every safetensors shard, mapped. (Not to be confused with `io::Checkpoint`,
/// distill's own training checkpoint in io/checkpoint.hpp.)
class Directory {
public:
    /// Opens `dir`/config.json and `dir`/model.safetensors, or the shards its
    /// model.safetensors.index.json lists. Throws io_error / format_error naming the file.
    explicit Directory(std::filesystem::path dir) : dir_(std::move(dir)) {
        config_ = detail::read_json(dir_ / "config.json");
        const auto type = config_.find("model_type");
        if (type == config_.end() || !type->is_string())
            throw format_error(dir_ / "config.json", 0, "model_type: a string is required");
        model_type_ = *type;
        const auto single = dir_ / "model.safetensors", index = dir_ / "model.safetensors.index.json";
        if (std::filesystem::exists(single)) {
            add_shard(single);
        } else if (std::filesystem::exists(index)) {
            const nlohmann::json j = detail::read_json(index);
            const auto map = j.find("weight_map");
            if (map == j.end() || !map->is_object())
                throw format_error(index, 0, "weight_map: an object {tensor name: shard file} is required");
            std::set<std::string> files;
            for (const auto& [name, file] : map->items()) {
                const std::string* f = file.get_ptr<const std::string*>();
                if (!f || f->empty() || f->find('/') != std::string::npos || *f == "." || *f == "..")
                    throw format_error(index, 0, "weight_map." + name + ": expected a file name in this directory");
                files.insert(*f);
            }
            if (files.size() > max_shards)
                throw format_error(index, 0,
                                   "lists " + std::to_string(files.size()) + " shards; at most " +
                                       std::to_string(max_shards) + " expected");
            for (const auto& f : files) add_shard(dir_ / f);
            for (const auto& [name, file] : map->items()) {
                const auto it = where_.find(name);
                if (it == where_.end() || shards_[it->second].path().filename() != file.get<std::string>())
                    throw format_error(index, 0,
                                       "weight_map." + name + ": the tensor is not in " + file.get<std::string>());
            }
        } else {
            throw io_error(dir_, "neither model.safetensors nor model.safetensors.index.json found");
        }
    }

    const std::filesystem::path& directory() const noexcept { return dir_; }
    /// The parsed config.json.
    const nlohmann::json& config() const noexcept { return config_; }
    /// config.json's `model_type` (e.g. "gpt2", "llama").
    const std::string& model_type() const noexcept { return model_type_; }

    /// The tensor called `name` and the shard holding it; nullopt when no shard has it.
    std::optional<std::pair<const safetensors_file*, const tensor_info*>> find(std::string_view name) const {
        const auto it = where_.find(std::string(name));
        if (it == where_.end()) return std::nullopt;
        const safetensors_file& f = shards_[it->second];
        return std::pair{&f, f.find(name)};
    }
    /// Every tensor name of every shard, sorted.
    std::vector<std::string> tensor_names() const {
        std::vector<std::string> names;
        for (const auto& [name, shard] : where_) names.push_back(name);
        return names;
    }

private:
    void add_shard(const std::filesystem::path& path) {
        shards_.emplace_back(path);
        for (const auto& t : shards_.back().tensors())
            if (!where_.emplace(t.name, shards_.size() - 1).second)
                throw format_error(path, 0, "tensor '" + t.name + "' is also in another shard");
    }

    std::filesystem::path dir_;
    nlohmann::json config_;
    std::string model_type_;
    std::vector<safetensors_file> shards_;
    std::map<std::string, std::size_t, std::less<>> where_;
};

/// The model types this header knows, and what each needs.
inline constexpr std::string_view supported_model_types =
    "gpt2, llama, qwen2, phi3 (student::Transformer), bert (student::Encoder)";

namespace detail {

// The keys of a transformers config.json, read with errors that name the file and the key.
struct ConfigReader {
    const nlohmann::json& c;
    const std::filesystem::path& file;

    // A positive integer; `fallback` when absent or null (else required).
    int integer(const char* key, std::optional<int> fallback = std::nullopt) const {
        const auto it = c.find(key);
        if (it == c.end() || it->is_null()) {
            if (fallback) return *fallback;
            throw format_error(file, 0, std::string(key) + ": an integer is required");
        }
        if (!it->is_number_integer() || it->get<std::int64_t>() < 1 || it->get<std::int64_t>() > (1 << 30))
            throw format_error(file, 0, std::string(key) + ": expected a positive integer, got " + it->dump());
        return int(it->get<std::int64_t>());
    }
    // A positive number; `fallback` when absent or null.
    double number(const char* key, double fallback) const {
        const auto it = c.find(key);
        if (it == c.end() || it->is_null()) return fallback;
        if (!it->is_number() || !(it->get<double>() > 0))
            throw format_error(file, 0, std::string(key) + ": expected a positive number, got " + it->dump());
        return it->get<double>();
    }
    // A boolean; `fallback` when absent or null.
    bool boolean(const char* key, bool fallback) const {
        const auto it = c.find(key);
        if (it == c.end() || it->is_null()) return fallback;
        if (!it->is_boolean())
            throw format_error(file, 0, std::string(key) + ": expected a boolean, got " + it->dump());
        return it->get<bool>();
    }
    // `config` after its own validation, whose config_error becomes a format_error naming the file.
    template <class Config>
    Config validated(Config config) const {
        try {
            config.validate("config");
        } catch (const config_error& e) {
            throw format_error(file, 0, e.what());
        }
        return config;
    }
    // A setting the student computes only one way: absent, null or `expected`.
    void require(const char* key, const nlohmann::json& expected, const char* why) const {
        const auto it = c.find(key);
        if (it != c.end() && !it->is_null() && *it != expected)
            throw format_error(
                file, 0,
                std::string(key) + ": " + it->dump() + " is not supported, only " + expected.dump() + " (" + why + ")");
    }
};

}  // namespace detail

/// How one student parameter is stored in a transformers checkpoint: one tensor, or several whose
/// rows stacked make it (q | k | v, gate | up).
struct tensor_map {
    std::vector<std::string> hf_names;  ///< transformers' names, e.g. {"transformer.h.0.attn.c_attn.weight"}
    std::vector<std::int64_t> rows;     ///< rows of each part when stacked (empty for one tensor)
    bool transposed = false;            ///< stored (in, out) where the student is (out, in)
};

/// Reads transformers' config of a `gpt2` model as a student config. Settings the student's blocks do
/// not compute (another activation, no tied head, scaled attention variants) are refused by name.
inline student::TransformerConfig gpt2_config(const nlohmann::json& c, const std::filesystem::path& file) {
    const detail::ConfigReader r{c, file};
    const auto act = c.find("activation_function");
    if (act != c.end() && *act != "gelu_new" && *act != "gelu_pytorch_tanh")
        throw format_error(file, 0,
                           "activation_function: " + act->dump() +
                               " is not supported, only \"gelu_new\" or \"gelu_pytorch_tanh\" (the student's "
                               "GELU is the tanh approximation)");
    r.require("layer_norm_epsilon", 1e-5, "the student's LayerNorm epsilon");
    r.require("tie_word_embeddings", true, "the student's LM head is the token embedding");
    r.require("scale_attn_weights", true, "the student scales attention scores by 1/sqrt(head size)");
    r.require("scale_attn_by_inverse_layer_idx", false, "the student does not scale scores per layer");
    student::TransformerConfig t;
    t.vocab_size = r.integer("vocab_size");
    t.context_length = r.integer("n_positions");
    t.d_model = r.integer("n_embd");
    t.n_layers = r.integer("n_layer");
    t.n_heads = r.integer("n_head");
    t.d_ff = r.integer("n_inner", 4 * t.d_model);
    return r.validated(t);
}

/// Reads transformers' config of a `llama`, `qwen2` or `phi3` model as a student config. Settings
/// the student's blocks do not compute (another activation, partial rotary, YaRN/LongRoPE scaling,
/// a sliding window shorter than the context, a head size other than hidden_size / heads) are refused
/// by name.
inline student::TransformerConfig llama_config(const nlohmann::json& c, const std::filesystem::path& file,
                                               const std::string& model_type) {
    const detail::ConfigReader r{c, file};
    auto fail = [&](const std::string& what) { throw format_error(file, 0, what); };
    r.require("hidden_act", "silu", "the student's SwiGLU gate is SiLU");
    r.require("partial_rotary_factor", 1.0, "the student rotates whole heads");
    student::TransformerConfig t;
    t.vocab_size = r.integer("vocab_size");
    t.context_length = r.integer("max_position_embeddings");
    t.d_model = r.integer("hidden_size");
    t.n_layers = r.integer("num_hidden_layers");
    t.n_heads = r.integer("num_attention_heads");
    t.n_kv_heads = r.integer("num_key_value_heads", t.n_heads);
    t.d_ff = r.integer("intermediate_size");
    // (64-bit: head_dim and the head count are each up to 2^30; absent, validated() checks the division)
    if (const auto hd = c.find("head_dim"); hd != c.end() && !hd->is_null())
        if (std::int64_t(r.integer("head_dim")) * t.n_heads != t.d_model)
            fail("head_dim: " + hd->dump() + " is not supported, only hidden_size / num_attention_heads");
    t.norm = "rmsnorm";
    t.norm_eps = r.number("rms_norm_eps", model_type == "phi3" ? 1e-5 : 1e-6);
    t.positions = "rope";
    t.rope_theta = r.number("rope_theta", 10000);
    t.mlp = "swiglu";
    t.tie_embeddings = r.boolean("tie_word_embeddings", false);
    if (model_type == "llama") {
        t.qkv_bias = t.proj_bias = r.boolean("attention_bias", false);
        t.mlp_bias = r.boolean("mlp_bias", false);
    } else {
        t.qkv_bias = model_type == "qwen2";  // Qwen2: q, k, v biases; o and the MLP without
        t.proj_bias = t.mlp_bias = false;
    }
    if (model_type == "qwen2" && r.boolean("use_sliding_window", false))
        fail("use_sliding_window: true is not supported (the student attends to the whole context)");
    if (model_type == "phi3")  // sequences no longer than the window attend exactly as transformers'
        if (const auto w = c.find("sliding_window"); w != c.end() && !w->is_null())
            t.context_length = std::min(t.context_length, r.integer("sliding_window"));
    // transformers 5 writes one `rope_parameters` object (rope_theta inside, rope_type "default" when
    // unscaled) where 4.x wrote `rope_theta` and `rope_scaling`.
    const auto params = c.find("rope_parameters");
    const bool v5 = params != c.end() && !params->is_null();
    const std::string key = v5 ? "rope_parameters" : "rope_scaling";
    if (const auto it = c.find(key); it != c.end() && !it->is_null()) {
        if (!it->is_object()) fail(key + ": expected an object or null, got " + it->dump());
        const detail::ConfigReader s{*it, file};
        if (v5) t.rope_theta = s.number("rope_theta", t.rope_theta);
        const auto type = it->contains("rope_type") ? (*it)["rope_type"] : it->value("type", nlohmann::json());
        if (v5 && type == "default") return r.validated(t);
        if (type != "linear" && type != "dynamic" && type != "llama3")
            fail(key + ": type " + type.dump() +
                 " is not supported, only \"linear\", \"dynamic\" or \"llama3\" (YaRN, LongRoPE and su are not "
                 "implemented)");
        auto& rs = t.rope_scaling;
        rs.type = type.get<std::string>();
        rs.factor = s.number("factor", 1);
        if (rs.type == "dynamic") {  // transformers' max_position_embeddings is the original context here
            rs.original_context_length = t.context_length;
            t.context_length = int(std::min(double(1 << 18), t.context_length * rs.factor));
        } else if (rs.type == "llama3") {
            rs.low_freq_factor = s.number("low_freq_factor", 1);
            rs.high_freq_factor = s.number("high_freq_factor", 4);
            rs.original_context_length = s.integer("original_max_position_embeddings");
        }
    }
    return r.validated(t);
}

/// The student config a checkpoint describes. Throws format_error naming config.json for a model type
/// or a setting the student cannot compute.
inline student::TransformerConfig transformer_config(const Directory& ckpt) {
    const auto file = ckpt.directory() / "config.json";
    const std::string& type = ckpt.model_type();
    if (type == "gpt2") return gpt2_config(ckpt.config(), file);
    if (type == "llama" || type == "qwen2" || type == "phi3") return llama_config(ckpt.config(), file, type);
    if (type == "bert")
        throw format_error(file, 0,
                           "model_type \"bert\" is a bidirectional encoder: load it as student::Encoder "
                           "(io::hf::encoder_config and io::hf::load), not as student::Transformer");
    throw format_error(
        file, 0, "model_type \"" + type + "\" is not supported; supported: " + std::string(supported_model_types));
}

/// Throws format_error unless the checkpoint's tensors hold at least the `parameters` a config read
/// from its config.json describes — checked before a model is laid out, so a crafted config.json
/// beside a small file cannot make us allocate a large model.
inline void check_parameter_count(const Directory& ckpt, std::int64_t parameters) {
    std::int64_t held = 0;
    for (const auto& name : ckpt.tensor_names()) held += ckpt.find(name)->second->numel();
    if (held < parameters)
        throw format_error(ckpt.directory() / "config.json", 0,
                           "describes " + std::to_string(parameters) +
                               " parameters, but the checkpoint's tensors hold " + std::to_string(held));
}

/// `transformer_config(ckpt)`, checked against the tensors (`check_parameter_count`) before anything
/// is laid out: what a teacher or a student loaded from a directory is built from.
inline student::TransformerConfig checked_transformer_config(const Directory& ckpt) {
    const student::TransformerConfig c = transformer_config(ckpt);
    check_parameter_count(ckpt, c.parameter_count());
    return c;
}

/// Reads transformers' config of a `bert` model as an Encoder config; `pooling` ("mean" or "cls")
/// comes from the caller. Settings the Encoder does not compute (another activation, relative
/// position embeddings, a decoder) are refused by name.
inline student::EncoderConfig bert_config(const nlohmann::json& c, const std::filesystem::path& file,
                                          const std::string& pooling = "mean") {
    const detail::ConfigReader r{c, file};
    r.require("hidden_act", "gelu", "the Encoder's MLP uses the exact erf GELU");
    r.require("position_embedding_type", "absolute", "the Encoder has learned absolute positions");
    r.require("is_decoder", false, "the Encoder is bidirectional");
    r.require("add_cross_attention", false, "the Encoder has no cross-attention");
    student::EncoderConfig e;
    e.vocab_size = r.integer("vocab_size");
    e.context_length = r.integer("max_position_embeddings");
    e.type_vocab_size = r.integer("type_vocab_size", 2);
    e.d_model = r.integer("hidden_size");
    e.n_layers = r.integer("num_hidden_layers");
    e.n_heads = r.integer("num_attention_heads");
    e.d_ff = r.integer("intermediate_size");
    e.layer_norm_eps = r.number("layer_norm_eps", e.layer_norm_eps);
    e.pooling = pooling;
    return r.validated(e);
}

/// The Encoder config a `bert` checkpoint describes; the pooling mode comes from a
/// sentence-transformers `1_Pooling/config.json` beside it when there is one (mean or CLS; other
/// modes are refused), else mean. Throws format_error naming the file for another model type or a
/// setting the Encoder cannot compute.
inline student::EncoderConfig encoder_config(const Directory& ckpt) {
    const auto file = ckpt.directory() / "config.json";
    if (ckpt.model_type() != "bert")
        throw format_error(file, 0,
                           "model_type \"" + ckpt.model_type() +
                               "\" is not an encoder student::Encoder loads; supported: bert" +
                               (ckpt.model_type() == "gpt2" ? " (gpt2 loads as student::Transformer)" : ""));
    std::string pooling = "mean";
    const auto pooling_file = ckpt.directory() / "1_Pooling" / "config.json";
    if (std::filesystem::exists(pooling_file)) {
        const nlohmann::json p = detail::read_json(pooling_file);
        auto on = [&](const char* key) {
            const auto it = p.find(key);
            return it != p.end() && it->is_boolean() && it->get<bool>();
        };
        const bool mean = on("pooling_mode_mean_tokens"), cls = on("pooling_mode_cls_token");
        for (const char* other : {"pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                                  "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"})
            if (on(other))
                throw format_error(pooling_file, 0,
                                   std::string(other) + " is not supported: the Encoder pools by mean or CLS");
        if (mean == cls)
            throw format_error(pooling_file, 0,
                               "exactly one of pooling_mode_mean_tokens and pooling_mode_cls_token must be true");
        pooling = cls ? "cls" : "mean";
    }
    return bert_config(ckpt.config(), file, pooling);
}

/// Where each of a GPT-2-layout student's parameters lives in a transformers checkpoint whose names
/// start with `prefix` ("transformer." for GPT2LMHeadModel, "" for GPT2Model).
inline tensor_map gpt2_tensor(const std::string& name, const std::string& prefix) {
    const bool conv1d =
        name.ends_with("c_attn.weight") || name.ends_with("c_proj.weight") || name.ends_with("c_fc.weight");
    return {{prefix + name}, {}, conv1d};
}

/// Where each of a student's parameters lives in a `llama`, `qwen2` or `phi3` checkpoint whose names
/// start with `prefix` ("model." for *ForCausalLM, "" for *Model; the untied head is `lm_head.weight`
/// either way). `c` gives the row counts of the stacked parts.
inline tensor_map llama_tensor(const student::TransformerConfig& c, const std::string& model_type,
                               const std::string& name, const std::string& prefix) {
    if (name == "wte.weight") return {{prefix + "embed_tokens.weight"}, {}, false};
    if (name == "ln_f.weight") return {{prefix + "norm.weight"}, {}, false};
    if (name == "lm_head.weight") return {{"lm_head.weight"}, {}, false};
    // h.{l}.{part}.{weight|bias}
    const std::size_t dot = name.find('.', 2), last = name.rfind('.');
    const std::string layer = prefix + "layers." + name.substr(2, dot - 2) + ".",
                      part = name.substr(dot + 1, last - dot - 1), kind = name.substr(last);
    const bool fused = model_type == "phi3";
    const std::int64_t hs = c.head_size(), q = std::int64_t(c.n_heads) * hs, kv = std::int64_t(c.kv_heads()) * hs;
    if (part == "ln_1") return {{layer + "input_layernorm" + kind}, {}, false};
    if (part == "ln_2") return {{layer + "post_attention_layernorm" + kind}, {}, false};
    if (part == "attn.c_proj") return {{layer + "self_attn.o_proj" + kind}, {}, false};
    if (part == "mlp.c_proj") return {{layer + "mlp.down_proj" + kind}, {}, false};
    if (part == "attn.c_attn")
        return fused ? tensor_map{{layer + "self_attn.qkv_proj" + kind}, {}, false}
                     : tensor_map{{layer + "self_attn.q_proj" + kind, layer + "self_attn.k_proj" + kind,
                                   layer + "self_attn.v_proj" + kind},
                                  {q, kv, kv},
                                  false};
    if (part == "mlp.c_fc")
        return fused ? tensor_map{{layer + "mlp.gate_up_proj" + kind}, {}, false}
                     : tensor_map{
                           {layer + "mlp.gate_proj" + kind, layer + "mlp.up_proj" + kind}, {c.d_ff, c.d_ff}, false};
    throw error("io::hf: no " + model_type + " tensor for the student's parameter " + name);
}

/// Where each of an Encoder's parameters lives in a transformers checkpoint whose names start with
/// `prefix` ("bert." for BertFor*, "" for BertModel): the same name, nothing transposed.
inline tensor_map bert_tensor(const std::string& name, const std::string& prefix) {
    return {{prefix + name}, {}, false};
}

namespace detail {

// A host image of `model`'s base parameters (`base_image()`: parameter k at `image_offset(k)`, bf16
// storage widened); with LoRA adapters, merged into the base weights.
template <class Model>
std::vector<typename Model::scalar_type> host_parameters(const Model& model) {
    if constexpr (requires { model.merged_parameters(); })
        if (model.frozen_base()) return model.merged_parameters();
    return model.base_image();
}

// out(cols, rows) = in(rows, cols)ᵀ: GPT-2's Conv1D (in, out) <-> the student's (out, in).
template <class T>
void transpose(const T* in, T* out, std::size_t rows, std::size_t cols) {
    for (std::size_t i = 0; i < rows; ++i)
        for (std::size_t j = 0; j < cols; ++j) out[j * rows + i] = in[i * cols + j];
}

// Buffers some checkpoints carry that are not parameters: GPT-2's attention masks, old Llamas'
// rotary inverse frequencies.
inline bool is_buffer(std::string_view name) {
    return name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") || name.ends_with("rotary_emb.inv_freq");
}

// Tensors of a bert checkpoint that are not the Encoder's: the position-id buffer, the pooler and
// the task heads of BertFor*.
inline bool is_bert_extra(std::string_view name, std::string_view prefix) {
    if (name.starts_with(prefix)) name.remove_prefix(prefix.size());
    return name == "embeddings.position_ids" || name.starts_with("pooler.") || name.starts_with("cls.") ||
           name.starts_with("classifier.") || name.starts_with("qa_outputs.");
}

template <class Model>
constexpr bool is_encoder = std::is_same_v<typename Model::config_type, student::EncoderConfig>;

}  // namespace detail

/// Loads `ckpt` into `model`: a `student::Transformer` whose config is `transformer_config(ckpt)`
/// (gpt2, llama, qwen2, phi3; a rotary model may have a shorter context_length), or a
/// `student::Encoder` whose config is `encoder_config(ckpt)` (bert; its pooling mode may differ).
/// Every tensor is checked (present, shape, floating dtype; no tensor left over but those a family
/// skips) before any parameter is written, so a failed load leaves the model as it was.
/// Throws format_error / shape_error naming the file and tensor.
template <class Model>
void load(const Directory& ckpt, Model& model) {
    using T = typename Model::scalar_type;
    constexpr bool encoder = detail::is_encoder<Model>;
    const std::string& family = ckpt.model_type();
    // the model must have the checkpoint's shape (an Encoder may pool differently, a rotary model
    // may be built for shorter sequences)
    auto expected = [&] {
        if constexpr (encoder) {
            auto e = encoder_config(ckpt);
            e.pooling = model.config().pooling;
            return e;
        } else {
            auto t = transformer_config(ckpt);
            if (t.rope() && model.config().context_length <= t.context_length)
                t.context_length = model.config().context_length;
            return t;
        }
    }();
    if (to_json(model.config()) != to_json(expected))
        throw shape_error(ckpt.directory().string() + ": the model's config differs from config.json's: expected " +
                          to_json(expected).dump() + ", the model has " + to_json(model.config()).dump());
    const std::string prefix = encoder            ? (ckpt.find("bert.embeddings.word_embeddings.weight") ? "bert." : "")
                               : family == "gpt2" ? (ckpt.find("transformer.wte.weight") ? "transformer." : "")
                                                  : (ckpt.find("model.embed_tokens.weight") ? "model." : "");
    const auto map_name = [&](const std::string& name) {
        if constexpr (encoder)
            return bert_tensor(name, prefix);
        else
            return family == "gpt2" ? gpt2_tensor(name, prefix) : llama_tensor(model.config(), family, name, prefix);
    };

    struct source {
        const safetensors_file* file;
        const tensor_info* info;
        bool transposed;
        std::size_t offset;  // into the parameter arena
    };
    std::vector<source> sources;
    std::set<std::string> used;
    std::vector<std::string> missing;
    std::size_t embedding = 0;              // offset of the token embedding, which a tied head must equal
    std::vector<std::size_t> first_source;  // per base parameter: its first entry in `sources`
    for (std::size_t k = 0; k < model.base_parameters().size(); ++k) {
        const auto& p = model.base_parameters()[k];
        first_source.push_back(sources.size());
        const tensor_map m = map_name(p.name);
        std::vector<std::int64_t> shape(p.value.shape().begin(), p.value.shape().begin() + p.value.rank());
        if (m.transposed) std::reverse(shape.begin(), shape.end());
        std::size_t offset = model.image_offset(k);
        if (p.name == "wte.weight") embedding = offset;
        for (std::size_t i = 0; i < m.hf_names.size(); ++i) {
            const std::string& hf_name = m.hf_names[i];
            const auto found = ckpt.find(hf_name);
            if (!found) {
                missing.push_back(hf_name);
                continue;
            }
            const auto [file, info] = *found;
            auto part = shape;
            if (!m.rows.empty()) part[0] = m.rows[i];
            if (info->shape != part)
                throw shape_error(file->path().string() + ": tensor '" + hf_name + "': expected shape " +
                                  distill::detail::shape_string(part) + ", found " +
                                  distill::detail::shape_string(info->shape));
            if (!is_floating(info->type))
                throw format_error(file->path(), 0,
                                   "tensor '" + hf_name + "' is " + std::string(dtype_name(info->type)) +
                                       ", expected a floating-point tensor");
            used.insert(hf_name);
            sources.push_back({file, info, m.transposed, offset});
            offset += static_cast<std::size_t>(info->numel());
        }
    }
    // a tied model's checkpoint may still carry its head, which must then equal the embedding
    const bool tied_head = !encoder && !used.contains("lm_head.weight") && ckpt.find("lm_head.weight");
    std::vector<std::string> unexpected;
    for (const auto& name : ckpt.tensor_names())
        if (!used.contains(name) && (encoder ? !detail::is_bert_extra(name, prefix)
                                             : !detail::is_buffer(name) && !(tied_head && name == "lm_head.weight")))
            unexpected.push_back(name);
    if (!missing.empty() || !unexpected.empty()) {
        std::string what = "tensors do not match a " + family + " model:";
        auto list = [](const std::vector<std::string>& names) {
            return distill::detail::name_list(std::vector<std::string_view>(names.begin(), names.end()));
        };
        if (!missing.empty()) what += " missing " + list(missing) + (unexpected.empty() ? "" : ";");
        if (!unexpected.empty()) what += " unexpected " + list(unexpected);
        throw format_error(ckpt.directory(), 0, what);
    }

    std::vector<T> staged;
    // reads source s into dst (numel elements), transposing what the checkpoint stores (in, out)
    auto read = [&](const source& s, T* dst) {
        const auto n = static_cast<std::size_t>(s.info->numel());
        if (!s.transposed) {
            s.file->read(*s.info, std::span<T>(dst, n));
            return;
        }
        staged.resize(n);
        s.file->read(*s.info, std::span<T>(staged));
        detail::transpose(staged.data(), dst, std::size_t(s.info->shape[0]), std::size_t(s.info->shape[1]));
    };
    // One parameter at a time through a host buffer of its size (never an image of the model), written
    // into its storage by write_base (fp32, and/or rounded to bf16; a device copy where the model's
    // memory is not the host's). Every name, shape and dtype was checked above and a tied head is
    // compared below before anything is written; only a failed read could stop it half way.
    std::vector<T> one;
    if (tied_head) {  // the head the checkpoint carries must equal its embedding
        const auto [file, info] = *ckpt.find("lm_head.weight");
        const source* wte = nullptr;
        for (const auto& s : sources)
            if (s.offset == embedding) wte = &s;
        if (!wte || info->shape != wte->info->shape || !is_floating(info->type))
            throw format_error(file->path(), 0,
                               "lm_head.weight: expected the tied embedding's shape and a float dtype");
        one.resize(std::size_t(info->numel()));
        read(*wte, one.data());
        staged.resize(one.size());
        file->read(*info, std::span<T>(staged));
        if (staged != one)
            throw format_error(file->path(), 0,
                               "lm_head.weight differs from the token embedding, but config.json ties them "
                               "(tie_word_embeddings)");
    }
    first_source.push_back(sources.size());
    for (std::size_t k = 0; k + 1 < first_source.size(); ++k) {
        one.resize(std::size_t(model.base_parameters()[k].value.numel()));
        for (std::size_t i = first_source[k]; i < first_source[k + 1]; ++i)
            read(sources[i], one.data() + (sources[i].offset - model.image_offset(k)));
        model.write_base(k, one.data());
    }
}

/// The memory a loader holds on top of a model of config `c` while it reads its weights, at most: the
/// mapped pages of the tensor being read (4 bytes an element: F32 or narrower; `safetensors_file::read`
/// drops each tensor's pages once copied) and `buffers` host buffers of the largest parameter's size.
/// `load` here takes 2 (a parameter's values, and a transposed tensor staged or a tied head compared);
/// `io::load_weights` 1 for weights stored in bf16 alone, else 0 (it reads into the parameters).
inline std::int64_t load_transient_bytes(const student::TransformerConfig& c, int buffers = 2) {
    return std::int64_t(sizeof(float)) * (1 + buffers) * c.d_model *
           std::max({c.vocab_size, c.qkv_width(), c.fc_width(), c.d_ff});
}

/// Writes an Encoder to `dir` as transformers' BertModel without its pooler (config.json and
/// model.safetensors; `from_pretrained` initializes the pooler it does not find, which the Encoder
/// never uses), plus a sentence-transformers `1_Pooling/config.json` naming the pooling mode.
template <class Model>
void save_encoder(const std::filesystem::path& dir, const Model& model, dtype out, const nlohmann::json& extra_config) {
    using T = typename Model::scalar_type;
    const auto& c = model.config();
    std::filesystem::create_directories(dir / "1_Pooling");
    const std::vector<T> host = detail::host_parameters(model);
    std::vector<named_tensor<const T>> tensors;
    for (std::size_t k = 0; k < model.parameters().size(); ++k) {
        const auto& p = model.parameters()[k];
        tensors.push_back(
            {bert_tensor(p.name, "").hf_names[0], host.data() + model.image_offset(k),
             std::vector<std::int64_t>(p.value.shape().begin(), p.value.shape().begin() + p.value.rank())});
    }
    save_tensors<T>(dir / "model.safetensors", tensors, out, {{"format", "pt"}});
    nlohmann::json config = {{"architectures", {"BertModel"}},
                             {"model_type", "bert"},
                             {"vocab_size", c.vocab_size},
                             {"max_position_embeddings", c.context_length},
                             {"type_vocab_size", c.type_vocab_size},
                             {"hidden_size", c.d_model},
                             {"num_hidden_layers", c.n_layers},
                             {"num_attention_heads", c.n_heads},
                             {"intermediate_size", c.d_ff},
                             {"hidden_act", "gelu"},
                             {"layer_norm_eps", c.layer_norm_eps},
                             {"position_embedding_type", "absolute"},
                             {"torch_dtype", out == dtype::BF16 ? "bfloat16" : "float32"}};
    for (const auto& [k, v] : extra_config.items()) config[k] = v;
    const nlohmann::json pooling = {{"word_embedding_dimension", c.d_model},
                                    {"pooling_mode_cls_token", c.pooling == "cls"},
                                    {"pooling_mode_mean_tokens", c.pooling == "mean"},
                                    {"pooling_mode_max_tokens", false},
                                    {"pooling_mode_mean_sqrt_len_tokens", false}};
    write_file_atomic(dir / "1_Pooling" / "config.json", pooling.dump(2) + "\n");
    write_file_atomic(dir / "config.json", config.dump(2) + "\n");
}

/// The transformers family whose layout holds a student of config `c`: gpt2 for GPT-2's blocks,
/// qwen2 for rotary/RMSNorm/SwiGLU blocks with q/k/v biases only, else llama. Throws config_error
/// for a mix no family computes (e.g. RMSNorm with learned positions).
inline std::string family_of(const student::TransformerConfig& c) {
    const bool gpt2 = !c.rms() && !c.rope() && !c.swiglu() && c.qkv_bias && c.proj_bias && c.mlp_bias &&
                      c.tie_embeddings && c.kv_heads() == c.n_heads;
    if (gpt2) return "gpt2";
    if (c.rms() && c.rope() && c.swiglu()) {
        if (c.qkv_bias && !c.proj_bias && !c.mlp_bias) return "qwen2";
        if (c.qkv_bias == c.proj_bias) return "llama";
    }
    throw config_error("student",
                       "no transformers model family has these blocks (gpt2: LayerNorm, learned "
                       "positions, GELU, all biases, tied head; llama/qwen2: RMSNorm, rope, SwiGLU, "
                       "q/k/v and o biases both or neither, or q/k/v only)");
}

/// transformers' config.json of a decoder student in `family` (gpt2, llama, qwen2 or phi3).
inline nlohmann::json decoder_config_json(const student::TransformerConfig& c, const std::string& family) {
    if (family == "gpt2")
        return {{"architectures", {"GPT2LMHeadModel"}},
                {"model_type", "gpt2"},
                {"vocab_size", c.vocab_size},
                {"n_positions", c.context_length},
                {"n_embd", c.d_model},
                {"n_layer", c.n_layers},
                {"n_head", c.n_heads},
                {"n_inner", c.d_ff},
                {"activation_function", "gelu_new"},
                {"layer_norm_epsilon", c.norm_eps},
                {"tie_word_embeddings", true}};
    const auto& rs = c.rope_scaling;
    nlohmann::json scaling = nullptr;
    if (rs.type != "none") scaling = {{"rope_type", rs.type}, {"factor", rs.factor}};
    if (rs.type == "llama3") {
        scaling["low_freq_factor"] = rs.low_freq_factor;
        scaling["high_freq_factor"] = rs.high_freq_factor;
        scaling["original_max_position_embeddings"] = rs.original_context_length;
    }
    static const std::map<std::string, std::string, std::less<>> architecture = {
        {"llama", "LlamaForCausalLM"}, {"qwen2", "Qwen2ForCausalLM"}, {"phi3", "Phi3ForCausalLM"}};
    nlohmann::json j = {
        {"architectures", {architecture.at(family)}},
        {"model_type", family},
        {"vocab_size", c.vocab_size},
        // dynamic scaling reads max_position_embeddings as the original context
        {"max_position_embeddings", rs.type == "dynamic" ? rs.original_context_length : c.context_length},
        {"hidden_size", c.d_model},
        {"intermediate_size", c.d_ff},
        {"num_hidden_layers", c.n_layers},
        {"num_attention_heads", c.n_heads},
        {"num_key_value_heads", c.kv_heads()},
        {"hidden_act", "silu"},
        {"rms_norm_eps", c.norm_eps},
        {"rope_theta", c.rope_theta},
        {"rope_scaling", scaling},
        {"tie_word_embeddings", c.tie_embeddings}};
    if (family == "llama") {
        j["attention_bias"] = c.qkv_bias;
        j["mlp_bias"] = c.mlp_bias;
    }
    if (family == "qwen2") j["use_sliding_window"] = false;
    if (family == "phi3") {
        j["original_max_position_embeddings"] = c.context_length;
        j["sliding_window"] = nullptr;
        j["pad_token_id"] = nullptr;  // Phi3Config's default (32000) would not fit a smaller vocabulary
    }
    return j;
}

/// Writes `model` to `dir` (created if needed) in transformers' layout, each file replaced
/// atomically: a `student::Transformer` as GPT2LMHeadModel, LlamaForCausalLM or Qwen2ForCausalLM
/// (`family_of` its config; `model_type` "phi3" asks for Phi3ForCausalLM's fused layout instead), a
/// `student::Encoder` as BertModel (`save_encoder`); config.json and model.safetensors (F32 or BF16).
/// `extra_config` entries (e.g. bos_token_id, eos_token_id) are added to config.json.
template <class Model>
void save(const std::filesystem::path& dir, const Model& model, dtype out = dtype::F32,
          const nlohmann::json& extra_config = nlohmann::json::object(), std::string model_type = "") {
    if constexpr (detail::is_encoder<Model>) {
        save_encoder(dir, model, out, extra_config);
        return;
    } else {
        using T = typename Model::scalar_type;
        const auto& c = model.config();
        const std::string inferred = family_of(c);
        if (model_type.empty()) model_type = inferred;
        if (model_type != inferred && !(model_type == "phi3" && inferred == "llama" && !c.qkv_bias && !c.mlp_bias &&
                                        c.rope_scaling.type == "none"))
            throw config_error("model_type",
                               "\"" + model_type + "\" cannot hold this student's blocks; \"" + inferred + "\" can");
        std::filesystem::create_directories(dir);
        const std::vector<T> host = detail::host_parameters(model);
        std::vector<std::vector<T>> transposed;  // owners of the (in, out) copies
        std::vector<named_tensor<const T>> tensors;
        for (std::size_t k = 0; k < model.base_parameters().size(); ++k) {
            const auto& p = model.base_parameters()[k];
            const tensor_map m = model_type == "gpt2" ? gpt2_tensor(p.name, "transformer.")
                                                      : llama_tensor(c, model_type, p.name, "model.");
            const T* data = host.data() + model.image_offset(k);
            std::vector<std::int64_t> shape(p.value.shape().begin(), p.value.shape().begin() + p.value.rank());
            if (m.transposed) {
                auto& t = transposed.emplace_back(std::size_t(shape[0] * shape[1]));
                detail::transpose(data, t.data(), std::size_t(shape[0]), std::size_t(shape[1]));
                data = t.data();
                std::reverse(shape.begin(), shape.end());
            }
            for (std::size_t i = 0; i < m.hf_names.size(); ++i) {  // stacked parts are consecutive rows
                auto part = shape;
                if (!m.rows.empty()) part[0] = m.rows[i];
                tensors.push_back({m.hf_names[i], data, part});
                std::int64_t n = 1;
                for (auto d : part) n *= d;
                data += n;
            }
        }
        save_tensors<T>(dir / "model.safetensors", tensors, out, {{"format", "pt"}});  // transformers requires "pt"
        nlohmann::json config = decoder_config_json(c, model_type);
        config["torch_dtype"] = out == dtype::BF16 ? "bfloat16" : "float32";
        for (const auto& [k, v] : extra_config.items()) config[k] = v;
        write_file_atomic(dir / "config.json", config.dump(2) + "\n");
    }
}

}  // namespace distill::io::hf
