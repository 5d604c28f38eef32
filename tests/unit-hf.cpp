// Hugging Face checkpoints (io/hf.hpp): a tiny random GPT2LMHeadModel written by transformers
// (tests/reference/make_hf_golden.py) loads from one file, from shards and from bfloat16; its logits,
// hidden states, attention maps, loss and every parameter gradient equal transformers'; a model saved
// by distill holds exactly transformers' tensors; defects are named.

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "distill/device/cpu.hpp"
#include "distill/device/reference.hpp"
#include "distill/io/hf.hpp"
#include "distill/student/transformer.hpp"
#include "distill/teacher/model.hpp"
#include "testing.hpp"

using namespace distill;
using distill::testing::check_close;
using distill::testing::read_ids;
using distill::testing::read_tensor;

#ifndef DISTILL_TEST_DATA_DIR
#define DISTILL_TEST_DATA_DIR "tests/reference/fixtures"
#endif

namespace {

const std::filesystem::path hf_fixtures = std::filesystem::path(DISTILL_TEST_DATA_DIR) / "hf";

template <class Dev>
student::Transformer<float, Dev> load_model(const std::filesystem::path& dir, int max_batch) {
    const io::hf::Directory ckpt(dir);
    student::Transformer<float, Dev> m(io::hf::transformer_config(ckpt), max_batch);
    io::hf::load(ckpt, m);
    return m;
}

std::string load_error(const std::filesystem::path& dir) {
    try {
        (void)load_model<device::Cpu>(dir, 1);
    } catch (const distill::error& e) {
        return e.what();
    }
    return "(no error)";
}

}  // namespace

// Loads `family`'s fixture, runs transformers' LM loss and compares every output and gradient with
// `{family}_golden.safetensors` (fp32, relative 1e-4 of each tensor's scale).
template <class Dev>
void check_golden(const std::string& family) {
    io::safetensors_file golden(hf_fixtures / (family + "_golden.safetensors"));
    const auto& tok = golden.at("tokens");
    const int B = int(tok.shape[0]), T = int(tok.shape[1]);
    const auto tokens = read_ids(golden, "tokens");
    auto m = load_model<Dev>(hf_fixtures / family, B);
    const auto& cfg = m.config();

    // transformers' LM loss predicts token t+1 at position t; the last position has no target
    std::vector<std::int32_t> targets(tokens.size(), -1);
    for (int b = 0; b < B; ++b)
        for (int t = 0; t + 1 < T; ++t) targets[std::size_t(b * T + t)] = tokens[std::size_t(b * T + t + 1)];
    m.forward(tokens.data(), B, T);
    const float loss = m.cross_entropy(targets.data());
    auto compare = [&](const std::string& name, const float* actual, std::int64_t n) {
        const auto expected = read_tensor<float>(golden, name);
        REQUIRE(std::int64_t(expected.size()) == n);
        double scale = 0;
        for (float e : expected) scale = std::max(scale, double(std::abs(e)));
        check_close(family + " " + name, actual, expected.data(), n, 1e-5 * scale, 1e-4);
    };
    compare("logits", m.logits().data(), m.logits().numel());
    CHECK(loss == doctest::Approx(read_tensor<float>(golden, "loss")[0]).epsilon(1e-5));
    for (int i = 0; i <= cfg.n_layers; ++i)
        compare("hidden." + std::to_string(i), m.hidden_state(i).data(), m.hidden_state(i).numel());
    for (int l = 0; l < cfg.n_layers; ++l)
        compare("attention." + std::to_string(l), m.attention(l).data(), m.attention(l).numel());

    m.zero_grad();
    m.backward();
    for (const auto& p : m.parameters()) {
        const io::hf::tensor_map hf = family == "gpt2" ? io::hf::gpt2_tensor(p.name, "transformer.")
                                                       : io::hf::llama_tensor(cfg, family, p.name, "model.");
        std::vector<float> grad(p.grad.data(), p.grad.data() + p.grad.numel());
        if (hf.transposed) {  // ours (out, in), transformers' Conv1D (in, out)
            const auto rows = std::size_t(p.grad.shape()[0]), cols = std::size_t(p.grad.shape()[1]);
            for (std::size_t i = 0; i < rows; ++i)
                for (std::size_t j = 0; j < cols; ++j) grad[j * rows + i] = p.grad.data()[i * cols + j];
        }
        const float* part = grad.data();  // stacked parts (q | k | v, gate | up) are consecutive rows
        for (const auto& name : hf.hf_names) {
            const auto n = std::int64_t(read_tensor<float>(golden, "grad." + name).size());
            compare("grad." + name, part, n);
            part += n;
        }
        CHECK(part == grad.data() + grad.size());
    }
}

