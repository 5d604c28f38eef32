// Tests of distill/data: the byte tokenizer.

#include <doctest/doctest.h>

#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "distill/data/byte_tokenizer.hpp"
#include "distill/error.hpp"

using distill::data::ByteTokenizer;
using doctest::Contains;

TEST_CASE("ByteTokenizer: every byte value round trips and encodes as itself") {
    const ByteTokenizer tok;
    std::string all;
    for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
    const std::vector<std::int32_t> ids = tok.encode(all);
    REQUIRE(ids.size() == 256);
    for (std::int32_t b = 0; b < 256; ++b) CHECK(ids[static_cast<std::size_t>(b)] == b);
    CHECK(tok.decode(ids) == all);
}

TEST_CASE("ByteTokenizer: invalid UTF-8, NUL and empty input round trip") {
    const ByteTokenizer tok;
    const std::string invalid = "\xff\xfe ok \xc3( \xe2\x82";
    CHECK(tok.decode(tok.encode(invalid)) == invalid);
    const std::string with_nul("a\0b\0", 4);
    CHECK(tok.encode(with_nul) == std::vector<std::int32_t>{'a', 0, 'b', 0});
    CHECK(tok.decode(tok.encode(with_nul)) == with_nul);
    const std::string utf8 = "h\u00e9llo \u4e16\u754c";
    CHECK(tok.decode(tok.encode(utf8)) == utf8);
    CHECK(tok.encode("").empty());
    CHECK(tok.decode(std::vector<std::int32_t>{}).empty());
}

TEST_CASE("ByteTokenizer: special tokens") {
    const ByteTokenizer tok;
    CHECK(ByteTokenizer::vocab_size() == 263);
    CHECK(ByteTokenizer::id() == "byte-v1");
    CHECK(ByteTokenizer::bos == 256);
    CHECK(ByteTokenizer::end_of_turn == 262);

    const std::vector<std::int32_t> ids = {ByteTokenizer::bos,
                                           ByteTokenizer::system,
                                           's',
                                           ByteTokenizer::end_of_turn,
                                           ByteTokenizer::user,
                                           'h',
                                           'i',
                                           ByteTokenizer::end_of_turn,
                                           ByteTokenizer::assistant,
                                           ByteTokenizer::eos,
                                           ByteTokenizer::pad};
    CHECK(tok.decode(ids) == "<|bos|><|system|>s<|end|><|user|>hi<|end|><|assistant|><|eos|><|pad|>");
    CHECK(tok.decode(ids, true) == "shi");

    // encode never produces special tokens, even for text that spells one.
    for (std::int32_t id : tok.encode("<|bos|>")) CHECK_FALSE(tok.is_special(id));

    std::set<std::string_view> names;
    for (std::int32_t id = ByteTokenizer::bos; id < ByteTokenizer::vocab_size(); ++id) {
        CHECK(tok.is_special(id));
        names.insert(tok.token_name(id));
    }
    CHECK(names.size() == 7);
    CHECK(tok.token_name(ByteTokenizer::assistant) == "<|assistant|>");
    CHECK(tok.token_name('A') == "A");
    CHECK(tok.token_name(0) == std::string_view("\0", 1));
    CHECK_FALSE(tok.is_special(255));
}

TEST_CASE("ByteTokenizer: an id outside the vocabulary is an error naming it and the range") {
    const ByteTokenizer tok;
    CHECK_THROWS_WITH_AS(tok.decode(std::vector<std::int32_t>{'a', 263}),
                         Contains("token id 263 is outside the vocabulary [0, 263) of tokenizer byte-v1"),
                         distill::error);
    CHECK_THROWS_WITH_AS(tok.decode(std::vector<std::int32_t>{-1}, true), Contains("token id -1"), distill::error);
    CHECK_THROWS_WITH_AS(tok.is_special(1000), Contains("token id 1000"), distill::error);
    CHECK_THROWS_WITH_AS(tok.token_name(-5), Contains("[0, 263)"), distill::error);
}
