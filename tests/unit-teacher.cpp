// Teacher sources and the generate stage: input data (every defect class), the chat template,
// sampling, teacher::Model generation against the full forward, the top-k cache format, the
// Cache teacher (ours and OpenAI JSONL), the OpenAI wire format, and the generate stage's
// validation, resume and fingerprint checks. The HTTP and kill -9 tests are in http-teacher.cpp.

#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "distill/data/chat.hpp"
#include "distill/data/jsonl.hpp"
#include "distill/io/topk_cache.hpp"
#include "distill/pipeline/generate.hpp"
#include "distill/teacher.hpp"
#include "distill/teacher/cache.hpp"
#include "distill/teacher/callable.hpp"
#include "distill/teacher/model.hpp"
#include "distill/teacher/openai_format.hpp"
#include "distill/teacher/sampler.hpp"
#include "teacher_fixtures.hpp"
#include "testing.hpp"

using namespace distill;
using distill::testing::read_text;
using distill::testing::TempDir;
using distill::testing::write_text;
using doctest::Contains;

// Checks that `text` contains `part`, printing the whole text on failure.
#define CHECK_CONTAINS(text, part)                    \
    do {                                              \
        const std::string text_ = (text);             \
        INFO("text: " << text_);                      \
        CHECK(text_.find(part) != std::string::npos); \
    } while (0)

namespace {

using TinyTeacher = teacher::Model<student::Transformer, float, device::Cpu>;

struct EchoTeacher {
    static constexpr auto provides = boost::hana::make_set(signal::tokens);
    std::string fingerprint() const { return "echo-v1"; }
    std::string name() const { return "echo"; }
    void generate(std::span<const teacher::Request> requests, const teacher::Sampling&,
                  const teacher::response_sink& sink) {
        for (std::size_t i = 0; i < requests.size(); ++i) {
            teacher::Response r;
            r.text = requests[i].messages.back().content;
            sink(i, std::move(r));
        }
    }
};

static_assert(teacher_source<EchoTeacher>);
static_assert(teacher_source<TinyTeacher> && online_teacher<TinyTeacher>);
static_assert(teacher_source<teacher::Cache<true>> && teacher_provides<teacher::Cache<true>, signal::topk_logprobs_t>);
static_assert(teacher_source<teacher::Cache<false>> &&
              !teacher_provides<teacher::Cache<false>, signal::topk_logprobs_t>);
static_assert(!online_teacher<teacher::Cache<true>>);
static_assert(!online_teacher<EchoTeacher>);
static_assert(teacher_provides<TinyTeacher, signal::attentions_t> && teacher_provides<TinyTeacher, signal::qkv_t>);
static_assert(!teacher_batch_invariant<TinyTeacher> && teacher_batch_invariant<teacher::Cache<>>);

// The defect message the reader reports for a one-line file holding `line`.
std::string defect_of(const std::string& line, data::JsonlConfig cfg = {}) {
    TempDir dir("defect");
    write_text(dir / "d.jsonl", "{\"prompt\":\"fine\"}\n" + line + "\n");
    try {
        data::read_examples(dir / "d.jsonl", cfg);
    } catch (const format_error& e) {
        CHECK(e.line() == 2);
        return e.what();
    }
    FAIL("no error for: " << line);
    return "";
}

TinyTeacher make_teacher(const TempDir& dir, int max_batch = 4, std::uint64_t seed = 1, int context = 64) {
    testing::write_tiny_teacher(dir / "teacher.safetensors", seed, context);
    return TinyTeacher(teacher::ModelConfig{.weights = (dir / "teacher.safetensors").string(), .max_batch = max_batch},
                       device::Cpu(1));
}

// Thrown by Dying to simulate a crash.
struct Crash {};

// A teacher that answers through `inner` and dies after `left` answers.
struct Dying {
    TinyTeacher& inner;
    int& left;
    static constexpr auto provides = TinyTeacher::provides;
    std::string tokenizer_id() const { return inner.tokenizer_id(); }
    std::string fingerprint() const { return inner.fingerprint(); }
    std::string name() const { return inner.name(); }
    int batch_size() const { return inner.batch_size(); }
    int vocab_size() const { return inner.vocab_size(); }
    void generate(std::span<const teacher::Request> q, const teacher::Sampling& s, const teacher::response_sink& sink) {
        inner.generate(q, s, [&](std::size_t i, teacher::Response&& r) {
            if (left-- == 0) throw Crash{};
            sink(i, std::move(r));
        });
    }
};

std::vector<teacher::Request> requests_for(const std::vector<std::string>& prompts) {
    std::vector<teacher::Request> out;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
        std::string id = "r";  // not "r" + to_string(i): GCC 12 warns falsely on it (-Warray-bounds)
        id += std::to_string(i);
        out.push_back({id, i, {{"user", prompts[i]}}});
    }
    return out;
}

}  // namespace

