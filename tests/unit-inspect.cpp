// Tests of data::inspect (distill inspect): a data file with planted exact duplicates, near duplicates
// of known Jaccard, test-set overlap and malformed lines, whose findings must be exactly the planted
// ones; distinct-n and percentiles against hand-computed values; LSH recall against brute force.
// The Jaccard values are |A ∩ B| / |A ∪ B| of the character 5-gram sets of the normalized prompts,
// counted by Python: {s[i:i+5] for i in range(len(s) - 4)} over ' '.join(s.lower().split()).

#include <doctest/doctest.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <unistd.h>

#include "distill/data/inspect.hpp"
#include "distill/teacher/synthetic.hpp"

namespace data = distill::data;

namespace {

struct ScratchDir {
    std::filesystem::path dir =
        std::filesystem::temp_directory_path() / ("distill-inspect-" + std::to_string(::getpid()) + "-" +
                                                  std::to_string(reinterpret_cast<std::uintptr_t>(this)));
    ScratchDir() { std::filesystem::create_directories(dir); }
    ~ScratchDir() { std::filesystem::remove_all(dir); }
    std::filesystem::path write(const std::string& name, const std::string& text) const {
        std::ofstream(dir / name, std::ios::binary) << text;
        return dir / name;
    }
};

// Line numbers are the comments' "Ln"; the findings planted on each are listed beside it.
const char* planted_train =
    // L1: group A with L3; near L9 at 65/92
    R"({"prompt": "Write a short poem about the quiet harbor at dawn when the fishing boats return home", "completion": "Gulls."})"
    "\n"
    // L2: group B with L12; near L5 at 84/94
    R"({"prompt": "Explain how photosynthesis converts sunlight water and carbon dioxide into glucose and oxygen", "completion": "Light to sugar."})"
    "\n"
    // L3: L1 in other case and spacing
    R"({"prompt": "write a SHORT poem  about the quiet harbor at dawn when the fishing   boats return home", "completion": "Dawn."})"
    "\n"
    // L4: malformed (invalid JSON)
    R"({"prompt": "unterminated)"
    "\n"
    // L5: L2 with a comma and a "!"
    R"({"prompt": "explain how photosynthesis converts sunlight, water and carbon dioxide into glucose and oxygen!", "completion": "Sugar from light!"})"
    "\n"
    // L6: equal to test line 1
    R"({"prompt": "List three prime numbers greater than one hundred and explain why each is prime"})"
    "\n"
    // L7: blank
    "   \n"
    // L8: malformed (prompt is a number)
    R"({"prompt": 42})"
    "\n"
    // L9: L1 with "harbour" and "come home"
    R"({"prompt": "Write a short poem about the quiet harbour at dawn when the fishing boats come home"})"
    "\n"
    // L10: near test line 2 at 63/76
    R"({"prompt": "Translate the sentence 'the cat sleeps on the warm windowsill' into French"})"
    "\n"
    // L11: malformed (no prompt)
    R"({"completion": "orphan"})"
    "\n"
    // L12: L2 in upper case
    R"({"prompt": "EXPLAIN how photosynthesis converts sunlight water and carbon dioxide into glucose and oxygen"})"
    "\n"
    // L13, L14: unlike every other line (Jaccard < 0.07 with each)
    R"({"prompt": "Describe the rules of chess for a complete beginner in five sentences", "completion": "h\u00e9llo"})"
    "\n"
    R"({"prompt": "Summarize the causes of the French Revolution for a high school student"})"
    "\n";

const char* planted_test =
    R"({"prompt": "List three prime numbers greater than one hundred and explain why each is prime"})"
    "\n"
    R"({"prompt": "Translate the sentence 'the cat sleeps on the warm windowsill' into Spanish"})"
    "\n"
    "not json\n"
    R"({"prompt": "What is the capital of Australia and why was it chosen over Sydney"})"
    "\n";

std::vector<std::tuple<std::uint64_t, std::uint64_t, double>> as_tuples(const std::vector<data::NearPair>& pairs) {
    std::vector<std::tuple<std::uint64_t, std::uint64_t, double>> out;
    for (const auto& p : pairs) out.emplace_back(p.a, p.b, p.jaccard);
    return out;
}

}  // namespace

