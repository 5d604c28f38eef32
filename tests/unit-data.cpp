// Tests of distill/data: the byte tokenizer, the templated tasks, and JSONL inputs found by fuzzing
// (tests/fuzz/fuzz_jsonl.cpp).

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <unistd.h>

#include "distill/data/byte_tokenizer.hpp"
#include "distill/data/chat.hpp"
#include "distill/data/jsonl.hpp"
#include "distill/data/text_tasks.hpp"
#include "distill/error.hpp"
#include "distill/teacher/synthetic.hpp"

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

TEST_CASE(
    "ChatTokenizer::decode gives valid UTF-8: invalid bytes become U+FFFD as Python's decode('utf-8', 'replace')") {
    // A byte-level model may stop inside a character; what it says goes into JSON, which holds only
    // UTF-8. Expected: Python 3's bytes.decode("utf-8", "replace") of each input, re-encoded.
    const distill::data::ChatTokenizer chat;
    auto decode = [&](std::string_view bytes) {
        std::vector<std::int32_t> ids;
        for (unsigned char c : bytes) ids.push_back(c);
        ids.push_back(ByteTokenizer::end_of_turn);  // special ids are dropped
        return chat.decode(ids);
    };
    CHECK(decode("plain") == "plain");
    CHECK(decode("a\xe2\x82") == "a\xef\xbf\xbd");
    CHECK(decode("\xff") == "\xef\xbf\xbd");
    CHECK(decode("\xed\xa0\x80") == "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    CHECK(decode("\xc0\xaf") == "\xef\xbf\xbd\xef\xbf\xbd");
    CHECK(decode("\xf0\x9f\x98z") == "\xef\xbf\xbdz");
    CHECK(decode("ok \xe2\x82\xac \xef\xbf\xbd \x80") == "ok \xe2\x82\xac \xef\xbf\xbd \xef\xbf\xbd");
    CHECK_NOTHROW((void)nlohmann::json(decode("\x80\x81")).dump());
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

namespace {

/// A JSONL file with `text`, removed at scope exit.
struct jsonl_file {
    std::filesystem::path path;
    explicit jsonl_file(const std::string& text) {
        static int counter = 0;
        path = std::filesystem::temp_directory_path() /
               ("distill-unit-data-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + ".jsonl");
        std::ofstream(path, std::ios::binary) << text;
    }
    ~jsonl_file() { std::filesystem::remove(path); }
};

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const distill::format_error& e) {
        return e.what();
    }
    return "no format_error";
}

}  // namespace

// Found by fuzz_jsonl: nlohmann's parser throws out_of_range (not parse_error) for a number beyond
// double's range, which escaped read_jsonl as a non-distill exception.
TEST_CASE("jsonl (fuzz regression): a number beyond double's range is a defect of its line") {
    const jsonl_file f("{\"prompt\":\"a\"}\n{\"prompt\":\"b\",\"n\":1e400}\n{\"prompt\":\"c\"}\n");
    {
        const std::string what = error_of([&] { distill::data::read_examples(f.path); });
        CHECK(what.find(f.path.string() + ":2: invalid JSON: number overflow parsing '1e400'") != std::string::npos);
    }
    const auto ds = distill::data::read_examples(f.path, {.on_bad_line = "skip"});
    CHECK(ds.examples.size() == 2);
    REQUIRE(ds.stats.skipped.size() == 1);
    CHECK(ds.stats.skipped[0].line == 2);
}

TEST_CASE("jsonl: a handler's JSON type error is a defect of its line, not an escaping exception") {
    const jsonl_file f("{\"a\":1}\n{\"a\":\"text\"}\n");
    const auto read = [&](const distill::data::JsonlConfig& c) {
        return distill::data::read_jsonl(f.path, c,
                                         [](std::uint64_t, const nlohmann::json& j) { (void)j.at("a").get<int>(); });
    };
    CHECK(error_of([&] { read({}); }).find(":2: wrong type: type must be number, but is string") != std::string::npos);
    const auto stats = read({.on_bad_line = "skip"});
    CHECK(stats.records == 1);
    CHECK(stats.skipped.size() == 1);
}

TEST_CASE("synthetic.jsonl (fuzz regressions): wrong types and out-of-range numbers are named defects") {
    const std::string good =
        R"({"id":"a","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}],)"
        R"("teacher":{"fingerprint":"f","finish_reason":"stop","usage":{"prompt_tokens":3},"tokens":[1,2],"topk":2}})";
    const auto defect = [](std::string line) {
        const jsonl_file f(line + "\n");
        return error_of([&] { distill::teacher::read_synthetic(f.path); });
    };
    CHECK(defect(good) == "no format_error");
    const auto with = [&](const std::string& from, const std::string& to) {
        std::string s = good;
        s.replace(s.find(from), from.size(), to);
        return defect(s);
    };
    CHECK(with(R"("role":"assistant")", R"("role":7)").find("must end with the teacher's assistant turn") !=
          std::string::npos);
    CHECK(with(R"("prompt_tokens":3)", R"("prompt_tokens":"3")").find("teacher.usage.prompt_tokens") !=
          std::string::npos);
    CHECK(with("[1,2]", "[1,4294967296]").find("must hold 32-bit integers") != std::string::npos);
    CHECK(with(R"("topk":2)", R"("topk":4294967297)").find("\"teacher.topk\" must be a positive integer") !=
          std::string::npos);
    CHECK(with(R"("topk":2)", R"("topk":0)").find("positive integer") != std::string::npos);
}

