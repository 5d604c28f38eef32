// Tests of data::HfTokenizer (tokenizer.json): the ids and texts of the `tokenizers` package for
// tokenizers of every supported family trained by tests/reference/make_tokenizer_golden.py, added and
// special tokens, invalid UTF-8, the documented errors; the chat templates against transformers'
// apply_chat_template; vocabulary alignment.

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/data/hf/chat_format.hpp"
#include "distill/data/hf_tokenizer.hpp"
#include "distill/data/load_chat_tokenizer.hpp"
#include "distill/data/vocab_alignment.hpp"
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

// The conversations of a golden file: [[{"role": ..., "content": ...}, ...], ...].
std::vector<std::vector<distill::data::Message>> read_conversations(const nlohmann::json& j) {
    std::vector<std::vector<distill::data::Message>> conversations;
    for (const auto& c : j) {
        std::vector<distill::data::Message> m;
        for (const auto& t : c) m.push_back({t["role"].get<std::string>(), t["content"].get<std::string>()});
        conversations.push_back(m);
    }
    return conversations;
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

TEST_CASE("HfTokenizer: special ids, lookups and the fingerprint") {
    const HfTokenizer llama(fixtures / "llama3" / "tokenizer.json");
    REQUIRE(llama.bos_id());
    CHECK(llama.bos_token() == "<|begin_of_text|>");
    CHECK(*llama.bos_id() == *llama.token_to_id("<|begin_of_text|>"));
    CHECK(*llama.eos_id() == *llama.token_to_id("<|eot_id|>"));
    CHECK_FALSE(llama.pad_id());
    CHECK(llama.is_special(*llama.bos_id()));
    CHECK_FALSE(llama.is_special(*llama.token_to_id("a")));
    CHECK(llama.id_to_token(*llama.token_to_id("<|eot_id|>")) == "<|eot_id|>");
    CHECK_FALSE(llama.id_to_token(-1));
    CHECK_FALSE(llama.id_to_token(llama.vocab_size()));
    CHECK_FALSE(llama.token_to_id("no such token"));
    CHECK(llama.model_type() == "BPE");
    CHECK(llama.id().rfind("hf-", 0) == 0);
    CHECK(llama.id().size() == 19);
    const HfTokenizer qwen(fixtures / "qwen2" / "tokenizer.json");
    CHECK(qwen.id() != llama.id());
    CHECK_FALSE(qwen.bos_id());  // "bos_token": null
    CHECK(*qwen.pad_id() == *qwen.token_to_id("<|endoftext|>"));
    const HfTokenizer bert(fixtures / "bert_uncased" / "tokenizer.json");
    CHECK(bert.model_type() == "WordPiece");
    CHECK(*bert.unk_id() == *bert.token_to_id("[UNK]"));
    // the same file without its config: no bos/eos, the unknown token from the model
    const HfTokenizer bare = HfTokenizer::from_json(slurp(fixtures / "bert_uncased" / "tokenizer.json"));
    CHECK_FALSE(bare.bos_id());
    CHECK(*bare.unk_id() == *bert.unk_id());
    CHECK(bare.id() != bert.id());
}

TEST_CASE("HfTokenizer: added and special tokens are matched before the model") {
    const HfTokenizer llama(fixtures / "llama3" / "tokenizer.json");
    const std::int32_t bos = *llama.bos_id(), eot = *llama.eos_id();
    const auto ids = llama.encode("hi<|eot_id|>there", false);
    CHECK(std::count(ids.begin(), ids.end(), eot) == 1);
    CHECK(llama.decode(ids) == "hi<|eot_id|>there");
    CHECK(llama.decode(ids, true) == "hithere");
    // add_special_tokens adds the template's BOS once; a BOS in the text stays a token
    const auto with = llama.encode("<|begin_of_text|>x", true);
    REQUIRE(with.size() >= 3);
    CHECK(with[0] == bos);
    CHECK(with[1] == bos);
    // RoBERTa: <mask> strips the space on its left; "hello world" (normalized) is one token
    const HfTokenizer roberta(fixtures / "roberta" / "tokenizer.json");
    const std::int32_t mask = *roberta.token_to_id("<mask>"), hw = *roberta.token_to_id("hello world");
    const auto r = roberta.encode("say <mask> and hello world", false);
    CHECK(std::count(r.begin(), r.end(), mask) == 1);
    CHECK(std::count(r.begin(), r.end(), hw) == 1);
    CHECK(roberta.decode(roberta.encode("say <mask> now", false)) == " say<mask> now");
    // qq is single_word: not inside a word
    const std::int32_t qq = *roberta.token_to_id("qq");
    const auto inside = roberta.encode("aqqb qq", false);
    CHECK(std::count(inside.begin(), inside.end(), qq) == 1);
}

TEST_CASE("HfTokenizer: round trips") {
    const std::vector<std::string> texts = {"Hello, World! Ça va? 你好 🧑‍💻 12345\n\ttabs",
                                            "two  spaces  end ", "x"};
    for (const char* family : {"gpt2", "llama3", "qwen2", "llama2", "llama2_metaspace", "roberta"}) {
        CAPTURE(std::string(family));
        const HfTokenizer tok(fixtures / family / "tokenizer.json");
        for (const auto& t : texts) {
            const std::string expect = std::string(family) == "roberta" ? " " + t : t;  // its prefix space
            CHECK(tok.decode(tok.encode(t, true), true) == expect);
        }
    }
    // WordPiece loses case and spacing around punctuation by design; the words come back
    const HfTokenizer bert(fixtures / "bert_uncased" / "tokenizer.json");
    CHECK(bert.decode(bert.encode("The dog, the fox.", true), true) == "the dog, the fox.");
}

TEST_CASE("HfTokenizer: invalid UTF-8 is read as U+FFFD, never a crash") {
    const HfTokenizer gpt2(fixtures / "gpt2" / "tokenizer.json");
    const std::string bad = "a\xff\xc3(\xe2\x82";
    CHECK(gpt2.encode(bad, false) == gpt2.encode("a\xEF\xBF\xBD\xEF\xBF\xBD(\xEF\xBF\xBD", false));
    CHECK(gpt2.decode(gpt2.encode(bad, false)) == "a\xEF\xBF\xBD\xEF\xBF\xBD(\xEF\xBF\xBD");
    const HfTokenizer bert(fixtures / "bert_cased" / "tokenizer.json");
    CHECK_NOTHROW((void)bert.encode(bad, true));
    const HfTokenizer llama2(fixtures / "llama2" / "tokenizer.json");
    // byte-fallback tokens that do not form UTF-8 decode to one U+FFFD per byte, as tokenizers
    const std::vector<std::int32_t> lone = {*llama2.token_to_id("<0xE2>"), *llama2.token_to_id("<0x82>")};
    CHECK(llama2.decode(lone) == "\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST_CASE("HfTokenizer: unsupported or invalid files are errors naming the file and the JSON path") {
    const std::string name = "x/tokenizer.json";
    auto load = [&](const std::string& text) { (void)HfTokenizer::from_json(text, std::nullopt, name); };
    CHECK_THROWS_WITH_AS(load(edited("gpt2", [](auto& j) { j["model"]["type"] = "Unigram"; })),
                         Contains("x/tokenizer.json:model.type: unsupported model type \"Unigram\" (supported: BPE, "
                                  "WordPiece, WordLevel)"),
                         distill::config_error);
    CHECK_THROWS_WITH_AS(load(edited("gpt2", [](auto& j) { j["model"]["type"] = "Magic"; })),
                         Contains("model.type: unsupported model type \"Magic\""), distill::config_error);
    CHECK_THROWS_WITH_AS(load(edited("gpt2",
                                     [](auto& j) {
                                         j["model"]["merges"][3] = {"Ġ", "no-such-token"};
                                     })),
                         Contains("x/tokenizer.json:model.merges[3]: merge token \"no-such-token\" is not in the "
                                  "vocabulary"),
                         distill::config_error);
    CHECK_THROWS_WITH_AS(load(edited("gpt2", [](auto& j) { j["model"]["merges"][0] = 7; })),
                         Contains("model.merges[0]: must be \"a b\" or [\"a\", \"b\"], got an integer"),
                         distill::config_error);
    CHECK_THROWS_WITH_AS(load(edited("bert_cased", [](auto& j) { j["normalizer"]["type"] = "NFKC"; })),
                         Contains("x/tokenizer.json:normalizer.type: normalizer \"NFKC\" is not supported"),
                         distill::config_error);
    CHECK_THROWS_WITH_AS(
        load(edited("llama3", [](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["type"] = "CharDelimiterSplit"; })),
        Contains("pre_tokenizer.pretokenizers[0].type: unsupported pre-tokenizer "
                 "\"CharDelimiterSplit\" (supported: Sequence, ByteLevel, Split"),
        distill::config_error);
    CHECK_THROWS_WITH_AS(load(edited("llama2",
                                     [](auto& j) {
                                         j["decoder"]["decoders"][1] = {{"type", "CTC"}};
                                     })),
                         Contains("decoder.decoders[1].type: unsupported decoder \"CTC\""), distill::config_error);
    CHECK_THROWS_WITH_AS(load(edited("gpt2",
                                     [](auto& j) {
                                         j["post_processor"] = {{"type", "Magic"}};
                                     })),
                         Contains("post_processor.type: unsupported post-processor \"Magic\""), distill::config_error);
    CHECK_THROWS_WITH_AS(load(edited("gpt2", [](auto& j) { j["model"]["dropout"] = 0.1; })),
                         Contains("model.dropout: BPE dropout is not supported"), distill::config_error);
    CHECK_THROWS_WITH_AS(load(edited("gpt2",
                                     [](auto& j) {
                                         j["truncation"] = {{"max_length", 8}};
                                     })),
                         Contains("x/tokenizer.json:truncation: truncation is not supported"), distill::config_error);
    CHECK_THROWS_WITH_AS(load(edited("gpt2", [](auto& j) { j["pre_tokenizer"]["fancy"] = true; })),
                         Contains("pre_tokenizer.fancy: unsupported field"), distill::config_error);
    CHECK_THROWS_WITH_AS(load(edited("gpt2", [](auto& j) { j["model"]["vocab"]["Ġthe"] = "seven"; })),
                         Contains("model.vocab[\"Ġthe\"]: must be an integer, got a string"), distill::config_error);
    CHECK_THROWS_WITH_AS(load(edited("gpt2", [](auto& j) { j["model"]["vocab"]["zzz"] = 4000000000LL; })),
                         Contains("must be in [0, 16777215]"), distill::config_error);
    CHECK_THROWS_WITH_AS(load(edited("gpt2", [](auto& j) { j["model"]["vocab"]["zzz"] = 16000000; })),
                         Contains("ids are sparse"), distill::config_error);
    CHECK_THROWS_WITH_AS(load(edited("gpt2", [](auto& j) { j["model"]["vocab"]["zzz"] = 5; })),
                         Contains("is given to two tokens"), distill::config_error);
    CHECK_THROWS_WITH_AS(
        load(edited("llama3",
                    [](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed"; })),
        Contains("pre_tokenizer.pretokenizers[0].pattern.Regex: invalid regular expression"), distill::config_error);
    CHECK_THROWS_WITH_AS(load(edited("bert_cased", [](auto& j) { j["model"]["unk_token"] = "[NOPE]"; })),
                         Contains("model.unk_token: \"[NOPE]\" is not in the vocabulary"), distill::config_error);
    CHECK_THROWS_WITH_AS(
        load(edited("llama2", [](auto& j) { j["post_processor"]["special_tokens"]["<s>"]["ids"][0] = 99999; })),
        Contains("post_processor: special token id 99999 is not in the vocabulary"), distill::config_error);
    // nesting is bounded
    CHECK_THROWS_WITH_AS(load(edited("gpt2",
                                     [](auto& j) {
                                         nlohmann::json n = {{"type", "Lowercase"}};
                                         for (int i = 0; i < 40; ++i)
                                             n = {{"type", "Sequence"}, {"normalizers", nlohmann::json::array({n})}};
                                         j["normalizer"] = n;
                                     })),
                         Contains("nested too deeply"), distill::config_error);
    CHECK_THROWS_WITH_AS(load("{\"model\": [1, 2,"), Contains("x/tokenizer.json: malformed JSON"),
                         distill::format_error);
    CHECK_THROWS_WITH_AS(load("[]"), Contains("x/tokenizer.json:(root): must be an object, got an array"),
                         distill::config_error);
    CHECK_THROWS_WITH_AS(load("{}"), Contains("x/tokenizer.json:model: missing"), distill::config_error);
    CHECK_THROWS_AS(HfTokenizer(fixtures / "no-such-dir" / "tokenizer.json"), distill::io_error);
    // decode refuses ids the vocabulary does not have
    const HfTokenizer gpt2(fixtures / "gpt2" / "tokenizer.json");
    CHECK_THROWS_WITH_AS(gpt2.decode(std::vector<std::int32_t>{1, 600}),
                         Contains("token id 600 is not in the vocabulary"), distill::error);
    CHECK_THROWS_AS(gpt2.decode(std::vector<std::int32_t>{-3}), distill::error);
}

TEST_CASE("HfTokenizer: the older merges form \"a b\" reads the same") {
    const std::string old_form = edited("gpt2", [](auto& j) {
        for (auto& m : j["model"]["merges"])
            m = m[0].template get<std::string>() + " " + m[1].template get<std::string>();
    });
    const HfTokenizer a = HfTokenizer::from_json(old_form);
    const HfTokenizer b(fixtures / "gpt2" / "tokenizer.json");
    const std::string text = "The quick brown fox didn't care, 12345 times.";
    CHECK(a.encode(text) == b.encode(text));
}

TEST_CASE("HfChatTemplate: recognized templates render what transformers renders") {
    const nlohmann::json g = read_json(fixtures / "chat_templates.json");
    const auto conversations = read_conversations(g["conversations"]);
    const std::map<std::string, distill::data::chat_format> want = {{"chatml", distill::data::chat_format::chatml},
                                                                    {"qwen2", distill::data::chat_format::chatml},
                                                                    {"llama3", distill::data::chat_format::llama3},
                                                                    {"phi3", distill::data::chat_format::phi3}};
    for (const auto& t : g["templates"]) {
        const std::string name = t["name"];
        CAPTURE(name);
        const auto tmpl = distill::data::HfChatTemplate::recognize(
            t["chat_template"].get<std::string>(), t["bos_token"].is_null() ? "" : t["bos_token"].get<std::string>(),
            t["eos_token"].is_null() ? "" : t["eos_token"].get<std::string>());
        CHECK(tmpl.format == want.at(name));
        for (std::size_t i = 0; i < conversations.size(); ++i) {
            CAPTURE(i);
            CHECK(tmpl.render(conversations[i]) == t["expected"][i].get<std::string>());
        }
    }
    // Qwen2-style default system prompt, written with Jinja's \n escapes as in real files
    const auto qwen = distill::data::HfChatTemplate::recognize(
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}{% endif %}"
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>' + '\\n'}}{% endfor %}");
    CHECK(qwen.default_system == "You are Qwen.");
    // an unknown template says how to name one
    CHECK_THROWS_WITH_AS(distill::data::HfChatTemplate::recognize("{{ messages[0].content }} [INST]"),
                         Contains("unrecognized chat template"), distill::config_error);
    CHECK_THROWS_WITH_AS(distill::data::HfChatTemplate::recognize("{{ x }}"),
                         Contains("{\"format\": \"chatml\" | \"llama3\" | \"phi3\" | \"plain\"}"),
                         distill::config_error);
    CHECK_THROWS_WITH_AS(distill::data::HfChatTemplate::named("vicuna"), Contains("unknown chat template \"vicuna\""),
                         distill::config_error);
    // plain: contents separated by blank lines; an empty template is plain
    const std::vector<distill::data::Message> two = {{"system", "Be brief."}, {"user", "Hi"}};
    CHECK(distill::data::HfChatTemplate::recognize("").render(two) == "Be brief.\n\nHi");
    // from a tokenizer's own config
    nlohmann::json cfg = read_json(fixtures / "llama3" / "tokenizer_config.json");
    cfg["chat_template"] = g["templates"][2]["chat_template"];
    const HfTokenizer llama = HfTokenizer::from_json(slurp(fixtures / "llama3" / "tokenizer.json"), cfg.dump());
    CHECK(llama.chat().render(conversations[0]) == g["templates"][2]["expected"][0].get<std::string>());
}

TEST_CASE("ChatTokenizer over a published tokenizer: prompt and answer ids equal transformers'") {
    using distill::data::ChatTokenizer;
    const nlohmann::json g = read_json(fixtures / "chat_ids.json");
    const auto conversations = read_conversations(g["conversations"]);
    for (const auto& c : g["cases"]) {
        const std::string fixture = c["tokenizer"], name = c["name"];
        CAPTURE(fixture);
        CAPTURE(name);
        // the template as a model ships it: in tokenizer_config.json, recognized from its markers
        nlohmann::json cfg = nlohmann::json::object();
        cfg["bos_token"] = c["bos_token"];
        cfg["eos_token"] = c["eos_token"];
        cfg["chat_template"] = c["chat_template"];
        auto tok = std::make_shared<const HfTokenizer>(
            HfTokenizer::from_json(slurp(fixtures / fixture / "tokenizer.json"), cfg.dump()));
        const ChatTokenizer tpl = distill::data::hf_chat_tokenizer(tok);
        CHECK(tpl.tokenizer_id() == tok->id());
        CHECK(tpl.vocab_size() == tok->vocab_size());
        for (std::size_t i = 0; i < conversations.size(); ++i) {
            CAPTURE(i);
            CHECK(show(tpl.encode_prompt(conversations[i])) == show(c["prompts"][i].get<std::vector<std::int32_t>>()));
        }
        for (std::size_t i = 0; i < g["answers"].size(); ++i) {
            CAPTURE(i);
            const auto want = c["answers"][i].get<std::vector<std::int32_t>>();
            const auto ids = tpl.encode_response(g["answers"][i].get<std::string>());
            CHECK(show(ids) == show(want));
            CHECK(tpl.is_stop_token(ids.back()));  // the answer ends with the token generation stops at
            CHECK(tpl.decode(ids) == c["decoded"][i].get<std::string>());
            // an id of a padding row (past the tokenizer's) has no text
            std::vector<std::int32_t> padded = ids;
            padded.insert(padded.begin() + 1, tok->vocab_size() + 7);
            CHECK(tpl.decode(padded) == c["decoded"][i].get<std::string>());
        }
        CHECK(!tpl.is_stop_token(tpl.encode_response("x").front()));
        // a format named in the job's chat_template overrides the recognized one
        const ChatTokenizer plain = distill::data::hf_chat_tokenizer(tok, {.format = "plain"});
        CHECK(plain.id() != tpl.id());
        CHECK(plain.encode_prompt(conversations[0]) == tok->encode("Hello!", false));
    }
    // a format whose end-of-turn token the tokenizer lacks, and an unknown format name, are errors
    const auto gpt2 = std::make_shared<const HfTokenizer>(fixtures / "gpt2" / "tokenizer.json");
    CHECK_THROWS_WITH_AS(distill::data::hf_chat_tokenizer(gpt2, {.format = "llama3"}),
                         Contains("ends a turn with \"<|eot_id|>\", which tokenizer"), distill::config_error);
    CHECK_THROWS_WITH_AS(distill::data::hf_chat_tokenizer(gpt2, {.format = "vicuna"}), Contains("chat_template.format"),
                         distill::config_error);
    // the byte tokenizer has its own template: naming a format there is an error
    CHECK_THROWS_WITH_AS(ChatTokenizer({.format = "chatml"}), Contains("the byte tokenizer has its own template"),
                         distill::config_error);
    // load_chat_tokenizer: "byte", a directory holding a tokenizer.json, or a file; anything else is named
    CHECK(distill::data::load_chat_tokenizer("byte").tokenizer_id() == "byte-v1");
    CHECK(distill::data::load_chat_tokenizer((fixtures / "qwen2").string()).tokenizer_id() ==
          HfTokenizer(fixtures / "qwen2" / "tokenizer.json").id());
    CHECK_THROWS_WITH_AS(distill::data::load_chat_tokenizer("/nonexistent/tok", {}, "tokenizer"),
                         Contains("tokenizer: is \"/nonexistent/tok\": expected \"byte\""), distill::config_error);
}

TEST_CASE("align_vocabularies: identical, padded and different vocabularies") {
    using distill::data::align_vocabularies;
    using distill::data::vocab_match;
    const HfTokenizer qwen(fixtures / "qwen2" / "tokenizer.json");
    const HfTokenizer gpt2(fixtures / "gpt2" / "tokenizer.json");
    const HfTokenizer llama3(fixtures / "llama3" / "tokenizer.json");
    // the same tokenizer, the same rows
    auto a = align_vocabularies(qwen.vocab_info("teacher"), qwen.vocab_info("student"));
    CHECK(a.match == vocab_match::identical);
    CHECK(a.logit_losses_allowed);
    CHECK(a.logit_columns == qwen.vocab_size());
    CHECK(a.message.empty());
    CHECK_NOTHROW(distill::data::require_logit_compatible(a));
    // padding rows, as Qwen2.5's 151 936 vs 152 064
    a = align_vocabularies(qwen.vocab_info("teacher", 1024), qwen.vocab_info("student", 960));
    CHECK(a.match == vocab_match::padded);
    CHECK(a.logit_losses_allowed);
    CHECK(a.logit_columns == 960);
    CHECK_MESSAGE(a.message.find("compared on the first 960 columns") != std::string::npos, a.message);
    // different tokenizers: refused, with the sequence-level suggestion
    a = align_vocabularies(llama3.vocab_info("teacher"), gpt2.vocab_info("student"));
    CHECK(a.match == vocab_match::different);
    CHECK_FALSE(a.logit_losses_allowed);
    CHECK(a.logit_columns == 0);
    CHECK_THROWS_WITH_AS(distill::data::require_logit_compatible(a),
                         Contains("logit-level losses (SoftKL, TopKSoftKL, ReverseKL, JSD, ...) are refused"),
                         distill::config_error);
    CHECK(a.message.find("sequence-level distillation") != std::string::npos);
    // same size, one token differs
    auto t = gpt2.vocab_info("teacher"), s = gpt2.vocab_info("student");
    s.tokens[5] = "changed";
    a = align_vocabularies(t, s);
    CHECK(a.match == vocab_match::different);
    CHECK(a.message.find("token id 5") != std::string::npos);
    // same tokens, different pipeline
    s = gpt2.vocab_info("student");
    s.pipeline = "other";
    CHECK(align_vocabularies(t, s).match == vocab_match::different);
    // a model with fewer rows than its tokenizer has ids cannot be used with it
    CHECK_THROWS_WITH_AS(align_vocabularies(gpt2.vocab_info("teacher", 100), gpt2.vocab_info("student")),
                         Contains("teacher: the model has 100 embedding rows but its tokenizer has 600 ids"),
                         distill::config_error);
}