TEST_CASE_TEMPLATE("hf: logits, hidden states, attention, loss and all gradients equal transformers'", Dev, device::Cpu,
                   device::Reference) {
    SUBCASE("gpt2") {
        check_golden<Dev>("gpt2");
        const auto cfg = io::hf::transformer_config(io::hf::Directory(hf_fixtures / "gpt2"));
        CHECK(cfg.vocab_size == 40);
        CHECK(cfg.context_length == 12);
        CHECK(cfg.d_model == 16);
        CHECK(cfg.n_heads == 2);
        CHECK(cfg.d_ff == 24);  // n_inner, not 4 n_embd
    }
    SUBCASE("llama: grouped-query attention, untied head, llama3 rotary scaling") {
        check_golden<Dev>("llama");
        const auto cfg = io::hf::transformer_config(io::hf::Directory(hf_fixtures / "llama"));
        CHECK(cfg.n_kv_heads == 2);
        CHECK(!cfg.tie_embeddings);
        CHECK(cfg.rope_scaling.type == "llama3");
        CHECK(cfg.rope_scaling.original_context_length == 8);
        CHECK(cfg.norm_eps == 1e-6);
    }
    SUBCASE("qwen2: q/k/v biases, tied head") {
        check_golden<Dev>("qwen2");
        const auto cfg = io::hf::transformer_config(io::hf::Directory(hf_fixtures / "qwen2"));
        CHECK(cfg.qkv_bias);
        CHECK(!cfg.proj_bias);
        CHECK(cfg.tie_embeddings);
        CHECK(cfg.rope_theta == 1e6);
    }
    SUBCASE("phi3: fused qkv and gate/up projections") {
        check_golden<Dev>("phi3");
    }
}

TEST_CASE("hf: rotary inverse frequencies equal transformers' for every scaling variant") {
    io::safetensors_file golden(hf_fixtures / "rope_inv_freq.safetensors");
    student::TransformerConfig c{.vocab_size = 8, .context_length = 64, .d_model = 64, .n_layers = 1, .n_heads = 4};
    c.positions = "rope";
    const std::pair<const char*, student::RopeScaling> variants[] = {
        {"default", {}},
        {"linear", {.type = "linear", .factor = 4}},
        {"dynamic", {.type = "dynamic", .factor = 4, .original_context_length = 16}},
        {"llama3",
         {.type = "llama3", .factor = 8, .low_freq_factor = 1, .high_freq_factor = 4, .original_context_length = 4}}};
    for (const auto& [name, scaling] : variants) {
        c.rope_scaling = scaling;
        const auto ours = student::rope_inverse_frequencies(c, 48);
        const auto theirs = read_tensor<double>(golden, std::string("inv_freq.") + name);
        REQUIRE(ours.size() == theirs.size());
        check_close(name, ours.data(), theirs.data(), std::int64_t(ours.size()), 0, 1e-6);  // theirs in fp32
    }
}

TEST_CASE("hf gpt2: shards and bfloat16 load the same parameters") {
    const auto single = load_model<device::Cpu>(hf_fixtures / "gpt2", 1);
    const auto sharded = load_model<device::Cpu>(hf_fixtures / "gpt2-sharded", 1);
    const auto bf16 = load_model<device::Cpu>(hf_fixtures / "gpt2-bf16", 1);
    const float* a = single.parameter_data();
    CHECK(std::equal(a, a + single.arena_size(), sharded.parameter_data()));
    std::size_t differing = 0;
    for (std::size_t i = 0; i < single.arena_size(); ++i)
        differing += io::bf16_to_float(io::float_to_bf16(a[i])) != bf16.parameter_data()[i];
    CHECK(differing == 0);
}