TEST_CASE("templated tasks: seeded, balanced, and each response follows from its prompt") {
    using namespace distill::data;
    for (const char* task : {"math", "nli", "qa", "conversation", "summarization"}) {
        const auto a = make_task_examples(task, 5, 300), b = make_task_examples(task, 5, 300);
        const auto c = make_task_examples(task, 6, 300);
        REQUIRE(a.size() == 300);
        bool same = true, differs = false;
        for (std::size_t i = 0; i < a.size(); ++i) {
            same = same && a[i].prompt == b[i].prompt && a[i].response == b[i].response;
            differs = differs || a[i].prompt != c[i].prompt;
        }
        CHECK_MESSAGE(same, task);
        CHECK_MESSAGE(differs, task);
    }
    CHECK_THROWS_AS(make_task_examples("poetry", 1, 1), distill::config_error);

    // nli: a third of each label; the label follows from the hypothesis' relation to the premise
    std::map<std::string, int> labels;
    for (const auto& e : make_nli_examples(1, 600)) {
        ++labels[e.response];
        const auto nl = e.prompt.find('\n');
        const std::string premise = e.prompt.substr(9, nl - 9);  // after "Premise: "
        const std::string hyp = e.prompt.substr(nl + 13);        // after "\nHypothesis: "
        const std::string who = premise.substr(0, premise.find(' '));
        const std::string thing = premise.substr(premise.rfind(' ') + 1);  // "cup."
        const std::string color = premise.substr(premise.find(" a ") + 3, premise.rfind(' ') - premise.find(" a ") - 3);
        const bool same_who = hyp.rfind(who + " ", 0) == 0 || hyp.rfind("Someone ", 0) == 0;
        const bool same_thing =
            hyp.size() >= thing.size() && hyp.compare(hyp.size() - thing.size(), thing.size(), thing) == 0;
        std::string expected;
        if (!same_who || !same_thing)
            expected = "neutral";
        else if (hyp.find(" no ") != std::string::npos ||
                 (hyp.find(" a " + color + " ") == std::string::npos && hyp != who + " has a " + thing))
            expected = "contradiction";
        else
            expected = "entailment";
        INFO(e.prompt);
        CHECK(e.response == expected);
    }
    CHECK(labels == std::map<std::string, int>{{"contradiction", 200}, {"entailment", 200}, {"neutral", 200}});

    // qa: the answer is a span of the passage, the fact the question asks for
    std::map<std::string, int> kinds;
    for (const auto& e : make_qa_examples(2, 300)) {
        const std::string passage = e.prompt.substr(0, e.prompt.find('\n'));
        const std::string question = e.prompt.substr(e.prompt.find('\n') + 11);  // after "\nQuestion: "
        INFO(e.prompt);
        std::string who, fact;
        if (question.rfind("What is ", 0) == 0) {
            who = question.substr(8, question.find("'s job?") - 8);
            fact = who + " is a " + e.response + ".";
        } else if (question.rfind("Where does ", 0) == 0) {
            who = question.substr(11, question.find(" live?") - 11);
            fact = who + " lives in " + e.response + ".";
        } else {
            who = question.substr(14, question.find(" own?") - 14);  // after "What pet does "
            fact = who + " owns a " + e.response + ".";
        }
        ++kinds[question.substr(0, 6)];
        CHECK(passage.find(fact) != std::string::npos);
        CHECK(passage.find(who + " is a ") != std::string::npos);
        CHECK(passage.find(who + " lives in ") != std::string::npos);
        CHECK(passage.find(who + " owns a ") != std::string::npos);
    }
    CHECK(kinds.size() == 3);

    // conversation: the answer greets the user by name; one timetable across all dialogues
    std::map<std::string, std::string> opens;
    for (const auto& e : make_conversation_examples(3, 300)) {
        const auto p = e.prompt.find("I am ") + 5;
        const std::string who = e.prompt.substr(p, e.prompt.find('.', p) - p);
        INFO(e.prompt << " -> " << e.response);
        CHECK(e.response.find(who) != std::string::npos);
        const auto at = e.response.find(" opens at ");
        if (at != std::string::npos) {
            const std::string place = e.response.substr(e.response.find("The ") + 4, at - e.response.find("The ") - 4);
            auto [it, fresh] = opens.emplace(place, e.response.substr(at));
            CHECK(it->second == e.response.substr(at));
        }
    }
    CHECK(opens.size() == 6);

    // summarization: the summary's person, count and object come from the purchase sentence
    for (const auto& e : make_summarization_examples(4, 300)) {
        const std::string who = e.response.substr(0, e.response.find(' '));
        const auto bought = e.response.find(" bought ") + 8;
        const std::string what = e.response.substr(bought, e.response.find(" at the ") - bought);
        const std::string shop = e.response.substr(e.response.find(" at the ") + 8);
        INFO(e.prompt << " -> " << e.response);
        CHECK(e.prompt.find("There " + who + " bought " + what + ".") != std::string::npos);
        CHECK(e.prompt.find(who + " went to the " + shop.substr(0, shop.size() - 1) + " on ") != std::string::npos);
    }
}
