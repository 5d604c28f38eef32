#pragma once
/// @file load_chat_tokenizer.hpp
/// `data::load_chat_tokenizer`: the template of the tokenizer a job names — `"byte"` (or `""`) for
/// the byte tokenizer, else a Hugging Face `tokenizer.json` or a directory holding one (with its
/// tokenizer_config.json). Published tokenizers need PCRE2: where the program links `distill::text`
/// (`DISTILL_WITH_TEXT`, as every translation unit of one target sees it), this header brings in
/// data/hf_tokenizer.hpp and loads them; without it naming one is a config_error that says how to
/// build with it. So the call means the same in every program built alike, whatever else it includes.

#include <filesystem>
#include <memory>
#include <string>

#include "distill/data/chat.hpp"
#include "distill/error.hpp"
#if defined(DISTILL_WITH_TEXT)
#include "distill/data/hf_tokenizer.hpp"
#endif

namespace distill::data {

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
inline ChatTokenizer load_chat_tokenizer(const std::string& tokenizer, const ChatTemplateConfig& config = {},
                                         const std::string& field = "tokenizer") {
    const std::filesystem::path file = tokenizer_file(tokenizer, field);
    if (file.empty()) return ChatTokenizer(config);
#if defined(DISTILL_WITH_TEXT)
    return hf_chat_tokenizer(std::make_shared<const HfTokenizer>(file), config);
#else
    throw config_error(field, "is the Hugging Face tokenizer " + file.string() +
                                  ", which needs PCRE2: build with libpcre2-dev installed and link distill::text "
                                  "(which defines DISTILL_WITH_TEXT)");
#endif
}

}  // namespace distill::data