TEST_CASE("hf: a saved student holds exactly transformers' tensors and config") {
    for (const std::string family : {"gpt2", "llama", "qwen2", "phi3"}) {
        CAPTURE(family);
        const auto m = load_model<device::Cpu>(hf_fixtures / family, 1);
        const auto dir = std::filesystem::temp_directory_path() / ("distill-hf-save-" + std::to_string(::getpid()));
        io::hf::save(dir, m, io::dtype::F32, {{"bos_token_id", 1}, {"eos_token_id", 2}},
                     family == "phi3" ? "phi3" : "");
        io::safetensors_file original(hf_fixtures / family / "model.safetensors"), saved(dir / "model.safetensors");
        REQUIRE(saved.tensors().size() == original.tensors().size());
        for (const auto& t : original.tensors()) {
            const io::tensor_info* s = saved.find(t.name);
            REQUIRE_MESSAGE(s, t.name);
            CHECK(s->shape == t.shape);
            std::vector<float> x(std::size_t(t.numel())), y(std::size_t(t.numel()));
            original.read(t, std::span<float>(x));
            saved.read(*s, std::span<float>(y));
            CHECK_MESSAGE(x == y, t.name);
        }
        CHECK(saved.metadata().at("format") == "pt");  // transformers refuses safetensors without it
        std::ifstream in(dir / "config.json");
        const auto config = nlohmann::json::parse(in);
        std::ifstream in_original(hf_fixtures / family / "config.json");
        const auto original_config = nlohmann::json::parse(in_original);
        CHECK(config["model_type"] == family);
        CHECK(config["eos_token_id"] == 2);
        for (const char* key : {"n_inner", "num_key_value_heads", "rope_theta", "tie_word_embeddings", "rope_scaling",
                                "attention_bias", "rms_norm_eps"})
            if (original_config.contains(key)) CHECK_MESSAGE(config[key] == original_config[key], key);
        const auto again = load_model<device::Cpu>(dir, 1);
        CHECK(std::equal(m.parameter_data(), m.parameter_data() + m.arena_size(), again.parameter_data()));
        if (const char* keep = std::getenv("DISTILL_KEEP_HF_EXPORT"))  // for tests/reference/check_hf_export.py
            std::filesystem::copy(
                dir, std::filesystem::path(keep) / family,
                std::filesystem::copy_options::overwrite_existing | std::filesystem::copy_options::recursive);
        std::filesystem::remove_all(dir);
    }
    // a student no family computes is refused by name
    student::TransformerConfig mixed{.vocab_size = 8, .context_length = 4, .d_model = 8, .n_layers = 1, .n_heads = 2};
    mixed.norm = "rmsnorm";
    CHECK_THROWS_WITH_AS(io::hf::family_of(mixed), doctest::Contains("no transformers model family has these blocks"),
                         config_error);
}

// VmRSS or VmHWM (the peak since the last reset) of this process, in bytes.
static std::int64_t vm_status(const std::string& key) {
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);)
        if (line.starts_with(key + ":")) return std::stoll(line.substr(key.size() + 1)) * 1024;
    return -1;
}

