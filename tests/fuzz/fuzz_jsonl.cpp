// Fuzz target: the JSONL readers of input data (data::read_examples, the chat template over what it
// returns) and of the generate stage's output (teacher::parse_synthetic through data::read_jsonl).
// The first input byte picks the mode: bit 0 on_bad_line = "skip", bit 1 a 64-byte line limit,
// bit 2 the synthetic.jsonl reader instead of the input-data reader.

#include <cstddef>
#include <cstdint>

#include "distill/data/chat.hpp"
#include "distill/data/jsonl.hpp"
#include "distill/error.hpp"
#include "distill/teacher/synthetic.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static distill::fuzz::MemFile file("jsonl");
    if (size < 1) return 0;
    const std::uint8_t mode = data[0];
    const auto& path = file.set(data + 1, size - 1);
    distill::data::JsonlConfig config;
    config.on_bad_line = (mode & 1) ? "skip" : "error";
    if (mode & 2) config.max_line_bytes = 64;
    try {
        if (mode & 4) {
            std::size_t records = 0;
            distill::data::read_jsonl(path, config, [&](std::uint64_t, const nlohmann::json& j) {
                const auto r = distill::teacher::parse_synthetic(j);
                records += r.response.tokens.size() + r.prompt.size();
            });
        } else {
            const auto ds = distill::data::read_examples(path, config);
            const distill::data::ChatTokenizer chat;
            for (const auto& ex : ds.examples) {
                (void)chat.encode_prompt(ex.prompt);
                if (ex.reference) (void)chat.encode_response(*ex.reference);
            }
        }
    } catch (const distill::error&) {
    }
    return 0;
}
