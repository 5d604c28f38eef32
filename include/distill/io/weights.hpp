#pragma once
/// @file weights.hpp
/// A student's weights as one safetensors file: every parameter under its checkpoint name, and
/// the model config as JSON in the metadata (`"config"`), so the file describes itself.

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "distill/io/reflect.hpp"
#include "distill/io/safetensors.hpp"

namespace distill::io {

/// Writes `model`'s parameters (F32, or BF16) atomically, with its config in the metadata.
template <class Model>
void save_weights(const std::filesystem::path& path, const Model& model, dtype out = dtype::F32,
                  std::map<std::string, std::string> metadata = {}) {
    using T = typename Model::scalar_type;
    std::vector<named_tensor<const T>> tensors;
    std::vector<T> image;  // weights stored in bf16 alone, widened (exactly) for the file
    if constexpr (requires { model.bf16_only_weights(); })
        if (model.bf16_only_weights() && !model.frozen_base()) image = model.base_image();
    for (std::size_t k = 0; k < model.parameters().size(); ++k) {
        const auto& p = model.parameters()[k];
        std::vector<std::int64_t> shape(p.value.shape().begin(), p.value.shape().begin() + p.value.rank());
        const T* data = p.value.data();
        if constexpr (requires { model.image_offset(k); })
            if (!image.empty()) data = image.data() + model.image_offset(k);
        tensors.push_back({p.name, data, std::move(shape)});
    }
    metadata["config"] = to_json(model.config()).dump();
    save_tensors<T>(path, tensors, out, metadata);
}

/// Throws `format_error` naming the file unless its tensors hold exactly the parameters `config`
/// describes. Called before a model is laid out from a config read from a file, so that a crafted
/// or mismatched config cannot make us allocate a model the file's data does not back.
template <class Config>
void check_parameter_count(const safetensors_file& file, const Config& config) {
    if constexpr (requires { config.parameter_count(); }) {
        std::int64_t held = 0;
        for (const auto& t : file.tensors()) held += t.numel();
        if (held != config.parameter_count())
            throw format_error(file.path(), 0,
                               "the config describes " + std::to_string(config.parameter_count()) +
                                   " parameters but the file holds " + std::to_string(held) + " values");
    }
}

/// Reads the config stored by `save_weights` (throws `format_error` naming the file when absent or
/// invalid, or when the file's tensors do not hold the parameters it describes).
template <class Config>
Config load_weights_config(const safetensors_file& file) {
    const auto& meta = file.metadata();
    auto it = meta.find("config");
    if (it == meta.end()) throw format_error(file.path(), 0, "no \"config\" entry in __metadata__");
    nlohmann::json j = nlohmann::json::parse(it->second, nullptr, false);
    if (j.is_discarded()) throw format_error(file.path(), 0, "__metadata__.config is not valid JSON");
    Config c;
    try {
        from_json(j, c, "config");
        c.validate("config");
    } catch (const config_error& e) {
        throw format_error(file.path(), 0, std::string("__metadata__.") + e.what());
    }
    check_parameter_count(file, c);
    return c;
}

/// Loads every parameter of `model` from `file`: all names and shapes must match exactly, checked
/// before anything is copied (a failed load leaves the model as it was).
template <class Model>
void load_weights(const safetensors_file& file, Model& model) {
    using T = typename Model::scalar_type;
    std::vector<named_tensor<T>> targets;
    for (const auto& p : model.parameters()) {
        std::vector<std::int64_t> shape(p.value.shape().begin(), p.value.shape().begin() + p.value.rank());
        targets.push_back({p.name, p.value.data(), std::move(shape)});
    }
    if constexpr (requires { model.bf16_only_weights(); }) {
        if (model.bf16_only_weights() && !model.frozen_base()) {
            // weights stored in bf16 alone: everything checked first, then one tensor at a time
            // through a host buffer of its size, rounded into its storage (never an fp32 image)
            load_tensors<T>(file, targets, false);
            std::vector<T> one;
            for (std::size_t k = 0; k < targets.size(); ++k) {
                one.resize(std::size_t(model.parameters()[k].value.numel()));
                file.read(*file.find(targets[k].name), std::span<T>(one));
                model.write_base(k, one.data());
            }
            return;
        }
    }
    load_tensors<T>(file, targets);
}

}  // namespace distill::io
