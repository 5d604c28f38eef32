// An OpenAI-compatible endpoint's log-probabilities mapped onto a published tokenizer (issue 24):
// canned endpoint answers (no network) in the forms OpenAI and llama-cpp-python send them —
// byte-level BPE tokens holding part of a UTF-8 character, byte-fallback `<0xNN>` tokens, special
// tokens by their text, tokens that map to no id (counted, their mass left in the tail), sampled
// tokens checked against the ids of the answer's text — and the Distiller's refusal of an endpoint
// whose declared tokenizer is not the student's, naming the job field.

#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/distill.hpp"
#include "teacher_fixtures.hpp"

using namespace distill;
using doctest::Contains;
using teacher::openai::map_logprobs_counted;
using teacher::openai::mapping_error;
using teacher::openai::TokenTable;
namespace fs = std::filesystem;
using distill::testing::TempDir;

namespace {

const fs::path tokenizers = fs::path(DISTILL_TEST_DATA_DIR) / "tokenizers";
constexpr float neg_inf = -std::numeric_limits<float>::infinity();

std::int32_t id_of(const data::HfTokenizer& tok, const std::string& token) {
    const auto id = tok.token_to_id(token);
    REQUIRE_MESSAGE(id, "no token " << token);
    return *id;
}

// A chat completion whose choices[0].logprobs.content is `content` (JSON text).
teacher::openai::Completion canned(const std::string& text, const std::string& content) {
    return teacher::openai::parse_completion(nlohmann::json::parse(
        R"({"choices":[{"index":0,"message":{"role":"assistant","content":)" + nlohmann::json(text).dump() +
        R"(},"finish_reason":"stop","logprobs":{"content":)" + content + "}}]}"));
}

teacher::TokenMapping map(teacher::openai::Completion& c, int k, const data::HfTokenizer& tok) {
    const TokenTable table(tok);
    return map_logprobs_counted(c.response, c.logprobs, k, table, tok.encode(c.response.text, false), tok.id());
}

}  // namespace

