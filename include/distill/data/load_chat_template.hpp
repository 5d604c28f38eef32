#pragma once
/// @file load_chat_template.hpp
/// `data::load_chat_template`: the template of the tokenizer a job names — `"byte"` (or `""`) for
/// the byte tokenizer, else a Hugging Face `tokenizer.json` or a directory holding one (with its
/// tokenizer_config.json). Published tokenizers load in a program that includes
/// `data/hf_tokenizer.hpp` (through `<distill/distill.hpp>` when linked with `distill::text`, PCRE2):
/// that header registers their loader here, so the translation units that only run a teacher or a
/// Distiller do not compile the tokenizer. Elsewhere naming one is a config_error that says so.

#include <filesystem>
#include <string>

#include "distill/data/chat.hpp"
#include "distill/error.hpp"

namespace distill::data {

/// Builds the template of a published tokenizer.json; set by data/hf_tokenizer.hpp.
using published_template_loader = ChatTemplate (*)(const std::filesystem::path&, const ChatTemplateConfig&);

/// The loader of published tokenizers (nullptr until data/hf_tokenizer.hpp registers one).
inline published_template_loader& published_loader() noexcept {
    static published_template_loader loader = nullptr;
    return loader;
}

/// The tokenizer.json that `tokenizer` names (a file, or a directory holding one), or "" when it
/// names the byte tokenizer. Throws config_error (field `field`) for anything else.
inline std::filesystem::path tokenizer_file(const std::string& tokenizer, const std::string& field = "tokenizer") {
    if (tokenizer.empty() || tokenizer == "byte") return {};
    std::filesystem::path p = tokenizer;
    std::error_code ec;
    if (std::filesystem::is_directory(p, ec)) p /= "tokenizer.json";
    if (!std::filesystem::is_regular_file(p, ec))
        throw config_error(field, "is \"" + tokenizer +
                                      "\": expected \"byte\", a tokenizer.json file or a directory holding one (" +
                                      p.string() + " does not exist)");
    return p;
}

/// The chat template over the tokenizer `tokenizer` names (see the file comment), with `config`.
/// Throws config_error naming `field` or the tokenizer file, io_error / format_error for a file that
/// cannot be read or parsed.
inline ChatTemplate load_chat_template(const std::string& tokenizer, const ChatTemplateConfig& config = {},
                                       const std::string& field = "tokenizer") {
    const std::filesystem::path file = tokenizer_file(tokenizer, field);
    if (file.empty()) return ChatTemplate(config);
    if (!published_loader())
        throw config_error(field, "is the Hugging Face tokenizer " + file.string() +
                                      ", which needs data/hf_tokenizer.hpp in the program: build with "
                                      "libpcre2-dev installed, link distill::text and include <distill/distill.hpp>");
    return published_loader()(file, config);
}

}  // namespace distill::data
