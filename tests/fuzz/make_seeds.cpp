// Writes the seed corpora of the fuzz targets into <dir>/<target>/, from the library's own writers
// (so the seeds are valid files the fuzzer then mutates): a tiny model's weights and checkpoint, a
// top-k cache, input and synthetic JSONL, configs, chat completions; and from the committed
// transformers fixtures (tests/reference/fixtures/): Hugging Face config.json files, a shard index
// with its shards, tokenizer_config.json files with chat templates. Run by scripts/fuzz.sh.
//   make_seeds DIR

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/data/byte_tokenizer.hpp"
#include "distill/data/chat.hpp"
#include "distill/data/jsonl.hpp"
#include "distill/io/checkpoint.hpp"
#include "distill/io/hf.hpp"
#include "distill/io/reflect.hpp"
#include "distill/io/safetensors.hpp"
#include "distill/io/topk_cache.hpp"
#include "distill/io/weights.hpp"
#include "distill/optim/schedule.hpp"
#include "distill/optim/sgd.hpp"
#include "distill/pipeline/generate.hpp"
#include "distill/pipeline/job.hpp"
#include "distill/teacher.hpp"
#include "distill/teacher/cache.hpp"
#include "distill/teacher/model.hpp"
#include "distill/teacher/openai_format.hpp"
#include "distill/teacher/synthetic.hpp"
#include "distill/train/finetune.hpp"
#include "fuzz_model.hpp"

namespace fs = std::filesystem;
using namespace distill;

namespace {

fs::path root;

void put(const std::string& target, const std::string& name, const std::string& bytes) {
    fs::create_directories(root / target);
    std::ofstream(root / target / name, std::ios::binary) << bytes;
}

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string with_mode(char mode, const std::string& body) {
    return std::string(1, mode) + body;
}

}  // namespace