TEST_SUITE("openai logprobs") {
    TEST_CASE("token_bytes: the exact bytes of byte-level, byte-fallback, metaspace and added tokens") {
        const data::HfTokenizer gpt2(tokenizers / "gpt2" / "tokenizer.json");
        CHECK(*gpt2.token_bytes(id_of(gpt2, "Ã")) == "\xC3");  // a lone lead byte: raw, not U+FFFD
        CHECK(*gpt2.token_bytes(id_of(gpt2, "Ã©")) == "\xC3\xA9");
        CHECK(*gpt2.token_bytes(id_of(gpt2, "Ġworld")) == " world");
        CHECK(*gpt2.token_bytes(id_of(gpt2, "<|endoftext|>")) == "<|endoftext|>");
        CHECK(!gpt2.token_bytes(gpt2.vocab_size()));
        const data::HfTokenizer llama2(tokenizers / "llama2" / "tokenizer.json");
        CHECK(*llama2.token_bytes(id_of(llama2, "<0xE2>")) == "\xE2");
        CHECK(*llama2.token_bytes(id_of(llama2, "<0x0A>")) == "\n");
        CHECK(*llama2.token_bytes(id_of(llama2, "▁")) == " ");  // inside a text, not stripped as at its start
        CHECK(*llama2.token_bytes(id_of(llama2, "A")) == "A");
        CHECK(*llama2.token_bytes(id_of(llama2, "<s>")) == "<s>");
        // every token of every id decodes inside a text to its bytes (decode of [x, id] = decode [x] + bytes)
        for (const data::HfTokenizer* tok : {&gpt2, &llama2}) {
            const std::int32_t x = id_of(*tok, tok == &gpt2 ? "A" : "▁");
            for (std::int32_t id = 0; id < tok->vocab_size(); ++id) {
                if (tok->is_special(id)) continue;
                const std::string bytes = *tok->token_bytes(id);
                const std::vector<std::int32_t> two = {x, id, x};
                const std::string with = tok->decode(two), alone = tok->decode(std::vector<std::int32_t>{x, x});
                if (data::hf::valid_utf8(bytes)) {
                    const std::string head = alone.substr(0, alone.size() / 2);
                    CHECK_MESSAGE(with == head + bytes + alone.substr(alone.size() / 2), "id " << id);
                }
            }
        }
    }

    TEST_CASE("byte-level BPE with bytes (OpenAI's form): partial UTF-8 maps by its bytes; unknown bytes counted") {
        const data::HfTokenizer tok(tokenizers / "gpt2" / "tokenizer.json");
        // "é" is C3 A9: one token ("Ã©"); its lead byte alone is the token "Ã"; F0 9F 98 (part of an
        // emoji) is no token of this vocabulary
        auto c = canned("\xC3\xA9 world", R"([
          {"token":"é","bytes":[195,169],"logprob":-0.1,"top_logprobs":[
             {"token":"é","bytes":[195,169],"logprob":-0.1},
             {"token":"bytes:\\xf0\\x9f\\x98","bytes":[240,159,152],"logprob":-3.0},
             {"token":"bytes:\\xc3","bytes":[195],"logprob":-2.5}]},
          {"token":" world","bytes":[32,119,111,114,108,100],"logprob":-0.2,"top_logprobs":[
             {"token":" w","bytes":[32,119],"logprob":-1.9},
             {"token":" world","bytes":[32,119,111,114,108,100],"logprob":-0.2},
             {"token":" wor","bytes":[32,119,111,114],"logprob":-2.2}]}])");
        const auto m = map(c, 3, tok);
        const auto& r = c.response;
        CHECK(r.tokens == std::vector<std::int32_t>{id_of(tok, "Ã©"), id_of(tok, "Ġworld")});
        CHECK(r.tokens == tok.encode(r.text, false));
        CHECK(r.token_logprobs == std::vector<float>{-0.1f, -0.2f});
        CHECK(r.top_ids == std::vector<std::int32_t>{id_of(tok, "Ã©"), id_of(tok, "Ã"), -1, id_of(tok, "Ġworld"),
                                                     id_of(tok, "Ġw"), id_of(tok, "Ġwor")});
        CHECK(r.top_logprobs == std::vector<float>{-0.1f, -2.5f, neg_inf, -0.2f, -1.9f, -2.2f});
        // the unmapped entry's probability is in the tail, not spread over the others
        CHECK(r.tail_mass(0) == doctest::Approx(1 - std::exp(-0.1) - std::exp(-2.5)).epsilon(1e-6));
        CHECK(m.top_entries == 6);
        CHECK(m.top_unmapped == 1);
        CHECK(m.top_lost() == 1);
        CHECK(m.tokens == 2);
        CHECK(m.tokens_unmapped == 0);
        CHECK(m.retokenize_mismatches == 0);
        CHECK(r.mapping.top_unmapped == 1);
    }

    TEST_CASE("llama-cpp-python's form (no bytes; a partial character's text is empty): recovered and counted") {
        const data::HfTokenizer tok(tokenizers / "gpt2" / "tokenizer.json");
        // "€" (E2 82 AC) is three byte tokens here; llama-cpp-python decodes each alone with
        // errors="ignore", so they arrive as "", and its top_logprobs dict keeps one "" entry
        const std::vector<std::int32_t> text_ids = tok.encode("\xE2\x82\xAC world", false);
        REQUIRE(text_ids ==
                std::vector<std::int32_t>{id_of(tok, "â"), id_of(tok, "Ĥ"), id_of(tok, "¬"), id_of(tok, "Ġworld")});
        auto c = canned("\xE2\x82\xAC world", R"([
          {"token":"","bytes":null,"logprob":-0.5,"top_logprobs":[{"token":"","bytes":null,"logprob":-0.5},
                                                                  {"token":"A","bytes":null,"logprob":-1.5}]},
          {"token":"","bytes":null,"logprob":-0.01,"top_logprobs":[{"token":"","bytes":null,"logprob":-0.01}]},
          {"token":"","bytes":null,"logprob":-0.02,"top_logprobs":[{"token":"","bytes":null,"logprob":-0.02}]},
          {"token":" world","bytes":null,"logprob":-0.3,"top_logprobs":[
             {"token":" world","bytes":null,"logprob":-0.3},{"token":"<|endoftext|>","bytes":null,"logprob":-2.0}]}])");
        const auto m = map(c, 2, tok);
        const auto& r = c.response;
        CHECK(r.tokens == text_ids);
        CHECK(r.top_ids == std::vector<std::int32_t>{id_of(tok, "A"), -1, -1, -1, -1, -1, id_of(tok, "Ġworld"),
                                                     id_of(tok, "<|endoftext|>")});
        CHECK(r.top_logprobs == std::vector<float>{-1.5f, neg_inf, neg_inf, neg_inf, neg_inf, neg_inf, -0.3f, -2.0f});
        CHECK(m.tokens == 4);
        CHECK(m.tokens_unmapped == 3);
        CHECK(m.retokenize_mismatches == 0);
        CHECK(m.top_entries == 8);
        CHECK(m.top_unmapped == 3);
        CHECK(m.top_missing == 2);
        CHECK(m.top_lost() == 5);

        // errors="ignore" makes " \xE2" (the token "Ġâ") the text " ", which "Ġ" has too: without bytes,
        // " " names neither for sure; with bytes it is exact
        const TokenTable table(tok);
        TokenTable::miss why{};
        CHECK(!table.find({" ", std::nullopt, -1}, &why));
        CHECK(why == TokenTable::miss::ambiguous);
        CHECK(table.find({" ", std::vector<std::uint8_t>{32}, -1}) == id_of(tok, "Ġ"));
        CHECK(table.find({" \xE2", std::vector<std::uint8_t>{32, 0xE2}, -1}) == id_of(tok, "Ġâ"));
    }

    TEST_CASE("sampled tokens: a split the tokenizer would not make is kept and counted; an unalignable one fails") {
        const data::HfTokenizer tok(tokenizers / "gpt2" / "tokenizer.json");
        auto c = canned(" world", R"([
          {"token":" wor","bytes":[32,119,111,114],"logprob":-0.4,"top_logprobs":[]},
          {"token":"ld","bytes":[108,100],"logprob":-0.1,"top_logprobs":[]}])");
        const auto m = map(c, 2, tok);
        CHECK(c.response.tokens == std::vector<std::int32_t>{id_of(tok, "Ġwor"), id_of(tok, "ld")});
        CHECK(tok.encode(" world", false) == std::vector<std::int32_t>{id_of(tok, "Ġworld")});
        CHECK(m.retokenize_mismatches == 1);
        CHECK(m.top_missing == 4);
        CHECK(c.response.top_ids == std::vector<std::int32_t>(4, -1));

        // a stop token some endpoints report after the text is not a mismatch
        auto s = canned(" world", R"([
          {"token":" world","bytes":[32,119,111,114,108,100],"logprob":-0.4,"top_logprobs":[]},
          {"token":"<|endoftext|>","bytes":null,"logprob":-0.1,"top_logprobs":[]}])");
        CHECK(map(s, 0, tok).retokenize_mismatches == 0);
        CHECK(s.response.tokens == std::vector<std::int32_t>{id_of(tok, "Ġworld"), id_of(tok, "<|endoftext|>")});

        // unnamed tokens in a split the tokenizer would not make: recovered from the answer's bytes,
        // the one way the reported tokens spell it
        auto split = canned("\xE2\x82\xAC world", R"([
          {"token":"","bytes":null,"logprob":-0.1,"top_logprobs":[]},
          {"token":"","bytes":null,"logprob":-0.1,"top_logprobs":[]},
          {"token":"","bytes":null,"logprob":-0.1,"top_logprobs":[]},
          {"token":" wor","bytes":null,"logprob":-0.2,"top_logprobs":[]},
          {"token":"ld","bytes":null,"logprob":-0.3,"top_logprobs":[]}])");
        const auto ms = map(split, 1, tok);
        CHECK(split.response.tokens == std::vector<std::int32_t>{id_of(tok, "â"), id_of(tok, "Ĥ"), id_of(tok, "¬"),
                                                                 id_of(tok, "Ġwor"), id_of(tok, "ld")});
        CHECK(ms.tokens_unmapped == 3);
        CHECK(ms.retokenize_mismatches == 1);

        auto bad = canned(" world", R"([
          {"token":"","bytes":null,"logprob":-0.4,"top_logprobs":[]},
          {"token":"ld","bytes":[108,100],"logprob":-0.1,"top_logprobs":[]}])");
        CHECK_THROWS_WITH_AS(map(bad, 1, tok),
                             Contains("logprobs.content[0]: the sampled token \"\" is no single id of tokenizer hf-"),
                             mapping_error);
    }

    TEST_CASE("byte fallback: <0xNN> tokens by their byte; a byte string of two tokens told apart by the text") {
        const data::HfTokenizer tok(tokenizers / "llama2" / "tokenizer.json");
        auto c = canned("A", R"([
          {"token":"A","bytes":[65],"logprob":-0.3,"top_logprobs":[
             {"token":"<s>","bytes":null,"logprob":-5.0},
             {"token":"<0x41>","bytes":[65],"logprob":-4.0},
             {"token":"A","bytes":[65],"logprob":-0.3},
             {"token":"\n","bytes":[10],"logprob":-2.0},
             {"token":"","bytes":[226],"logprob":-1.0}]}])");
        const auto m = map(c, 5, tok);
        CHECK(c.response.tokens == std::vector<std::int32_t>{id_of(tok, "A")});
        // "\n" is both a plain token and <0x0A> here: the plain one is preferred
        CHECK(c.response.top_ids == std::vector<std::int32_t>{id_of(tok, "A"), id_of(tok, "<0xE2>"), id_of(tok, "\n"),
                                                              id_of(tok, "<0x41>"), id_of(tok, "<s>")});
        CHECK(c.response.top_logprobs == std::vector<float>{-0.3f, -1.0f, -2.0f, -4.0f, -5.0f});
        CHECK(m.top_lost() == 0);
        // the text "A" at the start of an answer is "▁A" to this tokenizer (Metaspace prepends): counted
        CHECK(m.retokenize_mismatches == (tok.encode("A", false) == c.response.tokens ? 0u : 1u));
    }

    TEST_CASE("ambiguous and duplicate entries are counted, never guessed") {
        // " a" and "▁a" are both the bytes " a"
        const auto tok = data::HfTokenizer::from_json(R"({"version":"1.0","added_tokens":[],"normalizer":null,
            "pre_tokenizer":null,"post_processor":null,
            "decoder":{"type":"Replace","pattern":{"String":"▁"},"content":" "},
            "model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,
                     "end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,
                     "vocab":{"a":0,"▁a":1," a":2,"b":3},"merges":[]}})");
        auto c = canned("b", R"([{"token":"b","bytes":[98],"logprob":-0.1,"top_logprobs":[
             {"token":"b","bytes":[98],"logprob":-0.1},
             {"token":" a","bytes":[32,97],"logprob":-2.0},
             {"token":"▁a","bytes":[32,97],"logprob":-3.0},
             {"token":"x a","bytes":[32,97],"logprob":-3.5},
             {"token":"b","bytes":null,"logprob":-4.0}]}])");
        const auto m = map(c, 5, tok);
        CHECK(c.response.top_ids == std::vector<std::int32_t>{3, 2, 1, -1, -1});  // the text names " a" and "▁a"
        CHECK(m.top_ambiguous == 1);
        CHECK(m.top_duplicate == 1);
    }

    TEST_CASE("top-k cache: empty slots (-1, -inf) are accepted after the others, and nowhere else") {
        TempDir dir("openai-topk-empty");
        const auto path = dir / "x.topk";
        io::write_file_atomic(
            path, io::encode_topk_header(
                      {.version = io::detail::current_version, .k = 2, .vocab_size = 10, .fingerprint = "f"}));
        const std::vector<std::int32_t> tokens = {3};
        io::append_durably(path, io::encode_topk_record("a", 2, tokens, std::vector<std::int32_t>{3, -1},
                                                        std::vector<float>{-0.5f, neg_inf}));
        io::topk_file f(path);
        CHECK(f[0].tail_mass[0] == doctest::Approx(1 - std::exp(-0.5)));
        const auto bad = dir / "bad.topk";
        io::write_file_atomic(
            bad, io::encode_topk_header(
                     {.version = io::detail::current_version, .k = 2, .vocab_size = 10, .fingerprint = "f"}));
        io::append_durably(bad, io::encode_topk_record("a", 2, tokens, std::vector<std::int32_t>{-1, 3},
                                                       std::vector<float>{neg_inf, -0.5f}));
        CHECK_THROWS_WITH_AS(io::topk_file{bad}, Contains("not in descending order"), format_error);
    }
}