TEST_CASE("hf: load holds one tensor at a time, within load_transient_bytes on top of the model") {
    // ~70 MB models whose largest tensors are 8 MiB (the embedding and head; gpt2's MLP matrices, which
    // it stores transposed and the loader turns through its second buffer)
    student::TransformerConfig llama{.vocab_size = 8192,
                                     .context_length = 64,
                                     .d_model = 256,
                                     .n_layers = 8,
                                     .n_heads = 4,
                                     .n_kv_heads = 2,
                                     .d_ff = 2048};
    llama.norm = "rmsnorm";
    llama.positions = "rope";
    llama.mlp = "swiglu";
    llama.qkv_bias = llama.proj_bias = llama.mlp_bias = llama.tie_embeddings = false;
    student::TransformerConfig gpt2{
        .vocab_size = 8192, .context_length = 64, .d_model = 256, .n_layers = 4, .n_heads = 4, .d_ff = 8192};
    for (const auto& cfg : {llama, gpt2}) {
        CAPTURE(cfg.mlp);
        const auto dir = std::filesystem::temp_directory_path() / ("distill-hf-peak-" + std::to_string(::getpid()));
        student::Transformer<float, device::Cpu> saved(cfg, 1, device::Cpu(1), student::activations::inference);
        saved.init(3);
        io::hf::save(dir, saved, io::dtype::F32);
        student::Transformer<float, device::Cpu> m(cfg, 1, device::Cpu(1), student::activations::inference);
        m.init(4);  // every page of the model resident before the measurement
        {
            std::ofstream reset("/proc/self/clear_refs");
            reset << "5";  // VmHWM := VmRSS
        }
        const std::int64_t before = vm_status("VmRSS");
        if (!std::filesystem::exists("/proc/self/clear_refs") || vm_status("VmHWM") > before + (1 << 20)) {
            MESSAGE("skipped: this kernel cannot reset the peak RSS (/proc/self/clear_refs)");
        } else {
            io::hf::load(io::hf::Directory(dir), m);
            const std::int64_t peak = vm_status("VmHWM") - before;
            const std::int64_t planned = io::hf::load_transient_bytes(cfg);
            CAPTURE(peak);
            CAPTURE(planned);
            CHECK(peak <= planned + (2 << 20));  // 2 MiB for the headers, the JSON and the allocator
            // under half of what an fp32 image of the model took (it was staged whole, beside the file's pages)
            CHECK(2 * planned < std::int64_t(sizeof(float)) * cfg.parameter_count());
            CHECK(std::equal(saved.parameter_data(), saved.parameter_data() + saved.arena_size(), m.parameter_data()));
        }
        std::filesystem::remove_all(dir);
    }
}

TEST_CASE("hf: a rotary model loads into a shorter context; a learned-position one does not") {
    const io::hf::Directory llama(hf_fixtures / "llama");
    auto cfg = io::hf::transformer_config(llama);
    CHECK(cfg.context_length == 32);
    cfg.context_length = 12;
    student::Transformer<float, device::Cpu> short_model(cfg, 2);
    io::hf::load(llama, short_model);
    const auto full = load_model<device::Cpu>(hf_fixtures / "llama", 2);
    CHECK(std::equal(full.parameter_data(), full.parameter_data() + full.arena_size(), short_model.parameter_data()));
    auto gcfg = io::hf::transformer_config(io::hf::Directory(hf_fixtures / "gpt2"));
    gcfg.context_length = 8;
    student::Transformer<float, device::Cpu> g(gcfg, 1);
    CHECK_THROWS_WITH_AS(io::hf::load(io::hf::Directory(hf_fixtures / "gpt2"), g),
                         doctest::Contains("the model's config differs from config.json's"), shape_error);
}

