#pragma once
/// @file chat_format.hpp
/// The chat templates of published models, rendered without a Jinja interpreter: ChatML (Qwen2,
/// SmolLM, ... with the default system prompt the template carries), Llama-3, Phi-3 and a plain one.
/// `HfChatTemplate::recognize` picks one from the `chat_template` string of a model's
/// tokenizer_config.json by its distinctive markers; an unrecognized template is a config_error that
/// says how to name one explicitly (`HfChatTemplate::named`). The rendered prompt equals what
/// transformers' `apply_chat_template(messages, add_generation_prompt=True)` gives for these
/// templates (tests/unit-tokenizer.cpp, goldens from tests/reference/make_tokenizer_golden.py).
/// Plain text in, plain text out: no PCRE2, no tokenizer (data/hf_tokenizer.hpp pairs one with it).

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "distill/data/chat.hpp"
#include "distill/error.hpp"

namespace distill::data {

/// The built-in chat formats.
enum class chat_format : std::uint8_t {
    chatml,  ///< `<|im_start|>role\ncontent<|im_end|>\n`, generation prompt `<|im_start|>assistant\n`
    llama3,  ///< bos, `<|start_header_id|>role<|end_header_id|>\n\n` + trimmed content + `<|eot_id|>`
    phi3,    ///< `<|role|>\ncontent<|end|>\n`, generation prompt `<|assistant|>\n`
    plain    ///< the contents separated by blank lines; no markers, no generation prompt
};

/// The names of the built-in formats, in the order of `chat_format`.
inline constexpr std::array<std::string_view, 4> chat_format_names = {"chatml", "llama3", "phi3", "plain"};

/// The name of `f` as `HfChatTemplate::named` takes it.
constexpr std::string_view chat_format_name(chat_format f) noexcept {
    const auto i = static_cast<std::size_t>(f);
    return i < chat_format_names.size() ? chat_format_names[i] : "?";
}

/// A model's chat template: the format and what it takes from the tokenizer (bos/eos names) and the
/// template (ChatML's default system prompt).
struct HfChatTemplate {
    chat_format format = chat_format::plain;
    std::string default_system{};  ///< ChatML: the system turn used when the conversation has none
    std::string bos_token{};       ///< Llama-3 starts with it
    std::string eos_token{};       ///< Phi-3 ends a prompt without generation prompt with it

    /// The template called `name` ("chatml", "llama3", "phi3", "plain"). Throws config_error
    /// (field `chat_template`) for another name.
    static HfChatTemplate named(std::string_view name, std::string bos_token = {}, std::string eos_token = {},
                                std::string default_system = {}) {
        HfChatTemplate t;
        t.bos_token = std::move(bos_token);
        t.eos_token = std::move(eos_token);
        t.default_system = std::move(default_system);
        const auto* it = std::find(chat_format_names.begin(), chat_format_names.end(), name);
        if (it == chat_format_names.end())
            throw config_error("chat_template", "unknown chat template \"" + std::string(name) +
                                                    "\" (built in: chatml, llama3, phi3, plain)");
        t.format = static_cast<chat_format>(it - chat_format_names.begin());
        return t;
    }