// ---- the Distiller: the endpoint's declared tokenizer against the student's --------------------------

namespace {

// An endpoint that declares its published tokenizer, answering from canned completions: what
// teacher::OpenAI<data::HfTokenizer> gives the Distiller, without HTTP.
struct CannedEndpoint {
    static constexpr auto provides = signal::sampled_tokens<true>;
    static constexpr bool batch_invariant = true;
    std::shared_ptr<const data::HfTokenizer> tok;
    std::string fingerprint() const { return "canned:" + tok->id(); }
    std::string name() const { return "canned endpoint"; }
    std::string tokenizer_id() const { return tok->id(); }
    int vocab_size() const { return tok->vocab_size(); }
    data::VocabInfo vocab_info(std::string n) const { return tok->vocab_info(std::move(n)); }
    void generate(std::span<const teacher::Request> requests, const teacher::Sampling& s,
                  const teacher::response_sink& sink) {
        const TokenTable table(*tok);
        for (std::size_t i = 0; i < requests.size(); ++i) {
            auto c = canned(" world", R"([
              {"token":" world","bytes":[32,119,111,114,108,100],"logprob":-0.2,"top_logprobs":[
                 {"token":" world","bytes":[32,119,111,114,108,100],"logprob":-0.2},
                 {"token":"","bytes":[240,159,152],"logprob":-2.0}]},
              {"token":"<|im_end|>","bytes":null,"logprob":-0.1,"top_logprobs":[
                 {"token":"<|im_end|>","bytes":null,"logprob":-0.1},{"token":" w","bytes":[32,119],"logprob":-3.0}]}])");
            map_logprobs_counted(c.response, c.logprobs, s.top_logprobs, table, tok->encode(" world", false),
                                 tok->id());
            sink(i, std::move(c.response));
        }
    }
};