TEST_CASE("hf: a Llama-layout checkpoint directory is a teacher::Model; it generates what its network computes") {
    // a byte-vocabulary Llama-style model, saved as transformers' LlamaForCausalLM
    student::TransformerConfig cfg{
        .vocab_size = 263, .context_length = 24, .d_model = 16, .n_layers = 2, .n_heads = 4, .d_ff = 24};
    cfg.norm = "rmsnorm";
    cfg.positions = "rope";
    cfg.mlp = "swiglu";
    cfg.n_kv_heads = 2;
    cfg.qkv_bias = cfg.proj_bias = cfg.mlp_bias = cfg.tie_embeddings = false;
    student::Transformer<float, device::Cpu> net(cfg, 1);
    net.init(3);
    for (auto& p : net.parameters())  // sharper distributions than the init's, so greedy choices are clear
        for (std::int64_t i = 0; i < p.value.numel(); ++i) p.value.data()[i] *= p.kind == parameter_kind::norm ? 1 : 20;
    testing::ScratchCheckpoint dir(hf_fixtures / "llama");
    std::filesystem::remove_all(dir.dir);
    io::hf::save(dir.dir, net);

    teacher::Model<student::Transformer> t(teacher::ModelConfig{.weights = dir.dir.string(), .max_batch = 2});
    CHECK(t.network().config().positions == "rope");
    CHECK(std::equal(net.parameter_data(), net.parameter_data() + net.arena_size(), t.network().parameter_data()));
    const std::vector<teacher::Request> requests = {{"a", 0, {{"user", "hello"}}}, {"b", 1, {{"user", "hi!"}}}};
    teacher::Sampling greedy{.temperature = 0, .max_new_tokens = 4};
    std::vector<teacher::Response> answers(requests.size());
    t.generate(requests, greedy, [&](std::size_t i, teacher::Response&& r) { answers[i] = std::move(r); });
    for (std::size_t i = 0; i < requests.size(); ++i) {
        REQUIRE(answers[i].ok());
        REQUIRE(!answers[i].tokens.empty());
        // each greedy token is the argmax of a full forward over the prompt and the tokens before it
        auto seq = t.chat_template().encode_prompt(requests[i].messages);
        for (const std::int32_t token : answers[i].tokens) {
            net.forward(seq.data(), 1, int(seq.size()));
            const float* row = net.logits().data() + (seq.size() - 1) * std::size_t(cfg.vocab_size);
            CHECK(token == std::int32_t(std::max_element(row, row + cfg.vocab_size) - row));
            seq.push_back(token);
        }
    }
    {  // a config.json describing a far larger model than its tensors hold is refused before layout
        testing::ScratchCheckpoint big(dir.dir);
        big.edit_config([](nlohmann::json& j) { j["hidden_size"] = 4096; });
        CHECK_THROWS_WITH_AS(
            teacher::Model<student::Transformer>(teacher::ModelConfig{.weights = big.dir.string(), .max_batch = 1}),
            doctest::Contains("parameters, but the checkpoint's tensors hold"), format_error);
    }
    // a checkpoint whose vocabulary cannot hold the byte tokenizer's ids is refused by name
    CHECK_THROWS_WITH_AS(teacher::Model<student::Transformer>(
                             teacher::ModelConfig{.weights = (hf_fixtures / "llama").string(), .max_batch = 1}),
                         doctest::Contains("vocabulary of 48 ids is smaller than tokenizer byte-v1's 263"),
                         config_error);
}