int main(int argc, char** argv) try {
    if (argc != 2) {
        std::fprintf(stderr, "usage: make_seeds DIR\n");
        return 2;
    }
    root = argv[1];
    const fs::path tmp = root / "tmp";
    fs::create_directories(tmp);

    // ---- JSONL: input data in the three formats, with the defects the reader tolerates ----
    const std::string input =
        "\xEF\xBB\xBF{\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},{\"role\":\"user\",\"content\":"
        "\"hi\"},{\"role\":\"assistant\",\"content\":\"hello\"}]}\r\n"
        "\n"
        "{\"id\":7,\"prompt\":\"2+2?\",\"completion\":\"4\"}\n"
        "{\"input\":\"a cat sat\",\"label\":true}\n"
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"part\"}]}],\"id\":\"x\"}";
    for (char mode : {'\0', '\1', '\2'}) put("jsonl", std::string("input-") + char('0' + mode), with_mode(mode, input));
    teacher::SyntheticRecord r;
    r.id = "abc";
    r.prompt = {{"user", "hi"}};
    r.reference = "hello";
    r.response.text = "hey";
    r.response.tokens = {104, 101, 121, 259};
    r.fingerprint = "model:sha256=00ff";
    r.topk = 2;
    put("jsonl", "synthetic", with_mode('\4', teacher::to_line(r) + teacher::to_line(r)));

    // ---- safetensors: a tiny model's weights (config in the metadata), and integer dtypes ----
    fuzz::TinyTrained t;
    io::save_weights(tmp / "w.safetensors", t.model);
    put("safetensors", "tiny-f32", slurp(tmp / "w.safetensors"));
    io::save_weights(tmp / "w16.safetensors", t.model, io::dtype::BF16);
    put("safetensors", "tiny-bf16", slurp(tmp / "w16.safetensors"));
    const std::vector<std::int64_t> ids = {1, 2, 3};
    const std::vector<float> f = {0.5f, -1.0f};
    const io::detail::raw_tensor raw[] = {{"ids", io::dtype::I64, {3}, ids.data()},
                                          {"x", io::dtype::F32, {2, 1}, f.data()}};
    io::detail::write_raw(tmp / "raw.safetensors", raw, {{"note", "seed"}});
    put("safetensors", "mixed", slurp(tmp / "raw.safetensors"));
    // the tiny model without the checksum entry, as other writers' files are: the fuzzer can then
    // mutate tensor data and reach the loading code behind the checksum
    {
        const std::string f32 = slurp(tmp / "w.safetensors");
        std::uint64_t n = 0;
        std::memcpy(&n, f32.data(), 8);
        nlohmann::ordered_json h = nlohmann::ordered_json::parse(f32.substr(8, n));
        h["__metadata__"].erase(std::string(io::checksum_key));
        std::string text = h.dump();
        text.append((8 - text.size() % 8) % 8, ' ');
        const std::uint64_t len = text.size();
        put("safetensors", "tiny-f32-no-checksum",
            std::string(reinterpret_cast<const char*>(&len), 8) + text + f32.substr(8 + n));
    }

    // ---- top-k cache: header and two records ----
    std::string topk = io::encode_topk_header({.k = 2, .vocab_size = 263, .fingerprint = "fp", .tokenizer = "byte-v1"});
    const std::vector<std::int32_t> tokens = {104, 105}, top = {104, 97, 105, 98};
    const std::vector<float> lp = {-0.1f, -2.5f, -0.2f, -3.0f};
    topk += io::encode_topk_record("abc", 2, tokens, top, lp);
    topk += io::encode_topk_record("example-2", 2, std::span(tokens).first(1), std::span(top).first(2),
                                   std::span(lp).first(2));
    put("topk", "two-records", with_mode('\0', topk));
    put("topk", "two-records-fixed", with_mode('\1', topk));
    put("topk", "truncated", with_mode('\1', topk.substr(0, topk.size() - 5)));

    // ---- configs: every struct's defaults, as JSON ----
    auto config = [&](int mode, const nlohmann::json& j) {
        put("config", "mode-" + std::to_string(mode), with_mode(char(mode), j.dump()));
    };
    config(0, io::to_json(train::FinetuneConfig{}));
    config(1, io::to_json(teacher::Sampling{.stop = {"\n\n"}, .top_logprobs = 5}));
    config(2, nlohmann::json::parse(R"({"soft_kl":{"weight":1,"temperature":2},"hidden_mse":{"weight":0.1,)"
                                    R"("layer_map":"uniform"},"attention_kl":{"weight":0.5}})"));
    config(3, io::to_json(student::TransformerConfig{}));
    config(4, io::to_json(data::JsonlConfig{}));
    config(5, io::to_json(optim::AdamConfig{}));
    config(6, io::to_json(optim::ScheduleConfig{}));
    config(7, io::to_json(optim::SgdConfig{}));
    config(8, io::to_json(teacher::ModelConfig{.weights = "w.safetensors"}));
    config(9, io::to_json(teacher::CacheConfig{.path = "synthetic.jsonl"}));
    config(10, io::to_json(GenerateConfig{}));
    config(11, io::to_json(data::ChatTemplateConfig{}));
    config(12,
           nlohmann::json::parse(R"({"teacher":{"kind":"model","weights":"t.safetensors","max_batch":8},)"
                                 R"("student":{"vocab_size":263,"context_length":96,"d_model":64,"n_layers":2,)"
                                 R"("n_heads":4,"d_ff":256},"training_data":"train.jsonl","test_data":"test.jsonl",)"
                                 R"("task_type":"math","hyperparameters":{"learning_rate":0.01,"batch_size":32,)"
                                 R"("max_steps":300,"temperature":2},"loss":{"soft_kl":{"weight":1},)"
                                 R"("hard_ce":{"weight":1}},"baseline":{"enabled":true},"output_dir":"out"})"));

    // ---- checkpoint: the three files of a real checkpoint of the fuzz target's model ----
    t.train(3);
    io::CheckpointStore store(tmp / "checkpoints");
    const std::vector<std::int64_t> order = {2, 0, 1};
    const auto dir = store.save(5, t.model, t.extra_params(), t.opt, order, {{"epoch", 1}}, {{"job", "seed"}});
    const std::string three = slurp(dir / "manifest.json") + "\n--8<--\n" + slurp(dir / "student.safetensors") +
                              "\n--8<--\n" + slurp(dir / "training.safetensors");
    put("checkpoint", "as-written", with_mode('\0', three));
    put("checkpoint", "fixed-up", with_mode('\1', three));

    // ---- OpenAI: completions with and without logprobs, a batch line, an error, Retry-After ----
    teacher::Response a;
    a.text = "hi";
    a.tokens = {104, 105};
    a.token_logprobs = {-0.1f, -0.2f};
    a.k = 2;
    a.top_ids = {104, 97, 105, 98};
    a.top_logprobs = {-0.1f, -2.5f, -0.2f, -3.0f};
    const data::ByteTokenizer tok;
    const auto c = teacher::openai::make_completion("chatcmpl-1", "m", 1700000000, a, tok, true);
    put("openai", "logprobs-k2", with_mode('\4', c.dump()));
    put("openai", "text", with_mode('\0', teacher::openai::make_completion("c", "m", 0, a, tok, false).dump()));
    put("openai", "batch",
        with_mode('\4',
                  nlohmann::json{{"custom_id", "abc"}, {"response", {{"status_code", 200}, {"body", c}}}}.dump()));
    put("openai", "error", with_mode('\0', R"({"error":{"message":"rate limited","type":"rate_limit_error"}})"));
    put("openai", "retry-seconds", with_mode('\1', "1.5"));
    put("openai", "retry-date", with_mode('\1', "Sun, 06 Nov 1994 08:49:37 GMT"));

    // ---- Hugging Face config.json: the committed transformers checkpoints' configs (the mode byte
    // picks the fixture whose tensors lie beside it, in fuzz_hf_config's order), our writer's config of
    // the same model, and bert's with a sentence-transformers pooling config ----
    const fs::path fixtures = DISTILL_REFERENCE_FIXTURES;
    const char* const hf_families[] = {"gpt2", "gpt2-bf16", "llama", "qwen2", "phi3", "bert"};
    for (int i = 0; i < 6; ++i) {
        const fs::path dir = fixtures / "hf" / hf_families[i];
        const std::string config = slurp(dir / "config.json");
        put("hf_config", std::string(hf_families[i]), with_mode(char(i), config));
        const io::hf::Directory ckpt(dir);
        if (ckpt.model_type() == "bert") {
            for (const char* pooling : {"mean_tokens", "cls_token"})
                put("hf_config", std::string("bert-pooling-") + pooling,
                    with_mode(char(i), config + "\n--8<--\n" +
                                           nlohmann::json{{"word_embedding_dimension", 16},
                                                          {"pooling_mode_cls_token", pooling[0] == 'c'},
                                                          {"pooling_mode_mean_tokens", pooling[0] == 'm'},
                                                          {"pooling_mode_max_tokens", false}}
                                               .dump()));
        } else {
            const auto c = io::hf::transformer_config(ckpt);
            put("hf_config", std::string(hf_families[i]) + "-ours",
                with_mode(char(i), io::hf::decoder_config_json(c, ckpt.model_type()).dump(2)));
        }
    }

    // ---- Hugging Face shard index: the committed sharded GPT-2 (index, shard 1, shard 2) ----
    {
        const fs::path dir = fixtures / "hf" / "gpt2-sharded";
        const std::string index = slurp(dir / "model.safetensors.index.json");
        const std::string shard1 = slurp(dir / "model-00001-of-00002.safetensors");
        const std::string shard2 = slurp(dir / "model-00002-of-00002.safetensors");
        put("hf_index", "gpt2-sharded", index + "\n--8<--\n" + shard1 + "\n--8<--\n" + shard2);
        nlohmann::json one = nlohmann::json::parse(index);  // every tensor said to be in the first shard
        for (auto& [name, file] : one["weight_map"].items()) file = "model-00001-of-00002.safetensors";
        put("hf_index", "misplaced", one.dump(2) + "\n--8<--\n" + shard1 + "\n--8<--\n" + shard2);
    }

    // ---- tokenizer_config.json: each fixture's (the mode byte picks the tokenizer.json beside it, in
    // fuzz_tokenizer_config's order), and with the chat templates of the chat goldens as a string, as a
    // list of named templates and as a chat_template.jinja ----
    const char* const tok_families[] = {"gpt2", "llama3", "qwen2", "llama2", "bert_uncased", "roberta"};
    for (int i = 0; i < 6; ++i)
        put("tokenizer_config", tok_families[i],
            with_mode(char(i), slurp(fixtures / "tokenizers" / tok_families[i] / "tokenizer_config.json")));
    const nlohmann::json templates =
        nlohmann::json::parse(slurp(fixtures / "tokenizers" / "chat_templates.json"))["templates"];
    for (const auto& t : templates) {
        const std::string name = t["name"];
        const int i = name == "llama3" ? 1 : name == "phi3" ? 0 : 2;  // the tokenizer with its markers
        nlohmann::json config =
            nlohmann::json::parse(slurp(fixtures / "tokenizers" / tok_families[i] / "tokenizer_config.json"));
        config["chat_template"] = t["chat_template"];
        put("tokenizer_config", "template-" + name, with_mode(char(i), config.dump()));
        config["chat_template"] = nlohmann::json::array({{{"name", "tool_use"}, {"template", "{{ tools }}"}},
                                                         {{"name", "default"}, {"template", t["chat_template"]}}});
        put("tokenizer_config", "template-list-" + name, with_mode(char(i), config.dump()));
        config.erase("chat_template");
        put("tokenizer_config", "template-jinja-" + name,
            with_mode(char(i), config.dump() + "\n--8<--\n" + t["chat_template"].get<std::string>()));
    }

    fs::remove_all(tmp);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "make_seeds: %s\n", e.what());
    return 1;
}