using EndpointDistiller = Distiller<CannedEndpoint, student::Transformer, loss::Sum<loss::TopKSoftKL, loss::HardCE>,
                                    optim::AdamW, device::Cpu>;

}  // namespace

TEST_CASE("Distiller: an endpoint's declared tokenizer is compared with the student's by vocabulary, not by file") {
    TempDir dir("openai-logprobs-distiller");
    const fs::path qwen2 = tokenizers / "qwen2" / "tokenizer.json";
    // the same vocabulary in another file (re-serialized): another id, the same tokens and pipeline
    const fs::path copy = dir / "endpoint" / "tokenizer.json";
    fs::create_directories(copy.parent_path());
    {
        std::ifstream in(qwen2);
        distill::testing::write_text(copy, nlohmann::json::parse(in).dump(1));
    }
    // the student's: the fixture's tokenizer.json with a ChatML template
    fs::create_directories(dir / "student");
    fs::copy_file(qwen2, dir / "student" / "tokenizer.json");
    const std::string chatml =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    distill::testing::write_text(
        dir / "student" / "tokenizer_config.json",
        nlohmann::json{{"eos_token", "<|im_end|>"}, {"pad_token", "<|endoftext|>"}, {"chat_template", chatml}}.dump());
    std::string train;
    for (int i = 0; i < 8; ++i) train += nlohmann::json{{"prompt", "hello " + std::to_string(i)}}.dump() + "\n";
    distill::testing::write_text(dir / "train.jsonl", train);
    const int V = data::HfTokenizer(qwen2).vocab_size();
    auto job = [&](const std::string& out) {
        return parse_job({{"teacher", {{"kind", "custom"}}},
                          {"student",
                           {{"vocab_size", V},
                            {"context_length", 32},
                            {"d_model", 16},
                            {"n_layers", 1},
                            {"n_heads", 2},
                            {"d_ff", 32}}},
                          {"tokenizer", (dir / "student").string()},
                          {"training_data", (dir / "train.jsonl").string()},
                          {"generation", {{"max_new_tokens", 8}, {"top_logprobs", 2}}},
                          {"hyperparameters", {{"batch_size", 4}, {"max_steps", 2}}},
                          {"loss", {{"topk_soft_kl", {{"weight", 1}}}, {"hard_ce", {{"weight", 1}}}}},
                          {"baseline", {{"enabled", false}}},
                          {"output_dir", (dir / out).string()}});
    };

    CannedEndpoint other{std::make_shared<const data::HfTokenizer>(tokenizers / "gpt2" / "tokenizer.json")};
    CHECK_THROWS_WITH_AS(EndpointDistiller(job("refused"), other, device::Cpu{}, {.quiet = true}),
                         Contains("teacher.tokenizer: names the endpoint's tokenizer hf-"), config_error);

    CannedEndpoint same{std::make_shared<const data::HfTokenizer>(copy)};
    REQUIRE(same.tokenizer_id() != data::HfTokenizer(qwen2).id());
    EndpointDistiller d(job("same"), same, device::Cpu{}, {.quiet = true});
    const auto report = d.generate();
    CHECK(report.accepted == 8);
    CHECK(report.token_mapping.tokens == 16);
    CHECK(report.token_mapping.top_entries == 32);
    CHECK(report.token_mapping.top_unmapped == 8);
    CHECK(report.token_mapping.retokenize_mismatches == 0);
    const io::topk_file f(dir / "same" / "generate" / "synthetic.topk");
    CHECK(f[0].top_ids[1] == -1);
    d.finetune();  // the top-k file of the endpoint's tokenizer id is read as the student's ids
    CHECK(fs::exists(dir / "same" / "student.safetensors"));
}