    /// Recognizes the Jinja `chat_template` of a tokenizer_config.json by its markers: `<|im_start|>`
    /// (ChatML; a literal `<|im_start|>system` turn in it is the default system prompt),
    /// `<|start_header_id|>` (Llama-3; the 3.1+ templates with their dated system turn are refused),
    /// `<|user|>` + `<|assistant|>` + `<|end|>` (Phi-3); an empty template is `plain`. Anything else is
    /// a config_error saying how to name a template explicitly.
    static HfChatTemplate recognize(std::string_view jinja, std::string bos_token = {}, std::string eos_token = {}) {
        auto has = [&](std::string_view s) { return jinja.find(s) != std::string_view::npos; };
        const std::string how =
            "; name the format explicitly instead: a job's \"chat_template\": {\"format\": \"chatml\" | \"llama3\" | "
            "\"phi3\" | \"plain\"}, or HfChatTemplate::named(...) in code";
        if (jinja.find_first_not_of(" \t\r\n") == std::string_view::npos)
            return named("plain", std::move(bos_token), std::move(eos_token));
        if (has("<|im_start|>"))
            return named("chatml", std::move(bos_token), std::move(eos_token), chatml_default(jinja));
        if (has("<|start_header_id|>")) {
            if (has("Cutting Knowledge Date") || has("tools"))
                throw config_error("chat_template",
                                   "a Llama-3.1+ template (dated system turn, tools) is not built in" + how);
            return named("llama3", std::move(bos_token), std::move(eos_token));
        }
        if (has("<|user|>") && has("<|assistant|>") && has("<|end|>"))
            return named("phi3", std::move(bos_token), std::move(eos_token));
        std::string head(jinja.substr(0, 60));
        for (char& c : head)
            if (c == '\n' || c == '\r') c = ' ';
        throw config_error("chat_template", "unrecognized chat template \"" + head + "...\"" + how);
    }

    /// The prompt for `messages` (roles system/user/assistant), ending with the generation prompt
    /// when `add_generation_prompt` is set.
    std::string render(std::span<const Message> messages, bool add_generation_prompt = true) const {
        std::string out;
        switch (format) {
            case chat_format::chatml:
                if (!default_system.empty() && (messages.empty() || messages.front().role != "system"))
                    out += "<|im_start|>system\n" + default_system + "<|im_end|>\n";
                for (const auto& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
                if (add_generation_prompt) out += "<|im_start|>assistant\n";
                break;
            case chat_format::llama3:
                out += bos_token;
                for (const auto& m : messages)
                    out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + trim(m.content) + "<|eot_id|>";
                if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
                break;
            case chat_format::phi3:
                for (const auto& m : messages) {
                    if (m.role == "system" && m.content.empty()) continue;
                    out += "<|" + m.role + "|>\n" + m.content + "<|end|>\n";
                }
                out += add_generation_prompt ? std::string("<|assistant|>\n") : eos_token;
                break;
            case chat_format::plain:
                for (std::size_t i = 0; i < messages.size(); ++i) out += (i ? "\n\n" : "") + messages[i].content;
                break;
        }
        return out;
    }

private:
    // Jinja's `trim` (Python's str.strip()) for the whitespace that occurs in messages.
    static std::string trim(std::string_view s) {
        constexpr std::string_view ws = " \t\n\r\f\v";
        const auto b = s.find_first_not_of(ws);
        if (b == std::string_view::npos) return {};
        return std::string(s.substr(b, s.find_last_not_of(ws) - b + 1));
    }

    // The default system prompt of a ChatML template: the text of a literal
    // `<|im_start|>system\n...<|im_end|>` in it, with the Jinja escapes \n, \' and \\ undone.
    static std::string chatml_default(std::string_view jinja) {
        for (std::string_view marker :
             {std::string_view("<|im_start|>system\\n"), std::string_view("<|im_start|>system\n")}) {
            const auto at = jinja.find(marker);
            if (at == std::string_view::npos) continue;
            const auto begin = at + marker.size();
            const auto end = jinja.find("<|im_end|>", begin);
            if (end == std::string_view::npos) return {};
            const std::string_view raw = jinja.substr(begin, end - begin);
            // a system turn built from the message (`' + message['content'] + '`) is not a default
            if (raw.find('\'') != std::string_view::npos && raw.find("\\'") == std::string_view::npos) return {};
            if (raw.find("{{") != std::string_view::npos || raw.find("{%") != std::string_view::npos) return {};
            std::string out;
            for (std::size_t i = 0; i < raw.size(); ++i) {
                if (raw[i] == '\\' && i + 1 < raw.size()) {
                    const char n = raw[++i];
                    out += n == 'n' ? '\n' : n == 't' ? '\t' : n;
                } else {
                    out += raw[i];
                }
            }
            return out;
        }
        return {};
    }
};

}  // namespace distill::data