TEST_CASE("inspect: the planted duplicates, near duplicates, overlap and malformed lines, and nothing else") {
    ScratchDir s;
    data::InspectOptions o;
    o.test = s.write("test.jsonl", planted_test);
    const auto r = data::inspect(s.write("train.jsonl", planted_train), o);

    CHECK(r.lines == 14);
    CHECK(r.blank_lines == 1);
    CHECK(r.examples == 10);
    CHECK(r.formats == std::map<std::string, std::uint64_t>{{"prompt_completion", 10}});
    REQUIRE(r.malformed.size() == 3);
    CHECK(r.malformed[0].line == 4);
    CHECK(r.malformed[0].defect.starts_with("invalid JSON"));
    CHECK(r.malformed[1].line == 8);
    CHECK(r.malformed[1].defect == "wrong type: \"prompt\" must be a string, got an integer");
    CHECK(r.malformed[2].line == 11);
    CHECK(r.malformed[2].defect.starts_with("missing field"));

    REQUIRE(r.exact_duplicates.size() == 2);
    CHECK(r.exact_duplicates[0].lines == std::vector<std::uint64_t>{1, 3});
    CHECK(r.exact_duplicates[0].text ==
          "write a short poem about the quiet harbor at dawn when the fishing boats return home");
    CHECK(r.exact_duplicates[1].lines == std::vector<std::uint64_t>{2, 12});
    CHECK(r.duplicate_examples == 2);

    // At 0.8 only L2~L5 (84/94 = 0.894); L1~L9 (65/92 = 0.707) is below.
    REQUIRE(r.near_duplicates.size() == 1);
    CHECK(r.near_duplicates[0].a == 2);
    CHECK(r.near_duplicates[0].b == 5);
    CHECK(r.near_duplicates[0].jaccard == doctest::Approx(84.0 / 94.0).epsilon(1e-12));

    CHECK(r.test_examples == 3);
    REQUIRE(r.test_malformed.size() == 1);
    CHECK(r.test_malformed[0].line == 3);
    CHECK(as_tuples(r.test_exact) == std::vector<std::tuple<std::uint64_t, std::uint64_t, double>>{{6, 1, 1.0}});
    REQUIRE(r.test_near.size() == 1);
    CHECK(r.test_near[0].a == 10);
    CHECK(r.test_near[0].b == 2);
    CHECK(r.test_near[0].jaccard == doctest::Approx(63.0 / 76.0).epsilon(1e-12));
    CHECK(r.contaminated_examples == 2);
    CHECK(r.labels.empty());

    SUBCASE("a lower threshold adds the planted pair below 0.8 and no other") {
        o.near_threshold = 0.7;
        const auto low = data::inspect(s.dir / "train.jsonl", o);
        REQUIRE(low.near_duplicates.size() == 2);
        CHECK(low.near_duplicates[0].a == 1);
        CHECK(low.near_duplicates[0].b == 9);
        CHECK(low.near_duplicates[0].jaccard == doctest::Approx(65.0 / 92.0).epsilon(1e-12));
        CHECK(low.near_duplicates[1].a == 2);
        CHECK(low.test_near.size() == 1);
    }

    SUBCASE("lengths per field: completions in characters and in bytes") {
        // completions: "Gulls." "Light to sugar." "Dawn." "Sugar from light!" "héllo" (5 chars, 6 bytes)
        REQUIRE(r.lengths.size() == 2);
        CHECK(r.lengths[0].field == "prompt");
        CHECK(r.lengths[0].chars.count == 10);
        const auto& c = r.lengths[1];
        CHECK(c.field == "completion");
        CHECK(c.chars.count == 5);
        CHECK(c.chars.min == 5);
        CHECK(c.chars.max == 17);
        CHECK(c.chars.mean == doctest::Approx(48.0 / 5));
        CHECK(c.chars.p50 == doctest::Approx(6));
        CHECK(c.chars.p95 == doctest::Approx(16.6));  // sorted 5 5 6 15 17: 15 + 0.8 × (17 - 15)
        CHECK(c.tokens.mean == doctest::Approx(49.0 / 5));
        CHECK(c.tokens.p50 == doctest::Approx(6));  // sorted 5 6 6 15 17
    }

    SUBCASE("the report files") {
        data::write_inspection(r, s.dir / "out");
        const auto j = nlohmann::json::parse(std::ifstream(s.dir / "out" / "inspect.json"));
        CHECK(j["examples"] == 10);
        CHECK(j["malformed"].size() == 3);
        CHECK(j["duplicates"]["near_pairs"][0]["line_a"] == 2);
        CHECK(j["contamination"]["exact"][0]["test_line"] == 1);
        CHECK(std::filesystem::exists(s.dir / "out" / "inspect.md"));
        for (const char* f : {"lengths-prompt-tokens.svg", "lengths-prompt-chars.svg", "lengths-completion-tokens.svg",
                              "lengths-completion-chars.svg"})
            CHECK(std::filesystem::exists(s.dir / "out" / f));
        const std::string summary = data::summary(r);
        CHECK(summary.find("10 examples in 14 lines, 3 malformed") != std::string::npos);
    }
}

