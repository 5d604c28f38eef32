// Fuzz target: the OpenAI wire format as teacher::OpenAI receives it. The first input byte picks
// the mode: even, the body of a chat completion (or a batch-output line) through parse_completion
// and map_logprobs onto the byte tokenizer with k = (byte / 2) % 21; odd, a Retry-After header value.

#include <cstddef>
#include <cstdint>
#include <ctime>
#include <string_view>

#include <nlohmann/json.hpp>

#include "distill/data/byte_tokenizer.hpp"
#include "distill/error.hpp"
#include "distill/teacher/openai_format.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace distill::teacher;
    if (size < 1) return 0;
    const std::uint8_t mode = data[0];
    const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
    if (mode & 1) {
        const auto s = openai::parse_retry_after(text, std::time_t(1700000000));
        if (s && !(*s >= 0)) __builtin_trap();
        return 0;
    }
    // As teacher::OpenAI does: parse without exceptions, a malformed body is a protocol_error.
    const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded()) return 0;
    try {
        auto c = openai::parse_completion(j);
        const int k = (mode >> 1) % 21;
        openai::map_logprobs(c.response, c.logprobs, k, distill::data::ByteTokenizer{});
        if (c.response.top_ids.size() != c.response.tokens.size() * std::size_t(k)) __builtin_trap();
        // What serve answers with must parse back.
        const auto back = openai::make_completion("id", "m", 0, c.response, distill::data::ByteTokenizer{}, k > 0);
        (void)openai::parse_completion(nlohmann::json::parse(openai::dump(back)));
    } catch (const distill::error&) {
    }
    return 0;
}
