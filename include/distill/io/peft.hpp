#pragma once
/// @file peft.hpp
/// A `student::Transformer`'s LoRA adapters in Hugging Face PEFT's format: `adapter_model.safetensors`
/// (`base_model.model.<module>.lora_A.weight` (r, in) and `.lora_B.weight` (out, r) per adapted
/// module) and `adapter_config.json` (peft_type LORA), loadable with `PeftModel.from_pretrained` on
/// the base model in transformers' layout (`io::hf::save` of the same student writes the merged weights).
///
/// distill's targets map onto transformers' modules per family:
///
/// | target | gpt2 | llama, qwen2 | phi3 |
/// |---|---|---|---|
/// | qkv | attn.c_attn (Conv1D, fan_in_fan_out) | — | self_attn.qkv_proj |
/// | q, k, v | — (c_attn is fused: PEFT adapts it whole, use qkv) | self_attn.{q,k,v}_proj | — |
/// | o | attn.c_proj | self_attn.o_proj | self_attn.o_proj |
/// | up | mlp.c_fc | mlp.up_proj | — (gate_up_proj is fused) |
/// | gate | — | mlp.gate_proj | — |
/// | down | mlp.c_proj | mlp.down_proj | mlp.down_proj |
/// | head | — (tied) | lm_head | lm_head |
///
/// A target marked — has no PEFT module of its own: `save_adapter` refuses it with `config_error`
/// naming `lora.targets` (the merged export still holds it).

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/error.hpp"
#include "distill/io/durable.hpp"
#include "distill/io/hf.hpp"
#include "distill/io/safetensors.hpp"
#include "distill/student/transformer.hpp"

namespace distill::io::peft {

/// The transformers module (below the model, e.g. `transformer.h.0.attn.c_attn`,
/// `model.layers.0.self_attn.q_proj`, `lm_head`) that PEFT adapts for distill's `target` in block
/// `layer` of a `family` model; throws `config_error` naming `lora.targets` where there is none.
inline std::string module_name(const std::string& family, const std::string& target, int layer) {
    const std::string l = std::to_string(layer);
    auto none = [&](const std::string& why) -> std::string {
        throw config_error("lora.targets", "\"" + target + "\" has no PEFT module in a " + family + " model: " + why);
    };
    if (target == "head") {
        if (family == "gpt2") none("GPT-2's head is tied to the token embedding");
        return "lm_head";
    }
    if (family == "gpt2") {
        const std::string p = "transformer.h." + l + ".";
        if (target == "qkv") return p + "attn.c_attn";
        if (target == "o") return p + "attn.c_proj";
        if (target == "up") return p + "mlp.c_fc";
        if (target == "down") return p + "mlp.c_proj";
        return none("q, k and v share the fused c_attn, which PEFT adapts whole (target \"qkv\")");
    }
    const std::string p = "model.layers." + l + ".";
    if (target == "o") return p + "self_attn.o_proj";
    if (target == "down") return p + "mlp.down_proj";
    if (family == "phi3") {
        if (target == "qkv") return p + "self_attn.qkv_proj";
        return none("Phi-3 fuses q|k|v (target \"qkv\") and gate|up (gate_up_proj, no target)");
    }
    if (target == "q" || target == "k" || target == "v") return p + "self_attn." + target + "_proj";
    if (target == "up" || target == "gate") return p + "mlp." + target + "_proj";
    return none("its q, k and v projections are separate (targets q, k, v)");
}

/// PEFT's saved name of one of distill's adapter parameters (`h.<l>.<target>.lora_A`, `lm_head.lora_B`).
inline std::string tensor_name(const std::string& family, const std::string& name) {
    const auto dot = name.rfind('.');
    const std::string module = name.substr(0, dot), which = name.substr(dot + 1);
    std::string hf;
    if (module == "lm_head") {
        hf = module_name(family, "head", 0);
    } else {  // h.<l>.<target>
        const auto first = module.find('.'), second = module.find('.', first + 1);
        hf = module_name(family, module.substr(second + 1), std::stoi(module.substr(first + 1, second - first - 1)));
    }
    return "base_model.model." + hf + "." + which + ".weight";
}

/// Writes `model`'s adapters to `dir` (created if needed) as PEFT does: adapter_model.safetensors
/// (F32 or BF16) and adapter_config.json, each replaced atomically. `family` is the transformers
/// layout of the base (io::hf::family_of its config when empty; "phi3" for Phi-3's fused layout);
/// `base_model` goes to base_model_name_or_path. Throws `config_error` when the model has no
/// adapters or a target has no PEFT module in that family.
template <class Model>
void save_adapter(const std::filesystem::path& dir, const Model& model, std::string family = "",
                  const std::string& base_model = "", dtype out = dtype::F32) {
    using T = typename Model::scalar_type;
    const auto& c = model.config();
    if (!c.lora.enabled()) throw config_error("lora.rank", "this student has no adapters to export (rank 0)");
    if (family.empty()) family = hf::family_of(c);
    std::vector<std::string> modules;  // target_modules: the leaf names below each block, unique
    for (const auto& t : c.lora.targets) {
        const std::string m = module_name(family, t, 0);
        modules.push_back(t == "head" ? m : m.substr(m.find('.', m.find("0.")) + 1));
    }
    std::vector<std::vector<T>> host;
    std::vector<named_tensor<const T>> tensors;
    for (const auto& p : model.adapter_parameters()) {
        auto& h = host.emplace_back(std::size_t(p.value.numel()));
        model.device().copy(h.data(), p.value.data(), sizeof(T) * h.size());
        tensors.push_back({tensor_name(family, p.name), h.data(), {p.value.shape()[0], p.value.shape()[1]}});
    }
    std::filesystem::create_directories(dir);
    save_tensors<T>(dir / "adapter_model.safetensors", tensors, out, {{"format", "pt"}});
    const nlohmann::json config = {
        {"peft_type", "LORA"},
        {"task_type", "CAUSAL_LM"},
        {"r", c.lora.rank},
        {"lora_alpha", c.lora.alpha},
        {"lora_dropout", c.lora.dropout},
        {"target_modules", modules},
        {"fan_in_fan_out", family == "gpt2"},
        {"bias", "none"},
        {"use_rslora", false},
        {"use_dora", false},
        {"init_lora_weights", true},
        {"inference_mode", true},
        {"modules_to_save", nullptr},
        {"base_model_name_or_path", base_model.empty() ? nlohmann::json(nullptr) : nlohmann::json(base_model)}};
    write_file_atomic(dir / "adapter_config.json", config.dump(2) + "\n");
}

}  // namespace distill::io::peft