TEST_CASE("inspect: chat roles, labels, a token counter") {
    ScratchDir s;
    const auto chat = data::inspect(s.write(
        "chat.jsonl",
        R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]})"
        "\n"
        R"({"messages": [{"role": "user", "content": "Two plus two?"}]})"
        "\n"
        R"({"messages": [{"role": "tool", "content": "x"}]})"
        "\n"));
    CHECK(chat.examples == 2);
    CHECK(chat.roles == std::map<std::string, std::uint64_t>{{"assistant", 1}, {"system", 1}, {"user", 2}});
    REQUIRE(chat.malformed.size() == 1);
    CHECK(chat.malformed[0].line == 3);
    CHECK(chat.malformed[0].defect.find("unknown role \"tool\"") != std::string::npos);

    data::InspectOptions words;
    words.count_tokens = [](std::string_view t) { return data::inspect_detail::words(std::string(t)).size(); };
    words.tokenizer_name = "words";
    const auto labels = data::inspect(s.write("nli.jsonl", R"({"input": "a b c", "label": "entailment"})"
                                                           "\n"
                                                           R"({"input": "d e", "label": "entailment"})"
                                                           "\n"
                                                           R"({"input": "f", "label": "entailment"})"
                                                           "\n"
                                                           R"({"input": "g h i j", "label": "contradiction"})"
                                                           "\n"),
                                      words);
    CHECK(labels.labels == std::map<std::string, std::uint64_t>{{"contradiction", 1}, {"entailment", 3}});
    CHECK(labels.label_imbalance == 3.0);
    REQUIRE(labels.lengths.size() == 1);
    CHECK(labels.lengths[0].field == "input");
    CHECK(labels.lengths[0].tokens.mean == doctest::Approx(2.5));  // 3 2 1 4 words
    CHECK(labels.lengths[0].tokens.max == 4);
    CHECK(data::to_json(labels)["labels"]["imbalance_ratio"] == 3.0);
    CHECK(data::to_json(labels)["diversity"]["reference"]["distinct_2"].is_null());  // one-word labels: no bigram
}

TEST_CASE("distinct-n and percentiles on hand-computed examples") {
    // words: the cat sat on the mat | the cat ran — 9 words, 6 distinct; bigrams 7, 6 distinct
    // ("the cat" twice); trigrams 5, all distinct. Case does not count.
    const auto d = data::distinct_n({"the cat sat on the mat", "The  cat ran"});
    CHECK(d.words == 9);
    CHECK(d.distinct1 == doctest::Approx(6.0 / 9));
    CHECK(d.distinct2 == doctest::Approx(6.0 / 7));
    CHECK(d.distinct3 == doctest::Approx(1.0));
    CHECK(d.ngrams == std::array<std::size_t, 3>{9, 7, 5});
    CHECK(data::distinct_n({"one", "two"}).ngrams[1] == 0);  // no bigram: reported as null, not 0

    const auto st = data::length_stats({10, 2, 4, 1, 3}, 3);
    CHECK(st.min == 1);
    CHECK(st.max == 10);
    CHECK(st.mean == doctest::Approx(4));
    CHECK(st.p50 == doctest::Approx(3));
    CHECK(st.p95 == doctest::Approx(8.8));  // position 0.95 × 4 = 3.8: 4 + 0.8 × (10 - 4)
    CHECK(st.edges == std::vector<double>{1, 4, 7, 10});
    CHECK(st.counts == std::vector<std::size_t>{3, 1, 1});
    CHECK(data::percentile({7}, 95) == 7);
    const auto same = data::length_stats({5, 5}, 4);
    CHECK(same.counts == std::vector<std::size_t>{2, 0, 0, 0});
}

