// Fuzz target: a published tokenizer's tokenizer_config.json (data::HfTokenizer's special-token names
// and chat_template, string or list of named templates, and a chat_template.jinja beside it), then
// the chat template recognized from it (data::HfChatTemplate::recognize) and the pipeline's chat
// format over it (data::hf_chat_tokenizer): a fixed conversation's prompt and an answer encoded, and
// decoded back. The first input byte picks the committed tokenizer.json the config lies beside
// (tests/reference/fixtures/tokenizers/); the rest is tokenizer_config.json, optionally followed by
// the line "--8<--" and a chat_template.jinja.

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "distill/data/chat.hpp"
#include "distill/data/hf/chat_format.hpp"
#include "distill/data/hf_tokenizer.hpp"
#include "distill/error.hpp"
#include "fuzz_common.hpp"

namespace fs = std::filesystem;

namespace {

constexpr std::array<const char*, 6> families = {"gpt2", "llama3", "qwen2", "llama2", "bert_uncased", "roberta"};

// One directory per fixture on tmpfs (when there is one), holding a copy of its tokenizer.json;
// tokenizer_config.json and chat_template.jinja are rewritten per input.
const std::array<fs::path, families.size()>& directories() {
    static const distill::fuzz::ScratchDir scratch("distill-fuzz-tokenizer-config");
    static const auto dirs = distill::fuzz::fixture_copies(scratch, families, DISTILL_FIXTURE_DIR, "tokenizer.json");
    return dirs;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace distill;
    if (size < 1) return 0;
    const fs::path& dir = directories()[data[0] % families.size()];
    std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
    const bool has_jinja = rest.find("\n--8<--\n") != std::string_view::npos;
    fuzz::write_file(dir / "tokenizer_config.json", fuzz::next_part(rest, "\n--8<--\n"));
    if (has_jinja)
        fuzz::write_file(dir / "chat_template.jinja", rest);
    else
        fs::remove(dir / "chat_template.jinja");
    try {
        const auto tok = std::make_shared<const data::HfTokenizer>(dir / "tokenizer.json");
        (void)tok->chat();
        const data::ChatTokenizer chat = data::hf_chat_tokenizer(tok);
        const data::Message conversation[] = {
            {"system", "Be brief."}, {"user", "Hello! Ça va? 你好 😀"}, {"assistant", "Hi."}, {"user", "2+2?"}};
        const std::vector<std::int32_t> prompt = chat.format().encode_prompt(conversation);
        const std::vector<std::int32_t> answer = chat.format().encode_response("4");
        (void)chat.format().decode(prompt);
        (void)chat.format().decode(answer);
        for (std::int32_t id : answer)
            if (id < 0 || id >= chat.format().vocab_size()) __builtin_trap();
    } catch (const distill::error&) {
    }
    return 0;
}
