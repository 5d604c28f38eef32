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
    const io::hf::Checkpoint ckpt(dir);
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

TEST_CASE_TEMPLATE("hf gpt2: logits, hidden states, attention, loss and all gradients equal transformers'", Dev,
                   device::Cpu, device::Reference) {
    io::safetensors_file golden(hf_fixtures / "gpt2_golden.safetensors");
    const auto& tok = golden.at("tokens");
    const int B = int(tok.shape[0]), T = int(tok.shape[1]);
    const auto tokens = read_ids(golden, "tokens");
    auto m = load_model<Dev>(hf_fixtures / "gpt2", B);
    const auto& cfg = m.config();
    CHECK(cfg.vocab_size == 40);
    CHECK(cfg.context_length == 12);
    CHECK(cfg.d_model == 16);
    CHECK(cfg.n_layers == 2);
    CHECK(cfg.n_heads == 2);
    CHECK(cfg.d_ff == 24);  // n_inner, not 4 n_embd

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
        check_close(name, actual, expected.data(), n, 1e-5 * scale, 1e-4);
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
        const io::hf::tensor_map hf = io::hf::gpt2_tensor(p.name, "transformer.");
        std::vector<float> grad(p.grad.data(), p.grad.data() + p.grad.numel());
        if (hf.transposed) {  // ours (out, in), transformers' Conv1D (in, out)
            const auto rows = std::size_t(p.grad.shape()[0]), cols = std::size_t(p.grad.shape()[1]);
            for (std::size_t i = 0; i < rows; ++i)
                for (std::size_t j = 0; j < cols; ++j) grad[j * rows + i] = p.grad.data()[i * cols + j];
        }
        compare("grad." + hf.hf_name, grad.data(), p.grad.numel());
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

TEST_CASE("hf gpt2: a saved student holds exactly transformers' tensors and config") {
    const auto m = load_model<device::Cpu>(hf_fixtures / "gpt2", 1);
    const auto dir = std::filesystem::temp_directory_path() / ("distill-hf-save-" + std::to_string(::getpid()));
    io::hf::save(dir, m, io::dtype::F32, {{"bos_token_id", 1}, {"eos_token_id", 2}});
    io::safetensors_file original(hf_fixtures / "gpt2" / "model.safetensors"), saved(dir / "model.safetensors");
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
    CHECK(config["model_type"] == "gpt2");
    CHECK(config["n_inner"] == 24);
    CHECK(config["eos_token_id"] == 2);
    const auto again = load_model<device::Cpu>(dir, 1);
    CHECK(std::equal(m.parameter_data(), m.parameter_data() + m.arena_size(), again.parameter_data()));
    if (const char* keep = std::getenv("DISTILL_KEEP_HF_EXPORT"))  // for tests/reference/check_hf_export.py
        std::filesystem::copy(
            dir, keep, std::filesystem::copy_options::overwrite_existing | std::filesystem::copy_options::recursive);
    std::filesystem::remove_all(dir);
}

TEST_CASE("hf: defects name the file and what was expected") {
    using doctest::Contains;
    {
        testing::ScratchCheckpoint s(hf_fixtures / "gpt2");
        s.edit_config([](nlohmann::json& j) { j["model_type"] = "llama"; });
        const auto e = load_error(s.dir);
        CHECK(e.find("config.json: model_type \"llama\" is not supported: it needs RMSNorm, rotary positions") !=
              std::string::npos);
        CHECK(e.find("supported: gpt2") != std::string::npos);
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
    CHECK_THROWS_WITH_AS(io::hf::load(io::hf::Checkpoint(hf_fixtures / "gpt2"), other),
                         Contains("the model's config differs from config.json's"), shape_error);
}