TEST_CASE("inspect: LSH finds every pair brute force finds at Jaccard >= 0.8 among 300 prompts") {
    std::mt19937 rng(7);
    const std::vector<std::string> vocab = {
        "alpha", "bravo", "charlie", "delta", "echo",   "foxtrot", "golf",   "hotel", "india",  "juliet",
        "kilo",  "lima",  "mike",    "novem", "oscar",  "papa",    "quebec", "romeo", "sierra", "tango",
        "unity", "vivid", "whisky",  "xray",  "yankee", "zulu",    "amber",  "basil", "cedar",  "dune"};
    std::vector<std::string> prompts;
    for (int i = 0; i < 270; ++i) {
        std::string p;
        for (int w = 0; w < 14; ++w) p += (w ? " " : "") + vocab[rng() % vocab.size()];
        prompts.push_back(p);
    }
    for (int i = 0; i < 30; ++i) {  // one word of an earlier prompt replaced or appended
        std::string p = prompts[static_cast<std::size_t>(i * 7)];
        p += (i % 2) ? " extra" : "";
        if (i % 2 == 0) p.replace(0, p.find(' '), "zzz");
        prompts.push_back(p);
    }
    std::string file;
    for (const auto& p : prompts) file += nlohmann::json({{"prompt", p}}).dump() + "\n";
    ScratchDir s;
    const auto r = data::inspect(s.write("many.jsonl", file));
    REQUIRE(r.exact_duplicates.empty());

    std::set<std::pair<std::uint64_t, std::uint64_t>> expected, found;
    std::vector<std::vector<std::uint64_t>> sets;
    for (const auto& p : prompts) sets.push_back(data::inspect_detail::shingles(data::inspect_detail::normalize(p), 5));
    for (std::size_t i = 0; i < sets.size(); ++i)
        for (std::size_t j = i + 1; j < sets.size(); ++j)
            if (data::inspect_detail::jaccard(sets[i], sets[j]) >= 0.8) expected.emplace(i + 1, j + 1);
    for (const auto& p : r.near_duplicates) found.emplace(p.a, p.b);
    CHECK(expected.size() >= 20);  // most planted variants are above 0.8 (a few short first words are not)
    CHECK(found == expected);
}

TEST_CASE("teacher_output: refusals, truncated and empty answers, completion length against max_new_tokens") {
    namespace teacher = distill::teacher;
    ScratchDir s;
    std::string synthetic;
    auto record = [&](const std::string& answer, teacher::finish_reason finish, std::int64_t tokens) {
        teacher::SyntheticRecord r;
        r.id = "q" + std::to_string(tokens);
        r.format = data::input_format::prompt_completion;
        r.prompt = {{"user", "question " + std::to_string(tokens)}};
        r.fingerprint = "fp";
        r.response.text = answer;
        r.response.finish = finish;
        r.response.usage.completion_tokens = tokens;
        synthetic += teacher::to_line(r);
    };
    record("Paris is the capital of France.", teacher::finish_reason::stop, 10);
    record("I\u2019m sorry, that is not something to help with.", teacher::finish_reason::stop, 12);  // ’ read as '
    record("Step one: mix the flour and", teacher::finish_reason::length, 64);
    record("  As an AI language model, I have no opinion.", teacher::finish_reason::stop, 20);
    record("The answer is 42. " + std::string(120, 'x') + " I cannot say more.", teacher::finish_reason::stop,
           30);  // "i cannot" past the first 120 bytes does not count
    const auto rejected = s.write("synthetic.rejected.jsonl", R"({"id": "a", "reason": "empty", "text": ""})"
                                                              "\n"
                                                              R"({"id": "b", "reason": "truncated", "text": "x"})"
                                                              "\n"
                                                              R"({"id": "c", "reason": "truncated", "text": "y"})"
                                                              "\n");
    const auto path = s.write("synthetic.jsonl", synthetic);
    const auto t = data::teacher_output(path, rejected, 64);
    CHECK(t.answers == 5);
    CHECK(t.refusals == 2);
    CHECK(t.refusal_lines == std::vector<std::uint64_t>{2, 4});
    CHECK(t.truncated_kept == 1);
    CHECK(t.rejected_empty == 1);
    CHECK(t.rejected_truncated == 2);
    CHECK(t.rejected_duplicate == 0);
    CHECK(t.at_limit == 1);
    CHECK(t.completion_tokens.p50 == 20);  // 10 12 20 30 64
    CHECK(t.completion_tokens.max == 64);

    // the synthetic set is a chat data set: its answers are the assistant role
    auto ins = data::inspect(path);
    CHECK(ins.examples == 5);
    CHECK(ins.roles.at("assistant") == 5);
    ins.teacher = t;
    data::write_inspection(ins, s.dir / "out");
    CHECK(std::filesystem::exists(s.dir / "out" / "teacher-completion-tokens.svg"));
    CHECK(data::to_json(ins)["teacher_output"]["refusals"] == 2);
}