TEST_CASE("hf: defects name the file and what was expected") {
    using doctest::Contains;
    {
        testing::ScratchCheckpoint s(hf_fixtures / "gpt2");
        s.edit_config([](nlohmann::json& j) { j["model_type"] = "gemma"; });
        const auto e = load_error(s.dir);
        CHECK(e.find("config.json: model_type \"gemma\" is not supported; supported: gpt2, llama, qwen2, phi3") !=
              std::string::npos);
    }
    {
        testing::ScratchCheckpoint s(hf_fixtures / "llama");
        s.edit_config([](nlohmann::json& j) { j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}}; });
        CHECK(load_error(s.dir).find("rope_scaling: type \"yarn\" is not supported") != std::string::npos);
    }
    {
        testing::ScratchCheckpoint s(hf_fixtures / "llama");
        s.edit_config([](nlohmann::json& j) { j["hidden_act"] = "gelu"; });
        CHECK(load_error(s.dir).find("hidden_act: \"gelu\" is not supported, only \"silu\"") != std::string::npos);
    }
    {  // found with fuzz_hf_config: head_dim × heads overflowed int; an absent head_dim was read as a key
        testing::ScratchCheckpoint s(hf_fixtures / "llama");
        s.edit_config([](nlohmann::json& j) { j["head_dim"] = 1 << 30; });
        CHECK(load_error(s.dir).find("head_dim: 1073741824 is not supported, only hidden_size / "
                                     "num_attention_heads") != std::string::npos);
        s.edit_config([](nlohmann::json& j) {
            j.erase("head_dim");
            j["num_attention_heads"] = 3;
        });
        CHECK(load_error(s.dir).find("n_heads: must divide d_model") != std::string::npos);
    }
    {
        testing::ScratchCheckpoint s(hf_fixtures / "qwen2");
        s.edit_config([](nlohmann::json& j) { j["use_sliding_window"] = true; });
        CHECK(load_error(s.dir).find("use_sliding_window: true is not supported") != std::string::npos);
    }
    {  // one of the stacked parts missing
        testing::ScratchCheckpoint s(hf_fixtures / "llama");
        s.rewrite(
            [](const std::string& n) { return n == "model.layers.1.self_attn.k_proj.weight" ? std::string() : n; });
        CHECK(load_error(s.dir).find("tensors do not match a llama model: missing "
                                     "'model.layers.1.self_attn.k_proj.weight'") != std::string::npos);
    }
    {  // a tied model whose stored head differs from its embedding
        testing::ScratchCheckpoint s(hf_fixtures / "llama");
        s.edit_config([](nlohmann::json& j) { j["tie_word_embeddings"] = true; });
        CHECK(load_error(s.dir).find("lm_head.weight differs from the token embedding") != std::string::npos);
    }
    {
        testing::ScratchCheckpoint s(hf_fixtures / "gpt2");
        s.edit_config([](nlohmann::json& j) { j["activation_function"] = "relu"; });
        CHECK(load_error(s.dir).find("activation_function: \"relu\" is not supported") != std::string::npos);
    }
    {
        testing::ScratchCheckpoint s(hf_fixtures / "gpt2");
        s.edit_config([](nlohmann::json& j) { j["tie_word_embeddings"] = false; });
        CHECK(load_error(s.dir).find("tie_word_embeddings: false is not supported") != std::string::npos);
    }
    {
        testing::ScratchCheckpoint s(hf_fixtures / "gpt2");
        s.edit_config([](nlohmann::json& j) { j.erase("n_embd"); });
        CHECK(load_error(s.dir).find("config.json: n_embd: an integer is required") != std::string::npos);
    }
    {  // a tensor missing, another unexpected
        testing::ScratchCheckpoint s(hf_fixtures / "gpt2");
        s.rewrite([](const std::string& n) {
            return n == "transformer.h.1.ln_2.bias" ? std::string()
                   : n == "transformer.ln_f.bias"   ? std::string("transformer.ln_f.extra")
                                                    : n;
        });
        const auto e = load_error(s.dir);
        CHECK(e.find("tensors do not match a gpt2 model: missing 'transformer.h.1.ln_2.bias', "
                     "'transformer.ln_f.bias'; unexpected 'transformer.ln_f.extra'") != std::string::npos);
    }
    {
        testing::ScratchCheckpoint s(hf_fixtures / "gpt2");
        std::filesystem::remove(s.dir / "model.safetensors");
        CHECK(load_error(s.dir).find("neither model.safetensors nor model.safetensors.index.json") !=
              std::string::npos);
    }
    // a model of another shape is refused before anything is written
    student::Transformer<float, device::Cpu> other(
        {.vocab_size = 40, .context_length = 12, .d_model = 16, .n_layers = 3, .n_heads = 2, .d_ff = 24}, 1);
    CHECK_THROWS_WITH_AS(io::hf::load(io::hf::Directory(hf_fixtures / "gpt2"), other),
                         Contains("the model's config differs from config.json's"), shape_error);
}

TEST_CASE("hf: transformers 5's rope_parameters are read as 4.x's rope_theta and rope_scaling") {
    nlohmann::json c = {{"vocab_size", 48},       {"max_position_embeddings", 64}, {"hidden_size", 32},
                        {"num_hidden_layers", 1}, {"num_attention_heads", 4},      {"intermediate_size", 64},
                        {"hidden_act", "silu"},   {"rms_norm_eps", 1e-5}};
    c["rope_parameters"] = {{"rope_theta", 500000.0}, {"rope_type", "default"}};
    auto t = io::hf::llama_config(c, "config.json", "llama");
    CHECK(t.rope_theta == 500000.0);
    CHECK(t.rope_scaling.type == "none");
    c["rope_parameters"] = {{"rope_theta", 500000.0},  {"rope_type", "llama3"},
                            {"factor", 8.0},           {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 16}};
    t = io::hf::llama_config(c, "config.json", "llama");
    CHECK(t.rope_theta == 500000.0);
    CHECK(t.rope_scaling.type == "llama3");
    CHECK(t.rope_scaling.factor == 8.0);
    CHECK(t.rope_scaling.original_context_length == 16);
    c["rope_parameters"] = {{"rope_theta", 10000.0}, {"rope_type", "yarn"}, {"factor", 4.0}};
    CHECK_THROWS_WITH_AS(io::hf::llama_config(c, "config.json", "llama"),
                         doctest::Contains("rope_parameters: type \"yarn\" is not supported"), format_error);
}