TEST_SUITE("teacher") {
    // ---- input data -------------------------------------------------------------------------------------

    TEST_CASE("jsonl: BOM, CRLF, blank lines and a missing final newline are accepted") {
        TempDir dir("jsonl-ok");
        write_text(dir / "a.jsonl",
                   "\xEF\xBB\xBF{\"prompt\":\"one\"}\r\n\r\n   "
                   "\n{\"prompt\":\"two\",\"completion\":\"2\"}\r\n\n{\"input\":\"three\",\"label\":1}");
        const auto ds = data::read_examples(dir / "a.jsonl");
        REQUIRE(ds.examples.size() == 3);
        CHECK(ds.examples[0].prompt[0].content == "one");
        CHECK(ds.examples[0].line == 1);
        CHECK(ds.examples[1].line == 4);
        CHECK(*ds.examples[1].reference == "2");
        CHECK(ds.examples[2].line == 6);
        CHECK(*ds.examples[2].reference == "1");
        CHECK(ds.stats.blank_lines == 3);
        CHECK(ds.stats.skipped.empty());
    }

    TEST_CASE("jsonl: every defect class is an error naming file:line and the defect") {
        CHECK_CONTAINS(defect_of("{\"prompt\": \"x\""), "d.jsonl:2: invalid JSON at column");
        CHECK_CONTAINS(defect_of("{\"prompt\": \"x\""), "d.jsonl:2:");
        CHECK_CONTAINS(defect_of("{\"completion\": \"x\"}"), "missing field");
        CHECK_CONTAINS(defect_of("{\"messages\": [{\"role\": \"user\"}]}"), "missing field \"messages[0].content\"");
        CHECK_CONTAINS(defect_of("{\"prompt\": 42}"), "wrong type: \"prompt\" must be a string, got an integer");
        CHECK_CONTAINS(defect_of("{\"messages\": {\"role\": \"user\"}}"), "wrong type: \"messages\" must be an array");
        CHECK_CONTAINS(defect_of("[1, 2]"), "wrong type: expected a JSON object, got an array");
        CHECK_CONTAINS(defect_of("{\"input\": \"x\", \"label\": [1]}"), "wrong type: \"label\"");
        CHECK_CONTAINS(defect_of("{\"prompt\": \"   \"}"), "empty content: \"prompt\" is empty");
        CHECK_CONTAINS(defect_of("{\"messages\": [{\"role\": \"user\", \"content\": \"\"}]}"),
                       "empty content: \"messages[0].content\" is empty");
        CHECK_CONTAINS(defect_of("{\"messages\": []}"), "empty content");
        CHECK_CONTAINS(defect_of("{\"prompt\": \"caf\xC3\"}"), "invalid UTF-8 at byte 16");
        CHECK_CONTAINS(defect_of("{\"prompt\": \"\xED\xA0\x80\"}"), "invalid UTF-8");  // a UTF-16 surrogate
        CHECK_CONTAINS(defect_of("{\"prompt\": \"\xC0\xAF\"}"), "invalid UTF-8");      // overlong '/'
        data::JsonlConfig small{.max_line_bytes = 20};
        CHECK_CONTAINS(defect_of("{\"prompt\": \"a long line, longer than twenty bytes\"}", small),
                       "bytes is over the limit of 20 bytes (max_line_bytes)");
        CHECK_CONTAINS(defect_of("{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}"),
                       "unknown role \"tool\"");
        CHECK_CONTAINS(defect_of("{\"messages\": [{\"role\": \"system\", \"content\": \"x\"}]}"), "no user turn");
    }

    TEST_CASE("jsonl: on_bad_line = skip counts and reports every bad line and keeps the rest") {
        TempDir dir("jsonl-skip");
        write_text(dir / "s.jsonl",
                   "{\"prompt\":\"a\"}\nnot "
                   "json\n{\"prompt\":\"\"}\n{\"id\":\"x\",\"prompt\":\"b\"}\n{\"id\":\"x\",\"prompt\":\"c\"}\n");
        CHECK_THROWS_WITH_AS(data::read_examples(dir / "s.jsonl"), Contains("s.jsonl:2: invalid JSON"), format_error);
        const auto ds = data::read_examples(dir / "s.jsonl", {.on_bad_line = "skip"});
        REQUIRE(ds.examples.size() == 2);
        REQUIRE(ds.stats.skipped.size() == 3);
        CHECK(ds.stats.skipped[0].line == 2);
        CHECK(ds.stats.skipped[1].line == 3);
        CHECK_CONTAINS(ds.stats.skipped[1].defect, "empty content");
        CHECK(ds.stats.skipped[2].line == 5);
        CHECK_CONTAINS(ds.stats.skipped[2].defect, "duplicate id \"x\" (first used on line 4)");
        CHECK_THROWS_WITH_AS(data::read_examples(dir / "s.jsonl", {.on_bad_line = "ignore"}),
                             Contains("data.on_bad_line"), config_error);
        CHECK_THROWS_AS(data::read_examples(dir / "missing.jsonl"), io_error);
    }

    TEST_CASE("chat format: the last assistant turn is the reference; ids are stable and distinct") {
        TempDir dir("chat");
        write_text(
            dir / "c.jsonl",
            R"({"messages":[{"role":"system","content":"sys"},{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]})"
            "\n"
            R"({"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]})"
            "\n"
            R"({"messages":[{"role":"system","content":"sys"},{"role":"user","content":"hi"},{"role":"assistant","content":"other"}]})"
            "\n"
            R"({"id": 7, "prompt":"p"})"
            "\n");
        const auto ds = data::read_examples(dir / "c.jsonl");
        REQUIRE(ds.examples.size() == 4);
        const auto& a = ds.examples[0];
        REQUIRE(a.prompt.size() == 2);
        CHECK(a.prompt[1].content == "hi");
        CHECK(*a.reference == "hello");
        CHECK(ds.examples[1].prompt[0].content == "ab");
        CHECK(!ds.examples[1].reference);
        CHECK(ds.examples[2].id == a.id + "-2");  // same prompt, second occurrence
        CHECK(ds.examples[3].id == "7");
        CHECK(a.id == data::prompt_key(a.prompt));
    }

    TEST_CASE("chat template: the documented token layout") {
        using Tok = data::ByteTokenizer;
        const data::ChatTokenizer tpl;
        const std::vector<data::Message> msgs = {{"system", "s"}, {"user", "hi"}};
        const std::vector<std::int32_t> want = {
            Tok::bos, Tok::system, 's', Tok::end_of_turn, Tok::user, 'h', 'i', Tok::end_of_turn, Tok::assistant};
        CHECK(tpl.encode_prompt(msgs) == want);
        CHECK(tpl.encode_response("ok") == std::vector<std::int32_t>{'o', 'k', Tok::end_of_turn});
        const data::ChatTokenizer with_system({.add_bos = false, .system_prompt = "S"});
        const std::vector<data::Message> user_only = {{"user", "q"}};
        CHECK(with_system.encode_prompt(user_only) == std::vector<std::int32_t>{Tok::system, 'S', Tok::end_of_turn,
                                                                                Tok::user, 'q', Tok::end_of_turn,
                                                                                Tok::assistant});
        CHECK(tpl.id() != with_system.id());
    }

    // ---- sampling ---------------------------------------------------------------------------------------

    TEST_CASE("sampler: greedy, top-k = 1 and a tiny top-p are the argmax; sampling follows the softmax") {
        const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 2.0f, 1.5f};
        teacher::Sampler s;
        Rng rng(1);
        CHECK(s.sample(logits.data(), 5, teacher::Sampling{.temperature = 0}, rng) == 1);  // first of the tied maxima
        for (int i = 0; i < 20; ++i) {
            CHECK(s.sample(logits.data(), 5, {.temperature = 1.0, .top_p = 1.0, .top_k = 1}, rng) == 1);
            CHECK(s.sample(logits.data(), 5, {.temperature = 1.0, .top_p = 1e-6}, rng) == 1);
            const int t = s.sample(logits.data(), 5, {.temperature = 1.0, .top_p = 1.0, .top_k = 3}, rng);
            CHECK((t == 1 || t == 3 || t == 4));
        }
        // temperature 1, no truncation: frequencies within 4 sigma of the softmax
        const int n = 20000;
        std::vector<int> count(5);
        for (int i = 0; i < n; ++i)
            ++count[std::size_t(s.sample(logits.data(), 5, {.temperature = 1.0, .top_p = 1.0}, rng))];
        const double lse = teacher::log_sum_exp(logits.data(), 5);
        for (int v = 0; v < 5; ++v) {
            const double p = std::exp(double(logits[std::size_t(v)]) - lse);
            CHECK(std::abs(count[std::size_t(v)] - n * p) <= 4 * std::sqrt(n * p * (1 - p)) + 1);
        }
        // top_p = 0.8 keeps {1, 3, 4} (cumulative 0.34+0.34+0.21 passes 0.8 at the third)
        std::set<int> seen;
        for (int i = 0; i < 2000; ++i) seen.insert(s.sample(logits.data(), 5, {.temperature = 1.0, .top_p = 0.8}, rng));
        CHECK(seen == std::set<int>{1, 3, 4});
        std::vector<std::int32_t> ids(3);
        std::vector<float> lps(3);
        s.top_logprobs(logits.data(), 5, 3, lse, ids.data(), lps.data());
        CHECK(ids == std::vector<std::int32_t>{1, 3, 4});
        CHECK(lps[0] == doctest::Approx(2.0 - lse));
    }

    // ---- teacher::Model ---------------------------------------------------------------------------------

    TEST_CASE(
        "Model: greedy KV-cache generation equals the argmax of the full forward at every step; top-k log-probs equal "
        "its log-softmax") {
        TempDir dir("model-greedy");
        auto teacher = make_teacher(dir, 4, 1, 40);
        // prompts of very different lengths; 40 positions, so long ones hit the context limit and the
        // batch is re-prefilled when a finished row would run past it
        const auto requests =
            requests_for({"a", "hello there, how are you", "0123456789012345678901234567", "xy", "q"});
        const teacher::Sampling greedy{.temperature = 0, .max_new_tokens = 30, .top_logprobs = 5};
        const auto responses = generate_all(teacher, std::span<const teacher::Request>(requests), greedy);
        const auto& tpl = teacher.chat_template();
        auto& net = teacher.network();
        const int V = net.config().vocab_size;
        int checked = 0;
        bool some_length = false;
        for (std::size_t r = 0; r < requests.size(); ++r) {
            const auto& out = responses[r];
            REQUIRE(out.ok());
            REQUIRE(!out.tokens.empty());
            CHECK(out.k == 5);
            CHECK(out.top_ids.size() == out.tokens.size() * 5);
            auto seq = tpl.encode_prompt(requests[r].messages);
            const std::size_t prompt_len = seq.size();
            CHECK(out.usage.prompt_tokens == std::int64_t(prompt_len));
            seq.insert(seq.end(), out.tokens.begin(), out.tokens.end());
            CHECK(int(seq.size()) <= net.config().context_length);
            // one full forward over prompt + answer: row t predicts token t + 1
            net.forward(seq.data(), 1, int(seq.size()));
            const float* logits = net.logits().data();
            for (std::size_t i = 0; i < out.tokens.size(); ++i) {
                const float* row = logits + (prompt_len - 1 + i) * std::size_t(V);
                const float best = *std::max_element(row, row + V);
                INFO("request " << r << " step " << i);
                CHECK(row[out.tokens[i]] >= best - 1e-4f);
                const double lse = teacher::log_sum_exp(row, V);
                CHECK(out.token_logprobs[i] == doctest::Approx(row[out.tokens[i]] - lse).epsilon(1e-4));
                std::vector<float> want(V);
                for (int v = 0; v < V; ++v) want[std::size_t(v)] = float(row[v] - lse);
                for (int j = 0; j < 5; ++j) {
                    const auto id = out.top_ids[i * 5 + std::size_t(j)];
                    CHECK(std::abs(out.top_logprobs[i * 5 + std::size_t(j)] - want[std::size_t(id)]) < 1e-4f);
                }
                std::vector<float> sorted = want;
                std::sort(sorted.begin(), sorted.end(), std::greater<>());
                for (int j = 0; j < 5; ++j)
                    CHECK(out.top_logprobs[i * 5 + std::size_t(j)] ==
                          doctest::Approx(sorted[std::size_t(j)]).epsilon(1e-4));
                ++checked;
            }
            if (out.finish == teacher::finish_reason::length) {
                some_length = true;
                CHECK((int(out.tokens.size()) == 30 || int(seq.size()) == net.config().context_length));
            }
        }
        CHECK(checked > 60);
        CHECK(some_length);
        // a prompt that leaves no room for an answer fails alone
        const auto too_long = requests_for({std::string(60, 'z'), "ok"});
        const auto two = generate_all(teacher, std::span<const teacher::Request>(too_long), greedy);
        CHECK(!two[0].ok());
        CHECK_CONTAINS(two[0].error, "leaves no room");
        CHECK(two[1].ok());
    }

    TEST_CASE("Model: sampling is reproducible per seed; stop sequences and max_new_tokens end answers") {
        TempDir dir("model-sample");
        auto teacher = make_teacher(dir, 3);
        const auto requests = requests_for({"tell me", "a story", "please"});
        const teacher::Sampling s{.temperature = 1.0, .top_p = 0.9, .max_new_tokens = 20, .seed = 7, .top_logprobs = 2};
        const auto a = generate_all(teacher, std::span<const teacher::Request>(requests), s);
        const auto b = generate_all(teacher, std::span<const teacher::Request>(requests), s);
        auto s2 = s;
        s2.seed = 8;
        const auto c = generate_all(teacher, std::span<const teacher::Request>(requests), s2);
        bool differs = false;
        for (std::size_t i = 0; i < a.size(); ++i) {
            CHECK(a[i].tokens == b[i].tokens);
            CHECK(a[i].text == b[i].text);
            CHECK(a[i].top_logprobs == b[i].top_logprobs);
            differs |= a[i].tokens != c[i].tokens;
        }
        CHECK(differs);

        // greedy, max_new_tokens 12: finish "length" unless a stop token came first
        const teacher::Sampling g{.temperature = 0, .max_new_tokens = 12};
        const auto full = generate_all(teacher, std::span<const teacher::Request>(requests), g);
        for (const auto& r : full) {
            CHECK(int(r.tokens.size()) <= 12);
            if (int(r.tokens.size()) == 12 && !data::ChatTokenizer().is_stop_token(r.tokens.back()))
                CHECK(r.finish == teacher::finish_reason::length);
        }
        // a stop sequence taken from the middle of an answer ends it just before its first occurrence
        std::size_t pick = 0;
        for (std::size_t i = 1; i < full.size(); ++i)
            if (full[i].text.size() > full[pick].text.size()) pick = i;
        const auto& text = full[pick].text;
        REQUIRE(text.size() >= 6);
        const std::string stop = text.substr(3, 2);
        auto gs = g;
        gs.stop = {stop};
        const auto stopped = generate_all(teacher, std::span<const teacher::Request>(requests), gs);
        const std::size_t at = text.find(stop);
        CHECK(stopped[pick].text == text.substr(0, at));
        CHECK(stopped[pick].finish == teacher::finish_reason::stop);
        // the tokens kept are those that start before the stop sequence
        std::size_t keep = 0, offset = 0;
        const data::ByteTokenizer tok;
        for (auto t : full[pick].tokens) {
            if (offset >= at) break;
            ++keep;
            offset += tok.is_special(t) ? 0 : 1;
        }
        CHECK(stopped[pick].tokens.size() == keep);
        CHECK(std::equal(stopped[pick].tokens.begin(), stopped[pick].tokens.end(), full[pick].tokens.begin()));
    }

    TEST_CASE("Model: a token observer sees every token as it comes and can stop one request; prompts as token ids") {
        TempDir dir("model-observe");
        auto teacher = make_teacher(dir, 3);
        const auto requests = requests_for({"tell me", "a story", "please"});
        const teacher::Sampling s{.temperature = 1.0, .top_p = 0.9, .max_new_tokens = 20, .seed = 7, .top_logprobs = 2};
        const auto plain = generate_all(teacher, std::span<const teacher::Request>(requests), s);
        std::vector<teacher::Response> seen(3), got(3);
        std::vector<int> calls(3, 0), finished(3, 0);
        bool one_at_a_time = true;
        teacher.generate(
            requests, s, [&](std::size_t i, teacher::Response&& r) { got[i] = std::move(r); },
            [&](std::size_t i, const teacher::Response& r, bool done) {
                one_at_a_time &= r.tokens.size() == std::size_t(++calls[i]);
                finished[i] += done;
                seen[i] = r;
                return true;
            });
        CHECK(one_at_a_time);
        for (std::size_t i = 0; i < 3; ++i) {
            CHECK(finished[i] == 1);
            CHECK(got[i].tokens == plain[i].tokens);  // watching changes nothing
            CHECK(got[i].text == plain[i].text);
            CHECK(seen[i].tokens == plain[i].tokens);  // the last call saw the final answer
            CHECK(seen[i].text == plain[i].text);
        }
        // stopping request 1 after 3 tokens: it is answered "cancelled", the others as before
        REQUIRE(plain[1].tokens.size() > 3);
        teacher.generate(
            requests, s, [&](std::size_t i, teacher::Response&& r) { got[i] = std::move(r); },
            [&](std::size_t i, const teacher::Response& r, bool) { return i != 1 || r.tokens.size() < 3; });
        CHECK(got[1].finish == teacher::finish_reason::error);
        CHECK(got[1].error == "cancelled");
        CHECK(got[0].tokens == plain[0].tokens);
        CHECK(got[2].tokens == plain[2].tokens);

        // a prompt given as ids: the chat template's ids answer as the Request does (same id, same seed)
        std::vector<teacher::TokenPrompt> prompts;
        for (const auto& r : requests) prompts.push_back({r.id, teacher.chat_template().encode_prompt(r.messages)});
        std::vector<teacher::Response> by_ids(3);
        teacher.generate_tokens(prompts, s, [&](std::size_t i, teacher::Response&& r) { by_ids[i] = std::move(r); });
        for (std::size_t i = 0; i < 3; ++i) CHECK(by_ids[i].tokens == plain[i].tokens);
        // raw text has no template: "hi" is two byte ids
        CHECK(teacher.chat_template().encode_text("hi") == std::vector<std::int32_t>{'h', 'i'});
        CHECK_THROWS_WITH_AS(teacher.generate_tokens(std::vector<teacher::TokenPrompt>{{"x", {1, 9999}}}, s,
                                                     [](std::size_t, teacher::Response&&) {}),
                             Contains("token id 9999 is outside the vocabulary"), config_error);
    }

    TEST_CASE(
        "Model: teacher-forced forward exposes logits, hidden states, attentions and q|k|v; bad config is named") {
        TempDir dir("model-forward");
        auto teacher = make_teacher(dir, 2);
        std::vector<std::int32_t> tokens = {256, 260, 'a', 'b', 262, 261, 'c', 'd'};
        teacher.forward(tokens.data(), 2, 4);
        CHECK(teacher.logits().shape_string() == "[2, 4, 263]");
        CHECK(teacher.hidden_state_count() == 3);
        CHECK(teacher.hidden_state(2).shape_string() == "[2, 4, 32]");
        CHECK(teacher.attention(1).shape_string() == "[2, 2, 4, 4]");
        CHECK(teacher.qkv(0).shape_string() == "[2, 4, 96]");
        CHECK_CONTAINS(teacher.fingerprint(), "model:sha256=");
        auto other = make_teacher(dir, 2, 2);
        CHECK(other.fingerprint() != teacher.fingerprint());
        CHECK(make_teacher(dir, 2, 1).fingerprint() == teacher.fingerprint());
        CHECK_THROWS_WITH_AS(TinyTeacher(teacher::ModelConfig{}), Contains("teacher.weights: is required"),
                             config_error);
        CHECK_THROWS_AS(TinyTeacher(teacher::ModelConfig{.weights = (dir / "none.safetensors").string()}), io_error);
    }

    // ---- top-k cache file -------------------------------------------------------------------------------

    TEST_CASE("top-k cache: round trip, memory-mapped views, and every corruption is named") {
        TempDir dir("topk");
        const auto path = dir / "c.topk";
        io::topk_header h{.k = 2, .vocab_size = 10, .fingerprint = "sha256:abc", .tokenizer = "byte-v1"};
        std::string bytes = io::encode_topk_header(h);
        const std::vector<std::int32_t> tok1 = {3, 4, 5}, ids1 = {3, 1, 4, 0, 5, 9};
        const std::vector<float> lp1 = {-0.1f, -2.5f, -0.2f, -3.0f, -0.05f, -4.0f};
        bytes += io::encode_topk_record("ex-a", 2, tok1, ids1, lp1);
        bytes += io::encode_topk_record("b", 2, std::vector<std::int32_t>{}, std::vector<std::int32_t>{},
                                        std::vector<float>{});
        write_text(path, bytes);
        {
            io::topk_file f(path);
            CHECK(f.header().fingerprint == "sha256:abc");
            CHECK(f.header().tokenizer == "byte-v1");
            REQUIRE(f.size() == 2);
            const auto* r = f.find("ex-a");
            REQUIRE(r);
            CHECK(std::vector<std::int32_t>(r->tokens.begin(), r->tokens.end()) == tok1);
            CHECK(std::vector<std::int32_t>(r->top_ids.begin(), r->top_ids.end()) == ids1);
            CHECK(r->top_logprobs[3] == -3.0f);
            CHECK(r->tail_mass[0] == doctest::Approx(1 - std::exp(-0.1) - std::exp(-2.5)));
            CHECK(reinterpret_cast<std::uintptr_t>(r->top_logprobs.data()) % 4 == 0);
            CHECK(f[1].positions() == 0);
            CHECK(io::topk_complete_prefix(path) == bytes.size());
        }
        auto corrupt = [&](std::string b) {
            write_text(path, b);
            try {
                io::topk_file f(path);
            } catch (const format_error& e) {
                return std::string(e.what());
            }
            return std::string("no error");
        };
        std::string b = bytes;
        b[0] = 'X';
        CHECK_CONTAINS(corrupt(b), "bad magic");
        b = bytes;
        b[8] = 3;
        CHECK_CONTAINS(corrupt(b), "version 3 is not supported");
        CHECK_CONTAINS(corrupt(bytes.substr(0, 20)), "shorter than the 32-byte header");
        CHECK_CONTAINS(corrupt(bytes.substr(0, bytes.size() - 5)), "interrupted append");
        b = bytes;
        b[io::encode_topk_header(h).size() + 16 + 8] ^= 1;  // a token byte of the first record
        CHECK_CONTAINS(corrupt(b), "checksum mismatch");
        auto with_record = [&](std::vector<std::int32_t> t, std::vector<std::int32_t> ids, std::vector<float> lps) {
            return corrupt(io::encode_topk_header(h) + io::encode_topk_record("z", 2, t, ids, lps));
        };
        CHECK_CONTAINS(with_record({3}, {10, 1}, {-0.1f, -1.0f}), "top id 10 outside the vocabulary");
        CHECK_CONTAINS(with_record({-1}, {0, 1}, {-0.1f, -1.0f}), "token -1 outside");
        CHECK_CONTAINS(with_record({3}, {0, 1}, {-1.0f, -0.1f}), "descending");
        CHECK_CONTAINS(with_record({3}, {0, 1}, {0.5f, -0.1f}), "is not <= 0");
        CHECK_CONTAINS(corrupt(bytes + io::encode_topk_record("b", 2, std::vector<std::int32_t>{},
                                                              std::vector<std::int32_t>{}, std::vector<float>{})),
                       "duplicate record for example 'b'");
        write_text(path, bytes.substr(0, bytes.size() - 3));
        CHECK(io::topk_complete_prefix(path) ==
              io::encode_topk_header(h).size() + io::encode_topk_record("ex-a", 2, tok1, ids1, lp1).size());
    }

    // ---- OpenAI wire format -----------------------------------------------------------------------------

    TEST_CASE("openai format: what a stream may send of a partial answer") {
        using teacher::openai::streamable;
        const std::vector<std::string> none, stops = {"END", "\xE2\x82\xAC!"};  // "END", "€!"
        CHECK(streamable("hello", none) == 5);
        CHECK(streamable("", none) == 0);
        // a character still incomplete is shown as U+FFFD by the decoder: held back
        CHECK(streamable("ab\xEF\xBF\xBD", none) == 2);
        CHECK(streamable("ab\xEF\xBF\xBD\xEF\xBF\xBD", none) == 2);
        CHECK(streamable("ab\xEF\xBF\xBD"
                         "c",
                         none) == 6);                       // followed by more text: it stays U+FFFD
        CHECK(streamable("\xC3\xA9t\xC3\xA9", none) == 5);  // "été", complete
        // a tail that may still become a stop sequence waits; one that cannot does not
        CHECK(streamable("the E", stops) == 4);
        CHECK(streamable("the EN", stops) == 4);
        CHECK(streamable("the ENx", stops) == 7);
        CHECK(streamable("cost 5\xE2\x82\xAC", stops) == 6);  // "€" may begin "€!"
        CHECK(streamable("cost 5\xE2\x82\xAC.", stops) == 10);
        // a stop prefix that ends inside a character: cut at the character's start
        const std::vector<std::string> mid = {"\xC3\xA9"};  // "é"
        CHECK(streamable("caf\xC3", mid) == 3);
    }

    TEST_CASE("openai format: request body, response parsing, token mapping, Retry-After and backoff") {
        using namespace teacher::openai;
        const std::vector<data::Message> msgs = {{"user", "hi"}};
        const auto body = make_request("m", msgs, {.stop = {"\n\n"}, .seed = 3, .top_logprobs = 4}, 99);
        CHECK(body["model"] == "m");
        CHECK(body["temperature"] == 0.2);
        CHECK(body["top_p"] == 0.1);
        CHECK(body["max_tokens"] == 128);
        CHECK(body["seed"] == 99);
        CHECK(body["logprobs"] == true);
        CHECK(body["top_logprobs"] == 4);
        CHECK(body["stop"][0] == "\n\n");
        CHECK(!body.contains("top_k"));

        // make_completion -> parse_completion -> map_logprobs is the identity on tokens and top-k
        teacher::Response r;
        r.text = "h\xC3\xA9";
        r.tokens = {'h', 0xC3, 0xA9, data::ByteTokenizer::end_of_turn};
        r.token_logprobs = {-0.1f, -0.2f, -0.3f, -0.4f};
        r.k = 2;
        r.top_ids = {'h', 'a', 0xC3, 'b', 0xA9, 0xFF, 262, 257};
        r.top_logprobs = {-0.1f, -3.f, -0.2f, -3.f, -0.3f, -3.f, -0.4f, -3.f};
        r.usage = {5, 4};
        const data::ByteTokenizer tok;
        const auto wire = nlohmann::json::parse(dump(make_completion("id1", "m", 0, r, tok, true)));
        auto c = parse_completion(wire);
        CHECK(c.response.text == r.text);
        CHECK(c.response.usage.completion_tokens == 4);
        REQUIRE(c.logprobs.size() == 4);
        CHECK(c.logprobs[1].chosen.token == "\\xc3");
        map_logprobs(c.response, c.logprobs, 2, tok);
        CHECK(c.response.tokens == r.tokens);
        CHECK(c.response.top_ids == r.top_ids);
        CHECK(c.response.top_logprobs == r.top_logprobs);

        CHECK_THROWS_WITH_AS(parse_completion(nlohmann::json::parse(R"({"id":"x"})")),
                             Contains("missing field \"choices\""), protocol_error);
        CHECK_THROWS_WITH_AS(parse_completion(nlohmann::json::parse(R"({"error":{"message":"rate limited"}})")),
                             Contains("rate limited"), protocol_error);
        CHECK_THROWS_WITH_AS(parse_completion(nlohmann::json::parse(R"({"choices":[{"message":{"content":3}}]})")),
                             Contains("content\" is not a string"), protocol_error);
        const auto batch = nlohmann::json::parse(
            R"({"custom_id":"q7","response":{"status_code":200,"body":{"choices":[{"message":{"content":"ok"},"finish_reason":"length"}]}}})");
        const auto bc = parse_completion(batch);
        CHECK(bc.custom_id == "q7");
        CHECK(bc.response.finish == teacher::finish_reason::length);
        TokenLogprob multi{"ab", std::nullopt, -1};
        CHECK(!token_id(tok, multi));

        CHECK(*parse_retry_after("3", 0) == 3.0);
        CHECK(*parse_retry_after(" 1.5 ", 0) == 1.5);
        CHECK(*parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", 4) == 6.0);
        CHECK(!parse_retry_after("soon", 0));
        CHECK(!parse_retry_after("-1", 0));
        CHECK(retryable_status(429));
        CHECK(retryable_status(503));
        CHECK(retryable_status(408));
        CHECK(!retryable_status(400));
        CHECK(!retryable_status(401));
        Rng rng(1);
        for (int a = 0; a < 10; ++a) {
            const double d = backoff_delay(a, 0.5, 8.0, rng);
            const double cap = std::min(8.0, 0.5 * std::pow(2.0, a));
            CHECK(d >= cap / 2);
            CHECK(d <= cap);
        }
    }

    // ---- the generate stage -----------------------------------------------------------------------------

    TEST_CASE(
        "generate: validation drops empty, truncated and duplicate answers and counts each; a rerun does nothing") {
        TempDir dir("gen-validate");
        write_text(dir / "in.jsonl", R"({"prompt":"empty"})"
                                     "\n"
                                     R"({"prompt":"long"})"
                                     "\n"
                                     R"({"prompt":"dup"})"
                                     "\n"
                                     R"({"prompt":"dup"})"
                                     "\n"
                                     R"({"prompt":"ok","completion":"ref"})"
                                     "\n"
                                     R"({"prompt":"fail"})"
                                     "\n");
        const auto ds = data::read_examples(dir / "in.jsonl");
        auto fn = [](const teacher::Request& q, const teacher::Sampling&) {
            teacher::Response r;
            const auto& p = q.messages.back().content;
            if (p == "fail") return teacher::Response::failure("backend down");
            r.text = p == "empty" ? "  " : p == "dup" ? "same" : "answer to " + p;
            r.finish = p == "long" ? teacher::finish_reason::length : teacher::finish_reason::stop;
            return r;
        };
        teacher::Callable t(fn, "rules");
        const GenerateConfig cfg{.output_dir = (dir / "out").string(), .min_success_ratio = 0.5, .progress = false};
        const auto rep = generate(t, ds, {}, cfg);
        CHECK(rep.examples == 6);
        CHECK(rep.accepted == 2);
        CHECK(rep.rejected_empty == 1);
        CHECK(rep.rejected_truncated == 1);
        CHECK(rep.rejected_duplicate == 1);
        CHECK(rep.failed == 1);
        REQUIRE(rep.failures.size() == 1);
        CHECK(rep.failures[0].line == 6);
        CHECK(rep.failures[0].error == "backend down");
        const auto records = teacher::read_synthetic(dir / "out" / "synthetic.jsonl");
        REQUIRE(records.size() == 2);
        CHECK(records[0].response.text == "same");
        CHECK(records[1].response.text == "answer to ok");
        CHECK(*records[1].reference == "ref");
        CHECK(records[1].fingerprint == rep.fingerprint);
        CHECK(records[1].format == data::input_format::prompt_completion);
        const auto report = nlohmann::json::parse(read_text(dir / "out" / "synthetic.report.json"));
        CHECK(report["rejected"]["truncated"] == 1);
        CHECK(report["complete"] == false);

        // rerun: only the failed example is asked again (and fails again: 0 of 1 answered)
        const std::string before = read_text(dir / "out" / "synthetic.jsonl");
        CHECK_THROWS_AS(generate(t, ds, {}, cfg), generate_error);
        auto lenient = cfg;
        lenient.min_success_ratio = 0;
        const auto again = generate(t, ds, {}, lenient);
        CHECK(again.already_done == 5);
        CHECK(again.requested == 1);
        CHECK(again.failed == 1);
        CHECK(read_text(dir / "out" / "synthetic.jsonl") == before);

        // a second data set in the same directory, under another name, leaves the first alone
        auto validation = lenient;
        validation.name = "synthetic.validation";
        CHECK(generate(t, ds, {}, validation).accepted == 2);
        CHECK(std::filesystem::exists(dir / "out" / "synthetic.validation.jsonl"));
        CHECK(std::filesystem::exists(dir / "out" / "synthetic.validation.report.json"));
        CHECK(read_text(dir / "out" / "synthetic.jsonl") == before);
        validation.name = "a/b";
        CHECK_THROWS_WITH_AS(generate(t, ds, {}, validation), Contains("generate.name"), config_error);

        // an output directory that cannot be created is an io_error naming it
        write_text(dir / "file", "x");
        auto blocked = lenient;
        blocked.output_dir = (dir / "file" / "sub").string();
        CHECK_THROWS_WITH_AS(generate(t, ds, {}, blocked), Contains("cannot create the output directory"), io_error);

        // keep_truncated keeps the "length" answer
        auto keep = cfg;
        keep.output_dir = (dir / "keep").string();
        keep.keep_truncated = true;
        CHECK(generate(t, ds, {}, keep).accepted == 3);
    }

    TEST_CASE("generate: below min_success_ratio the stage fails with a report of what failed") {
        TempDir dir("gen-ratio");
        write_text(dir / "in.jsonl", testing::prompt_lines(10));
        const auto ds = data::read_examples(dir / "in.jsonl");
        int calls = 0;
        teacher::Callable t(
            [&](const teacher::Request& q, const teacher::Sampling&) {
                if (++calls % 2) return teacher::Response::failure("HTTP 503 after 6 attempts for " + q.id);
                teacher::Response r;
                r.text = "fine";
                return r;
            },
            "flaky");
        try {
            generate(t, ds, {}, {.output_dir = (dir / "out").string(), .progress = false});
            FAIL("no generate_error");
        } catch (const generate_error& e) {
            CHECK_CONTAINS(std::string(e.what()), "only 5 of 10 requests were answered");
            CHECK_CONTAINS(std::string(e.what()), "HTTP 503 after 6 attempts");
            CHECK(e.report().failed == 5);
        }
        CHECK(std::filesystem::exists(dir / "out" / "synthetic.report.json"));
    }

    TEST_CASE(
        "generate: a resumed run after a crash (torn records included) writes exactly what an uninterrupted run "
        "writes") {
        TempDir dir("gen-resume");
        write_text(dir / "in.jsonl", testing::prompt_lines(11));
        const auto ds = data::read_examples(dir / "in.jsonl");
        auto teacher = make_teacher(dir, 4);
        const teacher::Sampling s{
            .temperature = 0.8, .top_p = 0.95, .max_new_tokens = 16, .seed = 5, .top_logprobs = 3};
        const GenerateConfig whole{.output_dir = (dir / "whole").string(), .keep_truncated = true, .progress = false};
        const auto rep = generate(teacher, ds, s, whole);
        CHECK(rep.accepted + rep.rejected_empty + rep.rejected_duplicate == 11);
        const std::string want = read_text(dir / "whole" / "synthetic.jsonl");
        const std::string want_topk = read_text(dir / "whole" / "synthetic.topk");

        // a teacher that dies after `budget` answers, in the middle of a batch
        for (int budget : {1, 6, 9}) {
            CAPTURE(budget);
            const std::string out = (dir / ("crash" + std::to_string(budget))).string();
            int left = budget;
            Dying dying{teacher, left};
            const GenerateConfig cfg{.output_dir = out, .keep_truncated = true, .progress = false};
            CHECK_THROWS_AS(generate(dying, ds, s, cfg), Crash);
            // a crash in the middle of an append: torn tails on both files
            io::append_durably(std::filesystem::path(out) / "synthetic.jsonl", "{\"id\":\"torn");
            io::append_durably(std::filesystem::path(out) / "synthetic.topk", "TKRC\x05");
            const auto resumed = generate(teacher, ds, s, cfg);
            CHECK(resumed.repaired_bytes > 0);
            CHECK(resumed.already_done >= std::uint64_t(std::max(0, budget - 1)));
            CHECK(read_text(std::filesystem::path(out) / "synthetic.jsonl") == want);
            CHECK(read_text(std::filesystem::path(out) / "synthetic.topk") == want_topk);
        }

        // the cache it wrote serves the same answers, top-k included, and checks the fingerprint
        teacher::Cache<true> cache(
            {.path = (dir / "whole" / "synthetic.jsonl").string(), .expected_fingerprint = rep.fingerprint});
        CHECK(cache.fingerprint() == rep.fingerprint);
        REQUIRE(cache.size() == rep.accepted);
        std::vector<teacher::Request> reqs;
        for (const auto& ex : ds.examples) reqs.push_back({ex.id, 0, ex.prompt});
        const auto cached = generate_all(cache, std::span<const teacher::Request>(reqs), s);
        const auto direct = generate_all(teacher, std::span<const teacher::Request>(reqs), s);
        for (std::size_t i = 0; i < reqs.size(); ++i) {
            if (!cache.find(reqs[i].id)) continue;
            CHECK(cached[i].tokens == direct[i].tokens);
            CHECK(cached[i].top_ids == direct[i].top_ids);
            CHECK(cached[i].top_logprobs == direct[i].top_logprobs);
        }
    }

    TEST_CASE("generate and Cache refuse output of another teacher, naming both fingerprints") {
        TempDir dir("gen-fingerprint");
        write_text(dir / "in.jsonl", testing::prompt_lines(4));
        const auto ds = data::read_examples(dir / "in.jsonl");
        auto teacher = make_teacher(dir, 2);
        const teacher::Sampling s{.temperature = 0, .max_new_tokens = 8, .top_logprobs = 2};
        const GenerateConfig cfg{.output_dir = (dir / "out").string(), .keep_truncated = true, .progress = false};
        const auto rep = generate(teacher, ds, s, cfg);
        auto other_sampling = s;
        other_sampling.max_new_tokens = 9;
        const std::string other_fp = generation_fingerprint(teacher, other_sampling);
        CHECK(other_fp != rep.fingerprint);
        try {
            generate(teacher, ds, other_sampling, cfg);
            FAIL("no fingerprint_error");
        } catch (const teacher::fingerprint_error& e) {
            CHECK_CONTAINS(e.what(), rep.fingerprint);
            CHECK_CONTAINS(e.what(), other_fp);
            CHECK_CONTAINS(std::string(e.what()), "synthetic.jsonl");
            CHECK(e.found() == rep.fingerprint);
            CHECK(e.expected() == other_fp);
        }
        auto other_teacher = make_teacher(dir, 2, 9);
        CHECK_THROWS_AS(generate(other_teacher, ds, s, cfg), teacher::fingerprint_error);
        try {
            teacher::Cache<true> cache(
                {.path = (dir / "out" / "synthetic.jsonl").string(), .expected_fingerprint = other_fp});
            FAIL("no fingerprint_error");
        } catch (const teacher::fingerprint_error& e) {
            CHECK_CONTAINS(e.what(), rep.fingerprint);
            CHECK_CONTAINS(e.what(), other_fp);
        }
        // a top-k file of another teacher next to the right synthetic.jsonl is refused too
        // (a well-formed header with another fingerprint: the header checksum would refuse a patched one)
        const auto topk = read_text(dir / "out" / "synthetic.topk");
        io::topk_header other = io::topk_file(dir / "out" / "synthetic.topk").header();
        other.fingerprint[10] = other.fingerprint[10] == 'a' ? 'b' : 'a';
        const std::string header = io::encode_topk_header(other);
        REQUIRE(header.size() < topk.size());
        write_text(dir / "out" / "synthetic.topk", header + topk.substr(header.size()));
        CHECK_THROWS_AS(teacher::Cache<true>({.path = (dir / "out" / "synthetic.jsonl").string()}),
                        teacher::fingerprint_error);
    }

    TEST_CASE("Cache reads OpenAI-style JSONL: by custom_id or by position; top-k only with the same tokenizer") {
        TempDir dir("cache-openai");
        const data::ByteTokenizer tok;
        teacher::Response r;
        r.text = "ok";
        r.tokens = {'o', 'k', data::ByteTokenizer::end_of_turn};
        r.token_logprobs = {-0.5f, -0.25f, -0.1f};
        r.k = 2;
        r.top_ids = {'o', 'x', 'k', 'y', 262, 257};
        r.top_logprobs = {-0.5f, -1.5f, -0.25f, -2.f, -0.1f, -3.f};
        const auto completion = teacher::openai::make_completion("c1", "teacher-70b", 0, r, tok, true);
        nlohmann::json batch = {{"custom_id", "q2"}, {"response", {{"status_code", 200}, {"body", completion}}}};
        write_text(dir / "api.jsonl", completion.dump() + "\n" + batch.dump() + "\n");
        teacher::Cache<true> cache({.path = (dir / "api.jsonl").string(), .tokenizer = "byte-v1"});
        CHECK(cache.size() == 2);
        std::vector<teacher::Request> reqs = {
            {"first", 0, {{"user", "a"}}}, {"q2", 5, {{"user", "b"}}}, {"nope", 7, {{"user", "c"}}}};
        const auto out = generate_all(cache, std::span<const teacher::Request>(reqs), {.top_logprobs = 1});
        CHECK(out[0].text == "ok");
        CHECK(out[0].tokens == r.tokens);
        CHECK(out[0].k == 1);
        CHECK(out[0].top_ids == std::vector<std::int32_t>{'o', 'k', 262});
        CHECK(out[1].top_logprobs == std::vector<float>{-0.5f, -0.25f, -0.1f});
        CHECK(!out[2].ok());
        CHECK_CONTAINS(out[2].error, "no cached answer for example 'nope'");
        CHECK_THROWS_WITH_AS(teacher::Cache<true>({.path = (dir / "api.jsonl").string(), .tokenizer = "llama-3"}),
                             Contains("only when they come from that tokenizer"), config_error);
        teacher::Cache<false> text_only({.path = (dir / "api.jsonl").string(), .tokenizer = "llama-3"});
        const auto t = generate_all(text_only, std::span<const teacher::Request>(reqs), {});
        CHECK(t[1].text == "ok");
        CHECK(t[1].tokens.empty());
        write_text(dir / "bad.jsonl", completion.dump() + "\n{\"choices\": []}\n");
        CHECK_THROWS_WITH_AS(teacher::Cache<false>({.path = (dir / "bad.jsonl").string()}),
                             Contains("bad.jsonl:2: \"choices\" is not a non-empty array"), format_error);
    }

}  // TEST_SUITE
