// Fuzz target: data::HfTokenizer. The first input byte picks the mode:
//  - even: the rest is a tokenizer.json; when it loads, a fixed multilingual text is encoded and
//    decoded with it, and its first ids are decoded;
//  - odd: the rest is text for one of the committed fixture tokenizers (byte >> 1 picks it): encoded
//    with and without special tokens, decoded, and the rest read as ids is decoded. For the byte-level
//    tokenizers without a normalizer, decode(encode(text)) must give the text back (invalid UTF-8 as
//    U+FFFD).

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "distill/data/hf_tokenizer.hpp"
#include "distill/error.hpp"

namespace {

constexpr std::array<const char*, 9> families = {
    "gpt2", "llama3", "qwen2", "llama2", "llama2_metaspace", "bert_uncased", "bert_cased", "roberta", "digits_bpe"};

const std::vector<std::unique_ptr<distill::data::HfTokenizer>>& fixtures() {
    static const auto all = [] {
        std::vector<std::unique_ptr<distill::data::HfTokenizer>> v;
        for (const char* f : families)
            v.push_back(std::make_unique<distill::data::HfTokenizer>(std::string(DISTILL_FIXTURE_DIR) + "/" + f +
                                                                     "/tokenizer.json"));
        return v;
    }();
    return all;
}

void exercise(const distill::data::HfTokenizer& tok, std::string_view text, std::string_view id_bytes) {
    const auto ids = tok.encode(text, true);
    (void)tok.encode(text, false);
    (void)tok.decode(ids, false);
    (void)tok.decode(ids, true);
    std::vector<std::int32_t> arbitrary;
    for (std::size_t i = 0; i + 1 < id_bytes.size() && arbitrary.size() < 256; i += 2)
        arbitrary.push_back((static_cast<std::uint8_t>(id_bytes[i]) << 8 | static_cast<std::uint8_t>(id_bytes[i + 1])) %
                            tok.vocab_size());
    (void)tok.decode(arbitrary, false);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using distill::data::HfTokenizer;
    if (size < 1) return 0;
    const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
    try {
        if ((data[0] & 1) == 0) {
            const HfTokenizer tok = HfTokenizer::from_json(rest);
            exercise(tok, "Hello, World! Ça va? Привет 你好 😀👨‍👩‍👧 don't 12345\n\t  end",
                     rest.substr(0, 64));
        } else {
            const auto& all = fixtures();
            const std::size_t which = (data[0] >> 1) % all.size();
            const HfTokenizer& tok = *all[which];
            exercise(tok, rest, rest);
            const std::string_view family = families[which];
            if (family == "gpt2" || family == "llama3") {
                const std::string back = tok.decode(tok.encode(rest, false));
                if (back != distill::utf8::make_valid(std::string(rest))) __builtin_trap();
            }
        }
    } catch (const distill::error&) {
    }
    return 0;
}
