// Tests of data::HfTokenizer (tokenizer.json): the ids and texts of the `tokenizers` package for
// tokenizers of every supported family trained by tests/reference/make_tokenizer_golden.py, added and
// special tokens, invalid UTF-8, the documented errors; the chat templates against transformers'
// apply_chat_template; vocabulary alignment.

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/data/hf_tokenizer.hpp"
#include "distill/error.hpp"

using distill::data::HfTokenizer;
using doctest::Contains;
namespace fs = std::filesystem;

namespace {

const fs::path fixtures = fs::path(DISTILL_TEST_DATA_DIR) / "tokenizers";

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    REQUIRE_MESSAGE(in, "cannot open " << p.string());
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

nlohmann::json read_json(const fs::path& p) {
    return nlohmann::json::parse(slurp(p));
}

std::string from_hex(const std::string& hex) {
    std::string out;
    for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
        out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
    return out;
}

std::string show(const std::vector<std::int32_t>& ids) {
    std::string s = "[";
    for (std::size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
    return s + "]";
}

constexpr const char* families[] = {"gpt2",         "llama3",     "qwen2",   "llama2",    "llama2_metaspace",
                                    "bert_uncased", "bert_cased", "roberta", "digits_bpe"};

// The tokenizer.json with one change, as the text of a new file.
std::string edited(const std::string& family, const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = read_json(fixtures / family / "tokenizer.json");
    edit(j);
    return j.dump();
}

}  // namespace

TEST_CASE("HfTokenizer: every fixture encodes and decodes exactly as the tokenizers package") {
    for (const char* family : families) {
        CAPTURE(std::string(family));
        const HfTokenizer tok(fixtures / family / "tokenizer.json");
        const nlohmann::json golden = read_json(fixtures / family / "golden.json");
        CHECK(tok.vocab_size() == golden["vocab_size"].get<std::int32_t>());
        int n = 0;
        for (const auto& c : golden["cases"]) {
            const std::string text = c.contains("bytes_hex") ? from_hex(c["bytes_hex"]) : c["text"].get<std::string>();
            CAPTURE(text);
            const auto ids = tok.encode(text, true);
            const auto expected = c["ids"].get<std::vector<std::int32_t>>();
            CHECK_MESSAGE(ids == expected, "got " << show(ids) << "\nwant " << show(expected));
            const auto plain = tok.encode(text, false);
            const auto expected_plain = c["ids_no_special"].get<std::vector<std::int32_t>>();
            CHECK_MESSAGE(plain == expected_plain, "got " << show(plain) << "\nwant " << show(expected_plain));
            CHECK(tok.decode(expected, false) == c["decoded"].get<std::string>());
            CHECK(tok.decode(expected, true) == c["decoded_skip_special"].get<std::string>());
            ++n;
        }
        CHECK(n >= 50);
    }
}
